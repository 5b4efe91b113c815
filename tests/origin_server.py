"""A small origin for end-to-end tests, run as a subprocess.

    python tests/origin_server.py ENDPOINT

serves, on any Twisted server endpoint (``unix:/path``, ``tcp:0:interface=127.0.0.1``):

* ``/count``: cacheable for 60 s; the body is how many requests the origin
  has answered on that path, so a test can tell a hit from a fetch;
* ``/private``: ``Cache-Control: private`` (never stored by a shared cache).

Prints ``listening PORT`` (0 for UNIX sockets) once it accepts connections.
"""

from __future__ import annotations

import sys
from collections import Counter

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import Site

hits: Counter[bytes] = Counter()


class Origin(Resource):
    isLeaf = True

    def render_GET(self, request):  # noqa: N802 (twisted.web API)
        hits[request.path] += 1
        if request.path == b"/private":
            request.setHeader(b"cache-control", b"private")
        else:
            request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"content-type", b"text/plain")
        return b"%s %d\n" % (request.path, hits[request.path])


def main(description: str) -> None:
    site = Site(Origin())
    site.log = lambda request: None  # type: ignore[method-assign]

    def listening(port):
        address = port.getHost()
        print("listening", getattr(address, "port", 0), flush=True)

    serverFromString(reactor, description).listen(site).addCallback(listening)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])

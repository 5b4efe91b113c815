"""A small origin for end-to-end tests, run as a subprocess.

    python tests/origin_server.py ENDPOINT

serves, on any Twisted server endpoint (``unix:/path``, ``tcp:0:interface=127.0.0.1``):

* ``/count``: cacheable for 60 s; the body is how many requests the origin
  has answered on that path, so a test can tell a hit from a fetch;
* ``/private``: ``Cache-Control: private`` (never stored by a shared cache);
* ``/blob/N?size=S``: ``S`` bytes that depend only on ``N`` (:func:`blob`),
  cacheable for 10 minutes, with their SHA-256 in ``X-Checksum``; streamed
  in 32 KiB writes 5 ms apart, so large ones take a while;
* ``/obj/N``: a body that depends only on the path (:func:`content`),
  cacheable for 60 s, with an ``ETag``;
* ``/reval/N``: the same with ``max-age=0``, so every hit is revalidated;
  ``If-None-Match`` with the current tag gets ``304``;
* any other method than GET/HEAD on any path: ``204`` (an unsafe request,
  which makes a cache invalidate the path).

Prints ``listening PORT`` (0 for UNIX sockets) once it accepts connections.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import Counter

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

hits: Counter[bytes] = Counter()

#: Blob streaming: bytes per write and seconds between writes.
BLOB_CHUNK = 32 * 1024
BLOB_PAUSE = 0.005


def blob(number: int, size: int) -> bytes:
    """The body of ``/blob/<number>?size=<size>``: deterministic pseudo-random bytes."""
    return random.Random(number).randbytes(size)


def content(path: bytes) -> bytes:
    """The body of ``/obj/...`` and ``/reval/...``: depends on the path only, 64 B to ~16 KiB."""
    digest = hashlib.sha256(path).hexdigest().encode()
    return path + b"\n" + digest * (1 + int(digest[:3], 16) // 16)


def etag(path: bytes) -> bytes:
    return b'"' + hashlib.sha256(path).hexdigest()[:16].encode() + b'"'


class Origin(Resource):
    isLeaf = True

    def render_GET(self, request):
        hits[request.path] += 1
        path = request.path
        if path.startswith(b"/blob/"):
            return self._blob(request, int(path[len(b"/blob/") :]), int(request.args[b"size"][0]))
        if path.startswith((b"/obj/", b"/reval/")):
            tag = etag(path)
            request.setHeader(b"etag", tag)
            request.setHeader(b"cache-control", b"max-age=0" if path.startswith(b"/reval/") else b"max-age=60")
            if request.getHeader(b"if-none-match") == tag:
                request.setResponseCode(304)
                return b""
            request.setHeader(b"content-type", b"application/octet-stream")
            return content(path)
        if path == b"/private":
            request.setHeader(b"cache-control", b"private")
        else:
            request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"content-type", b"text/plain")
        return b"%s %d\n" % (path, hits[path])

    def render_POST(self, request):
        request.setResponseCode(204)
        return b""

    render_PUT = render_DELETE = render_POST

    def _blob(self, request, number: int, size: int):
        body = blob(number, size)
        request.setHeader(b"cache-control", b"max-age=600")
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % size)
        request.setHeader(b"x-checksum", hashlib.sha256(body).hexdigest().encode())
        state = {"offset": 0, "call": None}

        def step() -> None:
            offset = state["offset"]
            request.write(body[offset : offset + BLOB_CHUNK])
            state["offset"] = offset + BLOB_CHUNK
            if state["offset"] >= size:
                request.finish()
            else:
                state["call"] = reactor.callLater(BLOB_PAUSE, step)

        def gone(_) -> None:
            if state["call"] is not None and state["call"].active():
                state["call"].cancel()

        request.notifyFinish().addErrback(gone)
        step()
        return NOT_DONE_YET


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

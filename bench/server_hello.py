"""Serve 1 KiB from a trivial handler, for load tests of the HTTP/1.1 server.

    taskset -c 0 python bench/server_hello.py [port]
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/

Not a test: a measuring stick for the hit path (no cache, no origin).
"""

from __future__ import annotations

import sys

from accel.http.headers import Headers
from accel.http.model import Request, Responder
from accel.http.server import HTTPServerFactory

BODY = b"x" * 1024


class Hello:
    """Answers every request with the same 1 KiB."""

    def handle(self, request: Request, responder: Responder) -> None:
        responder.start(
            200,
            b"OK",
            Headers([(b"content-type", b"text/plain"), (b"content-length", b"1024")]),
        )
        responder.write(BODY)
        responder.finish()


def main(argv: list[str]) -> None:
    try:
        from twisted.internet import epollreactor

        epollreactor.install()
    except Exception:  # noqa: BLE001, S110 (no epoll: the default reactor will do)
        pass
    from twisted.internet import reactor

    port = int(argv[1]) if len(argv) > 1 else 8080
    listening = reactor.listenTCP(port, HTTPServerFactory(Hello(), reactor), backlog=1024, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{listening.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)

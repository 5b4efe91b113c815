"""accel serving cache hits, for load tests of the hit path.

    taskset -c 0 python bench/hit.py [--port 8080] [--workers N] [--access-log FILE]
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/1k
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/1m
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/private/1k
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/revalidate/1k
    taskset -c 1 wrk -t1 -c64 -d5s -H 'If-None-Match: "v1"' http://127.0.0.1:PORT/validators/1k

Starts a trivial origin (``/1k``, ``/64k``, ``/100k`` and ``/1m``, ``Cache-Control: max-age=86400``)
and accel in front of it, in this process, exactly as ``twistd accel`` wires
it (``accel.app.make_service``), with an access log to a file. It primes both
objects, prints ``ready on 127.0.0.1:PORT``, and serves until stopped
(SIGTERM or SIGINT), then removes its temporary files unless ``--keep``. Not a
test: a measuring stick. Compare with ``bench/raw_baseline.py`` run back to
back (``bench/compare.py`` does both).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import urllib.request
from typing import Any

from twisted.internet.protocol import Factory, Protocol

BODIES = {
    b"/1k": b"k" * 1024,
    b"/64k": b"s" * (64 * 1024),
    b"/100k": b"t" * (100 * 1024),
    b"/1m": b"m" * (1024 * 1024),
}


_VALIDATORS = b'etag: "v1"\r\nlast-modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n'


class _Origin(Protocol):
    """A minimal origin: each GET head gets its body, cacheable for a day.

    Under ``/private`` (``/private/1k``, say) the same bodies come with
    ``Cache-Control: no-store``: every request goes through to the origin.
    Under ``/revalidate`` they come with ``Cache-Control: no-cache`` and an
    ``ETag``: every request is a revalidation, answered ``304`` (the stored
    response is served). Under ``/validators`` they come cacheable for a
    day with an ``ETag`` and a ``Last-Modified``: the conditional requests
    of a browser's reload (``If-None-Match: "v1"``) are answered ``304`` by
    accel from the cache.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head, buffer = buffer[:end], buffer[end + 4 :]
            path = head.split(b" ", 2)[1].partition(b"?")[0]  # a query makes another URL, same body
            if path.startswith(b"/revalidate/"):
                self._revalidate(head, path[11:])
                continue
            private = path.startswith(b"/private/")
            validators = path.startswith(b"/validators/")
            body = BODIES.get(path[8:] if private else path[11:] if validators else path, b"")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                b"cache-control: %s\r\n%scontent-length: %d\r\n\r\n%s"
                % (
                    b"no-store" if private else b"max-age=86400",
                    _VALIDATORS if validators else b"",
                    len(body),
                    body,
                )
            )
        self._buffer = buffer

    def _revalidate(self, head: bytes, path: bytes) -> None:
        fields = b"cache-control: no-cache\r\netag: \"v1\"\r\n"
        if b'\r\nif-none-match: "v1"' in head.lower():
            self.transport.write(b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % fields)
            return
        body = BODIES.get(path, b"")
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n%scontent-length: %d\r\n\r\n%s"
            % (fields, len(body), body)
        )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--access-log", default=None, help="default: a temporary file")
    parser.add_argument("--reactor", choices=("accel", "epoll"), default="accel",
                        help="as twistd accel (default) or Twisted's")
    parser.add_argument("--keep", action="store_true",
                        help="keep the cache directory (and default access log) when stopped")
    args = parser.parse_args(argv)

    if args.reactor == "accel":
        from accel.reactor import install
    else:
        from twisted.internet.epollreactor import install
    install()
    from twisted.internet import reactor

    work = tempfile.mkdtemp(prefix="accel-bench-")
    try:
        _serve(args, reactor, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _serve(args: argparse.Namespace, reactor: Any, work: str) -> None:
    """Start the origin and accel in ``reactor`` with its files in ``work``, and run it."""
    from accel.app import make_service
    from accel.tap import Options

    origin = reactor.listenTCP(0, Factory.forProtocol(_Origin), interface="127.0.0.1")
    options = Options()
    options.parseOptions(
        [
            "--origin", f"http://127.0.0.1:{origin.getHost().port}",
            "--listen", f"tcp:{args.port}:interface=127.0.0.1:backlog=1024",
            "--cache-dir", os.path.join(work, "cache"),
            "--access-log", args.access_log or os.path.join(work, "access.log"),
            "--workers", str(args.workers),
        ]
    )  # fmt: skip
    assert options.config is not None
    service = make_service(options.config, reactor)
    service.privilegedStartService()  # binds the listeners, as twistd does
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

    def prime() -> None:
        for path in BODIES:
            for _ in range(2):
                with urllib.request.urlopen(f"http://127.0.0.1:{args.port}{path.decode()}") as r:
                    r.read()
        print(f"ready on 127.0.0.1:{args.port} (work files in {work})", flush=True)

    from twisted.internet.threads import deferToThread

    reactor.callWhenRunning(
        lambda: deferToThread(prime).addErrback(lambda f: (print(f, file=sys.stderr), reactor.stop()))
    )
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])

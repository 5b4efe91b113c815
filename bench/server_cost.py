"""The server's own Python cost per request, without sockets or the reactor.

    taskset -c 0 python bench/server_cost.py

Feeds one request head at a time to an :class:`~accel.http.server.HTTPServerProtocol`
on a ``StringTransport``, with a fast path that answers at once and no access
log: what is left is llhttp's callbacks into Python, validation (Host,
target, framing, persistence) and the fast-path hook. Prints the best of five
runs of 100,000 requests, for a head as ``wrk`` sends it (one field) and for
a browser-like head (ten fields). Noise from other work on the machine only
adds time, hence the best run.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from accel.http.server import HTTPServerFactory

ANSWER = (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 200, 0, {}, None)
HEADS = {
    "wrk (1 field)": b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "browser (10 fields)": (
        b"GET /static/app.js?v=3 HTTP/1.1\r\nHost: www.example.com\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0\r\nAccept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
        b"Referer: https://www.example.com/\r\nConnection: keep-alive\r\n"
        b"Sec-Fetch-Dest: script\r\nSec-Fetch-Mode: no-cors\r\n\r\n"
    ),
}


def _fast(*args: object) -> tuple[bytes, int, int, dict[str, str]]:
    return ANSWER


class _Unused:
    def handle(self, request: object, responder: object) -> None:
        raise AssertionError("every request should take the fast path")


def main() -> None:
    factory = HTTPServerFactory(_Unused(), Clock(), fast_path=_fast)  # type: ignore[arg-type]
    n = 100_000
    for name, head in HEADS.items():
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        best = float("inf")
        for _ in range(5):
            transport.clear()
            started = time.perf_counter()
            for _ in range(n):
                protocol.dataReceived(head)
            best = min(best, (time.perf_counter() - started) / n)
            assert transport.value().count(b" 200 OK") == n
        print(f"{name:20} {best * 1e6:5.2f} us/request", flush=True)


if __name__ == "__main__":
    main()

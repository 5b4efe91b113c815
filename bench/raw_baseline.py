"""The yardstick: a raw Twisted ``Protocol`` serving fixed responses from a dict.

    taskset -c 0 python bench/raw_baseline.py [port]
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/1k
    taskset -c 1 wrk -t1 -c64 -d5s http://127.0.0.1:PORT/1m

No parsing beyond finding the request line's target and the end of each head,
no validation, no cache: the least Python a Twisted server can run per
request. Measure it back to back with accel (``bench/hit.py``) and compare
ratios: this machine is shared, so absolute numbers drift.
"""

from __future__ import annotations

import sys

from twisted.internet.protocol import Factory, Protocol

_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n"
RESPONSES = {
    b"/1k": _HEAD % 1024 + b"x" * 1024,
    b"/1m": _HEAD % (1024 * 1024) + b"x" * (1024 * 1024),
}
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Raw(Protocol):
    """Answers each complete GET head (no bodies) from :data:`RESPONSES`."""

    def __init__(self) -> None:
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buffer = buffer[:end], buffer[end + 4 :]
            target = head.split(b" ", 2)[1]
            self.transport.write(RESPONSES.get(target, _NOT_FOUND))
        self._buffer = buffer


def main(argv: list[str]) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    port = int(argv[1]) if len(argv) > 1 else 8081
    listening = reactor.listenTCP(port, Factory.forProtocol(Raw), backlog=1024, interface="127.0.0.1")
    print(f"listening on 127.0.0.1:{listening.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv)

"""The general path's own Python cost per request, without sockets or the reactor.

    taskset -c 0 python bench/pass_cost.py [--requests 20000] [--runs 5]

accel as ``twistd accel`` builds it (:func:`accel.app.build_accelerator`, the
disk store, the server factory with the hit fast path, no access log), on a
``MemoryReactorClock`` whose clock never moves, with the client's connection
and one kept-alive origin connection on ``StringTransport``\\ s. Each request
goes all the way round: its head into the server protocol, the proxy's
request out to the origin transport, a canned 1 KiB origin response into the
origin connection, the response out to the client transport. What is left
out is the kernel and the reactor (reads, writes, epoll), which a real run
adds on top; what is measured is all of accel's Python on the general path.

Rows (best of ``--runs`` runs, as noise only adds time):

* ``pass 1 KiB``: ``Cache-Control: no-store`` from the origin, so every
  request is a pass-through (after the first, under a hit-for-miss marker);
* ``bypass 1 KiB``: a route whose cache is off: plain forwarding;
* ``revalidate 1 KiB``: a stored response with ``no-cache`` and an ``ETag``,
  revalidated with a ``304`` on every request;
* ``miss 1 KiB``: a new URL on every request (``?n=1``, ``?n=2``, ...),
  answered ``max-age=86400``: fetched, stored in the real store on a temp
  dir, never hit. Every miss commits its row alone (group commit), as one
  client asking one URL at a time would.

After each request the reactor's due calls run, as at the end of a reactor
turn: that commits the turn's stored rows and releases the responses' last
bytes held for them.

CPU time of this process (``time.process_time``), so time spent waiting for
the CPU does not count. The number is deterministic enough to compare two versions of accel on a
busy machine, which ``wrk`` against ``bench/hit.py`` is not; GC time is
included, as it is in service.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from accel.app import build_accelerator, open_store, server_limits
from accel.http.server import HTTPServerFactory
from accel.tap import Options

BODY = b"k" * 1024
RESPONSES = {
    "pass": b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
    b"cache-control: no-store\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY),
    "revalidate": b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
    b'cache-control: no-cache\r\netag: "v1"\r\ncontent-length: %d\r\n\r\n%s' % (len(BODY), BODY),
    "miss": b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
    b"cache-control: max-age=86400\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY),
}
NOT_MODIFIED = b'HTTP/1.1 304 Not Modified\r\ncache-control: no-cache\r\netag: "v1"\r\n\r\n'
HEAD = b"GET /%s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\n\r\n"


class _Rig:
    """One accel, one client connection, and whatever origin connections it opens."""

    def __init__(self, work: str, cache: bool) -> None:
        options = Options()
        options.parseOptions(
            ["--origin", "http://127.0.0.1:9", "--access-log", "off", "--cache-dir", work]
        )
        config = options.config
        assert config is not None
        if not cache:
            config = evolve(
                config,
                sites=tuple(
                    evolve(site, routes=tuple(
                        evolve(route, cache=evolve(route.cache, enabled=False))
                        for route in site.routes
                    ))
                    for site in config.sites
                ),
            )  # fmt: skip
        self.reactor = reactor = MemoryReactorClock()
        store = open_store(work, config.cache_size, reactor) if cache else None
        handler = build_accelerator(config, reactor, store)
        factory = HTTPServerFactory(
            handler,
            reactor,
            limits=server_limits(config),
            body_limit=handler.body_limit,
            fast_path=handler.fast_hit,
        )
        self.client = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.client)
        self.origins: list[tuple[object, StringTransport]] = []
        self._fresh = 0

    def _connect(self) -> None:
        """Complete the connections the pool asked the reactor for."""
        while len(self.origins) < len(self.reactor.tcpClients):
            factory = self.reactor.tcpClients[len(self.origins)][2]
            transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 9))
            protocol = factory.buildProtocol(transport.getPeer())
            protocol.makeConnection(transport)
            self.origins.append((protocol, transport))

    def request(self, path: bytes, answer: bytes) -> None:
        """One request all the way round; the origin answers ``answer``."""
        self.server.dataReceived(HEAD % path)
        self._connect()
        for protocol, transport in self.origins:
            if transport.value():
                transport.clear()
                protocol.dataReceived(answer)  # type: ignore[attr-defined]
                self.reactor.advance(0)  # the end of the reactor turn
                return
        raise AssertionError("the request never reached the origin")

    def miss(self, path: bytes, answer: bytes) -> None:
        """A request for a URL never asked before (``path?n=N``), all the way round."""
        self._fresh += 1
        self.request(b"%s?n=%d" % (path, self._fresh), answer)


def _measure(name: str, rig: _Rig, path: bytes, answer: bytes, n: int, runs: int) -> None:
    one = rig.miss if answer is RESPONSES["miss"] else rig.request
    one(path, RESPONSES["revalidate"] if answer is NOT_MODIFIED else answer)  # prime
    one(path, answer)
    best = float("inf")
    for _ in range(runs):
        rig.client.clear()
        started = time.process_time()
        for _ in range(n):
            one(path, answer)
        best = min(best, (time.process_time() - started) / n)
        sent = rig.client.value()
        assert sent.count(b"HTTP/1.1 200 OK\r\n") == n, sent[-500:]
    print(f"{name:18} {best * 1e6:6.1f} us/request", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="accel-pass-cost-") as work:
        rig = _Rig(os.path.join(work, "a"), cache=True)
        _measure("pass 1 KiB", rig, b"private", RESPONSES["pass"], args.requests, args.runs)
        _measure("bypass 1 KiB", _Rig(os.path.join(work, "b"), cache=False), b"any",
                 RESPONSES["pass"], args.requests, args.runs)  # fmt: skip
        _measure("revalidate 1 KiB", rig, b"etag", NOT_MODIFIED, args.requests, args.runs)
        _measure("miss 1 KiB", rig, b"miss", RESPONSES["miss"], args.requests, args.runs)


if __name__ == "__main__":
    main(sys.argv[1:])

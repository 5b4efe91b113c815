"""A fill whose origin body came whole with its head (``OriginResponse.whole_body``).

Most small answers arrive in one read, head and body. A fill then writes
the body to the store and answers its client (and the requests that
collapsed onto it) at once, without a relay: head and body together, once
the stored entry is committed at the end of the turn, so that the client
has nothing of it before another worker finds it stored. These tests run
the accelerator over a real :class:`~accel.upstream.OriginPool` on
``StringTransport``\\ s (the path a fake upstream never takes), a real store,
and a ``MemoryReactorClock`` whose ``advance(0)`` ends the reactor's turn.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.cache.collapse import Collapser
from accel.cache.keys import primary_key
from accel.cache.store import INLINE_MAX, Store
from accel.http.dates import format_http_date
from accel.http.server import HTTPServerFactory
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.upstream import Origin, OriginPool, UpstreamSettings
from tests.fakes import T0, FakeResponder, end_turn, make_request

ORIGIN = Origin("http", "origin.test", 80)
KEY = primary_key(b"http", b"example.com", b"/a", None)
CACHEABLE = b"date: %s\r\ncache-control: max-age=60\r\n" % format_http_date(T0)


def answer(body: bytes, fields: bytes = CACHEABLE, status: bytes = b"200 OK") -> bytes:
    """An origin's answer with ``Content-Length`` framing ``body``."""
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\n\r\n%s" % (status, fields, len(body), body)


@pytest.fixture
def reactor() -> MemoryReactorClock:
    r = MemoryReactorClock()
    r.advance(T0)
    return r


@pytest.fixture
def cache(tmp_path: Path, reactor: MemoryReactorClock) -> Iterator[Store]:
    s = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, reactor, log=Logger(observer=lambda e: None))
    yield s
    s.close()


@pytest.fixture
def other(tmp_path: Path, cache: Store) -> Iterator[Store]:
    """The store as another worker process opens it."""
    s = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, MemoryReactorClock())
    yield s
    s.close()


class Proxy:
    """The accelerator before one origin, whose connections the test answers."""

    def __init__(self, reactor: MemoryReactorClock, store: Store) -> None:
        self.reactor = reactor
        self.pool = OriginPool([ORIGIN], reactor, UpstreamSettings())
        route = Route(upstream=self.pool, cache=CacheRules())
        router: Router[Route] = Router([(["*"], [("/", route)])])
        self.accel = Accelerator(router, reactor, store, Collapser(reactor, timeout=5.0, pass_ttl=60.0))
        self.connections: list[Protocol] = []

    def ask(self, method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None) -> FakeResponder:
        client = FakeResponder()
        self.accel.handle(make_request(b"/a", method=method, headers=headers or []), client)
        return client

    def origin(self, *data: bytes) -> None:
        """The origin connection asked receives ``data``, a read each: a new
        one if the pool opened one, else the one it reused."""
        if self.reactor.tcpClients:
            host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
            protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
            protocol.makeConnection(StringTransport())
            self.connections.append(protocol)
        protocol = self.connections[-1]
        for chunk in data:
            protocol.dataReceived(chunk)

    def sent(self) -> bytes:
        """What the proxy sent to the origin, on the last connection."""
        return self.connections[-1].transport.value()


def test_the_answer_waits_whole_for_the_commit(reactor, cache, other):
    """Nothing of a small stored answer reaches the client before another
    worker finds it stored; then all of it, head and body, finished, and no
    producer was ever registered."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    proxy.origin(answer(b"hello"))
    assert client.status is None and client.chunks == []
    assert other.lookup(KEY) == []
    end_turn(reactor)
    assert (client.status, client.body, client.finished) == (200, b"hello", True)
    assert client.producer is None and client.log["cache"] == "MISS"
    assert other.lookup(KEY) != []
    assert proxy.pool.idle_connections(ORIGIN) == 1


def test_the_stored_answer_is_the_next_requests_hit(reactor, cache):
    """The body stored from a whole answer is served, byte for byte, from the cache."""
    proxy = Proxy(reactor, cache)
    proxy.ask()
    body = bytes(range(256)) * 4
    proxy.origin(answer(body))
    end_turn(reactor)
    hit = proxy.ask()
    assert hit.body == body and hit.finished
    assert hit.header(b"cache-status").startswith(b"accel; hit")
    assert proxy.sent().count(b"GET ") == 1


def test_a_body_larger_than_a_row_holds_is_stored_whole(reactor, cache):
    """A whole body over INLINE_MAX goes to a spool file and is stored from it."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    body = b"x" * (INLINE_MAX + 100)
    proxy.origin(answer(body))
    end_turn(reactor)
    assert client.body == body and client.finished
    assert proxy.ask().body == body and proxy.sent().count(b"GET ") == 1


def test_collapsed_requests_follow_a_whole_answer(reactor, cache, other):
    """Requests that collapsed onto the fill get the same body, whole only
    once it is committed; the origin is asked once."""
    proxy = Proxy(reactor, cache)
    leader = proxy.ask()
    followers = [proxy.ask(), proxy.ask()]
    proxy.origin(answer(b"shared"))
    for follower in followers:
        assert not follower.finished and follower.body == b"share"
    end_turn(reactor)
    for client in [leader, *followers]:
        assert (client.status, client.body, client.finished) == (200, b"shared", True)
    assert all(f.header(b"cache-status").endswith(b"collapsed") for f in followers)
    assert other.lookup(KEY) != [] and proxy.sent().count(b"GET ") == 1


def test_an_answer_not_stored_is_sent_at_once(reactor, cache):
    """A whole answer the cache may not store goes to the client in the
    turn it arrives, and nothing is stored."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    proxy.origin(answer(b"private", b"cache-control: no-store\r\n"))
    assert (client.body, client.finished) == (b"private", True)
    assert cache.lookup(KEY) == []


def test_a_store_that_fails_its_commit_still_answers(tmp_path, reactor, cache, other):
    """The turn's transaction fails (the disk is full): the store degrades,
    and the client gets the whole answer all the same, nothing stored."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    proxy.origin(answer(b"hello"))
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as con:
        con.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON Cache BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
        )
    end_turn(reactor)
    assert (client.status, client.body, client.finished) == (200, b"hello", True)
    assert not cache.healthy and other.lookup(KEY) == []


def test_an_unwritable_spool_still_answers(tmp_path, reactor, cache):
    """A body that needs a spool file the disk will not give: the client gets
    it whole at once, nothing stored."""
    spool = tmp_path / "cache" / "spool"
    spool.rename(tmp_path / "spool.away")
    spool.write_bytes(b"")  # a file where the directory was: opening fails, even as root
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    body = b"y" * (INLINE_MAX + 1)
    proxy.origin(answer(body))
    assert (client.body, client.finished) == (body, True)
    end_turn(reactor)
    assert not cache.healthy


def test_a_writer_that_raises_still_answers(reactor, cache, monkeypatch):
    """A store write that raises is logged and dropped: the client gets the
    whole answer, and nothing is stored."""
    proxy = Proxy(reactor, cache)

    def broken(self: object, data: bytes) -> None:
        raise OSError("broken")

    monkeypatch.setattr("accel.cache.store.BodyWriter.write", broken)
    client = proxy.ask()
    proxy.origin(answer(b"hello"))
    end_turn(reactor)
    assert (client.body, client.finished) == (b"hello", True)
    assert cache.lookup(KEY) == []


def test_a_body_cut_after_a_whole_head_is_never_stored(reactor, cache):
    """A head that came whole with part of its body, the origin then closing:
    the client's response is aborted and nothing is stored."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask()
    proxy.origin(answer(b"hello")[:-2])
    assert client.status == 200 and not client.finished
    proxy.connections[-1].connectionLost(Failure(ConnectionDone()))
    end_turn(reactor)
    assert client.aborted and not client.finished
    assert cache.lookup(KEY) == []


def test_head_gets_the_head_and_stores_the_body(reactor, cache):
    """A HEAD miss is answered with the head alone, and the GET's body it
    fetched is stored for the next GET."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask(method=b"HEAD")
    proxy.origin(answer(b"hello"))
    end_turn(reactor)
    assert (client.status, client.body, client.finished) == (200, b"", True)
    assert client.header(b"content-length") == b"5"
    assert proxy.ask().body == b"hello" and proxy.sent().count(b"GET ") == 1


def test_a_revalidation_answered_whole_replaces_the_entry(reactor, cache):
    """A stale entry revalidated and answered with a new 200 that came whole:
    the client gets the new body, which is stored in place of the old."""
    proxy = Proxy(reactor, cache)
    proxy.ask()
    proxy.origin(answer(b"old", CACHEABLE + b'etag: "1"\r\n'))
    end_turn(reactor)
    reactor.advance(120)
    client = proxy.ask()
    fields = b'date: %s\r\ncache-control: max-age=60\r\netag: "2"\r\n' % format_http_date(T0 + 120)
    proxy.origin(answer(b"new", fields))
    assert b'if-none-match: "1"' in proxy.sent().lower()
    end_turn(reactor)
    assert (client.body, client.finished, client.log["cache"]) == (b"new", True, "EXPIRED")
    assert proxy.ask().body == b"new" and proxy.sent().count(b"GET ") == 2


def test_a_revalidation_answered_304_serves_the_stored_body(reactor, cache):
    """A stale entry revalidated with a 304 (no body) is freshened and served."""
    proxy = Proxy(reactor, cache)
    proxy.ask()
    proxy.origin(answer(b"kept", CACHEABLE + b'etag: "1"\r\n'))
    end_turn(reactor)
    reactor.advance(120)
    client = proxy.ask()
    fields = b'date: %s\r\ncache-control: max-age=60\r\netag: "1"\r\n' % format_http_date(T0 + 120)
    proxy.origin(b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % fields)
    end_turn(reactor)
    assert (client.body, client.finished, client.log["cache"]) == (b"kept", True, "REVALIDATED")


def test_the_clients_precondition_is_answered_and_the_body_stored(reactor, cache):
    """A miss with If-None-Match matching the fetched ETag gets a 304, and the
    whole body is stored all the same."""
    proxy = Proxy(reactor, cache)
    client = proxy.ask(headers=[(b"If-None-Match", b'"1"')])
    proxy.origin(answer(b"hello", CACHEABLE + b'etag: "1"\r\n'))
    end_turn(reactor)
    assert (client.status, client.finished) == (304, True)
    assert proxy.ask().body == b"hello" and proxy.sent().count(b"GET ") == 1


class _Sends(StringTransport):
    """A client's transport that notes each write it is given (a ``send`` each)."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sends.append(data)
        super().write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))


def test_the_clients_head_and_body_leave_in_one_write(reactor, cache):
    """Over the real server protocol: a small stored miss's response, head
    and body, reaches the client's transport in one write, at the end of the
    turn, and the connection then answers its next request (a hit)."""
    proxy = Proxy(reactor, cache)
    server = HTTPServerFactory(proxy.accel, reactor).buildProtocol(None)
    client = _Sends()
    server.makeConnection(client)
    server.dataReceived(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n")
    proxy.origin(answer(b"hello"))
    assert client.sends == []
    end_turn(reactor)
    assert len(client.sends) == 1
    head, _, body = client.sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"hello"
    server.dataReceived(b"GET /a HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert len(client.sends) == 2 and client.sends[1].endswith(b"\r\n\r\nhello")
    server.connectionLost(Failure(ConnectionDone()))

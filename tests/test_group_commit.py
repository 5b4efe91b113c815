"""A stored response is whole at its client only once every worker finds it stored.

The store commits the rows stored during one reactor turn together, at the
end of the turn ("Group commit" in accel.cache.store). Worker processes
share one store directory and one listening socket, so a client's next
request may land on another worker: the last bytes of a response that is
being stored (the completing body bytes, the final chunk, or the whole of
a small body) must not reach the client before the row is committed.

"Another worker" is a second :class:`Store` on the same directory (its own
SQLite connection, as another process has). The client is a responder that,
at every byte it receives and when its response completes, asks that other
store whether it finds the URL. The accelerator, the store and the time
are real; the origin is a fake (tests/fakes.py); the reactor's turn is a
task.Clock step (:func:`tests.fakes.end_turn`).
"""

from __future__ import annotations

import sqlite3

import pytest
from attrs import define, field
from twisted.internet.task import Clock

from accel.cache.collapse import Collapser
from accel.cache.keys import primary_key
from accel.cache.store import Store
from accel.http.dates import format_http_date
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from tests.fakes import T0, FakeResponder, FakeUpstream, always, end_turn, make_request, response

CACHEABLE = [(b"Date", format_http_date(T0)), (b"Cache-Control", b"max-age=60")]
KEY = primary_key(b"http", b"example.com", b"/", None)


@pytest.fixture
def other(tmp_path, store):
    """The store as another worker process opens it."""
    s = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, Clock())
    yield s
    s.close()


@define
class Client(FakeResponder):
    """A client that notes, as each byte arrives and as its response ends,
    whether another worker would find the URL stored."""

    other: Store | None = None
    #: (bytes of body received so far, finished, found by the other worker)
    seen: list[tuple[int, bool, bool]] = field(factory=list)

    def write(self, data: bytes) -> None:
        super().write(data)
        self._note()

    def finish(self) -> None:
        super().finish()
        self._note()

    def _note(self) -> None:
        assert self.other is not None
        self.seen.append((len(self.body), self.finished, bool(self.other.lookup(KEY))))


def make_proxy(clock: Clock, store: Store, upstream: FakeUpstream) -> Accelerator:
    route = Route(upstream=upstream, cache=CacheRules())
    router: Router[Route] = Router([(["*"], [("/", route)])])
    return Accelerator(router, clock, store, Collapser(clock, timeout=5.0, pass_ttl=60.0))


def ask(proxy: Accelerator, other: Store) -> Client:
    client = Client(other=other)
    proxy.handle(make_request(b"/"), client)
    return client


def test_the_last_byte_of_a_stored_body_waits_for_the_commit(clock, store, other):
    """Content-Length framing: the byte that completes the body reaches the
    client only when another worker finds the response stored."""
    proxy = make_proxy(clock, store, FakeUpstream(auto=always(headers=CACHEABLE, body=b"hello")))
    client = ask(proxy, other)
    end_turn(clock)
    assert client.body == b"hello" and client.finished
    assert [found for size, _, found in client.seen if size == 5] == [True, True]


def test_a_body_in_several_chunks_is_held_by_its_last_only(clock, store, other):
    """The chunks before the last go out as they arrive; the last waits for the commit."""
    upstream = FakeUpstream()
    proxy = make_proxy(clock, store, upstream)
    client = ask(proxy, other)
    origin, body = response(200, [*CACHEABLE, (b"Content-Length", b"6")], complete=False)
    body.length = 6
    upstream.calls[0].deferred.callback(origin)
    body.feed(b"abc")
    assert client.body == b"abc"
    body.feed(b"def")
    body.finish()
    assert client.body == b"abc"
    end_turn(clock)
    assert client.body == b"abcdef" and client.finished
    assert all(found for size, _, found in client.seen if size == 6)


def test_the_final_chunk_of_a_stored_chunked_body_waits_for_the_commit(clock, store, other):
    """Chunked framing: the client's response ends (its final chunk) only when
    another worker finds the response stored."""
    upstream = FakeUpstream()
    proxy = make_proxy(clock, store, upstream)
    client = ask(proxy, other)
    origin, body = response(200, CACHEABLE, complete=False)
    upstream.calls[0].deferred.callback(origin)
    body.feed(b"chunked")
    body.finish()
    assert client.body == b"chunked" and not client.finished
    end_turn(clock)
    assert client.seen[-1] == (7, True, True)


def test_a_follower_is_whole_only_once_the_fill_is_committed(clock, store, other):
    """A collapsed request following the fill gets its last byte only when
    another worker finds the response stored, as the leader's client."""
    upstream = FakeUpstream()
    proxy = make_proxy(clock, store, upstream)
    leader = ask(proxy, other)
    follower = ask(proxy, other)
    origin, body = response(200, [*CACHEABLE, (b"Content-Length", b"6")], complete=False)
    body.length = 6
    upstream.calls[0].deferred.callback(origin)
    body.feed(b"abc")
    body.feed(b"def")
    assert follower.body == b"abcde"  # all but the last byte, while the fill is open
    body.finish()
    assert not follower.finished and not leader.finished
    end_turn(clock)
    assert follower.body == b"abcdef" and follower.finished
    for client in (leader, follower):
        assert all(found for size, _, found in client.seen if size == 6)
    assert len(upstream.calls) == 1


def test_a_response_not_stored_is_not_held(clock, store, other):
    """A response the cache does not store completes as its body ends, in the same turn."""
    headers = [(b"Date", format_http_date(T0)), (b"Cache-Control", b"no-store")]
    proxy = make_proxy(clock, store, FakeUpstream(auto=always(headers=headers, body=b"pass")))
    client = ask(proxy, other)
    assert client.body == b"pass" and client.finished


def test_a_failed_commit_still_completes_the_response(tmp_path, clock, store, other):
    """The database locked by another process past the timeout: the turn's
    commit fails, the store degrades, and the held response completes all
    the same (the cache then passes requests through)."""
    proxy = make_proxy(clock, store, FakeUpstream(auto=always(headers=CACHEABLE, body=b"hello")))
    client = ask(proxy, other)
    blocker = sqlite3.connect(tmp_path / "cache" / "cache.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        end_turn(clock)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert client.body == b"hello" and client.finished
    assert not store.healthy
    assert other.lookup(KEY) == []

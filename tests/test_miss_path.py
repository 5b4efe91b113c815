"""A stored miss as ``twistd accel`` runs it: the fill over a real origin pool, the
feed of a fill nobody follows, and the start-up heap frozen (docs/performance.rst,
"Seventh round").

The pool, the store and the accelerator share a ``MemoryReactorClock``; the
origin's connections are ``StringTransport``\\ s completed by hand, the client
a :class:`~tests.fakes.FakeResponder`.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from accel import app
from accel.cache.collapse import Collapser
from accel.cache.store import Store
from accel.config import Config
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.streams import Feed
from accel.upstream import Origin, OriginPool, UpstreamSettings
from tests.fakes import T0, FakeResponder, end_turn, make_request

ORIGIN = Origin("http", "origin.test", 80)
STORED = b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 5\r\n\r\nhello"


class _Rig:
    """An accelerator whose route's upstream is a real :class:`OriginPool`."""

    def __init__(self, directory: Path) -> None:
        self.reactor = reactor = MemoryReactorClock()
        reactor.advance(T0)
        self.store = Store(str(directory), 64 * 1024 * 1024, reactor)
        self.pool = OriginPool([ORIGIN], reactor, UpstreamSettings())
        route = Route(upstream=self.pool, cache=CacheRules())
        router: Router[Route] = Router([(["*"], [("/", route)])])
        self.proxy = Accelerator(router, reactor, self.store, Collapser(reactor, timeout=5.0, pass_ttl=60.0))
        self.origins: list[tuple[Protocol, StringTransport]] = []

    def get(self, target: bytes = b"/a") -> FakeResponder:
        r = FakeResponder()
        self.proxy.handle(make_request(target), r)
        return r

    def accept(self) -> tuple[Protocol, StringTransport]:
        """Complete the oldest connection the pool asked for."""
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.origins.append((protocol, transport))
        return protocol, transport


@pytest.fixture
def rig(tmp_path: Path):
    r = _Rig(tmp_path / "cache")
    yield r
    r.store.close()


def test_a_miss_through_an_origin_pool_is_stored_and_then_hit(rig):
    """The fill's origin call goes through the pool's callbacks (no Deferred):
    the response reaches the client whole once the turn commits its row, and
    the next request is a hit that the origin never sees."""
    first = rig.get()
    protocol, transport = rig.accept()
    assert transport.value().startswith(b"GET /a HTTP/1.1\r\n")
    protocol.dataReceived(STORED)
    end_turn(rig.reactor)
    assert first.status == 200 and first.body == b"hello" and first.finished
    assert first.log["cache"] == "MISS"
    transport.clear()
    hit = rig.get()
    assert hit.body == b"hello" and hit.log["cache"] == "HIT"
    assert transport.value() == b"" and rig.reactor.tcpClients == []


def test_an_origin_failure_during_a_fill_answers_the_client_with_an_error(rig):
    """The pool's failure callback reaches the fill: an origin that closes
    without answering gets the client a 502, and nothing is stored."""
    client = rig.get()
    protocol, _ = rig.accept()
    protocol.connectionLost(Failure(ConnectionDone()))
    rig.reactor.advance(0)
    assert client.status == 502 and client.finished
    assert rig.store.stats()["stores"] == 0


def test_a_client_leaving_before_the_origin_answers_ends_the_fill(rig):
    """The origin call is cancelled (its connection closed) and the fill is
    over: the next request for the URL goes to the origin at once rather
    than waiting, collapsed, for a fill that will never end."""
    leader = rig.get()
    _, first = rig.accept()
    leader.disconnect()
    assert first.disconnecting
    rig.get()
    assert len(rig.reactor.tcpClients) == 1  # a new origin request, not a wait


class _Writer:
    """A :class:`~accel.streams.SpoolWriter` that keeps its body in memory."""

    def __init__(self) -> None:
        self.written = 0
        self.active = True
        self.committed = False
        self.waiting: list[object] = []

    @property
    def spool_path(self) -> str | None:
        return None if self.committed else "/nonexistent/spool"

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def commit(self) -> object:
        self.committed, self.active = True, False
        return "entry"

    def when_committed(self, then) -> None:
        self.waiting.append(then)

    def abort(self) -> None:
        self.active = False


def test_a_feed_nobody_follows_is_over_at_its_commit():
    """With no follower when the body is committed, nothing waits for the
    commit on the feed's behalf, and a request arriving later is told it is
    too late to follow (it is answered from the store instead)."""
    writer = _Writer()
    feed = Feed(writer, 5)
    feed.write(b"hello")
    assert feed.commit() == "entry"
    assert writer.waiting == []
    assert feed.follow(FakeResponder()) is None


def test_start_up_freezes_the_heap_once_the_reactor_runs():
    """The service freezes nothing when it starts, and freezes the heap when
    the reactor runs (after every start-up object exists)."""
    reactor = MemoryReactorClock()
    frozen: list[bool] = []
    service = app._FrozenStartUp(reactor, lambda: frozen.append(True))
    service.startService()
    assert frozen == []
    for hook, args, kwargs in reactor.whenRunningHooks:
        hook(*args, **kwargs)
    assert frozen == [True]


def test_freeze_heap_moves_live_objects_out_of_the_collector_s_reach():
    """After :func:`accel.app.freeze_heap` the objects alive are in the
    permanent generation, which collections skip."""
    try:
        app.freeze_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_twistd_accel_freezes_its_start_up_heap(tmp_path: Path):
    """``make_service`` includes the freezing service: ``twistd accel`` and each
    worker (which runs ``make_service`` too) freeze their own heap."""
    path = tmp_path / "accel.toml"
    path.write_text(
        f'listen = ["tcp:0:interface=127.0.0.1"]\n[cache]\ndir = "{tmp_path / "cache"}"\n'
        '[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = ["http://127.0.0.1:9"]\n'
    )
    top = app.make_service(Config.from_toml(str(path)), MemoryReactorClock())
    try:
        assert any(isinstance(service, app._FrozenStartUp) for service in top)
    finally:
        top.stopService()


class _Heap:
    """The freezing service with its freeze and thaw recorded, on a MemoryReactorClock."""

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.calls: list[str] = []
        self.service = app._FrozenStartUp(
            self.reactor, lambda: self.calls.append("freeze"), lambda: self.calls.append("thaw")
        )
        self.service.startService()

    def run(self) -> None:
        for hook, args, kwargs in self.reactor.whenRunningHooks:
            hook(*args, **kwargs)


def test_a_reload_thaws_the_heap_until_the_replaced_handler_retires():
    """What is frozen is never collected: a reload thaws the heap, so the cycles
    the replaced configuration leaves can be collected, and it is frozen
    again on the turn after the replaced handler has retired."""
    heap = _Heap()
    heap.run()
    retired: Deferred[None] = Deferred()
    heap.service.thaw_until(retired)
    assert heap.calls == ["freeze", "thaw"] and not heap.service.frozen
    heap.reactor.advance(1)
    assert heap.calls == ["freeze", "thaw"]
    retired.callback(None)
    assert heap.calls == ["freeze", "thaw"]
    heap.reactor.advance(0)
    assert heap.calls == ["freeze", "thaw", "freeze"] and heap.service.frozen


def test_overlapping_reloads_freeze_again_once_both_have_retired():
    """A second reload while the first replaced handler still serves: the heap
    stays thawed until both have retired."""
    heap = _Heap()
    heap.run()
    first: Deferred[None] = Deferred()
    second: Deferred[None] = Deferred()
    heap.service.thaw_until(first)
    heap.service.thaw_until(second)
    first.callback(None)
    heap.reactor.advance(0)
    assert heap.calls == ["freeze", "thaw"]
    second.callback(None)
    heap.reactor.advance(0)
    assert heap.calls == ["freeze", "thaw", "freeze"]


def test_a_reload_in_the_turn_before_the_freeze_keeps_it_thawed():
    """A reload after the previous one's handler retired but before the heap
    was frozen again: the pending freeze waits for the new one's too."""
    heap = _Heap()
    heap.run()
    first: Deferred[None] = Deferred()
    heap.service.thaw_until(first)
    first.callback(None)  # the freeze is scheduled for the next turn
    second: Deferred[None] = Deferred()
    heap.service.thaw_until(second)
    heap.reactor.advance(0)
    assert heap.calls == ["freeze", "thaw"]
    second.callback(None)
    heap.reactor.advance(0)
    assert heap.calls == ["freeze", "thaw", "freeze"]


def test_a_heap_never_frozen_is_left_alone_by_a_reload():
    """Before the reactor runs (or under a test's MemoryReactor) nothing was
    frozen: a reload neither thaws nor freezes anything."""
    heap = _Heap()
    retired: Deferred[None] = Deferred()
    heap.service.thaw_until(retired)
    retired.callback(None)
    heap.reactor.advance(0)
    assert heap.calls == []


def test_sighup_thaws_the_frozen_heap_of_twistd_accel(tmp_path: Path):
    """make_service hands the reloader its freezing service: a SIGHUP reload
    thaws the heap the start-up froze."""
    from tests.test_reload import Running

    running = Running(tmp_path)
    (heap,) = [s for s in running.top if isinstance(s, app._FrozenStartUp)]
    calls: list[str] = []
    heap._freeze = lambda: calls.append("freeze")
    heap._thaw = lambda: calls.append("thaw")
    for hook, args, kwargs in running.clock.whenRunningHooks:
        if getattr(hook, "__self__", None) is heap:
            hook(*args, **kwargs)
    running.hup()
    assert calls == ["freeze", "thaw"]

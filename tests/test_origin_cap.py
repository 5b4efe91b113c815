"""The per-origin connection cap and its wait queue (``upstream.max_connections_per_origin``,
``queue``, ``queue_timeout``), as nginx's ``max_conns`` and ``queue``.

Three groups: the pure choice among origins by how crowded they are; the
pool over ``MemoryReactorClock`` and ``StringTransport`` (who connects, who
waits, who is handed which connection, timeouts, cancellation, close); and
the whole stack over real loopback sockets, counting the connections the
origin sees.
"""

from __future__ import annotations

import tempfile

import pytest
import treq
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from accel.app import build_accelerator
from accel.cache.store import Store
from accel.config import Config, OriginURL, Route, UpstreamLimits
from accel.config import Site as SiteConfig
from accel.http.headers import Headers
from accel.http.server import HTTPServerFactory
from accel.upstream import (
    Origin,
    OriginHealth,
    OriginPool,
    OriginResponse,
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamSettings,
    choose_origin,
)

# -- pure: the choice by crowding ----------------------------------------------

UP = OriginHealth()
DOWN = OriginHealth().failed(0.0, 1, 10.0)


def test_an_origin_with_room_is_chosen_over_one_at_its_cap():
    """Round-robin skips an origin at its cap (crowding 1) while another has room."""
    assert choose_origin([UP, UP, UP], 0, set(), 5.0, [1, 0, 0]) == 1
    assert choose_origin([UP, UP, UP], 2, set(), 5.0, [0, 1, 1]) == 0


def test_all_at_the_cap_chooses_one_whose_queue_has_room():
    """With every origin at its cap, one that can still queue comes before a full one."""
    assert choose_origin([UP, UP], 0, set(), 5.0, [2, 1]) == 1
    assert choose_origin([UP, UP], 0, set(), 5.0, [1, 1]) == 0


def test_a_down_origin_with_room_does_not_beat_an_up_one_at_its_cap():
    """Passive health comes first: a request waits for an up origin rather than try a
    down one.
    """
    assert choose_origin([DOWN, UP], 0, set(), 5.0, [0, 1]) == 1


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=0, max_value=2)),
        min_size=1,
        max_size=6,
    ),
    st.integers(min_value=0, max_value=10),
    st.sets(st.integers(min_value=0, max_value=5)),
)
def test_no_available_origin_is_less_crowded_than_the_choice(origins, start, exclude):
    """Among the untried origins that are up, none is less crowded than the one chosen."""
    health = [UP if up else DOWN for up, _ in origins]
    crowding = [level for _, level in origins]
    index = choose_origin(health, start, exclude, 5.0, crowding)
    untried = set(range(len(origins))) - exclude
    if not untried:
        assert index is None
        return
    assert index in untried
    up = [i for i in untried if health[i].available(5.0)]
    if up:
        assert health[index].available(5.0)
        assert crowding[index] == min(crowding[i] for i in up)


def test_settings_refuse_bad_cap_and_queue_values():
    """Negative caps and queues, and a queue timeout that is not positive, are refused."""
    with pytest.raises(ValueError):
        UpstreamSettings(max_connections_per_origin=-1)
    with pytest.raises(ValueError):
        UpstreamSettings(queue=-1)
    with pytest.raises(ValueError, match="queue_timeout"):
        UpstreamSettings(queue_timeout=0)


# -- the pool, clock-driven ----------------------------------------------------

A = Origin.parse("http://127.0.0.1:8080")
B = Origin.parse("http://127.0.0.2:8080")
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


class CapTests(SynchronousTestCase):
    """The pool over StringTransport, with time from a MemoryReactorClock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def make_pool(
        self, origins: tuple[Origin, ...] = (A,), **settings: object
    ) -> OriginPool:
        return OriginPool(list(origins), self.reactor, UpstreamSettings(**settings))  # type: ignore[arg-type]

    def get(self, pool: OriginPool, target: bytes = b"/x") -> Deferred[OriginResponse]:
        return pool.request(b"GET", target, Headers([(b"host", b"example.com")]))

    def accept(self) -> tuple[Protocol, StringTransport]:
        """Complete the oldest pending TCP connection attempt to a StringTransport."""
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_a_request_beyond_the_cap_waits_without_connecting(self):
        """With max_connections_per_origin=2 the third request connects nowhere and waits."""
        pool = self.make_pool(max_connections_per_origin=2)
        self.get(pool), self.get(pool)
        third = self.get(pool)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertNoResult(third)
        self.assertEqual(pool.open_connections(A), 2)
        self.assertEqual(pool.waiting_requests(A), 1)

    def test_idle_connections_count_toward_the_cap(self):
        """A pooled idle connection holds a place: the next request reuses it, and one
        more, beyond the cap, waits.
        """
        pool = self.make_pool(max_connections_per_origin=1)
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(d)
        self.assertEqual(pool.open_connections(A), 1)
        transport.clear()
        reusing, waiting = self.get(pool, b"/a"), self.get(pool, b"/b")
        self.assertTrue(transport.value().startswith(b"GET /a "))
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertNoResult(reusing)
        self.assertNoResult(waiting)

    def test_a_released_connection_goes_to_the_first_waiter(self):
        """A connection that finishes a response carries the oldest waiting request next,
        without being pooled or a new connection opened.
        """
        pool = self.make_pool(max_connections_per_origin=1)
        first = self.get(pool, b"/1")
        second, third = self.get(pool, b"/2"), self.get(pool, b"/3")
        protocol, transport = self.accept()
        transport.clear()
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(first)
        self.assertTrue(transport.value().startswith(b"GET /2 HTTP/1.1\r\n"))
        self.assertEqual(pool.idle_connections(A), 0)
        self.assertEqual(pool.waiting_requests(A), 1)
        transport.clear()
        protocol.dataReceived(NO_CONTENT)
        self.assertEqual(self.successResultOf(second).status, 204)
        self.assertTrue(transport.value().startswith(b"GET /3 HTTP/1.1\r\n"))
        protocol.dataReceived(NO_CONTENT)
        self.assertEqual(self.successResultOf(third).status, 204)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(pool.idle_connections(A), 1)

    def test_a_closed_connection_lets_a_waiter_connect(self):
        """A connection that closes frees its place: the first waiter opens a new one."""
        pool = self.make_pool(max_connections_per_origin=1)
        first, second = self.get(pool, b"/1"), self.get(pool, b"/2")
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        self.successResultOf(first)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])  # not until it is gone
        protocol.connectionLost(Failure(ConnectionDone()))
        _, new_transport = self.accept()
        self.assertTrue(new_transport.value().startswith(b"GET /2 HTTP/1.1\r\n"))
        self.assertEqual(pool.open_connections(A), 1)
        self.assertNoResult(second)

    def test_a_failed_connect_lets_a_waiter_connect(self):
        """A connection attempt that fails frees its place for the first waiter."""
        pool = self.make_pool(max_connections_per_origin=1)
        first, second = self.get(pool), self.get(pool)
        factory = self.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.failureResultOf(first, UpstreamConnectError)
        self.assertEqual(len(self.reactor.tcpClients), 2)  # the waiter's attempt
        self.assertEqual(pool.waiting_requests(A), 0)
        self.assertNoResult(second)

    def test_a_full_queue_refuses_at_once(self):
        """With the cap reached and ``queue`` requests waiting, the next fails with
        UpstreamBusy at once, and the origin is not blamed.
        """
        pool = self.make_pool(max_connections_per_origin=1, queue=1, max_fails=1)
        self.get(pool), self.get(pool)
        error = self.failureResultOf(self.get(pool), UpstreamBusy).value
        self.assertEqual(error.status, 503)
        self.assertIn(A.name, str(error))
        self.assertEqual(pool.health(A), OriginHealth())

    def test_queue_zero_refuses_at_the_cap(self):
        """``queue = 0``: no request waits; at the cap the answer is UpstreamBusy."""
        pool = self.make_pool(max_connections_per_origin=1, queue=0)
        self.get(pool)
        self.failureResultOf(self.get(pool), UpstreamBusy)

    def test_a_wait_longer_than_queue_timeout_fails(self):
        """A request still waiting after queue_timeout fails with UpstreamBusy and leaves
        the queue; the origin is not blamed.
        """
        pool = self.make_pool(max_connections_per_origin=1, queue_timeout=5, max_fails=1)
        first, second = self.get(pool), self.get(pool)
        protocol, _ = self.accept()
        self.reactor.advance(4.9)
        self.assertNoResult(second)
        self.reactor.advance(0.1)
        self.failureResultOf(second, UpstreamBusy)
        self.assertEqual(pool.waiting_requests(A), 0)
        self.assertEqual(pool.health(A), OriginHealth())
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(first)
        self.assertEqual(pool.idle_connections(A), 1)

    def test_served_waiters_have_no_timeout_left(self):
        """A waiter that got its connection is not failed when queue_timeout passes."""
        pool = self.make_pool(max_connections_per_origin=1, queue_timeout=5)
        first, second = self.get(pool), self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(first)
        self.reactor.advance(5)
        self.assertNoResult(second)
        protocol.dataReceived(NO_CONTENT)
        self.assertEqual(self.successResultOf(second).status, 204)

    def test_a_cancelled_waiter_leaves_the_queue(self):
        """A waiting request whose client went away leaves the queue at once; the
        connection released later is pooled, not handed to it.
        """
        pool = self.make_pool(max_connections_per_origin=1)
        first, second = self.get(pool), self.get(pool)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        self.assertEqual(pool.waiting_requests(A), 0)
        protocol, transport = self.accept()
        transport.clear()
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(first)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(pool.idle_connections(A), 1)
        self.reactor.advance(60)  # its queue timer went with it
        self.assertEqual(pool.idle_connections(A), 1)

    def test_the_origin_with_room_is_chosen(self):
        """With two origins, one at its cap is passed over though round-robin would pick it."""
        pool = self.make_pool((A, B), max_connections_per_origin=1)
        on_a, on_b = self.get(pool), self.get(pool)
        _, _ = self.accept()
        b_protocol, b_transport = self.accept()
        b_protocol.dataReceived(NO_CONTENT)
        self.successResultOf(on_b)
        b_transport.clear()
        self.get(pool, b"/next")  # round-robin's turn is A's, which is full
        self.assertTrue(b_transport.value().startswith(b"GET /next HTTP/1.1\r\n"))
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertNoResult(on_a)

    def test_requests_wait_only_when_every_origin_is_full(self):
        """Two origins with cap 1 each: two requests connect, one to each; the third waits."""
        pool = self.make_pool((A, B), max_connections_per_origin=1)
        self.get(pool), self.get(pool)
        third = self.get(pool)
        self.assertEqual(
            sorted(client[0] for client in self.reactor.tcpClients),
            ["127.0.0.1", "127.0.0.2"],
        )
        self.assertNoResult(third)
        self.assertEqual(pool.waiting_requests(A) + pool.waiting_requests(B), 1)

    def test_closing_the_pool_fails_the_waiters(self):
        """pool.close() fails waiting requests with a connect error; those in flight go on."""
        pool = self.make_pool(max_connections_per_origin=1)
        first, second = self.get(pool), self.get(pool)
        protocol, _ = self.accept()
        pool.close()
        self.assertIn("closed", str(self.failureResultOf(second, UpstreamConnectError).value))
        self.assertEqual(pool.waiting_requests(A), 0)
        protocol.dataReceived(NO_CONTENT)
        self.assertEqual(self.successResultOf(first).status, 204)

    def test_the_keep_alive_race_retry_keeps_its_place(self):
        """A reused connection lost before the response: the retry opens a new connection
        in its place, ahead of the waiters, and the cap still holds.
        """
        pool = self.make_pool(max_connections_per_origin=1)
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(NO_CONTENT)
        self.successResultOf(d)
        retried, waiting = self.get(pool, b"/retried"), self.get(pool, b"/waiting")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(pool.open_connections(A), 1)
        new, transport = self.accept()
        self.assertTrue(transport.value().startswith(b"GET /retried HTTP/1.1\r\n"))
        self.assertEqual(pool.waiting_requests(A), 1)
        new.dataReceived(NO_CONTENT)
        self.successResultOf(retried)
        self.assertNoResult(waiting)

    def test_no_cap_by_default(self):
        """Without max_connections_per_origin every request opens its own connection."""
        pool = self.make_pool()
        for _ in range(200):
            self.get(pool)
        self.assertEqual(len(self.reactor.tcpClients), 200)
        self.assertEqual(pool.waiting_requests(A), 0)


# -- real sockets ----------------------------------------------------------------


class HeldOrigin(Resource):
    """Answers every request with ``Cache-Control: no-store``, held until released."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.held: list = []

    def render_GET(self, request):
        request.setHeader(b"cache-control", b"no-store")
        self.held.append(request)
        return NOT_DONE_YET

    def release(self) -> None:
        held, self.held = self.held, []
        for request in held:
            request.write(request.path)
            request.finish()


class Counting(WrappingFactory):
    """Counts the connections open at once, and the most there ever were."""

    def __init__(self, wrapped) -> None:
        super().__init__(wrapped)
        self.most = 0

    def registerProtocol(self, protocol) -> None:
        super().registerProtocol(protocol)
        self.most = max(self.most, len(self.protocols))


class CapOverSocketsTests(TestCase):
    """accel with ``max_connections_per_origin = 2`` in front of a real origin."""

    @defer.inlineCallbacks
    def setUp(self):
        self.origin = HeldOrigin()
        site = Site(self.origin)
        site.log = lambda request: None
        self.counting = Counting(site)
        origin_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.counting)
        self.addCleanup(origin_port.stopListening)
        origin = OriginURL("http", "127.0.0.1", origin_port.getHost().port)
        config = Config(
            sites=(SiteConfig(hosts=(), routes=(Route(prefix=b"/", origins=(origin,)),)),),
            upstream=UpstreamLimits(max_connections_per_origin=2),
        )
        cache_dir = tempfile.mkdtemp(prefix="accel-cap-")
        self.addCleanup(__import__("shutil").rmtree, cache_dir, True)
        store = Store(cache_dir, 64 << 20, reactor)
        self.addCleanup(store.close)
        handler = build_accelerator(config, reactor, store)
        self.addCleanup(self.close_all, handler)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(HTTPServerFactory(handler, reactor))
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def close_all(self, handler):
        self.origin.release()
        yield handler.close()
        for protocol in list(self.counting.protocols):
            protocol.transport.loseConnection()

    @defer.inlineCallbacks
    def fetch(self, path: str):
        response = yield treq.get(self.base + path, headers={"Host": "www.example.test"}, persistent=False)
        body = yield response.content()
        return response.code, body

    @defer.inlineCallbacks
    def test_five_concurrent_requests_share_two_connections(self):
        """Five concurrent uncacheable requests: the origin never has more than two
        connections open, and every client gets its 200.
        """
        pending = [self.fetch(f"/u/{n}") for n in range(5)]
        results = defer.gatherResults(pending)
        served = 0
        while served < 5:
            # Wait until the origin holds all it can, then a little longer
            # for any request that would get past the cap.
            while len(self.origin.held) < min(2, 5 - served):
                yield deferLater(reactor, 0.01, lambda: None)
            yield deferLater(reactor, 0.1, lambda: None)
            self.assertLessEqual(len(self.origin.held), 2)
            self.assertLessEqual(len(self.counting.protocols), 2)
            served += len(self.origin.held)
            self.origin.release()
        outcomes = yield results
        self.assertEqual(sorted(outcomes), [(200, f"/u/{n}".encode()) for n in range(5)])
        self.assertEqual(self.counting.most, 2)

"""The origin-side HTTP/1.1 client: origins, pools, keep-alive, timeouts, streaming.

Three groups: pure values (origin URLs, settings, passive health, choice);
clock-driven wire logic over ``MemoryReactorClock`` and ``StringTransport``
(timeouts, back-pressure, limits, cancellation); and real loopback sockets
(TCP on 127.0.0.1 port 0, a UNIX socket, TLS) against small origins written
here, twisted.web for the well-behaved and raw protocols for misbehaviour.
"""

from __future__ import annotations

import datetime
import gc
import ipaddress
import os
import shutil
import socket
import tempfile
import weakref
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from accel import directwrite
from accel.http.headers import Headers
from accel.http.model import EMPTY_BODY, BodySink
from accel.upstream import (
    Origin,
    OriginHealth,
    OriginPool,
    OriginResponse,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamSettings,
    UpstreamTimeout,
    choose_origin,
)

# -- helpers -------------------------------------------------------------------


class Sink:
    """A BodySink that records all; ``done`` fires with the body or the failure."""

    def __init__(self, on_data: Callable[[bytes], None] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: Exception | None = None
        self.done: Deferred[bytes] = Deferred()
        self._on_data = on_data

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self._on_data is not None:
            self._on_data(chunk)

    def end(self) -> None:
        self.ended = True
        self.done.callback(b"".join(self.chunks))

    def fail(self, reason: Exception) -> None:
        self.error = reason
        self.done.errback(reason)


async def read(response: OriginResponse) -> bytes:
    sink = Sink()
    response.body.deliver(sink)
    return await sink.done


class ListBody:
    """A request body delivered from a list, all at once, recording calls."""

    def __init__(self, chunks: list[bytes], length: int | str | None = "auto") -> None:
        self.chunks = chunks
        self.length = sum(map(len, chunks)) if length == "auto" else length
        self.delivered = 0
        self.discarded = False

    def deliver(self, sink: BodySink) -> None:
        self.delivered += 1
        for chunk in self.chunks:
            sink.data(chunk)
        sink.end()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def discard(self) -> None:
        self.discarded = True


class ManualBody:
    """A request body the test feeds by hand, recording back-pressure."""

    def __init__(self, length: int | None = None) -> None:
        self.length = length
        self.sink: BodySink | None = None
        self.paused = False
        self.discarded = False

    def deliver(self, sink: BodySink) -> None:
        self.sink = sink

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def discard(self) -> None:
        self.discarded = True


# -- pure: origins and settings -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "prefix", "authority", "name"),
    [
        (
            "http://App.example",
            "http",
            "app.example",
            80,
            b"",
            b"app.example",
            "http://app.example",
        ),
        (
            "http://10.0.0.1:8080",
            "http",
            "10.0.0.1",
            8080,
            b"",
            b"10.0.0.1:8080",
            "http://10.0.0.1:8080",
        ),
        (
            "https://origin:443/",
            "https",
            "origin",
            443,
            b"",
            b"origin",
            "https://origin",
        ),
        (
            "https://[::1]:8443/api/v1/",
            "https",
            "::1",
            8443,
            b"/api/v1",
            b"[::1]:8443",
            "https://[::1]:8443/api/v1",
        ),
        (
            "http://app_1:81/x",
            "http",
            "app_1",
            81,
            b"/x",
            b"app_1:81",
            "http://app_1:81/x",
        ),
    ],
)
def test_origin_parses_network_urls(url, scheme, host, port, prefix, authority, name):
    """http(s) URLs give scheme, lower-case host, port (default by scheme), prefix,
    authority and name.
    """
    origin = Origin.parse(url)
    assert (origin.scheme, origin.host, origin.port, origin.prefix) == (
        scheme,
        host,
        port,
        prefix,
    )
    assert origin.authority == authority
    assert origin.name == name


def test_origin_parses_unix_socket():
    """``unix:/path`` is a UNIX socket origin with ``localhost`` as default Host."""
    origin = Origin.parse("unix:/run/app.sock")
    assert (origin.scheme, origin.path, origin.authority, origin.name) == (
        "unix",
        "/run/app.sock",
        b"localhost",
        "unix:/run/app.sock",
    )


@pytest.mark.parametrize(
    "url",
    [
        "app:8080",
        "ftp://app",
        "http://",
        "http://user@app",
        "http://app:port",
        "http://app:+80",
        "http://app?x=1",
        "http://app/#frag",
        "http://app/a b",
        "HTTP://app",
        "unix:relative.sock",
        "unix:",
    ],
)
def test_origin_refuses_other_urls(url):
    """Anything but http(s)://host[:port][/prefix] or unix:/path is refused, naming the
    input.
    """
    with pytest.raises(ValueError, match="expected http://host"):
        Origin.parse(url)


def test_origin_refuses_out_of_range_port():
    """Port 0 and ports above 65535 are refused."""
    for url in ("http://app:0", "http://app:65536"):
        with pytest.raises(ValueError, match="port between 1 and 65535"):
            Origin.parse(url)


def test_ca_file_only_for_https():
    """A CA bundle on a plain-text origin is a configuration mistake."""
    with pytest.raises(ValueError, match="only applies to https"):
        Origin.parse("http://app", ca_file="/etc/ca.pem")
    assert Origin.parse("https://app", ca_file="/etc/ca.pem").ca_file == "/etc/ca.pem"


def test_settings_refuse_non_positive_timeouts():
    """Timeouts must be positive numbers of seconds."""
    with pytest.raises(ValueError, match="connect_timeout"):
        UpstreamSettings(connect_timeout=0)


def test_pool_needs_an_origin():
    """An empty origin list is refused."""
    with pytest.raises(ValueError, match="at least one origin"):
        OriginPool([], MemoryReactorClock())


# -- pure: passive health and choice -------------------------------------------


def test_max_fails_within_fail_timeout_takes_origin_down():
    """The max_fails-th failure within fail_timeout skips the origin that long."""
    health = OriginHealth().failed(100.0, 3, 10.0).failed(101.0, 3, 10.0)
    assert health.available(101.0)
    health = health.failed(102.0, 3, 10.0)
    assert not health.available(111.9)
    assert health.available(112.0)


def test_failures_older_than_fail_timeout_are_forgotten():
    """Failures spread wider than fail_timeout never add up to max_fails."""
    health = OriginHealth()
    for now in (0.0, 10.0, 20.0, 30.0):
        health = health.failed(now, 2, 10.0)
    assert health.available(30.0)


def test_max_fails_zero_never_takes_origin_down():
    """max_fails=0 disables passive health."""
    health = OriginHealth()
    for now in range(10):
        health = health.failed(float(now), 0, 10.0)
    assert health.available(9.0)


def test_success_forgives_failures():
    """A response head resets the failure count."""
    health = OriginHealth().failed(0.0, 2, 10.0).succeeded()
    assert health.failed(1.0, 2, 10.0).available(1.0)


def test_choice_is_round_robin_over_available_origins():
    """From the cursor, the next available origin not yet tried is chosen."""
    down = OriginHealth().failed(0.0, 1, 10.0)
    up = OriginHealth()
    assert choose_origin([up, up, up], 1, set(), 5.0) == 1
    assert choose_origin([up, down, up], 1, set(), 5.0) == 2
    assert choose_origin([up, down, up], 1, {2}, 5.0) == 0


def test_all_down_tries_the_least_recently_failed():
    """When every remaining origin is down, the one that failed longest ago is tried."""
    early = OriginHealth().failed(1.0, 1, 10.0)
    late = OriginHealth().failed(2.0, 1, 10.0)
    assert choose_origin([late, early], 0, set(), 3.0) == 1
    assert choose_origin([late, early], 0, {1}, 3.0) == 0
    assert choose_origin([late, early], 0, {0, 1}, 3.0) is None


@given(
    st.lists(st.floats(min_value=-1, max_value=20), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=10),
    st.sets(st.integers(min_value=0, max_value=5)),
)
def test_choice_never_returns_an_excluded_origin(failures, start, exclude):
    """The choice is an untried origin, and there is one whenever any is untried."""
    health = [
        OriginHealth() if t < 0 else OriginHealth().failed(t, 1, 10.0) for t in failures
    ]
    index = choose_origin(health, start, exclude, 10.0)
    untried = set(range(len(health))) - exclude
    if untried:
        assert index in untried
    else:
        assert index is None


@given(
    st.floats(min_value=-1, max_value=20),
    st.integers(min_value=0, max_value=3),
    st.booleans(),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2)),
)
def test_a_single_origin_is_chosen_unless_tried(failure, start, tried, crowding):
    """With one origin, the choice is that origin unless it was tried, whatever
    its health and crowding (the pool skips the weighing for one origin)."""
    health = OriginHealth() if failure < 0 else OriginHealth().failed(failure, 1, 10.0)
    index = choose_origin(
        [health], start, {0} if tried else set(), 10.0, None if crowding is None else [crowding]
    )
    assert index == (None if tried else 0)


# -- reading a response head ---------------------------------------------------


class _Home:
    origin = Origin.parse("http://127.0.0.1:8080")
    clock = MemoryReactorClock()
    settings = UpstreamSettings()


class _Connection:
    requests = 0
    home = _Home()


def _framing_by_the_rules(
    pairs: list[tuple[bytes, bytes]], version: bytes
) -> tuple[str, int | None, bool] | None:
    """RFC 9112 sections 6.1, 6.3 and 9.3 read with Headers lookups, one at
    a time (the exchange reads them in one pass); ``None``: invalid framing
    (a length that is not one, a transfer coding other than chunked alone,
    which accel cannot decode, or any Transfer-Encoding in HTTP/1.0)."""
    headers = Headers(pairs)
    length: int | None = None
    if b"transfer-encoding" in headers:
        codings = [c.lower() for c in headers.get_list(b"transfer-encoding")]
        if codings != [b"chunked"] or version == b"1.0":
            return None
        framing = "chunked"
    elif (raw := headers.get(b"content-length")) is not None:
        if not raw.isdigit():
            return None
        framing, length = "content-length", int(raw)
    else:
        framing = "close"
    tokens = {token.lower() for token in headers.get_list(b"connection")}
    persistent = b"close" not in tokens and (version != b"1.0" or b"keep-alive" in tokens)
    return framing, length, persistent


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just(b"content-length"), st.sampled_from([b"0", b"12", b"1x", b"", b"3, 3"])),
            st.tuples(
                st.just(b"transfer-encoding"),
                st.sampled_from([b"chunked", b"gzip, chunked", b"chunked, gzip", b"CHUNKED", b""]),
            ),
            st.tuples(
                st.just(b"connection"),
                st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, foo", b"x, Close", b""]),
            ),
            st.tuples(st.just(b"content-type"), st.just(b"text/plain")),
        ),
        max_size=5,
    ),
    st.sampled_from([b"1.0", b"1.1"]),
)
def test_response_head_fields_are_read_as_the_rules_say(pairs, version):
    """Body framing, length and persistence come out of the response's
    fields as RFC 9112 says, whatever their mix, repeats and order."""
    from accel.upstream.connection import Exchange

    exchange = Exchange(_Connection(), None, b"GET", b"", EMPTY_BODY)  # type: ignore[arg-type]
    exchange.data_received(b"HTTP/%s 200 OK\r\n" % version)  # status and version only
    exchange._pairs = list(pairs)
    expected = _framing_by_the_rules(pairs, version)
    if expected is None:
        with pytest.raises(UpstreamProtocolError):
            exchange.on_headers_complete()
        return
    exchange.on_headers_complete()
    framing, length, persistent = expected
    assert (exchange._framing.value, exchange._persistent) == (framing, persistent)
    assert exchange._response.body.length == length
    assert exchange._response.headers.pairs == pairs


class _Recorder:
    """A BodySink that records what it is told (no Deferred to leave unhandled)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.outcome = "open"

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def end(self) -> None:
        self.outcome = "end"

    def fail(self, reason: Exception) -> None:
        self.outcome = f"{type(reason).__name__}: {reason}"


def _answer_in_one_read(raw: bytes, method: bytes, whole: bool) -> tuple[object, ...]:
    """One request through a pool, answered with ``raw`` in one read: what the
    caller was told, the body it read, and what became of the connection.
    ``whole=False`` turns the whole-response reading off: llhttp reads it all."""
    reactor = MemoryReactorClock()
    pool = OriginPool([ORIGIN], reactor, UpstreamSettings(max_headers=6))
    told: list[tuple[object, ...]] = []
    sink = _Recorder()

    def response(r: OriginResponse) -> None:
        told.append((r.status, r.reason, r.version, r.headers.pairs, r.body.length))
        r.body.deliver(sink)

    def failed(failure: Failure) -> None:
        told.append((type(failure.value).__name__, str(failure.value)))

    pool.send(method, b"/", Headers([(b"host", b"h")]), EMPTY_BODY, None, response, failed)
    host, port, factory, _, _ = reactor.tcpClients.pop(0)
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    if not whole:
        protocol._wrappedProtocol.exchange._read_whole = lambda data: False
    protocol.dataReceived(raw)
    return (
        told,
        b"".join(sink.chunks),
        sink.outcome,
        transport.disconnecting,
        transport.disconnected,
        pool.idle_connections(ORIGIN),
    )


_FIELD_NAMES = [
    b"Content-Type", b"connection", b"Connection", b"Transfer-Encoding", b"Upgrade",
    b"Content-Length", b"Keep-Alive", b"X-A", b"x_b", b"X-A ", b" X-A",
]  # fmt: skip
_FIELD_VALUES = [
    b"text/plain", b"close", b" close", b"keep-alive", b"Keep-Alive, x", b"chunked",
    b"a b \t ", b"", b"\t", b"\xff", b"5", b"upgrade", b"h2c", b"0", b"a\r\n b",
    b"a\x00", b"\x7f", b"a\rb",
]  # fmt: skip
#: Content-Length values of ``n`` bytes, in forms llhttp reads and forms it refuses.
_LENGTH_FORMS = [
    b"%d", b"%d", b"%d ", b"1x", b"0%d", b"+%d", b" %d", b"%d, %d", b"%d,%d", b"%015d", b"%016d",
]  # fmt: skip


def _one_byte_changed(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw``, or (half the time) with one byte replaced by one that matters to framing."""
    if not raw or draw(st.booleans()):
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    byte = draw(st.sampled_from(b" \t\r\n:\x00\x7f\x80A1"))
    return raw[:at] + bytes([byte]) + raw[at + 1 :]


@st.composite
def plain_responses(draw: st.DrawFn) -> bytes:
    """Responses of the kind read whole without llhttp, sometimes with one byte changed."""
    version = draw(st.sampled_from([b"1.1", b"1.0"]))
    status = draw(st.sampled_from([b"200", b"204", b"206", b"304", b"404", b"599"]))
    reason = draw(st.sampled_from([b" OK", b" ", b" Not Modified", b" a  b "]))
    body = b"b" * draw(st.integers(0, 12))
    values = [b"text/plain", b"close", b" close", b"keep-alive", b"Keep-Alive, x", b"a b \t ", b"", b"\t"]
    names = [b"Content-Type", b"connection", b"Connection", b"Keep-Alive", b"X-A"]
    fields = draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(values)), max_size=6))
    if status in (b"204", b"304"):
        body = b""
    fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length", b"%d" % len(body)))
    head = b"HTTP/%s %s%s\r\n%s\r\n" % (
        version, status, reason, b"".join(b"%s: %s\r\n" % field for field in fields)
    )
    return _one_byte_changed(draw, head + body)


@st.composite
def origin_responses(draw: st.DrawFn) -> bytes:
    """Responses in one read of any kind: other framing, versions, statuses,
    field bytes, missing or extra bytes, sometimes with one byte changed."""
    version = draw(st.sampled_from([b"1.1", b"1.0", b"1.2", b"2.0"]))
    status = draw(st.sampled_from([b"200", b"204", b"206", b"304", b"404", b"599", b"103", b"101", b"600"]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not Modified", b" O\tK", b" \xe9t\xe9", b"  OK", b" O\x7fK"]))
    body = b"b" * draw(st.integers(0, 12))
    fields = draw(st.lists(st.tuples(st.sampled_from(_FIELD_NAMES), st.sampled_from(_FIELD_VALUES)), max_size=6))
    form = draw(st.sampled_from([*_LENGTH_FORMS, None]))
    if form is not None:
        length = form % ((len(body),) * form.count(b"%"))
        fields.insert(draw(st.integers(0, len(fields))), (b"Content-Length", length))
    head = b"HTTP/%s %s%s\r\n%s\r\n" % (
        version, status, reason, b"".join(b"%s: %s\r\n" % field for field in fields)
    )
    raw = head + body + draw(st.sampled_from([b"", b"", b"x", b"HTTP/1.1 200 OK\r\n\r\n"]))
    return _one_byte_changed(draw, raw[: len(raw) - draw(st.sampled_from([0, 0, 0, 1, len(body) + 2]))])


@given(st.one_of(plain_responses(), origin_responses()), st.sampled_from([b"GET", b"HEAD"]))
def test_a_whole_response_is_read_as_llhttp_reads_it(raw, method):
    """Read as one plain response in one read or by llhttp, a response gives
    the caller the same head or error and body, and its connection the same fate."""
    assert _answer_in_one_read(raw, method, whole=True) == _answer_in_one_read(
        raw, method, whole=False
    )


def test_a_whole_plain_response_skips_llhttp(monkeypatch):
    """A plain response that arrives whole is read without an llhttp parser,
    and its connection goes back to the pool."""
    from accel.upstream import connection

    def no_parser(_: object) -> None:
        raise AssertionError("llhttp was asked to read a whole plain response")

    monkeypatch.setattr(connection, "HttpResponseParser", no_parser)
    told, body, outcome, _, disconnected, idle = _answer_in_one_read(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
        b"GET",
        whole=True,
    )
    assert told == [
        (200, b"OK", b"1.1", [(b"content-type", b"text/plain"), (b"content-length", b"3")], 3)
    ]
    assert (body, outcome, disconnected, idle) == (b"abc", "end", False, 1)


# -- clock-driven wire logic ---------------------------------------------------

ORIGIN = Origin.parse("http://127.0.0.1:8080")


class MemoryTests(SynchronousTestCase):
    """The client over StringTransport, with time from a MemoryReactorClock."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def make_pool(self, **settings: object) -> OriginPool:
        return OriginPool([ORIGIN], self.reactor, UpstreamSettings(**settings))  # type: ignore[arg-type]

    def accept(self) -> tuple[Protocol, StringTransport]:
        """Complete the pending TCP connection attempt to a StringTransport."""
        host, port, factory, _, _ = self.reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def get(
        self, pool: OriginPool, method: bytes = b"GET", body=EMPTY_BODY
    ) -> Deferred[OriginResponse]:
        return pool.request(method, b"/x", Headers([(b"host", b"example.com")]), body)

    def test_a_finished_exchange_is_freed_without_the_cyclic_gc(self):
        """Once its response is read, no reference cycle keeps the exchange, its
        parser, its response or the request's Deferred alive: reference counting
        frees them at once, leaving nothing for the cyclic GC to find."""
        pool = self.make_pool()
        gc.disable()
        try:
            d = self.get(pool)
            protocol, _ = self.accept()
            exchange = protocol._wrappedProtocol.exchange  # the endpoint's wrapper
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
            response = self.successResultOf(d)
            sink = Sink()
            response.body.deliver(sink)
            self.assertTrue(sink.ended)
            refs = [weakref.ref(o) for o in (d, exchange, response)]
            del d, exchange, response, sink
            self.assertEqual([ref() for ref in refs], [None] * len(refs))
        finally:
            gc.enable()

    def test_a_body_that_came_whole_is_taken_at_once(self):
        """A body that arrived with its head can be taken whole; it is then
        done, as if read (it cannot be delivered too), its connection pooled."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        response = self.successResultOf(d)
        self.assertEqual(response.whole_body(), b"abc")
        self.assertIsNone(response.whole_body())
        with self.assertRaises(RuntimeError):
            response.body.deliver(Sink())
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_a_body_still_to_come_is_not_taken(self):
        """A body not all there is not taken: it is delivered as usual, whole."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab")
        response = self.successResultOf(d)
        self.assertIsNone(response.whole_body())
        sink = Sink()
        response.body.deliver(sink)
        protocol.dataReceived(b"c")
        self.assertEqual(self.successResultOf(sink.done), b"abc")

    def test_a_body_being_read_is_not_taken(self):
        """Once delivered to a sink, a body is the sink's: never taken whole."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        response = self.successResultOf(d)
        sink = Sink()
        response.body.deliver(sink)
        self.assertIsNone(response.whole_body())
        self.assertEqual(self.successResultOf(sink.done), b"abc")

    def test_a_response_is_delivered_in_a_write_batch(self):
        """The head and the body that arrive in one read are delivered inside
        one directwrite batch: what the proxy writes to its client for them
        is held until the read is handled, then flushed."""
        pool = self.make_pool()
        events: list[str] = []
        d = self.get(pool)

        def relay(response: OriginResponse) -> None:
            self.assertTrue(directwrite.hold(lambda: events.append("flushed")))
            response.body.deliver(Sink(on_data=lambda chunk: events.append("body")))

        d.addCallback(relay)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(events, ["body", "flushed"])

    def test_what_the_socket_does_not_take_goes_to_the_transport_in_order(self):
        """A request head goes straight to a plain socket; the part it does not take,
        and everything after it, goes through the transport, so nothing is reordered."""
        pool = self.make_pool()
        self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")  # now idle, pooled
        taken: list[bytes] = []

        class Socket:  # takes five bytes, once
            def send(self, data: bytes) -> int:
                taken.append(data[: 5 - len(b"".join(taken))])
                return len(taken[-1])

        connection = protocol._wrappedProtocol  # the endpoint's wrapper
        connection._socket = Socket()
        transport._tempDataLen, transport.dataBuffer = 0, b""  # Twisted's empty buffer
        transport.clear()
        pool.request(b"POST", b"/x", Headers([(b"host", b"h")]), ListBody([b"abc", b"de"]))
        self.assertEqual(
            b"".join(taken) + transport.value(),
            b"POST /x HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nabcde",
        )
        self.assertEqual(b"".join(taken), b"POST ")

    def test_request_head_on_the_wire(self):
        """Host first as given, fields in order, no framing fields for an empty GET."""
        pool = self.make_pool()
        pool.request(
            b"GET",
            b"/a?b",
            Headers([(b"host", b"example.com"), (b"accept", b"*/*")]),
            EMPTY_BODY,
        )
        _, transport = self.accept()
        self.assertEqual(
            transport.value(),
            b"GET /a?b HTTP/1.1\r\nhost: example.com\r\naccept: */*\r\n\r\n",
        )

    def test_default_host_is_the_origin_authority(self):
        """Without a Host field the origin's authority is sent, first."""
        pool = self.make_pool()
        pool.request(b"GET", b"/", Headers([(b"accept", b"*/*")]), EMPTY_BODY)
        _, transport = self.accept()
        self.assertEqual(
            transport.value(),
            b"GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\naccept: */*\r\n\r\n",
        )

    def test_empty_post_sends_content_length_zero(self):
        """An empty body on a method defining content is sent as Content-Length: 0."""
        pool = self.make_pool()
        self.get(pool, b"POST")
        _, transport = self.accept()
        self.assertIn(b"\r\ncontent-length: 0\r\n", transport.value())

    def test_header_injection_is_refused(self):
        """CR or LF in a field, or whitespace in the target: ValueError at once."""
        pool = self.make_pool()
        for headers, target in (
            (Headers([(b"x", b"a\r\nx-evil: 1")]), b"/"),
            (Headers([(b"x", b"a\nx-evil: 1")]), b"/"),
            (Headers([(b"x-evil: 1\r\nx", b"a")]), b"/"),
            (Headers(), b"/a b"),
            (Headers(), b"/a\r\n"),
        ):
            with self.assertRaises(ValueError):
                pool.request(b"GET", target, headers, EMPTY_BODY)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_connect_timeout(self):
        """A connection not made within connect_timeout fails with UpstreamTimeout."""
        pool = self.make_pool(connect_timeout=2)
        d = self.get(pool)
        self.reactor.advance(2)
        error = self.failureResultOf(d, UpstreamTimeout).value
        self.assertIn("127.0.0.1:8080", str(error))
        self.assertEqual(error.status, 504)

    def test_first_byte_timeout(self):
        """No response head within first_byte_timeout of sending: UpstreamTimeout,
        connection closed.
        """
        pool = self.make_pool(first_byte_timeout=3)
        d = self.get(pool)
        _, transport = self.accept()
        self.reactor.advance(2.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.assertIn(
            "no response head within 3s",
            str(self.failureResultOf(d, UpstreamTimeout).value),
        )
        self.assertTrue(transport.disconnecting)

    def test_trickled_head_still_times_out(self):
        """The first-byte timeout covers the whole head, not gaps between its bytes."""
        pool = self.make_pool(first_byte_timeout=3, idle_timeout=100)
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        for _ in range(3):
            self.reactor.advance(1)
            protocol.dataReceived(b"x: y\r\n")
        self.failureResultOf(d, UpstreamTimeout)

    def test_idle_timeout_between_body_reads(self):
        """Each body read pushes the idle deadline back; silence for idle_timeout fails
        the sink.
        """
        pool = self.make_pool(idle_timeout=5)
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        sink = Sink()
        self.successResultOf(d).body.deliver(sink)
        self.reactor.advance(4)
        protocol.dataReceived(b"de")
        self.reactor.advance(4)
        self.assertIsNone(sink.error)
        self.reactor.advance(1)
        self.failureResultOf(sink.done, UpstreamTimeout)
        self.assertFalse(sink.ended)
        self.assertEqual(b"".join(sink.chunks), b"abcde")

    def test_paused_body_pauses_the_socket(self):
        """sink-side pause() pauses reading the origin socket; resume() resumes it."""
        pool = self.make_pool(idle_timeout=5)
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        response = self.successResultOf(d)
        sink = Sink(on_data=lambda chunk: response.body.pause())
        response.body.deliver(sink)
        self.assertEqual(transport.producerState, "paused")
        self.reactor.advance(60)  # a slow reader is not an idle origin
        self.assertIsNone(sink.error)
        response.body.resume()
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"def")
        response.body.resume()
        self.assertEqual(self.successResultOf(sink.done), b"abcdef")

    def test_body_waits_for_its_reader_with_the_socket_paused(self):
        """Body bytes that arrive before deliver() are held and the socket paused until
        then.
        """
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        pending: list[OriginResponse] = []
        d.addCallback(pending.append)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        self.assertEqual(transport.producerState, "paused")
        sink = Sink()
        pending[0].body.deliver(sink)
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"def")
        self.assertEqual(self.successResultOf(sink.done), b"abcdef")

    def test_request_body_back_pressure(self):
        """When the origin socket cannot take more, the request body is paused."""
        pool = self.make_pool()
        body = ManualBody(length=None)
        self.get(pool, b"POST", body)
        _, transport = self.accept()
        assert body.sink is not None
        body.sink.data(b"hello")
        self.assertTrue(
            transport.value().endswith(
                b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
        )
        transport.producer.pauseProducing()
        self.assertTrue(body.paused)
        transport.producer.resumeProducing()
        self.assertFalse(body.paused)
        body.sink.end()
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))
        self.assertIsNone(transport.producer)

    def test_request_body_stalled_by_origin_times_out(self):
        """An origin that stops reading the request body for idle_timeout fails the
        request.
        """
        pool = self.make_pool(idle_timeout=5)
        body = ManualBody(length=100)
        d = self.get(pool, b"PUT", body)
        _, transport = self.accept()
        transport.producer.pauseProducing()
        self.reactor.advance(5)
        self.assertIn(
            "stopped reading the request body",
            str(self.failureResultOf(d, UpstreamTimeout).value),
        )
        self.assertTrue(body.discarded)

    def test_request_body_longer_than_declared_is_refused(self):
        """A body source that sends more than its length fails the request; nothing
        extra is sent.
        """
        pool = self.make_pool()
        body = ManualBody(length=2)
        d = self.get(pool, b"POST", body)
        _, transport = self.accept()
        body.sink.data(b"abc")  # type: ignore[union-attr]
        self.failureResultOf(d, ValueError)
        self.assertFalse(transport.value().endswith(b"abc"))
        self.assertTrue(transport.disconnecting)

    def test_keepalive_timeout_closes_idle_connection(self):
        """A pooled connection idle for keepalive_timeout is closed and forgotten."""
        pool = self.make_pool(keepalive_timeout=30)
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.successResultOf(d)
        self.assertEqual(pool.idle_connections(ORIGIN), 1)
        self.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(pool.idle_connections(ORIGIN), 0)

    def test_connection_close_is_not_pooled(self):
        """A response with Connection: close retires its connection once complete."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(self.successResultOf(d).status, 200)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 0)

    def test_bytes_beyond_content_length_retire_the_connection(self):
        """Extra bytes after a complete body: the body ends at its length, the
        connection is closed.
        """
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
        sink = Sink()
        self.successResultOf(d).body.deliver(sink)
        self.assertEqual(self.successResultOf(sink.done), b"ok")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 0)

    def test_body_after_head_response_retires_the_connection(self):
        """A HEAD response completes at its head; a body sent anyway closes the
        connection.
        """
        pool = self.make_pool()
        d = self.get(pool, b"HEAD")
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        response = self.successResultOf(d)
        self.assertEqual(response.body.length, 0)
        self.assertEqual(response.headers.get(b"content-length"), b"5")
        self.assertTrue(transport.disconnecting)

    def test_interim_100_continue_is_skipped(self):
        """100 Continue is skipped (accel answers Expect itself); the final response is returned."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 100 Continue\r\nx-interim: 1\r\n\r\nHTTP/1.1 201 Created\r\n"
        )
        protocol.dataReceived(b"Content-Length: 0\r\n\r\n")
        response = self.successResultOf(d)
        self.assertEqual((response.status, response.reason), (201, b"Created"))
        self.assertEqual(response.headers, Headers([(b"content-length", b"0")]))
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_interim_responses_reach_the_caller_in_order(self):
        """RFC 9110 15.2: each 1xx but 100 goes to ``interim``, in order, before the head."""
        pool = self.make_pool()
        seen: list[tuple[int, bytes, Headers]] = []
        d = pool.request(
            b"GET", b"/x", Headers([(b"host", b"example.com")]), EMPTY_BODY,
            lambda *interim: seen.append(interim),
        )  # fmt: skip
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nLink: </a.js>\r\n\r\n"
        )
        self.assertNoResult(d)
        self.assertEqual(
            seen,
            [
                (102, b"Processing", Headers()),
                (103, b"Early Hints", Headers([(b"link", b"</s.css>; rel=preload"), (b"link", b"</a.js>")])),
            ],
        )
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        response = self.successResultOf(d)
        self.assertEqual(response.headers, Headers([(b"content-length", b"0")]))
        self.assertEqual(len(seen), 2)
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_interim_and_head_in_one_read(self):
        """A 103 and the final head in the same read: the 103 is reported first."""
        pool = self.make_pool()
        events: list[object] = []
        d = pool.request(
            b"GET", b"/x", Headers([(b"host", b"example.com")]), EMPTY_BODY,
            lambda status, reason, headers: events.append(status),
        )  # fmt: skip
        d.addCallback(lambda response: events.append(response.status))
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(events, [103, 200])

    def test_interim_after_cancel_is_not_reported(self):
        """Once the caller cancelled, interim responses are no longer reported."""
        pool = self.make_pool()
        seen: list[int] = []
        d = pool.request(
            b"GET", b"/x", Headers([(b"host", b"example.com")]), EMPTY_BODY,
            lambda status, reason, headers: seen.append(status),
        )  # fmt: skip
        protocol, transport = self.accept()
        d.cancel()
        self.failureResultOf(d)
        protocol.dataReceived(b"HTTP/1.1 103 Early Hints\r\n\r\n")
        self.assertEqual(seen, [])
        self.assertTrue(transport.disconnecting)

    def test_101_is_a_protocol_error(self):
        """101 Switching Protocols was never asked for: UpstreamProtocolError."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        )
        self.assertIn("101", str(self.failureResultOf(d, UpstreamProtocolError).value))

    def test_head_larger_than_limit_is_a_protocol_error(self):
        """A response head over max_head_bytes fails with UpstreamProtocolError."""
        pool = self.make_pool(max_head_bytes=1024)
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        for _ in range(20):
            protocol.dataReceived(b"x-filler: " + b"a" * 90 + b"\r\n")
        self.assertIn(
            "over 1024 bytes", str(self.failureResultOf(d, UpstreamProtocolError).value)
        )
        self.assertTrue(transport.disconnecting)

    def test_too_many_header_fields_is_a_protocol_error(self):
        """More than max_headers fields fails with UpstreamProtocolError."""
        pool = self.make_pool(max_headers=3)
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n"
        )
        self.assertIn(
            "more than 3", str(self.failureResultOf(d, UpstreamProtocolError).value)
        )

    def test_invalid_content_length_is_a_protocol_error(self):
        """A Content-Length that is not a number is invalid framing."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n")
        self.failureResultOf(d, UpstreamProtocolError)

    def test_unsupported_transfer_coding_is_a_protocol_error(self):
        """RFC 9112 section 6.1: a coding accel cannot decode is refused, and the
        connection, whose next bytes nobody can frame, is closed."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello")
        self.assertIn("Transfer-Encoding", str(self.failureResultOf(d, UpstreamProtocolError).value))
        self.assertTrue(transport.disconnecting)

    def test_invalid_status_line_is_a_protocol_error(self):
        """RFC 9112 section 2.3, RFC 9110 section 15: only HTTP/1.x, status 100 to 599."""
        for line in (b"HTTP/2.0 200 OK", b"HTTP/1.1 600 Odd"):
            pool = self.make_pool()
            d = self.get(pool)
            protocol, _ = self.accept()
            protocol.dataReceived(line + b"\r\nContent-Length: 0\r\n\r\n")
            self.assertIn("invalid status line", str(self.failureResultOf(d, UpstreamProtocolError).value))

    def test_response_headers_keep_order_and_repeats(self):
        """Names are lower-cased; order and repeated fields survive; hop-by-hop fields
        stay.
        """
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nKeep-Alive: timeout=5\r\n"
            b"Set-Cookie: b=2\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            self.successResultOf(d).headers.pairs,
            [
                (b"set-cookie", b"a=1"),
                (b"keep-alive", b"timeout=5"),
                (b"set-cookie", b"b=2"),
                (b"content-length", b"0"),
            ],
        )

    def test_cancel_before_head_closes_the_connection(self):
        """Cancelling the request (client gone) aborts the origin connection."""
        pool = self.make_pool()
        d = self.get(pool)
        _, transport = self.accept()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 0)

    def test_cancel_while_connecting_stops_connecting(self):
        """Cancelling before the connection is made stops the attempt."""
        pool = self.make_pool()
        d = self.get(pool)
        connector = self.reactor.connectors[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(connector.stoppedConnecting)

    def _send(self, pool: OriginPool) -> tuple[list[object], Callable[[], None]]:
        """``pool.send`` a GET; what its callbacks were called with, and its cancel."""
        got: list[object] = []
        cancel = pool.send(
            b"GET", b"/x", Headers([(b"host", b"example.com")]), EMPTY_BODY, None,
            got.append, got.append,
        )  # fmt: skip
        return got, cancel

    def test_send_calls_back_with_the_head(self):
        """send() hands the response head to its callback, once, as request()
        fires its Deferred; cancelling afterwards does nothing."""
        pool = self.make_pool()
        got, cancel = self._send(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
        [response] = got
        assert isinstance(response, OriginResponse)
        self.assertEqual(response.status, 200)
        cancel()
        self.assertFalse(transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_send_calls_back_with_the_failure(self):
        """send() hands an origin error to its failure callback as a Failure."""
        pool = self.make_pool()
        got, _ = self._send(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(b"garbage\r\n\r\n")
        [failure] = got
        assert isinstance(failure, Failure)
        self.assertTrue(failure.check(UpstreamProtocolError))

    def test_send_to_a_closed_pool_fails_at_once(self):
        """A closed pool fails a send() before it returns; its cancel does nothing."""
        pool = self.make_pool()
        pool.close()
        got, cancel = self._send(pool)
        [failure] = got
        assert isinstance(failure, Failure)
        self.assertTrue(failure.check(UpstreamConnectError))
        cancel()

    def test_cancelled_send_calls_nothing_back(self):
        """Cancelling a send() before the head closes the connection, and
        neither callback is called (request()'s Deferred fails with
        CancelledError on its own)."""
        pool = self.make_pool()
        got, cancel = self._send(pool)
        protocol, transport = self.accept()
        cancel()
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(got, [])

    def test_an_error_in_the_response_callback_is_logged(self):
        """What send()'s response callback raises is logged, as a Deferred's
        callback raising would be, and does not reach the origin connection."""
        pool = self.make_pool()

        def broken(response: OriginResponse) -> None:
            raise RuntimeError("relay bug")

        pool.send(b"GET", b"/x", Headers([(b"host", b"e.com")]), EMPTY_BODY, None, broken, print)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)

    def test_discarding_an_unfinished_body_closes_the_connection(self):
        """discard() before the body is complete aborts the connection: it is not
        reusable.
        """
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        self.successResultOf(d).body.discard()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 0)

    def test_unsolicited_bytes_on_idle_connection_close_it(self):
        """Bytes arriving on a pooled connection (no request pending) retire it."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(transport.disconnecting)

    def test_broken_chunk_after_head_fails_the_sink(self):
        """Broken chunked framing after the head fails the sink: protocol error."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, transport = self.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        sink = Sink()
        self.successResultOf(d).body.deliver(sink)
        protocol.dataReceived(b"3\r\nabc\r\nzz\r\n")
        self.failureResultOf(sink.done, UpstreamProtocolError)
        self.assertEqual(sink.chunks, [b"abc"])
        self.assertTrue(transport.disconnecting)

    def test_request_body_failure_fails_the_request(self):
        """A request body that fails (client gone) aborts the origin connection."""
        pool = self.make_pool()
        body = ManualBody(length=10)
        d = self.get(pool, b"PUT", body)
        _, transport = self.accept()
        body.sink.fail(ConnectionDone("client went away"))  # type: ignore[union-attr]
        self.failureResultOf(d, ConnectionDone)
        self.assertTrue(transport.disconnecting)

    def test_idle_connections_beyond_the_limit_are_closed(self):
        """At most max_idle_per_origin connections are pooled; the oldest idle goes."""
        pool = self.make_pool(max_idle_per_origin=1)
        first, second = self.get(pool), self.get(pool)
        (one, one_transport), (two, two_transport) = self.accept(), self.accept()
        one.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        two.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(first), self.successResultOf(second)
        self.assertTrue(one_transport.disconnecting)
        self.assertFalse(two_transport.disconnecting)
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_connections_are_reused_most_recent_first(self):
        """Idle connections are reused LIFO, so the warmest one serves next."""
        pool = self.make_pool()
        self.get(pool), self.get(pool)
        (one, _), (two, two_transport) = self.accept(), self.accept()
        one.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        two.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        two_transport.clear()
        self.get(pool)
        self.assertTrue(two_transport.value().startswith(b"GET /x HTTP/1.1"))

    def test_chunked_trailers_are_discarded(self):
        """Trailer fields end the body but never join the response headers."""
        pool = self.make_pool()
        d = self.get(pool)
        protocol, _ = self.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n"
        )
        response = self.successResultOf(d)
        self.assertEqual(response.body.length, None)
        self.assertNotIn(b"x-checksum", response.headers)
        sink = Sink()
        response.body.deliver(sink)
        self.assertEqual(self.successResultOf(sink.done), b"ok")
        self.assertEqual(pool.idle_connections(ORIGIN), 1)

    def test_connect_failure_moves_on_within_tries(self):
        """Connect failures move to the next origin, at most ``tries`` origins."""
        origins = [Origin.parse(f"http://127.0.0.{i}") for i in (1, 2, 3)]
        pool = OriginPool(origins, self.reactor, UpstreamSettings(tries=2))
        d = self.get(pool, b"POST")
        for _ in range(2):
            factory = self.reactor.tcpClients[-1][2]
            factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIn(
            "127.0.0.2", str(self.failureResultOf(d, UpstreamConnectError).value)
        )
        self.assertEqual(
            [c[0] for c in self.reactor.tcpClients], ["127.0.0.1", "127.0.0.2"]
        )

    def test_timed_out_get_moves_to_the_next_origin(self):
        """A GET whose origin times out is sent to the next origin, which answers."""
        origins = [Origin.parse("http://127.0.0.1"), Origin.parse("http://127.0.0.2")]
        pool = OriginPool(origins, self.reactor, UpstreamSettings(first_byte_timeout=1))
        d = self.get(pool)
        _, slow = self.accept()
        self.reactor.advance(1)
        self.assertTrue(slow.disconnecting)
        protocol, _ = self.accept()
        protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.successResultOf(d).origin, origins[1])
        self.assertEqual(pool.health(origins[0]).fails, 1)

    def test_keep_alive_race_retries_on_a_new_connection(self):
        """A reused connection lost before any response byte: an idempotent request goes
        again on a new one.
        """
        pool = self.make_pool()
        d = self.get(pool)
        first, _ = self.accept()
        first.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.successResultOf(d)
        d = self.get(pool)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertNoResult(d)
        second, transport = self.accept()
        self.assertTrue(transport.value().startswith(b"GET /x HTTP/1.1\r\n"))
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(self.successResultOf(d).status, 200)
        self.assertTrue(pool.health(ORIGIN).available(self.reactor.seconds()))


# -- real sockets ---------------------------------------------------------------


class Tracking(WrappingFactory):
    """Counts connections made to a server and can wait for all to close."""

    def __init__(self, wrapped: Factory) -> None:
        super().__init__(wrapped)
        self.made = 0
        self._waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr):
        self.made += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, protocol) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self) -> Deferred[None]:
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        for protocol in list(self.protocols):
            protocol.transport.loseConnection()
        return waiter


class Application(Resource):
    """A well-behaved origin."""

    isLeaf = True

    def __init__(self, name: bytes = b"a") -> None:
        super().__init__()
        self.name = name

    def render(self, request):
        path = request.path
        request.setHeader(b"x-origin", self.name)
        if path.endswith(b"/echo"):
            request.setHeader(b"x-method", request.method)
            request.setHeader(b"x-path", request.uri)
            request.setHeader(b"x-host", request.getHeader(b"host") or b"-")
            request.setHeader(b"x-length", request.getHeader(b"content-length") or b"-")
            request.setHeader(b"x-te", request.getHeader(b"transfer-encoding") or b"-")
            return request.content.read()
        if path == b"/204":
            request.setResponseCode(204)
            return b""
        if path == b"/304":
            request.setResponseCode(304)
            return b""
        if path == b"/chunked":
            for part in (b"one,", b"two,", b"three"):
                request.write(part)
            request.finish()
            return NOT_DONE_YET
        return b"hello from " + self.name


class Raw(Protocol):
    """A scripted origin: ``answer(connection, request)`` returns bytes to send, or None
    to close.
    With ``close_after`` it closes after each answer.
    """

    def __init__(
        self, answer: Callable[[int, int], bytes | None], index: int, close_after: bool
    ) -> None:
        self.answer = answer
        self.index = index
        self.close_after = close_after
        self.requests = 0
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            reply = self.answer(self.index, self.requests)
            self.requests += 1
            if reply is None:
                self.transport.loseConnection()
                return
            self.transport.write(reply)
            if self.close_after:
                self.transport.loseConnection()
                return


class RawFactory(Factory):
    def __init__(
        self, answer: Callable[[int, int], bytes | None], close_after: bool
    ) -> None:
        self.answer = answer
        self.close_after = close_after
        self.count = 0

    def buildProtocol(self, addr):
        protocol = Raw(self.answer, self.count, self.close_after)
        self.count += 1
        return protocol


#: Twisted's server-side TLS context still hands pyOpenSSL objects to pyOpenSSL
#: (test origin only; the client side builds no such warning).
TLS_SERVER_WARNINGS = pytest.mark.filterwarnings(
    "ignore:Passing pyOpenSSL:DeprecationWarning"
)


def _self_signed(directory: str) -> tuple[bytes, str]:
    """A self-signed certificate for 127.0.0.1: (cert and key PEM, path of the cert
    alone).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accel test origin")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = f"{directory}/ca.pem"
    with open(path, "wb") as f:
        f.write(cert_pem)
    return cert_pem + key_pem, path


class SocketTests(TestCase):
    """Real loopback sockets against small origins."""

    def setUp(self) -> None:
        self.pools: list[OriginPool] = []
        self.servers: list[tuple[object, Tracking]] = []
        self.directories: list[str] = []
        self.addCleanup(lambda: Deferred.fromCoroutine(self._shutdown()))

    async def _shutdown(self) -> None:
        for pool in self.pools:
            await pool.close()
        for port, tracking in self.servers:
            await tracking.close_all()
            await port.stopListening()
        for directory in self.directories:
            shutil.rmtree(directory)

    def temporary_directory(self) -> str:
        directory = tempfile.mkdtemp(prefix="accel-upstream-")
        self.directories.append(directory)
        return directory

    def serve(
        self, factory: Factory, listen: Callable | None = None
    ) -> tuple[Tracking, str]:
        tracking = Tracking(factory)
        if listen is None:
            port = reactor.listenTCP(0, tracking, interface="127.0.0.1")
            url = f"http://127.0.0.1:{port.getHost().port}"
        else:
            port, url = listen(tracking)
        self.servers.append((port, tracking))
        return tracking, url

    def site(self, name: bytes = b"a") -> tuple[Tracking, str]:
        site = Site(Application(name))
        site.timeOut = None
        return self.serve(site)

    def raw(
        self, answer: Callable[[int, int], bytes | None], close_after: bool = False
    ) -> tuple[Tracking, str]:
        return self.serve(RawFactory(answer, close_after))

    def pool(self, *urls: str | Origin, **settings: object) -> OriginPool:
        origins = [
            url if isinstance(url, Origin) else Origin.parse(url) for url in urls
        ]
        pool = OriginPool(origins, reactor, UpstreamSettings(**settings))  # type: ignore[arg-type]
        self.pools.append(pool)
        return pool

    async def get(
        self,
        pool: OriginPool,
        path: bytes = b"/",
        method: bytes = b"GET",
        body=EMPTY_BODY,
        headers=None,
    ):
        return await pool.request(
            method, path, headers or Headers([(b"host", b"example.com")]), body
        )

    async def test_get_status_headers_and_body(self):
        """A GET returns status, reason, version, lower-case headers, the body and the
        origin.
        """
        _, url = self.site()
        pool = self.pool(url)
        response = await self.get(pool)
        self.assertEqual(
            (response.status, response.reason, response.version), (200, b"OK", b"1.1")
        )
        self.assertEqual(response.headers.get(b"x-origin"), b"a")
        self.assertTrue(all(name == name.lower() for name, _ in response.headers))
        self.assertEqual(response.body.length, 12)
        self.assertEqual(await read(response), b"hello from a")
        self.assertEqual(response.origin, Origin.parse(url))

    async def test_keep_alive_reuses_one_connection(self):
        """Sequential requests share one TCP connection."""
        tracking, url = self.site()
        pool = self.pool(url)
        for _ in range(5):
            self.assertEqual(await read(await self.get(pool)), b"hello from a")
        self.assertEqual(tracking.made, 1)
        self.assertEqual(pool.idle_connections(Origin.parse(url)), 1)

    async def test_origin_connections_send_without_delay(self):
        """TCP connections to origins have Nagle's algorithm off (TCP_NODELAY)."""
        _, url = self.site()
        pool = self.pool(url)
        await read(await self.get(pool))
        (connection,) = pool._homes[0].idle
        handle = connection.transport.getHandle()
        self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    async def test_head_with_content_length_keeps_the_connection(self):
        """HEAD: no body despite Content-Length; the connection is reused after it."""
        tracking, url = self.site()
        pool = self.pool(url)
        response = await self.get(pool, method=b"HEAD")
        self.assertEqual(response.headers.get(b"content-length"), b"12")
        self.assertEqual(response.body.length, 0)
        self.assertEqual(await read(response), b"")
        self.assertEqual(await read(await self.get(pool)), b"hello from a")
        self.assertEqual(tracking.made, 1)

    async def test_204_and_304_have_no_body_and_keep_the_connection(self):
        """204 and 304 end at their head; the connection stays reusable."""
        tracking, url = self.site()
        pool = self.pool(url)
        for path, status in ((b"/204", 204), (b"/304", 304)):
            response = await self.get(pool, path)
            self.assertEqual((response.status, response.body.length), (status, 0))
            self.assertEqual(await read(response), b"")
        self.assertEqual(await read(await self.get(pool)), b"hello from a")
        self.assertEqual(tracking.made, 1)

    async def test_chunked_response(self):
        """A chunked response streams with unknown length and keeps the connection."""
        tracking, url = self.site()
        pool = self.pool(url)
        response = await self.get(pool, b"/chunked")
        self.assertIsNone(response.body.length)
        self.assertEqual(response.headers.get(b"transfer-encoding"), b"chunked")
        self.assertEqual(await read(response), b"one,two,three")
        await read(await self.get(pool))
        self.assertEqual(tracking.made, 1)

    async def test_close_delimited_http10_response(self):
        """An HTTP/1.0 body without length ends, successfully, at the close."""
        _, url = self.raw(
            lambda c, r: b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nhello world",
            close_after=True,
        )
        pool = self.pool(url)
        response = await self.get(pool)
        self.assertEqual((response.version, response.body.length), (b"1.0", None))
        self.assertEqual(await read(response), b"hello world")

    async def test_request_body_with_known_length(self):
        """A body of known length is sent with Content-Length; caller framing fields are
        replaced.
        """
        _, url = self.site()
        pool = self.pool(url)
        headers = Headers(
            [
                (b"host", b"h"),
                (b"transfer-encoding", b"chunked"),
                (b"content-length", b"99"),
            ]
        )
        response = await self.get(
            pool, b"/echo", b"POST", ListBody([b"ab", b"cd"]), headers
        )
        self.assertEqual(response.headers.get(b"x-length"), b"4")
        self.assertEqual(response.headers.get(b"x-te"), b"-")
        self.assertEqual(await read(response), b"abcd")

    async def test_request_body_of_unknown_length_is_chunked(self):
        """A body of unknown length is sent with the chunked coding."""
        _, url = self.site()
        pool = self.pool(url)
        response = await self.get(
            pool, b"/echo", b"PUT", ListBody([b"ab", b"", b"cde"], length=None)
        )
        self.assertEqual(response.headers.get(b"x-te"), b"chunked")
        self.assertEqual(await read(response), b"abcde")

    async def test_path_prefix_is_prepended(self):
        """An origin URL with a path sends targets under it."""
        _, url = self.site()
        pool = self.pool(url + "/base/")
        response = await self.get(pool, b"/echo?q=1")
        self.assertEqual(response.headers.get(b"x-path"), b"/base/echo?q=1")
        await read(response)

    async def test_hostname_origin(self):
        """A host name is resolved (localhost here) and reached."""
        _, url = self.site()
        pool = self.pool(url.replace("127.0.0.1", "localhost"))
        self.assertEqual(await read(await self.get(pool)), b"hello from a")

    async def test_refused_connection(self):
        """Nothing listening: UpstreamConnectError naming the origin."""
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        pool = self.pool(f"http://127.0.0.1:{number}")
        with self.assertRaises(UpstreamConnectError) as raised:
            await self.get(pool)
        self.assertIn(f"127.0.0.1:{number}", str(raised.exception))
        self.assertEqual(raised.exception.status, 502)

    async def test_origin_dying_mid_body_fails_the_sink(self):
        """The origin closing before Content-Length is met fails the sink; it never
        ends.
        """
        _, url = self.raw(
            lambda c, r: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            close_after=True,
        )
        pool = self.pool(url)
        response = await self.get(pool)
        sink = Sink()
        response.body.deliver(sink)
        with self.assertRaises(UpstreamError) as raised:
            await sink.done
        self.assertIn("after 3 of 10 body bytes", str(raised.exception))
        self.assertFalse(sink.ended)

    async def test_chunked_body_cut_short_fails_the_sink(self):
        """A chunked body without its last chunk fails the sink at the close."""
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        _, url = self.raw(lambda c, r: chunked, close_after=True)
        pool = self.pool(url)
        response = await self.get(pool)
        sink = Sink()
        response.body.deliver(sink)
        with self.assertRaises(UpstreamError):
            await sink.done
        self.assertEqual(sink.chunks, [b"hello"])

    async def test_garbage_is_a_protocol_error(self):
        """A response that is not HTTP fails with UpstreamProtocolError."""
        _, url = self.raw(lambda c, r: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        pool = self.pool(url)
        with self.assertRaises(UpstreamProtocolError) as raised:
            await self.get(pool)
        self.assertIn(url, str(raised.exception))

    async def test_keep_alive_race_is_retried_on_a_new_connection(self):
        """The origin closing a kept-alive connection as a GET arrives: the GET is
        retried, once.
        """
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        tracking, url = self.raw(
            lambda connection, request: ok if connection or not request else None
        )
        pool = self.pool(url)
        self.assertEqual(await read(await self.get(pool)), b"ok")
        self.assertEqual(await read(await self.get(pool)), b"ok")
        self.assertEqual(tracking.made, 2)

    async def test_keep_alive_race_is_not_retried_for_post(self):
        """A non-idempotent request is not replayed after the race: it fails."""
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        tracking, url = self.raw(
            lambda connection, request: ok if connection or not request else None
        )
        pool = self.pool(url)
        await read(await self.get(pool))
        with self.assertRaises(UpstreamError):
            await self.get(pool, method=b"POST")
        self.assertEqual(tracking.made, 1)

    async def test_round_robin_over_two_origins(self):
        """Requests alternate between healthy origins."""
        _, first = self.site(b"a")
        _, second = self.site(b"b")
        pool = self.pool(first, second)
        served = []
        for _ in range(4):
            response = await self.get(pool)
            served.append(response.headers.get(b"x-origin"))
            await read(response)
        self.assertEqual(served, [b"a", b"b", b"a", b"b"])

    async def test_failing_origin_is_skipped(self):
        """An origin that fails max_fails times is marked down: GETs move on, then avoid
        it.
        """
        broken, first = self.raw(lambda c, r: None)
        _, second = self.site(b"b")
        pool = self.pool(first, second, max_fails=1)
        for _ in range(4):
            response = await self.get(pool)
            self.assertEqual(response.headers.get(b"x-origin"), b"b")
            await read(response)
        self.assertEqual(broken.made, 1)
        self.assertFalse(pool.health(Origin.parse(first)).available(reactor.seconds()))

    async def test_unix_socket_origin(self):
        """A UNIX socket origin works, with ``localhost`` as default Host."""
        path = os.path.join(self.temporary_directory(), "app.sock")
        site = Site(Application())
        site.timeOut = None

        def listen(factory):
            return reactor.listenUNIX(path, factory), f"unix:{path}"

        tracking, url = self.serve(site, listen)
        pool = self.pool(url)
        for _ in range(2):
            response = await pool.request(b"GET", b"/echo", Headers(), EMPTY_BODY)
            self.assertEqual(response.headers.get(b"x-host"), b"localhost")
            await read(response)
        self.assertEqual(tracking.made, 1)

    def tls_origin(self) -> tuple[str, str]:
        from twisted.internet.ssl import PrivateCertificate

        pem, ca_path = _self_signed(self.temporary_directory())
        options = PrivateCertificate.loadPEM(pem).options()
        site = Site(Application(b"tls"))
        site.timeOut = None

        def listen(factory):
            port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
            return port, f"https://127.0.0.1:{port.getHost().port}"

        _, url = self.serve(site, listen)
        return url, ca_path

    @TLS_SERVER_WARNINGS
    async def test_https_verifies_certificates_by_default(self):
        """A self-signed origin certificate fails verification: UpstreamConnectError
        about the certificate.
        """
        url, _ = self.tls_origin()
        pool = self.pool(url)
        with self.assertRaises(UpstreamConnectError) as raised:
            await self.get(pool)
        self.assertIn("certificate", str(raised.exception))

    @TLS_SERVER_WARNINGS
    async def test_https_with_the_ca_configured(self):
        """With the CA bundle configured the TLS origin is trusted."""
        url, ca_path = self.tls_origin()
        pool = self.pool(Origin.parse(url, ca_file=ca_path))
        response = await self.get(pool)
        self.assertEqual(await read(response), b"hello from tls")

    @TLS_SERVER_WARNINGS
    async def test_https_origin_connections_send_each_request_at_once(self):
        """An https origin's connection is accel's TLS layer (accel.tls), which
        sends a request's records when it is written, not a turn later; it is
        kept and reused."""
        from accel.tls import TLSConnection

        url, ca_path = self.tls_origin()
        pool = self.pool(Origin.parse(url, ca_file=ca_path))
        for _ in range(2):
            self.assertEqual(await read(await self.get(pool)), b"hello from tls")
        (connection,) = pool._homes[0].idle
        self.assertIs(type(connection.transport), TLSConnection)

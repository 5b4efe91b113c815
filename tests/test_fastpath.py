"""The hit fast path: the hot tier, the store's change stamps, and the wire hook.

Requests go through a real :class:`HTTPServerProtocol` on a
``StringTransport`` (or, for large hits sent by ``sendfile``, a real loopback
socket) into a real :class:`Accelerator` with a real store in a
temporary directory; the origin is the in-memory fake. A spy on
``fast_hit`` tells which path answered.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from accel.cache.collapse import Collapser
from accel.cache.memory import HotEntry, HotTier, MemoryTier
from accel.cache.store import Generations, Store
from accel.http.dates import format_http_date
from accel.http.headers import Headers
from accel.http.model import Request
from accel.http.server import HTTPServerFactory
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from tests.fakes import T0, FakeUpstream, always, end_turn

BODY = b"hello, hot world"


@pytest.fixture
def store(tmp_path, clock):
    s = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, clock, memory=MemoryTier(1 << 20))
    yield s
    s.close()


class Rig:
    """A server protocol over a proxy over a fake origin, with a fast-path spy."""

    def __init__(self, clock, store, headers=None, body=BODY, hot=None, access_log=None):
        self.clock = clock
        self.store = store
        self.origin = FakeUpstream(
            auto=always(
                headers=headers
                or [(b"date", format_http_date(T0)), (b"cache-control", b"max-age=60")],
                body=body,
            )
        )
        route = Route(upstream=self.origin, cache=CacheRules())
        router: Router[Route] = Router([(["*"], [("/", route)])])
        self.hot = hot if hot is not None else HotTier(1 << 20)
        self.proxy = Accelerator(router, clock, store, Collapser(clock), hot=self.hot)
        self.fast: list[bool] = []
        #: False: every request takes the general path (to compare answers).
        self.offer = True

        def spy(*args):
            answer = self.proxy.fast_hit(*args) if self.offer else None
            self.fast.append(answer is not None)
            return answer

        self.factory = HTTPServerFactory(self.proxy, clock, fast_path=spy, access_log=access_log)

    def exchange(self, raw: bytes) -> bytes:
        """Send ``raw`` on a new connection; the bytes written back by the end
        of the reactor turn (a response that stores completes then)."""
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(raw)
        end_turn(self.clock)
        self.transport = transport
        return transport.value()

    def get(self, target=b"/a", extra=b"", method=b"GET", version=b"1.1") -> bytes:
        return self.exchange(b"%s %s HTTP/%s\r\nhost: example.com\r\n%s\r\n" % (method, target, version, extra))

    def general(self, **kwargs) -> bytes:
        """:meth:`get` through the general path."""
        self.offer = False
        try:
            return self.get(**kwargs)
        finally:
            self.offer = True


def test_third_request_is_answered_by_the_fast_path(clock, store):
    """A miss fills, a hit remembers, and the next identical request takes the fast path."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    assert rig.fast == [False, False]
    rig.get()
    assert rig.fast[-1] is True
    assert len(rig.origin.calls) == 1


def test_fast_answer_is_byte_identical_to_the_general_one(clock, store):
    """At the same instant, the fast path sends exactly what the general path sent."""
    rig = Rig(clock, store)
    rig.get()
    general = rig.get()
    fast = rig.get()
    assert rig.fast[-1] is True
    assert fast == general
    assert b"cache-status: accel; hit; ttl=60\r\n" in fast
    assert fast.endswith(b"\r\n\r\n" + BODY)


def test_larger_body_in_memory_is_sent_whole_after_its_head(clock, store):
    """A 48 KiB body held in memory (handed over apart from its head) arrives whole."""
    body = bytes(range(256)) * 192
    rig = Rig(clock, store, body=body)
    rig.get()
    general = rig.get()
    fast = rig.get()
    assert rig.fast[-1] is True
    assert fast == general
    assert fast.endswith(b"\r\n\r\n" + body)


def test_age_and_ttl_follow_the_clock(clock, store):
    """RFC 9111 section 5.1: Age grows with residence; the ttl shrinks."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    clock.advance(10.5)
    fast = rig.get()
    assert rig.fast[-1] is True
    assert b"\r\nage: 10\r\n" in fast
    assert b"ttl=49\r\n" in fast


def test_expired_entry_takes_the_general_path(clock, store):
    """RFC 9111 section 4.2: once stale, the fast path declines and the origin is asked."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    clock.advance(60)
    rig.get()
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2


@pytest.mark.parametrize(
    "field",
    [
        b'if-match: "v1"',
        b"if-unmodified-since: Tue, 14 Nov 2023 22:13:20 GMT",
        b'if-range: "v1"',
        b"range: bytes=0-1",
        b"cache-control: max-age=0",
        b"pragma: no-cache",
        b"authorization: Basic Zm9vOmJhcg==",
    ],
)
def test_requests_with_conditions_or_directives_take_the_general_path(clock, store, field):
    """Conditionals other than If-None-Match and If-Modified-Since, ranges, request
    directives and credentials are for the general path."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    rig.get(extra=field + b"\r\n")
    assert rig.fast[-1] is False


def test_head_is_answered_without_body(clock, store):
    """A HEAD hit has the GET's head, Content-Length included, and no body."""
    rig = Rig(clock, store)
    rig.get()
    general = rig.get()
    head = rig.get(method=b"HEAD")
    assert rig.fast[-1] is True
    assert head == general[: -len(BODY)]


def test_http10_keep_alive_and_close(clock, store):
    """HTTP/1.0 gets keep-alive only when asked; otherwise the connection closes."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    closed = rig.get(version=b"1.0")
    assert rig.fast[-1] is True
    assert b"connection: close\r\n" in closed
    assert rig.transport.disconnecting
    kept = rig.get(version=b"1.0", extra=b"connection: keep-alive\r\n")
    assert b"connection: keep-alive\r\n" in kept
    assert not rig.transport.disconnecting


def test_pipelined_fast_hits_answer_in_order(clock, store):
    """Several requests in one read each get their answer, in order."""
    rig = Rig(clock, store, headers=[(b"date", format_http_date(T0)), (b"cache-control", b"max-age=60")])
    rig.get(b"/a")
    rig.get(b"/a")
    rig.get(b"/b")
    rig.get(b"/b")
    out = rig.exchange(
        b"GET /a HTTP/1.1\r\nhost: example.com\r\n\r\nGET /b HTTP/1.1\r\nhost: example.com\r\n\r\n"
    )
    assert rig.fast[-2:] == [True, True]
    assert out.count(b"HTTP/1.1 200 OK") == 2


def test_invalidation_by_an_unsafe_method_reaches_the_hot_tier(clock, store):
    """RFC 9111 section 4.4: a successful POST to the URL stops its hot hits."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    rig.exchange(b"POST /a HTTP/1.1\r\nhost: example.com\r\ncontent-length: 0\r\n\r\n")
    rig.get()
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 3  # fill, POST, refill


def test_changes_by_another_process_reach_the_hot_tier(clock, store, tmp_path):
    """A purge through another Store on the same directory (another worker) is seen at once."""
    rig = Rig(clock, store)
    rig.get()
    rig.get()
    other = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, clock)
    try:
        assert other.purge_prefix("") == 1
    finally:
        other.close()
    rig.get()
    assert rig.fast[-1] is False


def test_vary_selects_the_variant(clock, store):
    """RFC 9111 section 4.1: a request whose Vary fields differ is not a fast hit of another variant."""
    headers = [
        (b"date", format_http_date(T0)),
        (b"cache-control", b"max-age=60"),
        (b"vary", b"accept-language"),
    ]
    rig = Rig(clock, store, headers=headers)
    de, fr = b"accept-language: de\r\n", b"accept-language: fr\r\n"
    rig.get(extra=de)
    rig.get(extra=de)
    rig.get(extra=de)
    assert rig.fast[-1] is True
    rig.get(extra=fr)
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2


def test_a_vary_field_named_in_connection_takes_the_general_path(clock, store):
    """A field the request's Connection names never reaches the origin, and the
    general path selects the variant without it: the fast path declines
    rather than serve the variant for its value. Connection: keep-alive or
    close alone still gets fast hits."""
    headers = [
        (b"date", format_http_date(T0)),
        (b"cache-control", b"max-age=60"),
        (b"vary", b"accept-language"),
    ]
    rig = Rig(clock, store, headers=headers)
    de = b"accept-language: de\r\n"
    for _ in range(3):
        rig.get(extra=de)
    assert rig.fast[-1] is True
    rig.get(extra=de + b"connection: Keep-Alive\r\n")
    assert rig.fast[-1] is True
    rig.get(extra=de + b"connection: accept-language\r\n")
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2  # the variant without accept-language


def test_large_bodies_are_not_remembered(clock, store):
    """Bodies above the tier's item size always take the general path."""
    rig = Rig(clock, store, body=b"x" * 2048, hot=HotTier(1 << 20, max_item=1024))
    for _ in range(3):
        rig.get()
    assert rig.fast == [False, False, False]


def test_fast_hits_are_logged(clock, store):
    """The access log gets a line for a fast hit, with its status, size and HIT."""
    lines = []
    rig = Rig(clock, store, access_log=lambda *args: lines.append(args))
    rig.get()
    rig.get()
    rig.get()
    request, status, sent, _, _, notes = lines[-1]
    assert (request.target, status, sent, notes["cache"]) == (b"/a", 200, len(BODY), "HIT")


def test_fast_hits_write_the_line_of_the_general_path(clock, store, tmp_path):
    """With an AccessLog, a fast hit's line (written from the request's parts,
    no Request built) is the line format_line gives for the same request."""
    from accel.accesslog import AccessLog, format_line

    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock)
    seen = []
    log_fields = log.fields

    def spy(*args):
        seen.append(args)
        log_fields(*args)

    log.fields = spy
    rig = Rig(clock, store, access_log=log)
    for _ in range(3):
        rig.get()
    log.close()
    assert rig.fast[-1] and seen  # the last one took the fast path and its log entry
    line = path.read_bytes().splitlines(keepends=True)[-1]
    client, method, target, version, pairs, status, sent, started, finished, cache = seen[-1]
    request = Request(
        method, target, target, None, version, Headers(pairs), b"example.com",
        client=client.decode(),
    )  # fmt: skip
    assert line == format_line(request, status, sent, started, finished, {"cache": cache.decode()})
    assert b'"GET /a HTTP/1.1" 200 %d' % len(BODY) in line and line.endswith(b" HIT 0.000\n")


def test_percent_in_stored_fields_survives(clock, store):
    """Stored field values are sent verbatim, "%" included."""
    headers = [
        (b"date", format_http_date(T0)),
        (b"cache-control", b"max-age=60"),
        (b"x-odd", b"100% age: %d"),
    ]
    rig = Rig(clock, store, headers=headers)
    rig.get()
    rig.get()
    fast = rig.get()
    assert rig.fast[-1] is True
    assert b"x-odd: 100% age: %d\r\n" in fast


# The tier and the stamps on their own


def _entry(body=b"b", secondary=b"") -> HotEntry:
    return HotEntry(200, b"HTTP/1.1 200 OK\r\n", body, 1.0, 0.0, 0, 0, secondary=secondary)


def test_hot_tier_is_bounded_in_bytes():
    """Past max_bytes, the least recently used keys go first."""
    one = _entry(b"x" * 100).size
    tier = HotTier(3 * one, max_item=100)
    for key in "abc":
        tier.put(key, _entry(b"x" * 100))
    tier.get("a")
    tier.put("d", _entry(b"x" * 100))
    assert tier.get("b") is None and tier.get("a") is not None
    assert tier.size <= 3 * one


def test_hot_tier_replaces_the_same_variant():
    """A new entry for a key replaces the one with the same secondary key only."""
    tier = HotTier(1 << 20)
    tier.put("k", _entry(secondary=b"de"))
    tier.put("k", _entry(secondary=b"fr"))
    newer = _entry(secondary=b"de")
    tier.put("k", newer)
    variants = tier.get("k")
    assert variants is not None and len(variants) == 2 and variants[0] is newer
    tier.discard("k", newer)
    tier.discard("k", variants[1])
    assert len(tier) == 0 and tier.size == 0


def test_generations_are_shared_through_the_file(tmp_path):
    """A bump in one mapping is seen by another mapping of the same file."""
    a = Generations(str(tmp_path / "g"))
    b = Generations(str(tmp_path / "g"))
    slot = a.slot("http://example.com/a")
    before = b.stamps[slot]
    a.bump("http://example.com/a")
    assert b.stamps[slot] != before
    before = b.stamps[0]
    a.bump_all()
    assert b.stamps[0] != before
    a.close()
    b.close()


# Large hits: the head from the hot tier, the body from its stored file

BIG = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: never read into memory


def _remembered_path(rig) -> str:
    """The body file path the hot tier holds for /a."""
    variants = rig.hot.get((b"http", b"example.com", b"/a", None))
    assert variants is not None and variants[0].path
    return variants[0].path


def test_large_fast_answer_is_byte_identical_to_the_general_one(clock, store):
    """A large fresh hit is remembered by path, and the fast answer equals the general one."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    general = rig.get()
    fast = rig.get()
    assert rig.fast == [False, False, True]
    assert fast == general
    assert fast.endswith(b"\r\n\r\n" + BIG)
    assert b"content-length: %d\r\n" % len(BIG) in fast


def test_large_head_is_answered_without_body(clock, store):
    """A HEAD of a large hit is the GET's head, and no file is opened for it."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    general = rig.get()
    head = rig.get(method=b"HEAD")
    assert rig.fast[-1] is True
    assert head == general[: -len(BIG)]


def test_large_expired_entry_takes_the_general_path(clock, store):
    """RFC 9111 section 4.2: a stale large entry is not a fast hit; the origin is asked."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    rig.get()
    clock.advance(60)
    out = rig.get()
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2
    assert out.endswith(BIG)


def test_large_purge_by_another_process_reaches_the_hot_tier(clock, store, tmp_path):
    """A purge through another Store (another worker) stops large fast hits at once."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    rig.get()
    other = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, clock)
    try:
        assert other.purge_prefix("") == 1
    finally:
        other.close()
    out = rig.get()
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2
    assert out.endswith(BIG)


def test_removed_body_file_takes_the_general_path(clock, store):
    """A body file removed behind the store's back: declined, and the client still gets the body."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    rig.get()
    os.remove(_remembered_path(rig))
    out = rig.get()
    assert rig.fast[-1] is False
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n" + BIG)
    assert len(rig.origin.calls) == 2  # the store dropped the entry: a miss


def test_truncated_body_file_takes_the_general_path(clock, store):
    """A body file of the wrong length is never sent by the fast path."""
    rig = Rig(clock, store, body=BIG)
    rig.get()
    rig.get()
    with open(_remembered_path(rig), "r+b") as f:
        f.truncate(10)
    out = rig.get()
    assert rig.fast[-1] is False
    assert out.endswith(b"\r\n\r\n" + BIG)


def test_large_fast_hits_are_logged_with_their_size(clock, store):
    """The access log line of a large fast hit has the body's length and HIT, once sent."""
    lines = []
    rig = Rig(clock, store, body=BIG, access_log=lambda *args: lines.append(args))
    for _ in range(3):
        rig.get()
    assert rig.fast[-1] is True
    request, status, sent, _, _, notes = lines[-1]
    assert (request.target, status, sent, notes["cache"]) == (b"/a", 200, len(BIG), "HIT")
    assert len(lines) == 3


def test_large_fast_hits_decline_over_tls(clock, store):
    """On a TLS listener the body cannot bypass the TLS layer: the general path answers."""
    rig = Rig(clock, store, body=BIG)
    rig.factory.scheme = b"https"
    rig.get()
    rig.get()
    out = rig.get()
    assert rig.fast[-1] is False
    assert out.endswith(BIG)


def test_hot_tier_bounds_file_entries_by_count():
    """Past max_files, the least recently used file entry goes; memory entries stay."""
    tier = HotTier(1 << 20, max_files=2)
    tier.put("m", _entry())
    for key in "abc":
        tier.put(key, HotEntry(200, b"h", b"", 1.0, 0.0, 0, 0, path="/f/" + key, length=1 << 20))
    assert tier.get("a") is None
    assert tier.get("b") is not None and tier.get("c") is not None and tier.get("m") is not None
    tier.clear()
    assert tier.size == 0 and len(tier) == 0


# Large hits over real sockets: sendfile, slow readers, pipelining

#: Larger than a loopback socket's buffers, so sendfile meets a full socket.
LIVE = BIG * 4


def _serve(rig, client):
    """Run ``client(port)`` in a thread against ``rig``'s server on the real reactor."""
    from twisted.internet import reactor

    port = reactor.listenTCP(0, rig.factory, interface="127.0.0.1")
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(client(port.getHost().port)))
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        reactor.iterate(0.005)
    thread.join(1)
    port.stopListening()
    for _ in range(5):
        reactor.iterate(0)
    return result[0]


def _get(port: int, raw: bytes, rcvbuf: int = 0) -> bytes:
    """Send ``raw`` and read until the server closes."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    data = bytearray()
    with s:
        s.sendall(raw)
        while chunk := s.recv(16384 if rcvbuf else 1 << 20):
            data += chunk
            if rcvbuf:
                time.sleep(0.001)
    return bytes(data)


@pytest.fixture
def live(tmp_path):
    """A rig on the real reactor, its large entry filled and remembered."""
    from twisted.internet import reactor

    s = Store(str(tmp_path / "live"), 64 * 1024 * 1024, reactor, memory=MemoryTier(1 << 20))
    headers = [(b"date", format_http_date(time.time())), (b"cache-control", b"max-age=600")]
    rig = Rig(reactor, s, headers=headers, body=LIVE)
    fill = b"GET /a HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    for _ in range(2):  # a miss, then a hit that remembers
        assert _serve(rig, lambda port: _get(port, fill)).endswith(LIVE)
    assert rig.fast == [False, False]
    yield rig
    s.close()


def test_slow_reader_gets_a_large_fast_hit_by_sendfile(live, monkeypatch):
    """A slow reader gets every byte of a large fast hit, sent by several sendfile turns."""
    calls = []
    real = os.sendfile

    def spy(*args):
        n = real(*args)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", spy)
    raw = b"GET /a HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    out = _serve(live, lambda port: _get(port, raw, rcvbuf=16384))
    assert live.fast[-1] is True
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n" + LIVE)
    assert b"connection: close\r\n" in out
    assert len(calls) > 1 and sum(calls) == len(LIVE)  # the socket filled: several turns


def test_request_pipelined_after_a_large_fast_hit_is_answered_in_order(live):
    """A request sent with a large fast hit waits for its body, then is answered."""
    raw = (
        b"GET /a HTTP/1.1\r\nhost: example.com\r\n\r\n"
        b"GET /a HTTP/1.1\r\nhost: example.com\r\n\r\n"
        b"HEAD /a HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    )
    out = _serve(live, lambda port: _get(port, raw))
    first, _, rest = out.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(LIVE) in first
    assert rest[: len(LIVE)] == LIVE
    second, _, rest = rest[len(LIVE) :].partition(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n") and rest[: len(LIVE)] == LIVE
    third, _, tail = rest[len(LIVE) :].partition(b"\r\n\r\n")
    assert third.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in third
    assert tail == b""
    assert live.fast[-1] is True  # the HEAD, once the connection was idle again


def test_pipelined_small_fast_hits_over_a_real_socket(tmp_path):
    """Many pipelined heads in one write: every one answered on the fast path,
    in order, the last one closing the connection."""
    from twisted.internet import reactor

    s = Store(str(tmp_path / "small"), 64 * 1024 * 1024, reactor)
    headers = [(b"date", format_http_date(time.time())), (b"cache-control", b"max-age=600")]
    rig = Rig(reactor, s, headers=headers)
    fill = b"GET /a HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    for _ in range(2):  # a miss, then a hit that remembers
        assert _serve(rig, lambda port: _get(port, fill)).endswith(BODY)
    raw = b"GET /a HTTP/1.1\r\nhost: example.com\r\n\r\n" * 15 + fill
    out = _serve(rig, lambda port: _get(port, raw))
    assert rig.fast[2:] == [True] * 16
    answers = out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert len(answers) == 16 and all(a.endswith(b"\r\n\r\n" + BODY) for a in answers)
    assert b"connection: close" in answers[-1] and not any(b"connection: close" in a for a in answers[:-1])
    s.close()


def test_fast_hits_keep_the_store_lru_stamp_current(clock, store):
    """Once per touch interval a fast hit stamps the stored entry as used, so a response
    hot in memory is not the first evicted on disk; more often, it does not."""
    rig = Rig(clock, store, headers=[(b"date", format_http_date(T0)), (b"cache-control", b"max-age=3600")])
    rig.get()
    rig.get()  # remembered by the general path, which stamped the entry itself
    store._con.execute("UPDATE Cache SET access_time = 0")
    clock.advance(store.touch_interval - 1)
    rig.get()
    assert rig.fast[-1] is True
    assert [t for (t,) in store._con.execute("SELECT access_time FROM Cache WHERE raw = 1")] == [0]
    clock.advance(1)
    before = time.time()
    rig.get()
    assert rig.fast[-1] is True
    (stamp,) = [t for (t,) in store._con.execute("SELECT access_time FROM Cache WHERE raw = 1")]
    assert stamp >= before


# Bodies in memory with their stored file open: sendfile, the descriptor's lifetime

MID = bytes(range(256)) * 192 + b"mid"  # 48 KiB and a bit: held in memory, sent from its file


def _mapped_rig(clock, store, hot=None):
    rig = Rig(clock, store, body=MID, hot=hot)
    rig.get()
    rig.get()  # a miss, then a hit that remembers
    ((entry,),) = rig.hot._entries.values()
    return rig, entry


def test_a_mid_sized_body_is_remembered_with_its_file_open(clock, store):
    """A body of 32 KiB or more held in memory is remembered with a descriptor
    of its stored file, which reads exactly the body."""
    rig, entry = _mapped_rig(clock, store)
    assert entry.body == MID and entry.mapped is not None
    assert entry.mapped.data is entry.body
    assert os.pread(entry.mapped.fd, len(MID) + 1, 0) == MID
    assert rig.hot._files == 1  # counted against max_files


def test_a_small_body_has_no_descriptor(clock, store):
    """Below 32 KiB the body is sent from memory: no file is held open."""
    rig = Rig(clock, store, body=b"s" * 1000)
    rig.get()
    rig.get()
    ((entry,),) = rig.hot._entries.values()
    assert entry.mapped is None and rig.hot._files == 0


def test_the_descriptor_closes_when_the_entry_goes(clock, store):
    """An entry dropped from the hot tier (stale here) closes its descriptor."""
    rig, entry = _mapped_rig(clock, store)
    fd = entry.mapped.fd
    clock.advance(61)  # past max-age: the fast path drops it
    rig.get()
    assert not rig.hot._entries.get((b"http", b"example.com", b"/a", None)) or all(
        e is not entry for e in rig.hot._entries[(b"http", b"example.com", b"/a", None)]
    )
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize(
    "drop",
    ["replace", "evict", "discard", "clear", "refuse"],
)
def test_hot_tier_tells_on_drop_of_every_entry_it_lets_go(drop):
    """on_drop hears of each entry put and then dropped, whichever way, and of refused ones."""
    dropped = []
    tier = HotTier(3 * _entry(b"x" * 100).size, max_item=100, on_drop=dropped.append)
    first = _entry(b"x" * 100)
    tier.put("a", first)
    if drop == "replace":
        tier.put("a", _entry(b"y" * 100))
    elif drop == "evict":
        for key in "bcd":
            tier.put(key, _entry(b"x" * 100))
    elif drop == "discard":
        tier.discard("a", first)
    elif drop == "clear":
        tier.clear()
    else:
        first = _entry(b"x" * 101)  # larger than max_item: never held
        tier.put("z", first)
    assert first in dropped and len(dropped) == 1


def test_a_mid_sized_fast_hit_goes_by_sendfile(tmp_path, monkeypatch):
    """Over a real socket, a fast hit of a body held in memory with its file open
    is sent with sendfile, every byte of it, after its head."""
    from twisted.internet import reactor

    s = Store(str(tmp_path / "mid"), 64 * 1024 * 1024, reactor, memory=MemoryTier(1 << 20))
    headers = [(b"date", format_http_date(time.time())), (b"cache-control", b"max-age=600")]
    rig = Rig(reactor, s, headers=headers, body=MID)
    raw = b"GET /a HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n\r\n"
    for _ in range(2):
        assert _serve(rig, lambda port: _get(port, raw)).endswith(MID)
    calls = []
    real = os.sendfile

    def spy(*args):
        calls.append(real(*args))
        return calls[-1]

    monkeypatch.setattr(os, "sendfile", spy)
    out = _serve(rig, lambda port: _get(port, raw))
    s.close()
    assert rig.fast == [False, False, True]
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n" + MID)
    assert b"content-length: %d\r\n" % len(MID) in out
    assert sum(calls) == len(MID)


def test_a_mid_sized_fast_hit_without_a_socket_is_sent_from_memory(clock, store):
    """Where there is no plain socket (TLS; here a StringTransport) the body goes
    from memory: same bytes."""
    rig, _ = _mapped_rig(clock, store)
    out = rig.get()
    assert rig.fast[-1] is True and out.endswith(b"\r\n\r\n" + MID)


# Conditional requests: If-None-Match and If-Modified-Since against hot hits
# (RFC 9110 section 13.2.2), answered as the general path answers them

LAST_MODIFIED = format_http_date(T0 - 3600)
VALIDATED = [
    (b"date", format_http_date(T0)),
    (b"cache-control", b"max-age=60"),
    (b"etag", b'"v1"'),
    (b"last-modified", LAST_MODIFIED),
]


def _warm(rig) -> None:
    """A miss, then a hit that remembers /a for the fast path."""
    rig.get()
    rig.get()


def _status(answer: bytes) -> int:
    return int(answer[9:12])


def test_if_none_match_with_the_etag_is_a_fast_304(clock, store):
    """RFC 9110 section 13.1.2: the client's tag matches: 304 from the fast path."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    out = rig.get(extra=b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is True
    assert _status(out) == 304 and out.endswith(b"\r\n\r\n")


def test_fast_304_is_byte_identical_to_the_general_one(clock, store):
    """At the same instant, the fast 304 is the general path's, field by field:
    RFC 9110 section 15.4.5's fields as the 200 has them, then Age, Via,
    Cache-Status and the server's own Server, with no body and no Content-Length."""
    headers = [
        (b"date", format_http_date(T0)),
        (b"server", b"origin/1"),
        (b"content-type", b"text/plain"),
        (b"cache-control", b"max-age=60, public"),
        (b"etag", b'W/"v1"'),
        (b"content-location", b"/a.txt"),
        (b"expires", format_http_date(T0 + 60)),
        (b"via", b"1.1 upstream"),
        (b"cache-status", b"upstream; hit"),
        (b"vary", b"accept-encoding"),
        (b"x-odd", b"100% age: %d"),
    ]
    rig = Rig(clock, store, headers=headers)
    _warm(rig)
    clock.advance(7)
    condition = b'if-none-match: W/"v1"\r\n'
    general = rig.general(extra=condition)
    fast = rig.get(extra=condition)
    assert rig.fast[-2:] == [False, True]
    assert fast.split(b"\r\n") == general.split(b"\r\n")
    assert fast.split(b"\r\n")[1:] == [
        b"date: " + format_http_date(T0),
        b"cache-control: max-age=60, public",
        b'etag: W/"v1"',
        b"content-location: /a.txt",
        b"expires: " + format_http_date(T0 + 60),
        b"vary: accept-encoding",
        b"age: 7",
        b"via: 1.1 upstream",
        b"via: 1.1 accel",
        b"cache-status: upstream; hit",
        b"cache-status: accel; hit; ttl=53",
        b"server: accel",
        b"",
        b"",
    ]


def test_weak_comparison_matches_a_weak_tag(clock, store):
    """RFC 9110 section 8.8.3.2: If-None-Match compares weakly: W/"v1" matches "v1"."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    out = rig.get(extra=b'if-none-match: W/"v1"\r\n')
    assert rig.fast[-1] is True and _status(out) == 304


def test_a_list_with_the_etag_matches(clock, store):
    """A list of tags over two lines, one of them the stored tag: 304."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    out = rig.get(extra=b'if-none-match: "v0", W/"x"\r\nif-none-match: "v1"\r\n')
    assert rig.fast[-1] is True and _status(out) == 304


def test_if_none_match_without_the_etag_is_the_fast_200(clock, store):
    """The client's copy is not the current one: the whole response, as a plain hit."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    plain = rig.get()
    out = rig.get(extra=b'if-none-match: "v0"\r\n')
    assert rig.fast[-2:] == [True, True]
    assert out == plain


def test_if_modified_since_not_modified_is_a_fast_304(clock, store):
    """RFC 9110 section 13.1.3: Last-Modified no later than the date: 304."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    out = rig.get(extra=b"if-modified-since: " + LAST_MODIFIED + b"\r\n")
    assert rig.fast[-1] is True and _status(out) == 304
    later = rig.get(extra=b"if-modified-since: " + format_http_date(T0 - 10) + b"\r\n")
    assert rig.fast[-1] is True and _status(later) == 304


def test_if_modified_since_modified_is_the_fast_200(clock, store):
    """Last-Modified later than the client's date: the whole response."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    out = rig.get(extra=b"if-modified-since: " + format_http_date(T0 - 3601) + b"\r\n")
    assert rig.fast[-1] is True and _status(out) == 200 and out.endswith(BODY)


def test_if_modified_since_without_last_modified_compares_date(clock, store):
    """RFC 9111 section 4.3.2: with no Last-Modified, the stored Date stands in."""
    rig = Rig(clock, store)  # Date and Cache-Control only
    _warm(rig)
    out = rig.get(extra=b"if-modified-since: " + format_http_date(T0) + b"\r\n")
    assert rig.fast[-1] is True and _status(out) == 304
    older = rig.get(extra=b"if-modified-since: " + format_http_date(T0 - 1) + b"\r\n")
    assert rig.fast[-1] is True and _status(older) == 200


def test_if_modified_since_over_two_lines(clock, store):
    """Two If-Modified-Since lines, answered by the fast path as by the general one:
    the same date twice is that date (304); two different dates are ignored (200)."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    for dates, status in (((LAST_MODIFIED, LAST_MODIFIED), 304), ((LAST_MODIFIED, format_http_date(T0 - 10)), 200)):
        extra = b"".join(b"if-modified-since: " + date + b"\r\n" for date in dates)
        general = rig.general(extra=extra)
        out = rig.get(extra=extra)
        assert rig.fast[-1] is True
        assert _status(out) == status and out == general


def test_if_modified_since_is_ignored_with_if_none_match(clock, store):
    """RFC 9110 section 13.2.2: If-None-Match present, If-Modified-Since is not evaluated."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    extra = b'if-none-match: "v0"\r\nif-modified-since: ' + LAST_MODIFIED + b"\r\n"
    out = rig.get(extra=extra)
    assert rig.fast[-1] is True and _status(out) == 200


def test_if_none_match_star_is_a_fast_304(clock, store):
    """RFC 9110 section 13.1.2: "*" matches any current representation."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    general = rig.general(extra=b"if-none-match: *\r\n")
    out = rig.get(extra=b"if-none-match: *\r\n")
    assert rig.fast[-1] is True and _status(out) == 304 and out == general


def test_if_match_takes_the_general_path(clock, store):
    """If-Match, even beside If-None-Match, is left to the general path."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    rig.get(extra=b'if-none-match: "v1"\r\nif-match: "v1"\r\n')
    assert rig.fast[-1] is False


def test_head_conditional_is_the_same_304(clock, store):
    """A conditional HEAD gets the same 304 as the GET."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    get = rig.get(extra=b'if-none-match: "v1"\r\n')
    head = rig.get(method=b"HEAD", extra=b'if-none-match: "v1"\r\n')
    assert rig.fast[-2:] == [True, True] and head == get


def test_conditional_vary_selects_the_variant(clock, store):
    """RFC 9111 section 4.1: a conditional request is evaluated against its own
    variant; another variant's is not used."""
    headers = [*VALIDATED, (b"vary", b"accept-language")]
    rig = Rig(clock, store, headers=headers)
    de, fr = b"accept-language: de\r\n", b"accept-language: fr\r\n"
    rig.get(extra=de)
    rig.get(extra=de)
    out = rig.get(extra=de + b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is True and _status(out) == 304
    rig.get(extra=fr + b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is False


def test_a_general_304_remembers_the_hit(clock, store):
    """A client that only ever revalidates: the general path's 304 remembers the
    hit, and the next conditional request is answered by the fast path."""
    rig = Rig(clock, store, headers=VALIDATED)
    rig.get()
    condition = b'if-none-match: "v1"\r\n'
    general = rig.get(extra=condition)
    fast = rig.get(extra=condition)
    assert rig.fast == [False, False, True]
    assert _status(general) == 304 and fast == general


def test_stale_entry_conditional_takes_the_general_path(clock, store):
    """RFC 9111 section 4.2: once stale, a conditional request is not answered from the hot tier."""
    rig = Rig(clock, store, headers=VALIDATED)
    _warm(rig)
    clock.advance(60)
    rig.get(extra=b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is False
    assert len(rig.origin.calls) == 2


def test_non_2xx_ignores_the_conditions(clock, store):
    """RFC 9110 section 13.2.1: a stored 404 is served whole whatever the validators say."""
    rig = Rig(clock, store, headers=VALIDATED)
    rig.origin.auto = always(status=404, headers=VALIDATED, body=BODY)
    _warm(rig)
    general = rig.general(extra=b'if-none-match: "v1"\r\n')
    out = rig.get(extra=b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is True and _status(out) == 404 and out == general


def test_fast_304s_are_logged_as_hits(clock, store):
    """The access log line of a fast 304: status 304, no body bytes, HIT."""
    lines = []
    rig = Rig(clock, store, headers=VALIDATED, access_log=lambda *args: lines.append(args))
    _warm(rig)
    rig.get(extra=b'if-none-match: "v1"\r\n')
    assert rig.fast[-1] is True
    request, status, sent, _, _, notes = lines[-1]
    assert (request.target, status, sent, notes["cache"]) == (b"/a", 304, 0, "HIT")


#: Stored responses by their validators: both, Date only, a strong tag
#: only, a weak tag and a Last-Modified.
STORED = {
    "validated": VALIDATED,
    "date only": [(b"date", format_http_date(T0)), (b"cache-control", b"max-age=60")],
    "etag": [(b"date", format_http_date(T0)), (b"cache-control", b"max-age=60"), (b"etag", b'"v1"')],
    "weak etag": [*VALIDATED[:2], (b"etag", b'W/"v1"'), VALIDATED[3]],
}
_TAG = st.sampled_from(
    [b'"v1"', b'W/"v1"', b'w/"v1"', b'"v2"', b'W/"v2"', b"*", b"v1", b'"v1', b"", b'"v1,v2"', b' "v1" ']
)
_IF_NONE_MATCH = st.lists(st.lists(_TAG, min_size=1, max_size=3).map(b", ".join), max_size=2)
_DATE = st.sampled_from(
    [format_http_date(t) for t in (T0 - 3601, T0 - 3600, T0 - 3599, T0 - 1, T0, T0 + 1)]
    + [b"Tuesday, 14-Nov-23 21:13:20 GMT", b"Tue Nov 14 21:13:20 2023", b"yesterday", b""]
)
_IF_MODIFIED_SINCE = st.lists(_DATE, max_size=2)


@pytest.fixture(scope="module")
def rigs(tmp_path_factory):
    """One warm rig per stored response of :data:`STORED`, on one clock that stays put."""
    clock = Clock()
    clock.advance(T0)
    rigs, stores = {}, []
    for name, headers in STORED.items():
        store = Store(str(tmp_path_factory.mktemp("cond")), 64 * 1024 * 1024, clock, memory=MemoryTier(1 << 20))
        stores.append(store)
        rigs[name] = rig = Rig(clock, store, headers=headers)
        _warm(rig)
    yield rigs
    for store in stores:
        store.close()


@settings(max_examples=300, deadline=None)
@given(
    stored=st.sampled_from(sorted(STORED)),
    method=st.sampled_from([b"GET", b"HEAD"]),
    if_none_match=_IF_NONE_MATCH,
    if_modified_since=_IF_MODIFIED_SINCE,
)
def test_conditional_fast_answers_are_the_general_ones(rigs, stored, method, if_none_match, if_modified_since):
    """For any If-None-Match lines and If-Modified-Since dates, valid or not, the
    fast path answers (status, fields, body) exactly as the general path does."""
    rig = rigs[stored]
    extra = b"".join(b"if-none-match: %s\r\n" % line for line in if_none_match)
    extra += b"".join(b"if-modified-since: %s\r\n" % date for date in if_modified_since)
    general = rig.general(method=method, extra=extra)
    fast = rig.get(method=method, extra=extra)
    assert rig.fast[-1] is True
    assert _status(fast) == _status(general)
    assert fast == general
    event(f"status {_status(fast)}")

"""The HTTP/1.1 server protocol: framing, validation, pipelining, limits, timers.

Driven through ``StringTransport`` and ``MemoryReactorClock``; one test runs
a real listening socket on 127.0.0.1. Sections follow RFC 9112.
"""

from __future__ import annotations

import itertools
import re
import socket

import httptools
import pytest
from attrs import define, field
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from accel import directwrite
from accel.http.headers import Headers
from accel.http.model import Request
from accel.http.server import (
    HTTPServerFactory,
    HTTPServerProtocol,
    RequestBodyError,
    ServerLimits,
    _persistent,
    split_target,
    valid_host,
)

# --- Helpers ---


@define
class Sink:
    """A BodySink that records what it is given."""

    chunks: list[bytes] = field(factory=list)
    ended: bool = False
    failed: Exception | None = None

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def end(self) -> None:
        self.ended = True

    def fail(self, reason: Exception) -> None:
        self.failed = reason

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@define
class Recorder:
    """A handler that records each request; answers ``200 ok`` at once unless told not to.

    With ``read_body`` it takes the body first and answers when it ends.
    """

    auto: bool = True
    read_body: bool = False
    calls: list[tuple[Request, object]] = field(factory=list)
    sinks: list[Sink] = field(factory=list)

    def handle(self, request: Request, responder) -> None:
        self.calls.append((request, responder))
        if self.read_body:
            sink = AnswerOnEnd(responder=responder)
            self.sinks.append(sink)
            request.body.deliver(sink)
        elif self.auto:
            answer(responder, b"ok")

    @property
    def requests(self) -> list[Request]:
        return [r for r, _ in self.calls]


@define
class AnswerOnEnd(Sink):
    responder: object = None

    def end(self) -> None:
        self.ended = True
        answer(self.responder, b"got " + self.body)


def answer(responder, body: bytes, status: int = 200) -> None:
    responder.start(status, b"OK", Headers([(b"content-length", b"%d" % len(body))]))
    responder.write(body)
    responder.finish()


def connect(handler=None, **limits):
    """A protocol on a StringTransport: ``(protocol, transport, clock, handler)``."""
    handler = handler if handler is not None else Recorder()
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(handler, clock, limits=ServerLimits(**limits))
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock, handler


@define
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def get(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


def responses(raw: bytes) -> list[Response]:
    """Parse the bytes a server wrote into responses (complete ones only)."""
    out: list[Response] = []

    class Collect:
        def on_message_begin(self):
            self.headers, self.body = [], b""

        def on_header(self, n, v):
            self.headers.append((n, v))

        def on_body(self, b):
            self.body += b

        def on_message_complete(self):
            out.append(Response(parser.get_status_code(), self.headers, self.body))

    parser = httptools.HttpResponseParser(Collect())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    return out


def only_response(transport: StringTransport) -> Response:
    found = responses(transport.value())
    assert len(found) == 1, transport.value()
    return found[0]


GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


# --- Basic exchange ---


def test_simple_get_keeps_alive():
    """A 1.1 GET is answered and the connection stays open."""
    proto, t, _, h = connect()
    proto.dataReceived(GET)
    r = only_response(t)
    assert (r.status, r.body) == (200, b"ok")
    assert r.get(b"connection") is None
    assert r.get(b"date") is not None and r.get(b"server") == b"accel"
    assert not t.disconnecting
    assert len(h.calls) == 1


def test_request_model():
    """The handler sees lower-case names, trimmed values in order, lower-case authority."""
    proto, _, _, h = connect()
    proto.dataReceived(
        b"GET /a/b?x=1&y HTTP/1.1\r\nHost: Example.COM:8080\r\nX-A:  one \t\r\n"
        b"x-a: two\r\nAccept: */*\r\n\r\n"
    )
    (req,) = h.requests
    assert (req.method, req.target, req.path, req.query) == (b"GET", b"/a/b?x=1&y", b"/a/b", b"x=1&y")
    assert req.version == b"1.1" and req.scheme == b"http"
    assert req.authority == b"example.com:8080"
    assert req.headers.pairs == [
        (b"host", b"Example.COM:8080"),
        (b"x-a", b"one"),
        (b"x-a", b"two"),
        (b"accept", b"*/*"),
    ]
    assert (req.client, req.client_port) == ("192.168.1.1", 54321)
    assert req.body.length == 0


def test_query_absent_and_empty():
    """No "?" means query None; a bare "?" is an empty query."""
    proto, _, _, h = connect()
    proto.dataReceived(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\nGET /p? HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [r.query for r in h.requests] == [None, b""]


def test_unix_peer_is_unix():
    """A UNIX socket peer is reported as "unix"."""
    from twisted.internet.address import UNIXAddress

    h = Recorder()
    factory = HTTPServerFactory(h, MemoryReactorClock())
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport(peerAddress=UNIXAddress(b"/tmp/s")))
    proto.dataReceived(GET)
    assert (h.requests[0].client, h.requests[0].client_port) == ("unix", 0)


def test_https_scheme_from_factory():
    """The listener's scheme goes into every request."""
    h = Recorder()
    proto = HTTPServerFactory(h, MemoryReactorClock(), scheme=b"https").buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(GET)
    assert h.requests[0].scheme == b"https"


def test_absolute_form_authority_from_target():
    """RFC 9112 3.2.2: absolute-form's authority wins over Host."""
    proto, _t, _, h = connect()
    proto.dataReceived(b"GET http://Origin.Example:81/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
    (req,) = h.requests
    assert (req.authority, req.path, req.query) == (b"origin.example:81", b"/p", b"q")


def test_absolute_form_empty_path_is_slash():
    """RFC 9112 3.2.1: an empty path in absolute-form is "/"."""
    proto, _, _, h = connect()
    proto.dataReceived(b"GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n")
    assert h.requests[0].path == b"/"


def test_options_asterisk():
    """Asterisk-form is accepted for OPTIONS."""
    proto, _, _, h = connect()
    proto.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.requests[0].path == b"*"


def test_higher_minor_version_is_read_as_1_1():
    """RFC 9112 2.3: HTTP/1.2 is processed as HTTP/1.1."""
    proto, t, _, h = connect()
    proto.dataReceived(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")
    assert h.requests[0].version == b"1.1"
    assert only_response(t).status == 200


def test_empty_host_accepted():
    """RFC 9112 3.2: an empty Host is valid syntax (no authority)."""
    proto, _, _, h = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost:\r\n\r\n")
    assert h.requests[0].authority == b""


def test_http10_without_host():
    """HTTP/1.0 does not need Host."""
    proto, _, _, h = connect()
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    assert h.requests[0].version == b"1.0"


# --- Pipelining ---


def test_pipelined_requests_answered_in_order():
    """Request 2 is handled only after response 1 completes, and answers follow in order."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [r.path for r in h.requests] == [b"/1"]
    answer(h.calls[0][1], b"one")
    assert [r.path for r in h.requests] == [b"/1", b"/2"]
    answer(h.calls[1][1], b"two")
    assert [r.body for r in responses(t.value())] == [b"one", b"two"]


def test_pipeline_queue_pauses_transport():
    """Past max_pipelined queued heads, reading pauses; it resumes once drained."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h, max_pipelined=2)
    proto.dataReceived(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3)))
    assert t.producerState == "paused"
    answer(h.calls[0][1], b"x")
    assert t.producerState == "producing"


def test_data_after_connection_close_is_ignored():
    """Nothing after a request with Connection: close is read."""
    proto, t, _, h = connect()
    proto.dataReceived(
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [r.path for r in h.requests] == [b"/1"]
    r = only_response(t)
    assert r.get(b"connection") == b"close"
    assert t.disconnecting


# --- Request content ---


def test_content_length_body_delivered():
    """A Content-Length body reaches the sink, then end()."""
    proto, t, _, h = connect(Recorder(read_body=True))
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert h.requests[0].body.length == 5
    assert h.sinks[0].body == b"hello" and h.sinks[0].ended
    assert only_response(t).body == b"got hello"


def test_chunked_body_delivered_and_trailers_dropped():
    """A chunked body reaches the sink; trailer fields do not join the headers."""
    proto, _t, _, h = connect(Recorder(read_body=True))
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    req = h.requests[0]
    assert req.body.length is None
    assert h.sinks[0].body == b"abcde" and h.sinks[0].ended
    assert b"x-trailer" not in req.headers


def test_body_buffered_until_deliver():
    """Content that arrives before deliver() is kept for the sink."""
    h = Recorder(auto=False)
    proto, _, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    sink = Sink()
    h.requests[0].body.deliver(sink)
    assert sink.body == b"abc" and sink.ended


def test_body_buffer_pauses_transport():
    """Undelivered content above max_buffered_body pauses reading; deliver resumes it."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h, max_buffered_body=10)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 20)
    assert t.producerState == "paused"
    h.requests[0].body.deliver(Sink())
    assert t.producerState == "producing"


def test_sink_pause_pauses_transport():
    """A sink's pause() pauses reading; resume() resumes and flushes."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    body = h.requests[0].body
    sink = Sink()
    body.deliver(sink)
    body.pause()
    assert t.producerState == "paused"
    proto.dataReceived(b"def")
    assert sink.body == b"abc"
    body.resume()
    assert t.producerState == "producing"
    assert sink.body == b"abcdef" and sink.ended


def test_unread_body_is_drained_and_connection_kept():
    """A small unread body is read and dropped; the next request is served."""
    proto, t, _, h = connect()
    proto.dataReceived(
        b"POST /1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [r.path for r in h.requests] == [b"/1", b"/2"]
    assert len(responses(t.value())) == 2 and not t.disconnecting


def test_large_unread_body_closes():
    """An unread body larger than max_discard closes the connection after the response."""
    proto, t, _, _h = connect(max_discard=10)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc")
    assert only_response(t).status == 200
    assert t.disconnecting


def test_upgrade_with_body_is_read_as_body():
    """An ignored Upgrade with content: the content is content, not a hidden request."""
    proto, _t, _, h = connect(Recorder(read_body=True))
    hidden = b"GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"
    proto.dataReceived(
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n%sGET /next HTTP/1.1\r\nHost: a\r\n\r\n" % (len(hidden), hidden)
    )
    assert [r.path for r in h.requests] == [b"/up", b"/next"]
    assert h.sinks[0].body == hidden


def test_upgrade_without_body_continues():
    """An ignored Upgrade without content is a plain request; the next one follows."""
    proto, _t, _, h = connect()
    proto.dataReceived(
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [r.path for r in h.requests] == [b"/up", b"/next"]


PIPELINE = (
    b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"
    b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n"
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(0, len(PIPELINE)), max_size=12))
def test_any_split_gives_the_same_result(cuts):
    """However the bytes are split, the same requests and bodies come out."""
    proto, t, _, h = connect(Recorder(read_body=True))
    edges = [0, *sorted(cuts), len(PIPELINE)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            proto.dataReceived(PIPELINE[a:b])
    assert [r.path for r in h.requests] == [b"/a", b"/b", b"/c"]
    assert [s.body for s in h.sinks] == [b"hello", b"abcd", b""]
    assert [r.body for r in responses(t.value())] == [b"got hello", b"got abcd", b"got "]


def test_every_byte_boundary():
    """Split at each single byte boundary, the pipeline parses identically."""
    for i in range(1, len(PIPELINE)):
        proto, _, _, h = connect(Recorder(read_body=True))
        proto.dataReceived(PIPELINE[:i])
        proto.dataReceived(PIPELINE[i:])
        assert [s.body for s in h.sinks] == [b"hello", b"abcd", b""], i


# --- Expect: 100-continue (RFC 9110 10.1.1) ---


def test_100_continue_sent_on_deliver():
    """100 Continue is written when the handler asks for the body, not before."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert t.value() == b""
    sink = Sink()
    h.requests[0].body.deliver(sink)
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    proto.dataReceived(b"abc")
    assert sink.ended and sink.body == b"abc"


def test_100_continue_unread_closes():
    """Answering without reading the body: no 100, and the connection closes."""
    proto, t, _, _ = connect()
    proto.dataReceived(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
    )
    assert not t.value().startswith(b"HTTP/1.1 100")
    r = only_response(t)
    assert r.get(b"connection") == b"close" and t.disconnecting


def test_unknown_expectation_is_417():
    """An expectation other than 100-continue gets 417."""
    proto, t, _, h = connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n")
    assert only_response(t).status == 417 and not h.calls


# --- Response framing ---


def test_chunked_response_framing():
    """No content-length on 1.1: chunked, with a terminating chunk."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(200, b"OK", Headers([(b"x", b"y")]))
    resp.write(b"hello")
    resp.write(b"")
    resp.write(b" world")
    resp.finish()
    assert b"transfer-encoding: chunked\r\n" in t.value()
    assert t.value().endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert only_response(t).body == b"hello world"
    assert not t.disconnecting


def test_head_writes_no_body():
    """HEAD keeps the handler's Content-Length but writes no content."""
    proto, t, _, _ = connect()
    proto.dataReceived(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    raw = t.value()
    assert b"content-length: 2\r\n" in raw and raw.endswith(b"\r\n\r\n")
    assert not t.disconnecting


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses(status):
    """204 and 304 carry no content; 204 never carries Content-Length."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(status, b"X", Headers([(b"content-length", b"5")]))
    resp.write(b"hello")
    resp.finish()
    raw = t.value()
    assert raw.endswith(b"\r\n\r\n") and b"hello" not in raw
    assert (b"content-length" in raw) == (status == 304)
    assert b"transfer-encoding" not in raw


def test_http10_close_delimited():
    """1.0 without Content-Length: close-delimited, connection: close."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    resp = h.calls[0][1]
    resp.start(200, b"OK", Headers())
    resp.write(b"abc")
    assert not t.disconnecting
    resp.finish()
    raw = t.value()
    assert b"connection: close\r\n" in raw and b"transfer-encoding" not in raw
    assert raw.endswith(b"\r\n\r\nabc") and t.disconnecting


def test_http10_keep_alive():
    """1.0 with keep-alive and a length: connection: keep-alive, stays open."""
    proto, t, _, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"connection: keep-alive\r\n" in t.value()
    assert not t.disconnecting


def test_http10_default_closes():
    """1.0 without keep-alive closes after the response."""
    proto, t, _, _ = connect()
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    assert b"connection: close\r\n" in t.value() and t.disconnecting


def test_handler_connection_close_honoured_once():
    """A handler's Connection: close closes; framing fields are never doubled."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(
        200,
        b"OK",
        Headers(
            [
                (b"connection", b"close"),
                (b"transfer-encoding", b"chunked"),
                (b"content-length", b"2"),
                (b"content-length", b"2"),
            ]
        ),
    )
    resp.write(b"ok")
    resp.finish()
    raw = t.value()
    assert raw.count(b"content-length") == 1 and b"transfer-encoding" not in raw
    assert raw.count(b"connection: close") == 1 and t.disconnecting


def test_write_past_content_length_is_cut():
    """Content beyond Content-Length is not sent."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(200, b"OK", Headers([(b"content-length", b"3")]))
    resp.write(b"abcdef")
    resp.finish()
    assert t.value().endswith(b"\r\n\r\nabc") and not t.disconnecting


def test_short_fixed_length_finish_closes():
    """finish() before Content-Length is met is an abort: the connection closes."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(200, b"OK", Headers([(b"content-length", b"10")]))
    resp.write(b"abc")
    resp.finish()
    assert t.disconnecting


def test_abort_omits_terminating_chunk():
    """abort() closes without the last chunk, so the client sees truncation."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(200, b"OK", Headers())
    resp.write(b"partial")
    resp.abort()
    assert t.value().endswith(b"7\r\npartial\r\n") and t.disconnecting


def test_interim_response_then_final():
    """A 103 goes out before the final response (not to 1.0 clients)."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    resp.start(103, b"Early Hints", Headers([(b"link", b"</s.css>; rel=preload")]))
    answer(resp, b"ok")
    assert t.value().startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n")
    assert b"HTTP/1.1 200 OK" in t.value()


def test_register_producer_passes_through():
    """The responder registers a streaming producer with the transport, and unregisters it."""

    class Producer:
        def pauseProducing(self):
            pass

        def resumeProducing(self):
            pass

        def stopProducing(self):
            pass

    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET)
    resp = h.calls[0][1]
    producer = Producer()
    resp.start(200, b"OK", Headers())
    resp.register_producer(producer)
    assert t.producer is producer and t.streaming
    resp.finish()
    assert t.producer is None


def test_date_cached_per_second():
    """The Date field follows the clock, formatted once per second."""
    clock = MemoryReactorClock()
    clock.advance(784111777)
    proto = HTTPServerFactory(Recorder(), clock).buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(GET)
    assert only_response(t).get(b"date") == b"Sun, 06 Nov 1994 08:49:37 GMT"


def test_access_log_called():
    """The access log hook gets request, status, bytes, times and the log dict."""
    seen = []
    h = Recorder()
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(h, clock, access_log=lambda *a: seen.append(a))
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(GET)
    (req, status, sent, started, finished, log) = seen[0]
    assert req is h.requests[0] and (status, sent, log) == (200, 2, {})
    assert started <= finished


def test_access_log_says_499_for_a_client_gone_before_its_answer():
    """A client that closes its connection (or only its sending side) while its
    request waits for an answer is logged with status 499 and nothing sent,
    as nginx logs it; one cut off during its answer keeps the answer's status."""
    seen = []
    clock = MemoryReactorClock()
    h = Recorder(auto=False)
    factory = HTTPServerFactory(h, clock, access_log=lambda *a: seen.append(a))
    for started in (False, True):
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.dataReceived(GET)
        if started:
            h.calls[-1][1].start(200, b"OK", Headers([(b"content-length", b"10")]))
            h.calls[-1][1].write(b"abc")
        proto.connectionLost(Failure(ConnectionDone()))
    assert [(status, sent) for _, status, sent, *_ in seen] == [(499, 0), (200, 3)]


# --- Handler errors and disconnects ---


def test_handler_exception_gives_500():
    """A handler that raises before answering: 500, no traceback, connection closed."""

    class Boom:
        def handle(self, request, responder):
            raise RuntimeError("secret detail")

    proto, t, _, _ = connect(Boom())
    proto.dataReceived(GET)
    r = only_response(t)
    assert r.status == 500 and b"secret" not in t.value() and b"Traceback" not in t.value()
    assert t.disconnecting


def test_handler_exception_after_start_aborts():
    """A handler that raises mid-response: the connection is closed, no terminating chunk."""

    class HalfBoom:
        def handle(self, request, responder):
            responder.start(200, b"OK", Headers())
            responder.write(b"abc")
            raise RuntimeError("oops")

    proto, t, _, _ = connect(HalfBoom())
    proto.dataReceived(GET)
    assert t.value().endswith(b"3\r\nabc\r\n") and t.disconnecting


def test_disconnect_notifies_handler():
    """Losing the client sets disconnected, runs on_disconnect, fails the body."""
    h = Recorder(auto=False)
    proto, _t, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nabc")
    req, resp = h.calls[0]
    sink = Sink()
    req.body.deliver(sink)
    called = []
    resp.on_disconnect(lambda: called.append(True))
    proto.connectionLost(Failure(ConnectionError("gone")))
    assert resp.disconnected and called == [True]
    assert sink.failed is not None
    resp.start(200, b"OK", Headers())  # ignored, no error
    resp.write(b"x")
    resp.finish()


# --- Rejections (RFC 9112 / RFC 9110): status, handler not called, closed ---

REJECTS = {
    "missing host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "duplicate host": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400),
    "host with path": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    "host with space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    "host userinfo": (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", 400),
    "host bad port": (b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400),
    "host bad ipv6": (b"GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", 400),
    "host non-ascii": (b"GET / HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n", 400),
    "absolute without host": (b"GET http://a/ HTTP/1.1\r\n\r\n", 400),
    "absolute userinfo": (b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "absolute bad scheme": (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "absolute empty host": (b"GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "asterisk for GET": (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "connect": (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 501),
    "authority-form for GET": (b"GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "relative target": (b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "fragment": (b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "backslash in path": (b"GET /a\\b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "quote in target": (b'GET /a"b HTTP/1.1\r\nHost: a\r\n\r\n', 400),
    "bad percent": (b"GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "control in target": (b"GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "non-ascii target": (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    "cl and te": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    "te and cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        400,
    ),
    "te not chunked": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    "te unknown coding": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        501,
    ),
    "te chunked twice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        400,
    ),
    "te in 1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "cl twice": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", 400),
    "cl list": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\nx", 400),
    "cl sign": (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
    "bare cr": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),
    "bare lf": (b"GET / HTTP/1.1\nHost: a\n\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    "bad name char": (b"GET / HTTP/1.1\r\nHost: a\r\nX(y): z\r\n\r\n", 400),
    "control in value": (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
    "http 2.0": (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
    "http 0.9": (b"GET /\r\n\r\n", 505),
    "http 3.1": (b"GET / HTTP/3.1\r\nHost: a\r\n\r\n", 505),
    "lower-case version": (b"GET / http/1.1\r\nHost: a\r\n\r\n", 400),
    "unknown method": (b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n", 501),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "leading space": (b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    # llhttp does not read "chunked<HTAB>" as chunked: refused before dispatch.
    "te trailing htab": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n0\r\n\r\n", 400),
    "te inner htab": (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x,\tchunked\r\n\r\n0\r\n\r\n", 400),
}


@pytest.mark.parametrize("raw,status", REJECTS.values(), ids=list(REJECTS))
def test_rejected(raw, status):
    """Invalid requests get their status with Connection: close; the handler never runs."""
    proto, t, _, h = connect()
    proto.dataReceived(raw)
    r = only_response(t)
    assert r.status == status
    assert r.get(b"connection") == b"close"
    assert r.get(b"content-type").startswith(b"text/plain")
    assert not h.calls
    assert t.disconnecting


def test_rejection_waits_for_earlier_response():
    """A bad request after a good one: the good one is answered first, then the error."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(GET + b"GET / HTTP/1.1\r\n\r\n")
    assert t.value() == b""
    answer(h.calls[0][1], b"ok")
    assert [r.status for r in responses(t.value())] == [200, 400]
    assert t.disconnecting and len(h.calls) == 1


def test_target_too_long_414():
    """A request-target over max_target: 414."""
    proto, t, _, h = connect(max_target=100)
    proto.dataReceived(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert only_response(t).status == 414 and not h.calls


def test_too_many_headers_431():
    """More than max_headers field lines: 431."""
    proto, t, _, h = connect(max_headers=5)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: y\r\n" * 5 + b"\r\n")
    assert only_response(t).status == 431 and not h.calls


def test_header_bytes_431():
    """Field lines over max_header_bytes: 431."""
    proto, t, _, h = connect(max_header_bytes=1000)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 1000 + b"\r\n\r\n")
    assert only_response(t).status == 431 and not h.calls


def test_endless_header_line_431():
    """A field line that never ends is cut off at the limit, in small pieces too."""
    proto, t, _, h = connect(max_header_bytes=1000)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
    for _ in range(200):
        proto.dataReceived(b"y" * 10)
    assert only_response(t).status == 431 and not h.calls


def test_content_length_over_max_body_413():
    """A declared length over max_body: 413 before the handler runs."""
    proto, t, _, h = connect(max_body=10)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    assert only_response(t).status == 413 and not h.calls


def test_chunked_over_max_body_413():
    """Chunked content growing past max_body: 413, the sink fails, the connection closes."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h, max_body=4)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    sink = Sink()
    h.requests[0].body.deliver(sink)
    proto.dataReceived(b"5\r\nabcde\r\n0\r\n\r\n")
    assert isinstance(sink.failed, RequestBodyError) and sink.failed.status == 413
    assert only_response(t).status == 413 and t.disconnecting


def test_bad_chunk_size_fails_body_400():
    """An invalid chunk size: the body fails, 400 is sent if nothing was, and the connection closes."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    sink = Sink()
    h.requests[0].body.deliver(sink)
    proto.dataReceived(b"zz\r\nabc\r\n")
    assert isinstance(sink.failed, RequestBodyError) and sink.failed.status == 400
    assert only_response(t).status == 400 and t.disconnecting
    h.calls[0][1].start(200, b"OK", Headers())  # the handler's late answer is ignored
    assert len(responses(t.value())) == 1


@define
class AnswerOnFail(Sink):
    """A sink whose handler answers 502 when the body fails, as a proxy does."""

    responder: object = None

    def fail(self, reason: Exception) -> None:
        self.failed = reason
        answer(self.responder, b"origin failed", status=502)


def test_body_failure_answer_is_not_replaced_by_the_handler():
    """Broken content: the client gets 400 even if the handler answers when its sink fails."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    req, resp = h.calls[0]
    sink = AnswerOnFail(responder=resp)
    req.body.deliver(sink)
    proto.dataReceived(b"zz\r\n")
    assert isinstance(sink.failed, RequestBodyError)
    assert [r.status for r in responses(t.value())] == [400] and t.disconnecting


def limit_by_path(request: Request) -> int | None:
    """A body_limit: 4 bytes under /small, no limit elsewhere."""
    return 4 if request.path.startswith(b"/small") else None


def connect_limited(handler=None, **limits):
    handler = handler if handler is not None else Recorder(read_body=True)
    factory = HTTPServerFactory(
        handler, MemoryReactorClock(), limits=ServerLimits(**limits), body_limit=limit_by_path
    )
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, handler


def test_body_limit_declared_length_413_before_handler():
    """A Content-Length over the request's body_limit: 413 and close; the handler never runs."""
    proto, t, h = connect_limited()
    proto.dataReceived(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde")
    assert only_response(t).status == 413 and t.disconnecting and h.calls == []


def test_body_limit_chunked_413():
    """Chunked content growing past the request's body_limit: 413, the sink fails."""
    proto, t, h = connect_limited()
    proto.dataReceived(
        b"POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"
    )
    assert isinstance(h.sinks[0].failed, RequestBodyError) and h.sinks[0].failed.status == 413
    assert only_response(t).status == 413 and t.disconnecting


def test_body_limit_within_and_elsewhere():
    """Content within the request's limit, or where body_limit says None, is delivered."""
    proto, t, _h = connect_limited()
    proto.dataReceived(
        b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nabcd"
        b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"
    )
    assert [r.body for r in responses(t.value())] == [b"got abcd", b"got 0123456789"]


def test_body_limit_never_raises_max_body():
    """limits.max_body still applies when body_limit allows more."""
    proto, t, _h = connect_limited(max_body=2)
    proto.dataReceived(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
    assert only_response(t).status == 413


def test_body_limit_not_asked_without_content():
    """Requests without content are not checked (no cost on the GET path)."""
    asked = []
    factory = HTTPServerFactory(
        Recorder(), MemoryReactorClock(), body_limit=lambda r: asked.append(r) or 0
    )
    proto = factory.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(GET)
    assert only_response(t).status == 200 and asked == []


def test_bad_chunk_after_response_started_closes():
    """Broken content after the response started: the connection just closes."""
    h = Recorder(auto=False)
    proto, t, _, _ = connect(h)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    req, resp = h.calls[0]
    req.body.deliver(Sink())
    resp.start(200, b"OK", Headers())
    proto.dataReceived(b"3\r\nabcX")
    assert t.disconnecting and not t.value().endswith(b"0\r\n\r\n")


# --- Timers ---


def test_header_timeout_408():
    """A head begun but not finished within header_timeout: 408 and close."""
    proto, t, clock, h = connect(header_timeout=10)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHo")
    clock.advance(9.9)
    assert t.value() == b""
    clock.advance(0.2)
    assert only_response(t).status == 408 and t.disconnecting and not h.calls


def test_header_timeout_slow_drip():
    """Dripping a head byte by byte does not extend header_timeout."""
    proto, t, clock, _ = connect(header_timeout=10)
    for byte in b"GET / HTTP/1.1\r\nHost: a\r\n":
        proto.dataReceived(bytes([byte]))
        clock.advance(0.5)
    assert only_response(t).status == 408


def test_silent_connection_closed_after_header_timeout():
    """A connection that sends nothing is closed at header_timeout, without a response."""
    _proto, t, clock, _ = connect(header_timeout=10)
    clock.advance(10)
    assert t.disconnecting and t.value() == b""


def test_idle_timeout_closes_silently():
    """A keep-alive connection idle for idle_timeout is closed without a response."""
    proto, t, clock, _ = connect(idle_timeout=60)
    proto.dataReceived(GET)
    t.clear()
    clock.advance(59)
    assert not t.disconnecting
    clock.advance(1)
    assert t.disconnecting and t.value() == b""


def test_idle_timeout_restarts_per_request():
    """Each request restarts the idle timer."""
    proto, t, clock, _ = connect(idle_timeout=60)
    proto.dataReceived(GET)
    clock.advance(50)
    proto.dataReceived(GET)
    clock.advance(50)
    assert not t.disconnecting
    clock.advance(10)
    assert t.disconnecting


def test_slow_handler_is_not_timed_out():
    """A handler taking longer than idle_timeout is not cut off by the server."""
    h = Recorder(auto=False)
    proto, t, clock, _ = connect(h, idle_timeout=60, body_timeout=60)
    proto.dataReceived(GET)
    clock.advance(200)
    assert not t.disconnecting
    answer(h.calls[0][1], b"late")
    assert only_response(t).body == b"late"


def test_body_timeout_408():
    """Content stalled for body_timeout: the sink fails and 408 is sent."""
    h = Recorder(auto=False)
    proto, t, clock, _ = connect(h, body_timeout=30)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    sink = Sink()
    h.requests[0].body.deliver(sink)
    clock.advance(29)
    assert sink.failed is None
    clock.advance(2)
    assert sink.failed.status == 408
    assert only_response(t).status == 408 and t.disconnecting


def _open_on(factory: HTTPServerFactory) -> tuple[HTTPServerProtocol, StringTransport]:
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def _gone(proto: HTTPServerProtocol, transport: StringTransport) -> None:
    transport.loseConnection()
    proto.connectionLost(Failure(ConnectionDone()))


def test_each_silent_connection_times_out_at_its_own_deadline():
    """New connections share one timed call for their first look, yet each
    silent one closes at its own header_timeout, whatever closed before it."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(header_timeout=10))
    first = _open_on(factory)
    clock.advance(3)
    second = _open_on(factory)
    clock.advance(3)
    third = _open_on(factory)
    _gone(*first)
    clock.advance(6.5)  # 9.5 s after the second opened
    assert not second[1].disconnecting
    clock.advance(0.5)
    assert second[1].disconnecting and not third[1].disconnecting
    clock.advance(2.5)
    assert not third[1].disconnecting
    clock.advance(0.5)
    assert third[1].disconnecting and third[1].value() == b""


def test_a_shorter_header_timeout_after_a_reload_is_not_late():
    """A connection accepted after a reload that shortened header_timeout
    times out at its own deadline, before one accepted earlier."""
    clock = MemoryReactorClock()
    h = Recorder()
    factory = HTTPServerFactory(h, clock, limits=ServerLimits(header_timeout=10))
    _, early = _open_on(factory)
    factory.reconfigure(h, limits=ServerLimits(header_timeout=2))
    _, late = _open_on(factory)
    clock.advance(2)
    assert late.disconnecting and not early.disconnecting
    clock.advance(8)
    assert early.disconnecting


def test_a_clock_that_went_back_does_not_make_a_timeout_late():
    """A connection accepted after the clock went back gets its full
    header_timeout, and no more."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(header_timeout=10))
    clock.advance(100)
    _open_on(factory)
    clock.rightNow -= 50
    _, late = _open_on(factory)
    clock.advance(9.9)
    assert not late.disconnecting
    clock.advance(0.1)
    assert late.disconnecting


def test_content_timeout_shorter_than_the_first_look():
    """body_timeout below header_timeout applies to content that stalls right
    after the connection opens."""
    h = Recorder(auto=False)
    proto, t, clock, _ = connect(h, header_timeout=10, body_timeout=2)
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.requests[0].body.deliver(Sink())
    clock.advance(1.9)
    assert not t.disconnecting
    clock.advance(0.1)
    assert only_response(t).status == 408 and t.disconnecting


def test_connections_that_closed_are_not_kept_for_their_timeout():
    """Closed connections waiting for their first look do not pile up: the
    factory holds a bounded number of them, however many came and went."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(header_timeout=10))
    _, silent = _open_on(factory)  # holds the head of the queue
    for _ in range(1000):
        proto, t = _open_on(factory)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        _gone(proto, t)
    assert len(factory._new) < 200
    clock.advance(10)
    assert silent.disconnecting
    assert len(factory._new) == 0


def test_a_stopped_listener_leaves_no_timer_once_its_connections_are_gone():
    """When the last listener using the factory stops, the timed call of the
    queue of new connections goes with it if they have all closed."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock)
    factory.doStart()
    _gone(*_open_on(factory))
    factory.doStop()
    assert clock.getDelayedCalls() == []


def test_a_stopped_listener_keeps_the_timeout_of_a_connection_still_open():
    """A connection still waiting for its first request when its listener
    stops is still closed at header_timeout."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(header_timeout=10))
    factory.doStart()
    _, silent = _open_on(factory)
    factory.doStop()
    clock.advance(10)
    assert silent.disconnecting


def test_a_failing_watchdog_does_not_stop_the_others():
    """An error in one connection's first look is logged; the next connection
    due is still looked at."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(header_timeout=10))
    broken, _ = _open_on(factory)
    _, other = _open_on(factory)

    def fail() -> None:
        raise RuntimeError("watchdog")

    broken._on_timer = fail
    clock.advance(10)
    assert other.disconnecting


# --- Pure helpers ---


@pytest.mark.parametrize(
    "host",
    [b"", b"a", b"example.com:80", b"127.0.0.1", b"[::1]:8080", b"[v1.x]", b"a%41b", b"xn--e1a.example"],
)
def test_valid_hosts(host):
    """uri-host [":" port] forms are accepted (RFC 9110 7.2)."""
    assert valid_host(host)


@pytest.mark.parametrize("host", [b"a b", b"a/b", b"[::1", b"a:1:2", b"a:x", b"u@a", b"%zz", b"[1::2::3]"])
def test_invalid_hosts(host):
    """Anything else is refused."""
    assert not valid_host(host)


@pytest.mark.parametrize(
    ("version", "fields", "persistent"),
    [
        (b"1.1", None, True),
        (b"1.1", [b"close"], False),
        (b"1.1", [b"Close"], False),
        (b"1.1", [b"keep-alive, CLOSE"], False),
        (b"1.1", [b"upgrade", b"close"], False),
        (b"1.1", [b"closed"], True),
        (b"1.1", [b'"close"'], True),
        (b"1.0", None, False),
        (b"1.0", [b"Keep-Alive"], True),
        (b"1.0", [b"keep-alive", b"close"], False),
        (b"1.0", [b"keep-alive-ish"], False),
    ],
)
def test_persistence_from_connection_fields(version, fields, persistent):
    """RFC 9112 section 9.3: close (any case, alone or in a list, on any
    line) ends an HTTP/1.1 connection; HTTP/1.0 persists with keep-alive only."""
    assert _persistent(version, fields) is persistent


def test_split_target_forms():
    """Origin, absolute and asterisk forms split into path, query and authority."""
    assert split_target(b"GET", b"/p?q") == (b"/p", b"q", None)
    assert split_target(b"GET", b"https://A.b/p") == (b"/p", None, b"a.b")
    assert split_target(b"GET", b"http://a?x") == (b"/", b"x", b"a")
    assert split_target(b"OPTIONS", b"http://a") == (b"*", None, b"a")
    with pytest.raises(ValueError):
        split_target(b"GET", b"*")


# --- Fuzz: byte soup and mutated requests ---

ERROR_STATUSES = {400, 408, 413, 414, 417, 431, 500, 501, 505}


def _check_invariants(proto, t, clock, h, raw):
    """No exception escaped; output is well-formed; errors close; any request seen is valid."""
    out = t.value()
    found = responses(out)
    for request in h.requests:
        assert valid_host(request.headers.get(b"host") or b"")
        split_target(request.method, request.target)
        assert request.version in (b"1.0", b"1.1")
    for r in found:
        if r.status in ERROR_STATUSES:
            assert t.disconnecting
    if not h.calls:
        # Nothing was accepted: either an error is out and we close, or we
        # wait for more and time out.
        if found:
            assert found[-1].status in ERROR_STATUSES and t.disconnecting
        else:
            clock.advance(11)
            assert t.disconnecting


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_byte_soup(raw):
    """Random bytes never raise, never reach the handler, and are answered 4xx/5xx or closed."""
    proto, t, clock, h = connect()
    proto.dataReceived(raw)
    assert not h.calls
    _check_invariants(proto, t, clock, h, raw)


VALID = (
    b"POST /p?q HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\nhi"
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.sampled_from([0, 1, 2]), st.binary(max_size=3)),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_requests(edits):
    """Mutated valid requests: no exception, no invalid request reaches the handler, at most two requests."""
    raw = bytearray(VALID)
    for pos, kind, blob in edits:
        pos = min(pos, len(raw))
        if kind == 0:
            raw[pos:pos] = blob
        elif kind == 1:
            del raw[pos : pos + 1 + len(blob)]
        else:
            raw[pos : pos + len(blob)] = blob
    proto, t, clock, h = connect(Recorder(read_body=True))
    proto.dataReceived(bytes(raw))
    assert len(h.calls) <= 2
    _check_invariants(proto, t, clock, h, raw)


# --- Connections per client ---


def open_from(factory: HTTPServerFactory, host: str = "10.0.0.1", port: int = 40000):
    """A connection from ``host`` on a StringTransport: ``(protocol, transport)``."""
    from twisted.internet.address import IPv4Address

    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    return proto, transport


def limited(limit: int | None = 2):
    h = Recorder()
    factory = HTTPServerFactory(
        h, MemoryReactorClock(), limits=ServerLimits(max_connections_per_client=limit)
    )
    return factory, h


def test_connections_within_limit_are_served():
    """Up to max_connections_per_client connections from one address are served."""
    factory, _h = limited(2)
    conns = [open_from(factory, port=p) for p in (1, 2)]
    for proto, _ in conns:
        proto.dataReceived(GET)
    assert [only_response(t).status for _, t in conns] == [200, 200]
    assert factory.connections_from("10.0.0.1") == 2


def test_connection_over_limit_gets_503_and_close():
    """Past the limit, the first request is answered 503 with Connection: close,
    never handed to the handler, and the connection is closed (as nginx's limit_conn)."""
    factory, h = limited(2)
    for p in (1, 2):
        open_from(factory, port=p)
    proto, t = open_from(factory, port=3)
    proto.dataReceived(GET)
    r = only_response(t)
    assert (r.status, r.get(b"connection")) == (503, b"close")
    assert t.disconnecting and h.calls == []


def test_closing_a_connection_frees_its_slot():
    """A closed connection no longer counts against its client."""
    factory, _h = limited(1)
    first, _ = open_from(factory, port=1)
    first.connectionLost(Failure(Exception("gone")))
    assert factory.connections_from("10.0.0.1") == 0
    proto, t = open_from(factory, port=2)
    proto.dataReceived(GET)
    assert only_response(t).status == 200


def test_over_limit_connection_does_not_hold_a_slot_after_close():
    """Refused connections are counted while open and released when closed."""
    factory, _ = limited(1)
    open_from(factory, port=1)
    refused, _ = open_from(factory, port=2)
    assert factory.connections_from("10.0.0.1") == 2
    refused.connectionLost(Failure(Exception("gone")))
    assert factory.connections_from("10.0.0.1") == 1


def test_clients_are_counted_separately():
    """The limit is per client address."""
    factory, _ = limited(1)
    open_from(factory, host="10.0.0.1")
    proto, t = open_from(factory, host="10.0.0.2")
    proto.dataReceived(GET)
    assert only_response(t).status == 200


def test_unix_clients_are_not_limited():
    """UNIX-socket clients share no address, so they are not counted."""
    from twisted.internet.address import UNIXAddress

    factory, _ = limited(1)
    for _ in range(3):
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=UNIXAddress(b"/tmp/s"))
        proto.makeConnection(transport)
        proto.dataReceived(GET)
        assert only_response(transport).status == 200
    assert factory.connections_from("unix") == 0


def test_no_connection_limit():
    """max_connections_per_client=None serves any number of connections."""
    factory, _ = limited(None)
    conns = [open_from(factory, port=p) for p in range(300)]
    proto, t = conns[-1]
    proto.dataReceived(GET)
    assert only_response(t).status == 200


def test_default_connection_limit_is_1024():
    """The default follows the documented value."""
    assert ServerLimits().max_connections_per_client == 1024


# --- A real socket ---


def _serve_one_client(factory, client) -> None:
    """Run ``client(port)`` in a thread against ``factory`` on a real loopback port."""
    import threading

    from twisted.internet import reactor

    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    thread = threading.Thread(target=client, args=(port.getHost().port,))
    thread.start()
    for _ in range(1000):
        if not thread.is_alive():
            break
        reactor.iterate(0.01)
    thread.join(5)
    port.stopListening()
    for _ in range(3):
        reactor.iterate(0)


def _send_and_read(factory, raw: bytes) -> bytes:
    """Send ``raw`` to ``factory`` on a real loopback connection; what comes back until the close."""
    result: list[bytes] = []

    def client(number: int) -> None:
        with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            result.append(data)

    _serve_one_client(factory, client)
    return result[0]


def test_real_socket_pipelined():
    """Over loopback, three pipelined requests come back in order on one connection."""
    from twisted.internet import reactor

    class Echo:
        def handle(self, request, responder):
            answer(responder, request.path)

    raw = _send_and_read(
        HTTPServerFactory(Echo(), reactor),
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert [r.body for r in responses(raw)] == [b"/one", b"/two", b"/three"]


def test_real_socket_sends_without_delay():
    """Client TCP connections have Nagle's algorithm off, so a head and relayed content
    written apart never wait for the client's delayed ACK."""
    from twisted.internet import reactor

    options: list[int] = []

    class Probe:
        def handle(self, request, responder):
            handle = responder._proto.transport.getHandle()
            options.append(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            answer(responder, b"ok")

    def client(number: int) -> None:
        with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass

    _serve_one_client(HTTPServerFactory(Probe(), reactor), client)
    assert options and options[0] != 0


@pytest.mark.parametrize("limit", [16 * 1024, None])
def test_real_socket_notsent_lowat(limit: int | None, tmp_path) -> None:
    """A body sent from a file sets the client socket's TCP_NOTSENT_LOWAT to
    ServerLimits.notsent_lowat (None: the kernel's); a body from memory leaves it."""
    from twisted.internet import reactor

    from accel.streams import FileSender

    stored = tmp_path / "body"
    stored.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: sent with sendfile
    options: list[int] = []

    def lowat(responder) -> int:
        handle = responder._proto.transport.getHandle()
        return handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)

    class Probe:
        def handle(self, request, responder):
            options.append(lowat(responder))
            if request.path == b"/memory":
                answer(responder, b"ok")
            else:
                length = stored.stat().st_size
                responder.start(200, b"OK", Headers([(b"content-length", b"%d" % length)]))
                FileSender(stored.open("rb"), responder, length).start()
                options.append(lowat(responder))

    with socket.socket() as fresh:
        kernel = fresh.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    raw = _send_and_read(
        HTTPServerFactory(Probe(), reactor, limits=ServerLimits(notsent_lowat=limit)),
        b"GET /memory HTTP/1.1\r\nHost: a\r\n\r\nGET /file HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    assert options == [kernel, kernel, kernel if limit is None else limit]
    assert [r.body for r in responses(raw)] == [b"ok", stored.read_bytes()]


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_a_client_that_does_not_read_is_not_answered_without_bound(fast: bool, tls: bool, tmp_path) -> None:
    """A client pipelines many requests for 64 KiB answers and reads nothing:
    the server holds at most about ServerLimits.max_unsent unsent and stops
    reading; once the client reads, every answer arrives, in order. Over TLS
    alike, where the unsent records wait below the TLS layer."""
    import ssl
    import threading

    from twisted.internet import reactor

    body = bytes(range(256)) * 256  # 64 KiB
    count = 120  # 7.5 MiB of answers

    class Big:
        def handle(self, request, responder):
            answer(responder, body)

    def big_fast(factory, method, authority, path, query, pairs, connection):
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n" % (len(body), connection), 200, len(body), {}, body

    protocols: list[HTTPServerProtocol] = []

    class Factory(HTTPServerFactory):
        def buildProtocol(self, addr):
            protocols.append(super().buildProtocol(addr))
            return protocols[-1]

    limits = ServerLimits(max_unsent=256 * 1024, notsent_lowat=None)
    factory = Factory(Big(), reactor, limits=limits, fast_path=big_fast if fast else None)
    if tls:
        from twisted.internet.ssl import PrivateCertificate

        from tests.test_upstream import _self_signed

        pem, _ = _self_signed(str(tmp_path))
        port = reactor.listenSSL(0, factory, PrivateCertificate.loadPEM(pem).options(), interface="127.0.0.1")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    sent, go_on, received = threading.Event(), threading.Event(), []
    heads = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n" * (count - 1) + b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"

    def client() -> None:
        with socket.socket() as raw:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            raw.connect(("127.0.0.1", port.getHost().port))
            s = context.wrap_socket(raw) if tls else raw
            s.sendall(heads)
            sent.set()
            go_on.wait(10)
            data = b""
            while chunk := s.recv(1 << 20):
                data += chunk
            received.append(data)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for _ in range(5000):  # the TLS handshake needs the reactor
            if sent.is_set():
                break
            reactor.iterate(0.002)
        assert sent.is_set()
        for _ in range(200):  # let the server answer what it will
            reactor.iterate(0.002)
        (proto,) = protocols
        unsent = directwrite.queued(proto.transport.transport if tls else proto.transport)
        assert unsent <= limits.max_unsent + len(body) + 1024, unsent
        assert proto._draining and proto._reading_paused
    finally:
        go_on.set()
        for _ in range(3000):
            if not thread.is_alive():
                break
            reactor.iterate(0.002)
        thread.join(5)
        port.stopListening()
        for _ in range(3):
            reactor.iterate(0)
    answers = responses(received[0])
    assert len(answers) == count and all(a.body == body for a in answers)


def test_notsent_lowat_default() -> None:
    """By default the kernel holds at most 64 KiB unsent per client connection."""
    assert ServerLimits().notsent_lowat == 64 * 1024


def test_real_socket_large_chunks_arrive_whole():
    """Over loopback, chunks large enough to go out as separate buffers arrive framed and whole."""
    from twisted.internet import reactor

    chunk = bytes(range(256)) * 1024  # 256 KiB: more than one send() takes at first

    class Chunks:
        def handle(self, request, responder):
            responder.start(200, b"OK", Headers())
            for _ in range(4):
                responder.write(chunk)
            responder.finish()

    raw = _send_and_read(HTTPServerFactory(Chunks(), reactor), b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    (response,) = responses(raw)
    assert response.body == chunk * 4


def test_protocol_class_exported():
    """The factory builds HTTPServerProtocol instances."""
    proto, _, _, _ = connect()
    assert isinstance(proto, HTTPServerProtocol)


# --- Simple heads: read without llhttp, exactly as llhttp reads them ---


@define
class FastSpy:
    """A fast path that answers targets under ``/hit`` and records every offer."""

    offers: list[tuple] = field(factory=list)

    def __call__(self, factory, method, authority, path, query, pairs, connection):
        self.offers.append((method, authority, path, query, list(pairs), connection))
        if not path.startswith(b"/hit"):
            return None
        body = b"" if method == b"HEAD" else b"hit"
        head = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n%s\r\n" % connection
        return head + body, 200, len(body), {"cache": "HIT"}, None


def fast_connect(handler=None, **limits):
    """As :func:`connect`, with a :class:`FastSpy` as the fast path: ``(proto, transport, spy, handler)``."""
    handler = handler if handler is not None else Recorder()
    spy = FastSpy()
    factory = HTTPServerFactory(handler, MemoryReactorClock(), limits=ServerLimits(**limits), fast_path=spy)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, spy, handler


def run_head(head: bytes, simple: bool, **limits):
    """Feed ``head`` in one read, with or without the simple-head reading (without, llhttp
    reads every head); what the server did, for comparison."""
    proto, t, spy, h = fast_connect(**limits)
    if not simple:
        proto._answer_simple = lambda data: False
    proto.dataReceived(head)
    seen = [
        (r.method, r.target, r.path, r.query, r.version, r.headers.pairs, r.authority)
        for r in h.requests
    ]
    return t.value(), t.disconnecting, spy.offers, seen


_FIELD_NAMES = st.sampled_from(
    [b"Host", b"host", b"HOST", b"Connection", b"Content-Length", b"Transfer-Encoding",
     b"Expect", b"Upgrade", b"Accept", b"X-Forwarded-For", b"x_under", b"Bad Name", b"", b"If-None-Match"]
)  # fmt: skip
_FIELD_VALUES = st.one_of(
    st.sampled_from(
        [b"example.com", b"EXAMPLE.com:8080", b"[::1]:80", b"a b", b"close", b"keep-alive",
         b"Close, foo", b"0", b"5", b"chunked", b"100-continue", b"h2c", b" padded \t", b"", b"*",
         b'"etag"', b"a\x00b", b"\x80\xff", b"a\rb", b"x\x7fy", b"bad host", b"h:99999"]
    ),
    st.binary(max_size=12),
)  # fmt: skip
_TARGETS = st.one_of(
    st.sampled_from(
        [b"/hit", b"/hit?x=1", b"/hit?", b"/miss", b"/hit/%41", b"/hit/%zz", b"/hit#frag", b"*",
         b"http://example.com/hit", b"/hit|^[]", b"/hit?{}`\\", b"/hi t", b"/\x80", b"//hit", b"/hit?a?b"]
    ),
    st.binary(max_size=10).map(lambda b: b"/hit" + b),
)  # fmt: skip


@st.composite
def heads(draw):
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b"OPTIONS", b"GET "]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"]))
    fields = draw(st.lists(st.tuples(_FIELD_NAMES, _FIELD_VALUES, st.sampled_from([b":", b": ", b":\t", b" :"])),
                           max_size=5))  # fmt: skip
    if draw(st.booleans()):
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b"example.com", b": "))
    lines = [b"%s %s %s" % (method, draw(_TARGETS), version)]
    lines += [name + sep + value for name, value, sep in fields]
    return b"\r\n".join(lines) + draw(st.sampled_from([b"\r\n\r\n", b"\r\n\r\n\r\n\r\n", b"\n\r\n\r\n"]))


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~",
                 min_size=1, max_size=12).map(str.encode)  # fmt: skip
_PRINTABLE = st.text("".join(map(chr, range(0x20, 0x7F))) + "\t", max_size=24).map(str.encode)
_PATHS = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%[]|^", max_size=20)
_QUERIES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%?`{}\\", max_size=12)


@st.composite
def simple_heads(draw):
    """Heads of the kind the simple reading takes, sometimes with one byte changed."""
    target = b"/hit" if draw(st.booleans()) else b"/miss"
    target += draw(_PATHS).encode()
    if draw(st.booleans()):
        target += b"?" + draw(_QUERIES).encode()
    method = draw(st.sampled_from([b"GET", b"HEAD"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]))
    fields = draw(st.lists(st.tuples(_TOKEN, _PRINTABLE), max_size=4))
    host = draw(st.sampled_from([b"a", b"Example.COM:8080", b"[::1]", b"b_c", b"x:99999", b"a b", b""]))
    fields.insert(draw(st.integers(0, len(fields))), (b"Host", host))
    if draw(st.booleans()):
        fields.append((b"Connection", draw(st.sampled_from([b"close", b"keep-alive", b"Keep-Alive, x", b"x"]))))
    lines = [b"%s %s %s" % (method, target, version)]
    lines += [name + b":" + draw(st.sampled_from([b"", b" ", b"\t "])) + value for name, value in fields]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(head) - 1))
        head = head[:at] + bytes([draw(st.integers(0, 255))]) + head[at + 1 :]
    return head


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(heads(), simple_heads()))
def test_simple_head_is_read_as_llhttp_reads_it(head):
    """Read as a simple head or by llhttp, a head gets the same offers, requests, bytes and close."""
    assert run_head(head, simple=True) == run_head(head, simple=False)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(heads(), simple_heads()), st.integers(1, 3), st.integers(40, 200))
def test_simple_heads_respect_the_limits(head, max_headers, max_header_bytes):
    """Over a count or size limit, a head is answered as llhttp's reading answers it."""
    limits = {"max_headers": max_headers, "max_header_bytes": max_header_bytes, "max_target": 8}
    assert run_head(head, simple=True, **limits) == run_head(head, simple=False, **limits)


_UNKNOWN_METHOD = re.compile(
    rb"HTTP/1.1 (400 Bad Request|501 Not Implemented)\r\n(.*?\r\n\r\n)"
    rb"(400 Bad Request: invalid request line|501 Not Implemented: method not implemented)\n$",
    re.DOTALL,
)


def run_pipelined(data: bytes, pipelined: bool, auto: bool):
    """Feed pipelined heads in one read, with or without taking them in turn
    (without, llhttp reads them all); what the server did, for comparison.

    One difference is allowed: a later head whose method llhttp refuses is a
    501 (a token) or a 400 (garbage) by the bytes it starts with, and llhttp
    reading the whole read can only look at the first head's. Both close
    with an error; the answer is normalised to ``4xx/5xx method``.
    """
    proto, t, spy, h = fast_connect(Recorder(auto=auto))
    if not pipelined:
        proto._answer_pipelined = lambda data: data
    proto.dataReceived(data)
    seen = [(r.method, r.target, r.headers.pairs, r.authority) for r in h.requests]
    written = _UNKNOWN_METHOD.sub(b"<refused method>", t.value())
    return written, t.disconnecting, spy.offers, seen


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(simple_heads(), min_size=2, max_size=5),
        st.lists(st.one_of(simple_heads(), heads()), min_size=2, max_size=5),
    ),
    st.booleans(),
)
def test_pipelined_heads_are_read_as_llhttp_reads_them(heads_, auto):
    """Several heads in one read, taken in turn or all by llhttp: the same offers,
    requests, bytes (in order) and close, whether the handler answers at once or not."""
    data = b"".join(heads_)
    assert run_pipelined(data, True, auto) == run_pipelined(data, False, auto)


class _CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, seq) -> None:
        self.writes += 1
        super().write(b"".join(seq))


def test_pipelined_fast_answers_leave_in_one_write():
    """Pipelined simple heads the fast path answers are sent together, in order."""
    spy = FastSpy()
    factory = HTTPServerFactory(Recorder(), MemoryReactorClock(), fast_path=spy)
    proto = factory.buildProtocol(None)
    t = _CountingTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"".join(b"GET /hit%d HTTP/1.1\r\nHost: a\r\n\r\n" % n for n in range(5)))
    assert [o[2] for o in spy.offers] == [b"/hit%d" % n for n in range(5)]
    assert [r.body for r in responses(t.value())] == [b"hit"] * 5
    assert t.writes == 1 and not t.disconnecting


def test_pipelined_heads_after_a_declined_one_queue_behind_it():
    """A head the fast path declines goes to the handler; the heads after it wait
    their turn (not offered to the fast path), and answers keep the request order."""
    proto, t, spy, h = fast_connect(Recorder(auto=False))
    proto.dataReceived(
        b"GET /hit1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /miss HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /hit2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [o[2] for o in spy.offers] == [b"/hit1", b"/miss"]
    assert [r.path for r in h.requests] == [b"/miss"]
    assert [r.body for r in responses(t.value())] == [b"hit"]
    answer(h.calls[0][1], b"ok")
    assert [r.path for r in h.requests] == [b"/miss", b"/hit2"]
    answer(h.calls[1][1], b"two")
    assert [r.body for r in responses(t.value())] == [b"hit", b"ok", b"two"]


def test_pipelined_close_ends_the_answers():
    """Connection: close in the middle: the answers up to it go out, then the connection closes."""
    proto, t, spy, _h = fast_connect()
    proto.dataReceived(
        b"GET /hit1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /hit2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        b"GET /hit3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert [r.body for r in responses(t.value())] == [b"hit", b"hit"]
    assert [o[2] for o in spy.offers] == [b"/hit1", b"/hit2"]
    assert t.disconnecting


def test_simple_head_answered_by_the_fast_path():
    """A whole simple GET reaches the fast path with its parts; the connection stays open for the next."""
    proto, t, spy, h = fast_connect()
    head = b"GET /hit?q=1 HTTP/1.1\r\nHost: Example.COM\r\nAccept:  */* \r\n\r\n"
    proto.dataReceived(head)
    proto.dataReceived(head)
    assert spy.offers == [
        (b"GET", b"example.com", b"/hit", b"q=1", [(b"host", b"Example.COM"), (b"accept", b"*/*")], b"")
    ] * 2
    assert [r.body for r in responses(t.value())] == [b"hit", b"hit"]
    assert h.requests == [] and not t.disconnecting


def test_simple_head_declined_goes_to_the_handler():
    """A head the fast path declines is handled as any request, the connection kept or not as asked."""
    proto, t, spy, h = fast_connect()
    proto.dataReceived(b"GET /miss HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert len(spy.offers) == 1
    assert [(r.path, r.headers.pairs) for r in h.requests] == [
        (b"/miss", [(b"host", b"a"), (b"connection", b"close")])
    ]
    assert only_response(t).get(b"connection") == b"close"
    assert t.disconnecting


def test_pipelined_heads_are_not_simple():
    """Two heads in one read go through llhttp, both answered in order."""
    proto, t, spy, _ = fast_connect()
    proto.dataReceived(b"GET /hit HTTP/1.1\r\nHost: a\r\n\r\nGET /miss HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [o[2] for o in spy.offers] == [b"/hit", b"/miss"]
    assert [r.body for r in responses(t.value())] == [b"hit", b"ok"]


def test_simple_head_skips_llhttp():
    """A whole simple head never reaches llhttp, whether the fast path answers it or the
    handler does."""

    fed: list[bytes] = []

    class NoParser:
        def feed_data(self, data):
            fed.append(data)
            raise AssertionError("llhttp was asked to read a simple head")

    proto, t, spy, h = fast_connect()
    proto._parser = NoParser()
    proto.dataReceived(b"HEAD /hit HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert spy.offers[0][5] == b"connection: keep-alive\r\n"
    proto.dataReceived(b"GET /miss?q HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n")
    assert [(r.path, r.query, r.headers.pairs) for r in h.requests] == [
        (b"/miss", b"q", [(b"host", b"a"), (b"accept", b"*/*")])
    ]
    assert t.value().endswith(b"\r\n\r\nok")
    assert fed == []


@pytest.mark.parametrize(
    "held, rest, statuses, closed",
    [
        (b"P", b"GET /hit HTTP/1.1\r\nHost: a\r\n\r\n", [200, 501], True),
        (b"HE", b"GET /hit HTTP/1.1\r\nHost: a\r\n\r\n", [200, 501], True),
        (b"G", b"ET /hit HTTP/1.1\r\nHost: a\r\n\r\n", [200, 200], False),
        (b"\r\n", b"GET /hit HTTP/1.1\r\nHost: a\r\n\r\n", [200, 200], False),
    ],
)
def test_a_head_begun_in_an_earlier_read_is_read_on_by_llhttp(held, rest, statuses, closed):
    """Bytes of a next head that llhttp holds at the end of a read (a method
    cut short, before any callback) make the next read part of that head:
    it is never taken as a simple head of its own, which would answer
    ``PGET /hit`` as ``GET /hit`` and leave the ``P`` to start the request
    after it (a desync between accel's reading and any other parser's).
    Empty lines between requests hold nothing."""
    proto, t, _, _ = fast_connect()
    proto.dataReceived(b"GET /hit HTTP/1.1\r\nHost: a\r\n\r\n" + held)
    proto.dataReceived(rest)
    assert [r.status for r in responses(t.value())] == statuses
    assert t.disconnecting == closed


def test_error_answer_survives_unread_content():
    """A rejected request whose content is still arriving gets its answer, not a reset:
    the server half-closes and reads what the client still sends (lingering close)."""
    import select

    from twisted.internet import reactor

    got: list[bytes | Exception] = []
    part = b"x" * 65536

    def client(number: int) -> None:
        with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n" + part)
            select.select([s], [], [], 5)  # the answer is on its way
            data = b""
            try:
                for _ in range(4):
                    s.sendall(part)  # still uploading, as a client that sent no Expect does
                while chunk := s.recv(65536):
                    data += chunk
                got.append(data)
            except OSError as e:
                got.append(e)

    factory = HTTPServerFactory(Recorder(), reactor, limits=ServerLimits(max_body=1000))
    _serve_one_client(factory, client)
    assert isinstance(got[0], bytes), got
    assert only_response_bytes(got[0]).status == 413


def only_response_bytes(raw: bytes) -> Response:
    found = responses(raw)
    assert len(found) == 1, raw
    return found[0]


class FullSocket:
    """A socket that takes nothing: every write falls back to the transport."""

    def send(self, data):
        raise BlockingIOError

    def sendmsg(self, parts):
        raise BlockingIOError


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-closes, as a plain TCP connection allows."""

    dataBuffer = b""
    _tempDataLen = 0
    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


def lingering(**limits):
    """A protocol whose transport can half-close; rejected with 413 mid-upload."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock, limits=ServerLimits(max_body=10, **limits))
    proto = factory.buildProtocol(None)
    transport = HalfCloseTransport()
    proto.makeConnection(transport)
    proto._socket = FullSocket()  # as connectionMade sets it for tcp.Server / unix.Server
    proto.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nxxxx")
    return proto, transport, clock


def test_lingering_close_half_closes_and_drops_what_arrives():
    """After the error answer the write side is shut, reading goes on, and nothing read
    is acted on."""
    proto, t, _ = lingering()
    assert only_response(t).status == 413
    assert t.write_closed and not t.disconnecting
    before = t.value()
    proto.dataReceived(b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n" * 10)
    assert t.value() == before
    assert t.producerState != "paused"


def test_lingering_close_ends_after_silence():
    """linger_timeout seconds without a byte from the client end the connection."""
    proto, t, clock = lingering(linger_timeout=5, linger_time=30)
    clock.advance(4)
    proto.dataReceived(b"y" * 1000)
    clock.advance(4)
    assert not t.disconnecting  # the bytes restarted the silence
    clock.advance(1)
    assert t.disconnecting and not t.aborted


def test_lingering_close_is_bounded_in_all():
    """A client that keeps sending is cut off after linger_time seconds in all."""
    proto, t, clock = lingering(linger_timeout=5, linger_time=12)
    for _ in range(11):
        clock.advance(1)
        proto.dataReceived(b"y" * 1000)
    assert not t.disconnecting
    clock.advance(1)
    assert t.disconnecting


def test_lingering_close_aborts_when_the_answer_is_not_read():
    """If the answer itself is still unsent at the end, the connection is aborted."""
    _, t, clock = lingering(linger_timeout=5)
    t.dataBuffer = b"unsent"
    clock.advance(5)
    assert t.aborted


def test_no_lingering_when_disabled():
    """linger_time 0 closes at once, as before."""
    _, t, _ = lingering(linger_time=0)
    assert t.disconnecting and not t.write_closed


def test_http2_preface_gets_505():
    """The HTTP/2 connection preface (prior knowledge, RFC 9113 section 3.4) is answered
    505 and the connection closed: this server speaks HTTP/1.1."""
    proto, t, _, h = connect()
    proto.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert only_response(t).status == 505
    assert t.disconnecting and h.requests == []


# --- Writes held back during an origin's delivery (directwrite.batched) ---


class CountingTransport(StringTransport):
    """Records each write and close as an event, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[object] = []

    def write(self, data: bytes) -> None:
        self.events.append(("write", bytes(data)))
        super().write(data)

    def writeSequence(self, seq) -> None:
        self.events.append(("write", b"".join(seq)))
        super().write(b"".join(seq))

    def loseConnection(self) -> None:
        self.events.append("close")
        super().loseConnection()


def held_connect():
    handler = Recorder(auto=False)
    factory = HTTPServerFactory(handler, MemoryReactorClock())
    proto = factory.buildProtocol(None)
    transport = CountingTransport()
    proto.makeConnection(transport)
    return proto, transport, handler


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_a_response_written_during_a_delivery_leaves_in_one_write(chunked: bool):
    """Head, body and end written while an origin's bytes are delivered go out
    together when the delivery returns, in one write."""
    proto, t, h = held_connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ((_, responder),) = h.calls
    headers = Headers() if chunked else Headers([(b"content-length", b"5")])

    def deliver(data: bytes) -> None:
        responder.start(200, b"OK", headers)
        responder.write(data)
        responder.finish()
        assert t.events == []  # held until the delivery returns

    directwrite.batched(deliver, b"hello")
    assert len(t.events) == 1
    (response,) = responses(t.value())
    assert response.body == b"hello"


def test_outside_a_delivery_the_head_leaves_at_once():
    """Without a batch nothing is held: the head is written when started."""
    proto, t, h = held_connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ((_, responder),) = h.calls
    responder.start(200, b"OK", Headers([(b"content-length", b"5")]))
    assert len(t.events) == 1
    responder.write(b"hello")
    assert len(t.events) == 2


def test_a_close_during_a_delivery_sends_what_is_held_first():
    """A response that ends the connection inside a batch: its bytes are
    written before the close, not after it."""
    proto, t, h = held_connect()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    ((_, responder),) = h.calls

    def deliver(data: bytes) -> None:
        responder.start(200, b"OK", Headers([(b"content-length", b"5")]))
        responder.write(data)
        responder.finish()

    directwrite.batched(deliver, b"hello")
    assert [e if e == "close" else e[0] for e in t.events] == ["write", "close"]
    (response,) = responses(t.value())
    assert response.body == b"hello"


def test_a_pipelined_answer_during_a_delivery_keeps_its_order():
    """When a held response ends and the next pipelined request is answered in
    the same delivery, both leave in order."""
    proto, t, h = held_connect()
    proto.dataReceived(
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    ((_, first),) = h.calls

    def deliver(data: bytes) -> None:
        first.start(200, b"OK", Headers([(b"content-length", b"1")]))
        first.write(b"1")
        first.finish()
        (_, second) = h.calls[1]
        second.start(200, b"OK", Headers([(b"content-length", b"1")]))
        second.write(b"2")
        second.finish()

    directwrite.batched(deliver, b"")
    assert [r.body for r in responses(t.value())] == [b"1", b"2"]
    assert len(t.events) == 1


def test_a_response_the_handler_writes_at_once_leaves_in_one_write():
    """A handler that answers before it returns (head, then body from memory)
    has its response sent in one write when it returns."""
    factory = HTTPServerFactory(Recorder(), MemoryReactorClock())
    proto = factory.buildProtocol(None)
    t = CountingTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert len(t.events) == 1
    (response,) = responses(t.value())
    assert response.body == b"ok"


def test_protocol_state_lives_in_its_slots():
    """Everything HTTPServerProtocol.__init__ sets, but the factory Twisted's
    Protocol keeps, is one of its __slots__ (a new attribute was left out)."""
    factory = HTTPServerFactory(Recorder(), MemoryReactorClock())
    assert set(vars(factory.buildProtocol(None))) == {"factory"}

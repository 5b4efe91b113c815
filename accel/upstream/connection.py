"""HTTP/1.1 to an origin: a connection, one exchange at a time, bodies streamed.

The response side runs on ``httptools.HttpResponseParser`` (llhttp), the
parser the server side uses, with a fresh parser per exchange. That is how
this module works around the one thing httptools cannot be told: that a
response has no body because the request was HEAD (llhttp wants
``on_headers_complete`` to return 1, httptools only does so on upgrade).
For HEAD the message is complete at the end of the head and the parser is
dropped; any byte that follows makes the connection unusable, so it is
closed instead of pooled. llhttp itself knows that 1xx, 204 and 304 have no
body. Interim 1xx responses are handed to the listener before the final
head (``interim_received``), except ``100 Continue``, which answers an
``Expect`` the proxy does not forward; 101 is an error (no upgrade was
asked for).

Most responses need no parser at all: a final head of the plainest kind
with one ``Content-Length``, arriving in the exchange's first read together
with exactly the body it frames, is read with one regular expression
(:meth:`Exchange._read_whole`); anything else goes to llhttp from its first
byte.

No request pipelining: a connection carries one exchange, so any byte after
a complete response (or while the connection is idle in the pool) is a
protocol violation and retires the connection.

httptools exposes no end-of-input call either, so close-delimited bodies
(RFC 9112 section 6.3, rule 8) are completed here when the connection
closes cleanly (a reset, or TLS without ``close_notify``, fails them: RFC
9112 section 8); a body framed by Content-Length or chunked coding that is
cut short fails its sink instead. Framing llhttp accepts but a proxy cannot
relay is refused here: a transfer coding other than chunked alone (none is
decoded), Transfer-Encoding in HTTP/1.0, a version other than 1.x, a status
above 599.
"""

from __future__ import annotations

import re
import socket
from collections import deque
from collections.abc import Callable
from enum import Enum
from operator import itemgetter
from typing import TYPE_CHECKING, Protocol

from attrs import define
from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from accel import directwrite
from accel.http.headers import Headers, split_list
from accel.http.model import BodySink, BodySource
from accel.upstream.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from accel.upstream.origin import Origin, UpstreamSettings

if TYPE_CHECKING:
    from twisted.internet.interfaces import ITransport

__all__ = [
    "Exchange",
    "OriginConnection",
    "OriginResponse",
    "encode_fields",
    "request_head",
]

#: Methods whose requests carry no content unless a body is given; an empty
#: body for them is sent without ``Content-Length: 0`` (RFC 9110 section 8.6).
_NO_CONTENT_METHODS = frozenset(
    {b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"}
)
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})
#: Methods known to be tokens: no need to match them against :data:`_TOKEN`.
_TOKEN_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE"}
)
_NAME = itemgetter(0)
#: The response fields that frame its body or say whether the connection persists.
_HEAD_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"connection"})


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[^\x00-\x20\x7f]+")
#: A final response head of the plainest kind (:meth:`Exchange._read_whole`):
#: HTTP/1.0 or 1.1, a status from 200 to 599, a reason of printable ASCII
#: and space, field lines of a token, a colon and printable ASCII, space or
#: HTAB only, CRLF line ends. A strict subset of what llhttp accepts.
_SIMPLE_RESPONSE = re.compile(
    rb"HTTP/1\.([01]) ([2-5][0-9][0-9]) ([\x20-\x7e]*+)\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]++:[\t\x20-\x7e]*+\r\n)*+)\r\n"
)
_SIMPLE_VERSIONS = {b"1": b"1.1", b"0": b"1.0"}
#: Content-Length values read without llhttp: digits, far below its overflow.
_MAX_SIMPLE_LENGTH_DIGITS = 15


def encode_fields(method: bytes, target: bytes, headers: Headers) -> tuple[bytes, bool]:
    """The header section minus framing, checked once per request.

    Returns the serialised field lines and whether ``Host`` was among them.
    Any ``Content-Length``/``Transfer-Encoding`` is dropped: the body's
    length decides framing (:func:`request_head`). Raises ``ValueError`` for
    a method that is not a token, a target with whitespace or controls, or a
    CR or LF inside a field, any of which would smuggle a line of its own.
    """
    if (
        method not in _TOKEN_METHODS and _TOKEN.fullmatch(method) is None
    ) or _TARGET.fullmatch(target) is None:
        raise ValueError(
            "expected a token method and a request-target without whitespace, "
            f"got {method!r} {target!r}"
        )
    pairs = headers.pairs
    names = list(map(_NAME, pairs))
    if not _FRAMING_FIELDS.isdisjoint(names):
        pairs = [pair for pair in pairs if pair[0] not in _FRAMING_FIELDS]
    if not pairs:
        return b"", False
    # Joined in C (no line formatted in Python): "name: value" per pair.
    block = b"\r\n".join(map(b": ".join, pairs)) + b"\r\n"
    # One CR and one LF per line, else some field holds a line break: one
    # pass in C over the block instead of two searches per field.
    lines = len(pairs)
    if block.count(b"\n") != lines or block.count(b"\r") != lines:
        name, value = next(
            p for p in headers if b"\r" in p[0] + p[1] or b"\n" in p[0] + p[1]
        )
        raise ValueError(
            f"expected a header field without CR or LF, got {name!r}: {value!r}"
        )
    return block, b"host" in names


def _persists(version: bytes, connection: list[bytes] | None) -> bool:
    """Whether a response's connection may carry another request (RFC 9112
    section 9.3), from its version and ``Connection`` field values."""
    if not connection:
        return version != b"1.0"
    tokens = {token.lower() for token in split_list(connection)}
    return b"close" not in tokens and (version != b"1.0" or b"keep-alive" in tokens)


def request_head(
    method: bytes, target: bytes, fields: bytes, host: bytes | None, length: int | None
) -> bytes:
    """The request line and header section for one origin.

    ``fields`` come from :func:`encode_fields`; ``host``, when given, is sent
    first (RFC 9112 section 3.2). A body of unknown ``length`` is chunked
    (RFC 9112 section 7.1); an empty one gets ``Content-Length: 0`` only for
    methods that define content (RFC 9110 section 8.6).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if host is not None:
        parts += (b"host: ", host, b"\r\n")
    parts.append(fields)
    if length is None:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif length or method not in _NO_CONTENT_METHODS:
        parts += (b"content-length: ", b"%d" % length, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


@define(eq=False)
class OriginResponse:
    """A response head from an origin, with its body still to be streamed.

    Not frozen, as :class:`~accel.http.model.Request` is not: attrs builds a
    frozen instance with a method call per field, a sixtieth of a
    pass-through request's instructions for this one object.

    ``headers`` are as received: names lower-case, wire order, hop-by-hop
    and framing fields still present (the proxy strips them). ``body`` is a
    :class:`~accel.http.model.BodySource` whose ``length`` is the body's
    length (0 for HEAD, 1xx, 204 and 304 whatever Content-Length says).
    Read it or ``discard()`` it: an unread body holds the connection.
    """

    status: int
    reason: bytes
    version: bytes
    headers: Headers
    body: BodySource
    origin: Origin

    def whole_body(self) -> bytes | None:
        """The whole body, taken, if all of it came with the head and none was read.

        Most small answers arrive whole in one read: the caller can then
        write it out at once instead of relaying it with back-pressure.
        The body is done afterwards, as if a sink had read it to its end
        (the connection is already pooled or closed). ``None`` when some of
        it is still to come (or came and went: delivered, discarded), or the
        body is not an origin connection's: deliver it as usual.
        """
        body = self.body
        return body.take_whole() if type(body) is _ResponseBody else None


class ExchangeListener(Protocol):
    """Who started an exchange: told once, head or failure, before any body byte.

    Interim responses (1xx but 100 and 101) come before the head, in order.
    """

    def interim_received(
        self, exchange: Exchange, status: int, reason: bytes, headers: Headers
    ) -> None: ...

    def head_received(self, exchange: Exchange, response: OriginResponse) -> None: ...

    def exchange_failed(self, exchange: Exchange, error: Exception) -> None: ...


class ConnectionHome(Protocol):
    """The per-origin pool a connection returns to."""

    origin: Origin
    clock: IReactorTime
    settings: UpstreamSettings

    def release(self, connection: OriginConnection) -> None:
        """``connection`` finished an exchange and can carry another."""

    def forget(self, connection: OriginConnection) -> None:
        """``connection`` closed, idle or not (after its exchange was told)."""


class _Watchdog:
    """A timeout that is cheap to push back on every read.

    ``arm`` only moves a deadline; the one pending ``DelayedCall`` re-arms
    itself for what is left when it fires early, so a busy connection costs
    a clock read per event rather than a timer per event.
    """

    __slots__ = ("_call", "_callback", "_clock", "_deadline", "_due")

    def __init__(self, clock: IReactorTime, callback: Callable[[], None]) -> None:
        self._clock = clock
        self._callback = callback
        self._deadline: float | None = None
        self._call: IDelayedCall | None = None
        #: When ``_call`` is due (its ``getTime()``, kept: arm runs twice a request).
        self._due = 0.0

    def arm(self, timeout: float) -> None:
        self._deadline = deadline = self._clock.seconds() + timeout
        call = self._call
        if call is None:
            call = self._call = self._clock.callLater(timeout, self._fire)
            self._due = call.getTime()
        elif self._due > deadline:
            call.reset(timeout)
            self._due = call.getTime()

    def disarm(self) -> None:
        self._deadline = None

    def cancel(self) -> None:
        self._deadline = None
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        if self._deadline is None:
            return
        remaining = self._deadline - self._clock.seconds()
        if remaining > 0:
            call = self._call = self._clock.callLater(remaining, self._fire)
            self._due = call.getTime()
            return
        self._deadline = None
        self._callback()


@implementer(IHandshakeListener)
class OriginConnection(TwistedProtocol):
    """One connection to an origin; ``ready`` fires once it can carry a request.

    For TLS that is after the handshake, so a certificate that fails
    verification is a connect error, not a failed request.
    """

    transport: ITransport

    def __init__(self, home: ConnectionHome, tls: bool) -> None:
        self.home = home
        self.ready: Deferred[OriginConnection] = Deferred(self._cancel_ready)
        self.exchange: Exchange | None = None
        self.requests = 0
        self.closed = False
        self.watchdog = _Watchdog(home.clock, self._timed_out)
        self._tls = tls
        self._lost: list[Deferred[None]] = []
        #: The plain TCP or UNIX socket under the transport, for :meth:`write`.
        self._socket: socket.socket | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        if not isinstance(transport.getPeer(), UNIXAddress):
            # A request head and its content go out in separate writes:
            # the content must not wait for the origin's delayed ACK.
            no_delay = getattr(transport, "setTcpNoDelay", None)
            if no_delay is not None:
                no_delay(True)
        self._socket = directwrite.plain_socket(transport)
        if not self._tls:
            self.ready.callback(self)

    def handshakeCompleted(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            # What this delivers to clients leaves when it returns, a relayed
            # head with the body that came with it (directwrite.batched).
            directwrite.batched(exchange.data_received, data)
        else:
            # Bytes nobody asked for (no pipelining here): retire the connection.
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        """Send ``data`` to the origin, in order after everything written before.

        Straight to the socket when nothing is queued, the usual case for a
        request head (see :mod:`accel.directwrite`); over TLS through the
        transport.
        """
        directwrite.write(self.transport, self._socket, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self._socket = None
        self.watchdog.cancel()
        if not self.ready.called:
            name = self.home.origin.name
            what = "TLS handshake failed" if self._tls else "connection lost"
            self.ready.errback(
                UpstreamConnectError(f"{name}: {what}: {reason.getErrorMessage()}")
            )
        exchange = self.exchange
        if exchange is not None:
            exchange.connection_lost(reason)
        # After the exchange heard of it: a retry of the keep-alive race
        # takes over this connection's place under the pool's cap.
        self.home.forget(self)
        waiters, self._lost = self._lost, []
        for waiter in waiters:
            waiter.callback(None)

    def send(self, exchange: Exchange) -> None:
        """Carry ``exchange``; the connection must be ready and idle."""
        self.exchange = exchange
        self.requests += 1
        self.watchdog.disarm()  # the keep-alive deadline no longer applies
        exchange.start()

    def close(self) -> Deferred[None]:
        """Close (gracefully if idle) and fire once the connection is gone."""
        if self.closed:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._lost.append(waiter)
        self.transport.loseConnection()
        return waiter

    def _cancel_ready(self, _: Deferred[OriginConnection]) -> None:
        self.transport.abortConnection()  # type: ignore[attr-defined]

    def _timed_out(self) -> None:
        if self.exchange is not None:
            self.exchange.timed_out()
        else:  # idle in the pool for keepalive_timeout
            self.transport.loseConnection()


class _Framing(Enum):
    """How the response body ends (RFC 9112 section 6.3)."""

    NONE = "none"
    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "close"


class _End:
    """The body's framing was satisfied."""


_END = _End()


class Exchange:
    """One request and its response on one connection.

    Parser callbacks only record; :meth:`_dispatch` runs after each
    ``feed_data`` so no caller code ever runs inside the parser.
    """

    # No __slots__: class-level defaults leave __init__ a third of the
    # stores (one is made per request that reaches an origin).
    #: Bytes received from the origin for this exchange.
    received = 0
    #: The request body's ``deliver`` was called: it cannot be replayed.
    body_started = False
    #: The connection was lost before any response byte.
    lost_early = False
    _reason = b""
    _error: UpstreamProtocolError | None = None
    _interim = False
    _head_done = False
    _reported = False
    _complete = False
    _finished = False
    _trailing = False
    _reading = True
    _sent = False
    _upload: _Upload | None = None
    _framing = _Framing.NONE
    _persistent = False
    _response_body: _ResponseBody | None = None
    _response: OriginResponse | None = None
    _body_received = 0
    #: llhttp's reading of the response, made on the first read that
    #: :meth:`_read_whole` does not take (the usual response needs none).
    _parser: HttpResponseParser | None = None
    #: The response's field lines so far (``on_message_begin`` starts them).
    _pairs: list[tuple[bytes, bytes]]
    #: Interim heads parsed but not yet handed to the listener.
    _interims: deque[tuple[int, bytes, Headers]] | None = None

    def __init__(
        self,
        connection: OriginConnection,
        listener: ExchangeListener,
        method: bytes,
        head: bytes,
        body: BodySource,
    ) -> None:
        self.connection = connection
        self.listener = listener
        self.method = method
        self.reused = connection.requests > 0
        home = connection.home
        self._origin = home.origin
        self._settings = home.settings
        self._head = head
        self._body = body

    # -- driven by the pool and the connection ------------------------------

    def start(self) -> None:
        self.connection.write(self._head)
        length = self._body.length
        if length == 0:
            self._request_sent()
            return
        self._upload = _Upload(self, self._body, length)
        self.body_started = True
        self._upload.start()

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            if not self.received and self._read_whole(data):
                return
            parser = self._parser = HttpResponseParser(self)
        self.received += len(data)
        try:
            parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade) as exc:
            if not self._complete:
                error = self._error or UpstreamProtocolError(
                    f"{self._origin.name}: invalid response: {exc}"
                )
                self._fail(error)
                return
            self._trailing = True
        interims = self._interims
        while interims:
            self.listener.interim_received(self, *interims.popleft())
            if self._finished:
                return  # the listener gave up (its client went away)
        if not self._head_done:
            if self.received > self._settings.max_head_bytes:
                limit = self._settings.max_head_bytes
                self._fail(
                    UpstreamProtocolError(
                        f"{self._origin.name}: response head over {limit} bytes"
                    )
                )
            return
        if self._reading and not self._complete:
            self.connection.watchdog.arm(self._settings.idle_timeout)
        self._dispatch()

    def _read_whole(self, data: bytes) -> bool:
        """Take ``data`` if it is one whole response of the plainest kind; whether it did.

        Most origin answers arrive whole in the first read: a final head
        (:data:`_SIMPLE_RESPONSE`) with one ``Content-Length`` and no
        ``Transfer-Encoding`` or ``Upgrade``, then exactly the body it
        frames (none for HEAD, 204 and 304) and nothing after it. Such a
        response is read here with one regular expression, as llhttp's
        callbacks would record it (field values keep their trailing
        whitespace, as llhttp leaves it), without a parser. Anything else,
        including a response cut short or followed by more bytes, is left
        to llhttp from its first byte: nothing has been consumed then.
        tests/test_upstream.py checks that both readings agree.
        """
        m = _SIMPLE_RESPONSE.match(data)
        if m is None:
            return False
        minor, code, reason, block = m.groups()
        length: int | None = None
        connection: list[bytes] | None = None
        pairs = []
        for line in block.splitlines():
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.lstrip(b" \t")
            if name in _HEAD_FIELDS:
                if (
                    name == b"content-length"
                    and length is None
                    and value.isdigit()
                    and len(value) <= _MAX_SIMPLE_LENGTH_DIGITS
                ):
                    length = int(value)
                elif name == b"connection":
                    if connection is None:
                        connection = [value]
                    else:
                        connection.append(value)
                else:
                    return False  # chunked, a repeated or odd length: llhttp's
            elif name == b"upgrade":
                return False
            pairs.append((name, value))
        if length is None or len(pairs) > self._settings.max_headers:
            return False
        status = int(code)
        if self.method == b"HEAD" or status == 204 or status == 304:
            framing, length = _Framing.NONE, 0
        else:
            framing = _Framing.LENGTH
        start = m.end()
        if len(data) - start != length:
            return False
        # The whole message is here: recorded as llhttp's callbacks and
        # on_headers_complete would record it.
        self.received = len(data)
        version = _SIMPLE_VERSIONS[minor]
        self._framing = framing
        self._persistent = _persists(version, connection)
        body = self._response_body = _ResponseBody(self, length)
        self._response = OriginResponse(
            status, reason, version, Headers(pairs), body, self._origin
        )
        self._head_done = True
        if length:
            self._body_received = length
            body._buffer.append(data[start:])
        self._complete = True
        self._dispatch()
        return True

    def connection_lost(self, reason: Failure) -> None:
        if self._finished:
            return
        if (
            self._head_done
            and self._framing is _Framing.CLOSE
            and reason.check(ConnectionDone) is not None
        ):
            # RFC 9112 section 8: the close ends such a body unless the
            # connection indicated an error; a reset, or TLS closed without
            # its close_notify (section 9.8), leaves it incomplete.
            self._complete = True
            self._dispatch()
            return
        name = self._origin.name
        if not self._head_done:
            self.lost_early = self.received == 0
            error = UpstreamError(
                f"{name}: connection closed before a complete response head: "
                f"{reason.getErrorMessage()}"
            )
        else:
            length = self._response_body.length  # type: ignore[union-attr]
            of = f" of {length}" if length is not None else ""
            error = UpstreamError(
                f"{name}: connection closed after {self._body_received}{of} body bytes"
                f" ({self._framing.value}): {reason.getErrorMessage()}"
            )
        self._fail(error)

    def timed_out(self) -> None:
        settings, name = self._settings, self._origin.name
        if not self._sent:
            message = (
                f"{name}: origin stopped reading the request body"
                f" for {settings.idle_timeout:g}s"
            )
        elif not self._head_done:
            message = (
                f"{name}: no response head within {settings.first_byte_timeout:g}s"
            )
        else:
            message = f"{name}: no body bytes for {settings.idle_timeout:g}s"
        self._fail(UpstreamTimeout(message))

    def abort(self) -> None:
        """The caller gave up (cancelled): close the connection, report nothing."""
        if self._finished:
            return
        self._reported = True
        self._give_up()

    # -- httptools callbacks -------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self._trailing = True
            return
        self._reason = b""
        self._pairs = []

    def on_status(self, reason: bytes) -> None:
        if not self._complete:
            self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a trailer field: discarded (RFC 9110 section 6.5.1)
        pairs = self._pairs
        if len(pairs) >= self._settings.max_headers:
            self._error = UpstreamProtocolError(
                f"{self._origin.name}: more than {self._settings.max_headers}"
                " response header fields"
            )
            raise self._error
        pairs.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        parser = self._parser
        status = parser.get_status_code()  # type: ignore[union-attr]
        name = self._origin.name
        version = parser.get_http_version()  # type: ignore[union-attr]
        if version[:2] != "1." or status > 599:
            # RFC 9112 section 2.3 (this is HTTP/1.x) and RFC 9110 section
            # 15 (100 to 599): not an answer a proxy can relay.
            self._error = UpstreamProtocolError(
                f"{name}: invalid status line: HTTP/{version} {status}"
            )
            raise self._error
        if status < 200:
            if status == 101:
                self._error = UpstreamProtocolError(
                    f"{name}: 101 Switching Protocols without an upgrade request"
                )
                raise self._error
            self._interim = True
            if status != 100:
                if self._interims is None:
                    self._interims = deque()
                self._interims.append((status, self._reason, Headers(self._pairs)))
            return
        pairs = self._pairs
        # The fields read here, in one pass (Headers lookups make one each).
        fields: dict[bytes, list[bytes]] = {}
        for pair in pairs:
            if pair[0] in _HEAD_FIELDS:
                fields.setdefault(pair[0], []).append(pair[1])
        # RFC 9112 section 6.3.
        length: int | None
        if self.method == b"HEAD" or status in (204, 304):
            framing, length = _Framing.NONE, 0
        elif b"transfer-encoding" in fields:
            # RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message
            # means faulty framing. Any coding but chunked would have to be
            # decoded (section 7), and accel decodes none: relayed as it
            # is, the coded bytes would reach the client, and the cache, as
            # the content. Both are refused, as nginx refuses an "unknown
            # Transfer-Encoding".
            codings = split_list(fields[b"transfer-encoding"])
            if version == "1.0" or len(codings) != 1 or codings[0].lower() != b"chunked":
                self._error = UpstreamProtocolError(
                    f"{name}: unsupported Transfer-Encoding"
                    f" {b', '.join(fields[b'transfer-encoding'])!r} in HTTP/{version}"
                )
                raise self._error
            framing, length = _Framing.CHUNKED, None
        elif b"content-length" in fields:
            raw = b", ".join(fields[b"content-length"])  # repeated lines: as Headers.get
            if not raw.isdigit():
                self._error = UpstreamProtocolError(
                    f"{name}: invalid Content-Length {raw!r}"
                )
                raise self._error
            framing, length = _Framing.LENGTH, int(raw)
        else:
            framing, length = _Framing.CLOSE, None
        self._framing = framing
        raw_version = version.encode("ascii")
        self._persistent = _persists(raw_version, fields.get(b"connection"))
        body = self._response_body = _ResponseBody(self, length)
        self._response = OriginResponse(
            status, self._reason, raw_version, Headers(pairs), body, self._origin
        )
        self._head_done = True
        if self.method == b"HEAD":
            self._complete = True  # whatever llhttp expects next, nothing is due

    def on_body(self, chunk: bytes) -> None:
        if self._complete:
            self._trailing = True
            return
        self._body_received += len(chunk)
        self._response_body._buffer.append(chunk)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._complete = True

    # -- the request body ---------------------------------------------------

    def _request_sent(self) -> None:
        self._sent = True
        if not self._head_done:
            self.connection.watchdog.arm(self._settings.first_byte_timeout)

    def upload_stalled(self, stalled: bool) -> None:
        """The origin stopped (or resumed) reading the request body."""
        if self._finished or self._sent:
            return
        if stalled:
            self.connection.watchdog.arm(self._settings.idle_timeout)
        else:
            self.connection.watchdog.disarm()

    def upload_failed(self, error: Exception) -> None:
        self._fail(error)

    # -- the response body --------------------------------------------------

    def sync_reading(self) -> None:
        """Pause the origin socket while the body's reader cannot take more."""
        if self._finished:
            return
        body = self._response_body
        want = body is None or not (
            body._paused or (body._sink is None and body._buffer)
        )
        if want == self._reading:
            return
        self._reading = want
        transport = self.connection.transport
        if want:
            transport.resumeProducing()  # type: ignore[attr-defined]
            self.connection.watchdog.arm(self._settings.idle_timeout)
        else:
            transport.pauseProducing()  # type: ignore[attr-defined]
            self.connection.watchdog.disarm()

    def discard_body(self) -> None:
        """The reader dropped the body: unless complete, the connection is closed."""
        if not self._finished:
            self._give_up()

    # -- outcomes ------------------------------------------------------------

    def _dispatch(self) -> None:
        if self._complete and not self._finished:
            self._finish_message()
        if not self._reported:
            self._reported = True
            self.listener.head_received(self, self._response)  # type: ignore[arg-type]
        body = self._response_body
        if body is not None:
            body._flush()
        self.sync_reading()
        if self._finished:
            self._unlink()

    def _unlink(self) -> None:
        """Drop what refers back to this exchange, now that it is over.

        The parser holds this exchange's bound callbacks and the response
        body holds the exchange: kept, they make every exchange cyclic
        garbage, which the cyclic GC then has to find (about a tenth of a
        pass-through request's CPU) instead of reference counting freeing it
        at once. Nothing parses or dispatches for a finished exchange; the
        body's own calls back (``sync_reading``, ``discard_body``) see
        ``_finished`` and do nothing.
        """
        self._parser = None
        self._response_body = None
        self._response = None

    def _finish_message(self) -> None:
        """The response is complete on the wire: pool the connection or close it."""
        self._finished = True
        connection = self.connection
        connection.exchange = None
        connection.watchdog.disarm()
        upload = self._upload
        unsent = upload is not None and not upload.done
        if unsent:
            upload.abandon()  # type: ignore[union-attr]
        if connection.closed:
            pass
        elif unsent:
            connection.transport.abortConnection()  # type: ignore[attr-defined]
        elif (
            self._persistent
            and self._framing is not _Framing.CLOSE
            and not self._trailing
        ):
            if not self._reading:
                connection.transport.resumeProducing()  # type: ignore[attr-defined]
            connection.home.release(connection)
        else:
            connection.transport.loseConnection()
        self._response_body._outcome = _END  # type: ignore[union-attr]

    def _fail(self, error: Exception) -> None:
        if self._finished:
            return
        self._give_up()
        if not self._reported:
            self._reported = True
            self.listener.exchange_failed(self, error)
        else:
            body = self._response_body
            body._outcome = error  # type: ignore[union-attr]
            body._flush()  # type: ignore[union-attr]
        self._unlink()

    def _give_up(self) -> None:
        self._finished = True
        connection = self.connection
        connection.exchange = None
        connection.watchdog.disarm()
        if self._upload is not None:
            self._upload.abandon()
        if not connection.closed:
            connection.transport.abortConnection()  # type: ignore[attr-defined]


class _ResponseBody:
    """The response body as a :class:`~accel.http.model.BodySource`.

    Bytes parsed before ``deliver`` wait here (the socket is paused meanwhile,
    so at most one read is held); ``pause``/``resume`` pause the socket.
    The outcome (end or failure) reaches the sink after the buffered bytes.
    """

    __slots__ = (
        "_buffer",
        "_done",
        "_exchange",
        "_outcome",
        "_paused",
        "_sink",
        "length",
    )

    def __init__(self, exchange: Exchange, length: int | None) -> None:
        self.length = length
        self._exchange = exchange
        self._buffer: deque[bytes] = deque()
        self._sink: BodySink | None = None
        self._paused = False
        self._outcome: _End | Exception | None = None
        self._done = False

    def deliver(self, sink: BodySink) -> None:
        if self._sink is not None or self._done:
            raise RuntimeError("a response body can be delivered once")
        self._sink = sink
        self._flush()
        self._exchange.sync_reading()

    def pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._exchange.sync_reading()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._flush()
            self._exchange.sync_reading()

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        self._exchange.discard_body()

    def take_whole(self) -> bytes | None:
        """See :meth:`OriginResponse.whole_body`."""
        if self._outcome is not _END or self._sink is not None or self._done:
            return None
        self._done = True
        buffer = self._buffer
        whole = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        return whole

    def _flush(self) -> None:
        sink = self._sink
        if sink is None:
            return
        buffer = self._buffer
        while buffer and not self._paused and not self._done:
            sink.data(buffer.popleft())
        outcome = self._outcome
        if outcome is None or buffer or self._done:
            return
        self._done = True
        # The sink usually holds this body (to pause it): let go of it, so
        # neither waits for the cyclic GC (see Exchange._unlink).
        self._sink = None
        if outcome is _END:
            sink.end()
        else:
            sink.fail(outcome)  # type: ignore[arg-type]


@implementer(IPushProducer)
class _Upload:
    """Streams the request body: a sink for the body, a producer for the socket.

    A known length is sent as is (and checked: a source that delivers more
    or less than it declared fails the exchange with ``ValueError``), an
    unknown one with the chunked coding (RFC 9112 section 7.1).
    """

    __slots__ = ("_exchange", "_length", "_sent", "_source", "_transport", "done")

    def __init__(
        self, exchange: Exchange, source: BodySource, length: int | None
    ) -> None:
        self._exchange = exchange
        self._source = source
        self._length = length
        self._transport = exchange.connection.transport
        self._sent = 0
        self.done = False

    def start(self) -> None:
        self._transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._source.deliver(self)

    def data(self, chunk: bytes) -> None:
        if self.done or not chunk:
            return
        self._sent += len(chunk)
        if self._length is None:
            self._transport.writeSequence((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
        elif self._sent > self._length:
            self._exchange.upload_failed(
                ValueError(
                    f"request body source sent over its declared {self._length} bytes"
                )
            )
        else:
            self._transport.write(chunk)

    def end(self) -> None:
        if self.done:
            return
        if self._length is None:
            self._transport.write(b"0\r\n\r\n")
        elif self._sent != self._length:
            self._exchange.upload_failed(
                ValueError(
                    f"request body source ended after {self._sent}"
                    f" of its {self._length} bytes"
                )
            )
            return
        self.done = True
        self._transport.unregisterProducer()  # type: ignore[attr-defined]
        self._exchange._request_sent()

    def fail(self, reason: Exception) -> None:
        if self.done:
            return
        self.done = True  # the source is finished: nothing to discard
        self._transport.unregisterProducer()  # type: ignore[attr-defined]
        self._exchange.upload_failed(reason)

    def abandon(self) -> None:
        """Stop sending: the exchange is over before the body was."""
        if self.done:
            return
        self.done = True
        self._transport.unregisterProducer()  # type: ignore[attr-defined]
        self._source.discard()

    def pauseProducing(self) -> None:
        self._source.pause()
        self._exchange.upload_stalled(True)

    def resumeProducing(self) -> None:
        self._source.resume()
        self._exchange.upload_stalled(False)

    def stopProducing(self) -> None:
        """The connection is gone; :meth:`Exchange.connection_lost` handles it."""

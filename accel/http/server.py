"""accel's client-facing HTTP/1.1 server protocol, on httptools (llhttp).

twisted.web's ``Site``/``Resource`` machinery costs several times what a
cache hit should; this protocol parses with llhttp, validates what llhttp
leaves to the server, and hands each request to a
:class:`~accel.http.model.Handler` with a :class:`~accel.http.model.Responder`.

What the server checks itself, on top of llhttp's strict mode (bare CR/LF,
obs-fold, whitespace before the colon, invalid field names and values,
invalid or duplicate Content-Length, Content-Length with Transfer-Encoding,
invalid chunk sizes and extensions are all llhttp errors):

* exactly one valid ``Host`` (RFC 9112 section 3.2), also for absolute-form,
  whose authority then wins (section 3.2.2);
* the request-target form fits the method (section 3.2): asterisk-form only
  for OPTIONS, no CONNECT (accel is not a forward proxy), no fragment, no
  characters outside the URI grammar (see ``_PATH_OK``/``_QUERY_OK``);
* framing (RFC 9112 section 6): Transfer-Encoding must end in chunked (400),
  other codings are not implemented (501), Transfer-Encoding in HTTP/1.0 is
  refused (400), and Content-Length with Transfer-Encoding is refused (400);
* versions: HTTP/1.0 and 1.1; a higher 1.x minor is treated as 1.1 (RFC 9112
  section 2.3), another major version gets 505;
* limits (:class:`ServerLimits`) with their statuses: 408, 413, 414, 431,
  and 503 for a client over its number of connections.

Every rejection answers a short ``text/plain`` error with ``Connection:
close`` and closes; the handler never sees the request, and nothing after it
on the connection is read. Responses leave strictly in request order: request
*n + 1* is handed to the handler only once response *n* is complete and
request *n*'s content is consumed, so a response always writes straight to
the transport. Heads parsed meanwhile queue (bounded: reading pauses).

A request whose ``Upgrade`` we ignore (RFC 9110 section 7.8: a server may)
but which carries content needs care: llhttp skips the content of any
upgrade request, which would let a request hide in it. The protocol then
re-parses the content with a fresh parser primed with a synthetic head of the
same framing (:class:`_AfterUpgrade`), so the content is read as content.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, BinaryIO

import httptools
from attrs import field, frozen
from attrs.validators import ge, gt, optional
from OpenSSL import SSL
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from accel import directwrite
from accel.http.dates import format_http_date
from accel.http.headers import Headers, split_list
from accel.http.model import EMPTY_BODY, BodySink, FileBackedBody, Handler, PushProducer, Request
from accel.streams import FileSender

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "AccessLog",
    "FastPath",
    "HTTPServerFactory",
    "HTTPServerProtocol",
    "RequestBodyError",
    "ServerLimits",
]

_log = Logger()

#: ``access_log(request, status, body_bytes_sent, started, finished, log)``.
#: A request rejected before it was parsed (a malformed or oversized head, a
#: client over its connection limit) is given as one that has only its
#: ``client`` and ``client_port``: method, target and version are empty.
#: ``status`` is 0 when the client went away before a response started.
AccessLog = Callable[[Request, int, int, float, float, dict[str, str]], None]

#: Seconds a connection idle when the server begins to stop is kept open for
#: a request already on its way (answered with ``Connection: close``), so
#: that a stop or a reload does not close a keep-alive connection under a
#: request the client has just sent (see ``HTTPServerProtocol._wind_down``).
_DRAIN_IDLE_GRACE = 1.0


class _Queued(enum.Enum):
    """A connection's watchdog waits in its factory's queue of new connections
    (see ``HTTPServerFactory._watch_new``), not in a timed call of its own."""

    QUEUED = "queued"


_QUEUED = _Queued.QUEUED

#: ``fast_path(factory, method, authority, path, query, pairs, connection)``
#: may answer a GET or HEAD without content (only those are offered) before any :class:`Request` is
#: built: it returns ``(response, status, body_bytes, notes, body)``,
#: ``response`` being the whole response, its head already carrying
#: ``connection`` (the connection field line the server needs, maybe empty),
#: if ``body`` is ``None``; or else the head only, to be followed by
#: ``body``: bytes in memory, the same with an open file that holds them
#: (:class:`~accel.http.model.FileBackedBody`: sent with ``sendfile`` on a
#: plain connection; the server neither keeps nor closes the descriptor),
#: or an open file of which ``body_bytes`` bytes
#: are sent (the server closes it). Or it returns ``None``, and the request
#: takes the general path. It is asked only when nothing is in progress or
#: queued on the connection, so responses stay in order.
FastPath = Callable[
    ["HTTPServerFactory", bytes, bytes, bytes, bytes | None, list[tuple[bytes, bytes]], bytes],
    tuple[bytes, int, int, dict[str, str], bytes | FileBackedBody | BinaryIO | None] | None,
]


#: The status the access log gives a request whose client closed the
#: connection before its answer started: nginx's 499 ("client closed
#: request"), not an HTTP status, never sent.
CLIENT_CLOSED_REQUEST = 499


@frozen
class ServerLimits:
    """Per-connection limits; each says what it answers when exceeded.

    Defaults follow nginx where it has an equivalent.
    """

    #: Longest request-target, in bytes: 414 URI Too Long.
    max_target: int = field(default=8192, validator=gt(0))
    #: Sum of field name and value lengths in the head: 431.
    max_header_bytes: int = field(default=64 * 1024, validator=gt(0))
    #: Most field lines in the head: 431.
    max_headers: int = field(default=100, validator=gt(0))
    #: Seconds for a request head to arrive once it has begun (and for the
    #: first byte of the first request): 408, then close.
    header_timeout: float = field(default=10.0, validator=gt(0))
    #: Seconds a keep-alive connection may sit idle between requests; then
    #: closed silently.
    idle_timeout: float = field(default=60.0, validator=gt(0))
    #: Seconds without request content while the server is waiting for it:
    #: 408 if no response started, else the connection is closed.
    body_timeout: float = field(default=60.0, validator=gt(0))
    #: Seconds the client may take none of what it is sent while bytes wait
    #: for it (between two writes the socket takes, not for the whole
    #: response: nginx's ``send_timeout``); then the connection is aborted,
    #: and a response in progress is cut short, as the client can tell. It
    #: also bounds a close that waits to send what is left. Watched on
    #: connections accepted by accel's reactor (:mod:`accel.ports`, which
    #: counts when a socket becomes writable).
    send_timeout: float = field(default=60.0, validator=gt(0))
    #: Parsed requests waiting behind the one being answered; at this many,
    #: reading pauses until the queue drains.
    max_pipelined: int = field(default=16, validator=gt(0))
    #: Request content buffered before the handler takes it; above this,
    #: reading pauses.
    max_buffered_body: int = field(default=65536, validator=gt(0))
    #: Largest request content accepted, or ``None`` for no limit: 413.
    max_body: int | None = field(default=None, validator=optional(ge(0)))
    #: Unread request content the server reads and drops after a response to
    #: keep the connection; more than this and the connection is closed.
    max_discard: int = field(default=65536, validator=ge(0))
    #: Open connections from one client address, or ``None`` for no limit.
    #: Past it, a connection's first request is answered 503 and the
    #: connection closed, as nginx's ``limit_conn`` does. UNIX-socket clients
    #: are not counted (they all share one "address").
    max_connections_per_client: int | None = field(default=1024, validator=optional(gt(0)))
    #: Lingering close, as nginx's ``lingering_time``/``lingering_timeout``:
    #: after an answer that leaves request content unread, the server sends
    #: its FIN and reads and drops what still arrives, for at most
    #: ``linger_time`` seconds in all and ``linger_timeout`` seconds of
    #: silence, then closes. Closing at once would make the kernel answer the
    #: unread bytes with a reset, which can destroy the answer before the
    #: client reads it.
    linger_time: float = field(default=30.0, validator=ge(0))
    linger_timeout: float = field(default=5.0, validator=ge(0))
    #: ``TCP_NOTSENT_LOWAT`` of a plain TCP connection once it sends a body
    #: from a file (``sendfile``), in bytes, or ``None`` for the kernel's
    #: default: the most response bytes the kernel holds *unsent* for the
    #: client (bytes in flight are not counted, so a connection's throughput
    #: is not capped). Beyond it the socket reads as full and the rest of the
    #: body waits in its file; it is then sent by this process when the
    #: client's window opens, not by the CPU that receives the client's ACK
    #: (docs/performance.rst). Set only then: a body sent from memory in one
    #: write would be split at the limit.
    notsent_lowat: int | None = field(default=64 * 1024, validator=optional(gt(0)))
    #: Answered bytes a plain connection may hold unsent (the client is not
    #: reading them) before the server stops answering and reading that
    #: client's further requests, until they are sent: a client pipelining
    #: requests it never reads cannot make the server buffer without bound.
    max_unsent: int = field(default=1024 * 1024, validator=gt(0))


class RequestBodyError(Exception):
    """The request content failed: what a :class:`BodySink` gets in ``fail``.

    ``status`` is the answer the server gives (or would have given) for it:
    400 for broken framing, 408 for a stalled client, 413 for too much.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail


class _Rejected(Exception):
    """Raised inside a parser callback to stop llhttp; details on the protocol."""


# --- Request-target and Host grammar (RFC 3986, RFC 9112 section 3.2) ---

#: Linux's option number where the socket module lacks the name (see
#: ServerLimits.notsent_lowat).
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)

_ALNUM = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = _ALNUM + b"-._~"
_SUB_DELIMS = b"!$&'()*+,;="
#: Path bytes: pchar and "/" (RFC 3986 section 3.3), plus "[", "]", "|" and
#: "^", which browsers send unencoded (the WHATWG path percent-encode set).
#: Refused: controls, space, '"', "#", "<", ">", "\\", "`", "{", "}", and
#: anything not ASCII; "\\" because some origins read it as "/".
_PATH_OK = _UNRESERVED + _SUB_DELIMS + b":@/%[]|^"
#: Query bytes: RFC 3986 query plus what browsers leave unencoded there.
_QUERY_OK = _PATH_OK + b"?`{}\\"
_ORIGIN_FORM = re.compile(
    b"(/[%s]*)(?:\\?([%s]*))?" % (re.escape(_PATH_OK), re.escape(_QUERY_OK))
)
_BAD_PCT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
#: Looked for as an int: see ``accel.forwarding._UNDERSCORE``.
_PERCENT = ord("%")
_TOKEN_SP = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")
_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_HOST = re.compile(
    rb"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]"
    rb"|\[v[0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+\]"
    rb"|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)"
    rb"(?::(?P<port>[0-9]{0,5}))?"
)
_valid_hosts: set[bytes] = set()


def valid_host(raw: bytes) -> bool:
    """Whether ``raw`` is ``uri-host [ ":" port ]`` (RFC 9110 section 7.2).

    An empty value is valid (RFC 9112 section 3.2: sent when the target URI
    has no authority). IPv6 literals are checked as addresses; ports above
    65535 are refused. Results for valid hosts are memoised (bounded).
    """
    if raw in _valid_hosts:
        return True
    m = _HOST.fullmatch(raw)
    if m is None:
        return False
    ip6, port = m.group("ip6", "port")
    if port and int(port) > 65535:
        return False
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            return False
    if len(_valid_hosts) < 4096:
        _valid_hosts.add(raw)
    return True


def split_target(method: bytes, target: bytes) -> tuple[bytes, bytes | None, bytes | None]:
    """``(path, query, authority)`` of a request-target, or raise ``ValueError``.

    RFC 9112 section 3.2: origin-form (``authority`` is then ``None``: it
    comes from Host), absolute-form with an ``http``/``https`` scheme, a
    non-empty host and no userinfo (RFC 9110 section 4.2.1), and
    asterisk-form for OPTIONS only. Authority-form (CONNECT) is refused
    before this is called. ``query`` is ``None`` without a ``?``.
    """
    m = _ORIGIN_FORM.fullmatch(target)
    if m is None:
        if target[:1] == b"/":
            raise ValueError("invalid character in request-target")
        if target == b"*":
            if method != b"OPTIONS":
                raise ValueError("asterisk-form is only for OPTIONS")
            return b"*", None, None
        return _split_absolute(method, target)
    path, query = m.groups()
    if _PERCENT in path and _BAD_PCT.search(path):
        raise ValueError("invalid percent-encoding in path")
    return path, query, None


def _split_absolute(method: bytes, target: bytes) -> tuple[bytes, bytes | None, bytes]:
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ValueError("request-target must be origin-form or absolute-form")
    scheme, authority, rest = m.groups()
    if scheme.lower() not in (b"http", b"https"):
        raise ValueError("absolute-form scheme must be http or https")
    if not authority or b"@" in authority or not valid_host(authority):
        raise ValueError("invalid authority in absolute-form")
    if not rest:
        # RFC 9112 section 3.2.1: an empty path is "/" ("*" for OPTIONS).
        if method == b"OPTIONS":
            return b"*", None, authority.lower()
        rest = b"/"
    elif rest[:1] == b"?":
        rest = b"/" + rest
    path, query, _ = split_target(method, rest)
    return path, query, authority.lower()


def _no_delay(transport: object) -> None:
    """Turn off Nagle's algorithm on a TCP (or TLS over TCP) transport that can."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass  # not a TCP socket after all


def _set_notsent_lowat(sock: socket.socket | None, limit: int | None) -> None:
    """Bound the unsent bytes the kernel queues on a plain TCP ``sock`` (see ServerLimits)."""
    if sock is None or limit is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, limit)
    except OSError:
        pass  # not TCP, or a kernel without it: its default then


def _persistent(version: bytes, connection: list[bytes] | None) -> bool:
    """Whether the connection stays open after this request (RFC 9112 section 9.3).

    ``connection``: the request's ``Connection`` field lines, or ``None``.
    """
    if version == b"1.1":
        return connection is None or not _has_token(connection, b"close")
    return (
        connection is not None
        and _has_token(connection, b"keep-alive")
        and not _has_token(connection, b"close")
    )


def _has_token(values: list[bytes], token: bytes) -> bool:
    """Whether the comma-separated list fields contain ``token`` (any case)."""
    for value in values:
        if value.lower() == token:  # the usual field: that one token (OWS is stripped)
            return True
    for element in split_list(values):  # noqa: SIM110 (a loop is cheaper than any() over a generator)
        if element.lower() == token:
            return True
    return False


# --- Responses ---

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

#: Fields the responder manages itself; see :meth:`_Exchange.start`.
_MANAGED = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"date", b"server"}
)
_SPECIAL = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"}
)

# --- Simple heads (see HTTPServerProtocol._answer_simple) ---

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
#: One whole GET or HEAD head in origin-form, and nothing after it: field
#: lines of a token, a colon and printable ASCII, space or HTAB only. A
#: strict subset of what llhttp accepts, read the same way. The field lines
#: are matched possessively (``*+``, ``++``): no line can match another way,
#: and without the backtracking state a line costs about half as much.
_SIMPLE_HEAD = re.compile(
    b"(GET|HEAD) ((/[%s]*)(?:\\?([%s]*))?) HTTP/1\\.([01])\r\n((?:[%s]++:[\t\x20-\x7e]*+\r\n)*+)\r\n"
    % (re.escape(_PATH_OK), re.escape(_QUERY_OK), _TCHAR)
)
_SIMPLE_VERSIONS = {b"1": b"1.1", b"0": b"1.0"}
_NO_FIELDS: dict[bytes, list[bytes]] = {}

# Response states.
_NEW, _STARTED, _DONE = 0, 1, 2
# Response body framings.
_NONE, _FIXED, _CHUNKED, _CLOSE = 0, 1, 2, 3
# Parser phases.
_IDLE, _HEAD, _BODY = 0, 1, 2


class _RequestBody:
    """Request content as a :class:`~accel.http.model.BodySource`.

    Data parsed before :meth:`deliver` (or while the sink has paused) is
    buffered; past ``max_buffered_body`` the protocol stops reading.
    """

    __slots__ = (
        "_buffer",
        "_complete",
        "_discarding",
        "_drain_limit",
        "_error",
        "_exchange",
        "_expect",
        "_max",
        "_paused",
        "_proto",
        "_sink",
        "_told",
        "length",
        "received",
    )

    def __init__(self, proto: HTTPServerProtocol, length: int | None, expect: bool) -> None:
        self.length = length
        self.received = 0
        self._proto = proto
        self._exchange: _Exchange | None = None
        self._sink: BodySink | None = None
        self._buffer: deque[bytes] = deque()
        self._paused = False
        self._complete = False
        self._error: RequestBodyError | Exception | None = None
        self._told = False  # the sink has had end() or fail()
        self._discarding = False
        self._drain_limit = -1  # >= 0 once the response is done and we drain
        #: ``Expect: 100-continue`` and no ``100 Continue`` sent yet.
        self._expect = expect
        #: The most content accepted (413 beyond), or None.
        self._max = proto._limits.max_body

    # BodySource

    def deliver(self, sink: BodySink) -> None:
        """Start pushing to ``sink``; sends ``100 Continue`` if the client waits for it."""
        if self._sink is not None or self._discarding:
            raise RuntimeError("request body already delivered or discarded")
        self._sink = sink
        if self._expect:
            self._expect = False
            ex = self._exchange
            if ex is not None and ex._state == _NEW and not ex.disconnected and not self.received:
                self._proto._write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._proto._arm_for_phase()
        self._flush()

    def pause(self) -> None:
        self._paused = True
        self._proto._update_reading()

    def resume(self) -> None:
        self._paused = False
        self._flush()

    def discard(self) -> None:
        """Drop the content; the connection is kept only if little is left."""
        self._discarding = True
        self._sink = None
        self._drop_buffer()

    # Fed by the protocol

    def _receive(self, data: bytes) -> None:
        self.received += len(data)
        proto = self._proto
        limit = self._max
        if limit is not None and self.received > limit:
            assert self._exchange is not None
            proto._fail_exchange(self._exchange, 413, "request content too large")
            return
        if self._discarding:
            if 0 <= self._drain_limit < self.received:
                proto._close()
            return
        sink = self._sink
        if sink is not None and not self._paused and not self._buffer:
            try:
                sink.data(data)
            except Exception:  # noqa: BLE001 (the handler's error, answered as such)
                proto._handler_failed(self._exchange, Failure())
            return
        self._buffer.append(data)
        proto._buffered += len(data)
        if proto._buffered > proto._limits.max_buffered_body:
            proto._update_reading()

    def _end(self) -> None:
        self._complete = True
        self._flush()

    def _fail(self, error: Exception) -> None:
        if self._complete or self._error is not None:
            return
        self._error = error
        self._drop_buffer()
        if self._sink is not None and not self._told:
            self._told = True
            try:
                self._sink.fail(error)
            except Exception:  # noqa: BLE001 (logged; the connection goes on)
                _log.failure("request body sink failed", Failure())

    def _flush(self) -> None:
        sink = self._sink
        if sink is None:
            return
        buffer = self._buffer
        proto = self._proto
        try:
            while buffer and not self._paused:
                chunk = buffer.popleft()
                proto._buffered -= len(chunk)
                sink.data(chunk)
            if self._complete and not buffer and not self._told:
                self._told = True
                sink.end()
        except Exception:  # noqa: BLE001 (the handler's error, answered as such)
            proto._handler_failed(self._exchange, Failure())
        proto._update_reading()

    def _drop_buffer(self) -> None:
        if self._buffer:
            self._proto._buffered -= sum(len(c) for c in self._buffer)
            self._buffer.clear()
        self._proto._update_reading()

    @property
    def _awaiting_client(self) -> bool:
        """Whether the server is waiting on the client for content (body timeout runs)."""
        return not (self._complete or self._expect or self._paused or self._error)


class _Exchange:
    """One request and its response: the :class:`~accel.http.model.Responder`.

    Also a queue entry: ``reject`` set means the server answers this entry
    with that error status instead of calling the handler.
    """

    # No __slots__: class-level defaults leave __init__ six stores, which
    # measurably matters on the per-request path.
    disconnected = False
    #: Error status the server answers this entry with (0: call the handler).
    reject = 0
    detail = ""
    #: The request has been received completely.
    received = False
    _state = _NEW
    _status = 0
    _mode = _NONE
    _remaining = 0
    _sent = 0
    _callbacks: list[Callable[[], object]] | None = None
    _producer: PushProducer | None = None

    def __init__(
        self,
        proto: HTTPServerProtocol,
        request: Request | None,
        body: _RequestBody | None,
        keep_alive: bool,
        started_at: float,
    ) -> None:
        self.log: dict[str, str] = {}
        self.request = request
        self.body = body
        #: What the request asked for (RFC 9112 section 9.3).
        self.keep_alive = keep_alive
        self._keep = keep_alive
        self._proto = proto
        self._started_at = started_at

    # Responder

    def start(self, status: int, reason: bytes, headers: Headers) -> None:
        """Send the response head in one write; see the module docstring for framing."""
        if self._state != _NEW:
            if self.disconnected:
                return
            raise RuntimeError("Responder.start() called twice")
        if self.disconnected:
            return
        request = self.request
        assert request is not None
        proto = self._proto
        if status < 200:
            self._interim(status, reason, headers)
            return
        keep = self._keep
        body = self.body
        if body is not None and body._expect and not body.received:
            # The client still waits for 100 Continue: it may or may not send
            # the content now, so the connection cannot be reused safely.
            keep = False
        no_body = status == 204 or status == 304 or request.method == b"HEAD"
        length = None
        has_date = has_server = False
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        kept: list[tuple[bytes, bytes]] = []
        for pair in headers.pairs:
            name = pair[0]
            if name in _MANAGED:
                if name == b"content-length":
                    if length is not None or status == 204:
                        continue  # RFC 9110 section 8.6: never in a 204
                    if not pair[1].isdigit():
                        raise ValueError(f"expected digits for content-length, got {pair[1]!r}")
                    length = int(pair[1])
                elif name == b"date":
                    has_date = True
                elif name == b"server":
                    has_server = True
                else:
                    if name == b"connection" and _has_token([pair[1]], b"close"):
                        keep = False
                    continue  # framing and connection fields are ours
            kept.append(pair)
        if kept:
            # "name: value" lines joined in C, none formatted in Python.
            out.append(b"\r\n".join(map(b": ".join, kept)))
            out.append(b"\r\n")
        if no_body:
            mode = _NONE
        elif length is not None:
            mode = _FIXED
            self._remaining = length
        elif request.version == b"1.1":
            mode = _CHUNKED
            out.append(b"transfer-encoding: chunked\r\n")
        else:
            mode = _CLOSE  # RFC 9112 section 6.3, rule 8
            keep = False
        if not keep:
            out.append(b"connection: close\r\n")
        elif request.version == b"1.0":
            out.append(b"connection: keep-alive\r\n")
        factory = proto.factory
        if not has_date:
            out.append(factory.date_line())
        if not has_server and factory.server_line:
            out.append(factory.server_line)
        out.append(b"\r\n")
        self._state = _STARTED
        self._status = status
        self._mode = mode
        self._keep = keep
        proto._write(b"".join(out))

    def _interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """A 1xx response; never to an HTTP/1.0 client (RFC 9110 section 15.2)."""
        request = self.request
        assert request is not None
        if status < 100 or status == 101:
            raise ValueError(f"expected a 1xx other than 101 or a final status, got {status}")
        if status == 100 and self.body is not None:
            self.body._expect = False
        if request.version == b"1.0":
            return
        out = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        out.extend(b"%s: %s\r\n" % pair for pair in headers.pairs if pair[0] not in _MANAGED)
        out.append(b"\r\n")
        self._proto._write(b"".join(out))

    def write(self, data: bytes) -> None:
        """Send content; dropped for HEAD/204/304, cut at the declared length."""
        if self._state != _STARTED:
            if self.disconnected or self._state == _DONE:
                return
            raise RuntimeError("Responder.write() before start()")
        n = len(data)
        if not n:
            return
        mode = self._mode
        proto = self._proto
        if mode == _CHUNKED:
            if n < 8192:
                proto._write(b"%x\r\n%s\r\n" % (n, data))
            else:
                proto._write_parts((b"%x\r\n" % n, data, b"\r\n"))
        elif mode == _FIXED:
            if n > self._remaining:
                n = self._remaining
                data = data[:n]
                if not n:
                    return
            self._remaining -= n
            proto._write(data)
        elif mode == _CLOSE:
            proto._write(data)
        else:
            return
        self._sent += n

    def finish(self) -> None:
        """The content is complete; a short fixed-length body is an abort."""
        if self._state != _STARTED:
            if self.disconnected or self._state == _DONE:
                return
            raise RuntimeError("Responder.finish() before start()")
        if self._mode == _FIXED and self._remaining:
            _log.warn(
                "response to {line} ended {n} bytes short of its content-length; closing",
                line=self._line(),
                n=self._remaining,
            )
            self.abort()
            return
        if self._mode == _CHUNKED:
            self._proto._write(b"0\r\n\r\n")
        self._state = _DONE
        # Never called now; dropping them breaks the cycle most handlers make
        # (a callback holding what holds this responder), so the exchange is
        # freed by reference counting rather than by the cyclic GC.
        self._callbacks = None
        if self._producer is not None:
            self.unregister_producer()
        self._proto._response_done(self, True)

    def abort(self) -> None:
        """Close without completing the framing, so the client sees a truncated response."""
        if self._state == _DONE or self.disconnected:
            return
        self._keep = False
        self._done(clean=False)

    def register_producer(self, producer: PushProducer) -> None:
        """The transport pauses ``producer`` while the client reads slowly."""
        if self.disconnected or self._state == _DONE:
            producer.stopProducing()
            return
        self._producer = producer
        self._proto.transport.registerProducer(producer, True)

    def unregister_producer(self) -> None:
        if self._producer is not None:
            self._producer = None
            self._proto.transport.unregisterProducer()

    def take_socket(self, length: int) -> object | None:
        """The transport, for a sender that writes the rest of the body to its socket itself.

        For ``os.sendfile``: only once started, for a fixed-length body of
        exactly ``length`` more bytes, on a plain TCP or UNIX connection
        (never TLS, whose bytes must go through the TLS layer). The bytes
        are counted as sent; the sender must then call ``finish`` or
        ``abort`` as usual. ``None`` if the body must go through ``write``.
        """
        if self._state != _STARTED or self._mode != _FIXED or self._remaining != length:
            return None
        proto = self._proto
        if proto._socket is None:
            return None  # TLS, or a transport that is not a plain socket
        if not proto._lowat_set:
            proto._lowat_set = True
            _set_notsent_lowat(proto._socket, proto._limits.notsent_lowat)
        proto._uncork()  # what was written before goes first
        transport = proto.transport
        self._remaining = 0
        self._sent += length
        return transport

    def on_disconnect(self, callback: Callable[[], object]) -> None:  # type: ignore[override]
        if self._state == _DONE:
            return  # finished or gone already: it would never be called
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)

    # Internals

    def _line(self) -> str:
        r = self.request
        if r is None:
            return "(unparsed request)"
        return f"{r.method.decode('latin-1')} {r.target.decode('latin-1')} HTTP/{r.version.decode()}"

    def _done(self, clean: bool) -> None:
        self._state = _DONE
        self._callbacks = None  # never called now: see finish()
        self.unregister_producer()
        self._proto._response_done(self, clean)

    def _lost(self) -> None:
        """The connection went away before the response was done."""
        self.disconnected = True
        self._state = _DONE
        self._producer = None
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            try:
                callback()
            except Exception:  # noqa: BLE001 (one callback failing must not stop the others)
                _log.failure("on_disconnect callback failed for {line}", Failure(), line=self._line())


def _sent_close_notify(transport: Any) -> bool:
    """Whether ``transport``, a TLS layer told to close, has sent its ``close_notify``."""
    connection = getattr(transport, "_tlsConnection", None)
    if connection is None:
        return False
    try:
        return bool(connection.get_shutdown() & SSL.SENT_SHUTDOWN)
    except SSL.Error:
        return False


class _Drain:
    """Told by a plain transport when it has sent everything (a pull producer).

    Registered while the server waits for a client to read what it was
    answered (see ServerLimits.max_unsent). The transport asks a pull
    producer for data once when it is registered (ignored here) and then
    each time its buffer is empty: that is the news the server waits for.
    Over TLS it is registered on the TCP transport below the TLS layer,
    where the records wait, never on the layer itself (which would turn a
    pull producer into one it calls on every turn).
    """

    __slots__ = ("_primed", "_proto")

    def __init__(self, proto: HTTPServerProtocol) -> None:
        self._proto = proto
        self._primed = False

    def resumeProducing(self) -> None:
        if not self._primed:
            self._primed = True
            return
        self._proto._drained()

    def stopProducing(self) -> None:
        pass


class _AfterUpgrade:
    """Parser callbacks that skip a synthetic head, then forward to the protocol.

    See the module docstring: after an ignored ``Upgrade`` with content, a
    fresh parser is fed ``POST / HTTP/1.1`` plus the request's framing field,
    so llhttp reads the content that follows as content.
    """

    def __init__(self, proto: HTTPServerProtocol) -> None:
        self._proto = proto
        self._skip = True

    def on_message_begin(self) -> None:
        if not self._skip:
            self._proto.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._skip:
            self._proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._skip:
            self._proto.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._skip:
            self._skip = False
        else:
            self._proto.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        self._proto.on_body(data)

    def on_message_complete(self) -> None:
        self._proto.on_message_complete()


class HTTPServerProtocol(Protocol):
    """HTTP/1.1 to one client; see the module docstring."""

    # Its state lives in slots. In an instance dictionary, more than 30
    # attributes (CPython shares the keys of at most 30 among instances)
    # made every connection build a dictionary of its own, and made every
    # attribute slower to read and write: slots took a tenth off the
    # instructions per connection+request (docs/performance.rst). An
    # attribute left out still works, from the dictionary Protocol has.
    __slots__ = (
        "_access_log",
        "_active",
        "_advancing",
        "_body_limit",
        "_buffered",
        "_client",
        "_client_log",
        "_client_port",
        "_clock",
        "_closing",
        "_corked",
        "_corked_bytes",
        "_counted",
        "_draining",
        "_error",
        "_fast_path",
        "_fields",
        "_first_look",
        "_generation",
        "_handler",
        "_head_since",
        "_header_bytes",
        "_idle_deadline",
        "_idle_timeout",
        "_last_rx",
        "_limits",
        "_lingering",
        "_log_fields",
        "_lowat_set",
        "_over_limit",
        "_pairs",
        "_parser",
        "_parsing",
        "_phase",
        "_progress",
        "_queue",
        "_read_closed",
        "_reading_paused",
        "_resync",
        "_scheme",
        "_send_queue",
        "_socket",
        "_stalled",
        "_stopping",
        "_timer",
        "_tx_since",
        "_tx_writable",
        "_url",
    )

    factory: HTTPServerFactory

    def __init__(self, factory: HTTPServerFactory) -> None:
        self.factory = factory
        self._handler = factory.handler
        self._clock = factory.clock
        self._limits = factory.limits
        self._idle_timeout = factory.limits.idle_timeout
        self._scheme = factory.scheme
        self._access_log = factory.access_log
        #: The access log's entry for a request that has no Request object
        #: (the fast path), when it has one: AccessLog.fields.
        self._log_fields = getattr(factory.access_log, "fields", None)
        #: The client's address as the access log writes it.
        self._client_log = b"-"
        self._body_limit = factory.body_limit
        self._fast_path = factory.fast_path
        self._generation = factory.generation
        self._parser: httptools.HttpRequestParser | None = None
        #: The connection's socket while writes may bypass Twisted's buffer
        #: (plain TCP and UNIX connections; ``None`` over TLS): see _write
        #: and :mod:`accel.directwrite`.
        self._socket: socket.socket | None = None
        #: Where this connection's unsent bytes wait (directwrite.send_queue),
        #: or None: not counted.
        self._send_queue: Any = None
        #: TCP_NOTSENT_LOWAT is set (at the first body sent from a file).
        self._lowat_set = False
        #: Fast answers to pipelined heads held for one write (see
        #: _answer_pipelined); ``None`` when writes go out at once.
        self._corked: list[bytes] | None = None
        self._corked_bytes = 0
        #: Waiting for answered bytes to be sent (see ServerLimits.max_unsent).
        self._draining = False
        self._client = ""
        self._client_port = 0
        # Parse state of the message being read.
        self._phase = _IDLE
        self._url = b""
        self._pairs: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._fields: dict[bytes, list[bytes]] | None = None
        self._parsing: _Exchange | None = None
        self._resync: bytes | None = None
        self._error: tuple[int, str] | None = None
        self._progress = False
        self._stalled = 0
        # Exchanges.
        self._queue: deque[_Exchange] = deque()
        self._active: _Exchange | None = None
        self._advancing = False
        self._buffered = 0
        # Connection state.
        #: Since when the connection lingers (see ServerLimits.linger_time).
        self._lingering: float | None = None
        self._reading_paused = False
        self._read_closed = False
        self._closing = False
        #: The watchdog: a timed call, the factory's queue (_QUEUED), or none.
        self._timer: IDelayedCall | _Queued | None = None
        #: When the factory's queue of new connections has the watchdog look
        #: (while ``_timer`` is _QUEUED).
        self._first_look = 0.0
        #: Since when bytes have waited for the client without its socket
        #: becoming writable (``None``: none wait), and how many times it had
        #: then (see _watch_sending).
        self._tx_since: float | None = None
        self._tx_writable = 0
        self._last_rx = 0.0
        self._head_since = 0.0
        self._idle_deadline = 0.0
        # Counted in the factory's connections per client; over the limit.
        self._counted = False
        self._over_limit = False
        #: The server is stopping (see HTTPServerFactory.drain): the last
        #: request read is answered with close, and nothing more is read.
        self._stopping = False

    # --- Connection ---

    def connectionMade(self) -> None:
        # No parser yet (see _new_parser): most connections never need one.
        transport = self.transport
        sock = self._socket = directwrite.plain_socket(transport)
        self._send_queue = transport if sock is not None else directwrite.send_queue(transport)
        peer = transport.getPeer()
        if isinstance(peer, UNIXAddress):
            self._client = "unix"
            self._client_log = b"unix"
        else:
            # A response written in pieces (a head, then relayed content)
            # must not wait for the client's delayed ACK (Nagle's algorithm).
            _no_delay(transport)
            self._client = str(getattr(peer, "host", ""))
            self._client_log = self._client.encode("ascii", "replace") or b"-"
            self._client_port = int(getattr(peer, "port", 0))
            self._over_limit = not self.factory._admit(self._client)
            self._counted = True
        now = self._clock.seconds()
        header_timeout = self._limits.header_timeout
        self._idle_deadline = now + header_timeout
        factory = self.factory
        first = header_timeout if header_timeout < self._idle_timeout else self._idle_timeout  # noqa: FURB136 (3.11's min() is many times dearer, per connection)
        factory._watch_new(self, now + first, now)
        factory._open.add(self)
        if factory.stopping:
            self._wind_down()  # accepted as the listener stopped: its last request, if any

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = self._read_closed = True
        self._cancel_timer()
        self.factory._gone(self)
        if self._counted:
            self._counted = False
            self.factory._release(self._client)
        active = self._active
        if active is not None or self._parsing is not None:
            error = reason.value if isinstance(reason.value, Exception) else ConnectionDone()
            if active is not None and active._state != _DONE:
                if not active._status:
                    # Gone before its answer started: logged as nginx logs it.
                    active._status = CLIENT_CLOSED_REQUEST
                active._lost()
                self._access(active, self._clock.seconds())
            parsing = self._parsing
            if parsing is not None and parsing.body is not None:
                parsing.body._fail(error)
            if active is not None and active.body is not None:
                active.body._fail(error)
        self._queue.clear()
        self._active = self._parsing = None
        self._parser = None  # break the parser <-> protocol cycle
        self._socket = self._send_queue = None

    def _write(self, data: bytes) -> None:
        """Send ``data`` to the client, in order after everything written before.

        Straight to the socket when nothing is queued (see
        :mod:`accel.directwrite`: no write buffering and no ``epoll_ctl``
        pair per response); over TLS through the transport.
        """
        if self._corked is not None:
            self._corked.append(data)
            self._corked_bytes += len(data)
            return
        if directwrite.hold(self._uncork):
            # In a batch (an origin's delivery, a request being handled):
            # what else it writes goes with this, when it returns.
            self._corked = [data]
            self._corked_bytes = len(data)
            return
        directwrite.write(self.transport, self._socket, data)

    def _write_parts(self, parts: tuple[bytes, ...]) -> None:
        """:meth:`_write` of the concatenation of ``parts``, without copying them."""
        if self._corked is not None:
            self._corked.extend(parts)
            self._corked_bytes += sum(len(part) for part in parts)
            return
        if directwrite.hold(self._uncork):
            self._corked = list(parts)
            self._corked_bytes = sum(len(part) for part in parts)
            return
        directwrite.write_parts(self.transport, self._socket, parts)

    def _uncork(self) -> None:
        """Send what is held back (pipelined fast answers, or writes during an
        origin's delivery: see ``_write``), before anything else goes out."""
        corked = self._corked
        if corked is not None:
            self._corked = None
            self._corked_bytes = 0
            if corked:
                directwrite.write_parts(self.transport, self._socket, tuple(corked))

    def _backlogged(self) -> bool:
        """Whether the client left more answered bytes unsent than ServerLimits.max_unsent.

        Counted where the bytes wait: the socket's transport, below the TLS
        layer for TLS (records, a few bytes more than the answers).
        """
        queue = self._send_queue
        return queue is not None and directwrite.queued(queue) > self._limits.max_unsent

    def _wait_for_drain(self) -> None:
        """Answer nothing more, and read nothing more, until the unsent bytes are sent."""
        if self._draining or self._closing:
            return
        self._draining = True
        self._send_queue.registerProducer(_Drain(self), False)
        self._update_reading()

    def _drained(self) -> None:
        self._draining = False
        self._send_queue.unregisterProducer()
        self._advance()
        self._update_reading()

    def dataReceived(self, data: bytes) -> None:
        if self._read_closed:
            if self._lingering is not None:
                self._last_rx = self._clock.seconds()  # dropped; the silence restarts
            return
        now = self._last_rx = self._clock.seconds()
        if self._phase == _IDLE:
            if self._generation != self.factory.generation:
                self._reconfigured()
            if (
                self._fast_path is not None
                and self._active is None
                and not self._queue
                and data[-4:] == b"\r\n\r\n"
                and not self._draining
                and not self._stopping
                and not self._backlogged()
            ):
                if self._answer_simple(data):
                    return
                if data.find(b"\r\n\r\n", 0, -4) >= 0:
                    data = self._answer_pipelined(data)
                    if not data or self._read_closed:
                        return
            # Bytes of a new head (even before llhttp reaches the target).
            self._phase = _HEAD
            self._head_since = now
        self._progress = False
        parser = self._parser
        if parser is None:
            parser = self._parser = self._new_parser()
        while True:
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                # llhttp stops after an Upgrade (or CONNECT) head; we ignore
                # the upgrade and carry on with the bytes after it.
                data = data[upgrade.args[0] :]
                if self._read_closed:
                    return
                if self._resync is not None:
                    parser = self._parser = httptools.HttpRequestParser(_AfterUpgrade(self))
                    parser.set_dangerous_leniencies(lenient_version=True)
                    head, self._resync = self._resync, None
                    parser.feed_data(head)
                if data:
                    continue
            except httptools.HttpParserError as exc:
                self._parse_failed(exc, data)
                return
            break
        if self._read_closed:
            return
        if self._progress:
            self._stalled = 0
        else:
            # httptools accumulates a field line until it ends: bound the
            # bytes fed without any callback (a giant line, endless chunk
            # extensions) so it cannot grow without limit.
            self._stalled += len(data)
            if self._stalled > self._limits.max_header_bytes:
                if self._phase == _BODY:
                    assert self._parsing is not None
                    self._fail_exchange(self._parsing, 400, "request content framing too long")
                else:
                    self._reject_head(431, "request head too large")
                return
        if self._phase != _IDLE:
            self._arm_for_phase()

    def _new_parser(self) -> httptools.HttpRequestParser:
        """llhttp for this connection, made for the first bytes it must read.

        Heads that :meth:`_answer_simple` takes never reach llhttp, so a
        connection that only sends those (a ``Connection: close`` request,
        above all) never pays for one. Between messages, a parser that has
        not seen them is in the state one that had would be in.
        """
        parser = httptools.HttpRequestParser(self)
        # Only the version digits: we answer 505 for other majors ourselves.
        parser.set_dangerous_leniencies(lenient_version=True)
        return parser

    def _reconfigured(self) -> None:
        """The factory was reconfigured (a reload) since this connection last
        looked: the request that begins now takes the new handler."""
        factory = self.factory
        self._generation = factory.generation
        self._handler = factory.handler
        self._body_limit = factory.body_limit
        self._fast_path = factory.fast_path

    def _parse_failed(self, exc: httptools.HttpParserError, data: bytes) -> None:
        """Map a parser error (ours or llhttp's) to an answer; never forwards."""
        if self._read_closed:
            return  # we stopped on purpose (e.g. data after Connection: close)
        if self._error is not None:
            status, detail = self._error
            self._error = None
        elif isinstance(exc, httptools.HttpParserCallbackError):
            _log.failure("HTTP server callback failed", Failure(exc.__context__ or exc))
            status, detail = 500, "internal error"
        elif isinstance(exc, httptools.HttpParserInvalidMethodError):
            # RFC 9110 section 9.1: an unknown method is 501; garbage is 400.
            # httptools gives no error offset, so look at the chunk's start.
            if _TOKEN_SP.match(data.lstrip(b"\r\n")):
                status, detail = 501, "method not implemented"
            else:
                status, detail = 400, "invalid request line"
        elif data.lstrip(b"\r\n").startswith(b"PRI * HTTP/2.0\r\n"):
            # The HTTP/2 connection preface (RFC 9113 section 3.4) sent with
            # prior knowledge: this listener speaks HTTP/1.1 only.
            status, detail = 505, "HTTP/2 is not supported on this listener"
        else:
            status, detail = 400, str(exc) or "malformed request"
        if self._phase == _BODY and self._parsing is not None:
            self._fail_exchange(self._parsing, status, detail)
        else:
            self._reject_head(status, detail)

    # --- Parser callbacks (httptools protocol) ---

    def on_message_begin(self) -> None:
        # llhttp calls this at the first byte of a message (empty lines
        # before it are skipped), before it has read the whole method: from
        # here until the head is consumed llhttp may hold bytes of it no
        # other callback has reported (``P`` at the end of a read, say), so
        # the next read is never taken as a simple head (see dataReceived).
        # Per-message state was reset when the previous head was consumed.
        if self._phase != _HEAD:
            if self._read_closed:
                raise _Rejected("reading stopped")  # nothing after a final request
            self._phase = _HEAD
            self._head_since = self._last_rx

    def on_url(self, url: bytes) -> None:
        url = self._url = self._url + url
        if len(url) > self._limits.max_target:
            raise self._reject(414, "request-target too long")

    def on_header(self, name: bytes, raw: bytes) -> None:
        self._progress = True
        name = name.lower()
        value = raw.rstrip(b" \t")  # llhttp strips leading OWS only
        self._header_bytes += len(name) + len(value)
        limits = self._limits
        if self._header_bytes > limits.max_header_bytes:
            raise self._reject(431, "request header fields too large")
        if self._phase != _HEAD:
            return  # trailer fields: counted against the limits, then dropped
        pairs = self._pairs
        pairs.append((name, value))
        if len(pairs) > limits.max_headers:
            raise self._reject(431, "too many request header fields")
        if name in _SPECIAL:
            if name == b"transfer-encoding" and b"\t" in raw:
                # llhttp does not take "chunked<HTAB>" for chunked and fails
                # only after the head was handed over: refuse it up front.
                raise self._reject(400, "HTAB in Transfer-Encoding")
            fields = self._fields
            if fields is None:
                fields = self._fields = {}
            fields.setdefault(name, []).append(value)

    def on_headers_complete(self) -> None:
        self._progress = True
        if self._over_limit:
            raise self._reject(503, "too many connections from this client")
        parser = self._parser
        assert parser is not None
        version_str = parser.get_http_version()
        if version_str == "1.1":
            version = b"1.1"
        elif version_str == "1.0":
            version = b"1.0"
        elif version_str[:2] == "1.":
            version = b"1.1"  # RFC 9112 section 2.3: a higher minor is read as 1.1
        else:
            raise self._reject(505, "only HTTP/1.0 and HTTP/1.1 are supported")
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise self._reject(501, "CONNECT is not supported")
        fields = self._fields or _NO_FIELDS
        target = self._url

        # Host: RFC 9112 section 3.2.
        hosts = fields.get(b"host")
        if hosts is None:
            if version == b"1.1":
                raise self._reject(400, "missing Host header")
            host = b""
        elif len(hosts) > 1:
            raise self._reject(400, "more than one Host header")
        else:
            host = hosts[0]
            if not valid_host(host):
                raise self._reject(400, "invalid Host header")
        try:
            path, query, authority = split_target(method, target)
        except ValueError as e:
            raise self._reject(400, str(e)) from None
        if authority is None:
            authority = host.lower()

        # Framing: RFC 9112 section 6.
        length: int | None
        codings = fields.get(b"transfer-encoding")
        lengths = fields.get(b"content-length")
        if codings is not None:
            if lengths is not None:
                raise self._reject(400, "both Content-Length and Transfer-Encoding")
            if version == b"1.0":
                raise self._reject(400, "Transfer-Encoding in an HTTP/1.0 request")
            elements = [c.lower() for c in split_list(codings)]
            if not elements or elements[-1] != b"chunked":
                raise self._reject(400, "Transfer-Encoding must end in chunked")
            if len(elements) > 1:
                raise self._reject(501, "transfer codings other than chunked are not supported")
            length = None
        elif lengths is not None:
            if len(lengths) != 1 or not lengths[0].isdigit():
                raise self._reject(400, "invalid Content-Length")
            length = int(lengths[0])
        else:
            length = 0
        max_body = self._limits.max_body
        if max_body is not None and length is not None and length > max_body:
            raise self._reject(413, "request content too large")

        # Expect: RFC 9110 section 10.1.1 (ignored in HTTP/1.0).
        expect = False
        expectations = fields.get(b"expect")
        if expectations is not None and version == b"1.1":
            if [e.lower() for e in split_list(expectations)] != [b"100-continue"]:
                raise self._reject(417, "only 100-continue is supported")
            expect = length != 0

        # A head that was arriving when the server began to stop is the last.
        keep_alive = _persistent(version, fields.get(b"connection")) and not self._stopping

        backlogged = self._draining or self._backlogged()
        if (  # noqa: SIM102 (whether the fast path may answer, then its attempt)
            length == 0
            and (method == b"GET" or method == b"HEAD")
            and self._fast_path is not None
            and self._active is None
            and not self._queue
            and not backlogged
        ):
            if self._answer_fast(method, target, path, query, version, authority, keep_alive):
                return
        body = None if length == 0 else _RequestBody(self, length, expect)
        request = Request(
            method,
            target,
            path,
            query,
            version,
            Headers(self._pairs),
            authority,
            self._scheme,
            self._client,
            self._client_port,
            EMPTY_BODY if body is None else body,
        )
        if body is not None and self._body_limit is not None:
            limit = self._body_limit(request)  # the route's, say
            if limit is not None:
                if length is not None and length > limit:
                    raise self._reject(413, "request content too large")
                if max_body is None or limit < max_body:
                    body._max = limit

        if length != 0 and b"upgrade" in fields and parser.should_upgrade():
            self._resync = b"POST / HTTP/1.1\r\n%s\r\n" % (
                b"Transfer-Encoding: chunked\r\n"
                if length is None
                else b"Content-Length: %d\r\n" % length
            )
        # The head is consumed: reset per-message state for the next one.
        self._url = b""
        self._pairs = []
        self._header_bytes = 0
        self._fields = None
        exchange = _Exchange(self, request, body, keep_alive, self._last_rx)
        if body is not None:
            body._exchange = exchange
        self._parsing = exchange
        self._phase = _BODY
        queue = self._queue
        if self._active is None and not queue and not backlogged:
            # Nothing in progress (the usual case): hand it over directly.
            self._active = exchange
            self._dispatch(exchange)
            return
        queue.append(exchange)
        if self._active is None:
            self._advance()
        elif len(queue) >= self._limits.max_pipelined:
            self._update_reading()

    def _answer_simple(self, data: bytes) -> bool:
        """Take ``data`` if it is exactly one simple head; whether it did.

        Most requests, as clients send them, are a ``GET`` with a plain
        path, ``Host`` and a few ordinary fields, arriving in one piece
        between requests. Such a head (:data:`_SIMPLE_HEAD`: a strict subset
        of what llhttp accepts, with none of the fields that need the
        server's checks besides ``Host`` and ``Connection``, within every
        limit) is read here with one regular expression instead of llhttp's
        callbacks, offered to the fast path, and if declined handed to the
        handler, exactly as :meth:`on_headers_complete` and
        :meth:`on_message_complete` would. Anything else is parsed by llhttp
        from its first byte as usual: nothing has been consumed then.
        tests/test_server.py checks that both readings agree.
        """
        m = _SIMPLE_HEAD.fullmatch(data)
        if m is None:
            return False
        method, target, path, query, minor, block = m.groups()
        limits = self._limits
        if (
            self._over_limit
            or len(data) > limits.max_header_bytes
            or len(target) > limits.max_target
            or (_PERCENT in path and _BAD_PCT.search(path) is not None)
        ):
            return False
        pairs = []
        host = None
        connection = None
        # One pass over the lines. The block holds no control character
        # but HTAB and the CRLF ending each line: splitlines splits there
        # only, and strip() (ASCII whitespace, a little cheaper than naming
        # the characters) strips the OWS, SP and HTAB, as on_header does.
        for line in block.splitlines():
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip()
            pairs.append((name, value))
            if name in _SPECIAL:
                if name == b"host" and host is None:
                    host = value
                elif name == b"connection" and connection is None:
                    connection = [value]
                else:
                    return False  # framing, Expect, Upgrade, repeats: the server's checks
        if len(pairs) > limits.max_headers:
            return False
        if host is None or not valid_host(host):
            return False
        version = _SIMPLE_VERSIONS[minor]
        keep_alive = _persistent(version, connection)
        authority = host.lower()
        self._stalled = 0
        self._pairs = pairs
        if not self._answer_fast(method, target, path, query, version, authority, keep_alive):
            # The general path takes it, as on_headers_complete would hand
            # over a request without content (the queue is empty).
            self._uncork()
            self._pairs = []
            request = self._request(method, target, path, query, version, pairs, authority)
            exchange = _Exchange(self, request, None, keep_alive, self._last_rx)
            self._parsing = self._active = exchange
            self._phase = _BODY
            self._dispatch(exchange)
        self.on_message_complete()  # as llhttp would, at the end of the head
        return True

    def _answer_pipelined(self, data: bytes) -> bytes:
        """Take the leading simple heads of pipelined ``data``; the bytes left for llhttp.

        A client that pipelines sends several heads in one read. Each in turn
        is taken as :meth:`_answer_simple` takes a lone head, and the fast
        path's answers are sent together in one write, in order. The first
        head that is not simple, and every head after one the fast path
        declines (handed to the handler, it is answered in its own time: the
        rest queue behind it), are left for llhttp as usual. Anything that
        writes other than a fast answer held here (the handler, a body sent
        from its file, a close) sends what is held first (:meth:`_uncork`).
        """
        self._corked = []
        start = 0
        try:
            limit = self._limits.max_unsent
            while (
                start < len(data)
                and self._active is None
                and not self._closing
                and self._corked_bytes <= limit
            ):
                end = data.find(b"\r\n\r\n", start) + 4
                if end < 4 or not self._answer_simple(data[start:end]):
                    break
                start = end
        finally:
            self._uncork()
        return data[start:]

    def _request(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes | None,
        version: bytes,
        pairs: list[tuple[bytes, bytes]],
        authority: bytes,
    ) -> Request:
        """The :class:`Request` for a head without content read on this connection."""
        return Request(
            method, target, path, query, version, Headers(pairs), authority,
            self._scheme, self._client, self._client_port,
        )  # fmt: skip

    def _answer_fast(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes | None,
        version: bytes,
        authority: bytes,
        keep_alive: bool,
    ) -> bool:
        """Offer a request without content to the fast path; whether it answered.

        The answer goes out in one write with no :class:`Request` or
        exchange built (one is built for the access log, if there is one).
        """
        if not keep_alive:
            connection = b"connection: close\r\n"
        elif version == b"1.0":
            connection = b"connection: keep-alive\r\n"
        else:
            connection = b""
        pairs = self._pairs
        assert self._fast_path is not None
        try:
            answer = self._fast_path(self.factory, method, authority, path, query, pairs, connection)
        except Exception:  # noqa: BLE001 (the general path still answers)
            _log.failure("fast path failed; taking the general path", Failure())
            return False
        if answer is None:
            return False
        response, status, sent, notes, body = answer
        # The head is consumed (as below for the general path); the message
        # ends in on_message_complete, which finds no exchange to finish.
        self._url = b""
        self._pairs = []
        self._header_bytes = 0
        self._fields = None
        self._phase = _BODY
        if body is None:
            self._write(response)
        elif isinstance(body, bytes):
            self._write_parts((response, body))
        elif isinstance(body, FileBackedBody):
            if self._socket is None or self._corked is not None:
                self._write_parts((response, body.data))
            else:
                directwrite.write_file(self.transport, self._socket, response, body.fd, body.data)
        else:
            self._send_fast_file(
                method, target, path, query, version, authority, keep_alive,
                pairs, response, status, sent, notes, body,
            )  # fmt: skip
            return True
        now = self._clock.seconds()
        access_log = self._access_log
        if access_log is not None:
            try:
                fields = self._log_fields
                if fields is not None:  # no Request to build (AccessLog.fields)
                    fields(
                        self._client_log, method, target, version, pairs, status, sent,
                        self._last_rx, now, notes.get("cache", "-").encode("ascii", "replace"),
                    )  # fmt: skip
                else:
                    request = self._request(method, target, path, query, version, pairs, authority)
                    access_log(request, status, sent, self._last_rx, now, notes)
            except Exception:  # noqa: BLE001 (a logging error must not break the connection)
                _log.failure("access log hook failed", Failure())
        if keep_alive:
            self._idle_deadline = now + self._idle_timeout
        else:
            self._close()
        return True

    def _send_fast_file(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        query: bytes | None,
        version: bytes,
        authority: bytes,
        keep_alive: bool,
        pairs: list[tuple[bytes, bytes]],
        head: bytes,
        status: int,
        length: int,
        notes: dict[str, str],
        body_file: BinaryIO,
    ) -> None:
        """Send a fast answer's ``head``, then ``length`` bytes of ``body_file``.

        The body takes as long as the client takes to read it, so from here
        the answer is an ordinary exchange, started with ``head`` as written
        and in progress: pipelined requests queue behind it, the body goes by
        :class:`~accel.streams.FileSender` (``sendfile`` on a plain
        connection), and its end is logged and handled as any other.
        """
        request = self._request(method, target, path, query, version, pairs, authority)
        exchange = _Exchange(self, request, None, keep_alive, self._last_rx)
        exchange.log.update(notes)
        exchange._state = _STARTED
        exchange._status = status
        exchange._mode = _FIXED
        exchange._remaining = length
        self._parsing = exchange
        self._active = exchange
        self._uncork()  # the file's bytes go straight to the socket
        self._write(head)
        FileSender(body_file, exchange, length).start()
        if self._active is exchange:
            self._watch_response()

    def on_body(self, data: bytes) -> None:
        if self._read_closed:
            raise _Rejected("reading stopped")
        self._progress = True
        exchange = self._parsing
        if exchange is not None and exchange.body is not None:
            exchange.body._receive(data)

    def on_message_complete(self) -> None:
        self._progress = True
        if self._resync is not None:
            return  # llhttp skipped the content of an upgrade: re-parsed next
        exchange = self._parsing
        self._parsing = None
        self._phase = _IDLE
        if exchange is None:
            return
        exchange.received = True
        if exchange.body is not None:
            exchange.body._end()
        if not exchange.keep_alive:
            self._stop_reading()
        if exchange is self._active and exchange._state == _DONE:
            self._active = None
            if self._queue:
                self._advance()
            else:
                self._idle()

    def _reject(self, status: int, detail: str) -> _Rejected:
        """Record why parsing stops; the caller raises the result."""
        self._error = (status, detail)
        return _Rejected(detail)

    # --- Exchanges ---

    def _advance(self) -> None:
        """Answer queued requests in order while nothing is in progress."""
        if self._advancing:
            return  # the loop below, further up the stack, carries on
        self._advancing = True
        try:
            queue = self._queue
            while self._active is None and queue and not self._closing:
                if self._draining or self._backlogged():
                    self._wait_for_drain()
                    return
                exchange = queue.popleft()
                self._active = exchange
                if exchange.reject:
                    self._send_error(exchange)
                else:
                    self._dispatch(exchange)
        finally:
            self._advancing = False
        if self._closing:
            return
        if self._active is None and self._phase == _IDLE and not self._queue:
            self._idle()
        elif self._reading_paused:
            self._update_reading()

    def _idle(self) -> None:
        """Nothing queued or in progress: the keep-alive idle time starts
        (or, once the server is stopping, the connection closes)."""
        if self._stopping:
            self._close()
            return
        # The watchdog never sleeps longer than idle_timeout (see _on_timer),
        # so it is due no later than this deadline: no timer call needed.
        self._idle_deadline = self._clock.seconds() + self._idle_timeout
        if self._reading_paused:
            self._update_reading()

    def _dispatch(self, exchange: _Exchange) -> None:
        # What the handler writes at once (a head and a body from memory)
        # leaves in one send when it returns (directwrite.batched).
        directwrite.batched(self._handle, exchange)
        if self._active is exchange:
            self._watch_response()

    def _watch_response(self) -> None:
        """A response goes on after the event that started it: from now on the
        watchdog looks at its sending every quarter of ``send_timeout``."""
        if self._send_queue is not None:
            self._arm(self._clock.seconds() + self._limits.send_timeout / 4)

    def _handle(self, exchange: _Exchange) -> None:
        assert exchange.request is not None
        try:
            self._handler.handle(exchange.request, exchange)
        except Exception:  # noqa: BLE001 (the handler's error, answered as such)
            self._handler_failed(exchange, Failure())

    def _handler_failed(self, exchange: _Exchange | None, failure: Failure) -> None:
        """A handler raised: log it with the request line; 500 or abort."""
        line = exchange._line() if exchange is not None else "?"
        _log.failure("handler failed for {line}", failure, line=line)
        if exchange is None or exchange._state == _DONE:
            return
        if exchange._state == _NEW and not exchange.disconnected and exchange is self._active:
            exchange.reject, exchange.detail = 500, "internal error"
            exchange._lost()  # the handler's further calls are ignored
            self._send_error(exchange)
        else:
            exchange.abort()

    def _response_done(self, exchange: _Exchange, clean: bool) -> None:
        """A response finished (or aborted): log, then reuse or close."""
        if self._access_log is not None:
            self._access(exchange, self._clock.seconds())
        if self._closing:
            return
        if not clean:
            self._close()
            return
        if not exchange._keep:
            if exchange.received:
                self._close()
            else:
                self._close_lingering()  # the client may still be sending its content
            return
        if exchange.received:
            if exchange is self._active:
                self._active = None
                if self._queue:
                    self._advance()
                else:
                    self._idle()
            return
        body = exchange.body
        if body is None:
            return  # no content: on_message_complete follows right away
        remaining = None if body.length is None else body.length - body.received
        if body._expect or (remaining is not None and remaining > self._limits.max_discard):
            self._close_lingering()
            return
        # Read and drop what is left (bounded), then carry on.
        body._drain_limit = body.received + self._limits.max_discard
        body.discard()
        body._expect = False
        self._arm_for_phase()

    def _fail_exchange(self, exchange: _Exchange, status: int, detail: str) -> None:
        """A request whose head was accepted failed while its content was read.

        If no response has started, the client gets ``status``. The handler is
        cut off before its body sink hears of the failure, so that what it
        answers then (an origin error, say) never goes out in its place.
        """
        self._stop_reading()
        answer = (
            exchange is self._active and exchange._state == _NEW and not exchange.disconnected
        )
        if answer:
            exchange.reject, exchange.detail = status, detail
            exchange._lost()  # the handler's further calls are ignored
        if exchange.body is not None:
            exchange.body._fail(RequestBodyError(status, detail))
        if answer:
            self._send_error(exchange)
        elif exchange is self._active:
            if exchange._state == _STARTED:
                exchange.abort()
            else:
                self._close()
        elif exchange._state == _DONE:
            self._close()  # we were draining its content
        else:
            # Still queued: answered with the error in its turn.
            exchange.reject, exchange.detail = status, detail

    def _reject_head(self, status: int, detail: str) -> None:
        """Answer an unparseable head in its turn, then close; read nothing more."""
        self._stop_reading()
        self._phase = _IDLE
        exchange = _Exchange(self, None, None, False, self._last_rx)
        exchange.reject, exchange.detail = status, detail
        self._queue.append(exchange)
        self._advance()

    def _send_error(self, exchange: _Exchange) -> None:
        """Write the error response an exchange was rejected with, then close."""
        status = exchange.reject
        reason = _REASONS.get(status, b"Error")
        text = b"%d %s: %s\n" % (status, reason, exchange.detail.encode("ascii", "replace"))
        factory = self.factory
        request = exchange.request
        self._write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n%s%s\r\n%s"
            % (
                status,
                reason,
                len(text),
                factory.date_line(),
                factory.server_line,
                b"" if request is not None and request.method == b"HEAD" else text,
            )
        )
        exchange._status = status
        exchange._state = _DONE
        exchange._keep = False
        if self._access_log is not None:
            self._access(exchange, self._clock.seconds())
        self._close_lingering()

    def _access(self, exchange: _Exchange, now: float) -> None:
        access_log = self._access_log
        if access_log is None:
            return
        request = exchange.request
        if request is None:
            request = Request(
                b"", b"", b"", None, b"", Headers(), b"", client=self._client, client_port=self._client_port
            )
        try:
            access_log(
                request,
                exchange._status,
                exchange._sent,
                exchange._started_at,
                now,
                exchange.log,
            )
        except Exception:  # noqa: BLE001 (a logging error must not break the connection)
            _log.failure("access log hook failed", Failure())

    def _wind_down(self) -> None:
        """The server is stopping: answer what was read, read nothing more, close.

        An idle connection (no request read or being read) closes after
        :data:`_DRAIN_IDLE_GRACE`, or after answering, with close, a request
        that arrives before that. Otherwise the last request read, or the one whose head or content
        is arriving, is the connection's last: its response says
        ``Connection: close`` if it has not started yet, and the connection
        closes once it is sent (RFC 9112 section 9.6). Requests read before
        it (pipelined) are answered in order first. A pipelined head only
        partly read behind a request in progress is dropped, as a client
        that pipelines must expect (RFC 9112 section 9.3.2). The factory
        aborts what is left when its grace period ends.
        """
        if self._stopping or self._closing:
            return  # closing or lingering already: it ends by itself
        self._stopping = True
        last = self._queue[-1] if self._queue else self._active
        if last is None:
            if self._phase == _IDLE:
                # A keep-alive client sends its next request as soon as it
                # has an answer, so one may be on its way: closing now would
                # lose it (the client sees the connection close unanswered).
                # It gets _DRAIN_IDLE_GRACE to arrive, and is answered with
                # close; a connection still silent then is closed.
                grace = min(_DRAIN_IDLE_GRACE, self._idle_timeout)
                self._idle_deadline = min(self._idle_deadline, self._clock.seconds() + grace)
                self._cancel_timer()
                self._timer = self._clock.callLater(grace, self._on_timer)
            # Else a head is arriving with nothing in progress: it is read
            # and answered with close (see on_headers_complete).
            return
        if not (self._phase == _BODY and self._parsing is last):
            # Its content is in: nothing after it is read.
            self._phase = _IDLE
            self._stop_reading()
        # Else its content still arrives; reading stops at its end
        # (on_message_complete), and a response already sent closes then.
        last.keep_alive = last._keep = False

    # --- Flow control and timers ---

    def _update_reading(self) -> None:
        """Pause or resume the transport to match the reasons to pause."""
        parsing = self._parsing
        pause = (
            self._read_closed
            or self._draining
            or len(self._queue) >= self._limits.max_pipelined
            or self._buffered > self._limits.max_buffered_body
            or (parsing is not None and parsing.body is not None and parsing.body._paused)
        )
        if pause != self._reading_paused and not self._closing:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _stop_reading(self) -> None:
        self._read_closed = True
        self._update_reading()

    def _close(self) -> None:
        """Close once what was written is sent.

        Over TLS the layer sends its ``close_notify`` and would then wait for
        the client's, reading nothing meanwhile: a client that keeps the
        connection open without answering would hold it for ever. The
        initiator of a close need not wait (RFC 8446 section 6.1), so the
        TCP connection below closes as a plain one does, once what waits in
        it (the ``close_notify`` last) is sent. A close that has to wait
        for the client to take what is left is bounded by ``send_timeout``
        (:meth:`_on_close_timer`).
        """
        if self._closing:
            return
        self._uncork()
        self._read_closed = True
        self._update_reading()
        self._closing = True
        self._cancel_timer()
        transport = self.transport
        transport.loseConnection()
        queue = self._send_queue
        if queue is None:
            return
        if self._socket is None and _sent_close_notify(transport):
            queue.loseConnection()
        if self._socket is None or directwrite.waiting(queue):
            self._timer = self._clock.callLater(self._limits.send_timeout / 4, self._on_close_timer)

    def _on_close_timer(self) -> None:
        """A close still waits: for the client to take what is left (aborted
        after ``send_timeout`` without progress), or, over TLS, for the layer
        to send its ``close_notify`` (then the TCP connection closes)."""
        self._timer = None
        queue = self._send_queue
        if queue is None:
            return  # gone meanwhile
        now = self._clock.seconds()
        waiting = self._watch_sending(now)
        if waiting is None:
            return  # aborted
        if not waiting:
            if not queue.disconnecting:
                queue.loseConnection()
            return
        self._timer = self._clock.callLater(self._next_look(now) - now, self._on_close_timer)

    def _watch_sending(self, now: float) -> bool | None:
        """Whether bytes wait for the client, or ``None`` if it has taken
        none of them for ``send_timeout`` (the connection is then aborted).

        The progress watched is the socket becoming writable again
        (:attr:`accel.ports.Server.writable`): a client that reads slowly
        still makes it, one that has stopped reading does not. A transport
        that does not count it (another reactor's) is never found stalled.
        """
        queue = self._send_queue
        if not directwrite.waiting(queue):
            self._tx_since = None
            return False
        writable = getattr(queue, "writable", None)
        if writable is None:
            return True
        since = self._tx_since
        if since is None or writable != self._tx_writable:
            self._tx_since = now
            self._tx_writable = writable
            return True
        limit = self._limits.send_timeout
        if now - since < limit:
            return True
        _log.info(
            "closing the connection from {client}: it took nothing sent to it for {seconds:g} s",
            client=self._client,
            seconds=limit,
        )
        self._closing = self._read_closed = True
        self._cancel_timer()
        self.transport.abortConnection()
        return None

    def _next_look(self, now: float) -> float:
        """When the watchdog next looks at a client that bytes wait for: a
        quarter of ``send_timeout`` on, or when it would run out."""
        limit = self._limits.send_timeout
        since = self._tx_since
        look = now + limit / 4
        if since is not None and now < since + limit < look:
            return since + limit
        return look

    def _close_lingering(self) -> None:
        """Close after an answer, when the client may still be sending content.

        The write side is shut once the answer is sent (FIN); what the client
        still sends is read and dropped until it closes, or for the times
        :class:`ServerLimits` allows (see ``linger_time``). Plain
        connections only: over TLS the connection simply closes.
        """
        if self._closing:
            return
        self._uncork()
        limits = self._limits
        if self._socket is None or limits.linger_time <= 0:
            self._close()
            return
        self._read_closed = self._closing = True
        self._cancel_timer()
        now = self._clock.seconds()
        self._lingering = self._last_rx = now
        self.transport.loseWriteConnection()
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
        self._timer = self._clock.callLater(
            min(limits.linger_timeout, limits.linger_time), self._on_linger_timer
        )

    def _on_linger_timer(self) -> None:
        """Stop lingering when the client has been silent or slow too long.

        Lingering starts once the answer is sent, as nginx's does: while it
        is still being sent the client need send nothing, and only
        ``send_timeout`` applies (to the answer's progress).
        """
        self._timer = None
        limits = self._limits
        now = self._clock.seconds()
        if self._send_queue is not None:
            waiting = self._watch_sending(now)
            if waiting is None:
                return  # aborted: it took nothing sent to it for send_timeout
            if waiting:
                self._lingering = self._last_rx = now
                self._timer = self._clock.callLater(self._next_look(now) - now, self._on_linger_timer)
                return
        assert self._lingering is not None
        deadline = min(self._lingering + limits.linger_time, self._last_rx + limits.linger_timeout)
        if now >= deadline:
            transport = self.transport
            if not directwrite.buffer_empty(transport):
                transport.abortConnection()  # the client does not read its answer either
            else:
                transport.loseConnection()  # the write side is shut: this closes the socket
            return
        self._timer = self._clock.callLater(deadline - now, self._on_linger_timer)

    def _arm(self, deadline: float) -> None:
        """Make sure the watchdog fires no later than ``deadline``."""
        timer = self._timer
        if timer is _QUEUED:
            if self._first_look <= deadline:
                return
            self._cancel_timer()  # leaves the queue, for a timed call of its own
            timer = None
        if timer is None:
            if not self._closing:
                delay = min(deadline - self._clock.seconds(), self._idle_timeout)
                self._timer = self._clock.callLater(max(0.0, delay), self._on_timer)
        elif timer.getTime() > deadline:
            timer.reset(max(0.0, deadline - self._clock.seconds()))

    def _arm_for_phase(self) -> None:
        if self._phase == _HEAD:
            self._arm(self._head_since + self._limits.header_timeout)
        elif self._phase == _BODY:
            parsing = self._parsing
            if parsing is not None and parsing.body is not None and parsing.body._awaiting_client:
                self._arm(self._last_rx + self._limits.body_timeout)

    def _on_timer(self) -> None:
        """The one watchdog per connection: enforce whichever deadline applies now.

        Deadlines are kept as timestamps and the watchdog re-armed lazily, so
        a keep-alive request costs no timer operations.
        """
        self._timer = None
        if self._closing:
            return
        limits = self._limits
        now = self._clock.seconds()
        phase = self._phase
        parsing = self._parsing
        if phase == _HEAD:
            deadline = self._head_since + limits.header_timeout
            if now >= deadline:
                self._reject_head(408, "request head not received in time")
                return
        elif (
            phase == _BODY
            and parsing is not None
            and parsing.body is not None
            and parsing.body._awaiting_client
            and not self._reading_paused
        ):
            deadline = self._last_rx + limits.body_timeout
            if now >= deadline:
                self._fail_exchange(parsing, 408, "request content not received in time")
                return
        elif phase == _IDLE and self._active is None and not self._queue:
            deadline = self._idle_deadline
            if now >= deadline:
                self._close()
                return
        else:
            deadline = now + limits.idle_timeout
        if self._send_queue is not None:
            waiting = self._watch_sending(now)
            if waiting is None:
                return  # aborted: it took nothing sent to it for send_timeout
            if waiting or self._active is not None:
                deadline = min(deadline, self._next_look(now))
        # Never sleep past idle_timeout: _idle() relies on it.
        self._timer = self._clock.callLater(min(deadline - now, limits.idle_timeout), self._on_timer)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is _QUEUED:
            self.factory._unwatch_new()
        elif timer is not None and timer.active():
            timer.cancel()


@implementer(IProtocolNegotiationFactory)
class HTTPServerFactory(ServerFactory):
    """Builds :class:`HTTPServerProtocol` for each client connection.

    ``clock`` is the reactor (a ``Clock`` in tests); ``scheme`` is what the
    listener speaks (``b"https"`` behind TLS) and goes into every
    :class:`Request`; ``server_name`` is sent as ``Server`` unless the
    handler sets one (empty: none). ``body_limit``, if given, is asked for
    each request with content (before the handler sees it) for the most
    content it may carry, such as its route's limit, or ``None``: a declared
    length over it is refused with 413 up front, chunked content with 413
    (or a cut connection, once a response has started) when it goes over.
    ``limits.max_body`` applies as well. ``fast_path`` (see
    :data:`FastPath`) may answer simple requests before the handler is
    involved.
    """

    protocol = HTTPServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        handler: Handler,
        clock: IReactorTime,
        *,
        scheme: bytes = b"http",
        limits: ServerLimits = ServerLimits(),
        access_log: AccessLog | None = None,
        server_name: bytes = b"accel",
        body_limit: Callable[[Request], int | None] | None = None,
        fast_path: FastPath | None = None,
    ) -> None:
        if not isinstance(limits, ServerLimits):
            raise TypeError(f"expected ServerLimits for limits, got {limits!r}")
        self.handler = handler
        self.clock = clock
        self.scheme = scheme
        self.limits = limits
        self.access_log = access_log
        self.body_limit = body_limit
        self._connections: dict[str, int] = {}
        #: Every open connection, for :meth:`drain`.
        self._open: set[HTTPServerProtocol] = set()
        #: Whether :meth:`drain` has begun.
        self.stopping = False
        self._drain_waiters: list[Deferred[None]] = []
        self._drain_deadline: IDelayedCall | None = None
        self.fast_path = fast_path
        #: Counts :meth:`reconfigure` calls: a connection whose count is
        #: older takes the new handler at its next request.
        self.generation = 0
        self.server_line = b"server: %s\r\n" % server_name if server_name else b""
        self._date_second = -1
        self._date_line = b""
        #: New connections whose watchdog has yet to look, in the order of
        #: their first looks (see _watch_new), and how many of them left early.
        self._new: deque[HTTPServerProtocol] = deque()
        self._new_gone = 0
        #: The latest first look queued, and the timed call for the earliest.
        self._new_last = float("-inf")
        self._new_call: IDelayedCall | None = None

    def reconfigure(
        self,
        handler: Handler,
        *,
        limits: ServerLimits,
        body_limit: Callable[[Request], int | None] | None = None,
        fast_path: FastPath | None = None,
    ) -> None:
        """Serve with ``handler`` (a configuration reload) from the next request on.

        The requests a connection has begun to read stay with the handler
        that took them; the next request on every open connection, and
        every new connection, gets ``handler``, ``body_limit`` and
        ``fast_path``. ``limits`` apply to the connections accepted from now
        on (an open one keeps the timers and bounds it started with).
        """
        if not isinstance(limits, ServerLimits):
            raise TypeError(f"expected ServerLimits for limits, got {limits!r}")
        self.handler = handler
        self.limits = limits
        self.body_limit = body_limit
        self.fast_path = fast_path
        self.generation += 1

    def buildProtocol(self, addr: object) -> HTTPServerProtocol:
        return HTTPServerProtocol(self)

    def acceptableProtocols(self) -> list[bytes]:
        """What a TLS listener offers in ALPN (RFC 7301): HTTP/1.1 only, for now.

        Without an answer here, Twisted's TLS set no ALPN callback, and the
        handshake failed ("internal error" alert) for every client that
        offers ALPN, which browsers and curl do.
        """
        return [b"http/1.1"]

    def _admit(self, client: str) -> bool:
        """Count a new connection from ``client``; whether it is within the limit."""
        count = self._connections.get(client, 0) + 1
        self._connections[client] = count
        limit = self.limits.max_connections_per_client
        return limit is None or count <= limit

    def _release(self, client: str) -> None:
        """A connection counted by :meth:`_admit` has closed."""
        count = self._connections[client] - 1
        if count:
            self._connections[client] = count
        else:
            del self._connections[client]

    def _watch_new(self, proto: HTTPServerProtocol, at: float, now: float) -> None:
        """Have the watchdog of ``proto``, a new connection, first look at ``at``.

        Every connection's watchdog is armed when it opens (the header
        timeout), and most connections that send one request close long
        before it would fire: a timed call each (a ``DelayedCall`` built,
        heaped and cancelled) cost a sixth of such a connection's
        instructions (docs/performance.rst). The first look comes a fixed
        time after the connection opens, so the connections enter a queue in
        the order of their looks, and one timed call, for the head of the
        queue, serves them all (:meth:`_look_new`). A connection that closes
        or arms a timer of its own leaves the queue (:meth:`_unwatch_new`).
        A look that would come before one already queued (the clock went
        back, a reload shortened the timeouts) takes a timed call of its own
        instead, so that none is late.
        """
        if at < self._new_last:
            proto._timer = self.clock.callLater(at - now, proto._on_timer)
            return
        self._new_last = proto._first_look = at
        proto._timer = _QUEUED
        self._new.append(proto)
        if self._new_call is None:
            self._new_call = self.clock.callLater(at - now, self._look_new)

    def _unwatch_new(self) -> None:
        """A connection left the queue of new ones before its look (its
        ``_timer`` is no longer _QUEUED).

        It stays in the queue, passed over when reached, until such
        connections are over half of the queue: then the queue keeps the
        others only (what is left in it costs memory, not time).
        """
        gone = self._new_gone + 1
        queue = self._new
        if gone > 64 and gone > len(queue) >> 1:
            waiting = [proto for proto in queue if proto._timer is _QUEUED]
            queue.clear()
            queue.extend(waiting)
            gone = 0
        self._new_gone = gone

    def stopFactory(self) -> None:
        """The last listener using the factory has stopped: the timed call of
        the queue of new connections goes too, unless one still waits in it."""
        if any(proto._timer is _QUEUED for proto in self._new):
            return
        self._forget_new()

    def _forget_new(self) -> None:
        """Empty the queue of new connections (none waits in it) and cancel its timed call."""
        look, self._new_call = self._new_call, None
        if look is not None and look.active():
            look.cancel()
        self._new.clear()
        self._new_gone = 0

    def _look_new(self) -> None:
        """The first look of the queued new connections that are due."""
        self._new_call = None
        queue = self._new
        clock = self.clock
        while queue:
            proto = queue[0]
            if proto._timer is not _QUEUED:
                queue.popleft()
                self._new_gone -= 1
                continue
            now = clock.seconds()
            if proto._first_look > now:
                self._new_call = clock.callLater(proto._first_look - now, self._look_new)
                return
            queue.popleft()
            proto._timer = None
            try:
                proto._on_timer()
            except Exception:  # noqa: BLE001 (as the reactor's timed calls: log, look at the others)
                _log.failure("connection watchdog failed", Failure())

    @property
    def open_connections(self) -> int:
        """Client connections open now."""
        return len(self._open)

    def drain(self, timeout: float) -> Deferred[None]:
        """Stop serving gracefully; the result fires once every connection is closed.

        Call it once the listener has stopped accepting. Idle connections
        (and one made meanwhile) close after :data:`_DRAIN_IDLE_GRACE`, or
        once they have answered, with ``Connection: close``, a request that
        arrives before that; a connection with a request in progress answers
        the requests it has read, the last with ``Connection: close``, reads
        nothing more and closes (see :meth:`HTTPServerProtocol._wind_down`).
        After ``timeout`` seconds (at once for 0) the connections still open
        are aborted, which cuts their responses short: a client can tell, as
        their framing never completes. Calling it again waits for the same
        end.
        """
        done: Deferred[None] = Deferred()
        self._drain_waiters.append(done)
        if not self.stopping:
            self.stopping = True
            for proto in list(self._open):
                proto._wind_down()
            if self._open:
                if timeout > 0:
                    self._drain_deadline = self.clock.callLater(timeout, self.abort_open)
                else:
                    self.abort_open()
        self._check_drained()
        return done

    def abort_open(self) -> None:
        """The grace period is over (or the operator insists): abort every
        connection still open."""
        deadline, self._drain_deadline = self._drain_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()  # the operator insisted before the timeout
        if self._open:
            _log.warn(
                "stopping: aborting {count} client connection(s) still open",
                count=len(self._open),
            )
        for proto in list(self._open):
            proto.transport.abortConnection()

    def _gone(self, proto: HTTPServerProtocol) -> None:
        """A connection has closed."""
        self._open.discard(proto)
        if self.stopping:
            self._check_drained()

    def _check_drained(self) -> None:
        if self._open or not self.stopping:
            return
        deadline, self._drain_deadline = self._drain_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        self._forget_new()  # only connections gone are left in it
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def connections_from(self, client: str) -> int:
        """Open connections from ``client`` (an address as in ``Request.client``)."""
        return self._connections.get(client, 0)

    def date_line(self) -> bytes:
        """``date: <IMF-fixdate>\\r\\n`` for now, formatted at most once a second."""
        second = int(self.clock.seconds())
        if second != self._date_second:
            self._date_second = second
            self._date_line = b"date: %s\r\n" % format_http_date(second)
        return self._date_line


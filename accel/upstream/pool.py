"""A pool of origins: choice and passive health, keep-alive connections, retries.

:class:`OriginPool` is the :class:`Upstream` the proxy forwards to. Per
request it picks an origin round-robin among the healthy ones, reuses the
most recently pooled connection to it (LIFO: warm connections stay warm,
cold ones age out) or opens one, and sends the request. Before the
response head arrives it may try again:

* a reused connection that closes before any response byte is the
  keep-alive race (RFC 9112 section 9.3.1: the origin closed it while the
  request was on its way); an idempotent request whose body was not
  consumed is retried once on a new connection to the same origin, and the
  origin is not blamed;
* a connect failure moves to the next origin whatever the method (nothing
  was sent);
* a timeout or a connection lost before the head moves to the next origin
  for idempotent requests whose body was not consumed (RFC 9110 section
  9.2.2), as nginx's default ``proxy_next_upstream error timeout``;
* a protocol error (garbage, bad framing) is final.

After the head nothing is retried: errors reach the body's sink.

With ``max_connections_per_origin``, an origin whose connections (busy,
idle or being opened) are at the cap is passed over for one with room;
when none has room the request waits in the chosen origin's queue (first
come, first served) for a connection released by its exchange, which it
reuses at once, or for one to close, which lets it open another. A full
queue or a wait longer than ``queue_timeout`` is :class:`UpstreamBusy`
(503), which passive health ignores: a busy origin is not a failing one.
"""

from __future__ import annotations

import contextlib
import re
import typing
from collections import deque
from collections.abc import Callable, Sequence

from OpenSSL.crypto import Error as OpenSSLError
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.http.headers import Headers
from accel.http.model import EMPTY_BODY, BodySource
from accel.tls import tls_client_endpoint
from accel.upstream.connection import (
    Exchange,
    OriginConnection,
    OriginResponse,
    encode_fields,
    request_head,
)
from accel.upstream.errors import (
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from accel.upstream.health import OriginHealth, choose_origin
from accel.upstream.origin import Origin, UpstreamSettings

__all__ = ["FailureCallback", "InterimCallback", "OriginPool", "ResponseCallback", "Upstream"]

_log = Logger()

#: RFC 9110 section 9.2.2.
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


#: Called with the status, reason and fields of each interim (1xx) response.
InterimCallback = Callable[[int, bytes, Headers], None]
#: Called with the response head of a request sent with :meth:`OriginPool.send`.
ResponseCallback = Callable[[OriginResponse], None]
#: Called with why a request sent with :meth:`OriginPool.send` failed.
FailureCallback = Callable[[Failure], None]


class Upstream(typing.Protocol):
    """Where the proxy sends requests it does not answer itself."""

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource = EMPTY_BODY,
        interim: InterimCallback | None = None,
    ) -> Deferred[OriginResponse]:
        """Send a cleaned request; fire with the response head or an UpstreamError.

        The Deferred is cancellable until it fires (the client went away):
        the connection is closed. ``interim`` is called with each interim
        response that comes before the head (1xx other than 100 and 101),
        for a proxy to forward (RFC 9110 section 15.2).
        """


def _trust_root(ca_file: str) -> object:
    """Trust exactly the certificates in a PEM bundle.

    Configuration checks the bundle first; one changed in between still
    fails with a ``ValueError`` of one line, naming the file.
    """
    try:
        with open(ca_file, "rb") as bundle:
            blocks = _PEM_CERTIFICATE.findall(bundle.read())
    except OSError as e:
        raise ValueError(f"cannot read CA bundle {ca_file!r}: {e.strerror}") from None
    if not blocks:
        raise ValueError(
            f"expected PEM certificates in CA bundle {ca_file!r}, found none"
        )
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except OpenSSLError as e:
        raise ValueError(f"CA bundle {ca_file!r} holds an invalid certificate ({e})") from None
    return trustRootFromCertificates(certificates)


def _endpoint(origin: Origin, reactor: object, timeout: float) -> IStreamClientEndpoint:
    """How to reach ``origin``; IP literals skip name resolution."""
    endpoint: IStreamClientEndpoint
    if origin.scheme == "unix":
        return UNIXClientEndpoint(reactor, origin.path, timeout=timeout)
    if isIPAddress(origin.host):
        endpoint = TCP4ClientEndpoint(
            reactor, origin.host, origin.port, timeout=timeout
        )
    elif isIPv6Address(origin.host):
        endpoint = TCP6ClientEndpoint(
            reactor, origin.host, origin.port, timeout=timeout
        )
    else:
        endpoint = HostnameEndpoint(reactor, origin.host, origin.port, timeout=timeout)
    if origin.tls:
        trust = None if origin.ca_file is None else _trust_root(origin.ca_file)
        endpoint = tls_client_endpoint(optionsForClientTLS(origin.host, trustRoot=trust), endpoint)
    return endpoint


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, home: _OriginHome) -> None:
        self._home = home

    def buildProtocol(self, addr: IAddress) -> OriginConnection:
        return OriginConnection(self._home, self._home.origin.tls)


class _OriginHome:
    """One origin's share of the pool: its connections and the requests waiting
    for one, health, how to connect.
    """

    def __init__(
        self, origin: Origin, reactor: IReactorTime, settings: UpstreamSettings
    ) -> None:
        self.origin = origin
        self.clock = reactor
        self.settings = settings
        self.health = OriginHealth()
        self.idle: list[OriginConnection] = []
        #: Connections made and not yet lost, busy or idle, and connections
        #: being made: what ``max_connections_per_origin`` caps.
        self.open: set[OriginConnection] = set()
        self.connecting = 0
        #: Calls waiting for a connection at the cap, first come first served.
        self.waiting: deque[_Call] = deque()
        self.closing = False
        self._endpoint = _endpoint(origin, reactor, settings.connect_timeout)
        self._factory = _ConnectionFactory(self)

    def checkout(self) -> OriginConnection | None:
        """The most recently pooled live connection, if any."""
        idle = self.idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    def has_room(self) -> bool:
        """Whether one more connection may be opened."""
        cap = self.settings.max_connections_per_origin
        return not cap or len(self.open) + self.connecting < cap

    def crowding(self) -> int:
        """How full the origin is, for :func:`choose_origin`.

        0: a connection to spare (idle, or room to open one); 1: a request
        would wait in the queue; 2: the queue is full too.
        """
        if self.idle or self.has_room():
            return 0
        return 1 if len(self.waiting) < self.settings.queue else 2

    def release(self, connection: OriginConnection) -> None:
        """Hand a connection that can carry another request to the first waiting
        call, or pool it; beyond ``max_idle_per_origin`` the oldest idle one goes.
        """
        if self.waiting:
            self.waiting.popleft().admitted(connection)
            return
        if self.closing or self.settings.max_idle_per_origin == 0:
            connection.transport.loseConnection()
            return
        idle = self.idle
        if len(idle) >= self.settings.max_idle_per_origin:
            idle.pop(0).transport.loseConnection()
        idle.append(connection)
        connection.watchdog.arm(self.settings.keepalive_timeout)

    def forget(self, connection: OriginConnection) -> None:
        """A connection closed: its place under the cap goes to a waiting call."""
        self.open.discard(connection)
        with contextlib.suppress(ValueError):
            self.idle.remove(connection)
        self._admit()

    def _admit(self) -> None:
        """Let waiting calls open connections while there is room, in order."""
        waiting = self.waiting
        while waiting and self.has_room():
            waiting.popleft().admitted(None)

    def connect(self) -> Deferred[OriginConnection]:
        """A new connection, ready (TLS handshake done) within ``connect_timeout``."""
        name, limit = self.origin.name, self.settings.connect_timeout
        timed_out = False
        self.connecting += 1
        connecting = self._endpoint.connect(self._factory)
        connecting.addCallback(lambda connection: connection.ready)

        def expire() -> None:
            nonlocal timed_out
            timed_out = True
            connecting.cancel()

        timer = self.clock.callLater(limit, expire)

        def settle(result: OriginConnection | Failure) -> OriginConnection | Failure:
            if timer.active():
                timer.cancel()
            self.connecting -= 1
            if not isinstance(result, Failure):
                self.open.add(result)
                return result
            self._admit()  # this attempt's place is free
            if result.check(UpstreamError):
                return result
            if timed_out or result.check(ConnectTimeoutError):
                return Failure(
                    UpstreamTimeout(f"{name}: connect timed out after {limit:g}s")
                )
            if result.check(CancelledError):
                return result
            return Failure(
                UpstreamConnectError(
                    f"{name}: cannot connect: {result.getErrorMessage()}"
                )
            )

        return connecting.addBoth(settle)

    def failed(self) -> None:
        settings = self.settings
        self.health = self.health.failed(
            self.clock.seconds(), settings.max_fails, settings.fail_timeout
        )

    def succeeded(self) -> None:
        self.health = self.health.succeeded()

    def close(self) -> Deferred[None]:
        """Stop pooling: fail the waiting calls, close the idle connections."""
        waiting, self.waiting = self.waiting, deque()
        for call in waiting:
            call.refused(
                UpstreamConnectError(f"{self.origin.name}: the origin pool closed")
            )
        return self.retire()

    def retire(self) -> Deferred[None]:
        """Stop pooling: close the idle connections, and each busy one once
        its exchange is done (waiting calls still get theirs first)."""
        self.closing = True
        idle, self.idle = self.idle, []
        return DeferredList([connection.close() for connection in idle]).addCallback(
            lambda _: None
        )


class _Call:
    """One request through the pool, across retries, until the head or a final error.

    Exactly one of ``on_response`` and ``on_failure`` is called, once,
    unless :meth:`cancel` comes first; the call then lets go of both.
    """

    # Class-level defaults: one store fewer per request for each (this is
    # built for every request that reaches an origin).
    _home: _OriginHome | None = None
    _connecting: Deferred[OriginConnection] | None = None
    #: The queue timeout, while waiting in ``_home.waiting``.
    _waiting: IDelayedCall | None = None
    _exchange: Exchange | None = None
    _raced = False
    _cancelled = False
    #: Why the last attempt failed (``None``: no origin was tried).
    _error: Exception | None = None

    def __init__(
        self,
        pool: OriginPool,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource,
        interim: InterimCallback | None,
        on_response: ResponseCallback,
        on_failure: FailureCallback,
    ) -> None:
        self._on_response: ResponseCallback | None = on_response
        self._on_failure: FailureCallback | None = on_failure
        self._interim = interim
        self._pool = pool
        self._method = method
        self._target = target
        self._fields, self._has_host = encode_fields(method, target, headers)
        self._body = body
        self._idempotent = method in _IDEMPOTENT
        self._tried: set[int] = set()

    def next_origin(self) -> None:
        pool = self._pool
        limit = pool.settings.tries or len(pool._homes)
        index = pool._choose(self._tried) if len(self._tried) < limit else None
        if index is None:
            self._fail(self._error or UpstreamConnectError("no origin to try"))
            return
        self._tried.add(index)
        home = self._home = pool._homes[index]
        connection = home.checkout()
        if connection is not None:
            self._send(connection)
        elif home.has_room():
            self._connect(home)
        elif len(home.waiting) < home.settings.queue:
            home.waiting.append(self)
            self._waiting = home.clock.callLater(
                home.settings.queue_timeout, self._waited_too_long
            )
        else:
            settings = home.settings
            self._fail(
                UpstreamBusy(
                    f"{home.origin.name}: {settings.max_connections_per_origin}"
                    f" connections open (the cap) and the queue full"
                    f" ({settings.queue} waiting)"
                )
            )

    def _connect(self, home: _OriginHome) -> None:
        connecting = self._connecting = home.connect()
        connecting.addCallbacks(self._connected, self._connect_failed)

    def admitted(self, connection: OriginConnection | None) -> None:
        """This waiting call's turn: reuse ``connection``, or open one if None."""
        self._waiting.cancel()  # type: ignore[union-attr]
        self._waiting = None
        if connection is not None:
            self._send(connection)
        else:
            self._connect(self._home)  # type: ignore[arg-type]

    def refused(self, error: Exception) -> None:
        """This waiting call will get no connection (the pool closed)."""
        self._waiting.cancel()  # type: ignore[union-attr]
        self._waiting = None
        self._fail(error)

    def _waited_too_long(self) -> None:
        self._waiting = None
        home: _OriginHome = self._home  # type: ignore[assignment]
        home.waiting.remove(self)
        settings = home.settings
        self._fail(
            UpstreamBusy(
                f"{home.origin.name}: no connection came free within"
                f" {settings.queue_timeout:g}s"
                f" ({settings.max_connections_per_origin} open, the cap)"
            )
        )

    def _connected(self, connection: OriginConnection) -> None:
        self._connecting = None
        self._send(connection)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting = None
        if self._cancelled:
            return
        self._home.failed()  # type: ignore[union-attr]
        self._error = failure.value  # type: ignore[assignment]
        self.next_origin()  # nothing was sent: safe for any method

    def _send(self, connection: OriginConnection) -> None:
        home = connection.home
        origin = home.origin
        target = self._target
        if origin.prefix and target.startswith(b"/"):
            target = origin.prefix + target
        head = request_head(
            self._method,
            target,
            self._fields,
            None if self._has_host else origin.authority,
            self._body.length,
        )
        exchange = self._exchange = Exchange(
            connection, self, self._method, head, self._body
        )
        connection.send(exchange)

    def interim_received(
        self, exchange: Exchange, status: int, reason: bytes, headers: Headers
    ) -> None:
        if self._interim is not None and not self._cancelled:
            self._interim(status, reason, headers)

    def head_received(self, exchange: Exchange, response: OriginResponse) -> None:
        self._exchange = None
        self._home.succeeded()  # type: ignore[union-attr]
        on_response = self._on_response
        if on_response is None:
            return  # cancelled
        self._on_response = self._on_failure = None
        try:
            on_response(response)
        except Exception:  # noqa: BLE001 (as a Deferred callback's error: logged)
            # What a Deferred's callback raising would be (logged, the
            # origin connection left to the body's reader), not an error
            # of the origin connection delivering the head.
            _log.failure("unexpected error handling an origin response")

    def exchange_failed(self, exchange: Exchange, error: Exception) -> None:
        self._exchange = None
        home = self._home
        replayable = self._idempotent and not exchange.body_started
        if exchange.reused and exchange.lost_early:
            if replayable and not self._raced:
                self._raced = True
                # On a new connection that takes the lost one's place under
                # the cap (the pool forgets it once this returns).
                self._connect(home)  # type: ignore[arg-type]
                return
        elif isinstance(error, UpstreamError):
            home.failed()  # type: ignore[union-attr]
        self._error = error
        if (
            replayable
            and isinstance(error, UpstreamError)
            and not isinstance(error, UpstreamProtocolError)
        ):
            self.next_origin()
        else:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Tell the caller the request failed; the call lets go of its callbacks.

        A Deferred's callbacks hold its canceller, this call: letting go
        leaves no cycle for the cyclic GC (see :meth:`OriginPool.request`).
        """
        on_failure = self._on_failure
        if on_failure is None:
            return  # cancelled
        self._on_response = self._on_failure = None
        on_failure(Failure(error))

    def cancel(self) -> None:
        """The caller gave up: close the connection; neither callback is called.

        Nothing once a callback was called (as cancelling a fired Deferred).
        """
        if self._on_failure is None:
            return
        self._on_response = self._on_failure = None
        self._cancelled = True
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
            self._home.waiting.remove(self)  # type: ignore[union-attr]
        if self._connecting is not None:
            self._connecting.cancel()
        if self._exchange is not None:
            self._exchange.abort()


def _nothing() -> None:
    """The cancel of a request that failed at once."""


class OriginPool:
    """Origins behind one name, with keep-alive connections and passive health.

    ``reactor`` provides TCP/UNIX connections and time (``callLater``,
    ``seconds``): the real reactor in service, a ``MemoryReactorClock`` in
    tests. Raises ``ValueError`` for an empty origin list or an unreadable
    CA bundle.
    """

    def __init__(
        self,
        origins: Sequence[Origin],
        reactor: IReactorTime,
        settings: UpstreamSettings | None = None,
    ) -> None:
        if not origins:
            raise ValueError("expected at least one origin, got none")
        self.settings = settings or UpstreamSettings()
        self._homes = [_OriginHome(o, reactor, self.settings) for o in origins]
        self._clock = reactor
        self._cursor = 0
        self._closed = False

    @property
    def origins(self) -> list[Origin]:
        return [home.origin for home in self._homes]

    def health(self, origin: Origin) -> OriginHealth:
        """The passive health record of ``origin``."""
        for home in self._homes:
            if home.origin == origin:
                return home.health
        raise KeyError(origin)

    def idle_connections(self, origin: Origin) -> int:
        """How many idle connections to ``origin`` are pooled."""
        return sum(len(home.idle) for home in self._homes if home.origin == origin)

    def open_connections(self, origin: Origin) -> int:
        """How many connections to ``origin`` are open or being opened (busy or idle)."""
        return sum(
            len(home.open) + home.connecting
            for home in self._homes
            if home.origin == origin
        )

    def waiting_requests(self, origin: Origin) -> int:
        """How many requests wait for a connection to ``origin`` (at its cap)."""
        return sum(len(home.waiting) for home in self._homes if home.origin == origin)

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource = EMPTY_BODY,
        interim: InterimCallback | None = None,
    ) -> Deferred[OriginResponse]:
        """Forward one request; see :class:`Upstream`.

        Raises ``ValueError`` at once for a head that cannot be sent safely
        (CR/LF in a field, whitespace in the target).
        """
        if self._closed:
            return fail(UpstreamConnectError("the origin pool is closed"))
        cancel: Callable[[], None] | None = None
        # Cancelling it cancels the call (which holds its callback and
        # errback until it fires one, then lets go: no cycle is left).
        deferred: Deferred[OriginResponse] = Deferred(lambda _: cancel())  # type: ignore[misc]
        cancel = self.send(
            method, target, headers, body, interim, deferred.callback, deferred.errback
        )
        return deferred

    def send(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource,
        interim: InterimCallback | None,
        on_response: ResponseCallback,
        on_failure: FailureCallback,
    ) -> Callable[[], None]:
        """Forward one request as :meth:`request` does, without a Deferred; its cancel.

        Exactly one of ``on_response`` (the head) and ``on_failure`` (why
        not, as a :class:`Failure` of an :class:`UpstreamError`) is called,
        once, possibly before this returns, unless the returned cancel is
        called first (then neither is, and the connection is closed; after
        either, cancel does nothing). For the proxy's pass-through path, on
        every request: a Deferred between the pool and the relay of its
        answer cost about 4 % of a request's instructions. What
        ``on_response`` raises is logged. Raises ``ValueError`` as
        :meth:`request` does.
        """
        if self._closed:
            on_failure(Failure(UpstreamConnectError("the origin pool is closed")))
            return _nothing
        call = _Call(self, method, target, headers, body, interim, on_response, on_failure)
        call.next_origin()
        return call.cancel

    def _choose(self, exclude: set[int]) -> int | None:
        """The origin to try next: see :func:`choose_origin`.

        One origin is tried unless it already was, whatever its health or
        crowding (with nowhere else to go, :func:`choose_origin` tries even
        an origin that is down): nothing to weigh, the usual case.
        """
        homes = self._homes
        if len(homes) == 1:
            return None if 0 in exclude else 0
        index = choose_origin(
            [home.health for home in homes],
            self._cursor,
            exclude,
            self._clock.seconds(),
            [home.crowding() for home in homes]
            if self.settings.max_connections_per_origin
            else None,
        )
        if index is not None:
            self._cursor = index + 1
        return index

    def retire(self) -> Deferred[None]:
        """Let the requests in flight finish without this pool keeping anything.

        For a configuration reload, where a new pool takes over: idle
        connections close now; requests in flight, waiting for a connection
        or still made through this pool (a retry, a background fill) are
        served, each connection closing once its exchange is done rather
        than returning to the pool. Fires when the idle connections are
        closed.
        """
        return DeferredList([home.retire() for home in self._homes]).addCallback(
            lambda _: None
        )

    def close(self) -> Deferred[None]:
        """Stop pooling; fire when idle connections are closed.

        Requests in flight finish; their connections close afterwards.
        Requests waiting for a connection fail (:class:`UpstreamConnectError`).
        """
        self._closed = True
        return DeferredList([home.close() for home in self._homes]).addCallback(
            lambda _: None
        )

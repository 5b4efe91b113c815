"""The accelerator: the handler that ties routes, the cache and origins together.

For each request the :class:`Accelerator` picks a route, and then:

* not cacheable here (the route has no cache, the store is off): forward it;
* an unsafe method: forward it, then invalidate what the answer says is
  now out of date (RFC 9111 section 4.4);
* GET or HEAD on a caching route: look the URL up in the store, select the
  variant whose ``Vary`` fields match, and let :func:`accel.cache.policy.decide`
  say whether it is served (fresh, or stale where allowed), validated with
  the origin first, or served while validated in the background;
* on a miss, concurrent requests for one key collapse into one origin fetch
  (:class:`~accel.cache.collapse.Collapser`); the response streams to the
  client and into the store at once (:class:`~accel.streams.Relay`) and is
  kept only if the policy allows it and the body arrived whole. While it is
  being stored, the collapsed requests are answered from it as it streams:
  they follow the spool file as it grows (:class:`~accel.streams.Feed`),
  each at its own client's pace.

Cache fills always fetch the whole representation with GET and without the
client's conditional or range fields; accel then answers those itself from
what it has (RFC 9110 sections 13 and 14), as nginx and Varnish do.

Fresh hits are also remembered, ready to send, in a
:class:`~accel.cache.memory.HotTier` (small bodies in memory, large ones as
the path of their stored file); the wire layer offers each simple request to
:meth:`Accelerator.fast_hit` first, which answers a remembered hit with a
dictionary lookup, a clock comparison and one write (a large body then goes
by ``sendfile``), and declines everything else (see its docstring for exactly
what it takes).

Everything here sees only the wire-independent model of
:mod:`accel.http.model`; decisions are the pure functions of
:mod:`accel.cache.policy`. Origin errors become clean 502/504 answers here
and nowhere else.
"""

from __future__ import annotations

import os
from functools import partial
from typing import BinaryIO, Protocol, assert_never

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.cache import policy
from accel.cache.collapse import Collapser
from accel.cache.keys import DEFAULT_RECIPE, KeyRecipe, primary_key
from accel.cache.memory import HotEntry, HotTier
from accel.cache.store import Entry, Store
from accel.config import ClientAccess
from accel.forwarding import (
    ForwardingPolicy,
    request_headers_for_origin,
    response_headers_for_client,
)
from accel.http.headers import Headers
from accel.http.model import BodySink, BodySource, Request, Responder
from accel.routing import Router
from accel.streams import BodyWriter, Feed, FileSender, Relay
from accel.upstream import InterimCallback, OriginResponse, UpstreamError

__all__ = ["Accelerator", "CacheRules", "Route", "simple_response"]

_log = Logger()

_GET = b"GET"
_HEAD = b"HEAD"

#: Client fields that make a request conditional or partial; a cache fill
#: drops them and accel evaluates them itself against what it has.
_CONDITIONAL_FIELDS = (
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"range",
)

#: What ``Allow`` says when accel answers for itself: the methods it forwards.
_ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

#: A request with no fields: what any client could have asked.
_NO_FIELDS = Headers()

_ORIGIN_FAILURE_STATUSES = frozenset({500, 502, 503, 504})

#: Request fields that send a request down the general path even when its
#: answer is in the hot tier: conditionals and ranges (evaluated against the
#: stored response there), request cache directives (RFC 9111 section
#: 5.2.1, and ``Pragma``, section 5.4), and ``Authorization`` (section 3.5).
_NOT_FAST = frozenset(
    {*_CONDITIONAL_FIELDS, b"cache-control", b"pragma", b"authorization"}
)
#: Fields the wire layer manages, dropped from a stored head as
#: :meth:`accel.http.server._Exchange.start` drops them.
_WIRE_FIELDS = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"age"}
)
_HIT_NOTES = {"cache": "HIT"}


class _WireFactory(Protocol):
    """Structural: what :meth:`Accelerator.fast_hit` reads of the server's factory."""

    scheme: bytes
    server_line: bytes


class Upstream:
    """Structural: what a route forwards to (an origin pool, or parents)."""

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource,
        interim: InterimCallback | None = None,
    ) -> Deferred[OriginResponse]: ...

    def close(self) -> Deferred[None]: ...


@frozen
class CacheRules:
    """A caching route's settings, resolved for the request path.

    ``range_fetch_max``: a range request that misses fetches the whole object
    into the cache only if it is at most this many bytes; larger ones are
    passed through with their ``Range``.
    """

    policy: policy.PolicySettings = policy.DEFAULT_SETTINGS
    recipe: KeyRecipe = DEFAULT_RECIPE
    range_fetch_max: int = 64 * 1024 * 1024
    #: Fields for this cache alone (RFC 9213), removed before responses
    #: go downstream: accel's targeted field, and CDN-Cache-Control when the
    #: operator says this is the last CDN hop.
    strip: tuple[bytes, ...] = (b"accel-cache-control",)


@define
class Route:
    """One route's runtime parts, built from the configuration at start-up.

    ``access``: which clients may use the route (403 for others);
    ``hide_headers``: origin response fields removed as responses arrive, so
    they reach neither clients nor the store; ``max_body``: a request whose
    declared Content-Length exceeds it gets 413 without reaching the origin.
    """

    upstream: Upstream
    forwarding: ForwardingPolicy = ForwardingPolicy()
    cache: CacheRules | None = None
    name: str = "/"
    access: ClientAccess | None = None
    hide_headers: tuple[bytes, ...] = ()
    #: The most request content accepted, or None: see :meth:`Accelerator.body_limit`.
    max_body: int | None = None


_REASONS = {
    304: b"Not Modified",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    416: b"Range Not Satisfiable",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def simple_response(
    responder: Responder,
    status: int,
    message: bytes,
    extra: Headers | None = None,
) -> None:
    """Answer with a short plain-text body (never origin internals)."""
    headers = extra.copy() if extra is not None else Headers()
    body = message + b"\n"
    headers.add(b"content-type", b"text/plain; charset=utf-8")
    headers.add(b"content-length", b"%d" % len(body))
    headers.setdefault(b"cache-control", b"no-store")
    responder.start(status, _REASONS.get(status, b"Error"), headers)
    responder.write(body)
    responder.finish()


def interim_relay(route: Route, responder: Responder) -> InterimCallback:
    """Pass an origin's interim (1xx) responses on to the client.

    RFC 9110 section 15.2: a proxy MUST forward 1xx responses (here 102,
    103 and any other; the upstream side keeps ``100 Continue``, accel
    answering ``Expect`` itself). Their fields are treated as a final
    head's: hop-by-hop and the route's hidden fields removed, ``Via``
    added. The server never sends them to an HTTP/1.0 client. They are not
    stored: only the final response is (RFC 9111 section 3).
    """

    def relay(status: int, reason: bytes, headers: Headers) -> None:
        if responder.disconnected:
            return
        if route.hide_headers:
            headers.remove(*route.hide_headers)
        # The origin connection is HTTP/1.1: only that version carries 1xx.
        responder.start(status, reason, response_headers_for_client(headers, b"1.1", route.forwarding))

    return relay


class _Drain:
    """A body sink that throws the body away (so the connection is reusable)."""

    def data(self, chunk: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def fail(self, reason: Exception) -> None:
        pass


_DRAIN: BodySink = _Drain()


class _Watched:
    """An origin response body that logs, once, a failure after the head.

    Failures before the head are logged where the request fails; this covers
    the rest (a reset, a timeout or broken framing mid-body), which otherwise
    only shows as a truncated response to the client. Naming the origin is
    the upstream error's job: its text starts with the origin's name.
    """

    __slots__ = ("_body", "_sink", "_route", "_request", "length")

    def __init__(self, response: OriginResponse, route: Route, request: Request) -> None:
        self._body = response.body
        self._route = route
        self._request = request
        self._sink: BodySink = _DRAIN
        self.length = response.body.length

    # BodySource

    def deliver(self, sink: BodySink) -> None:
        self._sink = sink
        self._body.deliver(self)

    def pause(self) -> None:
        self._body.pause()

    def resume(self) -> None:
        self._body.resume()

    def discard(self) -> None:
        self._body.discard()

    # BodySink

    def data(self, chunk: bytes) -> None:
        self._sink.data(chunk)

    def end(self) -> None:
        self._sink.end()

    def fail(self, reason: Exception) -> None:
        request = self._request
        _log.warn(
            "origin body failed for {method} {target} on route {route}: {error}",
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
            route=self._route.name,
            error=str(reason),
        )
        self._sink.fail(reason)


@define(slots=True)
class _Lookup:
    """One GET/HEAD on a caching route, carried through lookup and fetch."""

    route: Route
    rules: CacheRules
    request: Request
    responder: Responder | None
    key: str
    #: The store's change stamp for ``key`` before the latest lookup.
    generation: int | None = None
    #: When the latest lookup decided (the ``now`` of its ages and ttls).
    looked_up_at: float = 0.0
    #: Times this request already waited for another's fetch.
    waited: int = 0
    collapsed: bool = False


@define(slots=True)
class _Fill:
    """An origin fetch made for the cache (miss, revalidation or background)."""

    lookup: _Lookup
    #: The stored entry being revalidated, if any.
    entry: Entry | None
    #: RFC 9211 ``fwd`` reason.
    fwd: str
    #: Whether this fetch holds the collapsing lock for its key.
    leader: bool
    #: Serve the stored entry if the origin fails (RFC 5861 stale-if-error).
    stale_on_error: bool = False
    #: Nobody waits on the answer: a background revalidation or range fill.
    background: bool = False
    request_time: float = 0.0
    done: bool = field(default=False)


@frozen
class _Shared:
    """A fill being stored, published for collapsed requests to follow.

    What every follower needs to answer as the leader's client is answered:
    the head (less ``Age`` and ``Cache-Status``, which are each follower's
    own), the variant it is, and the ages to compute ``Age`` from.
    """

    feed: Feed
    status: int
    reason: bytes
    #: The leader's client's response fields, without Age and Cache-Status.
    headers: Headers
    #: The fields as stored, to decide on and to compute ages from.
    stored: Headers
    vary: tuple[bytes, ...]
    secondary: bytes
    request_time: float
    response_time: float
    fwd: str


class Accelerator:
    """The :class:`~accel.http.model.Handler` for proxied routes.

    ``hot``, if given, remembers fresh hits for :meth:`fast_hit`; it needs a
    store with change stamps (see :class:`accel.cache.store.Generations`).
    """

    def __init__(
        self,
        router: Router[Route],
        clock: IReactorTime,
        store: Store | None = None,
        collapser: Collapser | None = None,
        name: bytes = b"accel",
        hot: HotTier | None = None,
    ) -> None:
        self._router = router
        self._clock = clock
        self._store = store
        self._collapser = collapser if collapser is not None else Collapser(clock)
        self._name = name
        self._hot = hot if store is not None else None
        self._hit_status = self._status(hit=True).replace(b"%", b"%%") + b"; ttl=%d"

    # The fast path

    def fast_hit(
        self,
        factory: _WireFactory,
        method: bytes,
        authority: bytes,
        path: bytes,
        query: bytes | None,
        pairs: list[tuple[bytes, bytes]],
        connection: bytes,
    ) -> tuple[bytes, int, int, dict[str, str], BinaryIO | None] | None:
        """Answer a remembered fresh hit at once, or ``None`` for the general path.

        An :data:`accel.http.server.FastPath`. Taken only by a GET or HEAD
        without content (the server checks), whose exact
        ``(scheme, authority, path, query)`` the general path recently
        answered as a fresh ``HIT`` of the whole stored body, with none of
        the :data:`_NOT_FAST` fields, whose ``Vary`` fields select the same
        variant, while the stored response is still fresh (RFC 9111 section
        4.2: the expiry was computed when it was remembered) and the store
        has changed nothing under its key since. The answer is what the
        general path would send, with the ``Age`` and ``Cache-Status`` ttl
        of now. A small body is part of the answer; a large one is its
        stored body file, opened here, for the server to send after the head
        (plain connections only: over TLS the fast path declines). Declined:
        everything else, including requests the general path would answer
        from the cache in another way, and a body file that is gone.
        """
        hot = self._hot
        if hot is None:
            return None
        key = (factory.scheme, authority, path, query)
        variants = hot.get(key)
        if variants is None:
            return None
        for pair in pairs:
            if pair[0] in _NOT_FAST:
                return None
        store = self._store
        assert store is not None
        generations = store.generations
        if generations is None or not store.healthy:
            return None
        stamps = generations.stamps
        now = self._clock.seconds()
        headers = None
        for entry in variants:
            if entry.vary:
                if headers is None:
                    headers = Headers(pairs)
                if policy.secondary_key(entry.vary, headers) != entry.secondary:
                    continue
            if now >= entry.fresh_until or stamps[entry.slot] != entry.generation:
                hot.discard(key, entry)
                return None
            head = entry.head % (now + entry.age_at, entry.fresh_until - now)
            server = factory.server_line if entry.needs_server else b""
            if method == _HEAD:
                response = b"".join((head, connection, server, b"\r\n"))
                return response, entry.status, 0, _HIT_NOTES, None
            if entry.path:
                if factory.scheme != b"http":
                    return None  # TLS: the body must go through the TLS layer
                body_file = self._open_body(entry)
                if body_file is None:
                    hot.discard(key, entry)
                    return None
                head = b"".join((head, connection, server, b"\r\n"))
                return head, entry.status, entry.length, _HIT_NOTES, body_file
            body = entry.body
            response = b"".join((head, connection, server, b"\r\n", body))
            return response, entry.status, len(body), _HIT_NOTES, None
        return None

    @staticmethod
    def _open_body(entry: HotEntry) -> BinaryIO | None:
        """``entry``'s body file, open for reading; ``None`` if gone or not its length.

        The store never reuses a body file's name, so a file there of the
        right length is the body remembered; anything else (removed by
        another process, damaged) is left to the general path to deal with.
        """
        try:
            f = open(entry.path, "rb")  # noqa: SIM115 - the server closes it
        except OSError:
            return None
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError:
            size = -1
        if size != entry.length:
            f.close()
            return None
        return f

    def _remember(
        self,
        lk: _Lookup,
        entry: Entry,
        headers: Headers,
        age: float,
        ttl: float,
        body: bytes = b"",
        path: str = "",
    ) -> None:
        """Keep a fresh hit ready to send for :meth:`fast_hit`, if it qualifies.

        Either the whole ``body`` (small) or the ``path`` of its stored body
        file (large) is kept.
        """
        hot = self._hot
        request = lk.request
        if (
            hot is None
            or lk.generation is None
            or lk.route.access is not None  # the fast path checks no client rules
            or lk.rules.recipe.headers
            or len(body) > hot.max_item
            or not 200 <= entry.status < 600
            or entry.status in (204, 304)
            or b"date" not in headers
            or any(name in _NOT_FAST for name, _ in request.headers.pairs)
        ):
            return
        store = self._store
        assert store is not None and store.generations is not None
        targeted = lk.rules.policy.targeted_field
        lines = [b"HTTP/1.1 %d %s\r\n" % (entry.status, entry.reason)]
        lines.extend(
            b"%s: %s\r\n" % pair
            for pair in headers.pairs
            if pair[0] not in _WIRE_FIELDS and pair[0] != targeted
        )
        lines.append(b"via: 1.1 " + lk.route.forwarding.via + b"\r\n")
        stored, via = b"".join(lines[:-1]), lines[-1]
        length = entry.length if path else len(body)
        # Literal "%" doubled: the template is formatted with (age, ttl).
        template = b"".join(
            (
                stored.replace(b"%", b"%%"),
                b"age: %d\r\n",
                via.replace(b"%", b"%%"),
                b"cache-status: " + self._hit_status + b"\r\n",
                b"content-length: " + str(length).encode("ascii") + b"\r\n",
            )
        )
        now = lk.looked_up_at
        hot.put(
            (request.scheme, request.authority, request.path, request.query),
            HotEntry(
                status=entry.status,
                head=template,
                body=body,
                fresh_until=now + ttl,
                age_at=age - now,
                slot=store.generations.slot(lk.key),
                generation=lk.generation,
                vary=entry.vary,
                secondary=entry.secondary,
                needs_server=b"server" not in headers,
                path=path,
                length=length,
            ),
        )

    def close(self) -> Deferred[None]:
        """Close the routes' idle origin connections (at shutdown)."""
        from twisted.internet.defer import gatherResults, maybeDeferred

        closing = [
            maybeDeferred(route.upstream.close)
            for route in self._router.routes()
            if hasattr(route.upstream, "close")
        ]
        return gatherResults(closing).addCallback(lambda _: None)

    # Entry point

    def body_limit(self, request: Request) -> int | None:
        """The most content ``request`` may carry: its route's ``max_body``.

        For :class:`~accel.http.server.HTTPServerFactory`'s ``body_limit``,
        which asks before :meth:`handle` and answers 413 beyond it.
        """
        route = self._router.select(request.authority, request.path)
        return None if route is None else route.max_body

    def handle(self, request: Request, responder: Responder) -> None:
        method = request.method
        if method != _GET and method != _HEAD and self._answer_here(request, responder):
            return
        route = self._router.select(request.authority, request.path)
        if route is None:
            responder.log["cache"] = "-"
            simple_response(responder, 404, b"No route for this host and path.")
            return
        if not self._admit(route, request, responder):
            return
        rules = route.cache
        if rules is None or self._store is None:
            self.forward(route, request, responder, b"bypass")
            return
        method = request.method
        if method == _GET or method == _HEAD:
            key = primary_key(
                request.scheme,
                request.authority,
                request.path,
                request.query,
                request.headers,
                rules.recipe,
            )
            if "\0" in key:
                self.forward(route, request, responder, b"bypass")
                return
            self._lookup(_Lookup(route, rules, request, responder, key))
            return
        self.forward(route, request, responder, b"method", invalidate=rules)

    @staticmethod
    def _answer_here(request: Request, responder: Responder) -> bool:
        """Requests accel answers itself, never forwarding them.

        ``TRACE`` is refused (it would reflect credentials, and accel adds
        nothing by echoing); ``OPTIONS *`` and ``OPTIONS`` with
        ``Max-Forwards: 0`` are addressed to this hop (RFC 9110 sections
        9.3.7 and 7.6.2).
        """
        method = request.method
        if method == b"TRACE":
            responder.log["cache"] = "-"
            simple_response(responder, 405, b"TRACE is not allowed.", Headers([(b"allow", _ALLOW)]))
            return True
        if method == b"OPTIONS" and (
            request.target == b"*" or request.headers.get(b"max-forwards") == b"0"
        ):
            responder.log["cache"] = "-"
            responder.start(
                200, b"OK", Headers([(b"allow", _ALLOW), (b"content-length", b"0")])
            )
            responder.finish()
            return True
        return False

    @staticmethod
    def _admit(route: Route, request: Request, responder: Responder) -> bool:
        """Apply the route's client rules; answer 403 if they refuse.

        (The route's body limit is enforced by the server, before the
        handler, through :meth:`body_limit`.)
        """
        access = route.access
        if access is not None and not access.allows(request.client):
            responder.log["cache"] = "-"
            simple_response(responder, 403, b"Access denied.")
            return False
        return True

    # Plain forwarding (no cache)

    def forward(
        self,
        route: Route,
        request: Request,
        responder: Responder,
        fwd: bytes,
        invalidate: CacheRules | None = None,
    ) -> None:
        """Pass ``request`` to the route's origin and stream the answer back.

        The origin gets origin-form (RFC 9112 section 3.2.1), also when the
        client sent absolute-form: ``path`` (``*`` for ``OPTIONS *``) and query.
        """
        responder.log.setdefault("cache", "BYPASS")
        headers = request_headers_for_origin(request, route.forwarding)
        target = request.path + (b"?" + request.query if request.query is not None else b"")
        d = route.upstream.request(
            request.method, target, headers, request.body, interim_relay(route, responder)
        )
        responder.on_disconnect(d.cancel)

        def relay(response: OriginResponse) -> None:
            if route.hide_headers:
                response.headers.remove(*route.hide_headers)
            if invalidate is not None:
                self._invalidate(request, response, invalidate)
            if responder.disconnected:
                response.body.discard()
                return
            responder.log["upstream"] = response.origin.name
            out = response_headers_for_client(response.headers, response.version, route.forwarding)
            out.add(
                b"cache-status",
                self._status(fwd=fwd.decode("ascii"), fwd_status=response.status),
            )
            responder.start(response.status, response.reason, out)
            Relay(_Watched(response, route, request), responder).start()

        d.addCallbacks(relay, self._origin_failed, errbackArgs=(route, request, responder))

    def _origin_failed(
        self, failure: Failure, route: Route, request: Request, responder: Responder | None
    ) -> None:
        if failure.check(CancelledError):
            return
        status = self._log_origin_failure(failure, route, request)
        if responder is None or responder.disconnected:
            return
        if status == 504:
            simple_response(responder, 504, b"The origin did not answer in time.")
        else:
            simple_response(responder, 502, b"The origin could not be reached.")

    def _log_origin_failure(self, failure: Failure, route: Route, request: Request) -> int:
        if failure.check(UpstreamError):
            error = failure.value
            _log.warn(
                "origin failed for {method} {target} on route {route}: {error}",
                method=request.method.decode("latin-1"),
                target=request.target.decode("latin-1"),
                route=route.name,
                error=str(error),
            )
            return int(getattr(error, "status", 502))
        _log.failure("unexpected error while forwarding", failure)
        return 502

    def _invalidate(self, request: Request, response: OriginResponse, rules: CacheRules) -> None:
        """RFC 9111 section 4.4: unsafe requests invalidate what they touched."""
        assert self._store is not None
        target = request.path + (b"?" + request.query if request.query is not None else b"")
        for uri in policy.invalidated_uris(
            request.method,
            response.status,
            target,
            response.headers,
            (request.scheme, request.authority),
        ):
            path, qmark, query = uri.partition(b"?")
            key = primary_key(
                request.scheme,
                request.authority,
                path,
                query if qmark else None,
                request.headers,
                rules.recipe,
            )
            self._store.invalidate(key)
            if rules.recipe != DEFAULT_RECIPE:
                self._store.invalidate(
                    primary_key(request.scheme, request.authority, path, query if qmark else None)
                )

    # Cache lookup

    def _lookup(self, lk: _Lookup) -> None:
        assert self._store is not None
        request = lk.request
        settings = lk.rules.policy
        now = lk.looked_up_at = self._clock.seconds()
        generations = self._store.generations
        if generations is not None and self._hot is not None:
            # Noted before the read: see accel.cache.store, "Change stamps".
            lk.generation = generations.stamps[generations.slot(lk.key)]
        entries = self._store.lookup(lk.key)
        entry = None
        for candidate in entries:
            if policy.secondary_key(candidate.vary, request.headers) == candidate.secondary:
                entry = candidate
                break
        if entry is None:
            decision: policy.Decision = policy.decide_without_stored(request.headers, settings)
            self._miss(lk, decision, "vary-miss" if entries else "uri-miss")
            return

        headers = Headers(list(entry.headers))
        stored = policy.StoredResponse(
            entry.status, headers, entry.request_time, entry.response_time
        )
        decision = policy.decide(request.method, request.headers, stored, now, settings)
        if isinstance(decision, policy.Fresh):
            self._serve(lk, entry, headers, decision.age, decision.ttl, "HIT")
        elif isinstance(decision, policy.ServeStale):
            self._serve(lk, entry, headers, decision.age, decision.ttl, "STALE")
        elif isinstance(decision, policy.StaleWhileRevalidate):
            if self._collapser.lead(lk.key):
                background = _Lookup(lk.route, lk.rules, request, None, lk.key)
                fill = _Fill(background, entry, "stale", leader=True, background=True)
                self._fetch(fill, decision.conditional)
            self._serve(lk, entry, headers, decision.age, decision.ttl, "UPDATING")
        elif isinstance(decision, policy.Revalidate):
            if self._wait_for_leader(lk):
                return
            fwd = "request" if decision.reason.startswith("request") else "stale"
            fill = _Fill(lk, entry, fwd, leader=self._collapser.lead(lk.key))
            fill.stale_on_error = decision.stale_on_error
            self._fetch(fill, decision.conditional)
        elif isinstance(decision, policy.Forward):
            self._miss(lk, decision, "request")
        elif isinstance(decision, policy.OnlyIfCachedMiss):
            self._only_if_cached(lk)
        else:
            assert_never(decision)

    def _miss(self, lk: _Lookup, decision: policy.Forward | policy.OnlyIfCachedMiss, fwd: str) -> None:
        if isinstance(decision, policy.OnlyIfCachedMiss):
            self._only_if_cached(lk)
            return
        if self._collapser.passing(lk.key):
            # Hit-for-miss: this URL recently answered with something we could
            # not store; go straight to the origin without holding anyone up.
            assert lk.responder is not None
            lk.responder.log["cache"] = "MISS"
            self.forward(lk.route, lk.request, lk.responder, b"uri-miss")
            return
        if self._wait_for_leader(lk):
            return
        leader = self._collapser.lead(lk.key)
        if leader and lk.waited == 0 and b"range" in lk.request.headers:
            # Fill the whole object in the background and answer the range
            # from the store once it is there (or pass it through if the
            # object turns out too large or not storable: hit-for-miss).
            background = _Lookup(lk.route, lk.rules, lk.request, None, lk.key)
            self._fetch(_Fill(background, None, fwd, leader=True, background=True), None)
            if not self._wait_for_leader(lk):
                lk.waited += 1  # the fill is already over: look again, once
                self._lookup(lk)
            return
        self._fetch(_Fill(lk, None, fwd, leader=leader), None)

    def _wait_for_leader(self, lk: _Lookup) -> bool:
        """If another request is fetching this key, follow its fill or wait for it.

        A request that can take the leader's response as it is (no range, no
        conditional) follows the fill as soon as it is published, or at once
        if it already is; others wait for the end and look again.
        """
        if lk.waited >= 2 or not self._collapser.in_flight(lk.key):
            return False
        follow = None
        if lk.responder is not None and not any(
            name in lk.request.headers for name in _CONDITIONAL_FIELDS
        ):
            follow = partial(self._follow, lk)
            if follow(self._collapser.published(lk.key)):
                return True
        lk.waited += 1
        responder = lk.responder

        def wake(timed_out: bool) -> None:
            if responder is not None and responder.disconnected:
                return
            lk.collapsed = True
            if timed_out:
                lk.waited = 2  # do not wait again: fetch on our own
            self._lookup(lk)

        self._collapser.wait(lk.key, wake, follow)
        return True

    def _follow(self, lk: _Lookup, handle: object) -> bool:
        """Answer ``lk`` from a fill while it streams; False if it cannot.

        It cannot when nothing is published, when the fill is another
        variant (RFC 9111 section 4.1: its ``Vary`` fields do not match this
        request), when the response, once stored, would not answer this
        request as a fresh hit (RFC 9111 section 4: ``no-cache`` on either
        side, the request's ``max-age`` or ``min-fresh``, a response already
        stale), or when the fill is already over: then it waits for the end
        and looks again, as it always did. The answer is the leader's status
        and fields, with this request's own ``Age`` and ``Cache-Status``
        (RFC 9211 section 2.6: ``collapsed``, the response of another
        forward request reused).
        """
        if not isinstance(handle, _Shared):
            return False
        responder = lk.responder
        assert responder is not None
        if responder.disconnected:
            return True  # nobody to answer: done waiting
        request = lk.request
        if policy.secondary_key(handle.vary, request.headers) != handle.secondary:
            return False
        stored = policy.StoredResponse(
            handle.status, handle.stored, handle.request_time, handle.response_time
        )
        now = self._clock.seconds()
        decision = policy.decide(request.method, request.headers, stored, now, lk.rules.policy)
        if not isinstance(decision, policy.Fresh):
            return False
        follower = None
        if request.method != _HEAD:
            follower = handle.feed.follow(responder)
            if follower is None:
                return False
        out = handle.headers.copy()
        out.remove(b"age")
        out.add(b"age", policy.age_header_value(decision.age))
        out.add(
            b"cache-status",
            self._status(fwd=handle.fwd, fwd_status=handle.status, stored=True, collapsed=True),
        )
        responder.log["cache"] = "MISS"
        responder.start(handle.status, handle.reason, out)
        if follower is None:
            responder.finish()
        else:
            follower.start()
        return True

    def _only_if_cached(self, lk: _Lookup) -> None:
        assert lk.responder is not None
        lk.responder.log["cache"] = "MISS"
        simple_response(
            lk.responder,
            504,
            b"Not in cache (only-if-cached).",
            Headers([(b"cache-status", self._status(detail=b"only-if-cached"))]),
        )

    # Serving a stored response

    def _serve(
        self,
        lk: _Lookup,
        entry: Entry,
        headers: Headers,
        age: float,
        ttl: float,
        word: str,
        cache_status: bytes | None = None,
    ) -> None:
        """Answer ``lk`` from ``entry``: conditionals, ranges, HEAD, body."""
        assert self._store is not None
        responder = lk.responder
        if responder is None or responder.disconnected:
            return
        request = lk.request
        responder.log["cache"] = word
        out = headers.copy()
        out.remove(b"age", b"content-length", *lk.rules.strip)
        out.add(b"age", policy.age_header_value(age))
        out.add(b"via", b"1.1 " + lk.route.forwarding.via)
        out.add(
            b"cache-status",
            cache_status
            if cache_status is not None
            else self._status(hit=True, ttl=ttl, collapsed=lk.collapsed),
        )

        precondition = policy.evaluate_conditionals(
            request.method, request.headers, entry.status, out, entry.response_time
        )
        if precondition == 304:
            responder.start(304, b"Not Modified", self._not_modified(out))
            responder.finish()
            return
        if precondition == 412:
            simple_response(responder, 412, b"Precondition failed.")
            return

        length = entry.length
        first, count = 0, length
        status, reason = entry.status, entry.reason
        range_value = request.headers.get(b"range")
        if range_value is not None and entry.status == 200 and request.method == _GET:
            if_range = request.headers.get(b"if-range")
            if if_range is None or policy.if_range_allows(if_range, out):
                ranges = policy.parse_range(range_value, length)
                if ranges is policy.UNSATISFIABLE:
                    simple_response(
                        responder,
                        416,
                        b"Range not satisfiable.",
                        Headers([(b"content-range", b"bytes */%d" % length)]),
                    )
                    return
                if isinstance(ranges, list) and len(ranges) == 1:
                    # Several ranges are answered with the whole body, which
                    # RFC 9110 section 14.2 allows.
                    first, last = ranges[0]
                    count = last - first + 1
                    status, reason = 206, b"Partial Content"
                    out.add(b"content-range", b"bytes %d-%d/%d" % (first, last, length))

        if status not in (204, 304) and not 100 <= status < 200:
            out.add(b"content-length", b"%d" % count)
        if request.method == _HEAD or status in (204, 304) or count == 0:
            responder.start(status, reason, out)
            responder.finish()
            return
        if first == 0 and count == length:
            small = self._store.read_small(entry)
            if small is not None:
                if word == "HIT" and cache_status is None and status == entry.status:
                    self._remember(lk, entry, headers, age, ttl, body=small)
                responder.start(status, reason, out)
                responder.write(small)
                responder.finish()
                return
        body = self._store.open_body(entry)
        if body is None:
            # The body vanished behind our back (evicted, purged, damaged):
            # the store has dropped the entry; treat it as a miss.
            self._lookup(lk)
            return
        if first:
            body.seek(first)
        elif (
            count == length
            and word == "HIT"
            and cache_status is None
            and status == entry.status
            and isinstance(body.name, str)
        ):
            self._remember(lk, entry, headers, age, ttl, path=body.name)
        responder.start(status, reason, out)
        FileSender(body, responder, count).start()

    @staticmethod
    def _not_modified(headers: Headers) -> Headers:
        out = policy.not_modified_headers(headers)
        for name in (b"age", b"via", b"cache-status"):
            for value in headers.get_all(name):
                out.add(name, value)
        return out

    def _status(self, **kw: object) -> bytes:
        return policy.cache_status(name=self._name, **kw)  # type: ignore[arg-type]

    # Fetching for the cache

    def _fetch(self, fill: _Fill, conditional: Headers | None) -> None:
        lk = fill.lookup
        request = lk.request
        headers = request_headers_for_origin(request, lk.route.forwarding)
        headers.remove(*_CONDITIONAL_FIELDS)
        if conditional is not None:
            for name, value in conditional:
                headers.add(name, value)
        fill.request_time = self._clock.seconds()
        target = request.path + (b"?" + request.query if request.query is not None else b"")
        relay = None if lk.responder is None else interim_relay(lk.route, lk.responder)
        d = lk.route.upstream.request(_GET, target, headers, request.body, relay)
        if lk.responder is not None:
            lk.responder.on_disconnect(lambda: self._client_left(fill, d))
        d.addCallbacks(self._filled, self._fill_failed, callbackArgs=(fill,), errbackArgs=(fill,))

    def _client_left(self, fill: _Fill, d: Deferred[OriginResponse]) -> None:
        if not d.called:
            d.cancel()

    def _finish_fill(self, fill: _Fill, cacheable: bool) -> None:
        if fill.done:
            return
        fill.done = True
        if fill.leader:
            self._collapser.done(fill.lookup.key, cacheable)

    def _fill_failed(self, failure: Failure, fill: _Fill) -> None:
        lk = fill.lookup
        self._finish_fill(fill, cacheable=True)
        if failure.check(CancelledError):
            return
        if fill.background or lk.responder is None:
            self._log_origin_failure(failure, lk.route, lk.request)
            return
        if fill.entry is not None and self._stale_on_error(fill):
            self._log_origin_failure(failure, lk.route, lk.request)
            self._serve_stale_on_error(fill, None)
            return
        self._origin_failed(failure, lk.route, lk.request, lk.responder)

    def _stale_on_error(self, fill: _Fill) -> bool:
        entry = fill.entry
        assert entry is not None
        stored = policy.StoredResponse(
            entry.status, Headers(list(entry.headers)), entry.request_time, entry.response_time
        )
        return policy.may_serve_stale_on_error(
            fill.lookup.request.headers, stored, self._clock.seconds(), fill.lookup.rules.policy
        )

    def _serve_stale_on_error(self, fill: _Fill, fwd_status: int | None) -> None:
        entry = fill.entry
        assert entry is not None
        headers = Headers(list(entry.headers))
        now = self._clock.seconds()
        age = policy.current_age(headers, entry.request_time, entry.response_time, now)
        lifetime = policy.freshness_lifetime(
            headers, entry.status, entry.response_time, fill.lookup.rules.policy
        )
        status = self._status(
            hit=True, fwd="stale", fwd_status=fwd_status, ttl=lifetime - age, detail=b"stale-if-error"
        )
        self._serve(fill.lookup, entry, headers, age, lifetime - age, "STALE", status)

    def _filled(self, response: OriginResponse, fill: _Fill) -> None:
        assert self._store is not None
        lk = fill.lookup
        request = lk.request
        responder = lk.responder
        settings = lk.rules.policy
        response_time = self._clock.seconds()
        if responder is not None:
            responder.log["upstream"] = response.origin.name
        if lk.route.hide_headers:
            # Before storing and before freshening: a hidden field is never kept.
            response.headers.remove(*lk.route.hide_headers)

        entry = fill.entry
        if entry is not None and response.status == 304:
            response.body.deliver(_DRAIN)
            stored_headers = Headers(list(entry.headers))
            if policy.selects_stored(stored_headers, response.headers):
                merged = policy.freshen(stored_headers, response.headers, response_time, settings)
                updated = self._store.update(entry, merged.pairs, fill.request_time, response_time)
                self._finish_fill(fill, cacheable=True)
                if fill.background:
                    return
                fresh = updated if updated is not None else entry
                headers = merged if updated is not None else stored_headers
                age = policy.current_age(
                    headers, fresh.request_time, fresh.response_time, response_time
                )
                ttl = policy.freshness_lifetime(headers, fresh.status, response_time, settings) - age
                status = self._status(fwd=fill.fwd, fwd_status=304, ttl=ttl)
                self._serve(lk, fresh, headers, age, ttl, "REVALIDATED", status)
                return
            # A 304 that does not select what we have: we cannot use it.
            self._finish_fill(fill, cacheable=True)
            if not fill.background and responder is not None:
                self.forward(lk.route, request, responder, b"stale")
            return

        if (
            entry is not None
            and response.status in _ORIGIN_FAILURE_STATUSES
            and not fill.background
            and self._stale_on_error(fill)
        ):
            response.body.discard()
            self._finish_fill(fill, cacheable=True)
            self._serve_stale_on_error(fill, response.status)
            return

        verdict = policy.storable(
            _GET, request.headers, response.status, response.headers, response_time, settings
        )
        writer = None
        too_big_for_range = (
            fill.background
            and fill.entry is None
            and response.body.length is not None
            and response.body.length > lk.rules.range_fetch_max
        )
        if isinstance(verdict, policy.Storable) and not too_big_for_range:
            to_store = policy.stored_headers(response.headers, verdict, response_time)
            secondary = policy.secondary_key(verdict.vary, request.headers)
            writer = self._store.begin(
                lk.key,
                secondary,
                verdict.vary,
                response.status,
                response.reason,
                to_store.pairs,
                fill.request_time,
                response_time,
                response.body.length,
                tuple(t.decode("latin-1") for t in verdict.tags),
            )
        # Whether others may get this response from the cache: when only this
        # request kept it out (its no-store, its Authorization), other
        # requests must not be sent past the cache for it (hit-for-miss).
        cacheable = writer is not None or not too_big_for_range and isinstance(
            policy.storable(
                _GET, _NO_FIELDS, response.status, response.headers, response_time, settings
            ),
            policy.Storable,
        )
        body = _Watched(response, lk.route, request)
        sink: Feed | None = None
        if writer is not None and fill.leader and writer.active:
            # Others may follow the fill while it streams: publish it before
            # the first byte flows.
            sink = Feed(writer, response.body.length)
            shared = response_headers_for_client(
                response.headers, response.version, lk.route.forwarding
            )
            shared.remove(*lk.rules.strip)
            self._collapser.publish(
                lk.key,
                _Shared(
                    sink,
                    response.status,
                    response.reason,
                    shared,
                    to_store,
                    verdict.vary,
                    secondary,
                    fill.request_time,
                    response_time,
                    fill.fwd,
                ),
            )

        # What the relay writes to: the feed when others may follow, else the writer.
        tee: BodyWriter | None = sink if sink is not None else writer

        def done(complete: bool, stored: object) -> None:
            self._finish_fill(fill, cacheable=cacheable)

        if fill.background or responder is None or responder.disconnected:
            if tee is None:
                response.body.discard()
                self._finish_fill(fill, cacheable=cacheable)
                return
            Relay(body, None, tee, done).start()
            return

        responder.log["cache"] = "MISS" if fill.entry is None else "EXPIRED"
        out = response_headers_for_client(response.headers, response.version, lk.route.forwarding)
        out.remove(*lk.rules.strip)
        out.add(
            b"cache-status",
            self._status(
                fwd=fill.fwd, fwd_status=response.status, stored=cacheable, collapsed=lk.collapsed
            ),
        )
        if response.status == 200:
            precondition = policy.evaluate_conditionals(
                request.method, request.headers, response.status, out, response_time
            )
            if precondition is not None:
                # Answer the client's precondition ourselves; keep filling.
                if tee is not None:
                    Relay(body, None, tee, done).start()
                else:
                    response.body.discard()
                    self._finish_fill(fill, cacheable=cacheable)
                if precondition == 304:
                    responder.start(304, b"Not Modified", self._not_modified(out))
                    responder.finish()
                else:
                    simple_response(responder, 412, b"Precondition failed.")
                return
        if request.method == _HEAD:
            responder.start(response.status, response.reason, out)
            responder.finish()
            if tee is not None:
                Relay(body, None, tee, done).start()
            else:
                response.body.discard()
                self._finish_fill(fill, cacheable=cacheable)
            return
        responder.start(response.status, response.reason, out)
        Relay(body, responder, tee, done).start()

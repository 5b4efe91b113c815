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
  (:class:`~accel.cache.collapse.Collapser`); the fill (:mod:`accel.fill`)
  streams the response to the client and into the store at once and keeps
  it only if the policy allows it and the body arrived whole. While it is
  being stored, the collapsed requests are answered from it as it streams,
  each at its own client's pace.

Cache fills always fetch the whole representation with GET and without the
client's conditional or range fields; accel then answers those itself from
what it has (RFC 9110 sections 13 and 14), as nginx and Varnish do: here for
a stored response, in :mod:`accel.fill` for one just fetched.

Fresh hits served here are also remembered, ready to send, for the hit fast
path (:mod:`accel.fasthit`), which the wire layer tries first as
:attr:`Accelerator.fast_hit`.

Everything here sees only the wire-independent model of
:mod:`accel.http.model`; decisions are the pure functions of
:mod:`accel.cache.policy`. Origin errors become clean 502/504 answers in
:mod:`accel.answers` and nowhere else.
"""

from __future__ import annotations

import secrets
from functools import partial
from typing import assert_never

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from accel.answers import (
    CONDITIONAL_FIELDS,
    OriginRelay,
    answer_origin_failure,
    not_modified,
    relay_interim,
    simple_response,
)
from accel.cache import policy
from accel.cache.collapse import Collapser
from accel.cache.keys import DEFAULT_RECIPE, primary_key
from accel.cache.memory import HotTier
from accel.cache.store import Entry, Store
from accel.fasthit import HotHits
from accel.fill import Fill, Filler
from accel.forwarding import (
    remove_connection_named,
    request_headers_for_origin,
    response_headers_for_client,
)
from accel.http.byteranges import Multipart
from accel.http.headers import Headers
from accel.http.model import Request, Responder
from accel.routes import CacheRules, Lookup, Route
from accel.routing import Router
from accel.streams import FileSender, PartsSender
from accel.upstream import OriginPool, OriginResponse

__all__ = ["Accelerator"]

_GET = b"GET"
_HEAD = b"HEAD"

#: What ``Allow`` says when accel answers for itself: the methods it forwards.
_ALLOW = b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Accelerator:
    """The :class:`~accel.http.model.Handler` for proxied routes.

    ``hot``, if given, remembers fresh hits for :attr:`fast_hit`; it needs a
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
        #: ``Cache-Status`` of forwarded responses by (reason, status): a
        #: handful of pairs recur (the reasons are few, statuses three digits).
        self._forwarded: dict[tuple[bytes, int], bytes] = {}
        self._hot = hot if store is not None else None
        self._hits = HotHits(self._hot, store, clock, name)
        self._filler = Filler(
            clock, store, self._collapser, name, serve=self._serve, forward=self.forward
        )
        #: The server's fast path (an :data:`accel.http.server.FastPath`):
        #: :meth:`HotHits.fast_hit <accel.fasthit.HotHits.fast_hit>` itself,
        #: bound rather than wrapped, so a hot hit costs no extra call.
        self.fast_hit = self._hits.fast_hit

    def close(self) -> Deferred[None]:
        """Close the routes' idle origin connections (at shutdown)."""
        closing = [
            maybeDeferred(route.upstream.close)
            for route in self._router.routes()
            if hasattr(route.upstream, "close")
        ]
        return gatherResults(closing).addCallback(lambda _: None)

    def retire(self) -> Deferred[None]:
        """A reload replaced this handler: let what it serves finish, keep nothing.

        The hot tier is emptied (its hits were checked against the rules
        being replaced) and each route's origin pool retires (see
        :meth:`OriginPool.retire <accel.upstream.OriginPool.retire>`): idle
        connections close now, busy ones once their exchange is done. The
        requests in progress go on with this handler to their end.
        """
        if self._hot is not None:
            self._hot.clear()
        retiring = [
            maybeDeferred(route.upstream.retire)
            for route in self._router.routes()
            if hasattr(route.upstream, "retire")
        ]
        return gatherResults(retiring).addCallback(lambda _: None)

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
        if method in (_GET, _HEAD):
            # The request as the origin will see it, to key and select by.
            if b"connection" in request.headers:
                remove_connection_named(request.headers)
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
            if self._known_miss(key, request):
                # As _lookup would find and do, without a Lookup to build.
                responder.log["cache"] = "MISS"
                self.forward(route, request, responder, b"uri-miss")
                return
            self._lookup(Lookup(route, rules, request, responder, key, received_at=self._clock.seconds()))
            return
        self.forward(route, request, responder, b"method", invalidate=rules)

    @staticmethod
    def _answer_here(request: Request, responder: Responder) -> bool:
        """Requests accel answers itself, never forwarding them.

        ``TRACE`` is refused (it would reflect credentials, and accel adds
        nothing by echoing); ``OPTIONS *`` (also as absolute-form with an
        empty path, RFC 9112 section 3.2.4, whose path is ``*`` here too)
        and ``OPTIONS`` with ``Max-Forwards: 0`` are addressed to this hop
        (RFC 9110 sections 9.3.7 and 7.6.2).
        """
        method = request.method
        if method == b"TRACE":
            responder.log["cache"] = "-"
            simple_response(responder, 405, b"TRACE is not allowed.", Headers([(b"allow", _ALLOW)]))
            return True
        if method == b"OPTIONS" and (
            request.path == b"*" or request.headers.get(b"max-forwards") == b"0"
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
        call = _Forward(self, route, request, responder, fwd, invalidate)
        upstream = route.upstream
        if isinstance(upstream, OriginPool):
            # The pool calls back directly: a Deferred in between cost
            # about 4 % of a pass-through request's instructions.
            cancel = upstream.send(
                request.method, target, headers, request.body, call.interim, call.response, call.failed
            )
            responder.on_disconnect(cancel)
            return
        d = upstream.request(request.method, target, headers, request.body, call.interim)
        responder.on_disconnect(d.cancel)
        d.addCallbacks(call.response, call.failed)

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

    def _known_miss(self, key: str, request: Request) -> bool:
        """Whether ``request`` passes through under a live hit-for-miss
        marker for ``key`` that saw the store empty, nothing stored since.

        What :meth:`_lookup` would find (``passing``: no entry, the store not
        read) and decide (``decide_without_stored``: forward), checked before
        the :class:`Lookup` is built, on every request a marker sends to the
        origin. A request with ``Cache-Control`` (it may say
        ``only-if-cached``) is left to :meth:`_lookup`.
        """
        seen = self._collapser.unstored_at(key)
        if seen is None or b"cache-control" in request.headers:
            return False
        store = self._store
        assert store is not None
        generations = store.generations
        if generations is None:
            return False
        # Settled before the stamp is read, as in _lookup.
        store.settle(key)
        return generations.stamps[generations.slot(key)] == seen

    def _lookup(self, lk: Lookup) -> None:
        assert self._store is not None
        request = lk.request
        settings = lk.rules.policy
        now = lk.looked_up_at = self._clock.seconds()
        store = self._store
        generations = store.generations
        stamp = None
        if generations is not None:
            # Noted before the read: see accel.cache.store, "Change stamps"
            # (and "Group commit", for settle).
            store.settle(lk.key)
            stamp = generations.stamps[generations.slot(lk.key)]
            if self._hot is not None:
                lk.generation = stamp
        passing = stamp is not None and self._collapser.known_unstored(lk.key, stamp)
        if passing:
            # A hit-for-miss marker saw nothing stored under this key, and
            # nothing was stored since (the stamp is unchanged): this pass-
            # through request need not read the store to find nothing again.
            entries = []
        else:
            entries = store.lookup(lk.key)
            if not entries and stamp is not None and store.healthy:
                # (A store that failed reads as empty: that is not "nothing stored".)
                self._collapser.note_unstored(lk.key, stamp)
        entry = None
        for candidate in entries:
            if policy.secondary_key(candidate.vary, request.headers) == candidate.secondary:
                entry = candidate
                break
        if entry is None:
            decision: policy.Decision = policy.decide_without_stored(request.headers, settings)
            self._miss(lk, decision, "vary-miss" if entries else "uri-miss", passing)
            return

        headers = Headers(list(entry.headers))
        stored = policy.StoredResponse(
            entry.status, headers, entry.request_time, entry.response_time
        )
        decision = policy.decide(request.method, request.headers, stored, now, settings, lk.received_at)
        if isinstance(decision, (policy.Fresh, policy.Validated)):
            # Validated: a fetch this request waited for (or another
            # worker's) got or confirmed it after the request arrived.
            if lk.fetched is None:
                self._serve(lk, entry, headers, decision.age, decision.ttl, "HIT")
            else:  # the fill this request's own miss started
                status = self._status(fwd=lk.fetched, fwd_status=entry.status, stored=True)
                self._serve(lk, entry, headers, decision.age, decision.ttl, "MISS", status)
        elif isinstance(decision, policy.ServeStale):
            self._serve(lk, entry, headers, decision.age, decision.ttl, "STALE")
        elif isinstance(decision, policy.StaleWhileRevalidate):
            if self._collapser.lead(lk.key):
                background = Lookup(lk.route, lk.rules, request, None, lk.key)
                fill = Fill(background, entry, "stale", leader=True, background=True)
                self._filler.fetch(fill, decision.conditional)
            self._serve(lk, entry, headers, decision.age, decision.ttl, "UPDATING")
        elif isinstance(decision, policy.Revalidate):
            if self._wait_for_leader(lk):
                return
            fwd = "request" if decision.reason.startswith("request") else "stale"
            fill = Fill(lk, entry, fwd, leader=self._collapser.lead(lk.key))
            fill.stale_on_error = decision.stale_on_error
            self._filler.fetch(fill, decision.conditional)
        elif isinstance(decision, policy.Forward):
            self._miss(lk, decision, "request")
        elif isinstance(decision, policy.OnlyIfCachedMiss):
            self._only_if_cached(lk)
        else:
            assert_never(decision)

    def _miss(
        self,
        lk: Lookup,
        decision: policy.Forward | policy.OnlyIfCachedMiss,
        fwd: str,
        passing: bool = False,
    ) -> None:
        """Answer a request nothing stored can answer.

        ``passing``: the caller just found a live hit-for-miss marker for
        the key (:meth:`Collapser.known_unstored`), so it need not be looked
        up again.
        """
        if isinstance(decision, policy.OnlyIfCachedMiss):
            self._only_if_cached(lk)
            return
        if passing or self._collapser.passing(lk.key):
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
            background = Lookup(lk.route, lk.rules, lk.request, None, lk.key)
            lk.fetched = fwd
            self._filler.fetch(Fill(background, None, fwd, leader=True, background=True), None)
            if not self._wait_for_leader(lk):
                lk.waited += 1  # the fill is already over: look again, once
                self._lookup(lk)
            return
        self._filler.fetch(Fill(lk, None, fwd, leader=leader), None)

    def _wait_for_leader(self, lk: Lookup) -> bool:
        """If another request is fetching this key, follow its fill or wait for it.

        A request that can take the leader's response as it is (no range, no
        conditional) follows the fill as soon as it is published, or at once
        if it already is; others wait for the end and look again.
        """
        if lk.waited >= 2 or not self._collapser.in_flight(lk.key):
            return False
        follow = None
        if lk.responder is not None and not any(
            name in lk.request.headers for name in CONDITIONAL_FIELDS
        ):
            follow = partial(self._filler.follow, lk)
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

    def _only_if_cached(self, lk: Lookup) -> None:
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
        lk: Lookup,
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
            responder.start(304, b"Not Modified", not_modified(out))
            responder.finish()
            if word == "HIT" and cache_status is None and self._hits.qualifies(lk, entry, headers):
                self._remember_unsent(lk, entry, headers, age, ttl)
            return
        if precondition == 412:
            simple_response(responder, 412, b"Precondition failed.")
            return

        length = entry.length
        first, count = 0, length
        status, reason = entry.status, entry.reason
        parts: Multipart | None = None
        if b"range" in request.headers:
            answer = policy.range_answer(
                request.method,
                entry.status,
                request.headers,
                out,
                length,
                secrets.token_hex(10).encode("ascii"),
                lk.rules.max_ranges,
            )
            if answer is policy.UNSATISFIABLE:
                simple_response(
                    responder,
                    416,
                    b"Range not satisfiable.",
                    Headers([(b"content-range", b"bytes */%d" % length)]),
                )
                return
            if isinstance(answer, policy.SingleRange):
                first, count = answer.first, answer.last - answer.first + 1
                status, reason = 206, b"Partial Content"
                out.add(b"content-range", b"bytes %d-%d/%d" % (answer.first, answer.last, length))
            elif isinstance(answer, Multipart):
                # RFC 9110 section 15.3.7.2: the representation's Content-Type
                # goes in each part; the message's is the multipart type.
                parts = answer
                count = parts.length
                status, reason = 206, b"Partial Content"
                out.remove(b"content-type", b"content-range")
                out.add(b"content-type", parts.content_type)
            elif answer is not None:
                assert_never(answer)

        if status not in (204, 304) and not 100 <= status < 200:
            out.add(b"content-length", b"%d" % count)
        if request.method == _HEAD or status in (204, 304) or count == 0:
            responder.start(status, reason, out)
            responder.finish()
            return
        if parts is not None:
            self._serve_parts(lk, entry, out, parts)
            return
        if first == 0 and count == length:
            small = self._store.read_small(entry)
            if small is not None:
                if word == "HIT" and cache_status is None and status == entry.status:
                    self._hits.remember(lk, entry, headers, age, ttl, body=small)
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
            and isinstance(getattr(body, "name", None), str)  # a file, not a body kept in its row
        ):
            self._hits.remember(lk, entry, headers, age, ttl, path=body.name)
        responder.start(status, reason, out)
        FileSender(body, responder, count).start()

    def _remember_unsent(
        self, lk: Lookup, entry: Entry, headers: Headers, age: float, ttl: float
    ) -> None:
        """Remember a fresh hit answered without its body (a ``304``) for the
        fast path, so that a client that only ever revalidates finds it there.
        """
        assert self._store is not None
        small = self._store.read_small(entry)
        if small is not None:
            self._hits.remember(lk, entry, headers, age, ttl, body=small)
        elif entry.inline is None:
            # A body in its file: the fast path opens it per hit and checks
            # its length then, so there is no need to open it here.
            self._hits.remember(lk, entry, headers, age, ttl, path=self._store.body_path(entry))

    def _serve_parts(self, lk: Lookup, entry: Entry, out: Headers, parts: Multipart) -> None:
        """Send the ``multipart/byteranges`` 206 of ``parts`` from ``entry``'s body:
        sliced when the body is held in memory, else streamed part by part
        from its file."""
        assert self._store is not None and lk.responder is not None
        responder = lk.responder
        small = self._store.read_small(entry)
        if small is not None:
            responder.start(206, b"Partial Content", out)
            responder.write(parts.render(small))
            responder.finish()
            return
        body = self._store.open_body(entry)
        if body is None:
            # Vanished behind our back, as in _serve: a miss.
            self._lookup(lk)
            return
        responder.start(206, b"Partial Content", out)
        PartsSender(body, responder, parts.pieces()).start()

    def _forwarded_status(self, fwd: bytes, status: int) -> bytes:
        """The ``Cache-Status`` of a forwarded response, formatted once per
        (reason, status) and then remembered."""
        key = (fwd, status)
        value = self._forwarded.get(key)
        if value is None:
            value = self._forwarded[key] = self._status(fwd=fwd.decode("ascii"), fwd_status=status)
        return value

    def _status(self, **kw: object) -> bytes:
        return policy.cache_status(name=self._name, **kw)  # type: ignore[arg-type]


class _Forward:
    """One request :meth:`Accelerator.forward` passes to an origin: the
    callbacks for the origin's answer (interim heads, the final head, or why
    there is none).

    Bound methods of one object rather than closures made per request:
    every pass-through builds one.
    """

    __slots__ = ("_fwd", "_invalidate", "_proxy", "_request", "_responder", "_route")

    def __init__(
        self,
        proxy: Accelerator,
        route: Route,
        request: Request,
        responder: Responder,
        fwd: bytes,
        invalidate: CacheRules | None,
    ) -> None:
        self._proxy = proxy
        self._route = route
        self._request = request
        self._responder = responder
        self._fwd = fwd
        self._invalidate = invalidate

    def interim(self, status: int, reason: bytes, headers: Headers) -> None:
        """An interim (1xx) head: see :func:`accel.answers.relay_interim`."""
        relay_interim(self._route, self._responder, status, reason, headers)

    def response(self, response: OriginResponse) -> None:
        """The origin's head: send it on (hidden fields removed, ``Via`` and
        ``Cache-Status`` added) and relay the body, unless the client left."""
        route = self._route
        if route.hide_headers:
            response.headers.remove(*route.hide_headers)
        if self._invalidate is not None:
            self._proxy._invalidate(self._request, response, self._invalidate)
        responder = self._responder
        if responder.disconnected:
            response.body.discard()
            return
        responder.log["upstream"] = response.origin.name
        out = response_headers_for_client(response.headers, response.version, route.forwarding)
        out.add(b"cache-status", self._proxy._forwarded_status(self._fwd, response.status))
        responder.start(response.status, response.reason, out)
        whole = response.whole_body()
        if whole is None:
            OriginRelay(response, route, self._request, responder).start()
            return
        # All of it came with the head (most small answers): written out at
        # once, as the relay would write it, without a relay registered as
        # the producer for its one write.
        if whole:
            responder.write(whole)
        responder.finish()

    def failed(self, failure: Failure) -> None:
        """No answer from the origin: see :func:`accel.answers.answer_origin_failure`."""
        answer_origin_failure(failure, self._route, self._request, self._responder)

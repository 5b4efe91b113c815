"""Filling the cache: storing an origin response while relaying it, and its followers.

A :class:`Fill` is one origin fetch made for the cache: for a miss, a
revalidation (RFC 9111 section 4.3), or in the background (a stale response
served while revalidated, RFC 5861; a range miss whose whole object is
fetched to store). :meth:`Filler.fetch` always asks for the whole
representation with GET and without the client's conditional or range
fields; then:

* a 304 that selects the stored response freshens it (RFC 9111 section
  4.3.4), and the lookup is answered from the store;
* an error while a stale response may be served instead (RFC 5861
  stale-if-error) serves that response;
* a storable response streams to the client and into the store at once
  (:class:`~accel.streams.Relay`) and is kept only if the body arrived whole;
  a body that came whole with its head (most small ones) is stored and
  answered without a relay, the client's answer sent once it is committed;
  the client's own conditionals are answered by accel;
* whether or not it is stored, the fill's end tells the
  :class:`~accel.cache.collapse.Collapser`, so that requests waiting on the
  key look again, or go straight to the origin (hit-for-miss).

While a fill is being stored, requests that collapsed onto it *follow* it
(:meth:`Filler.follow`): each answers its client from the spool file as it
grows (:class:`~accel.streams.Feed`), at its own pace, with its own ``Age``
and ``Cache-Status``.

Answering from the store and plain forwarding are the accelerator's
(:mod:`accel.proxy`), which hands them to the :class:`Filler` it owns.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import itemgetter

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.answers import (
    CONDITIONAL_FIELDS,
    DRAIN,
    OriginRelay,
    answer_origin_failure,
    interim_relay,
    log_origin_failure,
    not_modified,
    simple_response,
)
from accel.cache import policy
from accel.cache.collapse import Collapser
from accel.cache.store import Entry, Store
from accel.forwarding import request_headers_for_origin, response_headers_for_client
from accel.http.headers import Headers
from accel.http.model import EMPTY_BODY, Request, Responder
from accel.routes import Lookup, Route
from accel.streams import BodyWriter, Feed
from accel.upstream import OriginPool, OriginResponse

__all__ = ["Fill", "Filler"]

_GET = b"GET"
_HEAD = b"HEAD"

#: A request with no fields: what any client could have asked.
_NO_FIELDS = Headers()

#: :data:`~accel.answers.CONDITIONAL_FIELDS`, as a set built once.
_CONDITIONAL = frozenset(CONDITIONAL_FIELDS)

_NAME = itemgetter(0)

_ORIGIN_FAILURE_STATUSES = frozenset({500, 502, 503, 504})

_log = Logger()


@define(slots=True)
class Fill:
    """An origin fetch made for the cache (miss, revalidation or background)."""

    lookup: Lookup
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


class _Shared:
    """A fill being stored, published for collapsed requests to follow.

    What every follower needs to answer as the leader's client is answered:
    the head (less ``Age`` and ``Cache-Status``, which are each follower's
    own), the variant it is, and the ages to compute ``Age`` from. Never
    changed once published. A plain class with slots: one is built per
    stored miss, and a frozen attrs class sets each field through
    ``object.__setattr__``.
    """

    __slots__ = (
        "feed",
        "fwd",
        "headers",
        "reason",
        "request_time",
        "response_time",
        "secondary",
        "status",
        "stored",
        "vary",
    )

    def __init__(
        self,
        feed: Feed,
        status: int,
        reason: bytes,
        headers: Headers,
        stored: Headers,
        vary: tuple[bytes, ...],
        secondary: bytes,
        request_time: float,
        response_time: float,
        fwd: str,
    ) -> None:
        self.feed = feed
        self.status = status
        self.reason = reason
        #: The leader's client's response fields, without Age and Cache-Status.
        self.headers = headers
        #: The fields as stored, to decide on and to compute ages from.
        self.stored = stored
        self.vary = vary
        self.secondary = secondary
        self.request_time = request_time
        self.response_time = response_time
        self.fwd = fwd


#: How the accelerator answers a lookup from a stored entry:
#: ``(lookup, entry, headers, age, ttl, word, cache_status)``.
_Serve = Callable[[Lookup, Entry, Headers, float, float, str, bytes | None], None]
#: How the accelerator passes a request to the origin uncached:
#: ``(route, request, responder, fwd)``.
_Forward = Callable[[Route, Request, Responder, bytes], None]


class Filler:
    """Makes the accelerator's fetches for the cache, and lets others follow them.

    ``serve`` and ``forward`` are the accelerator's: a fill answers from the
    store once a 304 freshened it or the origin failed (stale-if-error), and
    passes the request on uncached when a 304 does not select what is stored.
    """

    def __init__(
        self,
        clock: IReactorTime,
        store: Store | None,
        collapser: Collapser,
        name: bytes,
        serve: _Serve,
        forward: _Forward,
    ) -> None:
        self._clock = clock
        self._store = store
        self._collapser = collapser
        self._name = name
        self._serve = serve
        self._forward = forward
        #: ``Cache-Status`` of fetched responses by (reason, status, stored,
        #: collapsed): a handful recur (the reasons are few, statuses three digits).
        self._fetched: dict[tuple[str, int, bool, bool], bytes] = {}

    def fetch(self, fill: Fill, conditional: Headers | None) -> None:
        """Ask the origin for ``fill``'s request, adding ``conditional`` fields if any.

        Always a GET, without the client's conditional or range fields: the
        whole representation is what the cache stores. Without the client's
        content either: content in a GET (or HEAD) has no defined semantics
        (RFC 9110 section 9.3.1), and sent on a fill, what one client put
        there (a "fat GET") could change what is stored for everyone. As
        Varnish does, it is not sent; the server reads and drops it. The
        client leaving cancels the request.
        """
        lk = fill.lookup
        request = lk.request
        headers = request_headers_for_origin(request, lk.route.forwarding)
        headers.discard(_CONDITIONAL)
        if conditional is not None:
            for name, value in conditional:
                headers.add(name, value)
        fill.request_time = self._clock.seconds()
        target = request.path + (b"?" + request.query if request.query is not None else b"")
        relay = None if lk.responder is None else interim_relay(lk.route, lk.responder)
        upstream = lk.route.upstream
        if isinstance(upstream, OriginPool):
            # The pool calls back directly, as for plain forwarding: a
            # Deferred in between cost about 2 % of a miss's instructions.
            call = _Fetch(self, fill)
            call.cancel = upstream.send(
                _GET, target, headers, EMPTY_BODY, relay, call.response, call.failed
            )
            if lk.responder is not None:
                lk.responder.on_disconnect(call.client_left)
            return
        d = upstream.request(_GET, target, headers, EMPTY_BODY, relay)
        if lk.responder is not None:
            lk.responder.on_disconnect(lambda: self._client_left(fill, d))
        d.addCallbacks(self._filled, self._fill_failed, callbackArgs=(fill,), errbackArgs=(fill,))

    def _client_left(self, fill: Fill, d: Deferred[OriginResponse]) -> None:
        if not d.called:
            d.cancel()

    def _finish_fill(self, fill: Fill, cacheable: bool) -> None:
        if fill.done:
            return
        fill.done = True
        if fill.leader:
            self._collapser.done(fill.lookup.key, cacheable)

    def _fill_failed(self, failure: Failure, fill: Fill) -> None:
        lk = fill.lookup
        self._finish_fill(fill, cacheable=True)
        if failure.check(CancelledError):
            return
        if fill.background or lk.responder is None:
            log_origin_failure(failure, lk.route, lk.request)
            return
        if fill.entry is not None and self._stale_on_error(fill):
            log_origin_failure(failure, lk.route, lk.request)
            self._serve_stale_on_error(fill, None)
            return
        answer_origin_failure(failure, lk.route, lk.request, lk.responder)

    def _stale_on_error(self, fill: Fill) -> bool:
        entry = fill.entry
        assert entry is not None
        stored = policy.StoredResponse(
            entry.status, Headers(list(entry.headers)), entry.request_time, entry.response_time
        )
        return policy.may_serve_stale_on_error(
            fill.lookup.request.headers, stored, self._clock.seconds(), fill.lookup.rules.policy
        )

    def _serve_stale_on_error(self, fill: Fill, fwd_status: int | None) -> None:
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

    def _filled(self, response: OriginResponse, fill: Fill) -> None:
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
            response.body.deliver(DRAIN)
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
                self._forward(lk.route, request, responder, b"stale")
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
                tuple(t.decode("latin-1") for t in verdict.tags) if verdict.tags else (),
            )
        # Whether others may get this response from the cache: when only this
        # request kept it out (its no-store, its Authorization), other
        # requests must not be sent past the cache for it (hit-for-miss).
        cacheable = writer is not None or (not too_big_for_range and isinstance(
            policy.storable(
                _GET, _NO_FIELDS, response.status, response.headers, response_time, settings
            ),
            policy.Storable,
        ))
        sink: Feed | None = None
        shared: Headers | None = None
        if writer is not None and fill.leader and writer.active:
            # Others may follow the fill while it streams: publish it before
            # the first byte flows.
            sink = Feed(writer, response.body.length)
            shared = _client_fields(response, lk)
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
            OriginRelay(response, lk.route, request, None, tee, done).start()
            return

        responder.log["cache"] = "MISS" if fill.entry is None else "EXPIRED"
        out = shared.copy() if shared is not None else _client_fields(response, lk)
        out.add(
            b"cache-status",
            self._fetched_status(fill.fwd, response.status, cacheable, lk.collapsed),
        )
        if response.status == 200 and not _CONDITIONAL.isdisjoint(map(_NAME, request.headers.pairs)):
            # (Checked in C first: most requests have no precondition.)
            precondition = policy.evaluate_conditionals(
                request.method, request.headers, response.status, out, response_time
            )
            if precondition is not None:
                # Answer the client's precondition ourselves; keep filling.
                if tee is not None:
                    OriginRelay(response, lk.route, request, None, tee, done).start()
                else:
                    response.body.discard()
                    self._finish_fill(fill, cacheable=cacheable)
                if precondition == 304:
                    responder.start(304, b"Not Modified", not_modified(out))
                    responder.finish()
                else:
                    simple_response(responder, 412, b"Precondition failed.")
                return
        if request.method == _HEAD:
            responder.start(response.status, response.reason, out)
            responder.finish()
            if tee is not None:
                OriginRelay(response, lk.route, request, None, tee, done).start()
            else:
                response.body.discard()
                self._finish_fill(fill, cacheable=cacheable)
            return
        whole = response.whole_body()
        if whole is None:
            responder.start(response.status, response.reason, out)
            OriginRelay(response, lk.route, request, responder, tee, done).start()
            return
        # All of it came with the head (most small answers): stored and
        # answered at once, without a relay registered as the client
        # transport's producer for one write.
        answer = _Whole(self, fill, cacheable, responder, response.status, response.reason, out, whole)
        if tee is None or not _store_whole(tee, whole):
            answer.send()
        else:
            tee.when_committed(answer.send)

    def follow(self, lk: Lookup, handle: object) -> bool:
        """Answer ``lk`` from a fill while it streams; False if it cannot.

        It cannot when nothing is published, when the fill is another
        variant (RFC 9111 section 4.1: its ``Vary`` fields do not match this
        request), when the response, once stored, would not answer this
        request as a fresh hit or as validated since the request arrived
        (RFC 9111 section 4: the request's ``max-age`` or ``min-fresh``, a
        response already stale, ``no-cache`` on either side, unless the
        fill's response arrived after the request), or when the fill is already over: then it waits for the end
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
        decision = policy.decide(
            request.method, request.headers, stored, now, lk.rules.policy, lk.received_at
        )
        if not isinstance(decision, (policy.Fresh, policy.Validated)):
            return False
        follower = None
        if request.method != _HEAD:
            follower = handle.feed.follow(responder)
            if follower is None:
                return False
        out = handle.headers.copy()
        out.remove(b"age")
        out.add(b"age", policy.age_header_value(decision.age))
        out.add(b"cache-status", self._fetched_status(handle.fwd, handle.status, True, True))
        responder.log["cache"] = "MISS"
        responder.start(handle.status, handle.reason, out)
        if follower is None:
            responder.finish()
        else:
            follower.start()
        return True

    def _fetched_status(self, fwd: str, status: int, stored: bool, collapsed: bool) -> bytes:
        """The ``Cache-Status`` of a response fetched for the cache (no ``ttl``),
        formatted once per (reason, status, stored, collapsed) and then remembered."""
        key = (fwd, status, stored, collapsed)
        value = self._fetched.get(key)
        if value is None:
            value = self._fetched[key] = self._status(
                fwd=fwd, fwd_status=status, stored=stored, collapsed=collapsed
            )
        return value

    def _status(self, **kw: object) -> bytes:
        return policy.cache_status(name=self._name, **kw)  # type: ignore[arg-type]


class _Fetch:
    """One fill's call to an :class:`OriginPool`: the pool's callbacks, and the
    client leaving before the origin answered (which cancels the call, and
    ends the fill as a cancelled Deferred would: nothing stored, followers
    and waiters told to look again)."""

    __slots__ = ("_answered", "_fill", "_filler", "cancel")

    def __init__(self, filler: Filler, fill: Fill) -> None:
        self._filler = filler
        self._fill = fill
        self._answered = False
        self.cancel: Callable[[], None] | None = None

    def response(self, response: OriginResponse) -> None:
        self._answered = True
        self._filler._filled(response, self._fill)

    def failed(self, failure: Failure) -> None:
        self._answered = True
        self._filler._fill_failed(failure, self._fill)

    def client_left(self) -> None:
        if self._answered:
            return
        self._answered = True
        if self.cancel is not None:
            self.cancel()
        self._filler._finish_fill(self._fill, cacheable=True)


class _Whole:
    """The answer to a fill's client when the whole body came with the head.

    Sent by :meth:`send`, head and body together, once the stored entry is
    committed (:meth:`BodyWriter.when_committed
    <accel.streams.BodyWriter.when_committed>`), as :class:`~accel.streams.Relay`
    sends the last chunk of a stored body: at the end of the reactor turn,
    in one ``send`` (the store calls what waits for its commit as one
    :func:`~accel.directwrite.batched` event), or at once when nothing is
    being stored (in the batch of the origin's delivery). Then the fill ends.
    """

    __slots__ = ("body", "cacheable", "fill", "filler", "headers", "reason", "responder", "status")

    def __init__(
        self,
        filler: Filler,
        fill: Fill,
        cacheable: bool,
        responder: Responder,
        status: int,
        reason: bytes,
        headers: Headers,
        body: bytes,
    ) -> None:
        self.filler = filler
        self.fill = fill
        self.cacheable = cacheable
        self.responder = responder
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def send(self) -> None:
        """Answer the client (nothing, if it left), then end the fill."""
        responder = self.responder
        responder.start(self.status, self.reason, self.headers)
        if self.body:
            responder.write(self.body)
        responder.finish()
        self.filler._finish_fill(self.fill, self.cacheable)


def _store_whole(writer: BodyWriter, body: bytes) -> bool:
    """Write the whole ``body`` to ``writer`` and commit it; whether it was committed.

    As :class:`~accel.streams.Relay` does with a body that streams: a writer
    that fails is logged and dropped, the client being answered all the same,
    without storing. The writer itself keeps only a body of the length
    declared (:meth:`accel.cache.store.BodyWriter.commit`); a
    :class:`~accel.streams.Feed` tells its followers how it ended.
    """
    try:
        if body:
            writer.write(body)
    except Exception:  # noqa: BLE001 (the client is still served, without storing)
        _log.failure("store write failed; continuing without storing")
        try:
            writer.abort()
        except Exception:  # noqa: BLE001 (logged; the response goes on)
            _log.failure("store abort failed")
        return False
    try:
        writer.commit()
    except Exception:  # noqa: BLE001 (the client is still served, without storing)
        _log.failure("store commit failed")
        return False
    return True


def _client_fields(response: OriginResponse, lk: Lookup) -> Headers:
    """The fields of ``response`` as its clients get them, less ``Age`` and
    ``Cache-Status`` (each client's own): the route's stripped fields removed."""
    out = response_headers_for_client(response.headers, response.version, lk.route.forwarding)
    out.discard(lk.rules.strip)
    return out

"""The accelerator's cache flow (accel.proxy, accel.fill), on fakes and a real diskcache store.

The origin and the client are in-memory fakes (tests/fakes.py); time is a
task.Clock; the store is the real one in a temporary directory. Each test
counts origin requests where that is the point.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from accel.cache.collapse import Collapser
from accel.cache.keys import KeyRecipe
from accel.cache.memory import MemoryTier
from accel.cache.store import INLINE_MAX, Store
from accel.http.dates import format_http_date
from accel.http.headers import Headers
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.upstream import Origin, OriginPool, UpstreamBusy, UpstreamSettings, UpstreamTimeout
from tests.fakes import T0, FakeResponder, FakeUpstream, always, end_turn, make_request, response
from tests.test_byteranges import parse_multipart


def make_proxy(clock, store, upstream, rules: CacheRules | None = CacheRules()):
    route = Route(upstream=upstream, cache=rules)
    router: Router[Route] = Router([(["*"], [("/", route)])])
    return Accelerator(router, clock, store, Collapser(clock, timeout=5.0, pass_ttl=60.0))


def get(proxy, target=b"/", method=b"GET", headers=None) -> FakeResponder:
    r = FakeResponder()
    proxy.handle(make_request(target, method, headers), r)
    return r


def get_turn(clock, proxy, target=b"/", method=b"GET", headers=None) -> FakeResponder:
    """:func:`get`, then the end of the reactor turn it arrived in: a response
    that stores what it fetched completes only then (see "Group commit" in
    accel.cache.store)."""
    r = get(proxy, target, method, headers)
    end_turn(clock)
    return r


def dated(*pairs, clock=None):
    """Response headers with a Date of T0 (or the clock's now)."""
    now = clock.seconds() if clock is not None else T0
    return [(b"Date", format_http_date(now)), *pairs]


class TestHits:
    def test_one_fetch_serves_many_hits(self, clock, store):
        """RFC 9111 4.2: a fresh stored response answers later requests without the origin."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"hello"))
        proxy = make_proxy(clock, store, upstream)
        first = get(proxy)
        end_turn(clock)
        assert first.body == b"hello" and first.finished
        assert b"fwd=uri-miss" in first.header(b"cache-status")
        clock.advance(5)
        for _ in range(3):
            hit = get(proxy)
            assert hit.status == 200 and hit.body == b"hello" and hit.finished
            assert hit.header(b"age") == b"5"
            assert hit.header(b"cache-status").startswith(b"accel; hit")
            assert hit.log["cache"] == "HIT"
        assert len(upstream.calls) == 1

    def test_expired_entry_is_fetched_again(self, clock, store):
        """Past its freshness lifetime a response without validators is refetched."""
        upstream = FakeUpstream(auto=lambda call: response(200, dated((b"Cache-Control", b"max-age=10"), clock=clock), b"v")[0])
        proxy = make_proxy(clock, store, upstream)
        get_turn(clock, proxy)
        clock.advance(11)
        again = get_turn(clock, proxy)
        assert again.body == b"v"
        assert len(upstream.calls) == 2

    def test_no_store_is_never_stored(self, clock, store):
        """RFC 9111 5.2.2.5: no-store responses are fetched every time."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"no-store, max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        get(proxy)
        assert len(upstream.calls) == 2

    def test_head_is_answered_from_a_stored_get(self, clock, store):
        """RFC 9111 4: a stored GET response serves HEAD, without a body."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"abc"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        head = get(proxy, method=b"HEAD")
        assert head.status == 200 and head.finished and head.body == b""
        assert head.header(b"content-length") == b"3"
        assert len(upstream.calls) == 1

    def test_head_miss_fills_the_cache_with_get(self, clock, store):
        """A HEAD miss fetches with GET so the next GET is a hit."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"abc"))
        proxy = make_proxy(clock, store, upstream)
        head = get(proxy, method=b"HEAD")
        assert head.finished and head.body == b""
        assert upstream.calls[0].method == b"GET"
        hit = get(proxy)
        assert hit.body == b"abc" and len(upstream.calls) == 1

    def test_targeted_field_is_not_sent_downstream(self, clock, store):
        """RFC 9213: accel's own targeted field is consumed here."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Accel-Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        first = get(proxy)
        assert b"accel-cache-control" not in first.headers
        hit = get(proxy)
        assert b"accel-cache-control" not in hit.headers
        assert len(upstream.calls) == 1

    def test_route_without_cache_always_forwards(self, clock, store):
        """A route with caching off passes every request through."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream, rules=None)
        r = get(proxy)
        get(proxy)
        assert len(upstream.calls) == 2
        assert b"fwd=bypass" in r.header(b"cache-status")

    def test_forwarded_cache_status_names_each_responses_status(self, clock, store):
        """RFC 9211 2.3: each forwarded response's Cache-Status carries its own
        fwd-status, however many before it had another."""
        statuses = iter([200, 404, 200])

        def answer(call):
            return response(next(statuses), dated(), b"x")[0]

        proxy = make_proxy(clock, store, FakeUpstream(auto=answer), rules=None)
        seen = [get(proxy).header(b"cache-status") for _ in range(3)]
        assert seen == [
            b"accel; fwd=bypass; fwd-status=200",
            b"accel; fwd=bypass; fwd-status=404",
            b"accel; fwd=bypass; fwd-status=200",
        ]


class TestVary:
    def test_variants_are_stored_side_by_side(self, clock, store):
        """RFC 9111 4.1: each Accept-Language gets its own stored response."""

        def answer(call):
            lang = call.headers.get(b"accept-language") or b"none"
            return response(200, dated((b"Cache-Control", b"max-age=60"), (b"Vary", b"Accept-Language")), lang)[0]

        upstream = FakeUpstream(auto=answer)
        proxy = make_proxy(clock, store, upstream)
        assert get_turn(clock, proxy, headers=[(b"Accept-Language", b"en")]).body == b"en"
        miss = get_turn(clock, proxy, headers=[(b"Accept-Language", b"fr")])
        assert miss.body == b"fr"
        assert b"fwd=vary-miss" in miss.header(b"cache-status")
        assert get(proxy, headers=[(b"Accept-Language", b"en")]).body == b"en"
        assert get(proxy, headers=[(b"Accept-Language", b"fr")]).body == b"fr"
        assert len(upstream.calls) == 2

    def test_vary_star_is_never_served(self, clock, store):
        """RFC 9111 4.1: Vary: * matches no later request."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"), (b"Vary", b"*"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        get(proxy)
        assert len(upstream.calls) == 2


class TestRevalidation:
    def test_304_refreshes_and_serves_the_stored_body(self, clock, store):
        """RFC 9111 4.3: a stale entry is validated with If-None-Match; a 304 serves it."""
        upstream = FakeUpstream(
            auto=lambda call: response(200, dated((b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"'), clock=clock), b"body")[0]
        )
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(20)
        upstream.auto = lambda call: response(304, dated((b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"'), clock=clock))[0]
        r = get(proxy)
        assert upstream.calls[1].headers.get(b"if-none-match") == b'"v1"'
        assert r.status == 200 and r.body == b"body"
        assert b"fwd=stale" in r.header(b"cache-status") and b"fwd-status=304" in r.header(b"cache-status")
        assert r.log["cache"] == "REVALIDATED"
        # Freshened: the next request within the new lifetime is a plain hit.
        clock.advance(5)
        hit = get(proxy)
        assert hit.header(b"cache-status").startswith(b"accel; hit")
        assert len(upstream.calls) == 2

    def test_new_200_replaces_the_stored_response(self, clock, store):
        """RFC 9111 4.3.3: a full response to a validation replaces the stored one."""
        upstream = FakeUpstream(
            auto=lambda call: response(200, dated((b"Cache-Control", b"max-age=10"), (b"ETag", b'"v1"'), clock=clock), b"old")[0]
        )
        proxy = make_proxy(clock, store, upstream)
        get_turn(clock, proxy)
        clock.advance(20)
        upstream.auto = lambda call: response(200, dated((b"Cache-Control", b"max-age=10"), (b"ETag", b'"v2"'), clock=clock), b"new")[0]
        assert get_turn(clock, proxy).body == b"new"
        assert get(proxy).body == b"new"
        assert len(upstream.calls) == 2

    def test_client_conditional_is_answered_from_the_cache(self, clock, store):
        """RFC 9110 13.2: If-None-Match matching the stored ETag gets 304 from accel."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"abc"'))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        r = get(proxy, headers=[(b"If-None-Match", b'"abc"')])
        assert r.status == 304 and r.body == b"" and r.header(b"etag") == b'"abc"'
        assert len(upstream.calls) == 1

    def test_client_conditional_on_a_miss_is_not_forwarded(self, clock, store):
        """A miss fetches the full response for the cache, then answers the precondition."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"abc"'))))
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy, headers=[(b"If-None-Match", b'"abc"')])
        assert b"if-none-match" not in upstream.calls[0].headers
        assert r.status == 304
        assert get(proxy).body == b"x" and len(upstream.calls) == 1

    @pytest.mark.parametrize(
        ("field", "value", "status"),
        [
            (b"If-Match", b'"other"', 412),
            (b"If-Unmodified-Since", b"Sat, 01 Jan 2000 00:00:00 GMT", 412),
            (b"If-None-Match", b'"abc"', 304),
            (b"If-Modified-Since", b"Fri, 01 Jan 2038 00:00:00 GMT", 304),
        ],
    )
    def test_each_precondition_on_a_miss_is_answered_by_accel(self, clock, store, field, value, status):
        """RFC 9110 13.2.2: whichever precondition field a miss carries, accel
        evaluates it against the fetched response (and still stores it)."""
        upstream = FakeUpstream(auto=always(headers=dated(
            (b"Cache-Control", b"max-age=60"),
            (b"ETag", b'"abc"'),
            (b"Last-Modified", b"Mon, 01 Jan 2001 00:00:00 GMT"),
        )))  # fmt: skip
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy, headers=[(field, value)])
        assert field.lower() not in upstream.calls[0].headers
        assert r.status == status
        assert get(proxy).body == b"x" and len(upstream.calls) == 1


class TestStale:
    def test_stale_if_error_serves_stale_when_the_origin_is_down(self, clock, store):
        """RFC 5861 4: within stale-if-error, an origin failure is answered with the stale copy."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=10, stale-if-error=60")), body=b"kept"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(30)

        def down(call):
            raise UpstreamTimeout("origin.test: no answer")

        upstream.auto = down
        r = get(proxy)
        assert r.status == 200 and r.body == b"kept"
        assert r.log["cache"] == "STALE"
        assert b"fwd=stale" in r.header(b"cache-status")

    def test_stale_if_error_covers_5xx_answers(self, clock, store):
        """RFC 5861 4: a 503 from the origin also lets the stale copy stand in."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=10, stale-if-error=60")), body=b"kept"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(30)
        upstream.auto = always(503, body=b"down")
        r = get(proxy)
        assert r.status == 200 and r.body == b"kept"
        assert b"fwd-status=503" in r.header(b"cache-status")

    def test_past_stale_if_error_the_error_is_returned(self, clock, store):
        """Beyond the stale-if-error window the client gets a clean 504."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=10, stale-if-error=5"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(30)

        def down(call):
            raise UpstreamTimeout("origin.test: no answer")

        upstream.auto = down
        r = get(proxy)
        assert r.status == 504 and b"origin.test" not in r.body

    def test_stale_if_error_covers_a_busy_origin(self, clock, store):
        """RFC 5861 4: an origin at its connection cap is an error the stale copy may
        stand in for, like any other.
        """
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=10, stale-if-error=60")), body=b"kept"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(30)

        def busy(call):
            raise UpstreamBusy("origin.test: 2 connections open (the cap) and the queue full (0 waiting)")

        upstream.auto = busy
        r = get(proxy)
        assert r.status == 200 and r.body == b"kept"
        assert b"fwd=stale" in r.header(b"cache-status")

    def test_stale_while_revalidate_serves_at_once_and_refreshes_once(self, clock, store):
        """RFC 5861 3: stale served immediately, one background validation."""
        upstream = FakeUpstream(
            auto=lambda call: response(200, dated((b"Cache-Control", b"max-age=10, stale-while-revalidate=60"), clock=clock), b"old")[0]
        )
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(15)
        upstream.auto = None  # hold the background fetch open
        a = get(proxy)
        b = get(proxy)
        assert a.body == b"old" and b.body == b"old"
        assert a.log["cache"] == "UPDATING"
        assert len(upstream.calls) == 2  # exactly one background fetch
        resp, _ = response(200, dated((b"Cache-Control", b"max-age=10"), clock=clock), b"new")
        upstream.calls[1].deferred.callback(resp)
        assert get(proxy).body == b"new"

    def test_only_if_cached_miss_is_504(self, clock, store):
        """RFC 9111 5.2.1.7: nothing stored and only-if-cached gives 504, origin untouched."""
        upstream = FakeUpstream(auto=always())
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy, headers=[(b"Cache-Control", b"only-if-cached")])
        assert r.status == 504 and not upstream.calls


class TestCollapsing:
    def test_concurrent_misses_make_one_origin_request(self, clock, store):
        """N concurrent misses for one URL: one fetch; the rest are served from it."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        clients = [get(proxy) for _ in range(5)]
        assert len(upstream.calls) == 1
        resp, body = response(200, dated((b"Cache-Control", b"max-age=60")), complete=False)
        upstream.calls[0].deferred.callback(resp)
        body.feed(b"shared")
        body.finish()
        end_turn(clock)
        for c in clients:
            assert c.status == 200 and c.body == b"shared" and c.finished
        assert all(b"collapsed" in c.header(b"cache-status") for c in clients[1:])
        assert len(upstream.calls) == 1

    def _stored_no_cache(self, clock, store):
        """A proxy holding a no-cache response with an ETag (every use is validated)."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        first = get(proxy)
        fields = dated((b"Cache-Control", b"no-cache"), (b"ETag", b'"v1"'), clock=clock)
        upstream.calls[0].deferred.callback(response(200, fields, b"stored")[0])
        end_turn(clock)
        assert first.body == b"stored" and first.finished
        clock.advance(1)
        return proxy, upstream

    def test_concurrent_revalidations_make_one_origin_request(self, clock, store):
        """RFC 9111 4.3: requests that arrive while a stored response is being
        validated share that validation: one conditional request, every client
        served the stored response once the 304 is back."""
        proxy, upstream = self._stored_no_cache(clock, store)
        clients = [get(proxy)]
        clock.advance(0.1)
        clients += [get(proxy) for _ in range(4)]
        assert len(upstream.calls) == 2
        assert upstream.calls[1].headers.get(b"if-none-match") == b'"v1"'
        clock.advance(0.1)
        fields = dated((b"Cache-Control", b"no-cache"), (b"ETag", b'"v1"'), clock=clock)
        upstream.calls[1].deferred.callback(response(304, fields)[0])
        for c in clients:
            assert c.status == 200 and c.body == b"stored" and c.finished
        assert len(upstream.calls) == 2
        assert all(b"collapsed" in c.header(b"cache-status") for c in clients[1:])
        # Later requests are validated again: the 304 made nothing fresh.
        clock.advance(0.1)
        get(proxy)
        assert len(upstream.calls) == 3

    def test_a_validation_sent_before_a_request_no_cache_does_not_answer_it(self, clock, store):
        """RFC 9111 5.2.1.4: a client's no-cache is met only by asking the origin
        after it asked; it waits, then validates on its own."""
        proxy, upstream = self._stored_no_cache(clock, store)
        leader = get(proxy)
        clock.advance(0.1)
        picky = get(proxy, headers=[(b"Cache-Control", b"no-cache")])
        clock.advance(0.1)
        fields = dated((b"Cache-Control", b"no-cache"), (b"ETag", b'"v1"'), clock=clock)
        upstream.calls[1].deferred.callback(response(304, fields)[0])
        assert leader.body == b"stored" and picky.status is None
        assert len(upstream.calls) == 3
        upstream.calls[2].deferred.callback(response(304, fields)[0])
        assert picky.status == 200 and picky.body == b"stored"

    def test_uncacheable_answer_releases_waiters_to_the_origin(self, clock, store):
        """When the shared fetch is not storable, waiters fetch on their own, and later
        requests skip the wait (hit-for-miss)."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        clients = [get(proxy) for _ in range(3)]
        resp, _ = response(200, dated((b"Cache-Control", b"private")), b"mine")
        upstream.auto = always(headers=dated((b"Cache-Control", b"private")), body=b"yours")
        upstream.calls[0].deferred.callback(resp)
        assert clients[0].body == b"mine"
        assert [c.body for c in clients[1:]] == [b"yours", b"yours"]
        upstream.auto = None
        late = [get(proxy) for _ in range(2)]
        assert len(upstream.calls) == 5  # the late ones went straight out, unserialised
        assert all(c.status is None for c in late)

    def test_passing_requests_skip_the_store_while_nothing_is_stored(self, clock, store, monkeypatch):
        """Under a hit-for-miss marker, once a read found the store empty, later requests
        for the key go to the origin without reading the store again."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"no-store")), body=b"x"))
        proxy = make_proxy(clock, store, upstream)
        reads = []
        lookup = store.lookup
        monkeypatch.setattr(store, "lookup", lambda key: reads.append(key) or lookup(key))
        for _ in range(5):
            r = get(proxy)
            assert r.body == b"x" and r.finished and r.log["cache"] == "MISS"
            assert b"fwd=uri-miss" in r.header(b"cache-status")
        assert len(upstream.calls) == 5
        assert len(reads) == 2  # the miss, then the first pass that noted the store empty

    def test_only_if_cached_under_a_marker_is_not_passed_through(self, clock, store):
        """A request with ``only-if-cached`` under a hit-for-miss marker that saw
        the store empty gets a 504 from the cache, not the origin's answer."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"no-store")), body=b"x"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        get(proxy)  # notes the store empty under the marker
        r = get(proxy, headers=[(b"cache-control", b"only-if-cached")])
        assert r.status == 504 and r.log["cache"] == "MISS"
        assert len(upstream.calls) == 2

    def test_something_stored_under_the_key_is_found_despite_the_marker(self, clock, store):
        """A response stored for the key after the marker noted the store empty (here by
        another worker sharing the store) is looked up and served."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"no-store")), body=b"x"))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        get(proxy)  # notes the store empty under the marker
        other = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"y"))
        assert get_turn(clock, make_proxy(clock, store, other)).body == b"y"  # another worker stores it
        hit = get(proxy)
        assert hit.body == b"y" and hit.log["cache"] == "HIT"
        assert len(upstream.calls) == 2

    def test_waiters_time_out_and_fetch_on_their_own(self, clock, store):
        """A stuck leader holds others for at most the lock timeout."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        get(proxy)
        assert len(upstream.calls) == 1
        clock.advance(5)
        assert len(upstream.calls) == 2


class TestIntegrity:
    def test_truncated_body_is_not_stored_and_the_client_sees_an_abort(self, clock, store):
        """An origin that dies mid-body: the client's response is aborted, nothing stored."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy)
        resp, body = response(200, dated((b"Cache-Control", b"max-age=60"), (b"Content-Length", b"10")), complete=False)
        upstream.calls[0].deferred.callback(resp)
        body.feed(b"12345")
        body.break_off()
        assert r.aborted and not r.finished
        upstream.auto = always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"whole")
        assert get_turn(clock, proxy).body == b"whole"
        assert len(upstream.calls) == 2

    def test_pass_through_body_failing_is_logged_and_aborts_the_client(self, clock, store):
        """A pass-through whose origin dies mid-body: the client's response is
        aborted and one warning names the request and the origin's error."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream, rules=None)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            r = get(proxy, b"/p?q=1")
            resp, body = response(200, [(b"Content-Length", b"10")], complete=False)
            upstream.calls[0].deferred.callback(resp)
            body.feed(b"12345")
            body.break_off()
        finally:
            globalLogPublisher.removeObserver(events.append)
        assert r.aborted and not r.finished and r.body == b"12345"
        (warning,) = [formatEvent(e) for e in events if "origin body failed" in formatEvent(e)]
        assert "GET /p?q=1" in warning and "origin closed mid-body" in warning

    def test_origin_timeout_is_a_clean_504(self, clock, store):
        """A timed-out origin gives 504 without origin internals."""

        def hang(call):
            raise UpstreamTimeout("origin.test:80 secret-internal-name timed out")

        proxy = make_proxy(clock, store, FakeUpstream(auto=hang))
        r = get(proxy)
        assert r.status == 504 and b"secret" not in r.body

    def test_busy_origin_is_a_clean_503(self, clock, store):
        """Every origin at its connection cap gives 503, plain, without origin internals,
        on cached and uncached routes alike.
        """

        def busy(call):
            raise UpstreamBusy("origin.test:80 secret-internal-name: 2 connections open (the cap)")

        for rules in (CacheRules(), None):
            r = get(make_proxy(clock, store, FakeUpstream(auto=busy), rules))
            assert r.status == 503 and r.finished
            assert r.header(b"content-type").startswith(b"text/plain")
            assert b"secret" not in r.body

    def test_client_leaving_mid_body_stores_nothing(self, clock, store):
        """A client that disconnects mid-body aborts the fill: no partial entry."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy)
        resp, body = response(200, dated((b"Cache-Control", b"max-age=60"), (b"Content-Length", b"10")), complete=False)
        upstream.calls[0].deferred.callback(resp)
        body.feed(b"12345")
        r.disconnect()
        assert body.discarded
        upstream.auto = always(headers=dated((b"Cache-Control", b"max-age=60")))
        get(proxy)
        assert len(upstream.calls) == 2


class TestInvalidation:
    def test_unsafe_method_invalidates_the_target(self, clock, store):
        """RFC 9111 4.4: a successful POST removes the stored responses for its URI."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get_turn(clock, proxy, b"/item")
        post = get(proxy, b"/item", method=b"POST")
        assert post.status == 200
        get_turn(clock, proxy, b"/item")
        assert [c.method for c in upstream.calls] == [b"GET", b"POST", b"GET"]

    def test_failed_unsafe_request_invalidates_nothing(self, clock, store):
        """RFC 9111 4.4: only non-error responses invalidate."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy, b"/item")
        upstream.auto = always(500)
        get(proxy, b"/item", method=b"DELETE")
        upstream.auto = always(headers=dated((b"Cache-Control", b"max-age=60")))
        get(proxy, b"/item")
        assert len(upstream.calls) == 2

    def test_location_on_the_same_origin_is_invalidated(self, clock, store):
        """RFC 9111 4.4: Location naming a same-origin URI is invalidated too."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get_turn(clock, proxy, b"/other")
        upstream.auto = always(201, [(b"Location", b"/other")])
        get(proxy, b"/new", method=b"POST")
        upstream.auto = always(headers=dated((b"Cache-Control", b"max-age=60")))
        get(proxy, b"/other")
        assert len(upstream.calls) == 3


class TestRanges:
    def stored(self, clock, store, body=b"0123456789"):
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"r"')), body=body))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        return proxy, upstream

    def test_single_range_from_the_cache(self, clock, store):
        """RFC 9110 14: a stored complete response answers a byte range with 206."""
        proxy, upstream = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=2-4")])
        assert r.status == 206 and r.body == b"234"
        assert r.header(b"content-range") == b"bytes 2-4/10"
        assert r.header(b"content-length") == b"3"
        assert len(upstream.calls) == 1

    def test_unsatisfiable_range_is_416(self, clock, store):
        """RFC 9110 15.5.17: a range past the end gets 416 with the length."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=50-60")])
        assert r.status == 416 and r.header(b"content-range") == b"bytes */10"

    def test_if_range_mismatch_sends_the_whole(self, clock, store):
        """RFC 9110 13.1.5: If-Range that does not match gets the full 200."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=2-4"), (b"If-Range", b'"other"')])
        assert r.status == 200 and r.body == b"0123456789"

    def test_range_miss_fills_the_whole_object_then_serves_the_range(self, clock, store):
        """A Range miss fetches the whole object for the cache, then answers the range."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"abcdefgh"))
        proxy = make_proxy(clock, store, upstream)
        r = get_turn(clock, proxy, headers=[(b"Range", b"bytes=-3")])
        assert b"range" not in upstream.calls[0].headers
        assert r.status == 206 and r.body == b"fgh"
        assert get(proxy).body == b"abcdefgh" and len(upstream.calls) == 1

    def test_range_miss_is_reported_as_a_miss(self, clock, store):
        """RFC 9211: the Range request whose miss fetched the object is answered from the
        store, but its Cache-Status and access-log status say it was forwarded (a miss,
        as nginx and Varnish count it), not a collapsed hit; the next request is a hit."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=b"abcdefgh"))
        proxy = make_proxy(clock, store, upstream)
        r = get_turn(clock, proxy, headers=[(b"Range", b"bytes=-3")])
        assert r.status == 206
        assert r.header(b"cache-status") == b"accel; fwd=uri-miss; fwd-status=200; stored"
        assert r.log["cache"] == "MISS"
        again = get(proxy, headers=[(b"Range", b"bytes=-3")])
        assert again.header(b"cache-status").startswith(b"accel; hit; ttl=") and again.log["cache"] == "HIT"

    def test_range_miss_on_an_uncacheable_object_passes_the_range_through(self, clock, store):
        """If the object cannot be stored, the client's Range goes to the origin as sent."""

        def answer(call):
            if b"range" in call.headers:
                return response(206, [(b"Content-Range", b"bytes 0-1/4")], b"ab")[0]
            return response(200, dated((b"Cache-Control", b"no-store")), b"abcd")[0]

        upstream = FakeUpstream(auto=answer)
        proxy = make_proxy(clock, store, upstream)
        r = get(proxy, headers=[(b"Range", b"bytes=0-1")])
        assert r.status == 206 and r.body == b"ab"
        assert upstream.calls[-1].headers.get(b"range") == b"bytes=0-1"

    def test_range_miss_on_a_large_object_passes_the_range_through(self, clock, store):
        """Objects over range_fetch_max are not fetched whole for a range request."""

        def answer(call):
            if b"range" in call.headers:
                return response(206, [(b"Content-Range", b"bytes 0-1/100")], b"ab")[0]
            return response(200, dated((b"Cache-Control", b"max-age=60")), b"x" * 100)[0]

        upstream = FakeUpstream(auto=answer)
        proxy = make_proxy(clock, store, upstream, rules=CacheRules(range_fetch_max=50))
        r = get(proxy, headers=[(b"Range", b"bytes=0-1")])
        assert r.status == 206 and r.body == b"ab"


class TestBodiesInRowsAndFiles:
    """Every reader of a stored body, with a body kept in its row and one in a file."""

    @pytest.fixture(params=[INLINE_MAX, INLINE_MAX + 1], ids=["row", "file"])
    def body(self, request) -> bytes:
        return bytes(range(256)) * (request.param // 256) + b"t" * (request.param % 256)

    def stored(self, clock, store, body, tmp_path):
        headers = dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"r"'), (b"Content-Type", b"text/plain"))
        upstream = FakeUpstream(auto=always(headers=headers, body=body))
        proxy = make_proxy(clock, store, upstream)
        assert get_turn(clock, proxy).body == body
        kept = list((tmp_path / "cache").glob("*/*/*.val"))
        assert len(kept) == (0 if len(body) <= INLINE_MAX else 1)
        return proxy, upstream

    def test_whole_body(self, clock, store, body, tmp_path):
        """A hit sends the whole body, byte for byte."""
        proxy, upstream = self.stored(clock, store, body, tmp_path)
        r = get(proxy)
        assert r.status == 200 and r.finished and r.body == body
        assert r.header(b"cache-status").startswith(b"accel; hit") and len(upstream.calls) == 1

    def test_head(self, clock, store, body, tmp_path):
        """HEAD gets the stored length and no body."""
        proxy, _ = self.stored(clock, store, body, tmp_path)
        r = get(proxy, method=b"HEAD")
        assert r.finished and r.body == b"" and r.header(b"content-length") == b"%d" % len(body)

    def test_single_range(self, clock, store, body, tmp_path):
        """A range in the middle and a suffix range are the bytes they name."""
        proxy, _ = self.stored(clock, store, body, tmp_path)
        r = get(proxy, headers=[(b"Range", b"bytes=1000-1999")])
        assert r.status == 206 and r.finished and r.body == body[1000:2000]
        r = get(proxy, headers=[(b"Range", b"bytes=-300")])
        assert r.status == 206 and r.finished and r.body == body[-300:]

    def test_multipart_ranges(self, clock, store, body, tmp_path):
        """Several ranges make a multipart 206 whose parts are the bytes they name."""
        proxy, _ = self.stored(clock, store, body, tmp_path)
        r = get(proxy, headers=[(b"Range", b"bytes=0-9,5000-5099,-10")])
        assert r.status == 206 and r.finished and r.header(b"content-length") == b"%d" % len(r.body)
        boundary = r.header(b"content-type").partition(b"; boundary=")[2]
        parts = [part for _, part in parse_multipart(r.body, boundary)]
        assert parts == [body[:10], body[5000:5100], body[-10:]]

    def test_revalidated_with_304(self, clock, store, body, tmp_path):
        """A 304 freshens the entry and the stored body is served, then hit again."""
        proxy, upstream = self.stored(clock, store, body, tmp_path)
        clock.advance(120)
        upstream.auto = lambda call: response(304, dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"r"'), clock=clock))[0]
        r = get(proxy)
        assert r.status == 200 and r.body == body and r.log["cache"] == "REVALIDATED"
        hit = get(proxy)
        assert hit.body == body and hit.header(b"cache-status").startswith(b"accel; hit")
        assert len(upstream.calls) == 2

    def test_stale_if_error(self, clock, store, body, tmp_path):
        """Stale serving on an origin failure sends the stored body."""
        headers = dated((b"Cache-Control", b"max-age=10, stale-if-error=600"))
        upstream = FakeUpstream(auto=always(headers=headers, body=body))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(60)
        upstream.auto = always(503)
        r = get(proxy)
        assert r.status == 200 and r.body == body and r.finished


class TestMultipleRanges:
    """RFC 9110 14.6: several ranges of a stored response, as one multipart/byteranges 206."""

    BODY = bytes(range(256)) * 40  # 10 KiB, larger than what fits one part

    def stored(self, clock, store, rules: CacheRules | None = None):
        headers = dated((b"Cache-Control", b"max-age=60"), (b"ETag", b'"r"'), (b"Content-Type", b"application/pdf"))
        upstream = FakeUpstream(auto=always(headers=headers, body=self.BODY))
        proxy = make_proxy(clock, store, upstream, rules=rules or CacheRules())
        get(proxy)
        return proxy, upstream

    def test_two_ranges_are_a_multipart_206(self, clock, store):
        """Two ranges: 206 multipart/byteranges with the exact length, no top-level
        Content-Range, the stored fields, and each part the bytes of its range."""
        proxy, upstream = self.stored(clock, store)
        clock.advance(3)
        r = get(proxy, headers=[(b"Range", b"bytes=100-199,5000-")])
        assert r.status == 206 and r.finished
        media, _, boundary = r.header(b"content-type").partition(b"; boundary=")
        assert media == b"multipart/byteranges" and len(boundary) == 20
        assert r.header(b"content-length") == b"%d" % len(r.body)
        assert b"content-range" not in r.headers
        assert r.header(b"etag") == b'"r"' and r.header(b"age") == b"3"
        assert r.header(b"cache-status").startswith(b"accel; hit") and r.header(b"via")
        parts = parse_multipart(r.body, boundary)
        assert parts == [
            ({b"content-type": b"application/pdf", b"content-range": b"bytes 100-199/10240"}, self.BODY[100:200]),
            ({b"content-type": b"application/pdf", b"content-range": b"bytes 5000-10239/10240"}, self.BODY[5000:]),
        ]
        assert len(upstream.calls) == 1

    def test_from_the_memory_tier(self, tmp_path, clock):
        """A body held in memory is sliced into the same multipart body."""
        store = Store(str(tmp_path / "mem"), 64 * 1024 * 1024, clock, memory=MemoryTier(1 << 20))
        try:
            proxy, _ = self.stored(clock, store)
            r = get(proxy, headers=[(b"Range", b"bytes=0-9,-10")])
            boundary = r.header(b"content-type").partition(b"; boundary=")[2]
            assert [p[1] for p in parse_multipart(r.body, boundary)] == [self.BODY[:10], self.BODY[-10:]]
            assert r.header(b"content-length") == b"%d" % len(r.body)
        finally:
            store.close()

    def test_boundary_is_new_for_each_response(self, clock, store):
        """The boundary is random per response, never reused."""
        proxy, _ = self.stored(clock, store)
        types = {get(proxy, headers=[(b"Range", b"bytes=0-1,9-10")]).header(b"content-type") for _ in range(3)}
        assert len(types) == 3

    def test_overlapping_ranges_coalesce_into_a_single_part(self, clock, store):
        """Ranges that merge into one: a plain 206 with Content-Range."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=0-99,50-149")])
        assert r.status == 206 and r.body == self.BODY[:150]
        assert r.header(b"content-range") == b"bytes 0-149/10240"
        assert r.header(b"content-type") == b"application/pdf"

    def test_max_ranges_zero_ignores_range(self, clock, store):
        """cache.max_ranges = 0: every Range is ignored, the answer is the whole 200."""
        proxy, _ = self.stored(clock, store, CacheRules(max_ranges=0))
        r = get(proxy, headers=[(b"Range", b"bytes=0-1")])
        assert r.status == 200 and r.body == self.BODY

    def test_max_ranges_one_answers_several_whole(self, clock, store):
        """cache.max_ranges = 1: a single range is a 206, two ranges the whole 200."""
        proxy, _ = self.stored(clock, store, CacheRules(max_ranges=1))
        assert get(proxy, headers=[(b"Range", b"bytes=0-1")]).status == 206
        r = get(proxy, headers=[(b"Range", b"bytes=0-1,9-10")])
        assert r.status == 200 and r.body == self.BODY

    def test_if_range_mismatch_sends_the_whole(self, clock, store):
        """13.1.5: a failing If-Range: 200 whole, for several ranges too."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=0-1,9-10"), (b"If-Range", b'"other"')])
        assert r.status == 200 and r.body == self.BODY

    def test_unsatisfiable_ranges_are_416(self, clock, store):
        """15.5.17: none of several ranges satisfiable: 416 as before."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=20000-20001,30000-")])
        assert r.status == 416 and r.header(b"content-range") == b"bytes */10240"

    def test_head_ignores_range(self, clock, store):
        """14.2: HEAD ignores Range: 200, the whole length, no body."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, method=b"HEAD", headers=[(b"Range", b"bytes=0-1,9-10")])
        assert r.status == 200 and r.body == b"" and r.finished
        assert r.header(b"content-length") == b"10240" and r.header(b"content-type") == b"application/pdf"

    def test_badly_overlapping_ranges_get_the_whole(self, clock, store):
        """17.15: ranges adding up to more than the body: 200 whole, as nginx."""
        proxy, _ = self.stored(clock, store)
        r = get(proxy, headers=[(b"Range", b"bytes=0-,0-,0-")])
        assert r.status == 200 and r.body == self.BODY

    def test_multipart_is_not_remembered_for_the_fast_path(self, clock, store):
        """A 206 is never what a later plain GET is answered with."""
        proxy, _ = self.stored(clock, store)
        get(proxy, headers=[(b"Range", b"bytes=0-1,9-10")])
        r = get(proxy)
        assert r.status == 200 and r.body == self.BODY

    def test_range_miss_fills_then_answers_multipart(self, clock, store):
        """A multi-range miss fetches the whole object for the cache without the
        Range, then answers the ranges from the cache as a hit would."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60")), body=self.BODY))
        proxy = make_proxy(clock, store, upstream)
        r = get_turn(clock, proxy, headers=[(b"Range", b"bytes=0-9,20-29")])
        assert b"range" not in upstream.calls[0].headers
        assert r.status == 206
        boundary = r.header(b"content-type").partition(b"; boundary=")[2]
        assert [p[1] for p in parse_multipart(r.body, boundary)] == [self.BODY[:10], self.BODY[20:30]]
        assert get(proxy).body == self.BODY and len(upstream.calls) == 1


class TestAnsweredHere:
    def test_trace_is_refused_and_never_forwarded(self, clock, store):
        """TRACE gets 405 with Allow; the origin never sees it."""
        upstream = FakeUpstream(auto=always())
        r = get(make_proxy(clock, store, upstream), method=b"TRACE")
        assert r.status == 405 and r.header(b"allow") and not upstream.calls

    def test_options_with_max_forwards_zero_is_answered_here(self, clock, store):
        """RFC 9110 7.6.2: Max-Forwards: 0 means this hop answers."""
        upstream = FakeUpstream(auto=always())
        r = get(make_proxy(clock, store, upstream), method=b"OPTIONS", headers=[(b"Max-Forwards", b"0")])
        assert r.status == 200 and r.header(b"allow") and not upstream.calls

    def test_options_asterisk_is_answered_here(self, clock, store):
        """OPTIONS * is about this server; accel answers it."""
        upstream = FakeUpstream(auto=always())
        proxy = make_proxy(clock, store, upstream)
        r = FakeResponder()
        request = make_request(b"*", b"OPTIONS")
        proxy.handle(request, r)
        assert r.status == 200 and not upstream.calls


def test_cdn_cache_control_is_obeyed_and_stripped_when_asked(clock, store):
    """RFC 9213: CDN-Cache-Control overrides Cache-Control here; the route may strip it."""
    upstream = FakeUpstream(
        auto=always(headers=dated((b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60")))
    )
    proxy = make_proxy(clock, store, upstream, rules=CacheRules(strip=(b"accel-cache-control", b"cdn-cache-control")))
    first = get(proxy)
    hit = get(proxy)
    assert len(upstream.calls) == 1
    assert b"cdn-cache-control" not in first.headers and b"cdn-cache-control" not in hit.headers
    assert hit.header(b"cache-control") == b"no-store"


def test_cdn_cache_control_is_kept_downstream_by_default(clock, store):
    """Without the strip setting, CDN-Cache-Control goes on to the next CDN hop."""
    upstream = FakeUpstream(auto=always(headers=dated((b"CDN-Cache-Control", b"max-age=60"))))
    proxy = make_proxy(clock, store, upstream)
    get(proxy)
    assert get(proxy).header(b"cdn-cache-control") == b"max-age=60"


class TestNoPoisoning:
    def test_one_clients_no_store_does_not_bypass_the_cache_for_others(self, clock, store):
        """A request's own no-store keeps its response out, but not the next client's."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy, headers=[(b"Cache-Control", b"no-store")])
        get(proxy)
        hit = get(proxy)
        assert hit.header(b"cache-status").startswith(b"accel; hit")
        assert len(upstream.calls) == 2

    def test_one_clients_authorization_does_not_bypass_the_cache_for_others(self, clock, store):
        """An authorized request's answer is not stored, and others still are."""
        upstream = FakeUpstream(auto=always(headers=dated((b"Cache-Control", b"max-age=60"))))
        proxy = make_proxy(clock, store, upstream)
        get(proxy, headers=[(b"Authorization", b"Bearer secret")])
        get(proxy)
        assert get(proxy).header(b"cache-status").startswith(b"accel; hit")
        assert len(upstream.calls) == 2

    def test_authorized_response_is_never_served_to_others(self, clock, store):
        """RFC 9111 3.5: without public/s-maxage/must-revalidate it is not stored."""
        upstream = FakeUpstream(auto=lambda call: response(200, dated((b"Cache-Control", b"max-age=60")), call.headers.get(b"authorization") or b"anon")[0])
        proxy = make_proxy(clock, store, upstream)
        assert get(proxy, headers=[(b"Authorization", b"alice")]).body == b"alice"
        assert get_turn(clock, proxy).body == b"anon"


    def test_a_vary_field_named_in_connection_is_not_the_variant_stored(self, clock, store):
        """A field the client names in Connection never reaches the origin
        (RFC 9110 section 7.6.1), so the answer is stored as the variant
        without it, never as the variant for its value."""

        def answer(call):
            origin = call.headers.get(b"origin")
            fields = [(b"Cache-Control", b"max-age=60"), (b"Vary", b"Origin")]
            if origin is not None:
                fields.append((b"Access-Control-Allow-Origin", origin))
            return response(200, dated(*fields), b"data")[0]

        upstream = FakeUpstream(auto=answer)
        proxy = make_proxy(clock, store, upstream)
        cors = (b"Origin", b"https://app.example")
        get_turn(clock, proxy, headers=[cors, (b"Connection", b"keep-alive, Origin")])
        innocent = get_turn(clock, proxy, headers=[cors])
        assert innocent.header(b"access-control-allow-origin") == b"https://app.example"
        assert get(proxy).header(b"cache-status").startswith(b"accel; hit")
        assert len(upstream.calls) == 2

    def test_a_key_field_named_in_connection_is_not_in_the_key(self, clock, store):
        """Likewise for a cache.key_headers field: the origin never saw it."""
        upstream = FakeUpstream(
            auto=lambda call: response(
                200, dated((b"Cache-Control", b"max-age=60")), call.headers.get(b"x-device") or b"none"
            )[0]
        )
        proxy = make_proxy(clock, store, upstream, CacheRules(recipe=KeyRecipe(headers=(b"x-device",))))
        device = (b"X-Device", b"mobile")
        assert get_turn(clock, proxy, headers=[device, (b"Connection", b"x-device")]).body == b"none"
        assert get_turn(clock, proxy, headers=[device]).body == b"mobile"


class TestInterim:
    """RFC 9110 section 15.2: a proxy MUST forward 1xx responses; RFC 9111 3: only final ones are stored."""

    EARLY_HINTS = Headers([(b"link", b"</s.css>; rel=preload"), (b"connection", b"x-hop"), (b"x-hop", b"1")])

    def test_interim_is_forwarded_on_a_miss_and_not_replayed_on_a_hit(self, clock, store):
        """A 103 reaches the client that caused the fetch; the hit that follows has none."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream)
        miss = get(proxy)
        interim = upstream.calls[0].interim
        assert interim is not None
        interim(103, b"Early Hints", self.EARLY_HINTS.copy())
        assert miss.status is None
        ((status, reason, headers),) = miss.interims
        assert (status, reason) == (103, b"Early Hints")
        assert headers.get_all(b"link") == [b"</s.css>; rel=preload"]
        assert b"x-hop" not in headers and b"connection" not in headers
        upstream.calls[0].deferred.callback(response(200, dated((b"Cache-Control", b"max-age=60")), b"x")[0])
        end_turn(clock)
        assert miss.status == 200 and miss.finished
        hit = get(proxy)
        assert hit.header(b"cache-status").startswith(b"accel; hit")
        assert hit.interims == [] and b"link" not in hit.headers

    def test_interim_is_forwarded_when_passing_through(self, clock, store):
        """On a route without caching the 1xx goes through as well."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream, rules=None)
        r = get(proxy)
        upstream.calls[0].interim(102, b"Processing", Headers())
        assert [i[0] for i in r.interims] == [102]

    def test_no_interim_for_a_client_that_left(self, clock, store):
        """A 1xx arriving after the client went away is dropped."""
        upstream = FakeUpstream()
        proxy = make_proxy(clock, store, upstream, rules=None)
        r = get(proxy)
        r.disconnect()
        upstream.calls[0].interim(103, b"Early Hints", self.EARLY_HINTS.copy())
        assert r.interims == []

    def test_background_fetch_forwards_no_interim(self, clock, store):
        """stale-while-revalidate's background fetch has no client to forward a 1xx to."""
        headers = dated((b"Cache-Control", b"max-age=1, stale-while-revalidate=60"), (b"ETag", b'"a"'))
        upstream = FakeUpstream(auto=always(headers=headers))
        proxy = make_proxy(clock, store, upstream)
        get(proxy)
        clock.advance(5)
        upstream.auto = None
        stale = get(proxy)
        assert stale.status == 200 and len(upstream.calls) == 2
        assert upstream.calls[1].interim is None


class TestPassThroughOverAnOriginPool:
    """Plain forwarding over a real :class:`~accel.upstream.OriginPool` on
    ``StringTransport``\\ s: how the origin's body reaches the client."""

    ORIGIN = Origin("http", "origin.test", 80)

    def forward(self, answer: list[bytes]) -> tuple[FakeResponder, OriginPool]:
        reactor = MemoryReactorClock()
        pool = OriginPool([self.ORIGIN], reactor, UpstreamSettings())
        router: Router[Route] = Router([(["*"], [("/", Route(upstream=pool, cache=None))])])
        proxy = Accelerator(router, reactor, None)
        client = FakeResponder()
        proxy.handle(make_request(b"/a"), client)
        host, port, factory, _, _ = reactor.tcpClients.pop(0)
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        protocol.makeConnection(StringTransport())
        for data in answer:
            protocol.dataReceived(data)
        return client, pool

    def test_a_body_that_comes_with_its_head_is_written_once_and_finished(self):
        """An answer that arrives whole goes to the client whole, once, and
        complete; no producer is left registered; the origin connection is pooled."""
        client, pool = self.forward([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
        assert (client.status, client.chunks, client.finished) == (200, [b"hello"], True)
        assert client.header(b"content-length") == b"5" and client.producer is None
        assert pool.idle_connections(self.ORIGIN) == 1

    def test_a_body_in_pieces_is_relayed_as_it_comes(self):
        """An answer whose body comes later is relayed, with back-pressure,
        each piece as it arrives, and finished at its end."""
        client, pool = self.forward(
            [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", b"llo"]
        )
        assert (client.status, client.chunks, client.finished) == (200, [b"he", b"llo"], True)
        assert client.producer is None and pool.idle_connections(self.ORIGIN) == 1

    def test_an_empty_answer_is_finished_without_a_write(self):
        """A 204 (no body) is started and finished, nothing written."""
        client, _ = self.forward([b"HTTP/1.1 204 No Content\r\n\r\n"])
        assert (client.status, client.chunks, client.finished) == (204, [], True)

"""Collapsed requests served from the leader's fill while it streams.

Concurrent misses for one key make one origin request; the others *follow*
it: they get the leader's head at once and read the body from the spool
file as it grows (accel.streams.Feed / Follower). On fakes (tests/fakes.py),
a task.Clock and a real Store in a temporary directory; one test over real
loopback sockets at the end.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from accel.app import build_accelerator
from accel.cache.collapse import Collapser
from accel.cache.store import Store
from accel.config import Config, OriginURL
from accel.config import Route as RouteConfig
from accel.config import Site as SiteConfig
from accel.http.dates import format_http_date
from accel.http.server import HTTPServerFactory
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.streams import CHUNK, Feed
from tests.fakes import T0, FakeResponder, FakeUpstream, always, end_turn, make_request, response

CACHEABLE = [(b"Date", format_http_date(T0)), (b"Cache-Control", b"max-age=60")]


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def proxy(clock, store, upstream) -> Accelerator:
    route = Route(upstream=upstream, cache=CacheRules())
    router: Router[Route] = Router([(["*"], [("/", route)])])
    return Accelerator(router, clock, store, Collapser(clock, timeout=5.0, pass_ttl=60.0))


def get(proxy, method=b"GET", headers=None) -> FakeResponder:
    r = FakeResponder()
    proxy.handle(make_request(b"/big", method, headers), r)
    return r


def answer(upstream, headers=CACHEABLE, length: int | None = 12):
    """Answer the first origin call with a head; the test feeds the body."""
    extra = [(b"Content-Length", b"%d" % length)] if length is not None else []
    resp, body = response(200, [*headers, *extra], complete=False)
    body.length = length
    upstream.calls[0].deferred.callback(resp)
    return body


class TestFollowing:
    def test_followers_get_bytes_before_the_origin_finishes(self, proxy, upstream, clock):
        """N concurrent misses: one origin call, and the others receive the first
        chunk while the origin is still sending the body."""
        clients = [get(proxy) for _ in range(4)]
        assert len(upstream.calls) == 1
        body = answer(upstream)
        body.feed(b"first ")
        for c in clients:
            assert c.status == 200 and c.body == b"first " and not c.finished
        body.feed(b"second")
        body.finish()
        end_turn(clock)
        for c in clients:
            assert c.body == b"first second" and c.finished and not c.aborted
        assert len(upstream.calls) == 1

    def test_followers_answer_with_their_own_age_and_cache_status(self, proxy, upstream):
        """RFC 9211 2.6: a follower's Cache-Status says the forward request was
        collapsed; it carries the leader's fields and its own Age."""
        leader, follower = get(proxy), get(proxy)
        body = answer(upstream)
        assert follower.header(b"cache-status") == b"accel; fwd=uri-miss; fwd-status=200; stored; collapsed"
        assert b"collapsed" not in leader.header(b"cache-status")
        assert follower.header(b"age") == b"0"
        assert follower.header(b"content-length") == b"12"
        assert follower.header(b"cache-control") == b"max-age=60"
        body.feed(b"x" * 12)
        body.finish()

    def test_following_outlasts_the_lock_timeout(self, proxy, upstream, clock):
        """A long body: followers stay on the fill past the collapsing lock
        timeout instead of fetching on their own."""
        get(proxy)
        follower = get(proxy)
        body = answer(upstream)
        body.feed(b"0123")
        clock.advance(60)
        body.feed(b"456789ab")
        body.finish()
        end_turn(clock)
        assert follower.body == b"0123456789ab" and follower.finished
        assert len(upstream.calls) == 1

    def test_a_head_leader_fills_for_get_followers(self, proxy, upstream, clock):
        """The leader's client asked HEAD; the GET behind it still gets the body."""
        head = get(proxy, method=b"HEAD")
        follower = get(proxy)
        body = answer(upstream)
        assert head.finished and head.body == b""
        body.feed(b"0123456789ab")
        body.finish()
        end_turn(clock)
        assert follower.body == b"0123456789ab" and follower.finished

    def test_a_request_arriving_mid_fill_follows_from_the_start(self, proxy, upstream, clock):
        """A miss that arrives while the fill streams joins it and gets every byte."""
        get(proxy)
        body = answer(upstream)
        body.feed(b"early ")
        late = get(proxy)
        assert late.body == b"early " and len(upstream.calls) == 1
        body.feed(b"later!")
        body.finish()
        end_turn(clock)
        assert late.body == b"early later!" and late.finished

    def test_unknown_length_followers_finish_when_the_fill_does(self, proxy, upstream, clock):
        """Without Content-Length the followers' responses carry none either and
        end when the origin's body ends."""
        leader, follower = get(proxy), get(proxy)
        body = answer(upstream, length=None)
        assert follower.header(b"content-length") is None
        body.feed(b"abc")
        assert not follower.finished
        body.finish()
        end_turn(clock)
        assert follower.body == leader.body == b"abc" and follower.finished

    def test_the_entry_is_stored_and_served_afterwards(self, proxy, upstream):
        """The fill commits as usual: the next request is a hit."""
        get(proxy), get(proxy)
        body = answer(upstream)
        body.feed(b"0123456789ab")
        body.finish()
        hit = get(proxy)
        assert hit.body == b"0123456789ab" and hit.log["cache"] == "HIT"
        assert len(upstream.calls) == 1

    def test_large_bodies_go_in_bounded_reads(self, proxy, upstream, clock):
        """Followers read the file in chunks of at most CHUNK bytes."""
        size = 3 * CHUNK + 5
        leader, follower = get(proxy), get(proxy)
        body = answer(upstream, length=size)
        body.feed(b"a" * size)
        body.finish()
        end_turn(clock)
        assert follower.body == leader.body and follower.finished
        assert max(len(c) for c in follower.chunks) <= CHUNK


class TestBrokenFills:
    def test_truncated_origin_body_aborts_the_followers(self, proxy, upstream, clock):
        """The origin dies mid-body: every follower's response is aborted, never
        finished, and nothing is stored."""
        clients = [get(proxy) for _ in range(3)]
        body = answer(upstream)
        body.feed(b"12345")
        body.break_off()
        for c in clients:
            assert c.aborted and not c.finished
        upstream.auto = always(headers=CACHEABLE, body=b"whole")
        again = get(proxy)
        end_turn(clock)
        assert again.body == b"whole"
        assert len(upstream.calls) == 2

    def test_short_body_aborts_the_followers(self, proxy, upstream):
        """A body that ends before its Content-Length is not whole: aborted."""
        get(proxy)  # the leader
        follower = get(proxy)
        body = answer(upstream, length=12)
        body.feed(b"short")
        body.finish()
        assert follower.aborted and not follower.finished

    def test_a_writer_that_gives_up_aborts_the_followers_not_the_leader(self, proxy, upstream):
        """The store's writer gives up (here: more body than declared): the
        followers, who read what it stored, are aborted at once; the leader's
        client is still relayed what the origin sends."""
        leader, follower = get(proxy), get(proxy)
        body = answer(upstream, length=5)
        body.feed(b"12345")
        assert follower.body == b"1234"  # the last byte waits for the commit
        body.feed(b"6789")
        assert follower.aborted and not follower.finished
        body.feed(b"abc")
        body.finish()
        assert leader.body == b"123456789abc"

    def test_waiters_that_did_not_start_fall_back(self, proxy, upstream):
        """A range request waits for the end; when the fill breaks it fetches
        on its own rather than following."""
        get(proxy)
        ranged = get(proxy, headers=[(b"Range", b"bytes=0-1")])
        body = answer(upstream)
        assert ranged.status is None
        body.break_off()
        assert len(upstream.calls) == 2 and ranged.status is None


class TestClients:
    def test_leader_client_leaving_keeps_the_fill_for_the_followers(self, proxy, upstream, clock):
        """The leader's client disconnects: the origin body is not discarded,
        the followers complete and the entry is stored."""
        leader, follower = get(proxy), get(proxy)
        body = answer(upstream)
        body.feed(b"01234")
        leader.disconnect()
        assert not body.discarded
        body.feed(b"56789ab")
        body.finish()
        end_turn(clock)
        assert follower.body == b"0123456789ab" and follower.finished
        assert get(proxy).log["cache"] == "HIT"
        assert len(upstream.calls) == 1

    def test_leader_client_leaving_without_followers_stops_the_fill(self, proxy, upstream):
        """With nobody following, a leaving client still cancels the fill."""
        leader = get(proxy)
        body = answer(upstream)
        body.feed(b"01234")
        leader.disconnect()
        assert body.discarded

    def test_a_slow_follower_does_not_pause_the_origin(self, proxy, upstream, clock):
        """A follower whose client is slow lags behind in the file; the origin
        and the leader go on at full speed, and it catches up later."""
        leader, slow = get(proxy), get(proxy)
        body = answer(upstream)
        body.feed(b"0123")
        slow.producer.pauseProducing()
        body.feed(b"4567")
        assert not body.paused and slow.body == b"0123"
        body.feed(b"89ab")
        body.finish()
        end_turn(clock)
        assert leader.finished and not slow.finished
        slow.producer.resumeProducing()
        assert slow.body == b"0123456789ab" and slow.finished

    def test_a_follower_leaving_does_not_disturb_the_others(self, proxy, upstream, clock):
        """One follower disconnects; the fill and the other follower go on."""
        leader, gone, stays = get(proxy), get(proxy), get(proxy)
        body = answer(upstream)
        body.feed(b"0123")
        gone.disconnect()
        body.feed(b"456789ab")
        body.finish()
        end_turn(clock)
        assert stays.finished and stays.body == leader.body == b"0123456789ab"
        assert not gone.finished and gone.body == b"0123"

    def test_head_follower_gets_the_head_only(self, proxy, upstream):
        """A HEAD collapsed onto a GET fill answers with the fields at once."""
        get(proxy)
        head = get(proxy, method=b"HEAD")
        answer(upstream)
        assert head.status == 200 and head.finished and head.body == b""
        assert head.header(b"content-length") == b"12"

    def test_range_request_waits_and_is_served_from_the_store(self, proxy, upstream, clock):
        """Range requests keep the old behaviour: wait, then a 206 from the store."""
        get(proxy)
        ranged = get(proxy, headers=[(b"Range", b"bytes=2-4")])
        body = answer(upstream)
        body.feed(b"0123456789ab")
        assert ranged.status is None
        body.finish()
        end_turn(clock)
        assert ranged.status == 206 and ranged.body == b"234"
        assert len(upstream.calls) == 1

    def test_another_variant_does_not_follow(self, proxy, upstream, clock):
        """RFC 9111 4.1: a waiter whose Vary fields differ waits, then fetches
        its own variant."""
        vary = [*CACHEABLE, (b"Vary", b"accept-language")]
        get(proxy, headers=[(b"Accept-Language", b"en")])
        other = get(proxy, headers=[(b"Accept-Language", b"de")])
        body = answer(upstream, headers=vary)
        assert other.status is None
        body.feed(b"0123456789ab")
        body.finish()
        end_turn(clock)
        assert len(upstream.calls) == 2 and other.status is None

    def test_request_no_cache_does_not_follow(self, proxy, upstream, clock):
        """RFC 9111 5.2.1.4: a request with no-cache takes nothing it did not
        see validated; it waits for the end and then goes to the origin."""
        get(proxy)
        picky = get(proxy, headers=[(b"Cache-Control", b"no-cache")])
        body = answer(upstream)
        assert picky.status is None
        body.feed(b"0123456789ab")
        body.finish()
        end_turn(clock)
        assert len(upstream.calls) == 2

    def test_response_no_cache_is_followed_only_by_requests_that_waited_for_it(
        self, clock, proxy, upstream
    ):
        """RFC 9111 5.2.2.4: a no-cache response is reused only once validated.
        The fill is that validation for a request that arrived before its
        response did, not for one arriving after (nor at the same instant)."""
        get(proxy)
        clock.advance(0.1)
        waiter = get(proxy)
        clock.advance(0.1)
        no_cache = [*CACHEABLE[:1], (b"Cache-Control", b"no-cache"), (b"ETag", b'"v1"')]
        body = answer(upstream, headers=no_cache)
        assert waiter.status == 200
        assert waiter.header(b"cache-status") == b"accel; fwd=uri-miss; fwd-status=200; stored; collapsed"
        same_instant = get(proxy)
        clock.advance(0.1)
        late = get(proxy)
        assert same_instant.status is None and late.status is None
        body.feed(b"0123456789ab")
        body.finish()
        end_turn(clock)
        assert waiter.body == b"0123456789ab" and waiter.finished
        assert len(upstream.calls) == 2  # the other two validate, together


class TestFeed:
    """The feed on its own, with a spool file in a temporary directory."""

    class Writer:
        def __init__(self, path: str) -> None:
            self.spool_path: str | None = path
            self.file = open(path, "wb", buffering=0)  # noqa: SIM115
            self.written = 0
            self.active = True

        def write(self, data: bytes) -> None:
            self.file.write(data)
            self.written += len(data)

        def commit(self) -> object:
            self.file.close()
            self.spool_path = None
            return "entry"

        def when_committed(self, then) -> None:
            then()  # visible at once

        def abort(self) -> None:
            self.file.close()
            os.unlink(self.spool_path)
            self.spool_path, self.active = None, False

    def test_follower_survives_the_spool_file_being_removed(self, tmp_path):
        """A follower's handle reads on after the file leaves its path."""
        path = str(tmp_path / "spool")
        writer = self.Writer(path)
        feed = Feed(writer, None)
        r = FakeResponder()
        r.start(200, b"OK", None)
        follower = feed.follow(r)
        follower.start()
        r.producer.pauseProducing()
        feed.write(b"abc")
        os.rename(path, str(tmp_path / "committed"))
        assert feed.commit() == "entry"
        r.producer.resumeProducing()
        assert r.body == b"abc" and r.finished

    def test_too_late_to_follow(self, tmp_path):
        """Once the fill is over there is nothing to follow."""
        writer = self.Writer(str(tmp_path / "spool"))
        feed = Feed(writer, None)
        feed.abort()
        assert feed.follow(FakeResponder()) is None


class Origin(Resource):
    """Sends the first half of /big at once and the rest when released."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.request = None

    def render_GET(self, request):
        self.calls += 1
        request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"content-length", b"%d" % (2 * HALF))
        request.write(b"a" * HALF)
        self.request = request
        return NOT_DONE_YET

    def release(self) -> None:
        self.request.write(b"b" * HALF)
        self.request.finish()


HALF = 100_000


async def _wait(predicate):
    from twisted.internet.task import deferLater

    for _ in range(500):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


class RealSockets(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.origin = Origin()
        site = Site(self.origin)
        site.log = lambda request: None
        origin_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(origin_port.stopListening)
        cache_dir = tempfile.mkdtemp(prefix="accel-follow-")
        self.addCleanup(__import__("shutil").rmtree, cache_dir, True)
        origin = OriginURL("http", "127.0.0.1", origin_port.getHost().port)
        config = Config(sites=(SiteConfig(hosts=(), routes=(RouteConfig(prefix=b"/", origins=(origin,)),)),))
        store = Store(cache_dir, 64 << 20, reactor)
        self.addCleanup(store.close)
        handler = build_accelerator(config, reactor, store)
        self.addCleanup(handler.close)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(HTTPServerFactory(handler, reactor))
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def test_followers_stream_before_the_origin_finishes(self):
        """Over loopback: three concurrent GETs, one origin request, and every
        client has the first half while the origin still holds the second."""
        received = [[] for _ in range(3)]
        responses = yield defer.gatherResults(
            [treq.get(self.base + "/big", persistent=False) for _ in received]
        )
        self.assertEqual(self.origin.calls, 1)
        done = [treq.collect(r, chunks.append) for r, chunks in zip(responses, received, strict=True)]
        yield defer.Deferred.fromCoroutine(
            _wait(lambda: all(sum(map(len, c)) >= HALF for c in received))
        )
        self.assertTrue(all(sum(map(len, c)) == HALF for c in received))
        self.origin.release()
        yield defer.gatherResults(done)
        self.assertEqual({b"".join(c) for c in received}, {b"a" * HALF + b"b" * HALF})
        self.assertEqual(self.origin.calls, 1)

"""The whole stack in one process, over real loopback sockets.

A real origin (twisted.web, counting requests per path) on 127.0.0.1:0, the
real accel stack (server, accelerator, upstream pool, diskcache store in a
temporary directory) on 127.0.0.1:0, and treq as the client. Each test
counts origin requests: that is what a cache is for.
"""

from __future__ import annotations

import tempfile
from collections import Counter

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from accel.app import build_accelerator
from accel.cache.store import Store
from accel.config import Config, OriginURL, Route
from accel.config import Site as SiteConfig
from accel.http.server import HTTPServerFactory
from tests.test_byteranges import parse_multipart

#: An object of a few hundred KiB, larger than one read of a stored body.
BIG = bytes(range(256)) * 1200 + b"end"


class Origin(Resource):
    """Answers by path; ``hold`` keeps answers back until released."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hits: Counter[bytes] = Counter()
        self.held: list = []
        self.hold = False
        self.etag = b'"v1"'

    def render_GET(self, request):
        path = request.path
        self.hits[path] += 1
        if path == b"/etag":
            request.setHeader(b"cache-control", b"max-age=0")
            request.setHeader(b"etag", self.etag)
            if request.getHeader(b"if-none-match") == self.etag:
                request.setResponseCode(304)
                return b""
            return b"etag body"
        if path == b"/tagged":
            request.setHeader(b"cache-control", b"max-age=60")
            request.setHeader(b"etag", b'"t1"')
            return b"tagged body"
        if path == b"/big":
            request.setHeader(b"cache-control", b"max-age=60")
            request.setHeader(b"content-type", b"application/octet-stream")
            return BIG
        if path == b"/stale":
            # Already stale on arrival (Age > max-age), but may stand in for
            # a failing origin for another minute.
            request.setHeader(b"cache-control", b"max-age=10, stale-if-error=600")
            request.setHeader(b"age", b"20")
            return b"stale body"
        request.setHeader(b"cache-control", b"max-age=60")
        body = b"%s %d" % (path, self.hits[path])
        if self.hold:
            self.held.append((request, body))
            return NOT_DONE_YET
        return body

    def release(self) -> None:
        held, self.held = self.held, []
        for request, body in held:
            request.write(body)
            request.finish()


class IntegrationTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.origin = Origin()
        site = Site(self.origin)
        site.log = lambda request: None
        self.origin_port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.cache_dir = tempfile.mkdtemp(prefix="accel-it-")
        self.addCleanup(__import__("shutil").rmtree, self.cache_dir, True)
        self.ports = []
        yield self.start_proxy()

    @defer.inlineCallbacks
    def start_proxy(self):
        origin = OriginURL("http", "127.0.0.1", self.origin_port.getHost().port)
        config = Config(sites=(SiteConfig(hosts=(), routes=(Route(prefix=b"/", origins=(origin,)),)),))
        self.store = Store(self.cache_dir, 64 << 20, reactor)
        handler = self.handler = build_accelerator(config, reactor, self.store)
        factory = HTTPServerFactory(handler, reactor)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.ports.append(port)
        self.base = f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def stop_proxy(self):
        port = self.ports.pop()
        yield port.stopListening()
        yield self.handler.close()
        self.store.close()

    @defer.inlineCallbacks
    def tearDown(self):
        while self.ports:
            yield self.stop_proxy()
        yield self.origin_down()

    def origin_down(self):
        port, self.origin_port = self.origin_port, None
        return port.stopListening() if port is not None else defer.succeed(None)

    @defer.inlineCallbacks
    def get(self, path, **fields):
        # One Host for every request: the proxy's port changes across a
        # restart, and Host is part of the cache key.
        headers = {"Host": "www.example.test", **fields}
        response = yield treq.get(self.base + path, headers=headers, persistent=False)
        body = yield response.content()
        return response, body

    @defer.inlineCallbacks
    def test_one_fetch_for_many_hits(self):
        """Ten GETs of a fresh object: the origin sees one."""
        bodies = []
        for _ in range(10):
            _, body = yield self.get("/a")
            bodies.append(body)
        self.assertEqual(bodies, [b"/a 1"] * 10)
        self.assertEqual(self.origin.hits[b"/a"], 1)

    @defer.inlineCallbacks
    def test_one_fetch_for_concurrent_misses(self):
        """Twenty concurrent misses for one URL make exactly one origin request."""
        self.origin.hold = True
        pending = [self.get("/b") for _ in range(20)]
        # Let every request reach accel before the origin answers.
        while self.origin.hits[b"/b"] < 1:
            yield deferLater(0.01)
        yield deferLater(0.2)
        self.origin.release()
        results = yield defer.gatherResults(pending)
        self.assertEqual({body for _, body in results}, {b"/b 1"})
        self.assertEqual(self.origin.hits[b"/b"], 1)
        collapsed = [r for r, _ in results if b"collapsed" in r.headers.getRawHeaders(b"cache-status")[0]]
        self.assertGreater(len(collapsed), 0)

    @defer.inlineCallbacks
    def test_revalidation_with_304(self):
        """A stale entry with an ETag is revalidated; the 304 serves the stored body."""
        _first, body1 = yield self.get("/etag")
        second, body2 = yield self.get("/etag")
        self.assertEqual(body1, b"etag body")
        self.assertEqual(body2, b"etag body")
        status = second.headers.getRawHeaders(b"cache-status")[0]
        self.assertIn(b"fwd-status=304", status)
        self.assertEqual(self.origin.hits[b"/etag"], 2)

    @defer.inlineCallbacks
    def test_browser_revalidation_is_a_fast_304(self):
        """With the fast path on (as ``twistd accel`` has it), a conditional GET
        of a fresh hit with the ETag received is answered 304 by the fast path;
        the origin saw one request."""
        answered = []

        def spy(*args):
            answer = self.handler.fast_hit(*args)
            answered.append(None if answer is None else answer[1])
            return answer

        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            HTTPServerFactory(self.handler, reactor, fast_path=spy)
        )
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        first, body = yield self.get("/tagged")
        self.assertEqual((first.code, body), (200, b"tagged body"))
        (etag,) = first.headers.getRawHeaders(b"etag")
        results = []
        for _ in range(2):
            response, body = yield self.get("/tagged", **{"If-None-Match": etag})
            results.append((response.code, body))
        self.assertEqual(results, [(304, b""), (304, b"")])
        self.assertEqual(answered[-1], 304)  # the second: from the fast path
        self.assertTrue(response.headers.getRawHeaders(b"cache-status")[0].startswith(b"accel; hit"))
        self.assertEqual(self.origin.hits[b"/tagged"], 1)

    @defer.inlineCallbacks
    def test_stale_if_error_while_the_origin_is_down(self):
        """With the origin gone, a stale entry within stale-if-error is served."""
        _, body = yield self.get("/stale")
        self.assertEqual(body, b"stale body")
        yield self.origin_down()
        response, body = yield self.get("/stale")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, b"stale body")
        self.assertIn(b"fwd=stale", response.headers.getRawHeaders(b"cache-status")[0])

    @defer.inlineCallbacks
    def test_origin_down_without_stale_is_502(self):
        """With the origin gone and nothing stored, the client gets a clean 502."""
        yield self.origin_down()
        response, body = yield self.get("/never")
        self.assertEqual(response.code, 502)
        self.assertNotIn(b"127.0.0.1", body)

    @defer.inlineCallbacks
    def test_entries_survive_a_restart(self):
        """Stop accel, start it again on the same directory: still a hit."""
        yield self.get("/c")
        yield self.stop_proxy()
        yield self.start_proxy()
        response, body = yield self.get("/c")
        self.assertEqual(body, b"/c 1")
        self.assertTrue(response.headers.getRawHeaders(b"cache-status")[0].startswith(b"accel; hit"))
        self.assertEqual(self.origin.hits[b"/c"], 1)

    @defer.inlineCallbacks
    def test_two_ranges_of_a_cached_object(self):
        """A two-range GET of a cached object of 300 KiB: a multipart/byteranges 206
        over the socket whose parts are the origin's bytes."""
        yield self.get("/big")
        response, body = yield self.get("/big", Range="bytes=1000-1999,200000-")
        self.assertEqual(response.code, 206)
        media, _, boundary = response.headers.getRawHeaders(b"content-type")[0].partition(b"; boundary=")
        self.assertEqual(media, b"multipart/byteranges")
        self.assertEqual(response.length, len(body))  # Twisted's client reads Content-Length into it
        parts = parse_multipart(body, boundary)
        size = len(BIG)
        self.assertEqual(
            parts,
            [
                ({b"content-type": b"application/octet-stream", b"content-range": b"bytes 1000-1999/%d" % size}, BIG[1000:2000]),
                ({b"content-type": b"application/octet-stream", b"content-range": b"bytes 200000-%d/%d" % (size - 1, size)}, BIG[200000:]),
            ],
        )  # fmt: skip
        self.assertEqual(self.origin.hits[b"/big"], 1)


def deferLater(seconds: float):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)

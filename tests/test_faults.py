"""Faults: a misbehaving origin, a failing disk, and access rules, through the real stack.

Every test builds the whole proxy in-process, as :func:`accel.app.make_service`
does (:func:`accel.app.build_accelerator`, a real :class:`~accel.cache.store.Store`
in a temporary directory, :class:`~accel.http.server.HTTPServerFactory` on
127.0.0.1 port 0), in front of :class:`ScriptedOrigin`, a raw Twisted protocol
whose behaviour is chosen per path. Clients are raw sockets too, so a
truncated response is seen exactly as a client sees it: the connection closes
before the declared length or the terminating chunk.

For each fault the tests check four things: the client gets a clean 502/504
(a short body naming no origin internals) or, once the head went out, a
truncated transfer; nothing is stored (the next request for the URL reaches
the origin); other requests are served meanwhile; the failure is logged once,
with the origin's name. Upstream timeouts are set to half a second.
"""

from __future__ import annotations

import ipaddress
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from accel.app import build_accelerator, open_store
from accel.cache.store import INLINE_MAX
from accel.config import ClientAccess, Config, OriginURL, Route, Site, Timeouts
from accel.http.server import HTTPServerFactory

FAST = Timeouts(connect=1.0, first_byte=0.5, idle=0.5)

# -- the scripted origin ---------------------------------------------------------


def good_body(path: bytes) -> bytes:
    """The body of ``path``: too large to be kept in its row (a file) under ``/large/``."""
    line = b"good body for " + path + b"\n"
    return line * (INLINE_MAX // len(line) + 1) if path.startswith(b"/large/") else line


#: Responses whose framing or status line a proxy cannot relay (RFC 9112
#: sections 2.3, 6.1 and 6.3, RFC 9110 section 15): each must give the client
#: a 502 and store nothing. The origin closes after each.
INVALID_RESPONSES = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n"
    b"cache-control: max-age=60\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n"
    b"cache-control: max-age=60\r\n\r\nhello!",
    "te-gzip": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncache-control: max-age=60\r\n\r\nhello",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n"
    b"cache-control: max-age=60\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-in-http-1.0": b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n"
    b"cache-control: max-age=60\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "http-2.0-status-line": b"HTTP/2.0 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\nhello",
    "status-600": b"HTTP/1.1 600 Odd\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\nhello",
}


class OriginConnection(Protocol):
    """Answers each request head as its path's behaviour says (see :meth:`behave`)."""

    def __init__(self, origin: ScriptedOrigin) -> None:
        self.origin = origin
        self.buffer = b""

    def connectionMade(self) -> None:
        self.origin.connections.add(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.origin.connections.discard(self)
        self.origin.closed()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        path = head.split(b" ", 2)[1]
        self.origin.requests[path] += 1
        self.origin.heads.append(head)
        self.behave(self.origin.behaviours.get(path, "good"), path)

    def behave(self, behaviour: str, path: bytes) -> None:
        """``good`` answers and closes; the others are the faults their names say."""
        write, transport = self.transport.write, self.transport
        if behaviour == "good":
            body = good_body(path)
            write(
                b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncache-control: max-age=60\r\n"
                b"x-powered-by: PHP/5.1\r\nserver: origin-httpd\r\nconnection: close\r\n\r\n%s"
                % (len(body), body)
            )
            transport.loseConnection()
        elif behaviour == "reset":
            transport.abortConnection()
        elif behaviour == "hang-head":
            pass
        elif behaviour == "hang-body":
            write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=60\r\n\r\n0123456789")
        elif behaviour == "short-body":
            write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ncache-control: max-age=60\r\n\r\n0123456789")
            transport.loseConnection()
        elif behaviour == "overlong-body":
            write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncache-control: max-age=60\r\n\r\n0123456789")
            transport.loseConnection()
        elif behaviour in INVALID_RESPONSES:
            write(INVALID_RESPONSES[behaviour])
            transport.loseConnection()
        elif behaviour == "garbage":
            write(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
            transport.loseConnection()
        elif behaviour == "close-in-head":
            write(b"HTTP/1.1 200 OK\r\ncontent-le")
            transport.loseConnection()
        elif behaviour == "close-in-chunks":
            write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncache-control: max-age=60\r\n\r\n5\r\nhello\r\n")
            transport.loseConnection()
        elif behaviour == "reset-in-eof-body":
            # A body delimited by the close, cut by a reset instead of a FIN.
            write(b"HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\n\r\nhello")
            self.origin.later(0.05, transport.abortConnection)
        elif behaviour == "garbage-chunk":
            # The garbage comes later, so the head has gone to the client by then.
            write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncache-control: max-age=60\r\n\r\n5\r\nhello\r\n")
            self.origin.later(0.05, write, b"zz\r\n")
        else:
            raise AssertionError(f"unknown behaviour {behaviour!r}")


class ScriptedOrigin(Factory):
    """An origin whose behaviour is set per path (``good`` unless told otherwise).

    ``requests`` counts request heads per path, so a test can tell a cache
    hit from a fetch.
    """

    def __init__(self) -> None:
        self.behaviours: dict[bytes, str] = {}
        self.requests: Counter[bytes] = Counter()
        self.heads: list[bytes] = []
        self.connections: set[OriginConnection] = set()
        self.pending: list[object] = []
        self._idle: list[Deferred[None]] = []

    def later(self, delay: float, call: object, *args: object) -> None:
        """Call ``call(*args)`` after ``delay`` seconds unless the test is over."""
        self.pending.append(reactor.callLater(delay, call, *args))

    def buildProtocol(self, addr: object) -> OriginConnection:
        return OriginConnection(self)

    def closed(self) -> None:
        if not self.connections:
            waiters, self._idle = self._idle, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self) -> Deferred[None]:
        for call in self.pending:
            if call.active():  # type: ignore[attr-defined]
                call.cancel()  # type: ignore[attr-defined]
        if not self.connections:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        for connection in list(self.connections):
            connection.transport.abortConnection()
        return waiter


# -- a raw client ------------------------------------------------------------------


@frozen
class Reply:
    """A response as read off the socket until the proxy closed it."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    complete: bool
    raw: bytes


def parse_reply(raw: bytes) -> Reply:
    """Parse one HTTP/1.1 response; ``complete`` says whether its framing was satisfied."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return Reply(0, {}, b"", False, raw)
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        length = int(headers[b"content-length"])
        return Reply(status, headers, rest[:length], len(rest) >= length, raw)
    if headers.get(b"transfer-encoding") == b"chunked":
        body = b""
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                return Reply(status, headers, body, False, raw)
            size = int(size_line, 16)
            if size == 0:
                return Reply(status, headers, body, rest.startswith(b"\r\n"), raw)
            if len(rest) < size + 2:
                return Reply(status, headers, body + rest[:size], False, raw)
            body, rest = body + rest[:size], rest[size + 2 :]
    return Reply(status, headers, rest, True, raw)


class RawClient(Protocol):
    """Sends one request and collects every byte until the connection closes."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.done: Deferred[Reply] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(parse_reply(self.received))


# -- the stack ---------------------------------------------------------------------


class StoreClock(Clock):
    """The store's clock: its time (the degraded mode's back-off) is moved by
    the test, its turns are the reactor's (the store commits the rows of a
    turn at its end, and the responses that stored them complete then)."""

    def callLater(self, delay, callable, *args, **kw):
        return reactor.callLater(delay, callable, *args, **kw)



class FaultTests(TestCase):
    """The proxy in front of a scripted origin, over real loopback sockets."""

    timeout = 20

    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="accel-faults-"))
        self.store_clock = StoreClock()
        self.origin = ScriptedOrigin()
        self.origin_port = reactor.listenTCP(0, self.origin, interface="127.0.0.1")
        self.origin_url = f"http://127.0.0.1:{self.origin_port.getHost().port}"
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.addCleanup(self.origin.close_all)
        self.addCleanup(self.origin_port.stopListening)

    def start(self, origin: str | None = None, **route: object) -> None:
        """Build and start the proxy for one default route ``/`` to ``origin``."""
        url = OriginURL.parse(origin or self.origin_url, "origin")
        config = Config(sites=(Site(hosts=(), routes=(Route(prefix=b"/", origins=(url,), timeouts=FAST, **route),)),))  # type: ignore[arg-type]
        self.store = open_store(str(self.directory / "cache"), 64 * 1024**2, self.store_clock, retry_interval=5.0)
        self.addCleanup(self.store.close)
        handler = build_accelerator(config, reactor, self.store)
        # Wired as make_service does, fast path included.
        factory = HTTPServerFactory(
            handler, reactor, body_limit=handler.body_limit, fast_path=handler.fast_hit
        )
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port
        self.unix_path = str(self.directory / "accel.sock")
        unix_port = reactor.listenUNIX(self.unix_path, factory)
        self.addCleanup(unix_port.stopListening)

    async def request(self, path: bytes, method: bytes = b"GET", body: bytes | None = None, unix: bool = False) -> Reply:
        """One request on its own connection (``Connection: close``), over TCP or the UNIX listener."""
        length = b"" if body is None else b"content-length: %d\r\n" % len(body)
        head = b"%s %s HTTP/1.1\r\nhost: example.com\r\nconnection: close\r\n%s\r\n" % (method, path, length)
        client = RawClient(head + (body or b""))
        endpoint = UNIXClientEndpoint(reactor, self.unix_path) if unix else TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        await connectProtocol(endpoint, client)
        return await client.done

    def logged(self, needle: str) -> list[str]:
        """Log lines that mention ``needle``."""
        return [text for text in (formatEvent(e) for e in self.events) if text and needle in text]

    # -- assertions shared by the fault tests

    def assert_clean_error(self, reply: Reply, status: int) -> None:
        """A complete, short error from accel itself: no origin name, no traceback."""
        self.assertEqual(reply.status, status)
        self.assertTrue(reply.complete)
        self.assertLess(len(reply.body), 100)
        for secret in (b"127.0.0.1", b"Traceback", b"Error", str(self.origin_port.getHost().port).encode()):
            self.assertNotIn(secret, reply.body)

    async def assert_nothing_stored(self, path: bytes) -> None:
        """With the origin good again, ``path`` is a miss that reaches the origin, then a hit."""
        self.origin.behaviours[path] = "good"
        before = self.origin.requests[path]
        reply = await self.request(path)
        self.assertEqual((reply.status, reply.body, reply.complete), (200, good_body(path), True))
        self.assertIn(b"fwd=uri-miss", reply.headers[b"cache-status"])
        self.assertEqual(self.origin.requests[path], before + 1)
        again = await self.request(path)
        self.assertTrue(again.headers[b"cache-status"].startswith(b"accel; hit"))

    async def fault(self, behaviour: str) -> Reply:
        """Request ``/f`` while the origin misbehaves, with a good request meanwhile."""
        self.start()
        self.origin.behaviours[b"/f"] = behaviour
        failing = Deferred.fromCoroutine(self.request(b"/f"))
        meanwhile = await self.request(b"/other")
        self.assertEqual((meanwhile.status, meanwhile.body), (200, good_body(b"/other")))
        reply = await failing
        self.assertEqual(len(self.logged(self.origin_url)), 1, self.logged(self.origin_url))
        await self.assert_nothing_stored(b"/f")
        return reply

    # -- the origin misbehaves before the response head

    async def test_refused_connection_is_502(self) -> None:
        """An origin port that refuses connections: 502, logged once with its address."""
        closed = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        url = f"http://127.0.0.1:{closed.getHost().port}"
        await closed.stopListening()
        self.start(url)
        reply = await self.request(b"/f")
        self.assert_clean_error(reply, 502)
        self.assertEqual(len(self.logged(url)), 1)
        self.assertIn("cannot connect", self.logged(url)[0])

    async def test_reset_is_502(self) -> None:
        """The origin resets the connection on the request: 502, nothing stored."""
        self.assert_clean_error(await self.fault("reset"), 502)

    async def test_hang_before_head_is_504(self) -> None:
        """No response head within first_byte: 504 after half a second."""
        self.assert_clean_error(await self.fault("hang-head"), 504)
        self.assertIn("no response head within 0.5s", self.logged(self.origin_url)[0])

    async def test_garbage_is_502(self) -> None:
        """Bytes that are not HTTP: 502."""
        self.assert_clean_error(await self.fault("garbage"), 502)
        self.assertIn("invalid response", self.logged(self.origin_url)[0])

    async def invalid_response(self, behaviour: str) -> None:
        """One of :data:`INVALID_RESPONSES`: a clean 502, logged once, nothing stored."""
        self.assert_clean_error(await self.fault(behaviour), 502)

    async def test_content_length_with_transfer_encoding_is_502(self) -> None:
        """RFC 9112 section 6.3: a proxy does not relay a response with both framings."""
        await self.invalid_response("cl-and-te")

    async def test_two_content_lengths_are_502(self) -> None:
        """RFC 9112 section 6.3: differing Content-Length lines are unrecoverable."""
        await self.invalid_response("two-lengths")

    async def test_transfer_coding_other_than_chunked_is_502(self) -> None:
        """RFC 9112 section 6.1: ``gzip`` without chunked (close-delimited) would reach
        the client and the cache still coded, as if it were the content: 502."""
        await self.invalid_response("te-gzip")

    async def test_gzip_before_chunked_is_502(self) -> None:
        """RFC 9112 section 7: after de-chunking, the gzip transfer coding remains, and
        accel decodes none: 502 rather than coded bytes as the content."""
        await self.invalid_response("te-gzip-chunked")

    async def test_transfer_encoding_in_http_1_0_is_502(self) -> None:
        """RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing."""
        await self.invalid_response("te-in-http-1.0")

    async def test_status_line_of_another_major_version_is_502(self) -> None:
        """RFC 9112 section 2.3: ``HTTP/2.0`` in an HTTP/1.1 status line is not relayed."""
        await self.invalid_response("http-2.0-status-line")

    async def test_status_code_above_599_is_502(self) -> None:
        """RFC 9110 section 15: status codes run from 100 to 599; 600 is not relayed."""
        await self.invalid_response("status-600")

    async def test_close_inside_head_is_502(self) -> None:
        """The origin closes in the middle of its head: 502."""
        self.assert_clean_error(await self.fault("close-in-head"), 502)

    # -- the origin misbehaves after the response head: the client sees a truncation

    async def test_hang_mid_body_truncates(self) -> None:
        """The body stalls for longer than idle: the client's response is cut short."""
        reply = await self.fault("hang-body")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"0123456789", False))
        self.assertIn("no body bytes for 0.5s", self.logged(self.origin_url)[0])

    async def test_body_shorter_than_content_length_truncates(self) -> None:
        """Content-Length 100 but 10 bytes, then close: a truncated response."""
        reply = await self.fault("short-body")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"0123456789", False))
        self.assertIn("connection closed after 10 of 100 body bytes", self.logged(self.origin_url)[0])

    async def test_close_inside_chunked_body_truncates(self) -> None:
        """The origin closes before the last chunk: no terminating chunk reaches the client."""
        reply = await self.fault("close-in-chunks")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"hello", False))

    async def test_reset_inside_close_delimited_body_truncates(self) -> None:
        """RFC 9112 section 8: a body delimited by the close is complete only if the
        connection closed cleanly; after a reset the client sees no terminating
        chunk, and nothing is stored."""
        reply = await self.fault("reset-in-eof-body")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"hello", False))

    async def test_garbage_inside_chunked_body_truncates(self) -> None:
        """A broken chunk size after the head: the client's response is cut short."""
        reply = await self.fault("garbage-chunk")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"hello", False))

    async def test_body_longer_than_content_length_is_cut_at_the_length(self) -> None:
        """Content-Length 5 followed by 10 bytes: the client gets exactly 5 and no
        smuggled bytes; the origin connection is not reused (the next request is clean).

        Known gap (accel.upstream): bytes after a complete Content-Length body in
        the same read only retire the connection; the body still ends cleanly, so
        those 5 bytes are stored although the origin's framing was wrong.
        """
        self.start()
        self.origin.behaviours[b"/f"] = "overlong-body"
        reply = await self.request(b"/f")
        self.assertEqual((reply.status, reply.body, reply.complete), (200, b"01234", True))
        self.assertTrue(reply.raw.endswith(b"\r\n\r\n01234"))
        other = await self.request(b"/other")
        self.assertEqual((other.status, other.body), (200, good_body(b"/other")))

    # -- the disk fails while serving

    async def test_broken_disk_degrades_to_proxying_and_recovers(self) -> None:
        """The spool directory becomes a file (a real OSError, even as root):
        responses too large to be kept in a row still come from the origin,
        whole; nothing is stored; one log line says so; after the back-off the
        store recovers by itself."""
        self.start()
        self.assertEqual((await self.request(b"/kept")).status, 200)
        spool = self.directory / "cache" / "spool"
        spool.rename(spool.with_name("spool.away"))
        spool.write_bytes(b"")
        for _ in range(3):
            reply = await self.request(b"/large/new")
            self.assertEqual((reply.status, reply.body, reply.complete), (200, good_body(b"/large/new"), True))
        self.assertEqual(self.origin.requests[b"/large/new"], 3)
        self.assertFalse(self.store.healthy)
        failures = self.logged("cache store")
        self.assertEqual(len(failures), 1)
        self.assertIn("NotADirectoryError", failures[0])
        self.assertEqual((await self.request(b"/kept")).status, 200)  # from the origin meanwhile

        spool.unlink()
        spool.with_name("spool.away").rename(spool)
        self.store_clock.advance(5)
        await self.request(b"/large/new")
        hit = await self.request(b"/large/new")
        self.assertTrue(hit.headers[b"cache-status"].startswith(b"accel; hit"))
        self.assertEqual(hit.body, good_body(b"/large/new"))
        self.assertTrue(self.store.healthy)
        self.assertEqual(len(self.logged("recovered")), 1)

    # -- access rules, header hiding, body limits

    async def test_denied_client_gets_403_without_reaching_the_origin(self) -> None:
        """A client in a deny network gets a short 403; the origin sees nothing."""
        self.start(access=ClientAccess(deny=(ipaddress.ip_network("127.0.0.0/8"),)))
        reply = await self.request(b"/x")
        self.assert_clean_error(reply, 403)
        self.assertEqual(self.origin.requests[b"/x"], 0)

    async def test_allowed_client_passes(self) -> None:
        """A client in the allow list is served."""
        self.start(access=ClientAccess(allow=(ipaddress.ip_network("127.0.0.1/32"),)))
        self.assertEqual((await self.request(b"/x")).status, 200)

    async def test_unix_clients_pass_an_allow_list_of_networks(self) -> None:
        """An allow list of networks refuses other TCP clients but not UNIX-socket ones."""
        self.start(access=ClientAccess(allow=(ipaddress.ip_network("192.0.2.0/24"),)))
        self.assertEqual((await self.request(b"/x")).status, 403)
        self.assertEqual((await self.request(b"/x", unix=True)).status, 200)

    async def test_unix_clients_refused_by_deny_unix(self) -> None:
        """deny = ["unix"] refuses UNIX-socket clients; TCP clients still pass."""
        self.start(access=ClientAccess(deny_unix=True))
        self.assert_clean_error(await self.request(b"/x", unix=True), 403)
        self.assertEqual((await self.request(b"/x")).status, 200)

    async def test_denied_client_gets_no_hit_from_the_fast_path(self) -> None:
        """A hit another client warmed up is still refused to a denied client."""
        self.start(access=ClientAccess(deny_unix=True))
        for _ in range(3):
            self.assertEqual((await self.request(b"/x")).status, 200)
        self.assert_clean_error(await self.request(b"/x", unix=True), 403)

    async def test_hidden_headers_leave_responses_and_hits(self) -> None:
        """X-Powered-By and (with hide_origin_server) Server are removed from
        the fetched response and from the stored one; Server is accel's own."""
        self.start(hide_origin_server=True)
        for expected in (b"accel; fwd=uri-miss", b"accel; hit"):
            reply = await self.request(b"/x")
            self.assertTrue(reply.headers[b"cache-status"].startswith(expected))
            self.assertNotIn(b"x-powered-by", reply.headers)
            self.assertEqual(reply.headers[b"server"], b"accel")

    async def test_origin_server_is_kept_by_default(self) -> None:
        """Without hide_origin_server, the origin's Server passes; X-Powered-By does not."""
        self.start()
        reply = await self.request(b"/x")
        self.assertEqual(reply.headers[b"server"], b"origin-httpd")
        self.assertNotIn(b"x-powered-by", reply.headers)

    async def test_declared_body_over_max_body_is_413(self) -> None:
        """A Content-Length over the route's max_body: 413 before the origin is contacted."""
        self.start(max_body=10)
        reply = await self.request(b"/upload", b"POST", b"0123456789a")
        self.assert_clean_error(reply, 413)
        self.assertEqual(self.origin.requests[b"/upload"], 0)

    async def test_declared_body_within_max_body_is_forwarded(self) -> None:
        """A Content-Length at the limit is forwarded."""
        self.start(max_body=10)
        reply = await self.request(b"/upload", b"POST", b"0123456789")
        self.assertEqual(reply.status, 200)
        self.assertEqual(self.origin.requests[b"/upload"], 1)

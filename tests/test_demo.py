"""accel.demo: the built-in demo origin's pages and its private UNIX socket."""

from __future__ import annotations

import os
import stat

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from accel.demo import SLOW_SECONDS, DemoOrigin, banner, make_demo_site

START = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


class PagesTests(SynchronousTestCase):
    """Each page shows one caching behaviour through its headers."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.client = StubTreq(make_demo_site(self.clock).resource)

    def get(self, path: str, headers: dict[bytes, list[bytes]] | None = None):  # type: ignore[no-untyped-def]
        pending = self.client.get("http://demo" + path, headers=headers)
        self.client.flush()
        response = self.successResultOf(pending)
        content = response.content()
        self.client.flush()
        body = self.successResultOf(content)
        return response, body

    def header(self, response, name: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
        return response.headers.getRawHeaders(name, [])

    def test_index_is_cacheable_and_timestamped(self) -> None:
        """/ is cacheable for 60 s and says when it was generated."""
        response, body = self.get("/")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, b"cache-control"), [b"public, max-age=60"])
        self.assertIn(b"2027-01-15 08:00:00.000", body)
        self.assertIn(b"accel", body)
        self.assertEqual(response.length, len(body))

    def test_slow_waits_one_second(self) -> None:
        """/slow answers only after SLOW_SECONDS, and is cacheable."""
        pending = self.client.get("http://demo/slow")
        self.assertNoResult(pending)
        self.clock.advance(SLOW_SECONDS)
        self.client.flush()
        response = self.successResultOf(pending)
        self.assertEqual(self.header(response, b"cache-control"), [b"public, max-age=60"])

    def test_private(self) -> None:
        """/private is marked private."""
        response, _ = self.get("/private")
        self.assertEqual(self.header(response, b"cache-control"), [b"private, max-age=60"])

    def test_nocache(self) -> None:
        """/nocache is marked no-store."""
        response, _ = self.get("/nocache")
        self.assertEqual(self.header(response, b"cache-control"), [b"no-store"])

    def test_vary_by_language(self) -> None:
        """/vary varies on Accept-Language and answers in the first known language."""
        response, body = self.get("/vary", {b"accept-language": [b"xx, fr-CH;q=0.9, de;q=0.5"]})
        self.assertEqual(self.header(response, b"vary"), [b"Accept-Language"])
        self.assertEqual(self.header(response, b"content-language"), [b"fr"])
        self.assertTrue(body.startswith(b"Bonjour!"))
        _, body = self.get("/vary")
        self.assertTrue(body.startswith(b"Hello!"))

    def test_big_body_has_the_asked_size(self) -> None:
        """/big?size=N streams exactly N bytes with a matching Content-Length."""
        response, body = self.get("/big?size=200001")
        self.assertEqual(len(body), 200001)
        self.assertEqual(response.length, 200001)

    def test_big_rejects_bad_size(self) -> None:
        """/big with a size that is not a number (or too large) is a 400."""
        for size in ("x", "-1", str(2**40)):
            response, _ = self.get(f"/big?size={size}")
            self.assertEqual(response.code, 400)

    def test_etag_revalidates_to_304(self) -> None:
        """/etag carries an ETag and no-cache; a matching If-None-Match gets a bodiless 304."""
        response, _ = self.get("/etag")
        self.assertEqual(self.header(response, b"cache-control"), [b"no-cache"])
        (etag,) = self.header(response, b"etag")
        response, body = self.get("/etag", {b"if-none-match": [b'"other", ' + etag]})
        self.assertEqual((response.code, body), (304, b""))

    def test_304_has_no_content_length(self) -> None:
        """On the wire, the 304 carries no Content-Length: 0 (RFC 9110 section 8.6)."""
        protocol = make_demo_site(self.clock).buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        etag = b'"demo-%d"' % (int(START) // 60)
        protocol.dataReceived(b"GET /etag HTTP/1.1\r\nHost: demo\r\nIf-None-Match: " + etag + b"\r\n\r\n")
        head = transport.value().split(b"\r\n\r\n")[0].lower()
        self.assertTrue(head.startswith(b"http/1.1 304 "), head)
        self.assertNotIn(b"content-length", head)
        protocol.connectionLost(None)

    def test_etag_changes_every_minute(self) -> None:
        """An old ETag no longer matches a minute later."""
        response, _ = self.get("/etag")
        (etag,) = self.header(response, b"etag")
        self.clock.advance(60)
        response, _ = self.get("/etag", {b"if-none-match": [etag]})
        self.assertEqual(response.code, 200)


class BannerTests(SynchronousTestCase):
    def test_banner_names_the_first_tcp_port(self) -> None:
        """The start-up hint gives a curl command for the first TCP listener."""
        self.assertEqual(
            banner(["unix:/run/a.sock", "tcp:port=9000:interface=127.0.0.1"]),
            "no --origin given: serving the built-in demo origin; try curl -i http://localhost:9000/",
        )
        self.assertEqual(banner(["tcp:8080"]), "no --origin given: serving the built-in demo origin; try curl -i http://localhost:8080/")

    def test_banner_without_a_tcp_listener_names_the_tls_or_unix_one(self) -> None:
        """With only TLS or UNIX-socket listeners the curl command reaches one of
        them (https with -k, or --unix-socket), not a port nothing listens on."""
        self.assertEqual(
            banner(["unix:/run/a.sock", "ssl:8443:privateKey=k.pem"]),
            "no --origin given: serving the built-in demo origin; try curl -ik https://localhost:8443/",
        )
        self.assertEqual(
            banner(["unix:/run/a.sock:mode=660"]),
            "no --origin given: serving the built-in demo origin; try curl -i --unix-socket /run/a.sock http://localhost/",
        )


class DemoOriginTests(SynchronousTestCase):
    def test_private_socket_lifecycle(self) -> None:
        """The demo origin listens on a 0600 socket in a 0700 temporary directory, removed at stop."""
        reactor = MemoryReactor()
        demo = DemoOrigin.create(reactor, Clock())
        directory = os.path.dirname(demo.path)
        self.assertEqual(demo.url, f"unix:{demo.path}")
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        demo.startService()
        ((path, _factory, _backlog, mode, _want_pid),) = reactor.unixServers
        self.assertEqual((path, mode), (demo.path, 0o600))
        self.successResultOf(demo.stopService())
        self.assertFalse(os.path.exists(directory))

"""The built-in demo origin: what ``twistd -n accel`` proxies to when no
``--origin`` or ``--config`` is given, so that a fresh install has something
to show.

It is a plain ``twisted.web`` site (it is not on accel's hot path) with one
page per caching behaviour:

=================  ==========================================================
``/``              what accel is doing; cacheable for 60 s, shows when it was
                   generated, so a reload shows the cached copy
``/slow``          takes 1 s to generate, cacheable: the second request is
                   instant
``/private``       ``Cache-Control: private``: never served from the cache
``/nocache``       ``Cache-Control: no-store``: never stored
``/vary``          ``Vary: Accept-Language``: one cached copy per language
``/big?size=N``    a streamed body of N bytes (default 1 MiB, at most 1 GiB)
``/etag``          ``ETag`` + ``Cache-Control: no-cache``: every use is
                   revalidated, and the origin answers 304
=================  ==========================================================

:class:`DemoOrigin` runs the site on a UNIX socket in a private temporary
directory, so it needs no port and nobody else can reach it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort, IPushProducer, IReactorTime, IReactorUNIX
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

__all__ = ["DemoOrigin", "banner", "make_demo_site"]

_log = Logger()

#: Delay of ``/slow``, seconds.
SLOW_SECONDS = 1.0
#: ``/big`` without ``size``; and the largest ``size`` accepted.
BIG_DEFAULT = 1024**2
BIG_MAX = 1024**3
_CHUNK = 64 * 1024

_INDEX = """\
Hello from accel's built-in demo origin.

You are talking to accel, a caching reverse proxy. No --origin was given,
so accel started this small demo origin in-process and proxies to it.

This page was generated at {now} (UTC).
It may be cached for 60 s: reload it, and the time above stays the same
while the Age header grows: the copy came from accel's cache, not from the
origin.

More pages, each showing one caching behaviour:

  /slow          takes {slow:g} s to generate; cacheable, so the second request is instant
  /private       Cache-Control: private: always fetched from the origin
  /nocache       Cache-Control: no-store: never stored
  /vary          Vary: Accept-Language: one cached copy per language
                 (try curl -H 'Accept-Language: fr' ...)
  /big?size=N    a streamed body of N bytes (default {big}, at most {big_max})
  /etag          ETag + Cache-Control: no-cache: every reuse is revalidated
                 with the origin, which answers 304 Not Modified

To front your own site instead:

  twistd -n accel --origin http://127.0.0.1:8000 --listen tcp:8080
"""

_GREETINGS = {"de": "Hallo", "en": "Hello", "es": "Hola", "fr": "Bonjour", "it": "Ciao"}


def banner(listen: Sequence[str]) -> str:
    """The start-up line telling the operator the demo origin is in use.

    Its curl command reaches the first TCP listener, else the first TLS one
    (``-k``: the certificate may be one curl does not trust), else the first
    UNIX socket (``--unix-socket``).
    """
    by_kind: dict[str, str] = {}
    for description in listen:
        kind, _, rest = description.partition(":")
        first = rest.split(":", 1)[0]
        if kind == "tcp6":
            kind = "tcp"
        if kind in ("tcp", "ssl") and first:
            by_kind.setdefault(kind, first.removeprefix("port="))
        elif kind == "unix" and first:
            by_kind.setdefault(kind, first.removeprefix("address="))
    if "tcp" in by_kind:
        command = f"curl -i http://localhost:{by_kind['tcp']}/"
    elif "ssl" in by_kind:
        command = f"curl -ik https://localhost:{by_kind['ssl']}/"
    elif "unix" in by_kind:
        command = f"curl -i --unix-socket {by_kind['unix']} http://localhost/"
    else:
        command = "curl -i http://localhost:8080/"
    return f"no --origin given: serving the built-in demo origin; try {command}"


def _timestamp(clock: IReactorTime) -> str:
    return datetime.fromtimestamp(clock.seconds(), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _text(request: Request, body: str, cache_control: bytes) -> bytes:
    """Set the common headers of a plain-text page; return its body."""
    data = body.encode("utf-8")
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", cache_control)
    request.setHeader(b"server", b"accel-demo-origin")
    request.setHeader(b"content-length", str(len(data)).encode("ascii"))
    return data


class _Page(Resource):
    isLeaf = True

    def __init__(self, clock: IReactorTime) -> None:
        super().__init__()
        self._clock = clock

    def render_GET(self, request: Request) -> bytes | int:
        raise NotImplementedError

    def render_HEAD(self, request: Request) -> bytes | int:
        """The GET answer without its body (headers, Content-Length included)."""
        body = self.render_GET(request)
        return body if body is NOT_DONE_YET else b""


class _Index(_Page):
    def render_GET(self, request: Request) -> bytes:
        body = _INDEX.format(now=_timestamp(self._clock), slow=SLOW_SECONDS, big=BIG_DEFAULT, big_max=BIG_MAX)
        return _text(request, body, b"public, max-age=60")


class _Slow(_Page):
    def render_GET(self, request: Request) -> int:
        started = _timestamp(self._clock)

        def finish() -> None:
            body = f"This page took {SLOW_SECONDS:g} s to generate (started {started} UTC).\n"
            request.write(_text(request, body, b"public, max-age=60"))
            request.finish()

        call = self._clock.callLater(SLOW_SECONDS, finish)

        def gone(_: Failure) -> None:
            if call.active():
                call.cancel()

        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET


class _Private(_Page):
    def render_GET(self, request: Request) -> bytes:
        body = f"A private page, generated at {_timestamp(self._clock)} UTC: a shared cache must not store it.\n"
        return _text(request, body, b"private, max-age=60")


class _NoCache(_Page):
    def render_GET(self, request: Request) -> bytes:
        body = f"A no-store page, generated at {_timestamp(self._clock)} UTC: no cache may keep it.\n"
        return _text(request, body, b"no-store")


class _Vary(_Page):
    def render_GET(self, request: Request) -> bytes:
        accept = (request.getHeader(b"accept-language") or b"").decode("latin-1")
        language = "en"
        for item in accept.split(","):
            tag = item.split(";")[0].strip().lower()[:2]
            if tag in _GREETINGS:
                language = tag
                break
        request.setHeader(b"vary", b"Accept-Language")
        request.setHeader(b"content-language", language.encode("ascii"))
        body = f"{_GREETINGS[language]}! (language {language}, generated at {_timestamp(self._clock)} UTC)\n"
        return _text(request, body, b"public, max-age=60")


@implementer(IPushProducer)
class _BigBody:
    """A push producer writing ``size`` bytes in fixed chunks until paused."""

    def __init__(self, request: Request, size: int) -> None:
        self._request = request
        self._left = size
        self._paused = False
        self._writing = False
        self._stopped = False
        self._chunk = (b"accel demo big body 0123456789abcdefghijklmnopqrstuvwxyz\n" * (_CHUNK // 58 + 1))[:_CHUNK]

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._produce()

    def _produce(self) -> None:
        if self._writing or self._stopped:
            return
        self._writing = True
        try:
            # The transport pauses us from inside write() once its buffer fills.
            while self._left and not self._paused and not self._stopped:
                data = self._chunk[: min(self._left, _CHUNK)]
                self._left -= len(data)
                self._request.write(data)
        finally:
            self._writing = False
        if self._left == 0 and not self._stopped:
            self._stopped = True
            self._request.unregisterProducer()
            self._request.finish()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._stopped = True


class _Big(_Page):
    def render_GET(self, request: Request) -> bytes | int:
        raw = (request.args or {}).get(b"size", [str(BIG_DEFAULT).encode()])[0]
        if not raw.isdigit() or int(raw) > BIG_MAX:
            request.setResponseCode(400)
            return _text(request, f"size must be a number of bytes from 0 to {BIG_MAX}\n", b"no-store")
        size = int(raw)
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"public, max-age=60")
        request.setHeader(b"server", b"accel-demo-origin")
        request.setHeader(b"content-length", str(size).encode("ascii"))
        if size == 0 or request.method == b"HEAD":
            return b""
        _BigBody(request, size).start()
        return NOT_DONE_YET


class _ETag(_Page):
    """A validator that changes every minute; every reuse must revalidate."""

    def render_GET(self, request: Request) -> bytes | int:
        etag = b'"demo-%d"' % (int(self._clock.seconds()) // 60)
        request.setHeader(b"etag", etag)
        match = request.getHeader(b"if-none-match") or b""
        tags = {tag.strip().removeprefix(b"W/") for tag in match.split(b",")}
        if etag in tags or b"*" in tags:
            request.setResponseCode(304)
            request.setHeader(b"cache-control", b"no-cache")
            request.setHeader(b"server", b"accel-demo-origin")
            # Finished here rather than by returning b"": twisted.web would
            # add Content-Length: 0, which a 304 must not carry unless it is
            # the length of the 200 (RFC 9110 section 8.6).
            request.finish()
            return NOT_DONE_YET
        body = (
            f"This page has ETag {etag.decode()}; it changes every minute."
            f" Generated at {_timestamp(self._clock)} UTC.\n"
        )
        return _text(request, body, b"no-cache")


def make_demo_site(clock: IReactorTime) -> Site:
    """The demo origin as a ``twisted.web`` Site; ``clock`` times ``/slow``
    and the timestamps on the pages (the reactor, or a ``task.Clock``)."""
    root = Resource()
    root.putChild(b"", _Index(clock))
    root.putChild(b"slow", _Slow(clock))
    root.putChild(b"private", _Private(clock))
    root.putChild(b"nocache", _NoCache(clock))
    root.putChild(b"vary", _Vary(clock))
    root.putChild(b"big", _Big(clock))
    root.putChild(b"etag", _ETag(clock))
    site = _QuietSite(root)
    site.noisy = False
    return site


class _QuietSite(Site):
    """The demo origin logs nothing per request: accel's access log has it."""

    def log(self, request: object) -> None:
        pass


class DemoOrigin(Service):
    """Runs the demo site on a UNIX socket in a private temporary directory.

    :meth:`create` makes the directory, so ``url`` (``unix:/tmp/…/origin.sock``)
    is known before the service starts and can go into the configuration
    (:meth:`accel.config.Config.with_demo_origin`). Starting logs
    :func:`banner`; stopping closes the socket and removes the directory.
    """

    def __init__(self, reactor: IReactorUNIX, clock: IReactorTime, directory: str, listen: Sequence[str]) -> None:
        self._reactor = reactor
        self._clock = clock
        self._directory = directory
        self._listen = tuple(listen)
        self._port: IListeningPort | None = None
        self.path = os.path.join(directory, "origin.sock")
        self.url = f"unix:{self.path}"

    @classmethod
    def create(cls, reactor: IReactorUNIX, clock: IReactorTime, listen: Sequence[str] = ("tcp:8080",)) -> DemoOrigin:
        """A demo origin in a fresh private directory; ``listen`` is accel's
        own listeners, used only for the start-up hint."""
        return cls(reactor, clock, tempfile.mkdtemp(prefix="accel-demo-"), listen)

    def startService(self) -> None:
        super().startService()
        _log.info("{banner}", banner=banner(self._listen))
        endpoint = UNIXServerEndpoint(self._reactor, self.path, mode=0o600, wantPID=False)
        endpoint.listen(make_demo_site(self._clock)).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> None:
        self._port = port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        port, self._port = self._port, None
        stopped = maybeDeferred(port.stopListening) if port is not None else succeed(None)

        def remove(result: object) -> object:
            shutil.rmtree(self._directory, ignore_errors=True)
            return result

        return stopped.addBoth(remove)

"""The request/response model every layer above the wire shares.

A wire protocol (HTTP/1.1 in :mod:`accel.http.server`, HTTP/2 later) turns
bytes into a :class:`Request` and hands it, with a :class:`Responder`, to a
:class:`Handler`. The handler never sees framing (Content-Length versus
chunked, keep-alive, pipelining): it sees a head, a body it can pull with
back-pressure, and a channel to answer on.

Bodies flow as push streams, Twisted-style:

* a :class:`BodySource` delivers chunks to one :class:`BodySink`; the sink
  may ``pause()``/``resume()`` the source (back-pressure);
* a :class:`Responder` is the consumer side of the answer: ``write`` may be
  followed by the responder pausing the registered producer when the
  client's socket buffer is full (Twisted's ``IPushProducer`` contract).

Pure: no Twisted imports here, only structural types.
"""

from __future__ import annotations

from typing import Protocol

from attrs import define, field, frozen

from accel.http.headers import Headers

__all__ = [
    "EMPTY_BODY",
    "BodySink",
    "BodySource",
    "FileBackedBody",
    "Handler",
    "PushProducer",
    "Request",
    "Responder",
]


class BodySink(Protocol):
    """Receives a body. Exactly one of ``end``/``fail`` is called, once."""

    def data(self, chunk: bytes) -> None: ...

    def end(self) -> None:
        """The body is complete (framing satisfied)."""

    def fail(self, reason: Exception) -> None:
        """The body is incomplete: the peer went away or broke framing."""


class BodySource(Protocol):
    """A body that can be delivered once, with back-pressure.

    ``length`` is the declared length (Content-Length), ``None`` when not
    known in advance (chunked, or delimited by close), ``0`` for no body.
    Data that arrives before ``deliver`` is buffered by the source (bounded:
    the source pauses its transport).
    """

    length: int | None

    def deliver(self, sink: BodySink) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def discard(self) -> None:
        """The reader is not interested; drop the body (may close the connection)."""


class PushProducer(Protocol):
    """Twisted's ``IPushProducer``, structurally."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class _EmptyBody:
    """A body of length zero."""

    length: int | None = 0

    def deliver(self, sink: BodySink) -> None:
        sink.end()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass

    def discard(self) -> None:
        pass


EMPTY_BODY: BodySource = _EmptyBody()


@frozen
class FileBackedBody:
    """A body held in memory whose bytes are also those of an open file.

    ``fd`` reads ``data`` from offset 0 (a stored body file, which is never
    rewritten). The wire layer may send it from the file with ``sendfile``,
    no copy through the process, and send from ``data`` whatever the file
    does not give. Whoever opened ``fd`` closes it; it is only borrowed.
    """

    data: bytes
    fd: int


@define(slots=True, eq=False)
class Request:
    """A request as a handler sees it, independent of the wire.

    ``target`` is the request-target as received (origin-form
    ``/path?query``, or absolute-form, which the wire layer has already
    reduced to ``path`` and ``authority``). ``path`` and ``query`` are still
    percent-encoded exactly as the client sent them. ``authority`` is the
    validated Host (lower-cased), ``scheme`` the listener's scheme.
    ``client`` is the peer's address (``"127.0.0.1"``, or ``"unix"``).
    """

    method: bytes
    target: bytes
    path: bytes
    query: bytes | None
    version: bytes  # b"1.1", b"1.0", b"2"
    headers: Headers
    authority: bytes
    scheme: bytes = b"http"
    client: str = ""
    client_port: int = 0
    body: BodySource = field(default=EMPTY_BODY)


class Responder(Protocol):
    """The channel a handler answers one request on.

    Call ``start`` once, then ``write`` any number of times, then exactly one
    of ``finish`` (the body is complete) or ``abort`` (the body is truncated:
    the connection is closed without completing the framing, so the client
    can tell). For HEAD requests and for 204/304 the responder drops body
    bytes itself; handlers do not need to care.

    Framing is derived from ``headers``: a ``content-length`` field means a
    fixed-length body (the responder does not check it is honoured beyond
    refusing to write more), no length means chunked on HTTP/1.1 or
    close-delimited on HTTP/1.0. Handlers must not put hop-by-hop fields in
    ``headers``; the responder adds ``Date`` if absent and its own
    connection management fields.
    """

    #: Set once the client has gone away; writes are then ignored.
    disconnected: bool

    #: Annotations for the access log, set by the handler: ``cache`` (the
    #: cache status word, e.g. ``"HIT"``), ``upstream`` (origin name).
    log: dict[str, str]

    def start(self, status: int, reason: bytes, headers: Headers) -> None: ...

    def write(self, data: bytes) -> None: ...

    def finish(self) -> None: ...

    def abort(self) -> None: ...

    def register_producer(self, producer: PushProducer) -> None:
        """Register a streaming producer; paused while the client is slow."""

    def unregister_producer(self) -> None: ...

    def on_disconnect(self, callback: object) -> None:
        """Call ``callback()`` if the client goes away before ``finish``."""


class Handler(Protocol):
    """What a wire protocol hands each request to."""

    def handle(self, request: Request, responder: Responder) -> None: ...

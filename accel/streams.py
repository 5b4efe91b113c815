"""Moving bodies: from an origin or a stored file to a client, with back-pressure.

Two pumps, both Twisted-style push producers registered on the client's
:class:`~accel.http.model.Responder`, so a slow client pauses whatever feeds
it and accel never holds more than a chunk or two of any body:

* :class:`Relay` streams an origin response body to a client and, when the
  response is being stored, to a store writer at the same time (a tee). The
  stored copy is committed only when the origin finished the body cleanly;
  a truncated body aborts both the writer and the client's response.
* :class:`FileSender` streams a stored body from an open file handle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO, Protocol

from twisted.logger import Logger

from accel.http.model import BodySource, Responder

__all__ = ["BodyWriter", "FileSender", "Relay", "CHUNK"]

#: Read size for stored bodies: large enough that a transport write is
#: worth its overhead, small enough to keep memory flat.
CHUNK = 256 * 1024

_log = Logger()


class BodyWriter(Protocol):
    """The store's side of a tee (see :mod:`accel.cache.store`)."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> object: ...

    def abort(self) -> None: ...


class Relay:
    """Stream one origin body to one client and, optionally, one store writer.

    ``responder`` may be ``None`` for a background fill (a revalidation the
    client is not waiting for); ``on_done(complete: bool, stored: object)`` is
    called once at the end, ``stored`` being what the writer's ``commit``
    returned (``None`` when nothing was stored).
    """

    __slots__ = ("_body", "_responder", "_writer", "_on_done", "_done", "_limit", "_seen")

    def __init__(
        self,
        body: BodySource,
        responder: Responder | None,
        writer: BodyWriter | None = None,
        on_done: Callable[[bool, object], None] | None = None,
        store_limit: int | None = None,
    ) -> None:
        self._body = body
        self._responder = responder
        self._writer = writer
        self._on_done = on_done
        self._done = False
        self._limit = store_limit
        self._seen = 0

    def start(self) -> None:
        if self._responder is not None:
            self._responder.register_producer(self)
        self._body.deliver(self)

    # BodySink

    def data(self, chunk: bytes) -> None:
        if self._done:
            return
        if self._writer is not None:
            self._seen += len(chunk)
            if self._limit is not None and self._seen > self._limit:
                self._drop_writer()
            else:
                try:
                    self._writer.write(chunk)
                except Exception:
                    _log.failure("store write failed; continuing without storing")
                    self._drop_writer()
        if self._responder is not None:
            self._responder.write(chunk)

    def end(self) -> None:
        if self._done:
            return
        self._done = True
        stored: object = None
        if self._writer is not None:
            try:
                stored = self._writer.commit()
            except Exception:
                _log.failure("store commit failed")
                stored = None
            self._writer = None
        if self._responder is not None:
            self._responder.unregister_producer()
            self._responder.finish()
        if self._on_done is not None:
            self._on_done(True, stored)

    def fail(self, reason: Exception) -> None:
        if self._done:
            return
        self._done = True
        self._drop_writer()
        if self._responder is not None:
            self._responder.unregister_producer()
            self._responder.abort()
        if self._on_done is not None:
            self._on_done(False, None)

    # PushProducer (the client's side)

    def pauseProducing(self) -> None:
        self._body.pause()

    def resumeProducing(self) -> None:
        self._body.resume()

    def stopProducing(self) -> None:
        """The client went away: stop fetching (nothing half-stored)."""
        if self._done:
            return
        self._done = True
        self._drop_writer()
        self._body.discard()
        if self._on_done is not None:
            self._on_done(False, None)

    def _drop_writer(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.abort()
            except Exception:
                _log.failure("store abort failed")


class FileSender:
    """Stream ``length`` bytes of an open stored body to a client.

    The file is closed when done, whatever happens. Small bodies go out in
    one write; larger ones in :data:`CHUNK` reads, paused while the client's
    socket buffer is full.
    """

    __slots__ = ("_file", "_responder", "_remaining", "_paused", "_done")

    def __init__(self, file: BinaryIO, responder: Responder, length: int) -> None:
        self._file = file
        self._responder = responder
        self._remaining = length
        self._paused = False
        self._done = False

    def start(self) -> None:
        if self._remaining <= CHUNK:
            try:
                data = self._file.read(self._remaining)
            finally:
                self._file.close()
            self._done = True
            if len(data) != self._remaining:
                self._responder.abort()
                return
            self._responder.write(data)
            self._responder.finish()
            return
        self._responder.register_producer(self)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._done:
            data = self._file.read(min(CHUNK, self._remaining))
            if not data:
                # The stored file is shorter than its entry said: never pass
                # that off as a complete body.
                self._finish(complete=False)
                return
            self._remaining -= len(data)
            self._responder.write(data)
            if self._remaining <= 0:
                self._finish(complete=True)

    def stopProducing(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()

    def _finish(self, complete: bool) -> None:
        self._done = True
        self._file.close()
        self._responder.unregister_producer()
        if complete:
            self._responder.finish()
        else:
            self._responder.abort()

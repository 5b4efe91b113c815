"""Moving bodies: from an origin or a stored file to a client, with back-pressure.

Two pumps, both Twisted-style push producers registered on the client's
:class:`~accel.http.model.Responder`, so a slow client pauses whatever feeds
it and accel never holds more than a chunk or two of any body:

* :class:`Relay` streams an origin response body to a client and, when the
  response is being stored, to a store writer at the same time (a tee). The
  stored copy is committed only when the origin finished the body cleanly;
  a truncated body aborts both the writer and the client's response.
* :class:`FileSender` streams a stored body from an open file handle; on a
  plain TCP or UNIX connection a large one goes by ``os.sendfile`` straight
  from the page cache to the socket (:class:`_Sendfile`), never through
  Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from twisted.logger import Logger

from accel.http.model import BodySource, Responder

__all__ = ["BodyWriter", "FileSender", "Relay", "CHUNK"]

#: Read size for stored bodies: large enough that a transport write is
#: worth its overhead, small enough to keep memory flat.
CHUNK = 256 * 1024
#: Bodies at least this large go by ``os.sendfile`` where the connection allows.
SENDFILE_MIN = 64 * 1024
#: Most bytes one ``sendfile`` turn sends before yielding to the reactor, so a
#: fast reader of a huge body cannot starve the other connections.
SENDFILE_SLICE = 4 * 1024 * 1024

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
        if self._remaining >= SENDFILE_MIN:
            take_socket = getattr(self._responder, "take_socket", None)
            transport = take_socket(self._remaining) if take_socket is not None else None
            if transport is not None:
                self._done = True
                _Sendfile(self._file, self._responder, transport, self._remaining).start()
                return
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


class _Sendfile:
    """``os.sendfile`` a stored body to a client's socket, with Twisted's help.

    Twisted has no sendfile API, so this is a *pull* producer registered on
    the transport itself (``IPullProducer``): the transport calls
    :meth:`resumeProducing` only when its own write buffer is empty, so the
    response head, written through Twisted just before, is always on the
    socket first. Each turn sends until the socket is full (``EAGAIN``) or
    :data:`SENDFILE_SLICE` is sent, then asks the transport to wait for
    writability (``startWriting``); the transport's next ``doWrite`` finds
    its buffer empty and calls :meth:`resumeProducing` again. If the client
    goes away, the transport calls :meth:`stopProducing`.

    The responder has already counted the bytes (see ``take_socket``); a
    short file or a socket error aborts the response.
    """

    __slots__ = ("_file", "_responder", "_transport", "_offset", "_remaining", "_primed", "_done")

    def __init__(self, file: BinaryIO, responder: Responder, transport: Any, length: int) -> None:
        self._file = file
        self._responder = responder
        self._transport = transport
        self._offset = file.tell()
        self._remaining = length
        self._primed = False
        self._done = False

    def start(self) -> None:
        # A pull producer is asked for data at once, while the head may still
        # be in Twisted's buffer: the first turn only asks for a doWrite.
        self._transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._done:
            return
        transport = self._transport
        if not self._primed:
            self._primed = True
            transport.startWriting()
            return
        out, src = transport.fileno(), self._file.fileno()
        budget = SENDFILE_SLICE
        while self._remaining > 0 and budget > 0:
            try:
                sent = os.sendfile(out, src, self._offset, min(self._remaining, budget))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                # The client reset the connection, or the disk failed: the
                # response cannot complete; the client sees it truncated.
                _log.debug("sendfile failed: {error}", error=e)
                self._finish(complete=False)
                return
            if sent == 0:
                # The stored file is shorter than its entry said.
                self._finish(complete=False)
                return
            self._offset += sent
            self._remaining -= sent
            budget -= sent
        if self._remaining <= 0:
            self._finish(complete=True)
        else:
            transport.startWriting()

    def stopProducing(self) -> None:
        if not self._done:
            self._done = True
            self._file.close()

    def _finish(self, complete: bool) -> None:
        self._done = True
        self._file.close()
        self._transport.unregisterProducer()
        if complete:
            self._responder.finish()
        else:
            self._responder.abort()

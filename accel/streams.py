"""Moving bodies: from an origin or a stored file to a client, with back-pressure.

Two pumps, both Twisted-style push producers registered on the client's
:class:`~accel.http.model.Responder`, so a slow client pauses whatever feeds
it and accel never holds more than a chunk or two of any body:

* :class:`Relay` streams an origin response body to a client and, when the
  response is being stored, to a store writer at the same time (a tee). The
  stored copy is committed only when the origin finished the body cleanly;
  a truncated body aborts both the writer and the client's response.
* :class:`Feed` and :class:`Follower` let other clients share a fill while
  it streams (collapsed requests): the feed sits between a :class:`Relay`
  and the store's writer and tells each follower how far the spool file has
  grown; a follower reads the file through its own handle at its own
  client's pace, so a slow follower only lags behind in the file and never
  holds up the origin or the other clients.
* :class:`FileSender` streams a stored body from an open file handle; on a
  plain TCP or UNIX connection a large one goes by ``os.sendfile`` straight
  from the page cache to the socket (:class:`_Sendfile`), never through
  Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, Protocol

from twisted.logger import Logger

from accel import directwrite
from accel.http.model import BodySource, Responder

__all__ = [
    "CHUNK",
    "BodyWriter",
    "Feed",
    "FileSender",
    "Follower",
    "PartsSender",
    "Relay",
    "SpoolWriter",
]

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

    def when_committed(self, then: Callable[[], None]) -> None:
        """Call ``then`` once what :meth:`commit` stored is visible to every
        process sharing the store, or known lost; at once if nothing waits."""
        ...

    def abort(self) -> None: ...


class SpoolWriter(BodyWriter, Protocol):
    """A writer whose body others can read as it grows (the store's writer)."""

    @property
    def active(self) -> bool: ...

    @property
    def written(self) -> int: ...

    @property
    def spool_path(self) -> str | None: ...


class Relay:
    """Stream one origin body to one client and, optionally, one store writer.

    ``responder`` may be ``None`` for a background fill (a revalidation the
    client is not waiting for); ``on_done(complete: bool, stored: object)`` is
    called once at the end, ``stored`` being what the writer's ``commit``
    returned (``None`` when nothing was stored).

    While storing a body, the client's response is completed (the chunk
    that completes a body of declared length is written, a chunked body's
    last chunk sent, ``on_done`` called) only once the store's writer says
    the entry is committed (:meth:`BodyWriter.when_committed`): at the end
    of the reactor turn, with the other rows stored during it (see "Group
    commit" in :mod:`accel.cache.store`). A client that has the whole
    response can rely on its next request, to this process or another
    worker, finding it stored. If the commit fails, the response completes
    all the same. A response not being stored completes as its body ends.
    """

    __slots__ = ("_body", "_done", "_held", "_limit", "_on_done", "_responder", "_seen", "_writer")

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
        self._held = b""

    def start(self) -> None:
        if self._responder is not None:
            self._responder.register_producer(self)
        self._body.deliver(self)

    # BodySink

    def data(self, chunk: bytes) -> None:
        if self._done:
            return
        self._seen += len(chunk)
        if self._writer is not None:
            if self._limit is not None and self._seen > self._limit:
                self._drop_writer()
            else:
                try:
                    self._writer.write(chunk)
                except Exception:  # noqa: BLE001 (the client is still served, without storing)
                    _log.failure("store write failed; continuing without storing")
                    self._drop_writer()
        if self._responder is not None:
            if self._held:
                # More than declared after all: the store's writer has given
                # up on it; the client gets the bytes in order.
                self._responder.write(self._held)
                self._held = b""
            if self._writer is not None and self._seen == self._body.length:
                self._held = chunk  # the last one: sent once committed (see end)
            else:
                self._responder.write(chunk)

    def end(self) -> None:
        if self._done:
            return
        self._done = True
        writer, self._writer = self._writer, None
        if writer is None:
            self._complete(None)
            return
        try:
            stored = writer.commit()
        except Exception:  # noqa: BLE001 (the client is still served, without storing)
            _log.failure("store commit failed")
            self._complete(None)
            return
        writer.when_committed(lambda: self._complete(stored))

    def _complete(self, stored: object) -> None:
        """The body is over (and stored, if it was being stored): finish the response."""
        responder = self._responder
        if responder is not None:
            if self._held:
                responder.write(self._held)
            responder.unregister_producer()
            responder.finish()
        self._held = b""
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
        """The client went away: stop fetching (nothing half-stored).

        Unless other clients follow the fill (the writer is a :class:`Feed`
        with followers): then the body is fetched and stored to the end
        without this client.
        """
        if self._done:
            return
        writer = self._writer
        if isinstance(writer, Feed) and writer.followed:
            self._responder = None
            self._body.resume()
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
            except Exception:  # noqa: BLE001 (logged; the response goes on)
                _log.failure("store abort failed")


class Feed:
    """A body being stored that other clients follow while it is written.

    The :class:`Relay` of a cache fill writes through the feed (it is the
    relay's writer); the feed passes everything to the store's ``writer``
    and, after each chunk, tells every :class:`Follower` how many bytes the
    spool file now holds. ``length`` is the declared body length, if any.

    The fill ends one of two ways for the followers: *whole* (the origin
    finished the body, every declared byte arrived and was written) and they
    finish once they have sent it all; or *broken* (the origin failed or was
    truncated, the writer gave up: a disk error, a body over its limit) and
    their responses are aborted at once, so no client mistakes a part for
    the whole.
    """

    __slots__ = ("_followers", "_length", "_over", "_writer")

    def __init__(self, writer: SpoolWriter, length: int | None) -> None:
        self._writer = writer
        self._length = length
        self._followers: list[Follower] = []
        self._over = False

    @property
    def followed(self) -> bool:
        """Whether any client is following the fill."""
        return bool(self._followers)

    def follow(self, responder: Responder) -> Follower | None:
        """A follower streaming the body to ``responder``; ``None`` if too late.

        Too late: the fill is over or no longer stored, so there is no file
        to follow; the caller falls back to the store or the origin. The
        follower has its own handle on the spool file; call its ``start``
        once the response head is sent.
        """
        path = self._writer.spool_path
        if self._over or path is None:
            return None
        try:
            file = open(path, "rb", buffering=0)  # noqa: SIM115 (the follower closes it)
        except OSError:
            return None
        follower = Follower(self, file, responder)
        self._followers.append(follower)
        return follower

    @property
    def available(self) -> int:
        """Bytes of the body in the spool file that followers may send so far.

        While the fill goes on, a body of declared length is short of its
        last byte here: a follower's client gets it, as the leader's, only
        once the entry is committed (see :class:`Relay`).
        """
        written = self._writer.written
        if self._over or written != self._length:
            return written
        return written - 1

    # BodyWriter (the relay's side)

    def write(self, data: bytes) -> None:
        writer = self._writer
        writer.write(data)
        if not writer.active:
            self._end(whole=False)
            return
        if self._followers:  # most fills have none: no copy of an empty list
            for follower in list(self._followers):
                follower.grown()

    def commit(self) -> object:
        writer = self._writer
        whole = writer.active and (self._length is None or writer.written == self._length)
        stored = writer.commit()
        if not self._followers:
            # Nobody to tell, and nobody can start following now: the body
            # is no longer being written (no spool_path), so follow() says
            # too late. A closure and a call after the commit fewer per miss.
            self._over = True
            return stored
        # A body that arrived whole but could not be kept (the store failed
        # at the last step) is still whole in the followers' open files.
        # Either way the followers end once the commit is known.
        writer.when_committed(lambda: self._end(whole))
        return stored

    def when_committed(self, then: Callable[[], None]) -> None:
        self._writer.when_committed(then)

    def abort(self) -> None:
        self._writer.abort()
        self._end(whole=False)

    def _end(self, whole: bool) -> None:
        if self._over:
            return
        self._over = True
        for follower in list(self._followers):
            follower.ended(whole)

    def _leave(self, follower: Follower) -> None:
        if follower in self._followers:
            self._followers.remove(follower)


class Follower:
    """Streams a :class:`Feed`'s body from its spool file to one client.

    A push producer on the client's responder: it reads :data:`CHUNK`-sized
    pieces of the file through its own handle, only while the client keeps
    up, and catches up whenever the feed grows or the client drains. Made
    by :meth:`Feed.follow`.
    """

    __slots__ = ("_done", "_feed", "_file", "_paused", "_responder", "_sent", "_whole")

    def __init__(self, feed: Feed, file: BinaryIO, responder: Responder) -> None:
        self._feed = feed
        self._file = file
        self._responder = responder
        self._sent = 0
        self._paused = False
        #: None while the fill goes on; then whether it ended whole.
        self._whole: bool | None = None
        self._done = False

    def start(self) -> None:
        """Send what is there, and the rest as it comes."""
        self._responder.register_producer(self)
        self._pump()

    def grown(self) -> None:
        """The feed wrote more."""
        self._pump()

    def ended(self, whole: bool) -> None:
        """The fill is over: finish once caught up if ``whole``, else abort now."""
        self._whole = whole
        if whole:
            self._pump()
        elif not self._done:
            self._finish(complete=False)

    def _pump(self) -> None:
        file, responder = self._file, self._responder
        while not self._paused and not self._done:
            missing = self._feed.available - self._sent
            if missing <= 0:
                if self._whole:
                    self._finish(complete=True)
                return
            try:
                data = file.read(min(CHUNK, missing))
            except OSError:
                data = b""
            if not data:
                # The file is shorter than what was written to it: never
                # pass that off as a complete body.
                self._finish(complete=False)
                return
            self._sent += len(data)
            responder.write(data)

    # PushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The client went away; the fill goes on for the others."""
        if not self._done:
            self._done = True
            self._file.close()
            self._feed._leave(self)

    def _finish(self, complete: bool) -> None:
        self._done = True
        self._file.close()
        self._feed._leave(self)
        self._responder.unregister_producer()
        if complete:
            self._responder.finish()
        else:
            self._responder.abort()


class _StoredBody:
    """What :class:`FileSender` and :class:`_Sendfile` share: ``length`` bytes
    of an open stored body going to one client, the file closed exactly once.

    A subclass says how its producer is unregistered (:meth:`_unregister`):
    from the responder, or from the transport itself.
    """

    __slots__ = ("_done", "_file", "_remaining", "_responder")

    def __init__(self, file: BinaryIO, responder: Responder, length: int) -> None:
        self._file = file
        self._responder = responder
        self._remaining = length
        self._done = False

    def stopProducing(self) -> None:
        """The client went away: close the file, send nothing more."""
        if not self._done:
            self._done = True
            self._file.close()

    def _finish(self, complete: bool) -> None:
        """Close the file and end the response: finished if ``complete``, else aborted."""
        self._done = True
        self._file.close()
        self._unregister()
        if complete:
            self._responder.finish()
        else:
            self._responder.abort()

    def _unregister(self) -> None:
        raise NotImplementedError


class FileSender(_StoredBody):
    """Stream ``length`` bytes of an open stored body to a client.

    The file is closed when done, whatever happens. Small bodies go out in
    one write; larger ones in :data:`CHUNK` reads, paused while the client's
    socket buffer is full.
    """

    __slots__ = ("_paused",)

    def __init__(self, file: BinaryIO, responder: Responder, length: int) -> None:
        super().__init__(file, responder, length)
        self._paused = False

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

    def _unregister(self) -> None:
        self._responder.unregister_producer()


class PartsSender(_StoredBody):
    """Stream a body made of literal bytes and spans of an open stored file.

    For ``multipart/byteranges`` answers (:class:`accel.http.byteranges.Multipart`):
    ``pieces`` are, in order, ``bytes`` (a part's delimiter and head, the
    close delimiter) and ``(offset, count)`` spans of the file (a part's
    range). Pieces are gathered into writes of about :data:`CHUNK` bytes, so
    many small parts do not cost a write each, and a large span is read a
    chunk at a time while the client keeps up; the file is closed when done.
    """

    __slots__ = ("_next", "_paused", "_pieces")

    def __init__(
        self, file: BinaryIO, responder: Responder, pieces: Sequence[bytes | tuple[int, int]]
    ) -> None:
        # ``_remaining`` counts what is left of the span being read.
        super().__init__(file, responder, 0)
        self._pieces = pieces
        self._next = 0
        self._paused = False

    def start(self) -> None:
        self._responder.register_producer(self)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        pending: list[bytes] = []
        size = 0
        while not self._paused and not self._done:
            if size >= CHUNK:
                # The write may pause this producer (a slow client).
                self._responder.write(b"".join(pending))
                pending.clear()
                size = 0
                continue
            if self._remaining == 0:
                if self._next == len(self._pieces):
                    if pending:
                        self._responder.write(b"".join(pending))
                    self._finish(complete=True)
                    return
                piece = self._pieces[self._next]
                self._next += 1
                if isinstance(piece, bytes):
                    pending.append(piece)
                    size += len(piece)
                    continue
                offset, self._remaining = piece
                try:
                    self._file.seek(offset)
                except OSError:
                    self._finish(complete=False)
                    return
            try:
                data = self._file.read(min(CHUNK - size, self._remaining))
            except OSError:
                data = b""
            if not data:
                # The stored file is shorter than its entry said.
                self._finish(complete=False)
                return
            self._remaining -= len(data)
            pending.append(data)
            size += len(data)
        if pending:
            self._responder.write(b"".join(pending))

    def _unregister(self) -> None:
        self._responder.unregister_producer()


class _Sendfile(_StoredBody):
    """``os.sendfile`` a stored body to a client's socket, with Twisted's help.

    Twisted has no sendfile API, so this is a *pull* producer registered on
    the transport itself (``IPullProducer``): the transport calls
    :meth:`resumeProducing` only when its own write buffer is empty, so
    whatever was written through Twisted before (the response head, if it
    did not go straight to the socket) is always on the socket first. Each
    turn sends until the socket is full (``EAGAIN``) or
    :data:`SENDFILE_SLICE` is sent, then asks the transport to wait for
    writability (``startWriting``); the transport's next ``doWrite`` finds
    its buffer empty and calls :meth:`resumeProducing` again. If the client
    goes away, the transport calls :meth:`stopProducing`.

    When Twisted's buffer is already empty at the start (the head went
    straight to the socket, the usual case), the first bytes go at once,
    and a body the socket takes whole never involves the reactor.

    The responder has already counted the bytes (see ``take_socket``); a
    short file or a socket error aborts the response.
    """

    __slots__ = ("_offset", "_primed", "_transport")

    def __init__(self, file: BinaryIO, responder: Responder, transport: Any, length: int) -> None:
        super().__init__(file, responder, length)
        self._transport = transport
        self._offset = file.tell()
        self._primed = False

    def start(self) -> None:
        transport = self._transport
        if directwrite.buffer_empty(transport) and self._send():
            return
        # A pull producer is asked for data at once, while the head may still
        # be in Twisted's buffer (or the socket is full): the first turn only
        # asks for a doWrite.
        transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._done:
            return
        if not self._primed:
            self._primed = True
        elif self._send():
            return
        self._transport.startWriting()

    def _send(self) -> bool:
        """Send until the socket is full or a slice is sent; whether the response ended."""
        out, src = self._transport.fileno(), self._file.fileno()
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
                return True
            if sent == 0:
                # The stored file is shorter than its entry said.
                self._finish(complete=False)
                return True
            self._offset += sent
            self._remaining -= sent
            budget -= sent
        if self._remaining <= 0:
            self._finish(complete=True)
            return True
        return False

    def _unregister(self) -> None:
        if self._transport.producer is self:  # not if it ended in start()
            self._transport.unregisterProducer()

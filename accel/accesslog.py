"""The access log: one line per request, in the combined format plus cache status.

::

    127.0.0.1 - - [25/Nov/2026:19:22:33 +0000] "GET /a HTTP/1.1" 200 1024 "-" "curl/8.5.0" HIT 0.000

The fields after the combined ones are the cache status (``HIT``, ``MISS``,
``EXPIRED``, ``STALE``, ``UPDATING``, ``REVALIDATED``, ``BYPASS``, ``-``)
and the request time in seconds. A request whose client closed the
connection before its answer started is logged with status 499, as nginx
logs it; one cut off during its answer, with the answer's status and the
bytes sent. Lines are buffered and flushed at least
once a second, so the reactor never waits on the disk per request.
"""

from __future__ import annotations

import select
import sys
import time
from collections.abc import Iterator
from typing import BinaryIO

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from accel.http.model import Request

__all__ = ["AccessLog", "format_fields", "format_line"]

_log = Logger()

_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")  # fmt: skip


#: Bytes a log field keeps as they are: printable ASCII but '"' and "\\".
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


#: Quoted fields already formatted (user agents, referers and request
#: lines repeat): at most _MEMO_MAX of at most _MEMO_LEN bytes, dropped all
#: at once when full, so hostile values cost memory only within that bound.
_MEMO: dict[bytes, bytes] = {}
_MEMO_MAX = 1024
_MEMO_LEN = 256


def _quote(value: bytes | None) -> bytes:
    """A log field in double quotes, with quotes, backslashes and controls escaped."""
    if not value:
        return b'"-"'
    quoted = _MEMO.get(value)
    if quoted is None:
        quoted = _escape(value)
        if len(value) <= _MEMO_LEN:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            _MEMO[value] = quoted
    return quoted


def _plain(value: bytes) -> bool:
    """Whether ``value`` goes into a quoted field as it is (see :func:`_quote`)."""
    quoted = _MEMO.get(value)
    if quoted is not None:
        return len(quoted) == len(value) + 2
    return len(_quote(value)) == len(value) + 2


def _escape(value: bytes) -> bytes:
    """:func:`_quote` of a non-empty value, computed."""
    if not value.translate(None, _PLAIN):
        return b'"' + value + b'"'  # the usual case, without a loop per byte
    out = bytearray(b'"')
    for c in value:
        if c == 0x22 or c == 0x5C or c < 0x20 or c > 0x7E:
            out += b"\\x%02X" % c
        else:
            out.append(c)
    out += b'"'
    return bytes(out)


#: Status codes and request times below a second (rounded to milliseconds)
#: as the log writes them, formatted once.
_STATUS = {code: b"%d" % code for code in range(100, 600)}
_MILLIS = tuple(b"0.%03d" % ms for ms in range(1000))

_last_clf: tuple[int, bytes] = (-1, b"")


def _clf_time(when: float) -> bytes:
    """``[25/Nov/2026:19:22:33 +0000]``; formatted once per second."""
    global _last_clf  # noqa: PLW0603 (a per-second cache of the formatted time)
    second = int(when)
    if _last_clf[0] == second:
        return _last_clf[1]
    t = time.gmtime(second)
    text = b"[%02d/%s/%04d:%02d:%02d:%02d +0000]" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
    )  # fmt: skip
    _last_clf = (second, text)
    return text


def format_line(
    request: Request,
    status: int,
    sent: int,
    started: float,
    finished: float,
    notes: dict[str, str],
) -> bytes:
    """One access-log line (with trailing newline) for a finished request."""
    return format_fields(
        (request.client or "-").encode("ascii", "replace"),
        request.method,
        request.target,
        request.version,
        request.headers.pairs,
        status,
        sent,
        started,
        finished,
        notes.get("cache", "-").encode("ascii", "replace"),
    )


def format_fields(
    client: bytes,
    method: bytes,
    target: bytes,
    version: bytes,
    pairs: list[tuple[bytes, bytes]],
    status: int,
    sent: int,
    started: float,
    finished: float,
    cache: bytes,
) -> bytes:
    """:func:`format_line` from the parts of a request as the server read them.

    ``method`` is a token and ``version`` digits, as the server checked
    them: of the request line only the target may need escaping. Joined
    from pieces, most of them formatted once (this runs for every request).
    """
    # One pass for both fields (the first of each, as nginx logs them).
    referer = user_agent = None
    for name, value in pairs:
        if name == b"referer":
            if referer is None:
                referer = value
        elif name == b"user-agent" and user_agent is None:
            user_agent = value
    clf = _last_clf[1] if _last_clf[0] == int(started) else _clf_time(started)
    elapsed = finished - started
    # Rounded as the table is indexed: just under 0.9995 s can round to 1000 ms.
    ms = int(elapsed * 1000 + 0.5) if elapsed > 0.0 else 0
    millis = _MILLIS[ms] if ms < 1000 else b"%.3f" % elapsed
    key = (method, target, version, status, sent, referer, user_agent, cache)
    middle = _MIDDLES.get(key)
    if middle is None:
        middle = _middle(method, target, version, status, sent, referer, user_agent, cache)
        if len(target) + len(referer or b"") + len(user_agent or b"") <= _MEMO_LEN:
            if len(_MIDDLES) >= _MEMO_MAX:
                _MIDDLES.clear()
            _MIDDLES[key] = middle
    return b"".join((client, b" - - ", clf, middle, millis, b"\n"))


#: The middle of lines already written (request line to cache status), by
#: what they were made of: requests repeat. Bounded as :data:`_MEMO` is.
_MIDDLES: dict[tuple[object, ...], bytes] = {}


def _middle(
    method: bytes,
    target: bytes,
    version: bytes,
    status: int,
    sent: int,
    referer: bytes | None,
    user_agent: bytes | None,
    cache: bytes,
) -> bytes:
    """`` "GET / HTTP/1.1" 200 5 "-" "curl/8" HIT `` (spaces around it included).

    A request refused before it was parsed has no method: its request line
    is ``"-"``, as nginx logs one it could not read.
    """
    if not method:
        request_line = b'"-"'
    elif _plain(target):
        request_line = b'"%s %s HTTP/%s"' % (method, target, version)
    else:
        request_line = _quote(b"%s %s HTTP/%s" % (method, target, version))
    return b" %s %s %d %s %s %s " % (
        request_line,
        _STATUS.get(status) or b"%d" % status,
        sent,
        _quote(referer),
        _quote(user_agent),
        cache,
    )


class AccessLog:
    """Buffered writer of access-log lines to a file or standard output.

    Lines are kept until 64 KiB are pending or the flush interval passes,
    then written with one ``write`` of whole lines to a file opened for
    appending: several worker processes can share one log file and no line
    is ever split or interleaved with another process's. Standard output
    (shared by the workers, and often a pipe, where only writes of at most
    ``PIPE_BUF`` bytes are atomic) gets whole lines in writes of at most
    that size.

    :meth:`reopen` (on SIGUSR1, see :mod:`accel.app`) starts writing to a
    new file at ``path`` after the old one was moved, as logrotate does.
    """

    #: Pending bytes that trigger a write before the interval.
    FLUSH_BYTES = 64 * 1024

    def __init__(self, path: str, clock: IReactorTime, flush_interval: float = 1.0) -> None:
        self._stream: BinaryIO
        #: Largest write that keeps lines whole (None: no limit).
        self._atomic: int | None = None
        #: The file written to, or None for standard output.
        self._path: str | None = None if path == "-" else path
        self._closed = False
        self._stream, self._atomic = _open(path)
        self._lines: list[bytes] = []
        self._pending = 0
        self._flusher = LoopingCall(self.flush)
        self._flusher.clock = clock
        self._flusher.start(flush_interval, now=False)

    def __call__(
        self,
        request: Request,
        status: int,
        sent: int,
        started: float,
        finished: float,
        notes: dict[str, str],
    ) -> None:
        line = format_line(request, status, sent, started, finished, notes)
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= self.FLUSH_BYTES:
            self.flush()

    def fields(
        self,
        client: bytes,
        method: bytes,
        target: bytes,
        version: bytes,
        pairs: list[tuple[bytes, bytes]],
        status: int,
        sent: int,
        started: float,
        finished: float,
        cache: bytes,
    ) -> None:
        """Log a request from its parts (:func:`format_fields`), for the
        server's fast path, which builds no :class:`Request`."""
        line = format_fields(
            client, method, target, version, pairs, status, sent, started, finished, cache
        )
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= self.FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        lines, self._lines, self._pending = self._lines, [], 0
        try:
            for batch in _batches(lines, self._atomic):
                self._stream.write(batch)
            self._stream.flush()
        except OSError:
            pass

    def reopen(self) -> None:
        """Write the pending lines, then go on in a file opened anew at the path.

        After logrotate (or an operator) has moved the file away, this
        creates a new one at the path; if the file is still there, it is
        opened again for appending. Lines logged before the call are in the
        old file, lines after it in the new one: none is lost. If the path
        cannot be opened, that is logged and lines keep going to the old
        file. Standard output is left as it is.
        """
        if self._path is not None and not self._closed:
            self._switch(self._path, "access log reopened: {path}")

    def move(self, path: str) -> None:
        """Write the pending lines, then go on at ``path`` (a file, or ``-``).

        For a configuration reload that names another access log. If
        ``path`` cannot be opened, that is logged and lines keep going
        where they went.
        """
        if not self._closed and path != (self._path or "-"):
            self._switch(path, "access log now written to {path}")

    def _switch(self, path: str, done: str) -> None:
        """Flush, then write to ``path`` opened anew, closing the old stream;
        log ``done`` (a format with ``{path}``), or why ``path`` cannot be opened."""
        self.flush()
        try:
            stream, atomic = _open(path)
        except OSError as error:
            _log.error(
                "cannot open the access log {path}: {error}; still writing to {old}",
                path=path,
                error=error.strerror or error,
                old=self._path or "-",
            )
            return
        old, self._stream, self._atomic = self._stream, stream, atomic
        self._path = None if path == "-" else path
        try:
            old.close()
        except OSError:
            pass  # its lines were written already: nothing left to lose
        _log.info(done, path=path)

    def close(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        self._closed = True
        self._stream.close()


def _open(path: str) -> tuple[BinaryIO, int | None]:
    """The stream of the access log ``path`` and its largest atomic write
    (None: any), for ``-`` standard output."""
    if path == "-":
        # Unbuffered on the descriptor itself: a buffered writer would
        # merge the batches into larger writes again; closing it leaves the
        # descriptor open (closefd=False).
        return open(sys.stdout.fileno(), "ab", buffering=0, closefd=False), select.PIPE_BUF
    return open(path, "ab", buffering=0), None


def _batches(lines: list[bytes], limit: int | None) -> Iterator[bytes]:
    """``lines`` joined into writes of at most ``limit`` bytes, never splitting a line
    (a longer line is a write of its own); one write if ``limit`` is None."""
    if not lines:
        return
    if limit is None:
        yield b"".join(lines)
        return
    batch: list[bytes] = []
    size = 0
    for line in lines:
        if batch and size + len(line) > limit:
            yield b"".join(batch)
            batch, size = [], 0
        batch.append(line)
        size += len(line)
    yield b"".join(batch)

"""The access log: one line per request, in the combined format plus cache status.

::

    127.0.0.1 - - [25/Nov/2026:19:22:33 +0000] "GET /a HTTP/1.1" 200 1024 "-" "curl/8.5.0" HIT 0.000

The fields after the combined ones are the cache status (``HIT``, ``MISS``,
``EXPIRED``, ``STALE``, ``UPDATING``, ``REVALIDATED``, ``BYPASS``, ``-``)
and the request time in seconds. Lines are buffered and flushed at least
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

from accel.http.model import Request

__all__ = ["AccessLog", "format_line"]

_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
           b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec")  # fmt: skip


#: Bytes a log field keeps as they are: printable ASCII but '"' and "\\".
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _quote(value: bytes | None) -> bytes:
    """A log field in double quotes, with quotes, backslashes and controls escaped."""
    if not value:
        return b'"-"'
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


_last_clf: tuple[int, bytes] = (-1, b"")


def _clf_time(when: float) -> bytes:
    """``[25/Nov/2026:19:22:33 +0000]``; formatted once per second."""
    global _last_clf
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
    request_line = b"%s %s HTTP/%s" % (request.method, request.target, request.version)
    # One pass for both fields (the first of each, as nginx logs them).
    referer = user_agent = None
    for name, value in request.headers.pairs:
        if name == b"referer":
            if referer is None:
                referer = value
        elif name == b"user-agent" and user_agent is None:
            user_agent = value
    return b"%s - - %s %s %d %d %s %s %s %.3f\n" % (
        (request.client or "-").encode("ascii", "replace"),
        _clf_time(started),
        _quote(request_line),
        status,
        sent,
        _quote(referer),
        _quote(user_agent),
        notes.get("cache", "-").encode("ascii", "replace"),
        max(0.0, finished - started),
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
    """

    #: Pending bytes that trigger a write before the interval.
    FLUSH_BYTES = 64 * 1024

    def __init__(self, path: str, clock: IReactorTime, flush_interval: float = 1.0) -> None:
        self._stream: BinaryIO
        #: Largest write that keeps lines whole (None: no limit).
        self._atomic: int | None = None
        if path == "-":
            # Unbuffered on the descriptor itself: a buffered writer would
            # merge the batches into larger writes again.
            self._stream = open(sys.stdout.fileno(), "ab", buffering=0, closefd=False)  # noqa: SIM115
            self._owned = True  # closing it leaves the descriptor open (closefd=False)
            self._atomic = select.PIPE_BUF
        else:
            self._stream = open(path, "ab", buffering=0)  # noqa: SIM115
            self._owned = True
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

    def flush(self) -> None:
        lines, self._lines, self._pending = self._lines, [], 0
        try:
            for batch in _batches(lines, self._atomic):
                self._stream.write(batch)
            self._stream.flush()
        except OSError:
            pass

    def close(self) -> None:
        if self._flusher.running:
            self._flusher.stop()
        self.flush()
        if self._owned:
            self._stream.close()


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

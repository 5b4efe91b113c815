"""The response store on diskcache: metadata and small bodies in SQLite, larger bodies in files.

The proxy calls this from the reactor thread, so every call is small and
bounded: one or two single-row SQL statements and file opens, and, at the
end of a reactor turn, one transaction for the rows stored during it
(see Group commit). Large bodies
are never held whole in memory; they stream in through a :class:`BodyWriter`
and out through a plain file handle from :meth:`Store.open_body`. A body of
at most :data:`INLINE_MAX` (16 KiB) is kept in its row instead, and read
with the entry's metadata.

Layout
------
One diskcache row per stored variant. Its key is ``"v:" + primary + "\\0" +
secondary.hex()``, so all variants of a URL, and all URLs under a prefix, are
one range of the ``Cache(key, raw)`` index. Its ``value`` column holds the
entry's metadata record (a pickle of builtins only, loaded with an unpickler
that refuses every global), followed, for a body of at most
:data:`INLINE_MAX` bytes, by the body itself. A larger body is the row's
file. Either way the row's ``filename`` is a fresh name of diskcache's
two-level shape (``ab/cd/<hex>.val``), which identifies the stored version
(:attr:`Entry.body_id`): a body in the row simply has no file of that name,
so the compare-and-set statements below, and diskcache's removals (which
ignore a missing file), treat both kinds alike. Its row's ``mode`` is
diskcache's ``MODE_RAW`` (a value kept in its row; ``MODE_BINARY`` for a body
in a file), so the store's own removals (evictions, purges, replacements)
look for a file only where there is one. The row's ``tag`` column holds
the entry's surrogate keys as a JSON array. diskcache allows one tag per key,
so triggers keep an ``AccelTag(tag, row)`` table in step with the Cache table
on every insert, update and delete, *including* diskcache's own evictions:
the tag index can never point at a row that is gone, nor miss one that exists.

diskcache has no range query, no "update the value but keep the file" and no
"delete if still this version", so the store reads and does those single-row
compare-and-set statements on its own SQLite connection to the same database
(diskcache's ``Cache`` table schema, stable across diskcache 4 and 5). It
inserts rows there too: ``Cache.set`` spends seven statements and a check of
the store's size on every insert, where a new key needs one ``INSERT`` (a
key already stored: a ``SELECT`` of the old row's file name and an
``UPDATE`` of the row, as ``set`` does), and the rows of one reactor turn
share one transaction. diskcache's triggers still keep its
running count and size, diskcache's ``Disk`` places and removes the body
files, and diskcache's own reads and ``cull`` work on these rows as on its
own.

Write path and crash safety
---------------------------
A body is held in the writer's memory while it is at most
:data:`INLINE_MAX` bytes, and committed into its row in one transaction: no
file is created, and a kill before the commit leaves nothing at all.
Creating files was most of what a cacheable miss cost (docs/performance.rst,
"Misses that store"). A body declared or grown larger, or one that a
collapsed request wants to follow while it streams (:attr:`BodyWriter.spool_path`),
is spooled to ``spool/<id>.part`` inside the store directory, under an
``flock`` held until the body is placed. On commit, :class:`_SpoolDisk` (the
``disk=`` of the diskcache) *renames* the spool file to the body file name,
so the body is written exactly once, and then the row is inserted (at the
end of the reactor turn: see Group commit). A reader therefore never finds
a row whose body is incomplete. A kill at any point leaves at most an
unlocked spool file or a body file no row names; opening the store removes
both (a locked spool file belongs to a live writer in another process and
is left alone; an unnamed body file younger than a minute may be another
process's, waiting for its turn's commit, and is looked at again a little
over a minute later, once). A committed row whose body file
has vanished, or whose size or record is wrong, is treated as a miss and
deleted, never raised to the caller.

Group commit
------------
Each transaction makes SQLite append the pages it changed to its
write-ahead log: for one new row about five (the table's last leaf, the
tails of the key and ``access_time`` and ``expire_time`` indexes,
diskcache's running totals in ``Settings``), two ``pwrite`` calls each,
and lock calls; rows committed together share most of them, so ``k`` rows
cost about ``4 + k`` pages rather than ``5k``. So :meth:`BodyWriter.commit`
does not write the row: it places the body (a large one's file is renamed
in then, as above), queues the row in memory, and returns the entry; the
first commit of a reactor turn schedules :meth:`Store.flush` with
``clock.callLater(0)``, which the reactor runs once the events of the turn
are handled, before it waits for more. :meth:`Store.flush` writes the
queued rows in one ``BEGIN IMMEDIATE`` ... ``COMMIT``, in order (a key
stored twice in the turn ends with its last row, the first one's body file
removed), at most :data:`_GROUP_MAX` rows per transaction. The transaction
waits for the lock as one insert did (``timeout``) and never outlives the
call: other worker processes never find the database locked across a
turn. Under load (64 connections of new URLs, one process) a turn
commits about 25 rows on average.

What this process sees does not change: :meth:`Store.lookup` of a key with
queued rows, and anything else that reads or changes them (:meth:`settle`,
``update``, ``touch``, ``remove``, invalidations, purges, ``stats``,
``close``), commits the queue first; the change stamp of the key (below) is
written when ``commit`` returns, for this process's readers that skip the
database. Other processes see the rows at the end of the turn, and the
stamp is written again then, after the rows are committed, which is the
write they rely on.

Worker processes share one listening socket, so a client's next request
may go to another worker: it must find there what the response it has
stored. :meth:`BodyWriter.when_committed` calls what waits for a row once
it is committed: right after the end of the turn's transaction, before the
reactor waits for more events (at once if the row is committed already, or
nothing was stored). :class:`accel.streams.Relay` sends a stored
response's last bytes (the byte that completes a declared length, the final
chunk of a chunked body) from there, and the followers of a fill
(:class:`accel.streams.Feed`) hold their last byte until then too: no
client has a whole stored response before every process finds it. They
are called as one :func:`accel.directwrite.batched` event, so a small
stored response, head and body, leaves in one ``send``. A
response that is not stored is not held. If the transaction fails, the
store degrades (below) and removes the queued rows' body files: none of the
turn's rows is stored, and what waited for them is called all the same, so
the responses complete (the next requests pass through). A store degraded
before its turn ends commits nothing and removes them too. Evictions
(:meth:`_cull`) and the trimming of a URL's variants run after the commit.

Eviction
--------
The store is bounded by ``size_limit`` bytes (diskcache's estimate: body
files plus the database pages, which hold the bodies kept in rows) and
evicts in least-recently-used order, coarsely.
diskcache's ``least-recently-used`` policy turns every ``get`` into a write
transaction. Measured here (2,000 entries of 40 KB, 20,000 random hits, one
process, Python 3.11, SQLite 3.40): ``get(read=True)`` costs
~50 us under least-recently-stored but ~180 us under least-recently-used, and
takes the database write lock on every hit, which serialises all worker
processes. Least-recently-stored is cheap but evicts a hot object as soon as it
is old. So the store asks diskcache to cull by ``access_time`` (the LRU
policy's index) but never reads through ``get``: a hit updates
``access_time`` itself, at most once per ``touch_interval`` (60 s) per entry.
That measured ~32 us per hit, the same as least-recently-stored, and gives LRU
order to within a minute, which is what a cache of hot URLs needs.

diskcache reads its size estimate (two statements) on every insert and, when
over the limit, evicts up to ten rows in the insert's transaction. The store
reads it once the rows this process inserted since the last reading hold 1 %
of the limit (at most 1 MiB; the first insert reads it too), and then evicts
the least recently used rows, ten per statement, until the estimate is
within the limit (at most a hundred per insert, so a limit lowered by a
restart is shed over a few inserts, not in one long pause), all of one
reading's statements in one transaction, which commits once. So the store
exceeds its limit by at most that 1 % (1 MiB) per worker process, plus the
database's page granularity, and, after a body larger than the hundred
least recently used rows together (a large file in a cache of small ones),
by what those hundred rows did not free, until the next inserts shed it,
a hundred rows each; a miss of 1 KiB reads the estimate about once
in 700 inserts with a limit of 1 GiB.

Database pages
--------------
diskcache makes its databases with ``auto_vacuum = FULL``: SQLite then
keeps pointer-map pages, one more page to write to the log with every
transaction that allocates a page (a new row of 1 KiB, one in three), and
at the end of every transaction that frees pages (an eviction, a purge) it
moves the file's last pages into the holes and truncates it. The store
makes the databases it creates with ``auto_vacuum = NONE`` instead: freed
pages go to SQLite's free list, in the same transaction, and the rows
stored next take them. The size estimate counts the pages in use (all but
the free ones), so the file keeps the largest size it reached (about the
size limit, or what it held before the limit was lowered) while what it
holds stays within the limit. A database made before keeps ``FULL``
(SQLite changes the mode of a database that has tables only by rebuilding
it, ``VACUUM``), has no free pages once a transaction ends, and works as it
always did; several processes opening a new directory at once agree, as
whichever creates the first table fixes the mode for all. Crash safety does
not depend on the mode: the free list is part of the database, written
through the same log and transactions.

Change stamps
-------------
Readers that skip the database for fresh hits (the proxy's hot tier, one per
worker process) must still see every replacement, freshening, invalidation
and purge, whichever process made it. :class:`Generations` is a small file
of 4,096 64-bit stamps, memory-mapped by every process: a primary key hashes
to one slot, and every change under that key writes a new random stamp there
*after* the database change; a purge by tag or prefix restamps every slot. A
reader notes the slot's stamp *before* it reads the database and trusts what
it read only while the stamp is unchanged, so a change that lands between
its read and its use is never missed. Random stamps (rather than a counter)
make concurrent writers safe without a lock: whichever write lands last, the
slot no longer holds what any earlier reader noted.

Degraded mode
-------------
An ``OSError``, ``sqlite3.Error`` or diskcache ``Timeout`` marks the store
unhealthy (``healthy``, ``last_error``), logs once, and from then on the store
behaves as an empty cache that stores nothing. After a back-off (doubling from
``retry_interval`` up to ``max_retry_interval``, measured on the injected
clock) the next call probes the store by writing a spool file and a row; on
success the store is healthy again. Invalidations that could not be applied
meanwhile are queued and replayed on recovery before anything is served (if
the queue overflows, recovery empties the cache), so a URL invalidated while
the disk was failing is never served stale afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import mmap
import os
import pickle
import random
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO, NamedTuple, Protocol

import diskcache
from attrs import evolve, field, frozen
from diskcache.core import DBNAME, MODE_BINARY, MODE_RAW, UNKNOWN
from twisted.logger import Logger

from accel import directwrite
from accel.cache.memory import MemoryTier

__all__ = [
    "BodyWriter",
    "Clock",
    "Entry",
    "Generations",
    "Store",
    "StoreUnavailable",
]

_log = Logger()

#: This process's id, kept current across ``os.fork`` (the hook below):
#: ``os.getpid()`` is a system call, and the store checks on every read and
#: write whether it still runs in the process that opened its connections.
_this_pid = os.getpid()


def _forked() -> None:
    global _this_pid  # noqa: PLW0603 (kept current across fork, read on every store call)
    _this_pid = os.getpid()


os.register_at_fork(after_in_child=_forked)

#: Errors that mean "the disk or the database is unusable right now".
_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)

#: Versions of the metadata record layout in the ``value`` column: the
#: record of a body in a file, and that of a body kept in the row (the same
#: fields, then the body). Rows written before bodies were kept in rows hold
#: the first, which is still what a body in a file gets.
_RECORD_FORMAT = 1
_RECORD_INLINE = 2

#: Bodies of at most this many bytes are kept in the database row, in the
#: metadata record, rather than in a file of their own. Creating a file (and,
#: on a young store, its two directories) costs far more kernel CPU than the
#: few pages a small body adds to the row's SQLite transaction
#: (bench/store_cost.py, docs/performance.rst). Against that, every lookup of
#: the URL reads the bodies of all its variants, and a body in a row is read
#: whole into memory, never sent by ``sendfile``. diskcache's own ``Disk``
#: keeps values under 32 KiB in the row; half that bounds what a lookup
#: reads, and stays below the sizes that need a file: ``sendfile``
#: (:data:`accel.streams.SENDFILE_MIN`, 64 KiB) and hot-tier bodies sent
#: from their file (32 KiB, :mod:`accel.fasthit`).
INLINE_MAX = 16 * 1024

_VARIANT = "v:"
_PROBE_KEY = "probe"
_SPOOL = "spool"
#: Bound on invalidations queued while degraded; beyond it, recovery clears all.
_MAX_PENDING = 1024
#: Rows deleted per statement by purges, so each holds the write lock briefly.
_PURGE_BATCH = 256
#: A new row, as ``diskcache.Cache.set`` inserts it (``raw = 1``: every key
#: is a string); a key already stored is left alone, for :data:`_REPLACE`.
_INSERT = (
    "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
    " tag, size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, ?, ?, ?, ?)"
    " ON CONFLICT (key, raw) DO NOTHING"
)
#: Of each row a statement removes: the name of its body file, or NULL for a
#: body kept in the row (``MODE_RAW``: no file to remove). Rows stored before
#: the mode said so have ``MODE_BINARY`` either way; removing the file they
#: name finds none, as it always did.
_BODY_FILE = f"CASE mode WHEN {MODE_RAW} THEN NULL ELSE filename END"
#: Appended to a ``DELETE``: the body files of the rows it deleted.
_RETURNING_FILES = f" RETURNING {_BODY_FILE}"
_SELECT_ROW = f"SELECT rowid, {_BODY_FILE} FROM Cache WHERE key = ? AND raw = 1"
#: A stored row replaced, as ``diskcache.Cache.set`` replaces it.
_REPLACE = (
    "UPDATE Cache SET store_time = ?, expire_time = NULL, access_time = ?, access_count = 0,"
    " tag = ?, size = ?, mode = ?, filename = ?, value = ? WHERE rowid = ?"
)
#: The store's size estimate: the database's pages in use (all of them but
#: the free ones, which later rows reuse) and the body files. diskcache's
#: ``Cache.volume`` counts the free pages too; in a database with
#: ``auto_vacuum = FULL`` (diskcache's default) there are none at the end of
#: a transaction, so both agree there (see Database pages).
_VOLUME = (
    "SELECT ((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size())"
    " + (SELECT value FROM Settings WHERE key = 'size')"
)
#: diskcache's least-recently-used eviction, as a batched delete.
_CULL = (
    "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache ORDER BY access_time LIMIT ?)"
    + _RETURNING_FILES
)
#: SQLite's ``auto_vacuum`` mode of the databases the store creates (see Database pages).
_AUTO_VACUUM_NONE = 0
#: Rows evicted per statement (as diskcache's ``cull_limit``), and statements per
#: cull at most, so that a store far over its limit (after the limit was
#: lowered) sheds it over several inserts rather than in one long pause.
_CULL_BATCH = 10
_CULL_ROUNDS = 10
#: The size estimate is read, and the store culled, once the rows inserted
#: since the last reading hold this fraction of the size limit (at most
#: :data:`_CULL_SLACK_MAX` bytes): the bound on how far one process may
#: overshoot the limit (see Eviction).
_CULL_SLACK_FRACTION = 100
_CULL_SLACK_MAX = 1024 * 1024
#: Rows committed in one transaction at most: a turn that stores more
#: commits them in several, so that no transaction holds the write lock for
#: long (at most 64 bodies of :data:`INLINE_MAX`, 1 MiB, in the log).
_GROUP_MAX = 64
#: File of :class:`Generations` in the store directory.
_GENERATIONS = "generations"
#: An unreferenced body file younger than this may be mid-commit in another
#: process, so the orphan sweep at opening leaves it, and sweeps once more
#: this long after (plus a second).
_ORPHAN_GRACE = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS AccelTag (tag TEXT NOT NULL, row INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS AccelTag_tag ON AccelTag (tag);
CREATE INDEX IF NOT EXISTS AccelTag_row ON AccelTag (row);
CREATE TRIGGER IF NOT EXISTS AccelTag_insert AFTER INSERT ON Cache
WHEN NEW.tag IS NOT NULL BEGIN
    INSERT INTO AccelTag (tag, row) SELECT value, NEW.rowid FROM json_each(NEW.tag);
END;
CREATE TRIGGER IF NOT EXISTS AccelTag_update AFTER UPDATE OF tag ON Cache BEGIN
    DELETE FROM AccelTag WHERE row = OLD.rowid;
    INSERT INTO AccelTag (tag, row)
        SELECT value, NEW.rowid FROM json_each(NEW.tag) WHERE NEW.tag IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS AccelTag_delete AFTER DELETE ON Cache BEGIN
    DELETE FROM AccelTag WHERE row = OLD.rowid;
END;
"""


class Clock(Protocol):
    """The part of ``IReactorTime`` the store needs (``task.Clock`` in tests).

    ``callLater(0, ...)`` schedules the commit of the rows stored during the
    current reactor turn (see "Group commit").
    """

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., object], *args: object) -> object: ...


class StoreUnavailable(Exception):
    """A purge could not run because the store is failing.

    It is not lost: the store empties itself when it recovers, and serves
    nothing until then, so nothing the purge targeted is ever served again.
    """

    status = 503


@frozen
class Entry:
    """The metadata of one stored variant: small, immutable, picklable.

    ``primary`` is the URL key the proxy computed; ``secondary`` the key of the
    selecting header values for ``vary`` (RFC 9111 section 4.1). ``headers``
    are the response header fields as stored, in order, names lower-case.
    ``request_time``/``response_time``/``stored_at`` are on the proxy's clock.
    ``length`` is the body length in bytes. ``body_id`` names the stored
    version: the body file (its path relative to the store directory), or,
    for a body kept in the row, a name of the same shape that no file has;
    a replacement gets a new one. ``inline`` is the body itself when it is
    kept in the row (at most :data:`INLINE_MAX` bytes), else ``None``.
    ``accessed_at`` is the store's wall-clock LRU stamp as read; neither is
    part of the entry's identity.
    """

    primary: str
    secondary: bytes
    vary: tuple[bytes, ...]
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    request_time: float
    response_time: float
    length: int
    body_id: str
    tags: tuple[str, ...]
    stored_at: float
    accessed_at: float = field(default=0.0, eq=False, repr=False)
    inline: bytes | None = field(default=None, eq=False, repr=False)

    @property
    def key(self) -> str:
        """The diskcache key of this variant."""
        return _variant_key(self.primary, self.secondary)


def _variant_key(primary: str, secondary: bytes) -> str:
    if "\0" in primary:
        raise ValueError(f"expected a primary cache key without NUL, got {primary!r}")
    return _make_key(primary, secondary)


def _make_key(primary: str, secondary: bytes) -> str:
    return f"{_VARIANT}{primary}\0{secondary.hex()}"


def _key_range(prefix: str) -> tuple[str, str]:
    """The half-open key range of every variant whose primary starts with ``prefix``."""
    low = _VARIANT + prefix
    stem = low.rstrip(chr(0x10FFFF))
    return low, stem[:-1] + chr(ord(stem[-1]) + 1)


def _encode(entry: Entry) -> bytes:
    """The metadata record: a tuple of builtins (no classes, no globals).

    A body kept in the row follows the metadata, in the same record.
    """
    return pickle.dumps(
        (
            _RECORD_FORMAT if entry.inline is None else _RECORD_INLINE,
            entry.primary,
            entry.secondary,
            entry.vary,
            entry.status,
            entry.reason,
            entry.headers,
            entry.request_time,
            entry.response_time,
            entry.length,
            entry.tags,
            entry.stored_at,
        )
        + (() if entry.inline is None else (entry.inline,)),
        protocol=5,
    )


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"expected builtins only in an entry record, got {module}.{name}")


def _decode(key: str, raw: object, filename: object, accessed_at: object) -> Entry | None:
    """The entry the row of ``key`` holds, or ``None`` if it is not a sound entry."""
    if not isinstance(raw, bytes) or not isinstance(filename, str):
        return None
    try:
        record = _PlainUnpickler(io.BytesIO(raw)).load()
        fmt, primary, secondary, vary, status, reason, headers, *rest = record
        if fmt == _RECORD_INLINE:
            request_time, response_time, length, tags, stored_at, inline = rest
        else:
            request_time, response_time, length, tags, stored_at = rest
            inline = None
    except Exception:  # noqa: BLE001 (whatever the column holds, garbage is a corrupt entry, nothing more)
        return None
    if (
        fmt not in (_RECORD_FORMAT, _RECORD_INLINE)
        or not isinstance(primary, str)
        or not isinstance(secondary, bytes)
        or _make_key(primary, secondary) != key
        or not isinstance(length, int)
        or not isinstance(headers, tuple)
        or (inline is not None and (not isinstance(inline, bytes) or len(inline) != length))
    ):
        return None
    return Entry(
        primary=primary,
        secondary=secondary,
        vary=vary,
        status=status,
        reason=reason,
        headers=headers,
        request_time=request_time,
        response_time=response_time,
        length=length,
        body_id=filename,
        tags=tags,
        stored_at=stored_at,
        accessed_at=accessed_at if isinstance(accessed_at, float) else 0.0,
        inline=inline,
    )


class _Spooled(NamedTuple):
    """A complete body, ready to become a row: in the spool file at ``path``,
    or (``path`` is ``None``) already in ``record``. (One per stored
    response: a named tuple costs less to build than a frozen attrs class.)"""

    path: str | None
    body_id: str
    length: int
    record: bytes


class _SpoolDisk(diskcache.Disk):
    """A diskcache ``Disk`` that moves spooled bodies in instead of copying them.

    ``Cache.set(key, _Spooled(...))`` renames the spool file to the body file
    name and stores the metadata record in the row's ``value`` column; every
    other value is handled as diskcache always does. A body that is in the
    record creates no file: its row names a file that does not exist (which
    ``Disk.remove`` ignores when the row goes), has the mode of diskcache's
    own values kept in rows (``MODE_RAW``: ``Cache.get`` returns the record)
    and counts 0 bytes in the ``size`` column, as they do, since the
    database's pages, which the size limit counts, hold it.
    """

    def filename(self, key: object = UNKNOWN, value: object = UNKNOWN) -> tuple[str, str]:
        if isinstance(value, _Spooled):
            return value.body_id, os.path.join(self._directory, value.body_id)
        return super().filename(key, value)

    def store(self, value: object, read: bool, key: object = UNKNOWN) -> tuple[int, int, str | None, object]:
        if not isinstance(value, _Spooled):
            return super().store(value, read, key=key)
        if value.path is None:
            return 0, MODE_RAW, value.body_id, sqlite3.Binary(value.record)
        filename, full_path = self.filename(key, value)
        for attempt in range(10):
            # Another process's Disk.remove may prune the empty directories
            # within makedirs or between it and rename; try again, as
            # diskcache's own _write does.
            try:
                os.makedirs(os.path.dirname(full_path), exist_ok=True)
                os.rename(value.path, full_path)
                break
            except FileNotFoundError:
                if attempt == 9:
                    raise
        return value.length, MODE_BINARY, filename, sqlite3.Binary(value.record)


class BodyWriter:
    """Streams one response body into the store; commit makes it visible.

    Made by :meth:`Store.begin`; exactly one of ``commit``/``abort`` ends it.
    A body of at most :data:`INLINE_MAX` bytes is held in memory and kept in
    its entry's row at commit, with no file at all. A larger one goes to a
    spool file: from the start if its declared length is larger, else once it
    grows past the bound, or as soon as a reader asks for :attr:`spool_path`
    to follow it. Every ``write`` to the spool file goes straight through
    (unbuffered), so the writer never holds more than :data:`INLINE_MAX`
    bytes, or the chunk it is given. Nothing here raises: a disk failure
    degrades the store and turns the writer into a sink that stores nothing,
    so the caller can keep streaming to its client regardless.
    """

    def __init__(self, store: Store, template: _Template, expected_length: int | None, token: str | None) -> None:
        self._store = store
        self._template = template
        self._expected = expected_length
        self._written = 0
        #: Names the spool file and the body; ``None`` once nothing is stored.
        self._token = token
        #: The body so far, while it is held in memory (no spool file yet).
        self._held: list[bytes] = []
        self._spool: io.FileIO | None = None
        #: The group its row was queued in (see Group commit), once committed.
        self._group: int | None = None
        if token is not None and expected_length is not None and expected_length > INLINE_MAX:
            self._to_spool()

    @property
    def active(self) -> bool:
        """Whether the body is still being stored (false after a failure or abort)."""
        return self._token is not None

    @property
    def written(self) -> int:
        """Bytes of body given to :meth:`write` so far."""
        return self._written

    @property
    def spool_path(self) -> str | None:
        """The file the body is being written to, while it is (else ``None``).

        A body held in memory is written out to a spool file first, so that
        everything :attr:`written` so far is in the file. Readers may open it
        to follow the body as it grows: on POSIX systems a handle opened
        before :meth:`commit` renames the file, or :meth:`abort` removes it,
        stays readable.
        """
        token = self._token
        if token is None or (self._spool is None and not self._to_spool()):
            return None
        return self._store._spool_path(token)

    def write(self, data: bytes) -> None:
        """Append ``data`` to the body."""
        if self._token is None:
            return
        self._written += len(data)
        if self._expected is not None and self._written > self._expected:
            self.abort()
            return
        if self._spool is None:
            if self._written <= INLINE_MAX:
                self._held.append(bytes(data))  # a copy only if the caller's buffer is mutable
                return
            if not self._to_spool():
                return
        self._write_through(data)

    def _to_spool(self) -> bool:
        """Open the spool file and write the body held so far to it; false if that failed."""
        assert self._token is not None
        try:
            self._spool = self._store._open_spool(self._token)
        except _ERRORS as e:
            self._store._degrade(e)
            self.abort()
            return False
        held, self._held = self._held, []
        return all(self._write_through(chunk) for chunk in held)

    def _write_through(self, data: bytes) -> bool:
        """Write ``data`` to the spool file; false (and aborted) on failure."""
        f = self._spool
        assert f is not None
        view = memoryview(data)
        try:
            while view:
                view = view[f.write(view) or 0 :]
        except OSError as e:
            self._store._degrade(e)
            self.abort()
            return False
        return True

    def commit(self) -> Entry | None:
        """Store the body if it is complete; ``None`` means nothing was stored.

        Complete means it matches the declared length, when there was one.
        The entry returned is found by this process's lookups at once; its
        row is committed at the end of the reactor turn (see Group commit;
        :meth:`when_committed` says when), and if that fails the store
        degrades and the entry is not kept.
        Replacing a stored variant is atomic: lookups see the old entry or the
        new one, and a handle already open on the old body stays readable.
        """
        token = self._token
        if token is None:
            return None
        if self._expected is not None and self._written != self._expected:
            self.abort()
            return None
        self._token = None
        f, self._spool = self._spool, None
        inline = None
        if f is None:
            held, self._held = self._held, []
            inline = b"".join(held)
        store = self._store
        group = store._groups
        entry = store._commit(self._template, self._written, inline, f, token)
        if entry is not None:
            self._group = group
        return entry

    def when_committed(self, then: Callable[[], None]) -> None:
        """Call ``then`` once the row :meth:`commit` queued is in the database,
        where every process sees it (see Group commit), or known lost.

        At once if ``commit`` stored nothing, was not called, or its row is
        already committed; else at the end of the reactor turn, after the
        transaction (which, if it fails, degrades the store: ``then`` is
        called all the same). What a client must not have before another
        worker can find the entry (the last bytes of the response) is sent
        from ``then``.
        """
        group = self._group
        if group is None or self._store._groups > group:
            then()
        else:
            self._store._after_commit(then)

    def abort(self) -> None:
        """Discard the body; idempotent."""
        token, self._token = self._token, None
        self._held = []
        f, self._spool = self._spool, None
        if f is not None and token is not None:
            self._store._discard_spool(f, token)


def _body_id(token: str) -> str:
    """The body file of ``token``, in diskcache's two-level directory layout."""
    return f"{token[:2]}/{token[2:4]}/{token[4:]}.val"


class Generations:
    """Change stamps shared by every process using one store directory.

    See "Change stamps" above. ``stamps[slot(primary)]`` is the current
    stamp of ``primary``'s slot: read it before reading the store, compare
    it before trusting what was read.
    """

    SLOTS = 4096

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            size = self.SLOTS * 8
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: every slot starts at stamp 0
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        #: The stamps, one unsigned 64-bit integer per slot (aligned: a
        #: store or load of one is a single machine word).
        self.stamps = memoryview(self._map).cast("Q")
        self._random = random.Random(os.urandom(16))

    def slot(self, primary: str) -> int:
        """The slot of ``primary`` (stable across processes, unlike ``hash``)."""
        return zlib.crc32(primary.encode("utf-8", "surrogatepass")) & (self.SLOTS - 1)

    def bump(self, primary: str) -> None:
        """Record that something stored under ``primary`` changed."""
        self.stamps[self.slot(primary)] = self._random.getrandbits(64)

    def bump_all(self) -> None:
        """Record that anything may have changed (a purge by tag or prefix)."""
        stamps, draw = self.stamps, self._random.getrandbits
        for slot in range(self.SLOTS):
            stamps[slot] = draw(64)

    def close(self) -> None:
        self.stamps.release()
        self._map.close()


#: The parameters of :data:`_INSERT` for one row: key, store_time,
#: access_time, tag, size, mode, filename, value.
_RowParams = tuple[str, float, float, "str | None", int, int, str, object]


class _Template(NamedTuple):
    """What :meth:`Store.begin` knows of the entry a :class:`BodyWriter` stores:
    the fields of its :class:`Entry` but those the commit sets."""

    primary: str
    secondary: bytes
    vary: tuple[bytes, ...]
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    request_time: float
    response_time: float
    tags: tuple[str, ...]


class _Row(NamedTuple):
    """A row stored during this reactor turn, not yet committed (see Group commit)."""

    entry: Entry
    #: Whether its body is a file (moved in from the spool), to remove if the row is not committed.
    placed: bool
    #: Bytes of its metadata record, for the size accounting of :meth:`Store._cull`.
    record_length: int
    params: _RowParams


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether ``error`` is a lock not had within the timeout (``SQLITE_BUSY`` or
    one of its extended codes): ``diskcache.Timeout``, as ``Cache.set`` raises."""
    return error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


class Store:
    """Stored responses, keyed by primary key and variant, bounded in bytes.

    Use one ``Store`` from one thread (the reactor's): its SQLite connection is
    bound to the thread that opened it. ``directory`` is created if needed and
    may be shared by several processes, each with its own ``Store``.
    ``clock`` is the reactor (``task.Clock`` in tests); it times the degraded
    mode's back-off, stamps ``stored_at`` and runs :meth:`flush` at the end
    of each turn that stored something (``callLater(0)``). ``memory``, if
    given, holds small hot bodies for :meth:`read_small`.
    """

    def __init__(
        self,
        directory: str,
        size_limit: int,
        clock: Clock,
        *,
        log: Logger | None = None,
        timeout: float = 0.1,
        touch_interval: float = 60.0,
        retry_interval: float = 5.0,
        max_retry_interval: float = 300.0,
        memory: MemoryTier | None = None,
        max_variants: int = 32,
        lazy: bool = False,
    ) -> None:
        self._directory = directory
        #: Stored variants per URL at most (Vary); past it, the least
        #: recently used go, so no client can flood one URL with variants.
        self._max_variants = max_variants
        self._spool = os.path.join(directory, _SPOOL)
        self._size_limit = size_limit
        #: Bytes inserted by this process before the store's volume is read
        #: again, and those inserted since it last was (see Eviction).
        self._cull_slack = min(size_limit // _CULL_SLACK_FRACTION, _CULL_SLACK_MAX)
        self._unculled = self._cull_slack  # the first insert checks
        self._clock = clock
        self._memory = memory
        self._log = log if log is not None else _log
        self._timeout = timeout
        self._touch_interval = touch_interval
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._interval = retry_interval
        self._retry_at = 0.0
        self._cache: diskcache.Cache | None = None
        self._con: sqlite3.Connection | None = None
        #: The process that opened the database connections, 0 before they
        #: are opened (see _in_this_process).
        self._pid = 0
        #: Change stamps (see the module docstring); ``None`` if the file
        #: could not be opened (then nothing may skip the database).
        self.generations: Generations | None = None
        #: Primaries to invalidate on recovery; ``None`` once it overflowed.
        self._pending: set[str] | None = set()
        self._counters = {"hits": 0, "misses": 0, "stores": 0, "errors": 0, "corrupt": 0}
        #: Rows stored during this reactor turn, to commit at its end, and
        #: their primaries (see Group commit).
        self._rows: list[_Row] = []
        self._rows_of: set[str] = set()
        #: Whether the end of this turn's flush is scheduled.
        self._flush_due = False
        #: The second sweep, scheduled when the database is opened (_sweep_late).
        self._late_sweep: Any = None
        #: Groups of rows taken by :meth:`flush` so far; a row queued while
        #: this was ``n`` is committed (or lost) once it is above ``n``.
        self._groups = 0
        #: Called at the end of the turn, once its rows are committed (see
        #: :meth:`BodyWriter.when_committed`).
        self._committed: list[Callable[[], None]] = []
        #: False while degraded: the store then serves and stores nothing.
        self.healthy = True
        #: The most recent storage error, ``""`` if there never was one.
        self.last_error = ""
        if not lazy:
            self._in_this_process()
        else:
            try:
                os.makedirs(self._spool, exist_ok=True)
                self._sweep_spool()
            except OSError as e:
                self._degrade(e)
        try:
            os.makedirs(directory, exist_ok=True)
            self.generations = Generations(os.path.join(directory, _GENERATIONS))
        except (OSError, ValueError) as e:
            self._log.warn(
                "cache store {directory}: no change stamps ({error}); the hot tier is off",
                directory=directory,
                error=_describe(e),
            )

    # -- reads --------------------------------------------------------------

    def lookup(self, primary: str) -> list[Entry]:
        """Every stored variant of ``primary`` (one indexed range read)."""
        self.settle(primary)
        # _key_range(primary + "\0"), whose stem ends in NUL: the keys from
        # primary's NUL (inclusive) to the next character (exclusive).
        stem = _VARIANT + primary
        low, high = stem + "\0", stem + "\1"
        entries: list[Entry] = []
        if self._usable():
            assert self._con is not None
            try:
                rows = self._con.execute(
                    "SELECT key, filename, value, access_time FROM Cache"
                    " WHERE key >= ? AND key < ? AND raw = 1",
                    (low, high),
                ).fetchall()
            except _ERRORS as e:
                self._degrade(e)
                rows = []
            for key, filename, value, accessed_at in rows:
                entry = _decode(key, value, filename, accessed_at)
                if entry is None:
                    self._drop_row(key, filename, value)
                else:
                    entries.append(entry)
        self._counters["hits" if entries else "misses"] += 1
        return entries

    def settle(self, primary: str) -> None:
        """Commit now the rows stored under ``primary`` during this turn, if any.

        :meth:`lookup` does. A reader that notes ``primary``'s change stamp
        before it looks up (the proxy) calls this first, so that the stamp
        the commit writes (see Group commit) does not land between its note
        and its read, which would make it distrust what it read.
        """
        if primary in self._rows_of:
            self.flush()

    def body_path(self, entry: Entry) -> str:
        """Where ``entry``'s body file is (it may be gone: see :meth:`open_body`).

        A body kept in the row (``entry.inline``) has no file there.
        """
        return os.path.join(self._directory, entry.body_id)

    def open_body(self, entry: Entry) -> BinaryIO | None:
        """The body of ``entry``, open for reading; the caller closes it.

        ``None`` if the body is gone or damaged; the entry is then removed.
        The handle stays readable if the entry is replaced or removed later.
        A body kept in the row comes as an in-memory file (no ``fileno``).
        """
        if not self._usable():
            return None
        if entry.inline is not None:
            self._touch(entry)
            return io.BytesIO(entry.inline)
        try:
            f = open(self.body_path(entry), "rb", buffering=0)  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            self._drop_row(entry.key, entry.body_id)
            return None
        except OSError as e:
            self._degrade(e)
            return None
        try:
            size = os.fstat(f.fileno()).st_size
        except OSError as e:
            f.close()
            self._degrade(e)
            return None
        if size != entry.length:
            f.close()
            self._drop_row(entry.key, entry.body_id)
            return None
        self._touch(entry)
        return f

    def read_small(self, entry: Entry) -> bytes | None:
        """The whole body of ``entry`` if it is small, else ``None``.

        A body kept in the row is the entry's own. Another is served from the
        memory tier when held there, else read from disk (at most
        ``memory.max_item`` bytes) and kept. ``None`` for a larger body (use
        :meth:`open_body`), without a memory tier, or if the body is gone
        (the entry is then removed).
        """
        inline = entry.inline
        if inline is not None:
            if not self._usable():
                return None
            self._touch(entry)
            return inline
        memory = self._memory
        if memory is None or entry.length > memory.max_item or not self._usable():
            return None
        body = memory.get(entry.body_id)
        if body is not None:
            self._touch(entry)
            return body
        f = self.open_body(entry)
        if f is None:
            return None
        try:
            with f:
                body = f.read(entry.length + 1)
        except OSError as e:
            self._degrade(e)
            return None
        if len(body) != entry.length:
            self._drop_row(entry.key, entry.body_id)
            return None
        memory.put(entry.body_id, body)
        return body

    # -- writes -------------------------------------------------------------

    def begin(
        self,
        primary: str,
        secondary: bytes,
        vary: tuple[bytes, ...],
        status: int,
        reason: bytes,
        headers: Iterable[tuple[bytes, bytes]],
        request_time: float,
        response_time: float,
        expected_length: int | None,
        tags: Iterable[str] = (),
    ) -> BodyWriter:
        """Start storing a response; stream its body into the returned writer.

        Raises ``ValueError`` only for a ``primary`` containing NUL (a bug in
        the caller); storage failures give a writer that stores nothing.
        """
        if "\0" in primary:  # validated now, not at commit (as _variant_key would)
            raise ValueError(f"expected a primary cache key without NUL, got {primary!r}")
        template = _Template(
            primary,
            secondary,
            tuple(vary),
            status,
            reason,
            tuple(headers),
            request_time,
            response_time,
            tuple(tags),
        )
        # The token names the spool file and the body: 128 random bits, as
        # secrets.token_hex(16) gives, without its two calls.
        token = os.urandom(16).hex() if self._usable() else None
        return BodyWriter(self, template, expected_length, token)

    def update(
        self,
        entry: Entry,
        headers: Iterable[tuple[bytes, bytes]],
        request_time: float,
        response_time: float,
    ) -> Entry | None:
        """Freshen ``entry`` after a 304 (RFC 9111 section 4.3.4), keeping its body.

        ``None`` if the entry is no longer stored (removed or replaced).
        """
        if entry.primary in self._rows_of:
            self.flush()
        if not self._usable():
            return None
        assert self._con is not None
        fresh = evolve(entry, headers=tuple(headers), request_time=request_time, response_time=response_time)
        try:
            cursor = self._con.execute(
                "UPDATE Cache SET value = ?, access_time = ? WHERE key = ? AND raw = 1 AND filename = ?",
                (sqlite3.Binary(_encode(fresh)), time.time(), entry.key, entry.body_id),
            )
        except _ERRORS as e:
            self._degrade(e)
            return None
        if not cursor.rowcount:
            return None
        self._changed(entry.primary)
        return fresh

    def remove(self, entry: Entry) -> bool:
        """Remove ``entry`` if it is still the stored version of its variant."""
        return self._drop_row(entry.key, entry.body_id, counted=False)

    # -- purges -------------------------------------------------------------

    def invalidate(self, primary: str) -> int:
        """Remove every variant of ``primary`` (RFC 9111 section 4.4); the count removed.

        Never raises: if the store is failing the invalidation is queued and
        applied on recovery, and 0 is returned.
        """
        if primary in self._rows_of:
            self.flush()
        try:
            if self._usable():
                try:
                    return self._delete_range(primary + "\0")
                except _ERRORS as e:
                    self._degrade(e)
            self._defer(primary)
            return 0
        finally:
            self._changed(primary)

    def purge_tag(self, tag: str) -> int:
        """Remove every entry stored with surrogate key ``tag``; the count removed.

        Raises :class:`StoreUnavailable` if the store is failing (the purge
        then runs when it recovers).
        """
        return self._purge(
            "DELETE FROM Cache WHERE rowid IN (SELECT row FROM AccelTag WHERE tag = ? LIMIT ?)"
            + _RETURNING_FILES,
            (tag,),
            what=f"tag {tag!r}",
        )

    def purge_prefix(self, prefix: str) -> int:
        """Remove every entry whose primary key starts with ``prefix``; the count removed.

        Raises :class:`StoreUnavailable` as :meth:`purge_tag` does.
        """
        low, high = _key_range(prefix)
        return self._purge(
            "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache"
            " WHERE key >= ? AND key < ? AND raw = 1 LIMIT ?)" + _RETURNING_FILES,
            (low, high),
            what=f"prefix {prefix!r}",
        )

    def purge_all(self) -> int:
        """Remove every entry; the count removed.

        Raises :class:`StoreUnavailable` as :meth:`purge_tag` does.
        """
        return self.purge_prefix("")

    # -- housekeeping -------------------------------------------------------

    def stats(self) -> dict[str, object]:
        """Counters and sizes, for the admin API and logs.

        ``entries`` and ``bytes`` (bytes of body files; bodies kept in rows
        count in ``volume``, with the database pages) are read from
        diskcache's own running totals, so this is one small read whatever
        the store's size.
        """
        self.flush()
        entries = body_bytes = volume = None
        if self._cache is not None and self._con is not None:
            try:
                totals = dict(
                    self._con.execute(
                        "SELECT key, value FROM Settings WHERE key IN ('count', 'size')"
                    ).fetchall()
                )
                entries, body_bytes = totals.get("count"), totals.get("size")
                ((volume,),) = self._con.execute(_VOLUME).fetchall()
            except _ERRORS:
                pass  # stats are best effort; the next real operation reports the failure
        pending = self._pending
        return {
            "healthy": self.healthy,
            "last_error": self.last_error,
            "entries": entries,
            "bytes": body_bytes,
            "volume": volume,
            "size_limit": self._size_limit,
            **self._counters,
            "pending_invalidations": -1 if pending is None else len(pending),
            "memory_entries": 0 if self._memory is None else len(self._memory),
            "memory_bytes": 0 if self._memory is None else self._memory.size,
        }

    def close(self) -> None:
        """Close the database connections; idempotent. Open body handles stay valid."""
        late, self._late_sweep = self._late_sweep, None
        if late is not None and late.active():
            late.cancel()
        self.close_database()
        if self.generations is not None:
            generations, self.generations = self.generations, None
            generations.close()

    def close_database(self) -> None:
        """Commit the rows stored this turn (and call what waits for them:
        :meth:`BodyWriter.when_committed`), then close the SQLite connections
        only (the change stamps stay)."""
        self.flush()
        self._call_committed()
        con, self._con = self._con, None
        cache, self._cache = self._cache, None
        if con is not None:
            con.close()
        if cache is not None:
            cache.close()

    # -- internals ----------------------------------------------------------

    def _open(self) -> None:
        os.makedirs(self._spool, exist_ok=True)
        settings: dict[str, object] = {}
        if not os.path.exists(os.path.join(self._directory, DBNAME)):
            # A new database keeps no pointer-map pages (see Database pages);
            # one that exists keeps the mode it was made with (diskcache's
            # Settings say which, and SQLite ignores a change once tables exist).
            settings["sqlite_auto_vacuum"] = _AUTO_VACUUM_NONE
        cache = diskcache.Cache(
            self._directory,
            timeout=self._timeout,
            disk=_SpoolDisk,
            size_limit=self._size_limit,
            eviction_policy="least-recently-used",
            # The store evicts by its own estimate (_cull); diskcache's, in
            # the one Cache.set the store makes (the recovery probe), would
            # count the free pages of the database as used.
            cull_limit=0,
            # SQLite's own default page cache (2 MiB) rather than diskcache's
            # 32 MiB: the index is read through the OS page cache anyway, and
            # 32 MiB per worker was most of the resident growth with 100,000
            # entries (bench/rss.py).
            sqlite_cache_size=512,
            **settings,
        )
        try:
            con = sqlite3.connect(
                os.path.join(self._directory, DBNAME), timeout=self._timeout, isolation_level=None
            )
            try:
                con.execute("PRAGMA synchronous = NORMAL")  # as diskcache's own connection
                con.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                con.close()
                raise
        except BaseException:
            cache.close()
            raise
        self._cache, self._con = cache, con

    def open(self) -> None:
        """Open the database now, in this process, if not yet (a ``lazy`` store opens on first use)."""
        self._usable()

    def _in_this_process(self) -> None:
        """Open the database connections for this process.

        A ``lazy`` store opens them on first use, so that ``twistd``, which
        builds the service and then forks to become a daemon, never hands a
        connection across a fork: SQLite's locks belong to the process that
        took them, and a connection used (or merely kept open beside a new
        one) in the child breaks locking, so that another worker's writes
        corrupt the database. Connections found open from another process
        (a store opened eagerly before a fork) are closed first, the lesser
        evil.
        """
        # Rows the parent stored before a fork are the parent's to commit,
        # and the responses waiting for them the parent's to send.
        self._rows, self._rows_of, self._committed = [], set(), []
        if self._con is not None or self._cache is not None:
            with contextlib.suppress(*_ERRORS):
                self.close_database()
        self._pid = _this_pid
        try:
            self._open()
            self._sweep()
        except _ERRORS as e:
            self._degrade(e)
        if self._late_sweep is None:
            self._late_sweep = self._clock.callLater(_ORPHAN_GRACE + 1.0, self._sweep_late)

    def _sweep_late(self) -> None:
        """Sweep once more, for the unreferenced bodies the sweep at opening
        left because they were too young to tell from another process's
        commit in progress (a writer killed just before its row's commit)."""
        if self._pid != _this_pid or not self.healthy or self._con is None:
            return
        try:
            self._sweep()
        except _ERRORS as e:
            self._degrade(e)

    def _sweep(self) -> None:
        """Remove what a killed writer left: unlocked spool files, unreferenced bodies."""
        removed = self._sweep_spool()
        assert self._con is not None
        rows = self._con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")
        known = {name for (name,) in rows}
        cutoff = time.time() - _ORPHAN_GRACE  # file times are wall-clock
        for top in os.scandir(self._directory):
            if not (top.is_dir() and len(top.name) == 2):
                continue
            for sub in os.scandir(top.path):
                if not sub.is_dir():
                    continue
                for body in os.scandir(sub.path):
                    name = f"{top.name}/{sub.name}/{body.name}"
                    if name.endswith(".val") and name not in known and body.stat().st_mtime < cutoff:
                        assert self._cache is not None
                        self._cache.disk.remove(name)
                        removed += 1
        if removed:
            self._log.info("cache store {directory}: removed {count} files left by interrupted writes",
                           directory=self._directory, count=removed)

    def _sweep_spool(self) -> int:
        """Remove spool files no live writer holds (a killed writer's); how many.

        Files only, no database: a lazy store does this when it is made, so a
        restart is clean before anything listens, and the rest when it opens.
        """
        removed = 0
        for name in os.listdir(self._spool):
            path = os.path.join(self._spool, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer in another process holds it
            else:
                os.unlink(path)
                removed += 1
            finally:
                os.close(fd)
        return removed

    def _usable(self) -> bool:
        """Whether to use the disk now; probes for recovery once the back-off is over."""
        if self._pid != _this_pid:
            self._in_this_process()
        if self.healthy:
            return True
        if self._clock.seconds() < self._retry_at:
            return False
        try:
            if self._cache is None:
                self._open()
                self._sweep()
            assert self._cache is not None
            probe = self._spool_path(f"probe-{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"probe")
            with contextlib.suppress(FileNotFoundError):  # another process's sweep took it
                os.unlink(probe)
            self._cache.set(_PROBE_KEY, b"probe")
            self._cache.delete(_PROBE_KEY)
            self._replay()
        except _ERRORS as e:
            self._counters["errors"] += 1
            self.last_error = _describe(e)
            self._interval = min(self._interval * 2, self._max_retry_interval)
            self._retry_at = self._clock.seconds() + self._interval
            return False
        self.healthy = True
        self._interval = self._retry_interval
        self._log.info("cache store {directory} recovered", directory=self._directory)
        return True

    def _degrade(self, error: BaseException) -> None:
        self._counters["errors"] += 1
        self.last_error = _describe(error)
        self._retry_at = self._clock.seconds() + self._interval
        if self.healthy:
            self.healthy = False
            self._log.error(
                "cache store {directory} failed ({error}); serving without the cache,"
                " retrying in {interval}s",
                directory=self._directory,
                error=self.last_error,
                interval=self._interval,
            )

    def _defer(self, primary: str) -> None:
        if self._pending is not None:
            self._pending.add(primary)
            if len(self._pending) > _MAX_PENDING:
                self._pending = None

    def _replay(self) -> None:
        """Apply the invalidations queued while degraded; raises if the store still fails."""
        pending = self._pending
        if pending is None:
            self._delete_range("")
            self._changed(None)
        else:
            for primary in sorted(pending):
                self._delete_range(primary + "\0")
                self._changed(primary)
        self._pending = set()

    def _purge(self, statement: str, args: tuple[str, ...], what: str) -> int:
        self.flush()
        try:
            if self._usable():
                try:
                    count = 0
                    while n := self._delete_batch(statement, args):
                        count += n
                    return count
                except _ERRORS as e:
                    self._degrade(e)
        finally:
            self._changed(None)
        self._pending = None  # a purge we could not do: recovery must clear everything
        raise StoreUnavailable(
            f"cache store {self._directory} is failing ({self.last_error}); the purge of {what}"
            " is deferred: the whole cache is cleared when the store recovers"
        )

    def _delete_range(self, prefix: str) -> int:
        low, high = _key_range(prefix)
        count = 0
        while n := self._delete_batch(
            "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache"
            " WHERE key >= ? AND key < ? AND raw = 1 LIMIT ?)" + _RETURNING_FILES,
            (low, high),
        ):
            count += n
        return count

    def _delete_batch(self, statement: str, args: tuple[str, ...], limit: int = _PURGE_BATCH) -> int:
        """Run one batched ``DELETE ...`` :data:`_RETURNING_FILES`; remove the files after commit."""
        assert self._con is not None
        deleted = self._con.execute(statement, (*args, limit)).fetchall()
        self._remove_files(deleted)
        return len(deleted)

    def _remove_files(self, deleted: list[tuple[str | None]]) -> None:
        """Remove the body files of rows deleted (as :data:`_RETURNING_FILES` gives them)."""
        assert self._cache is not None
        for (name,) in deleted:
            if name is not None:
                self._cache.disk.remove(name)
                if self._memory is not None:
                    self._memory.discard(name)

    def _drop_row(self, key: str, filename: object, value: object = None, *, counted: bool = True) -> bool:
        """Delete the row of ``key`` if it is still this version (same file, same record)."""
        if self._rows_of and key[len(_VARIANT) : key.rindex("\0")] in self._rows_of:
            self.flush()
        if self._con is None or self._cache is None:
            return False
        if counted:
            self._counters["corrupt"] += 1
        where, params = "key = ? AND raw = 1 AND filename IS ?", [key, filename]
        if value is not None:
            where += " AND value = ?"
            params.append(value)
        try:
            deleted = self._con.execute(f"DELETE FROM Cache WHERE {where}{_RETURNING_FILES}", params).fetchall()
        except _ERRORS as e:
            self._degrade(e)
            return False
        if deleted:
            self._changed(key[len(_VARIANT) : key.rindex("\0")])
            ((name,),) = deleted
            if isinstance(name, str):
                self._cache.disk.remove(name)
                if self._memory is not None:
                    self._memory.discard(name)
        return bool(deleted)

    def _spool_path(self, name: str) -> str:
        return os.path.join(self._spool, name + ".part")

    def _open_spool(self, token: str) -> io.FileIO:
        """A new spool file, unbuffered, locked against the startup sweep of other processes."""
        path = self._spool_path(token)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        return io.FileIO(fd, "w")

    def _discard_spool(self, f: io.FileIO, token: str) -> None:
        with contextlib.suppress(OSError):  # a leftover is swept at the next start
            f.close()
            os.unlink(self._spool_path(token))

    def _commit(
        self, template: _Template, length: int, inline: bytes | None, f: io.FileIO | None, token: str
    ) -> Entry | None:
        """Queue the row of ``template`` with a body of ``length`` bytes: the body
        ``inline`` in the record, or in its body file, moved in from the spool
        file ``f`` now (the body first, the row at the end of the turn: see
        Group commit). ``token`` names the spool file and the body."""
        cache = self._cache
        if not self.healthy or cache is None or self._con is None:
            if f is not None:
                self._discard_spool(f, token)
            return None
        now = time.time()  # diskcache's store_time and access_time are wall-clock
        # The only Entry of a stored response: Store.begin keeps its fields
        # in a plain tuple, as a frozen attrs class costs a call per field.
        entry = Entry(
            primary=template.primary,
            secondary=template.secondary,
            vary=template.vary,
            status=template.status,
            reason=template.reason,
            headers=template.headers,
            request_time=template.request_time,
            response_time=template.response_time,
            length=length,
            body_id=_body_id(token),
            tags=template.tags,
            stored_at=self._clock.seconds(),
            accessed_at=now,
            inline=inline,
        )
        path = None if f is None else self._spool_path(token)
        record = _encode(entry)
        try:
            # The spool file stays open, hence locked, until it has been renamed.
            spooled = _Spooled(path, entry.body_id, entry.length, record)
            size, mode, filename, value = cache.disk.store(spooled, False)
        except _ERRORS as e:
            self._degrade(e)
            if f is not None:
                self._discard_spool(f, token)
                cache.disk.remove(entry.body_id)
            return None
        finally:
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        tag = json.dumps(entry.tags) if entry.tags else None
        rows = self._rows
        rows.append(_Row(entry, f is not None, len(record), (entry.key, now, now, tag, size, mode, filename, value)))
        self._rows_of.add(entry.primary)
        # For this process's readers that skip the database (the hot tier,
        # hit-for-miss markers): the stamp the flush writes again, once the
        # row is committed, is the one other processes rely on.
        self._changed(entry.primary)
        if len(rows) >= _GROUP_MAX:
            self.flush()
        elif not self._flush_due:
            self._flush_due = True
            self._clock.callLater(0, self._end_of_turn)
        return entry

    def _end_of_turn(self) -> None:
        self._flush_due = False
        try:
            self.flush()
        finally:
            self._call_committed()

    def _after_commit(self, then: Callable[[], None]) -> None:
        """Call ``then`` at the end of this turn, after its rows are committed."""
        self._committed.append(then)
        if not self._flush_due:  # the turn's rows were queued, so it is; but never strand ``then``
            self._flush_due = True
            self._clock.callLater(0, self._end_of_turn)

    def _call_committed(self) -> None:
        """Call what waits for the rows committed so far, each once; one that
        raises is logged and does not keep the others waiting.

        They run as one :func:`~accel.directwrite.batched` event: what they
        write to a client connection (a stored response's last bytes, or a
        small one's head and body) leaves in one ``send`` per connection
        once they all have run, before the reactor waits for more.
        What is queued while they run (a response completed, the client's
        next request stored at once) waits for the next flush.
        """
        waiting, self._committed = self._committed, []
        if waiting:
            directwrite.batched(self._call_each, waiting)

    def _call_each(self, waiting: list[Callable[[], None]]) -> None:
        for then in waiting:
            try:
                then()
            except Exception:  # noqa: BLE001 (one callback failing must not stop the others)
                self._log.failure("cache store: a callback after commit failed")

    def flush(self) -> None:
        """Commit the rows of the entries stored since the last flush, in one transaction.

        The reactor calls this at the end of the turn that stored them
        (``callLater(0)``); the store calls it before anything that reads or
        changes what they concern. If the transaction fails, the store
        degrades and the rows' body files are removed: none of them is
        stored, and no row names a missing body.
        """
        rows = self._rows
        if not rows:
            return
        self._rows = []
        self._rows_of = set()
        self._groups += 1
        if self._pid != _this_pid:
            return  # the rows of the process this one was forked from: its own to commit
        cache, con = self._cache, self._con
        if not self.healthy or cache is None or con is None:
            self._remove_bodies(rows)  # degraded since they were stored
            return
        try:
            if len(rows) == 1:
                replaced = self._insert(con, rows[0].params)
            else:
                replaced = self._insert_group(con, rows)
        except _ERRORS as e:
            self._degrade(e)
            self._remove_bodies(rows)
            return
        for name in replaced:
            cache.disk.remove(name)
        trim: dict[str, Entry] = {}
        for row in rows:
            entry = row.entry
            self._changed(entry.primary)
            self._unculled += row.params[4] + row.record_length
            if entry.vary:
                trim[entry.primary] = entry
        self._counters["stores"] += len(rows)
        if self._unculled >= self._cull_slack:
            self._cull()
        for entry in trim.values():
            self._trim_variants(entry)

    def _remove_bodies(self, rows: list[_Row]) -> None:
        """Remove the body files of ``rows``, which were not committed."""
        cache = self._cache
        if cache is None:
            return  # closed: the next start's sweep removes them
        for row in rows:
            if row.placed:
                cache.disk.remove(row.entry.body_id)

    def _insert(self, con: sqlite3.Connection, params: _RowParams) -> list[str]:
        """Insert or replace one row, as ``diskcache.Cache.set`` would, without its cull;
        the body files of the rows it replaced, to remove.

        A new key (what a miss stores) is one statement, hence one
        transaction; a key already stored is replaced in a transaction that
        reads its old body file's name, removed once the new row is
        committed. diskcache's triggers keep its count and size, ours the tag
        index. Raises ``diskcache.Timeout`` if the database lock cannot be had
        within the store's ``timeout``, as ``Cache.set`` does; eviction is
        :meth:`_cull`'s.
        """
        try:
            if con.execute(_INSERT, params).rowcount:
                return []
            con.execute("BEGIN IMMEDIATE")
            try:
                replaced = self._replace(con, params)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            if _busy(e):
                raise diskcache.Timeout(params[0]) from None
            raise
        return replaced

    def _insert_group(self, con: sqlite3.Connection, rows: list[_Row]) -> list[str]:
        """Insert or replace ``rows`` in one transaction, in order (a key stored
        twice ends with its last row); the body files of the rows replaced.

        Rows that share a transaction share the pages SQLite writes to its
        log: the table's last leaf, the tails of its indexes, the Settings
        row of diskcache's totals. The lock is waited for as long as one
        insert would wait, and held for this transaction only.
        """
        replaced: list[str] = []
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    if not con.execute(_INSERT, row.params).rowcount:
                        replaced += self._replace(con, row.params)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as e:
            if _busy(e):
                raise diskcache.Timeout(rows[0].params[0]) from None
            raise
        return replaced

    @staticmethod
    def _replace(con: sqlite3.Connection, params: _RowParams) -> list[str]:
        """In a write transaction: replace the row of ``params``' key (insert it
        if it went since); the old body file to remove, if another."""
        key, store_time, access_time, tag, size, mode, filename, value = params
        row = con.execute(_SELECT_ROW, (key,)).fetchone()
        if row is None:  # removed since the insert found it
            con.execute(_INSERT, params)
            return []
        rowid, old = row
        con.execute(_REPLACE, (store_time, access_time, tag, size, mode, filename, value, rowid))
        return [old] if isinstance(old, str) and old != filename else []

    def _cull(self) -> None:
        """Evict least recently used rows while the store is over its size limit (see Eviction).

        The estimate is read first without the write lock (most readings
        find the store within its limit); if over, the batches and the
        readings between them (which count the rows deleted before, this
        connection's own changes) run in one transaction, so the deletions
        share one commit. The body files go once it is committed.
        """
        self._unculled = 0
        con = self._con
        assert con is not None
        deleted: list[tuple[str | None]] = []
        try:
            ((volume,),) = con.execute(_VOLUME).fetchall()
            if volume <= self._size_limit:
                return
            con.execute("BEGIN IMMEDIATE")
            try:
                for _ in range(_CULL_ROUNDS):
                    ((volume,),) = con.execute(_VOLUME).fetchall()
                    if volume <= self._size_limit:
                        break
                    batch = con.execute(_CULL, (_CULL_BATCH,)).fetchall()
                    if not batch:
                        break
                    deleted += batch
                else:
                    self._unculled = self._cull_slack  # still over the limit: go on after the next insert
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        except _ERRORS as e:
            self._degrade(e)
            return
        self._remove_files(deleted)

    def _trim_variants(self, keep: Entry) -> None:
        """Drop the least recently used variants of ``keep.primary`` past the bound."""
        if self._con is None:
            return
        low, high = _key_range(keep.primary + "\0")
        try:
            rows = self._con.execute(
                "SELECT key, filename FROM Cache WHERE key >= ? AND key < ? AND raw = 1"
                " ORDER BY access_time",
                (low, high),
            ).fetchall()
        except _ERRORS as e:
            self._degrade(e)
            return
        excess = len(rows) - self._max_variants
        for key, filename in rows:
            if excess <= 0:
                break
            if key != keep.key and self._drop_row(key, filename, counted=False):
                excess -= 1

    def _changed(self, primary: str | None) -> None:
        """Restamp ``primary``'s slot (every slot for ``None``); after the database change."""
        generations = self.generations
        if generations is None:
            return
        if primary is None:
            generations.bump_all()
        else:
            generations.bump(primary)

    def touch(self, entry: Entry) -> None:
        """Stamp ``entry`` as used now: its LRU time (for hits served without reading the store)."""
        if entry.primary in self._rows_of:
            self.flush()
        if not self._usable() or self._con is None:
            return
        try:
            self._con.execute(
                "UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1 AND filename = ?",
                (time.time(), entry.key, entry.body_id),  # diskcache's access_time is wall-clock
            )
        except _ERRORS:
            # A lost LRU stamp only ages the entry; the writes that matter report failures.
            self._counters["errors"] += 1

    @property
    def touch_interval(self) -> float:
        """Seconds between two LRU stamps of one entry (see Eviction above)."""
        return self._touch_interval

    def _touch(self, entry: Entry) -> None:
        """Stamp ``entry`` as used, at most once per ``touch_interval`` (see Eviction above)."""
        if time.time() - entry.accessed_at >= self._touch_interval:
            self.touch(entry)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

"""The diskcache-backed store: real diskcache in a temporary directory."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import diskcache
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from accel import directwrite
from accel.cache.memory import MemoryTier
from accel.cache.store import (
    _GROUP_MAX,
    INLINE_MAX,
    Entry,
    Store,
    StoreUnavailable,
    _key_range,
    _make_key,
)

URL = "GET http://example.com/a"
KiB = 1024
MiB = 1024 * KiB


def large(text: bytes) -> bytes:
    """A body too large to be kept in its row: it is stored in a file."""
    return text * (INLINE_MAX // len(text) + 1)


def make_store(directory: Path, clock: Clock | None = None, size_limit: int = 256 * MiB, **kwargs: object) -> Store:
    return Store(str(directory), size_limit, clock or Clock(), **kwargs)  # type: ignore[arg-type]


def put(
    store: Store,
    body: bytes,
    primary: str = URL,
    secondary: bytes = b"",
    tags: tuple[str, ...] = (),
    declared: int | bool | None = True,
    turn_ends: bool = True,
) -> Entry | None:
    """Store ``body`` (declared length = its length unless told otherwise).

    Then the reactor turn ends, and the store commits its row (see Group
    commit in :mod:`accel.cache.store`), unless ``turn_ends`` is false.
    """
    length = len(body) if declared is True else declared
    writer = store.begin(
        primary, secondary, (b"accept-encoding",) if secondary else (), 200, b"OK",
        [(b"content-type", b"text/plain"), (b"x-sha256", hashlib.sha256(body).hexdigest().encode())],
        10.0, 11.0, length if length is not False else None, tags,
    )  # fmt: skip
    writer.write(body)
    entry = writer.commit()
    if turn_ends:
        store.flush()
    return entry


def read(store: Store, entry: Entry) -> bytes | None:
    f = store.open_body(entry)
    if f is None:
        return None
    with f:
        return f.read()


def files(directory: Path) -> list[str]:
    """Every file in the store but the database and change stamps: spool files and bodies."""
    found = (
        p
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith("cache.db") and p.name != "generations"
    )
    return sorted(str(p.relative_to(directory)) for p in found)


def test_round_trip(tmp_path: Path) -> None:
    """A committed response comes back from lookup with its metadata and body."""
    store = make_store(tmp_path)
    entry = put(store, b"hello", tags=("t1",))
    assert entry is not None
    [found] = store.lookup(URL)
    assert found == entry
    assert (found.status, found.reason, found.length, found.tags) == (200, b"OK", 5, ("t1",))
    assert found.headers[0] == (b"content-type", b"text/plain")
    assert read(store, found) == b"hello"
    assert store.lookup("GET http://example.com/") == []
    assert store.stats()["entries"] == 1


def test_variants_share_a_primary(tmp_path: Path) -> None:
    """Variants under one primary key are all returned, and invalidated together."""
    store = make_store(tmp_path)
    put(store, b"plain", secondary=b"identity")
    put(store, b"zipped", secondary=b"gzip")
    put(store, b"other", primary=URL + "b")
    assert sorted(read(store, e) for e in store.lookup(URL)) == [b"plain", b"zipped"]
    assert store.invalidate(URL) == 2
    assert store.lookup(URL) == []
    assert len(store.lookup(URL + "b")) == 1


def test_large_body_streams_through_a_file(tmp_path: Path) -> None:
    """A 20 MiB body is written through to disk chunk by chunk, never held by the writer."""
    store = make_store(tmp_path)
    chunk = os.urandom(64 * KiB)
    total = 20 * MiB
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, total, ())
    [spool] = (tmp_path / "spool").iterdir()
    digest = hashlib.sha256()
    for written in range(len(chunk), total + 1, len(chunk)):
        writer.write(chunk)
        digest.update(chunk)
        assert spool.stat().st_size == written
    entry = writer.commit()
    assert entry is not None and entry.length == total
    assert not spool.exists()
    assert store.stats()["bytes"] == total
    f = store.open_body(entry)
    assert f is not None
    with f:
        check = hashlib.sha256()
        while block := f.read(MiB):
            check.update(block)
    assert check.digest() == digest.digest()


@pytest.mark.parametrize("declared", [4, 6])
def test_length_mismatch_stores_nothing(tmp_path: Path, declared: int) -> None:
    """A body shorter or longer than its declared length leaves no row and no file."""
    store = make_store(tmp_path)
    assert put(store, b"hello", declared=declared) is None
    assert store.lookup(URL) == []
    assert files(tmp_path) == []


def test_unknown_length_is_stored_as_received(tmp_path: Path) -> None:
    """Without a declared length, whatever arrived before commit is the body."""
    store = make_store(tmp_path)
    entry = put(store, b"chunked", declared=None)
    assert entry is not None and read(store, entry) == b"chunked"


def test_abort_stores_nothing(tmp_path: Path) -> None:
    """An aborted body leaves nothing; abort is idempotent and commit after it is a no-op."""
    store = make_store(tmp_path)
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, None, ())
    writer.write(b"partial")
    writer.abort()
    writer.abort()
    assert writer.commit() is None
    assert store.lookup(URL) == []
    assert files(tmp_path) == []


def test_replace_keeps_an_open_old_body_readable(tmp_path: Path) -> None:
    """Replacing a variant swaps it atomically; a reader of the old body reads on."""
    store = make_store(tmp_path)
    old = put(store, b"old body")
    assert old is not None
    handle = store.open_body(old)
    assert handle is not None
    new = put(store, b"new body, longer")
    assert new is not None and new.body_id != old.body_id
    with handle:
        assert handle.read() == b"old body"
    assert store.lookup(URL) == [new]
    assert not (tmp_path / old.body_id).exists()
    assert store.remove(old) is False
    assert store.lookup(URL) == [new]


def test_update_keeps_the_body(tmp_path: Path) -> None:
    """A 304 freshening replaces the headers and times, not the body."""
    store = make_store(tmp_path)
    entry = put(store, b"body")
    assert entry is not None
    fresh = store.update(entry, [(b"etag", b'"2"')], 20.0, 21.0)
    assert fresh is not None and fresh.body_id == entry.body_id
    assert store.lookup(URL) == [fresh]
    assert fresh.headers == ((b"etag", b'"2"'),) and fresh.response_time == 21.0
    assert read(store, fresh) == b"body"


def test_update_of_a_replaced_entry_is_refused(tmp_path: Path) -> None:
    """Freshening an entry that was replaced meanwhile does not touch the new one."""
    store = make_store(tmp_path)
    old = put(store, b"old")
    new = put(store, b"new")
    assert old is not None and new is not None
    assert store.update(old, [], 20.0, 21.0) is None
    assert store.lookup(URL) == [new]


def test_remove(tmp_path: Path) -> None:
    """remove() deletes the entry and its body file, once."""
    store = make_store(tmp_path)
    entry = put(store, b"body")
    assert entry is not None
    assert store.remove(entry) is True
    assert store.remove(entry) is False
    assert store.lookup(URL) == []
    assert files(tmp_path) == []


def test_size_limit_evicts(tmp_path: Path) -> None:
    """Past the size limit the oldest entries are evicted; the store stays near its bound."""
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(40):
        put(store, os.urandom(50 * KiB), primary=f"{URL}/{i}")
    stats = store.stats()
    assert isinstance(stats["entries"], int) and 0 < stats["entries"] < 40
    assert isinstance(stats["bytes"], int) and stats["bytes"] <= MiB
    assert store.lookup(f"{URL}/39") != []
    assert store.lookup(f"{URL}/0") == []
    assert len(files(tmp_path)) == stats["entries"]


def test_read_entries_outlive_unread_ones(tmp_path: Path) -> None:
    """Eviction is least-recently-used: a body that was read outlives entries stored after it."""
    store = make_store(tmp_path, size_limit=MiB, touch_interval=0.0)
    body = os.urandom(20 * KiB)
    read_later = put(store, body, primary=f"{URL}/read")
    put(store, body, primary=f"{URL}/unread")
    for i in range(12):
        put(store, body, primary=f"{URL}/filler{i}")
    assert read_later is not None and read(store, read_later) == body
    for i in range(100):
        if not store.lookup(f"{URL}/unread"):
            break
        put(store, body, primary=f"{URL}/more{i}")
    assert store.lookup(f"{URL}/unread") == []
    assert store.lookup(f"{URL}/read") != []


def _totals(directory: Path) -> tuple[tuple[int, int], tuple[int, int]]:
    """diskcache's running (count, size) from Settings, and the same counted from the rows."""
    with sqlite3.connect(directory / "cache.db") as con:
        settings = dict(con.execute("SELECT key, value FROM Settings WHERE key IN ('count', 'size')"))
        ((count, size),) = con.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM Cache")
    return (settings["count"], settings["size"]), (count, size)


def test_inserts_keep_diskcache_totals(tmp_path: Path) -> None:
    """New rows, replaced rows (inline or in files, either way round) and evictions keep
    diskcache's running count and size equal to what the rows hold."""
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(30):
        put(store, os.urandom(40 * KiB) if i % 2 else b"small", primary=f"{URL}/{i % 12}")
    recorded, counted = _totals(tmp_path)
    assert recorded == counted
    assert counted[0] == store.stats()["entries"] and 0 < counted[0] <= 12


def test_replacing_a_row_removes_the_old_body_file(tmp_path: Path) -> None:
    """A key stored again gets a new row version; the old body's file goes, nothing else is left."""
    store = make_store(tmp_path)
    old = put(store, large(b"old"))
    new = put(store, large(b"new"))
    assert old is not None and new is not None and old.body_id != new.body_id
    assert store.lookup(URL) == [new]
    assert body_files(tmp_path) == [new.body_id]


def test_the_size_limit_holds_between_volume_checks(tmp_path: Path) -> None:
    """The size estimate is read once every 1 % of the limit inserted: the store never
    exceeds its limit by more than that (plus the database's page granularity)."""
    limit = 4 * MiB
    store = make_store(tmp_path, size_limit=limit)
    for i in range(800):
        put(store, os.urandom(10 * KiB), primary=f"{URL}/{i}")
        volume = store.stats()["volume"]
        assert isinstance(volume, int) and volume <= limit + limit // 100 + 64 * KiB
    assert store.lookup(f"{URL}/799") != [] and store.lookup(f"{URL}/0") == []


def test_a_lowered_limit_is_shed_over_several_inserts(tmp_path: Path) -> None:
    """A store reopened with a much lower limit evicts a bounded batch per insert, and
    reaches the limit after a few."""
    store = make_store(tmp_path)
    for i in range(300):
        put(store, os.urandom(4 * KiB), primary=f"{URL}/{i}")
    store.close()
    store = make_store(tmp_path, size_limit=256 * KiB)
    put(store, b"first", primary=f"{URL}/first")
    entries = store.stats()["entries"]
    assert isinstance(entries, int) and 150 < entries < 300
    for i in range(5):
        put(store, b"more", primary=f"{URL}/more{i}")
    volume = store.stats()["volume"]
    assert isinstance(volume, int) and volume <= 256 * KiB


def test_a_cull_commits_its_batches_together_and_then_removes_their_files(tmp_path: Path) -> None:
    """Evicting many rows at once (a lowered limit) deletes them in batches within one
    transaction, and removes their body files once it is committed."""
    store = make_store(tmp_path)
    for i in range(60):
        put(store, large(b"%d" % i) if i % 2 else b"inline", primary=f"{URL}/{i}")
    store.close()
    store = make_store(tmp_path, size_limit=256 * KiB)
    assert store._con is not None and store._cache is not None
    statements: list[str] = []
    store._con.set_trace_callback(statements.append)
    files_when_removed: list[int] = []
    disk = store._cache.disk

    def remove(name: str) -> None:
        files_when_removed.append(len(_rows(tmp_path)))
        type(disk).remove(disk, name)

    disk.remove = remove  # type: ignore[method-assign]
    put(store, b"first", primary=f"{URL}/first")
    culls = [s for s in statements if s.startswith("DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache ORDER BY")]
    assert len(culls) > 1
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    entries = store.stats()["entries"]
    assert isinstance(entries, int) and entries < 61
    assert files_when_removed and set(files_when_removed) == {entries}  # the rows were gone by then
    assert len(body_files(tmp_path)) == sum(1 for i in range(1, 60, 2) if store.lookup(f"{URL}/{i}"))


def test_diskcache_reads_and_culls_what_the_store_writes(tmp_path: Path) -> None:
    """diskcache itself sees the rows as its own: it reads their records and files, and its
    cull() evicts them least recently used first, keeping its totals and the tag index."""
    store = make_store(tmp_path)
    for i in range(20):
        put(store, large(b"%d" % i), primary=f"{URL}/{i}", tags=("t",))
    (first,) = store.lookup(f"{URL}/0")
    cache = diskcache.Cache(str(tmp_path))
    try:
        with cache.get(first.key, read=True) as f:  # a read: now the most recently used
            assert f.read() == large(b"0")
        cache.reset("size_limit", cache.volume() - 5 * len(large(b"10")))
        assert cache.cull() >= 5
    finally:
        cache.close()
    assert store.lookup(f"{URL}/1") == []
    assert store.lookup(f"{URL}/0") != [] and store.lookup(f"{URL}/19") != []
    recorded, counted = _totals(tmp_path)
    assert recorded == counted
    assert store.purge_tag("t") == counted[0]


def test_a_store_from_another_process_is_seen(tmp_path: Path) -> None:
    """Two stores on one directory (two worker processes): each sees the other's new rows
    and replacements at once."""
    first, second = make_store(tmp_path), make_store(tmp_path)
    stored = put(first, b"from the first")
    assert second.lookup(URL) == [stored]
    replaced = put(second, large(b"from the second"))
    assert replaced is not None and first.lookup(URL) == [replaced]
    assert read(first, replaced) == large(b"from the second")
    assert body_files(tmp_path) == [replaced.body_id]


def test_a_failed_replacement_degrades_and_keeps_the_stored_row(tmp_path: Path) -> None:
    """An error inside the transaction that replaces a row rolls it back whole: the store
    degrades as for any storage error, the stored entry is intact and the new body's file is gone."""
    clock = Clock()
    store = make_store(tmp_path, clock, log=Logger(observer=lambda e: None))
    kept = put(store, large(b"kept"))
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("CREATE TRIGGER fail BEFORE UPDATE ON Cache BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
    put(store, large(b"lost"))
    assert not store.healthy and "disk is full" in store.last_error
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("DROP TRIGGER fail")
    clock.advance(5)
    assert store.lookup(URL) == [kept]
    assert kept is not None and body_files(tmp_path) == [kept.body_id]
    recorded, counted = _totals(tmp_path)
    assert recorded == counted


def test_reopen_keeps_entries(tmp_path: Path) -> None:
    """Entries persist across close and reopen of the directory."""
    store = make_store(tmp_path)
    entry = put(store, b"persistent", tags=("t",))
    store.close()
    store.close()
    reopened = make_store(tmp_path)
    assert reopened.lookup(URL) == [entry]
    assert read(reopened, entry) == b"persistent"
    assert reopened.purge_tag("t") == 1


_CRASH_WRITER = """
import hashlib, os, sys, time
from accel.cache.store import Store

class WallClock:
    def seconds(self):
        return time.time()

    def callLater(self, delay, f, *args):
        f(*args)  # no reactor: every turn ends at once

store = Store(sys.argv[1], 1 << 30, WallClock())
for i in range(300):
    body = os.urandom(64 * 1024 + i)
    digest = hashlib.sha256(body).hexdigest().encode()
    writer = store.begin(f"k{i}", b"", (), 200, b"OK", [(b"x-sha256", digest)], 0.0, 0.0, len(body), ())
    for offset in range(0, len(body), 1024):
        writer.write(body[offset:offset + 1024])
        if offset == 32 * 1024:
            print(i, flush=True)
    writer.commit()
"""


def test_kill_during_writes_leaves_no_torn_entry(tmp_path: Path) -> None:
    """After SIGKILL in the middle of a write loop, a reopened store serves only whole bodies."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_CRASH_WRITER), str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if int(line) >= 40:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    store = make_store(tmp_path)
    served = 0
    for i in range(300):
        for entry in store.lookup(f"k{i}"):
            body = read(store, entry)
            assert body is not None and len(body) == 64 * 1024 + i
            assert dict(entry.headers)[b"x-sha256"] == hashlib.sha256(body).hexdigest().encode()
            served += 1
    assert served >= 40
    assert list((tmp_path / "spool").iterdir()) == []


def test_corrupt_metadata_is_a_miss_and_removed(tmp_path: Path) -> None:
    """An unreadable metadata record is a miss; the row and its body are deleted."""
    store = make_store(tmp_path)
    entry = put(store, b"body")
    assert entry is not None
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (b"\x80garbage", entry.key))
    assert store.lookup(URL) == []
    assert store.stats()["entries"] == 0 and store.stats()["corrupt"] == 1
    assert files(tmp_path) == []


def test_a_record_naming_a_global_is_refused(tmp_path: Path) -> None:
    """Records are loaded without globals: a pickle that names a class is corrupt, not run."""
    store = make_store(tmp_path)
    entry = put(store, b"body")
    assert entry is not None
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (pickle.dumps(entry), entry.key))
    assert store.lookup(URL) == []
    assert store.stats()["corrupt"] == 1


def test_vanished_body_is_a_miss_and_removed(tmp_path: Path) -> None:
    """A body file deleted behind the store's back: open_body gives None and the entry goes."""
    store = make_store(tmp_path)
    entry = put(store, large(b"body"))
    assert entry is not None
    (tmp_path / entry.body_id).unlink()
    assert store.open_body(entry) is None
    assert store.lookup(URL) == []


def test_truncated_body_is_a_miss_and_removed(tmp_path: Path) -> None:
    """A body file whose size differs from the entry's length is never served."""
    store = make_store(tmp_path)
    entry = put(store, large(b"body"))
    assert entry is not None
    os.truncate(tmp_path / entry.body_id, 2)
    assert store.open_body(entry) is None
    assert store.lookup(URL) == []


def test_purge_counts(tmp_path: Path) -> None:
    """purge_tag, purge_prefix and purge_all report how many entries they removed."""
    store = make_store(tmp_path)
    put(store, b"1", primary="GET http://a/x", tags=("red", "blue"))
    put(store, b"2", primary="GET http://a/y", tags=("blue",))
    put(store, b"3", primary="GET http://b/z", tags=("green",))
    put(store, b"4", primary="GET http://c/w")
    assert store.purge_tag("blue") == 2
    assert store.purge_tag("blue") == 0
    assert store.purge_tag("red") == 0
    assert store.purge_prefix("GET http://b/") == 1
    assert store.purge_all() == 1
    assert store.stats()["entries"] == 0
    assert files(tmp_path) == []


def test_replacing_an_entry_replaces_its_tags(tmp_path: Path) -> None:
    """The tag index follows replacement: the old entry's tags no longer reach the new one."""
    store = make_store(tmp_path)
    put(store, b"old", tags=("old-tag",))
    put(store, b"new", tags=("new-tag",))
    assert store.purge_tag("old-tag") == 0
    assert store.purge_tag("new-tag") == 1


def test_tag_index_follows_eviction(tmp_path: Path) -> None:
    """Rows diskcache evicts on its own leave nothing behind in the tag index."""
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(40):
        put(store, os.urandom(50 * KiB), primary=f"{URL}/{i}", tags=("all", f"t{i}"))
    entries = store.stats()["entries"]
    with sqlite3.connect(tmp_path / "cache.db") as con:
        ((indexed,),) = con.execute("SELECT COUNT(*) FROM AccelTag").fetchall()
    assert indexed == 2 * entries
    assert store.purge_tag("all") == entries


def test_nul_in_primary_is_refused(tmp_path: Path) -> None:
    """A primary key containing NUL is a caller bug, reported at begin()."""
    store = make_store(tmp_path)
    with pytest.raises(ValueError, match="without NUL"):
        store.begin("a\0b", b"", (), 200, b"OK", [], 0.0, 0.0, None, ())


_NO_NUL = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))


@given(primary=_NO_NUL, secondary=st.binary(), prefix=_NO_NUL)
def test_prefix_range_holds_exactly_the_prefixed_keys(primary: str, secondary: bytes, prefix: str) -> None:
    """A variant key falls in a prefix's key range iff its primary starts with the prefix."""
    low, high = _key_range(prefix)
    assert (low <= _make_key(primary, secondary) < high) == primary.startswith(prefix)


def _leave_torn_files(directory: Path) -> Path:
    """What a killed writer leaves in a store's directory: a torn spool file, an old body
    no entry names; and a spool file a live writer may hold (returned)."""
    make_store(directory).close()
    (directory / "spool" / "dead.part").write_bytes(b"torn")
    live = directory / "spool" / "live.part"
    live.write_bytes(b"in progress")
    orphan = directory / "ab" / "cd" / "0123.val"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"renamed, never committed")
    os.utime(orphan, (time.time() - 3600,) * 2)
    return live


def test_orphans_are_swept_at_open(tmp_path: Path) -> None:
    """Opening removes unlocked spool files and old unreferenced bodies, not a live writer's."""
    live = _leave_torn_files(tmp_path)
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        make_store(tmp_path)
    assert files(tmp_path) == ["spool/live.part"]


def test_a_lazy_store_sweeps_the_spool_when_made_and_bodies_when_opened(tmp_path: Path) -> None:
    """A lazy store clears torn spool files at once (before its process listens), and
    orphaned bodies once it opens the database; a live writer's file stays."""
    live = _leave_torn_files(tmp_path)
    with live.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        store = make_store(tmp_path, lazy=True)
        assert sorted(files(tmp_path)) == ["ab/cd/0123.val", "spool/live.part"]
        store.open()
    assert files(tmp_path) == ["spool/live.part"]
    store.close()


def _break_spool(directory: Path) -> None:
    """Make body spooling fail with a real OSError, even as root: the spool dir becomes a file."""
    (directory / "spool").rename(directory / "spool.away")
    (directory / "spool").write_bytes(b"")


def _mend_spool(directory: Path) -> None:
    (directory / "spool").unlink()
    (directory / "spool.away").rename(directory / "spool")


def test_degrades_and_recovers(tmp_path: Path) -> None:
    """A disk failure logs once, makes the store an empty non-storing cache, and it recovers by itself."""
    clock = Clock()
    events: list[dict[str, object]] = []
    store = make_store(tmp_path, clock, log=Logger(observer=events.append), retry_interval=5.0)
    entry = put(store, b"kept")
    assert entry is not None
    _break_spool(tmp_path)
    assert put(store, large(b"lost"), primary=URL + "2") is None
    assert not store.healthy and "NotADirectoryError" in store.last_error
    assert store.lookup(URL) == []  # degraded: serves nothing, though the row is there
    assert store.open_body(entry) is None
    clock.advance(5)
    assert put(store, large(b"lost"), primary=URL + "2") is None  # the probe fails: back-off doubles
    clock.advance(5)
    assert store.lookup(URL) == []
    assert [e["log_level"] for e in events] == [LogLevel.error]
    _mend_spool(tmp_path)
    clock.advance(5)
    assert store.healthy is False
    assert store.lookup(URL) == [entry]
    assert store.healthy is True
    assert put(store, b"stored", primary=URL + "2") is not None
    assert [e["log_level"] for e in events] == [LogLevel.error, LogLevel.info]
    assert store.stats()["errors"] == 2


def test_database_lock_timeout_degrades_without_leftovers(tmp_path: Path) -> None:
    """A commit that cannot get the database lock stores nothing and leaves no file."""
    store = make_store(tmp_path, timeout=0.01)
    blocker = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        put(store, large(b"body"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not store.healthy and "Timeout" in store.last_error
    assert files(tmp_path) == []


def test_invalidation_while_degraded_is_applied_on_recovery(tmp_path: Path) -> None:
    """A URL invalidated while the store fails is gone once it recovers, never served stale."""
    clock = Clock()
    store = make_store(tmp_path, clock, log=Logger(observer=lambda e: None))
    put(store, b"stale")
    _break_spool(tmp_path)
    put(store, large(b"x"), primary=URL + "2")
    assert store.invalidate(URL) == 0
    _mend_spool(tmp_path)
    clock.advance(5)
    assert store.lookup(URL) == []
    assert store.stats()["entries"] == 0


def test_purge_while_degraded_raises_and_clears_on_recovery(tmp_path: Path) -> None:
    """A purge the failing store cannot do is reported, and recovery empties the cache."""
    clock = Clock()
    store = make_store(tmp_path, clock, log=Logger(observer=lambda e: None))
    put(store, b"tagged", tags=("t",))
    put(store, b"untagged", primary=URL + "2")
    _break_spool(tmp_path)
    put(store, large(b"x"), primary=URL + "3")
    with pytest.raises(StoreUnavailable, match="deferred"):
        store.purge_tag("t")
    _mend_spool(tmp_path)
    clock.advance(5)
    assert store.lookup(URL + "2") == []
    assert store.healthy and store.stats()["entries"] == 0


def test_memory_tier_is_lru_and_bounded() -> None:
    """The memory tier holds at most max_bytes, evicting the least recently used body."""
    tier = MemoryTier(max_bytes=10, max_item=4)
    tier.put("a", b"aaaa")
    tier.put("b", b"bbbb")
    assert tier.get("a") == b"aaaa"
    tier.put("c", b"cccc")
    assert (tier.get("a"), tier.get("b"), tier.get("c")) == (b"aaaa", None, b"cccc")
    tier.put("big", b"12345")
    assert tier.get("big") is None and tier.size == 8


def test_small_bodies_are_served_from_memory(tmp_path: Path) -> None:
    """read_small keeps a small body in memory; the second read does not touch the disk."""
    store = make_store(tmp_path, memory=MemoryTier(MiB))
    entry = put(store, large(b"small"))
    assert entry is not None
    assert store.read_small(entry) == large(b"small")
    (tmp_path / entry.body_id).unlink()
    assert store.read_small(entry) == large(b"small")
    assert store.stats()["memory_entries"] == 1


def test_large_bodies_bypass_memory(tmp_path: Path) -> None:
    """A body above the memory tier's item bound is left to open_body."""
    store = make_store(tmp_path, memory=MemoryTier(MiB, max_item=INLINE_MAX))
    entry = put(store, large(b"too large"))
    assert entry is not None
    assert store.read_small(entry) is None
    assert read(store, entry) == large(b"too large")


def test_memory_follows_replace_and_purge(tmp_path: Path) -> None:
    """A replaced body is never served from memory for the new entry; purges free the memory."""
    store = make_store(tmp_path, memory=MemoryTier(MiB))
    old = put(store, large(b"old"))
    assert old is not None and store.read_small(old) == large(b"old")
    new = put(store, large(b"new"))
    assert new is not None and store.read_small(new) == large(b"new")
    assert store.purge_all() == 1
    assert store.stats()["memory_entries"] == 1  # the replaced body, unreachable, ages out
    assert store.read_small(new) is None


def test_variants_per_url_are_bounded(tmp_path):
    """Past max_variants, storing another Vary variant drops the least recently used."""
    from twisted.internet.task import Clock

    store = Store(str(tmp_path / "c"), 64 << 20, Clock(), max_variants=3)
    try:
        for i in range(5):
            w = store.begin("http://h/x", b"v%d" % i, (b"accept-language",), 200, b"OK", [], 0.0, 0.0, 1)
            w.write(b"a")
            assert w.commit() is not None
        variants = store.lookup("http://h/x")
        assert len(variants) == 3
        assert b"v4" in {v.secondary for v in variants}
    finally:
        store.close()


def test_a_lazy_store_opens_its_database_in_the_process_that_uses_it(tmp_path: Path) -> None:
    """A lazy store opens nothing at construction, so it can cross a fork (twistd's
    daemonizing); the child opens its own connections, and so does the parent later:
    both see the same entries and the database stays sound."""
    store = make_store(tmp_path / "cache", lazy=True)
    assert not (tmp_path / "cache" / "cache.db").exists()
    assert store.generations is not None  # the change stamps are there from the start
    pid = os.fork()
    if pid == 0:  # the child: store, and read back, then leave without running anything else
        ok = put(store, b"from the child") is not None and len(store.lookup(URL)) == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    (entry,) = store.lookup(URL)
    assert read(store, entry) == b"from the child"
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store.close()


def test_an_eager_store_used_after_a_fork_opens_anew(tmp_path: Path) -> None:
    """A store opened before a fork does not use the parent's connections in the child."""
    store = make_store(tmp_path / "cache")
    put(store, b"before", primary="http://a/before")
    pid = os.fork()
    if pid == 0:
        ok = put(store, b"after") is not None and len(store.lookup("http://a/before")) == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(store.lookup(URL)) == 1
    with sqlite3.connect(tmp_path / "cache" / "cache.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    store.close()


# -- bodies kept in their row ---------------------------------------------------


def body_files(directory: Path) -> list[str]:
    """The committed body files in the store (not spool files)."""
    return [name for name in files(directory) if not name.startswith("spool/")]


def test_a_small_body_is_kept_in_its_row(tmp_path: Path) -> None:
    """A body of at most INLINE_MAX bytes commits with no file at all and reads back exactly."""
    store = make_store(tmp_path)
    body = os.urandom(INLINE_MAX)
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, len(body), ())
    writer.write(body[:100])
    writer.write(body[100:])
    assert files(tmp_path) == []  # nothing spooled either
    entry = writer.commit()
    assert entry is not None and entry.inline == body
    assert files(tmp_path) == []
    [found] = store.lookup(URL)
    assert found == entry and found.inline == body and found.length == INLINE_MAX
    assert found.body_id.count("/") == 2 and not (tmp_path / found.body_id).exists()
    assert read(store, found) == body
    assert store.read_small(found) == body  # no memory tier needed


def test_an_empty_body_is_kept_in_its_row(tmp_path: Path) -> None:
    """A body of no bytes is an inline body of no bytes, not a missing one."""
    store = make_store(tmp_path)
    entry = put(store, b"")
    assert entry is not None and entry.inline == b""
    [found] = store.lookup(URL)
    assert found.inline == b"" and read(store, found) == b"" and store.read_small(found) == b""
    assert files(tmp_path) == []


def test_a_body_growing_past_inline_max_goes_to_a_file(tmp_path: Path) -> None:
    """Without a declared length the body is held until it outgrows INLINE_MAX, then spooled."""
    store = make_store(tmp_path)
    body = os.urandom(INLINE_MAX + 1)
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, None, ())
    writer.write(body[:INLINE_MAX])
    assert files(tmp_path) == []
    writer.write(body[INLINE_MAX:])
    [spool] = (tmp_path / "spool").iterdir()
    assert spool.read_bytes() == body
    entry = writer.commit()
    assert entry is not None and entry.inline is None
    assert body_files(tmp_path) == [entry.body_id] and (tmp_path / entry.body_id).read_bytes() == body
    [found] = store.lookup(URL)
    assert found.inline is None and read(store, found) == body


def test_a_declared_length_above_inline_max_spools_at_once(tmp_path: Path) -> None:
    """A body declared larger than INLINE_MAX goes to its spool file from the first byte."""
    store = make_store(tmp_path)
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, INLINE_MAX + 1, ())
    [spool] = (tmp_path / "spool").iterdir()
    writer.write(b"x")
    assert spool.read_bytes() == b"x"
    writer.write(b"x" * INLINE_MAX)
    entry = writer.commit()
    assert entry is not None and entry.inline is None and body_files(tmp_path) == [entry.body_id]


def test_asking_for_the_spool_path_moves_a_held_body_to_a_file(tmp_path: Path) -> None:
    """A follower asking for the spool file mid-body gets a file holding every byte written
    so far, reads the rest as it is written, and the body is committed as a file."""
    store = make_store(tmp_path)
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, 11, ())
    writer.write(b"hello")
    path = writer.spool_path
    assert path is not None and writer.spool_path == path and writer.active
    with open(path, "rb") as follower:
        assert follower.read() == b"hello"
        writer.write(b" world")
        entry = writer.commit()
        assert follower.read() == b" world"  # the renamed file stays readable
    assert entry is not None and entry.inline is None
    assert body_files(tmp_path) == [entry.body_id] and read(store, entry) == b"hello world"


def test_a_failing_spool_file_stores_nothing(tmp_path: Path) -> None:
    """When the held body cannot be written out to a spool file, the writer gives up and the
    store degrades; nothing is stored."""
    store = make_store(tmp_path, log=Logger(observer=lambda e: None))
    writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, None, ())
    writer.write(b"x" * INLINE_MAX)
    _break_spool(tmp_path)
    writer.write(b"x")
    assert not writer.active and writer.spool_path is None and writer.commit() is None
    assert not store.healthy
    _mend_spool(tmp_path)
    assert files(tmp_path) == []


@pytest.mark.parametrize("size", [5, INLINE_MAX + 5])
@pytest.mark.parametrize("declared", [-1, +1])
def test_a_body_of_the_wrong_length_is_not_stored_inline_or_not(tmp_path: Path, size: int, declared: int) -> None:
    """Short or over-length bodies (held in memory or spooled) leave no row and no file."""
    store = make_store(tmp_path)
    assert put(store, b"x" * size, declared=size + declared) is None
    assert store.lookup(URL) == [] and files(tmp_path) == []


def test_a_row_in_the_first_record_format_still_decodes(tmp_path: Path) -> None:
    """A row written before bodies were kept in rows (format 1: metadata only, the body in
    its file) is read as it always was, so an existing cache keeps working after an upgrade."""
    store = make_store(tmp_path)
    entry = put(store, large(b"old"))
    assert entry is not None
    record = pickle.dumps(
        (1, URL, b"", (), 200, b"OK", ((b"x-old", b"1"),), 10.0, 11.0, entry.length, (), 12.0), protocol=5
    )
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (record, entry.key))
    [found] = store.lookup(URL)
    assert found.headers == ((b"x-old", b"1"),) and found.stored_at == 12.0 and found.inline is None
    assert read(store, found) == large(b"old")


def test_an_inline_record_of_the_wrong_length_is_a_miss_and_removed(tmp_path: Path) -> None:
    """A body in a record that does not match the record's length is never served."""
    store = make_store(tmp_path)
    entry = put(store, b"body")
    assert entry is not None
    with sqlite3.connect(tmp_path / "cache.db") as con:
        [(raw,)] = con.execute("SELECT value FROM Cache WHERE key = ?", (entry.key,)).fetchall()
        record = list(pickle.loads(raw))
        record[-1] = b"bod"
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (pickle.dumps(tuple(record)), entry.key))
    assert store.lookup(URL) == []
    assert store.stats()["entries"] == 0 and store.stats()["corrupt"] == 1


@pytest.mark.parametrize("size", [4, INLINE_MAX + 4])
def test_update_after_304_keeps_the_body_inline_or_not(tmp_path: Path, size: int) -> None:
    """Freshening keeps the body where it is: in the row (rewritten with the new
    headers) or in its file."""
    store = make_store(tmp_path)
    body = os.urandom(size)
    entry = put(store, body)
    assert entry is not None
    fresh = store.update(entry, [(b"etag", b'"2"')], 20.0, 21.0)
    assert fresh is not None and fresh.inline == entry.inline
    [found] = store.lookup(URL)
    assert found.headers == ((b"etag", b'"2"'),) and found.inline == entry.inline
    assert read(store, found) == body


def test_remove_and_purges_of_inline_rows(tmp_path: Path) -> None:
    """remove, invalidate and the purges delete rows whose body is in the row, leaving
    no file behind and no error for the file they never had."""
    store = make_store(tmp_path)
    small = put(store, b"1", primary="GET http://a/x", tags=("t",))
    put(store, large(b"2"), primary="GET http://a/y", tags=("t",))
    put(store, b"3", primary="GET http://b/z")
    put(store, b"4", primary="GET http://c/w")
    assert small is not None and store.remove(small) is True and store.remove(small) is False
    put(store, b"1", primary="GET http://a/x", tags=("t",))
    assert store.purge_tag("t") == 2
    assert store.invalidate("GET http://b/z") == 1
    assert store.purge_all() == 1
    assert files(tmp_path) == [] and store.healthy
    assert store.stats()["entries"] == 0


def test_inline_rows_count_towards_the_size_limit(tmp_path: Path) -> None:
    """Bodies kept in rows grow the database, which the size limit counts: past it, the
    least recently used rows are evicted, and the store stays near its bound."""
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(300):
        put(store, os.urandom(10 * KiB), primary=f"{URL}/{i}")
    stats = store.stats()
    assert isinstance(stats["entries"], int) and 0 < stats["entries"] < 150
    assert isinstance(stats["volume"], int) and stats["volume"] < 2 * MiB
    assert store.lookup(f"{URL}/299") != [] and store.lookup(f"{URL}/0") == []
    assert files(tmp_path) == []


def _pragma(directory: Path, name: str) -> int:
    with sqlite3.connect(directory / "cache.db") as con:
        ((value,),) = con.execute(f"PRAGMA {name}")
    return int(value)


def test_a_new_database_has_no_pointer_map(tmp_path: Path) -> None:
    """A database the store creates is made with ``auto_vacuum = NONE`` (no pointer-map pages to
    write with each new page), and diskcache's Settings say so."""
    store = make_store(tmp_path)
    put(store, b"body")
    assert _pragma(tmp_path, "auto_vacuum") == 0
    with sqlite3.connect(tmp_path / "cache.db") as con:
        ((recorded,),) = con.execute("SELECT value FROM Settings WHERE key = 'sqlite_auto_vacuum'")
    assert recorded == 0


def test_an_existing_database_keeps_its_vacuum_mode(tmp_path: Path) -> None:
    """A database made before (diskcache's ``auto_vacuum = FULL``) is opened as it is, and
    stores, evicts and frees its pages as before."""
    diskcache.Cache(str(tmp_path), eviction_policy="least-recently-used").close()
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(300):
        put(store, os.urandom(10 * KiB), primary=f"{URL}/{i}")
    assert _pragma(tmp_path, "auto_vacuum") == 1
    assert _pragma(tmp_path, "freelist_count") == 0
    entries = store.stats()["entries"]
    assert isinstance(entries, int) and 50 < entries < 150
    assert store.lookup(f"{URL}/299") != [] and store.lookup(f"{URL}/0") == []
    store.close()
    assert make_store(tmp_path, size_limit=MiB).lookup(f"{URL}/299") != []
    assert _pragma(tmp_path, "auto_vacuum") == 1


def test_free_pages_are_room_for_new_rows(tmp_path: Path) -> None:
    """Pages freed by evictions and purges stay in the database file, and are reused: the size
    estimate does not count them, so rows that fit within the limit are all kept."""
    store = make_store(tmp_path, size_limit=MiB)
    for i in range(200):
        put(store, os.urandom(10 * KiB), primary=f"{URL}/old{i}")
    store.purge_all()
    assert _pragma(tmp_path, "freelist_count") > 100
    volume = store.stats()["volume"]
    assert isinstance(volume, int) and volume < 200 * KiB
    for i in range(60):
        put(store, os.urandom(10 * KiB), primary=f"{URL}/new{i}")
    assert all(store.lookup(f"{URL}/new{i}") for i in range(60))
    assert store.stats()["entries"] == 60


def test_removals_look_for_a_body_file_only_where_there_is_one(tmp_path: Path) -> None:
    """Replacing, evicting and purging rows removes the body files of rows that have one, and
    asks the file system about no other (a body kept in its row has no file)."""
    store = make_store(tmp_path, size_limit=MiB)
    assert store._cache is not None
    disk = store._cache.disk
    removed: list[str] = []

    def remove(name: str) -> None:
        removed.append(name)
        type(disk).remove(disk, name)

    disk.remove = remove  # type: ignore[method-assign]
    filed = {e.body_id for i in range(3) if (e := put(store, large(b"%d" % i), primary=f"{URL}/file{i}"))}
    put(store, b"inline", primary=f"{URL}/file0")  # replaces a body in a file
    put(store, b"inline", primary=f"{URL}/row0")
    put(store, b"again", primary=f"{URL}/row0")  # replaces a body in its row
    for i in range(200):
        put(store, os.urandom(8 * KiB), primary=f"{URL}/evicted{i}")  # evicts rows of both kinds
    store.purge_all()
    assert sorted(removed) == sorted(filed)
    assert body_files(tmp_path) == []


def test_diskcache_reads_a_body_kept_in_its_row_as_a_value_in_its_row(tmp_path: Path) -> None:
    """A row whose body is kept in it has diskcache's mode for a value in its row: diskcache's
    own ``get`` returns its record and opens no file."""
    store = make_store(tmp_path)
    entry = put(store, b"inline")
    assert entry is not None
    cache = diskcache.Cache(str(tmp_path))
    try:
        record = cache.get(entry.key)
    finally:
        cache.close()
    assert isinstance(record, bytes) and pickle.loads(record)[-1] == b"inline"


@given(
    size=st.integers(0, 3 * INLINE_MAX),
    chunks=st.lists(st.integers(1, INLINE_MAX + 100), min_size=1, max_size=8),
    declared=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_any_body_reads_back_identical_inline_or_not(size: int, chunks: list[int], declared: bool, seed: int) -> None:
    """Whatever its size and however it is cut into writes, a body reads back byte for byte,
    kept in its row when it is at most INLINE_MAX bytes and in a file otherwise."""
    body = random.Random(seed).randbytes(size)
    with tempfile.TemporaryDirectory() as directory:
        store = make_store(Path(directory))
        writer = store.begin(URL, b"", (), 200, b"OK", [], 0.0, 0.0, size if declared else None, ())
        offset = 0
        for n in itertools.cycle(chunks):
            if offset >= size:
                break
            writer.write(body[offset : offset + n])
            offset += n
        entry = writer.commit()
        assert entry is not None and entry.length == size
        assert (entry.inline is not None) == (size <= INLINE_MAX)
        [found] = store.lookup(URL)
        assert read(store, found) == body
        assert (store.read_small(found) == body) if size <= INLINE_MAX else (store.read_small(found) is None)
        assert body_files(Path(directory)) == ([] if size <= INLINE_MAX else [entry.body_id])
        store.close()


_INLINE_CRASH_WRITER = """
import sys, time
from accel.cache.store import Store

class WallClock:
    def seconds(self):
        return time.time()

    def callLater(self, delay, f, *args):
        f(*args)  # no reactor: every turn ends at once

store = Store(sys.argv[1], 1 << 30, WallClock())
writer = store.begin("k", b"", (), 200, b"OK", [], 0.0, 0.0, 2048, ())
writer.write(b"x" * 1024)
print("held", flush=True)
sys.stdin.read()  # killed here, between the write and the commit
"""


def test_kill_while_a_small_body_is_held_leaves_nothing(tmp_path: Path) -> None:
    """A process killed while it holds a small body in memory leaves no file and no row."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_INLINE_CRASH_WRITER), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert child.stdout is not None and child.stdout.readline() == b"held\n"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert files(tmp_path) == []
    store = make_store(tmp_path)
    assert store.lookup("k") == [] and store.stats()["entries"] == 0


def test_inline_bodies_never_need_a_file_descriptor() -> None:
    """Bodies kept in rows are smaller than anything sent by sendfile or remembered by the
    hot tier with its file, the only readers that need a real file."""
    from accel import fasthit, streams

    assert INLINE_MAX < fasthit._SENDFILE_BODY and INLINE_MAX < streams.SENDFILE_MIN


def test_commit_names_every_field_of_entry() -> None:
    """Store._commit builds the stored Entry field by field (cheaper than
    attrs.evolve), so a field added to Entry must be added there too: this
    fails until the list below, checked against _commit, is updated."""
    import attrs

    assert [f.name for f in attrs.fields(Entry)] == [
        "primary", "secondary", "vary", "status", "reason", "headers", "request_time",
        "response_time", "length", "body_id", "tags", "stored_at", "accessed_at", "inline",
    ]  # fmt: skip


# -- group commit: the rows of one reactor turn, committed together at its end


def _rows(directory: Path) -> list[str]:
    """The keys of the committed rows, as another process reads them."""
    with sqlite3.connect(directory / "cache.db") as con:
        return sorted(key for (key,) in con.execute("SELECT key FROM Cache WHERE raw = 1"))


def test_a_stored_entry_is_found_by_its_process_before_the_turn_ends(tmp_path: Path) -> None:
    """Right after commit, a lookup in the same process finds the entry (it commits the row first)."""
    store = make_store(tmp_path)
    entry = put(store, b"body", turn_ends=False)
    assert entry is not None
    assert store.lookup(URL) == [entry]
    assert _rows(tmp_path) == [entry.key]


def test_rows_are_committed_at_the_end_of_the_turn(tmp_path: Path) -> None:
    """Another process (another store on the directory) sees the rows once the turn has ended."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path)
    stored = [put(store, b"body", primary=f"{URL}/{i}", turn_ends=False) for i in range(3)]
    assert _rows(tmp_path) == [] and other.lookup(f"{URL}/0") == []
    clock.advance(0)
    assert all(other.lookup(f"{URL}/{i}") == [entry] for i, entry in enumerate(stored))
    assert store.stats()["stores"] == 3


def test_the_rows_of_a_turn_share_one_transaction(tmp_path: Path) -> None:
    """Rows stored during one turn are committed in one transaction, in a single flush."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    statements: list[str] = []
    assert store._con is not None
    store._con.set_trace_callback(statements.append)
    for i in range(5):
        put(store, b"body", primary=f"{URL}/{i}", turn_ends=False)
    clock.advance(0)
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert len(_rows(tmp_path)) == 5


def test_a_long_turn_commits_in_bounded_transactions(tmp_path: Path) -> None:
    """A turn that stores more than _GROUP_MAX rows commits them in several transactions."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    for i in range(_GROUP_MAX + 1):
        put(store, b"body", primary=f"{URL}/{i}", turn_ends=False)
    assert len(_rows(tmp_path)) == _GROUP_MAX
    clock.advance(0)
    assert len(_rows(tmp_path)) == _GROUP_MAX + 1


def test_a_key_stored_twice_in_a_turn_ends_with_the_last(tmp_path: Path) -> None:
    """Two stores of one key in one turn leave the second, its body only, and true totals."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    first = put(store, large(b"first"), turn_ends=False)
    second = put(store, large(b"second"), turn_ends=False)
    clock.advance(0)
    assert first is not None and second is not None
    assert make_store(tmp_path).lookup(URL) == [second]
    assert body_files(tmp_path) == [second.body_id]
    recorded, counted = _totals(tmp_path)
    assert recorded == counted == (1, len(large(b"second")))


def test_a_failed_group_stores_nothing_and_leaves_no_body(tmp_path: Path) -> None:
    """If the turn's transaction fails, the store degrades, none of its rows is stored, and
    their body files are removed: no row names a missing body, no body is orphaned."""
    clock = Clock()
    store = make_store(tmp_path, clock, log=Logger(observer=lambda e: None))
    kept = put(store, large(b"kept"), primary=f"{URL}/kept")
    with sqlite3.connect(tmp_path / "cache.db") as con:
        con.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON Cache WHEN NEW.key LIKE '%/bad%'"
            " BEGIN SELECT RAISE(ABORT, 'disk is full'); END"
        )
    put(store, large(b"good"), primary=f"{URL}/good", turn_ends=False)
    put(store, b"inline", primary=f"{URL}/good2", turn_ends=False)
    put(store, large(b"bad"), primary=f"{URL}/bad", turn_ends=False)
    clock.advance(0)
    assert not store.healthy and "disk is full" in store.last_error
    assert kept is not None and _rows(tmp_path) == [kept.key]
    assert body_files(tmp_path) == [kept.body_id]


def test_a_group_that_cannot_get_the_lock_stores_nothing(tmp_path: Path) -> None:
    """A turn's transaction waits for the lock no longer than the store's timeout, then
    degrades the store and leaves no file."""
    clock = Clock()
    store = make_store(tmp_path, clock, timeout=0.01, log=Logger(observer=lambda e: None))
    blocker = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        put(store, large(b"one"), primary=f"{URL}/1", turn_ends=False)
        put(store, large(b"two"), primary=f"{URL}/2", turn_ends=False)
        clock.advance(0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not store.healthy and "Timeout" in store.last_error
    assert files(tmp_path) == [] and _rows(tmp_path) == []


def test_a_store_degraded_within_the_turn_drops_its_rows(tmp_path: Path) -> None:
    """Rows stored before a failure in the same turn are not committed, and their files go."""
    clock = Clock()
    store = make_store(tmp_path, clock, log=Logger(observer=lambda e: None))
    put(store, large(b"early"), turn_ends=False)
    _break_spool(tmp_path)
    put(store, large(b"fails"), primary=f"{URL}/2", turn_ends=False)
    assert not store.healthy
    clock.advance(0)
    _mend_spool(tmp_path)
    assert body_files(tmp_path) == [] and _rows(tmp_path) == []


def test_stamps_change_again_once_the_rows_are_committed(tmp_path: Path) -> None:
    """A reader in another process that noted the stamp before the row was committed (and may
    have read the old state) sees the stamp change once it is."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path)
    assert other.generations is not None
    slot = other.generations.slot(URL)
    put(store, b"body", turn_ends=False)
    noted = other.generations.stamps[slot]
    assert other.lookup(URL) == []  # the old state: nothing stored yet
    clock.advance(0)
    assert other.generations.stamps[slot] != noted
    assert other.lookup(URL) != []


def test_stamps_change_at_commit_for_this_process(tmp_path: Path) -> None:
    """This process's readers that skip the database (hot tier, hit-for-miss markers) see
    the change as soon as commit returns."""
    store = make_store(tmp_path)
    assert store.generations is not None
    slot = store.generations.slot(URL)
    before = store.generations.stamps[slot]
    put(store, b"body", turn_ends=False)
    assert store.generations.stamps[slot] != before


def test_settle_commits_the_rows_of_its_key_only_then_keeps_the_stamp(tmp_path: Path) -> None:
    """settle commits pending rows of its key, after which the stamp stays put for a reader."""
    store = make_store(tmp_path)
    assert store.generations is not None
    put(store, b"body", turn_ends=False)
    store.settle(URL + "/other")
    assert _rows(tmp_path) == []
    store.settle(URL)
    noted = store.generations.stamps[store.generations.slot(URL)]
    assert store.lookup(URL) != []
    assert store.generations.stamps[store.generations.slot(URL)] == noted


def test_purges_and_invalidations_include_the_rows_of_the_turn(tmp_path: Path) -> None:
    """Entries stored earlier in the turn are purged and invalidated like committed ones."""
    store = make_store(tmp_path)
    put(store, b"tagged", primary=f"{URL}/t", tags=("t",), turn_ends=False)
    assert store.purge_tag("t") == 1
    put(store, b"body", turn_ends=False)
    assert store.invalidate(URL) == 1
    assert _rows(tmp_path) == [] and store.lookup(URL) == []


def test_close_commits_the_rows_of_the_turn(tmp_path: Path) -> None:
    """Closing the store commits what it stored during the turn."""
    store = make_store(tmp_path)
    entry = put(store, b"body", turn_ends=False)
    store.close()
    assert entry is not None and make_store(tmp_path).lookup(URL) == [entry]


# -- when_committed: what waits for a row to be visible to every process


def _writer(store: Store, body: bytes, primary: str = URL):
    """A writer given ``body``, not yet committed."""
    writer = store.begin(primary, b"", (), 200, b"OK", [], 10.0, 11.0, len(body), ())
    writer.write(body)
    return writer


def test_when_committed_waits_for_the_turn_and_the_row_is_visible_then(tmp_path: Path) -> None:
    """What waits for a stored row is called at the end of the turn, once
    another process (another store on the directory) finds the entry."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path)
    writer = _writer(store, b"body")
    entry = writer.commit()
    found: list[list[Entry]] = []
    writer.when_committed(lambda: found.append(other.lookup(URL)))
    assert found == []
    clock.advance(0)
    assert found == [[entry]]


def test_when_committed_is_at_once_if_nothing_waits(tmp_path: Path) -> None:
    """Nothing stored (a short body), or the row committed already (a lookup
    of its key committed it): the callback runs at once."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    calls: list[str] = []
    short = store.begin(URL, b"", (), 200, b"OK", [], 10.0, 11.0, 10, ())
    short.write(b"short")
    assert short.commit() is None
    short.when_committed(lambda: calls.append("short"))
    settled = _writer(store, b"body")
    settled.commit()
    store.lookup(URL)
    settled.when_committed(lambda: calls.append("settled"))
    assert calls == ["short", "settled"]


def test_what_waits_for_a_commit_writes_as_one_event(tmp_path: Path) -> None:
    """The callbacks after a turn's commit run as one directwrite batch: the
    writes they hold back are sent once all of them have run, in order
    (a client's head and body in one send), before the turn ends."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    calls: list[str] = []
    for name in ("a", "b"):
        writer = _writer(store, b"body", primary=f"{URL}/{name}")
        writer.commit()

        def then(name: str = name) -> None:
            held = directwrite.hold(lambda: calls.append(f"flush {name}"))
            calls.append(f"{name} held" if held else f"{name} sent")

        writer.when_committed(then)
    clock.advance(0)
    assert calls == ["a held", "b held", "flush a", "flush b"]
    assert directwrite.hold(lambda: None) is False  # the batch is over


def test_when_committed_is_called_after_a_failed_commit(tmp_path: Path) -> None:
    """The turn's transaction failing (the lock not had) degrades the store;
    what waited for the row is called all the same, so no response is lost."""
    clock = Clock()
    store = make_store(tmp_path, clock, timeout=0.01, log=Logger(observer=lambda e: None))
    writer = _writer(store, b"body")
    writer.commit()
    calls: list[bool] = []
    writer.when_committed(lambda: calls.append(store.healthy))
    blocker = sqlite3.connect(tmp_path / "cache.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        clock.advance(0)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert calls == [False]


def test_a_callback_that_raises_does_not_hold_the_others(tmp_path: Path) -> None:
    """One callback failing is logged; the others waiting for the turn are still called."""
    clock = Clock()
    events: list[dict] = []
    store = make_store(tmp_path, clock, log=Logger(observer=events.append))
    calls: list[int] = []
    for number in range(2):
        writer = _writer(store, b"body", primary=f"{URL}/{number}")
        writer.commit()
        if number == 0:
            writer.when_committed(lambda: 1 / 0)
        writer.when_committed(lambda number=number: calls.append(number))
    clock.advance(0)
    assert calls == [0, 1]
    assert [e for e in events if e.get("log_level") == LogLevel.critical]


def test_a_row_stored_by_a_callback_waits_for_the_next_commit(tmp_path: Path) -> None:
    """A callback that stores again (a client's next request answered at once)
    has what waits for that row called after its own commit, not before."""
    clock = Clock()
    store = make_store(tmp_path, clock)
    other = make_store(tmp_path)
    seen: list[bool] = []

    def store_again() -> None:
        again = _writer(store, b"next", primary=f"{URL}/next")
        again.commit()
        again.when_committed(lambda: seen.append(bool(other.lookup(f"{URL}/next"))))

    first = _writer(store, b"body")
    first.commit()
    first.when_committed(store_again)
    clock.advance(0)
    assert seen == [True]


def test_a_young_orphan_left_at_open_is_swept_a_minute_later(tmp_path: Path) -> None:
    """An unreferenced body too young at opening to tell from another process's
    commit in progress (a writer killed just before its row's commit) is kept
    then, and removed by the sweep a little over a minute later; a body a row
    names stays."""
    clock = Clock()
    make_store(tmp_path).close()
    orphan = tmp_path / "ab" / "cd" / "0123.val"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"renamed, never committed")
    store = make_store(tmp_path, clock)
    entry = put(store, large(b"kept"))
    assert entry is not None
    clock.advance(0)  # the turn's commit
    assert orphan.exists()
    clock.advance(59)
    assert orphan.exists()
    # The orphan is now over a minute old, as it would be by then.
    os.utime(orphan, (time.time() - 120,) * 2)
    for path in tmp_path.glob("??/??/*.val"):
        if path != orphan:
            os.utime(path, (time.time() - 120,) * 2)
    clock.advance(2)
    assert not orphan.exists()
    assert [e.body_id for e in store.lookup(URL)] == [entry.body_id]
    body = store.open_body(entry)
    assert body is not None
    body.close()
    store.close()


def test_a_body_directory_pruned_by_another_process_while_made_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's removal of a body file prunes its empty directories (``Disk.remove``):
    if it prunes the first level while this one makes the second (``makedirs`` then fails with
    ``FileNotFoundError``), the directories are made again and the body stored, not the store
    degraded."""
    store = make_store(tmp_path)
    makedirs = os.makedirs
    pruned: list[str] = []

    def racing_makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        if not pruned and str(tmp_path) in name and "spool" not in name:
            pruned.append(name)
            raise FileNotFoundError(2, "No such file or directory", name)  # the parent went meanwhile
        makedirs(name, mode, exist_ok)

    monkeypatch.setattr(os, "makedirs", racing_makedirs)
    body = large(b"raced")
    entry = put(store, body)
    assert pruned and store.healthy, store.last_error
    assert entry is not None and read(store, entry) == body


def test_churn_of_mixed_sizes_stays_within_the_limit_and_leaves_no_stray_file(tmp_path: Path) -> None:
    """Far more stored than the limit, bodies in rows and in files (some large), keys stored again
    and again: the estimate stays within the limit plus one reading's slack, the database file
    stops growing (freed pages are reused), what is kept is served whole and every body file
    belongs to a row (evicted and replaced bodies are removed)."""
    limit = 2 * MiB
    store = make_store(tmp_path, size_limit=limit)
    rnd = random.Random(7)
    latest: dict[str, bytes] = {}
    sizes: list[int] = []
    for i in range(1200):
        size = rnd.choice([rnd.randint(0, INLINE_MAX), rnd.randint(INLINE_MAX + 1, 100 * KiB), 400 * KiB])
        primary = f"{URL}/{rnd.randrange(200)}"
        latest[primary] = body = (b"%d." % i * (size // 2 + 1))[:size]
        put(store, body, primary=primary)
        volume = store.stats()["volume"]
        assert isinstance(volume, int) and volume <= limit + limit // 100 + 4 * KiB
        if i % 300 == 299:
            sizes.append((tmp_path / "cache.db").stat().st_size)
    assert sizes[-1] == sizes[-2]
    kept = 0
    for primary, body in latest.items():
        for entry in store.lookup(primary):
            assert (entry.inline if entry.inline is not None else read(store, entry)) == body
            kept += 1
    assert kept == store.stats()["entries"] and kept > 5
    with sqlite3.connect(tmp_path / "cache.db") as con:
        named = {name for (name,) in con.execute("SELECT filename FROM Cache WHERE mode != 1")}
    assert set(body_files(tmp_path)) == named

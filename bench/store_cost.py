"""What the disk store costs a miss: CPU per stored response, and per lookup.

    taskset -c 0 python bench/store_cost.py [--entries 3000] [--runs 3] [--sizes 0,1024,65536] [--group 1]
                                            [--size-limit BYTES]

A :class:`accel.cache.store.Store` on a fresh directory (under ``--dir``,
default the system's temporary directory), as ``twistd accel`` opens it,
with no network and no reactor. Rows, best of ``--runs`` runs, each on a new
directory (noise only adds time):

* ``store N``: ``begin``, one ``write`` of an ``N``-byte body and ``commit``
  of a response under a new key, which is what a cacheable miss adds to a
  pass-through: a spool file created, written, renamed into diskcache's
  two-level directories, and one SQLite transaction for its row, or for
  the rows of ``--group`` stores, as many as one reactor turn stores under
  load (the store commits a turn's rows together at its end; the reactor's
  turn is a ``task.Clock`` advanced by 0 here);
* ``lookup``: :meth:`Store.lookup` of a stored key, the indexed read a hit
  that is not in the hot tier starts with.

With ``--size-limit``, the store is that small and is first filled with
``--entries`` stores beyond it, so the stores measured each evict about as
much as they add, as in a cache that is full (the lookups then find some
keys evicted).

CPU time of this process, user and system apart (``resource.getrusage``),
divided by the operations, so time spent waiting for the CPU does not count.
The first run of a directory creates most of its 65,536 body directories;
a long-running cache has them already, so a run on a directory that has
held many entries costs less per store.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock

from accel.cache.store import Store

_HEADERS = [(b"cache-control", b"max-age=86400"), (b"content-type", b"application/octet-stream")]


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _store(store: Store, clock: Clock, count: int, body: bytes, first: int, group: int) -> None:
    for number in range(first, first + count):
        writer = store.begin(
            f"http://bench.test/object?n={number}", b"", (), 200, b"OK", _HEADERS, 1.0, 1.0, len(body)
        )
        if body:
            writer.write(body)
        if writer.commit() is None:
            raise SystemExit(f"store_cost: nothing stored ({store.last_error or 'no error recorded'})")
        if (number - first + 1) % group == 0:
            clock.advance(0)  # the end of a reactor turn: its rows are committed
    clock.advance(0)
    if not store.healthy:
        raise SystemExit(f"store_cost: nothing stored ({store.last_error})")


def measure(
    size: int, entries: int, parent: str | None, group: int, limit: int | None
) -> tuple[float, float, float, float]:
    """(user, system) microseconds per store of a ``size``-byte body, then per lookup."""
    directory = tempfile.mkdtemp(prefix="accel-store-cost-", dir=parent)
    try:
        clock = Clock()
        store = Store(directory, 1 << 40 if limit is None else limit, clock)
        body = b"x" * size
        # Warm: the database, the page cache (and, under a limit, a full store).
        _store(store, clock, 200 if limit is None else entries, body, 10**9, group)
        u0, s0 = _cpu()
        _store(store, clock, entries, body, 0, group)
        u1, s1 = _cpu()
        for number in range(entries):
            store.lookup(f"http://bench.test/object?n={number}")
        u2, s2 = _cpu()
        store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    scale = 1e6 / entries
    return (u1 - u0) * scale, (s1 - s0) * scale, (u2 - u1) * scale, (s2 - s1) * scale


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="0,1024,65536", help="body sizes in bytes, comma-separated")
    parser.add_argument("--dir", default=None, help="where the store directories are made")
    parser.add_argument("--group", type=int, default=1, help="stores per reactor turn (per transaction)")
    parser.add_argument("--size-limit", type=int, default=None, help="the store's limit in bytes (a full store)")
    args = parser.parse_args(argv)
    print(f"{'row':<14} {'user us':>9} {'sys us':>9} {'total us':>9}")
    lookups: list[tuple[float, float]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs = [measure(size, args.entries, args.dir, args.group, args.size_limit) for _ in range(args.runs)]
        user, system, lu, ls = min(runs, key=lambda r: r[0] + r[1])
        lookups.extend((r[2], r[3]) for r in runs)
        print(f"{'store ' + str(size):<14} {user:9.0f} {system:9.0f} {user + system:9.0f}")
    lu, ls = min(lookups, key=sum)
    print(f"{'lookup':<14} {lu:9.0f} {ls:9.0f} {lu + ls:9.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Crash safety: ``kill -9`` in the middle of heavy cache writes, then a restart.

``twistd -n accel`` runs as a process in front of ``tests/origin_server.py``
(both on UNIX sockets). Many concurrent misses of large blobs stream through
it into the store; while several bodies are half-spooled, accel is killed
with SIGKILL (by its PID, with its worker processes). A new accel on the same ``--cache-dir`` must then
serve nothing torn: every blob it answers, from the cache or not, has the
right length and checksum, the interrupted writes are swept, and the store
stays within ``--cache-size``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.origin_server import blob
from tests.test_e2e import HERE, UnixHTTPConnection, _wait_for, accel, get, process

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="finds the workers in /proc")

CACHE_SIZE = 24 * 1024**2
#: Blobs fetched (and stored) before the crash, then fetched during it.
SETTLED, IN_FLIGHT = range(8), range(8, 48)


def size_of(number: int) -> int:
    """64 KiB to 1 MiB: small blobs commit while large ones are still spooling."""
    return 64 * 1024 * (1 + number % 16)


def fetch(sock: str, number: int) -> tuple[int, str, bytes, str]:
    """GET one blob on a new connection: status, X-Checksum, body, Cache-Status."""
    conn = UnixHTTPConnection(sock)
    try:
        response, body = get(conn, f"/blob/{number}?size={size_of(number)}")
        return response.status, response.getheader("x-checksum", ""), body, response.getheader("cache-status", "")
    finally:
        conn.close()


def workers_of(pid: int) -> list[int]:
    """The worker processes ``pid`` runs (none with one worker)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def body_files(cache: Path) -> list[Path]:
    """The committed bodies: diskcache's two-level directories of ``.val`` files."""
    return list(cache.glob("??/??/*.val"))


def spool_files(cache: Path) -> list[Path]:
    return list((cache / "spool").glob("*.part"))


def test_kill_during_heavy_writes_leaves_a_sound_cache(tmp_path: Path) -> None:
    """After SIGKILL mid-write and a restart, every served blob is whole and correct,
    leftovers are swept, and the store is within --cache-size."""
    origin_sock, sock, cache = str(tmp_path / "origin.sock"), str(tmp_path / "accel.sock"), tmp_path / "cache"
    args = ("--listen", f"unix:{sock}", "--origin", f"unix:{origin_sock}", "--cache-dir", str(cache), "--cache-size", str(CACHE_SIZE))
    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), f"unix:{origin_sock}"]
    with process(origin_cmd, tmp_path / "origin.log") as origin, ThreadPoolExecutor(max_workers=len(IN_FLIGHT)) as pool:
        _wait_for(lambda: os.path.exists(origin_sock), "origin", origin)
        with accel(tmp_path, *args) as first:
            _wait_for(lambda: os.path.exists(sock), "accel", first)
            for status, checksum, body, _ in pool.map(lambda n: fetch(sock, n), SETTLED):
                assert status == 200 and hashlib.sha256(body).hexdigest() == checksum
            # Heavy writes: every in-flight blob is a miss being spooled.
            futures = [pool.submit(fetch, sock, n) for n in IN_FLIGHT]
            _wait_for(lambda: len(spool_files(cache)) >= 8 and len(body_files(cache)) >= len(SETTLED) + 4, "spooling", first)
            # The whole accel dies at once, as in a power cut: every worker
            # (children first, so the parent cannot restart them), then the parent.
            for pid in [*workers_of(first.pid), first.pid]:
                os.kill(pid, signal.SIGKILL)
            first.wait(timeout=10)
            assert first.returncode == -signal.SIGKILL
            for future in futures:
                future.exception(timeout=10)  # cut short or complete: either is fine
        assert spool_files(cache), "the kill was meant to leave half-written bodies"

        os.unlink(sock)
        with accel(tmp_path, *args) as second:
            _wait_for(lambda: os.path.exists(sock), "restarted accel", second)
            assert spool_files(cache) == []  # the restart swept the torn writes
            assert sum(path.stat().st_size for path in body_files(cache)) <= CACHE_SIZE
            started = time.monotonic()
            results = list(pool.map(lambda n: fetch(sock, n), [*SETTLED, *IN_FLIGHT]))
            hits = 0
            for number, (status, checksum, body, cache_status) in zip([*SETTLED, *IN_FLIGHT], results, strict=True):
                assert status == 200, (number, status)
                assert body == blob(number, size_of(number)), f"blob {number} is wrong ({cache_status})"
                assert hashlib.sha256(body).hexdigest() == checksum
                hits += "; hit" in cache_status
            assert hits >= 1, "nothing survived the crash: the test proves nothing"
            assert time.monotonic() - started < 20
            assert sum(path.stat().st_size for path in body_files(cache)) <= CACHE_SIZE

"""A bounded soak: hundreds of concurrent clients against ``twistd -n accel``.

accel runs as a process on 127.0.0.1 in front of ``tests/origin_server.py``;
an asyncio client in this process opens a few hundred connections at once,
round after round, each a keep-alive sequence of cache hits, misses,
revalidations (``max-age=0`` with an ETag), unsafe requests that invalidate,
and large streamed bodies; some clients hang up mid-way. Every complete
response is checked against the origin's deterministic content. Between
rounds the test reads accel's ``/proc/PID``: its resident memory must level
off and its file descriptors must come back down once the clients are gone.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.origin_server import blob, content
from tests.test_e2e import HERE, _wait_for, accel, process

CONNECTIONS = 300
REQUESTS_PER_CONNECTION = 6
ROUNDS = 8
OBJECTS = 150
#: Larger than the memory tiers' largest item (accel.app.MEMORY_MAX_ITEM), so blobs
#: are sent from their files (sendfile) and the memory tiers hold the small objects.
BLOB_SIZE = 384 * 1024
#: Idle origin connections accel may keep pooled (UpstreamSettings.max_idle_per_origin).
POOLED = 64
DEADLINE = 40.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Broken(Exception):
    """A response that is not what the origin's content says it must be."""


async def read_response(reader: asyncio.StreamReader, method: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response: status, headers (last value wins), body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if method == b"HEAD" or status in (204, 304):
        return status, headers, b""
    if b"content-length" in headers:
        return status, headers, await reader.readexactly(int(headers[b"content-length"]))
    if headers.get(b"transfer-encoding") == b"chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
        return status, headers, bytes(body)
    raise Broken(f"no framing in {head!r}")


async def client(port: int, rng: random.Random, round_no: int, index: int, tally: Counter[str]) -> None:
    """One connection: a keep-alive sequence of mixed requests, or a client that hangs up."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if rng.random() < 0.1:
            await abort(reader, writer, rng, tally)
            return
        for step in range(REQUESTS_PER_CONNECTION):
            kind = rng.choices(("hit", "miss", "reval", "unsafe", "blob"), (50, 15, 15, 10, 3))[0]
            method, path = b"GET", b"/obj/%d" % rng.randrange(OBJECTS)
            if kind == "miss":
                path = b"/obj/r%d-%d-%d" % (round_no, index, step)
            elif kind == "reval":
                path = b"/reval/%d" % rng.randrange(OBJECTS // 3)
            elif kind == "unsafe":
                method = rng.choice((b"POST", b"DELETE"))
            elif kind == "blob":
                path = b"/blob/%d?size=%d" % (rng.randrange(8), BLOB_SIZE)
            length = b"content-length: 2\r\n\r\nhi" if method == b"POST" else b"\r\n"
            writer.write(b"%s %s HTTP/1.1\r\nhost: soak.test\r\n%s" % (method, path, length))
            status, headers, body = await read_response(reader, method)
            if method != b"GET":
                expected_status, expected = 204, b""
            elif kind == "blob":
                expected_status, expected = 200, blob(int(path[6:].split(b"?")[0]), BLOB_SIZE)
            else:
                expected_status, expected = 200, content(path)
            if status != expected_status or body != expected:
                raise Broken(f"{method!r} {path!r}: {status} {headers.get(b'cache-status')!r}, {len(body)} bytes")
            tally[kind] += 1
    finally:
        writer.close()


async def abort(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rng: random.Random, tally: Counter[str]) -> None:
    """A client that goes away: mid-head, right after asking, or mid-body."""
    how = rng.choice(("mid-head", "after-request", "mid-body"))
    if how == "mid-head":
        writer.write(b"GET /obj/1 HTTP/1.1\r\nhost: so")
    else:
        number = rng.randrange(8, 16)  # blobs other clients do not check
        writer.write(b"GET /blob/%d?size=%d HTTP/1.1\r\nhost: soak.test\r\n\r\n" % (number, BLOB_SIZE))
        if how == "mid-body":
            await reader.read(1000)
    await writer.drain()
    writer.transport.abort()
    tally["aborted"] += 1


async def run_round(port: int, round_no: int, tally: Counter[str]) -> None:
    rng = random.Random(round_no)
    seeds = [rng.randrange(2**32) for _ in range(CONNECTIONS)]
    results = await asyncio.gather(
        *(client(port, random.Random(seed), round_no, i, tally) for i, seed in enumerate(seeds)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], f"{len(failures)} clients failed, first: {failures[0]!r}"


def settle(pid: int, limit: int) -> int:
    """Wait (briefly) for accel's descriptors to drop to ``limit``; the count seen."""
    deadline = time.monotonic() + 5
    while (count := fd_count(pid)) > limit and time.monotonic() < deadline:
        time.sleep(0.05)  # another process closing sockets: no clock to inject
    return count


@pytest.mark.slow
def test_soak(tmp_path: Path) -> None:
    """Rounds of mixed concurrent traffic: every response correct, memory levels
    off, and no descriptor outlives its connection."""
    started = time.monotonic()
    origin_sock = str(tmp_path / "origin.sock")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # accel opens one origin connection per concurrent miss (no per-origin
    # connection cap yet): give the origin a backlog deeper than Twisted's 50,
    # or a burst overflows it and UNIX-socket connects fail at once.
    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), f"unix:{origin_sock}:backlog=1024"]
    with process(origin_cmd, tmp_path / "origin.log") as origin:
        _wait_for(lambda: os.path.exists(origin_sock), "origin", origin)
        # One worker: the test reads that one process's memory and descriptors.
        args = ("--workers", "1", "--listen", f"tcp:{port}:interface=127.0.0.1", "--origin", f"unix:{origin_sock}",
                "--cache-dir", str(tmp_path / "cache"), "--access-log", os.devnull)  # fmt: skip
        with accel(tmp_path, *args) as proc:

            def ready() -> bool:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False

            _wait_for(ready, "accel", proc)
            idle_fds = settle(proc.pid, 0)
            tally: Counter[str] = Counter()
            rss, fds = [], []
            for round_no in range(ROUNDS):
                asyncio.run(run_round(port, round_no, tally))
                fds.append(settle(proc.pid, idle_fds + POOLED))
                rss.append(rss_kib(proc.pid))
            assert proc.poll() is None, "accel died"

    assert min(tally[k] for k in ("hit", "miss", "reval", "unsafe", "blob", "aborted")) > 0, tally
    assert all(count <= idle_fds + POOLED for count in fds), (idle_fds, fds)
    # The first rounds grow what is meant to grow (allocator arenas, SQLite's
    # page cache, the store's index): after that, memory must level off.
    assert rss[-1] - rss[1] < 16 * 1024, f"RSS kept growing after warm-up: {rss} KiB"
    assert rss[-1] - rss[-4] < 4 * 1024, f"RSS has not levelled off: {rss} KiB"
    assert time.monotonic() - started < DEADLINE, f"the soak took {time.monotonic() - started:.1f}s"

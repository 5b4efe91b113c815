"""Resident memory of accel at steady state with many small objects stored.

    python bench/rss.py [--objects 100000] [--size 1024] [--hot 1000] [--hot-seconds 20] [--workers 1]

Starts a trivial origin (asyncio, in this process: every ``GET /o/N``
answers ``--size`` bytes, ``Cache-Control: max-age=86400``) and ``twistd -n
accel --workers N`` in front of it as a subprocess, with a fresh cache
directory and the access log off. Then:

1. stores ``--objects`` distinct URLs (each fetched once: a miss that fills
   the cache) over 64 keep-alive connections;
2. hits a hot subset of ``--hot`` URLs for ``--hot-seconds`` (each hot URL is
   asked twice first, so the hot tier holds it);
3. prints each worker's ``VmRSS`` and ``VmHWM`` (from ``/proc/PID/status``)
   and ``Pss`` (from ``/proc/PID/smaps_rollup``: shared pages divided among
   the processes that map them) after each phase, with the workers' total,
   and the origin's request count, which must equal the number of objects
   (the hot phase must be all hits).

Not a test: a measuring stick for the memory target (under 80 MiB with
100,000 small objects stored; docs/performance.rst).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONNECTIONS = 64


class _Origin:
    """Answers every request head with the same cacheable body; counts requests."""

    def __init__(self, size: int) -> None:
        self.requests = 0
        self._response = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            b"cache-control: max-age=86400\r\ncontent-length: %d\r\n\r\n%s" % (size, b"o" * size)
        )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                writer.write(self._response)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # client gone, or the benchmark is over
        finally:
            writer.close()


async def _client(port: int, paths: list[bytes], deadline: float) -> int:
    """GET each path in turn on one keep-alive connection; responses answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    done = 0
    try:
        for path in paths:
            if time.monotonic() > deadline:
                break
            writer.write(b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200 "):
                raise SystemExit(f"unexpected answer for {path!r}: {head[:200]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            await reader.readexactly(length)
            done += 1
    finally:
        writer.close()
    return done


async def _load(port: int, paths: list[bytes], seconds: float) -> int:
    """Spread ``paths`` over the connections; stop at ``seconds``."""
    deadline = time.monotonic() + seconds
    shares = [paths[i::CONNECTIONS] for i in range(CONNECTIONS)]
    counts = await asyncio.gather(*(_client(port, share, deadline) for share in shares if share))
    return sum(counts)


def _memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile and Pss of ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields.update(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Pss")}


def _workers(pid: int) -> list[int]:
    """twistd's pid, then its worker processes'."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [pid, *(int(child) for child in f.read().split())]


def _rss(pid: int) -> str:
    """One line per worker (twistd first), then the total when there are several."""
    lines, total = [], {"VmRSS": 0.0, "Pss": 0.0}
    for number, worker in enumerate(_workers(pid)):
        mib = _memory(worker)
        total = {k: total[k] + mib[k] for k in total}
        lines.append(
            f"\n  worker {number}: VmRSS {mib['VmRSS']:5.1f} MiB (anonymous {mib['RssAnon']:5.1f},"
            f" files {mib['RssFile']:5.1f}; peak {mib['VmHWM']:5.1f}; Pss {mib['Pss']:5.1f})"
        )
    if len(lines) > 1:
        lines.append(f"\n  all workers: VmRSS {total['VmRSS']:5.1f} MiB, Pss {total['Pss']:5.1f} MiB")
    return "".join(lines)


def _all_serving(pid: int, log: str) -> bool:
    """Whether every worker twistd started has said it is serving."""
    with open(log) as f:
        return f.read().count("serving (pid") == len(_workers(pid)) - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--hot", type=int, default=1000)
    parser.add_argument("--hot-seconds", type=float, default=20.0)
    parser.add_argument("--store-seconds", type=float, default=600.0, help="bound on phase 1")
    parser.add_argument("--workers", default="1", help="accel's --workers: a number, or auto")
    args = parser.parse_args(argv)

    origin = _Origin(args.size)
    server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin_port = server.sockets[0].getsockname()[1]
    port = _free_port()
    work = tempfile.mkdtemp(prefix="accel-rss-")
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
            "--logfile", os.path.join(work, "twistd.log"),
            "accel", "--origin", f"http://127.0.0.1:{origin_port}",
            "--listen", f"tcp:{port}:interface=127.0.0.1:backlog=1024",
            "--cache-dir", os.path.join(work, "cache"), "--access-log", "off",
            "--workers", args.workers,
        ],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    keep = False
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                if args.workers == "1" or _all_serving(proc.pid, os.path.join(work, "twistd.log")):
                    break
                await asyncio.sleep(0.1)
            except OSError:
                await asyncio.sleep(0.1)
        else:
            keep = True  # for its log
            raise SystemExit(f"accel did not start; see {work}/twistd.log")
        print(f"accel pid {proc.pid}, started:        {_rss(proc.pid)}", flush=True)

        paths = [b"/o/%d" % n for n in range(args.objects)]
        started = time.monotonic()
        stored = await _load(port, paths, args.store_seconds)
        took = time.monotonic() - started
        print(
            f"stored {stored} objects in {took:.0f} s: {_rss(proc.pid)}  "
            f"(origin saw {origin.requests} requests)",
            flush=True,
        )

        hot = paths[: args.hot]
        await _load(port, hot + hot, 60.0)
        before = origin.requests
        started = time.monotonic()
        hits = 0
        while time.monotonic() - started < args.hot_seconds:
            hits += await _load(port, hot, args.hot_seconds)
        took = time.monotonic() - started
        print(
            f"hot subset: {hits} hits of {args.hot} URLs in {took:.0f} s "
            f"({hits / took:.0f}/s, origin requests {origin.requests - before}): {_rss(proc.pid)}",
            flush=True,
        )
    finally:
        proc.terminate()
        proc.wait()
        server.close()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

"""Run the raw Twisted baseline and accel back to back under wrk; print ratios.

    python bench/compare.py [--rounds 3] [--duration 5] [--workers 1]

Each server runs pinned to CPU 0 (``--server-cpus`` to change), wrk pinned to
CPU 1 with 64 connections. Rounds alternate baseline and accel so that noise
from other work on the machine hits both alike; the ratio per round is the
number to trust, not the absolute rates.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _start(cmd: list[str], cpus: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, *cmd], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{cmd[0]} did not start")
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wrk(url: str, duration: int, cpu: str) -> tuple[float, float]:
    """(requests/s, MiB/s) of one wrk run."""
    out = subprocess.run(
        ["taskset", "-c", cpu, "wrk", "-t1", "-c64", f"-d{duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    assert m is not None
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[m.group(2)]
    return rps, float(m.group(1)) * scale


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--paths", nargs="+", default=["/1k", "/1m"], help="of /1k and /1m")
    args = parser.parse_args(argv)
    raw_port, accel_port = _free_port(), _free_port()
    raw = _start([os.path.join(HERE, "raw_baseline.py"), str(raw_port)], args.server_cpus)
    accel = _start(
        [os.path.join(HERE, "hit.py"), "--port", str(accel_port), "--workers", str(args.workers)],
        args.server_cpus,
    )
    try:
        time.sleep(1)
        for path in args.paths:
            for n in range(args.rounds):
                base = _wrk(f"http://127.0.0.1:{raw_port}{path}", args.duration, args.client_cpu)
                ours = _wrk(f"http://127.0.0.1:{accel_port}{path}", args.duration, args.client_cpu)
                print(
                    f"{path} round {n + 1}: raw {base[0]:9.0f} req/s {base[1]:7.0f} MiB/s | "
                    f"accel {ours[0]:9.0f} req/s {ours[1]:7.0f} MiB/s | ratio {ours[0] / base[0]:.2f}",
                    flush=True,
                )
    finally:
        for proc in (raw, accel):
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main(sys.argv[1:])

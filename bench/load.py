"""wrk as the load generator: one pinned run, its numbers read back as JSON from a Lua hook."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from procs import pin_prefix

# wrk calls done() once at the end with the merged statistics of all threads;
# latency percentiles are in microseconds.
REPORT_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "bytes": %d, "duration_us": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    bytes: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def mib_per_s(self) -> float:
        return self.bytes / self.seconds / 2**20 if self.seconds else 0.0


class WrkError(Exception):
    """wrk did not run to completion or printed no report."""


# Each request gets the row's path plus a query no request sent before: every
# request of the run is a miss, in every system (their cache keys all include
# the query). The tag keeps runs, repetitions and warm-ups apart.
UNIQUE_LUA = r"""
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, wrk.path .. "?u=%s-" .. counter)
end
"""


def write_script(directory: Path, unique: bool = False) -> Path:
    """The Lua script for a wrk run: the report hook, and for a ``unique`` run a
    request generator that never repeats a URL (a fresh file each time)."""
    if not unique:
        script = directory / "report.lua"
        script.write_text(REPORT_LUA)
        return script
    tag = uuid.uuid4().hex[:12]
    script = directory / f"unique-{tag}.lua"
    script.write_text(REPORT_LUA + UNIQUE_LUA % tag)
    return script


def run_wrk(wrk: str, url: str, *, seconds: int, connections: int, threads: int,
            headers: dict[str, str], cpu: int | None, script: Path) -> WrkResult:
    """Run wrk against ``url`` (always 127.0.0.1) for ``seconds``; bounded by a timeout.

    wrk takes whole seconds only ("0.5s" is a usage error).
    """
    assert url.startswith("http://127.0.0.1:"), f"expected a loopback URL, got {url!r}"
    argv = pin_prefix(cpu) + [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
        "--timeout", "5s", "-s", str(script),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=seconds + 30, check=False)
    except subprocess.TimeoutExpired as error:
        raise WrkError(f"wrk did not finish within {seconds + 30:g} s") from error
    out = done.stdout.decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("BENCH-JSON "):
            raw = json.loads(line[len("BENCH-JSON "):])
            break
    else:
        raise WrkError(f"wrk exited {done.returncode} without a report:\n{out[-800:]}")
    errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors",
                                  "status_errors", "timeouts"))
    return WrkResult(
        requests=raw["requests"], bytes=raw["bytes"], seconds=raw["duration_us"] / 1e6,
        errors=errors, p50_ms=raw["p50_us"] / 1e3, p90_ms=raw["p90_us"] / 1e3,
        p99_ms=raw["p99_us"] / 1e3, max_ms=raw["max_us"] / 1e3,
    )

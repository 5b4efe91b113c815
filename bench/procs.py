"""Processes that the benchmark starts: pinning, process trees, CPU and RSS, clean stop.

Only processes started here are ever signalled, by PID; system services are never
touched.  CPU time comes from ``/proc/<pid>/stat`` (utime + stime, in clock ticks)
and memory from ``/proc/<pid>/status`` (VmRSS), summed over the whole tree of a
server: nginx master and worker, Varnish manager and child, twistd and any workers.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pin_prefix(cpu: int | None) -> list[str]:
    """``taskset -c CPU`` as an argv prefix, or nothing when pinning is off."""
    if cpu is None:
        return []
    return ["taskset", "-c", str(cpu)]


def _children_index() -> dict[int, list[int]]:
    """Map every live PID's parent to its children, read once from /proc."""
    index: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None:
            index.setdefault(stat[0], []).append(int(entry))
    return index


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime + stime in ticks) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    index = _children_index()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if Path(f"/proc/{current}").exists():
            found.append(current)
        todo.extend(index.get(current, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) consumed so far by ``pids``."""
    ticks = 0
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Resident set size summed over ``pids`` (VmRSS; shared pages count once per process)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


@dataclass
class Server:
    """One started server process (the root of its tree) and where its output goes."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        """Start the process in its own session, output to ``log``."""
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """The live process tree of this server."""
        return tree(self.pid) if self.alive() else []

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the root (it stops its own children), then SIGKILL what is left of the tree."""
        if self.process is None or self.process.poll() is not None:
            return
        family = self.pids()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One GET to 127.0.0.1:``port``; (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def wait_ready(server: Server, port: int, path: str, timeout: float) -> str | None:
    """Wait until ``GET path`` answers 200; None when ready, else why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            return f"{server.name} exited with status {server.process.returncode}"
        try:
            status, _, _ = http_get(port, path, timeout=2.0)
        except OSError as error:
            last = f"{type(error).__name__}: {error}"
        else:
            if status == 200:
                return None
            last = f"HTTP {status} for {path}"
        time.sleep(0.2)
    return f"{server.name} not ready after {timeout:.0f} s ({last})"


def require(program: str) -> str | None:
    """Full path of ``program`` on PATH (or in the sbin directories), or None."""
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

#!/usr/bin/env python3
"""accel side by side with nginx proxy_cache and Varnish, on one pinned server core.

    python3 bench/run.py            # 3 x 5 s per row and system, about 8 minutes
    python3 bench/run.py --quick    # 1 x 2 s smoke run, about 2 minutes

Finds (or, as root, installs with apt-get) wrk, nginx and varnish; starts its own instances
of an origin (nginx serving files), accel, nginx proxy_cache and Varnish under a temp dir,
on 127.0.0.1 and free ports; warms them; runs wrk on one CPU against each system on the
other, interleaved A B C A B C; prints medians and accel's ratios; writes
bench/results/<timestamp>.json and a PNG chart.  Standard library only: matplotlib runs in
a venv of its own (bench/.venv) that this script creates.  See bench/README.rst.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from load import WrkError, run_wrk, write_script
from procs import Server, cpu_seconds, http_get, require, rss_bytes
from systems import Origin, System, accel_help, accel_system, make_content, nginx_system, varnish_system

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
VENV = HERE / ".venv"
SYSTEM_ORDER = ("accel", "nginx", "varnish")


@dataclass(frozen=True)
class Row:
    """One line of the table: a URL path, request headers and what the origin should see."""

    key: str
    title: str
    path: str
    kind: str  # "hit": origin must see ~0 requests; "pass": one per request; "static": no origin
    unit: str = "req/s"  # what the chart plots: "req/s", or "MiB/s" for large objects
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""
    #: The status every answer must have: a conditional row expects 304.
    status: int = 200
    #: Every request asks for a URL never asked before (a query added to ``path``).
    unique: bool = False


#: In a row's header values, replaced by the origin's ETag for the row's path
#: (see :func:`with_origin_validators`).
ETAG = "{etag}"

ROWS = (
    Row("hit-1k", "hit 1 KiB", "/cache/1k.bin", "hit"),
    Row("close-1k", "hit 1 KiB, a connection each", "/cache/1k.bin", "hit",
        headers={"Connection": "close"},
        note="every request on a new TCP connection (no keep-alive)"),
    Row("hit-64k", "hit 64 KiB", "/cache/64k.bin", "hit", "MiB/s"),
    Row("hit-1m", "hit 1 MiB", "/cache/1m.bin", "hit", "MiB/s"),
    Row("br-100k", "hit 100 KiB text, AE: br", "/cache/text-100k.txt", "hit", "MiB/s",
        {"Accept-Encoding": "br"},
        "origin sends identity; nginx and Varnish pass it through uncompressed"),
    Row("cond-1k", "304 1 KiB If-None-Match", "/cache/1k.bin", "hit",
        headers={"If-None-Match": ETAG}, status=304,
        note="a browser revalidating its copy: answered 304 from the cache"),
    Row("miss-1k", "miss 1 KiB, stored", "/cache/1k.bin", "pass", unique=True, note=(
        "a new URL each request: fetched, stored, never hit; the origin shares the core")),
    Row("pass-1k", "pass 1 KiB no-store", "/private/1k.bin", "pass", note=(
        "every request goes to the origin, which shares the server core")),
    Row("static-1k", "static file 1 KiB", "/1k.bin", "static", note=(
        "nginx serving a directory vs accel --static; Varnish serves no files")),
)


# ---------------------------------------------------------------------------- tools


def ensure_tools(install: bool) -> dict[str, str | None]:
    """Paths of wrk, nginx and varnishd, installing the Debian packages when allowed.

    apt-get runs at most once (update, then install).  Package maintainer scripts must not
    start the system services, so a policy-rc.d that forbids it is put in place for the
    install when none exists, and removed after.
    """
    wanted = {"wrk": "wrk", "nginx": "nginx", "varnishd": "varnish"}
    found = {tool: require(tool) for tool in wanted}
    missing = [wanted[tool] for tool, path in found.items() if path is None]
    if missing and install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            print(f"! cannot install {' '.join(missing)}: needs root and apt-get", flush=True)
        else:
            print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
            policy = Path("/usr/sbin/policy-rc.d")
            ours = not policy.exists()
            if ours:
                policy.write_text("#!/bin/sh\n# accel bench: no service starts\nexit 101\n")
                policy.chmod(0o755)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            try:
                subprocess.run(["apt-get", "update"], env=env, check=True, timeout=600,
                               stdout=subprocess.DEVNULL)
                subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                               env=env, check=True, timeout=900, stdout=subprocess.DEVNULL)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
                print(f"! apt-get failed: {error}", flush=True)
            finally:
                if ours:
                    policy.unlink()
            found = {tool: require(tool) for tool in wanted}
    return found


def version_of(argv: list[str], pattern: str) -> str:
    """The version that ``argv`` prints, as the first group of ``pattern`` (e.g. nginx/1.22.1)."""
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    found = re.search(pattern, done.stdout.decode(errors="replace"))
    return found.group(1) if found else "unknown"


def accel_revision(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.decode().strip() or "unknown"


def default_twistd() -> str:
    """twistd beside this interpreter, else the project's shared venv, else PATH."""
    for candidate in (Path(sys.executable).parent / "twistd", Path("/tmp/venv/bin/twistd")):
        if candidate.exists():
            return str(candidate)
    return shutil.which("twistd") or "twistd"


# ---------------------------------------------------------------------------- measuring


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent in processes so far (all CPUs, /proc/stat).

    Interrupt and softirq time is left out: on loopback it is mostly the benchmark's own
    packet processing, which no process is charged for.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(system: System, row: Row, origin: Origin, args: argparse.Namespace,
            script: Path, seconds: int) -> dict:
    """One wrk run against one system for one row, with server CPU, RSS and origin requests."""
    static = row.kind == "static"
    port = system.static_port if static else system.port
    url = f"http://127.0.0.1:{port}{row.path}"
    before_pids = system.pids(static)
    origin_pids = origin.server.pids()
    server_cpu0, origin_cpu0 = cpu_seconds(before_pids), cpu_seconds(origin_pids)
    busy0, wrk_cpu0 = machine_busy_seconds(), children_cpu_seconds()
    origin_before = origin.requests_served()
    start = time.monotonic()
    result = run_wrk(args.wrk, url, seconds=seconds, connections=args.connections,
                     threads=args.threads, headers=row.headers, cpu=args.client_cpu,
                     script=script)
    wall = time.monotonic() - start
    after_pids = sorted(set(before_pids) | set(system.pids(static)))
    server_cpu = cpu_seconds(after_pids) - server_cpu0
    origin_cpu = cpu_seconds(origin_pids) - origin_cpu0
    wrk_cpu = children_cpu_seconds() - wrk_cpu0
    other_cpu = max(0.0, machine_busy_seconds() - busy0 - server_cpu - origin_cpu - wrk_cpu)
    origin_requests = origin.requests_served() - origin_before
    return {
        "row": row.key, "system": system.name,
        "req_per_s": result.req_per_s, "mib_per_s": result.mib_per_s,
        "p50_ms": result.p50_ms, "p90_ms": result.p90_ms, "p99_ms": result.p99_ms,
        "max_ms": result.max_ms, "requests": result.requests, "bytes": result.bytes,
        "errors": result.errors, "seconds": result.seconds,
        "server_cpu_pct": 100 * server_cpu / wall, "origin_cpu_pct": 100 * origin_cpu / wall,
        "wrk_cpu_pct": 100 * wrk_cpu / wall, "other_cpu_pct": 100 * other_cpu / wall,
        "rss_mib": rss_bytes(system.pids(static)) / 2**20,
        "processes": len(after_pids), "origin_requests": origin_requests,
    }


def check(row: Row, run: dict) -> str:
    """Whether a run was what its row claims: hits never reach the origin, passes always do."""
    if row.kind == "hit":
        allowed = max(2, run["requests"] // 1000)
        return "ok" if run["origin_requests"] <= allowed else "NOT HITS"
    if row.kind == "pass":
        return "ok" if run["origin_requests"] >= 0.98 * run["requests"] else "NOT PASSED"
    return "ok"


def warm(system: System, row: Row) -> str | None:
    """Fetch the row's object twice so that it is cached, then once as the row
    asks for it if that differs; None when each answer had the expected status."""
    port = system.static_port if row.kind == "static" else system.port
    requests = [({}, 200), ({}, 200), (row.headers, row.status)] if row.status != 200 else [
        (row.headers, 200), (row.headers, 200)]
    for headers, expected in requests:
        try:
            status, _, _ = http_get(port, row.path, headers)
        except OSError as error:
            return f"{type(error).__name__}: {error}"
        if status != expected:
            return f"HTTP {status}, expected {expected}"
    return None


def with_origin_validators(rows: list[Row], port: int) -> list[Row]:
    """``rows`` with :data:`ETAG` in header values replaced by the origin's ETag for
    the row's path (asked of the origin at ``port``); a row whose origin gives
    none is left out, with a note on standard output."""
    resolved = []
    for row in rows:
        if not any(ETAG in value for value in row.headers.values()):
            resolved.append(row)
            continue
        _, headers, _ = http_get(port, row.path)
        etag = headers.get("etag")
        if etag is None:
            print(f"! skipping {row.key}: the origin gives {row.path} no ETag", flush=True)
            continue
        resolved.append(replace(row, headers={name: value.replace(ETAG, etag)
                                              for name, value in row.headers.items()}))
    return resolved


# ---------------------------------------------------------------------------- reporting


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def summarize(runs: list[dict], names: list[str], rows: list[Row],
              skipped: dict[str, dict[str, str]], unavailable: dict[str, str]) -> list[dict]:
    """Medians per row and system, plus accel's req/s ratio to nginx and Varnish."""
    summary = []
    for row in rows:
        entry: dict = {"row": row.key, "title": row.title, "kind": row.kind,
                       "unit": row.unit, "note": row.note, "systems": {}}
        for name in names:
            mine = [r for r in runs if r["row"] == row.key and r["system"] == name]
            if not mine:
                reason = unavailable.get(name) or skipped.get(row.key, {}).get(name)
                entry["systems"][name] = {"n/a": reason or "not run"}
                continue
            medians = {key: median_of(mine, key) for key in (
                "req_per_s", "mib_per_s", "p50_ms", "p99_ms", "server_cpu_pct",
                "rss_mib", "wrk_cpu_pct", "other_cpu_pct")}
            medians["origin_requests"] = sum(r["origin_requests"] for r in mine)
            medians["errors"] = sum(r["errors"] for r in mine)
            medians["check"] = ("ok" if all(r["check"] == "ok" for r in mine)
                                else next(r["check"] for r in mine if r["check"] != "ok"))
            medians["repetitions"] = len(mine)
            entry["systems"][name] = medians
        accel = entry["systems"].get("accel", {})
        for other in ("nginx", "varnish"):
            them = entry["systems"].get(other, {})
            if "req_per_s" in accel and them.get("req_per_s"):
                entry[f"accel_to_{other}"] = accel["req_per_s"] / them["req_per_s"]
        summary.append(entry)
    return summary


def table(summary: list[dict]) -> str:
    head = (f"{'row':<26} {'system':<8} {'req/s':>9} {'MiB/s':>8} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'CPU %':>6} {'RSS MiB':>8} {'origin':>7} {'err':>4} {'wrk %':>5} "
            f"{'bg %':>5}  check")
    lines = [head, "-" * len(head)]
    for entry in summary:
        first = True
        for name, m in entry["systems"].items():
            label = entry["title"] if first else ""
            first = False
            if "n/a" in m:
                lines.append(f"{label:<26} {name:<8} {'n/a':>9}  {m['n/a'].splitlines()[0][:60]}")
                continue
            lines.append(
                f"{label:<26} {name:<8} {m['req_per_s']:>9,.0f} {m['mib_per_s']:>8,.1f} "
                f"{m['p50_ms']:>7.2f} {m['p99_ms']:>7.2f} {m['server_cpu_pct']:>6.0f} "
                f"{m['rss_mib']:>8.1f} {m['origin_requests']:>7,} {m['errors']:>4} "
                f"{m['wrk_cpu_pct']:>5.0f} {m['other_cpu_pct']:>5.0f}  {m['check']}")
    lines += ["", f"{'accel req/s ratio':<26} {'to nginx':>9} {'to Varnish':>11}"]
    for entry in summary:
        cells = [f"{entry[k]:>.2f}x" if k in entry else "n/a"
                 for k in ("accel_to_nginx", "accel_to_varnish")]
        lines.append(f"{entry['title']:<26} {cells[0]:>9} {cells[1]:>11}")
    return "\n".join(lines)


def chart(json_path: Path, png_path: Path) -> str | None:
    """Draw the chart with matplotlib from bench/.venv (created on first use)."""
    python = VENV / "bin" / "python"
    try:
        if not python.exists():
            print(f"creating {VENV} for matplotlib ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        probe = subprocess.run([str(python), "-c", "import matplotlib"],
                               stderr=subprocess.DEVNULL, timeout=120, check=False)
        if probe.returncode != 0:
            subprocess.run([str(python), "-m", "pip", "install", "-q", "matplotlib"],
                           check=True, timeout=600)
        subprocess.run([str(python), str(HERE / "chart.py"), str(json_path), str(png_path)],
                       check=True, timeout=300)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        return f"no chart: {error}"
    return None


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition of 2 s, 1 s warm-up")
    parser.add_argument("--repetitions", type=int, default=3, help="runs per row and system")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1,
                        help="seconds of unmeasured load per row and system before the runs")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (one client CPU)")
    parser.add_argument("--server-cpu", type=int, default=1,
                        help="CPU for the systems under test and the origin")
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU for wrk")
    parser.add_argument("--origin-cpu", type=int, default=None,
                        help="CPU for the origin (default: the server CPU)")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--systems", default=",".join(SYSTEM_ORDER),
                        help="comma-separated subset of accel,nginx,varnish")
    parser.add_argument("--rows", default=",".join(row.key for row in ROWS),
                        help="comma-separated subset of " + ",".join(r.key for r in ROWS))
    parser.add_argument("--accel-root", type=Path, default=REPO,
                        help="directory put on PYTHONPATH for accel (default: this checkout)")
    parser.add_argument("--twistd", default=default_twistd(), help="twistd to run accel with")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = parser.parse_args(argv)
    if min(args.repetitions, args.duration) < 1 or args.warmup < 0:
        parser.error("--repetitions and --duration must be at least 1, --warmup at least 0")
    if args.quick:
        args.repetitions, args.duration, args.warmup = 1, 2, 1
    if args.no_pin:
        args.server_cpu = args.client_cpu = args.origin_cpu = None
    elif args.origin_cpu is None:
        args.origin_cpu = args.server_cpu
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted_systems = [s for s in args.systems.split(",") if s]
    wanted_rows = set(args.rows.split(","))
    rows = [row for row in ROWS if row.key in wanted_rows]
    if not args.no_pin and not {args.server_cpu, args.client_cpu} <= os.sched_getaffinity(0):
        print(f"! CPUs {args.server_cpu} and {args.client_cpu} are not both available: "
              "use --server-cpu/--client-cpu or --no-pin", file=sys.stderr)
        return 2
    tools = ensure_tools(install=not args.no_install)
    if tools["wrk"] is None or tools["nginx"] is None:
        print("! wrk and nginx are required (nginx is the origin); install them or run as root",
              file=sys.stderr)
        return 2
    args.wrk = tools["wrk"]

    base = Path(tempfile.mkdtemp(prefix="accel-bench-"))
    base.chmod(0o755)
    started: list[Server] = []
    systems: list[System] = []
    skipped: dict[str, dict[str, str]] = {}
    unavailable: dict[str, str] = {}
    try:
        docroot, static_root = base / "docroot", base / "static"
        make_content(docroot, static_root)
        origin = Origin(base, docroot, args.origin_cpu)
        started.append(origin.server)
        problem = origin.start()
        if problem is not None:
            print(f"! origin did not start: {problem}\n{origin.server.log_tail()}",
                  file=sys.stderr)
            return 1
        rows = with_origin_validators(rows, origin.port)

        candidates: list[System] = []
        for name in SYSTEM_ORDER:
            if name not in wanted_systems:
                continue
            if name == "nginx":
                candidates.append(nginx_system(base, origin, static_root, args.server_cpu))
            elif name == "varnish":
                if tools["varnishd"] is None:
                    unavailable[name] = "varnishd not found"
                    print("! skipping varnish: varnishd not found", flush=True)
                    continue
                candidates.append(varnish_system(base, origin, args.server_cpu))
            elif name == "accel":
                reason, help_text = accel_help(args.twistd, args.accel_root)
                if reason is not None:
                    unavailable[name] = reason
                    print(f"! skipping accel: {reason}", flush=True)
                    continue
                candidates.append(accel_system(base, origin, static_root, args.server_cpu,
                                               args.twistd, args.accel_root,
                                               with_static="--static" in help_text))
        for system in candidates:
            started.extend(system.all_servers())
            problem = system.start(ROWS[0].path, timeout=30)
            if problem is not None:
                lines = problem.splitlines()
                unavailable[system.name] = f"did not start: {lines[0]}" + (
                    f" ({lines[-1].strip()})" if len(lines) > 1 else "")
                print(f"! skipping {system.name}: {problem}", flush=True)
                system.stop()
                continue
            systems.append(system)
            if system.static_problem is not None:
                print(f"! no static row for {system.name}: {system.static_problem}", flush=True)
            if system.static_port is None:
                lines = (system.static_problem or "").splitlines()
                skipped.setdefault("static-1k", {})[system.name] = (
                    "serves no files" if system.name == "varnish"
                    else f"--static failed ({lines[-1].strip()})" if lines
                    else "no --static yet")
        if not systems:
            print("! no system started", file=sys.stderr)
            return 1
        print("systems: " + ", ".join(f"{s.name} :{s.port} ({s.note})" for s in systems)
              + f"; origin :{origin.port}", flush=True)

        script = write_script(base)
        runs: list[dict] = []
        deadline_note = (len(rows) * len(systems) * (args.repetitions * args.duration
                                                     + args.warmup))
        print(f"about {deadline_note / 60:.1f} min of load: {len(rows)} rows x "
              f"{len(systems)} systems x {args.repetitions} x {args.duration:g} s", flush=True)
        for row in rows:
            active = []
            for system in systems:
                port = system.static_port if row.kind == "static" else system.port
                if port is None:
                    continue
                problem = warm(system, row)
                if problem is None and args.warmup > 0:
                    try:
                        run_wrk(args.wrk, f"http://127.0.0.1:{port}{row.path}",
                                seconds=args.warmup, connections=args.connections,
                                threads=args.threads, headers=row.headers,
                                cpu=args.client_cpu,
                                script=write_script(base, True) if row.unique else script)
                    except WrkError as error:
                        problem = str(error)
                if problem is not None:
                    skipped.setdefault(row.key, {})[system.name] = f"warm-up failed: {problem}"
                    print(f"! {row.key} {system.name}: warm-up failed: {problem}", flush=True)
                    continue
                active.append(system)
            for repetition in range(args.repetitions):
                for system in active:  # interleaved: A B C A B C
                    if not all(server.alive() for server in system.all_servers()):
                        skipped.setdefault(row.key, {})[system.name] = "server died"
                        continue
                    try:
                        run = measure(system, row, origin, args,
                                      write_script(base, True) if row.unique else script,
                                      args.duration)
                    except WrkError as error:
                        print(f"! {row.key} {system.name}: {error}", flush=True)
                        continue
                    run["repetition"] = repetition
                    run["check"] = check(row, run)
                    runs.append(run)
                    print(f"  {row.key:<10} {system.name:<8} #{repetition + 1} "
                          f"{run['req_per_s']:>9,.0f} req/s {run['mib_per_s']:>8,.1f} MiB/s "
                          f"p99 {run['p99_ms']:6.2f} ms  cpu {run['server_cpu_pct']:3.0f}% "
                          f"origin {run['origin_requests']:,} {run['check']}", flush=True)

        names = [name for name in SYSTEM_ORDER if name in wanted_systems]
        summary = summarize(runs, names, rows, skipped, unavailable)
        print()
        print(table(summary))
        others = [r["other_cpu_pct"] for r in runs]
        if others and statistics.median(others) > 10:
            print(f"\n! other processes used a median {statistics.median(others):.0f}% "
                  "of a CPU during the runs: numbers are noisy")
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        RESULTS.mkdir(exist_ok=True)
        json_path = RESULTS / f"{stamp}.json"
        document = {
            "timestamp": stamp,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "cpu": _cpu_model(), "python": platform.python_version()},
            "versions": {"nginx": version_of([tools["nginx"], "-v"], r"(nginx/\S+)"),
                         "varnish": version_of([tools["varnishd"], "-V"], r"(varnish-[\d.]+)")
                         if tools["varnishd"] else "absent",
                         "wrk": version_of([tools["wrk"], "-v"], r"(wrk \S+)"),
                         "accel": accel_revision(args.accel_root)},
            "systems": {s.name: s.note for s in systems},
            "rows": [asdict(row) for row in rows],
            "unavailable": unavailable,
            "summary": summary,
            "runs": runs,
        }
        json_path.write_text(json.dumps(document, indent=1))
        print(f"\nresults: {json_path}")
        if not args.no_chart:
            png_path = json_path.with_suffix(".png")
            problem = chart(json_path, png_path)
            print(f"! {problem}" if problem else f"chart:   {png_path}")
        return 0
    finally:
        for server in reversed(started):
            server.stop()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())

"""The origin and the three systems under test, each an instance of its own under one temp dir.

Every instance has its own prefix, configuration, pid file and cache directory, listens on
127.0.0.1 only, on a port the kernel picked, and is started (pinned) and stopped here by PID.
Nothing here reads or writes the system services' configuration, logs or caches.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from procs import Server, free_port, pin_prefix, wait_ready

# Objects served by the origin, by URL path.  Sizes are exact; the text object compresses
# roughly 4:1 (words drawn from a small vocabulary), the others are random bytes.
OBJECTS = {
    "/cache/1k.bin": 1024,
    "/cache/64k.bin": 64 * 1024,
    "/cache/1m.bin": 1024 * 1024,
    "/cache/text-100k.txt": 100 * 1024,
    "/private/1k.bin": 1024,
}
# Files the static-serving row reads straight from disk (no origin involved).
STATIC_OBJECTS = {"/1k.bin": 1024}

# accel's static serving (``--static PREFIX=DIR``); used once ``twistd accel --help``
# mentions --static.
ACCEL_STATIC_ARGS = ("--static", "/={root}")


def _text(size: int, rng: random.Random) -> bytes:
    words = [w.encode() for w in (  # noqa: SIM905 (a word list reads better as one string)
        "cache accelerator origin response request header freshness validator stale "
        "revalidate vary etag age public private max-age shared store key body "
        "stream chunk gzip brotli identity content encoding negotiation").split()]
    out = bytearray()
    while len(out) < size:
        line = b" ".join(rng.choice(words) for _ in range(rng.randint(6, 14)))
        out += line + b".\n"
    return bytes(out[:size])


def make_content(docroot: Path, static_root: Path) -> None:
    """Write the origin's objects under ``docroot`` and the static row's under ``static_root``."""
    rng = random.Random(20240604)
    for tree, objects in ((docroot, OBJECTS), (static_root, STATIC_OBJECTS)):
        for path, size in objects.items():
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            body = _text(size, rng) if path.endswith(".txt") else rng.randbytes(size)
            target.write_bytes(body)
            target.chmod(0o644)


def _nginx_common(prefix: Path) -> str:
    """Directives every nginx instance here shares: its own pid, logs and temp paths."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    tmp = prefix / "tmp"
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir(parents=True, exist_ok=True)
    return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/plain txt; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server_tokens off;
"""


def _nginx_server(name: str, prefix: Path, body: str, cpu: int | None) -> Server:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_common(prefix) + body + "}\n")
    return Server(
        name=name,
        argv=pin_prefix(cpu) + ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"),
                                "-c", str(conf)],
        log=prefix / "stdout.log",
    )


class Origin:
    """nginx serving the objects from disk, one access-log line per request it serves."""

    def __init__(self, base: Path, docroot: Path, cpu: int | None) -> None:
        self.port = free_port()
        self.access_log = base / "origin" / "access.log"
        self._offset = 0
        self._count = 0
        self.server = _nginx_server("origin nginx", base / "origin", f"""
    log_format uri '$request_uri';
    server {{
        listen 127.0.0.1:{self.port};
        root {docroot};
        access_log {self.access_log} uri;
        etag on;
        location /cache/ {{ add_header Cache-Control "max-age=3600" always; }}
        location /private/ {{ add_header Cache-Control "no-store" always; }}
    }}
""", cpu)

    def start(self) -> str | None:
        self.server.start()
        return wait_ready(self.server, self.port, "/cache/1k.bin", timeout=15)

    def requests_served(self) -> int:
        """Requests logged so far (reads only what was appended since the last call)."""
        try:
            with open(self.access_log, "rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return self._count
        complete = chunk.rfind(b"\n") + 1
        self._count += chunk.count(b"\n", 0, complete)
        self._offset += complete
        return self._count


@dataclass
class System:
    """A system under test: the servers that make it up and the ports its rows use.

    ``static`` is an optional separate instance for the static-file row; when it fails to
    start, only that row goes without this system (``static_problem`` says why).
    """

    name: str
    port: int
    servers: list[Server]
    static_port: int | None = None
    static: Server | None = None
    static_problem: str | None = None
    note: str = ""

    def all_servers(self) -> list[Server]:
        return self.servers + ([self.static] if self.static is not None else [])

    def pids(self, static: bool = False) -> list[int]:
        """Live PIDs of the servers a row measures: the separate static instance for the
        static row when there is one, otherwise every main server of the system."""
        chosen = [self.static] if static and self.static is not None else self.servers
        return [pid for server in chosen for pid in server.pids()]

    def start(self, ready_path: str, timeout: float) -> str | None:
        """Start every server; None when the main ones answer, else the reason (with logs)."""
        for server in self.all_servers():
            server.start()
        for server in self.servers:
            problem = wait_ready(server, self.port, ready_path, timeout)
            if problem is not None:
                return problem + _log_tail(server)
        if self.static is not None:
            problem = wait_ready(self.static, self.static_port, next(iter(STATIC_OBJECTS)),
                                 timeout)
            if problem is not None:
                self.static_problem = problem + _log_tail(self.static)
                self.static.stop()
                self.static, self.static_port = None, None
        return None

    def stop(self) -> None:
        for server in self.all_servers():
            server.stop()


def _log_tail(server: Server) -> str:
    tail = server.log_tail()
    return f"\n--- last lines of {server.log} ---\n{tail}" if tail else ""


def nginx_system(base: Path, origin: Origin, static_root: Path, cpu: int | None) -> System:
    """nginx proxy_cache in front of the origin, plus a static server on a second port.

    One worker; keepalive to the origin; freshness from the origin's Cache-Control
    (``proxy_cache_valid`` is only the fallback for responses that carry none).
    """
    port, static_port = free_port(), free_port()
    prefix = base / "nginx"
    server = _nginx_server("nginx", prefix, f"""
    access_log off;
    proxy_cache_path {prefix}/cache levels=1:2 keys_zone=bench:16m max_size=2g
                     inactive=1h use_temp_path=off;
    upstream origin {{ server 127.0.0.1:{origin.port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_valid 200 10m;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
    server {{
        listen 127.0.0.1:{static_port};
        root {static_root};
    }}
""", cpu)
    return System(name="nginx", port=port, static_port=static_port, servers=[server],
                  note="proxy_cache, 1 worker, keepalive to origin; static: same process")


def varnish_system(base: Path, origin: Origin, cpu: int | None) -> System:
    """Varnish with the built-in VCL and a backend, file storage, one thread pool."""
    port = free_port()
    work = base / "varnish"
    work.mkdir(parents=True, exist_ok=True)
    argv = pin_prefix(cpu) + [
        "varnishd", "-F", "-j", "none",
        "-n", str(work / "instance"),
        "-a", f"127.0.0.1:{port}",
        "-T", "127.0.0.1:0",
        "-b", f"127.0.0.1:{origin.port}",
        "-s", f"file,{work / 'storage.bin'},1G",
        "-P", str(work / "varnishd.pid"),
        "-p", "thread_pools=1",
    ]
    server = Server(name="varnishd", argv=argv, log=work / "stdout.log")
    return System(name="varnish", port=port, servers=[server],
                  note="default VCL + backend, file storage, 1 thread pool")


def accel_help(twistd: str, root: Path) -> tuple[str | None, str]:
    """(None, help text) when ``twistd accel --help`` works, else (reason, output)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    try:
        done = subprocess.run([twistd, "accel", "--help"], env=env, cwd=root, timeout=60,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run {twistd}: {error}", ""
    text = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        return f"`twistd accel --help` failed (exit {done.returncode}): {last[0]}", text
    return None, text


def accel_system(base: Path, origin: Origin, static_root: Path, cpu: int | None,
                 twistd: str, root: Path, with_static: bool) -> System:
    """accel under twistd, one worker, its own cache dir; a second instance for --static."""
    work = base / "accel"
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(root))
    port = free_port()
    servers = [Server(
        name="accel",
        argv=pin_prefix(cpu) + [
            twistd, "-n", "--pidfile=", "accel",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--origin", f"http://127.0.0.1:{origin.port}",
            "--cache-dir", str(work / "cache"),
            "--access-log", "off",  # as the nginx instance: access_log off
            "--workers", "1",
        ],
        log=work / "accel.log", env=env, cwd=work,
    )]
    static_port, static = None, None
    if with_static:
        static_port = free_port()
        static_args = [arg.format(root=static_root) for arg in ACCEL_STATIC_ARGS]
        static = Server(
            name="accel static",
            argv=pin_prefix(cpu) + [
                twistd, "-n", "--pidfile=", "accel",
                "--listen", f"tcp:{static_port}:interface=127.0.0.1",
                *static_args,
                "--cache-dir", str(work / "static-cache"),
                "--access-log", "off",
                "--workers", "1",
            ],
            log=work / "accel-static.log", env=env, cwd=work,
        )
    return System(name="accel", port=port, static_port=static_port, static=static,
                  servers=servers, note="twistd accel --workers 1")

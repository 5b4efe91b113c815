"""End to end: ``twistd -n accel`` as a separate process, spoken to over HTTP.

These start real processes (accel, and an origin where one is needed) and
talk to them over real sockets, as a user would. Each process is ended by
its PID when the test is done.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_tap import SOURCE_ROOT, twistd

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 30.0


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a UNIX socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def free_port() -> int:
    """A port that was free a moment ago (for processes that cannot take 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepting(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(predicate, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"{what}: process exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not ready within {START_TIMEOUT} s")
        time.sleep(0.05)  # polling another process's start-up: no clock to inject


@contextmanager
def process(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """Run ``args`` with this checkout first on ``PYTHONPATH`` (and ``env`` added); end it by PID."""
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT, **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def accel(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               "-n", "--pidfile=", "accel", *args]  # fmt: skip
    return process(command, tmp_path / "accel.log", env)


def get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None):
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def test_default_run_proxies_and_caches_the_demo_origin(tmp_path: Path) -> None:
    """With no origin, accel serves its demo origin (over a UNIX socket) and caches it."""
    sock = str(tmp_path / "accel.sock")
    with accel(tmp_path, "--listen", f"unix:{sock}", "--cache-dir", str(tmp_path / "cache")) as proc:
        _wait_for(lambda: os.path.exists(sock), "accel", proc)
        conn = UnixHTTPConnection(sock)
        first, body1 = get(conn, "/")
        second, body2 = get(conn, "/")
        assert first.status == 200 and b"accel" in body1
        assert "fwd=uri-miss" in first.getheader("cache-status")
        assert second.getheader("cache-status").startswith("accel; hit")
        assert body2 == body1
        assert second.getheader("via") == "1.1 accel"
    # twistd -n logs to standard output, so the access log goes there too,
    # as plain combined-format lines (flushed when accel stops).
    output = (tmp_path / "accel.log").read_text("latin-1")
    logged = re.findall(r'^unix - - \[[^]]+\] "GET / HTTP/1.1" 200 \d+ "-" "[^"]*" (\w+) ', output, re.MULTILINE)
    assert logged == ["MISS", "HIT"], output[-2000:]
    assert "Traceback" not in output, output[-3000:]  # the demo origin's connections too


def test_unix_socket_origin_is_fetched_once_for_many_hits(tmp_path: Path) -> None:
    """--origin unix:/path: the first GET reaches the origin, the next ones do not."""
    origin_sock = str(tmp_path / "origin.sock")
    accel_sock = str(tmp_path / "accel.sock")
    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), f"unix:{origin_sock}"]
    with process(origin_cmd, tmp_path / "origin.log") as origin:
        _wait_for(lambda: os.path.exists(origin_sock), "origin", origin)
        with accel(tmp_path, "--listen", f"unix:{accel_sock}", "--origin", f"unix:{origin_sock}",
                   "--cache-dir", str(tmp_path / "cache"), "--access-log", str(tmp_path / "access.log")) as proc:  # fmt: skip
            _wait_for(lambda: os.path.exists(accel_sock), "accel", proc)
            conn = UnixHTTPConnection(accel_sock)
            bodies = [get(conn, "/count")[1] for _ in range(3)]
            assert bodies == [b"/count 1\n"] * 3
            private = [get(conn, "/private")[1] for _ in range(2)]
            assert private == [b"/private 1\n", b"/private 2\n"]


def test_tcp_listener_fronts_a_tcp_origin(tmp_path: Path) -> None:
    """--origin http://127.0.0.1:PORT --listen tcp:PORT, as in the README."""
    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), "tcp:0:interface=127.0.0.1"]
    with process(origin_cmd, tmp_path / "origin.log") as origin:
        log = tmp_path / "origin.log"
        _wait_for(lambda: b"listening" in log.read_bytes(), "origin", origin)
        origin_port = int(log.read_bytes().split(b"listening")[1].split()[0])
        port = free_port()
        with accel(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1",
                   "--origin", f"http://127.0.0.1:{origin_port}") as proc:  # fmt: skip

            _wait_for(lambda: accepting(port), "accel", proc)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            response, body = get(conn, "/count")
            assert response.status == 200 and body == b"/count 1\n"
            assert get(conn, "/count")[1] == b"/count 1\n"


def test_bad_origin_is_one_line_at_start_up() -> None:
    """A bad --origin ends start-up with one line naming it, no traceback."""
    result = twistd("--origin", "ftp://example.com")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--origin" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "auto"])
def test_tls_listener_terminates_https(tmp_path: Path, workers: str) -> None:
    """--listen ssl:PORT:privateKey=...: accel terminates TLS and serves through it, to a
    client that offers ALPN as browsers and curl do (h2 and http/1.1: it gets http/1.1),
    in one process and with the default workers."""
    import ssl

    from tests.test_upstream import _self_signed

    pem, ca = _self_signed(str(tmp_path))
    key_file = tmp_path / "server.pem"
    key_file.write_bytes(pem)
    port = free_port()
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    listen = f"ssl:{port}:privateKey={key_file}:interface=127.0.0.1"
    with accel(tmp_path, "--listen", listen, "--workers", workers) as proc:

        _wait_for(lambda: accepting(port), "accel", proc)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        response, body = get(conn, "/")
        assert response.status == 200 and b"accel" in body
        assert conn.sock.selected_alpn_protocol() == "http/1.1"
        assert get(conn, "/")[0].getheader("cache-status").startswith("accel; hit")


def test_port_in_use_is_one_line_and_a_failed_start() -> None:
    """A listener that cannot bind ends start-up with one line, exit status non-zero."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = twistd("--listen", f"tcp:{port}:interface=127.0.0.1")
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "accel:" in line]
    assert len(errors) == 1 and f"--listen tcp:{port}" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_daemon_mode_caches_across_workers(tmp_path: Path) -> None:
    """``twistd accel`` without ``-n`` forks into a daemon after building the service: the
    store still works in every worker (a miss per URL, then hits wherever the request lands)
    and its database stays sound; the pid file stops it all. The access log is access.log
    beside twistd's log file, a line per request from whichever worker answered."""
    import signal
    import sqlite3

    port = free_port()
    pidfile = tmp_path / "twistd.pid"
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
               f"--pidfile={pidfile}", f"--logfile={tmp_path / 'twistd.log'}", "accel",
               "--listen", f"tcp:{port}:interface=127.0.0.1", "--cache-dir", str(cache),
               "--workers", "2"]  # fmt: skip
    subprocess.run(command, env=env, check=True, timeout=60, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while not (pidfile.exists() and accepting(port)):
        assert time.monotonic() < deadline, (tmp_path / "twistd.log").read_text()
        time.sleep(0.05)  # polling another process's start-up: no clock to inject
    pid = int(pidfile.read_text())
    try:
        statuses = []
        for n in range(12):  # new connections: the kernel spreads them over both workers
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            statuses.append(get(conn, f"/big?size={n % 3 + 1}")[0].getheader("cache-status"))
            conn.close()
        assert sum("fwd=uri-miss" in s for s in statuses) == 3, statuses
        with sqlite3.connect(cache / "cache.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert "malformed" not in (tmp_path / "twistd.log").read_text()
    logged = (tmp_path / "access.log").read_text("latin-1").splitlines()
    assert len(logged) == 12, logged
    assert all(re.match(r'127\.0\.0\.1 - - \[[^]]+\] "GET /big\?size=\d HTTP/1.1" 200 ', line) for line in logged)
    assert "GET /big" not in (tmp_path / "twistd.log").read_text()


def _origin_port(origin: subprocess.Popen, log: Path) -> int:
    _wait_for(lambda: b"listening" in log.read_bytes(), "origin", origin)
    return int(log.read_bytes().split(b"listening")[1].split()[0])


def test_sigterm_lets_a_response_in_flight_finish(tmp_path: Path) -> None:
    """SIGTERM while a slow body streams: the client gets all of it, new connections are
    refused, and twistd ends (by the signal, as twistd does) once the response is done."""
    import hashlib
    import signal

    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), "tcp:0:interface=127.0.0.1"]
    with process(origin_cmd, tmp_path / "origin.log") as origin:
        origin_port = _origin_port(origin, tmp_path / "origin.log")
        port = free_port()
        with accel(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "1",
                   "--origin", f"http://127.0.0.1:{origin_port}") as proc:  # fmt: skip
            _wait_for(lambda: accepting(port), "accel", proc)
            size = 4 * 1024 * 1024  # streamed by the origin over about a second
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", f"/blob/1?size={size}")
            response = conn.getresponse()
            first = response.read(64 * 1024)
            proc.send_signal(signal.SIGTERM)
            rest = response.read()
            body = first + rest
            assert len(body) == size
            assert hashlib.sha256(body).hexdigest() == response.getheader("x-checksum")
            assert proc.wait(timeout=START_TIMEOUT) == -signal.SIGTERM
            assert not accepting(port)
    output = (tmp_path / "accel.log").read_text("latin-1")
    assert "waiting up to 10s" in output and "Traceback" not in output, output[-3000:]
    assert "aborting" not in output


def test_sigusr1_reopens_the_access_log_in_every_worker(tmp_path: Path) -> None:
    """--workers 2: after logrotate's move and SIGUSR1 to twistd, every worker writes
    to a new access.log; the lines before are all in the moved file."""
    import signal

    port = free_port()
    log = tmp_path / "access.log"
    with accel(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", "2",
               "--access-log", str(log)) as proc:  # fmt: skip
        output = tmp_path / "accel.log"
        _wait_for(lambda: accepting(port) and b"worker 1 serving" in output.read_bytes(), "accel", proc)

        def requests(path: str, count: int) -> None:
            for _ in range(count):  # new connections: the kernel spreads them over both workers
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                assert get(conn, path)[0].status == 200
                conn.close()

        requests("/?before", 8)
        log.rename(tmp_path / "access.log.1")
        proc.send_signal(signal.SIGUSR1)
        _wait_for(lambda: output.read_bytes().count(b"access log reopened") == 2, "reopen", proc)
        requests("/?after", 8)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=START_TIMEOUT)
    before = (tmp_path / "access.log.1").read_text("latin-1").splitlines()
    after = log.read_text("latin-1").splitlines()
    assert len(before) == 8 and all('"GET /?before ' in line for line in before), before
    assert len(after) == 8 and all('"GET /?after ' in line for line in after), after


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_reloads_the_config_file(tmp_path: Path, workers: str) -> None:
    """The route's origin changed in the file, then SIGHUP: the next requests reach the
    new origin (in one process, even on a connection opened before), and accel serves on.
    With workers each child is replaced by one serving the new file; the old ones end
    by the SIGTERM that lets them drain (not by the SIGHUP they were sent too)."""
    import signal

    config = tmp_path / "accel.toml"
    route = '[cache]\nenabled = false\n[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://127.0.0.1:%d"\n'
    origin_cmd = [sys.executable, str(HERE / "origin_server.py"), "tcp:0:interface=127.0.0.1"]
    with process(origin_cmd, tmp_path / "a.log") as a, process(origin_cmd, tmp_path / "b.log") as b:
        config.write_text(route % _origin_port(a, tmp_path / "a.log"))
        second = _origin_port(b, tmp_path / "b.log")
        port = free_port()
        output = tmp_path / "accel.log"
        with accel(tmp_path, "--listen", f"tcp:{port}:interface=127.0.0.1", "--workers", workers,
                   "--config", str(config)) as proc:  # fmt: skip
            _wait_for(lambda: accepting(port) and (workers == "1" or b"worker 1 serving" in output.read_bytes()), "accel", proc)
            kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            assert get(kept, "/count")[1] == b"/count 1\n"  # origin a: its first
            assert get(kept, "/count")[1] == b"/count 2\n"
            children = re.findall(rb"worker 1 serving \(pid (\d+)\)", output.read_bytes())
            for pid in children:
                os.kill(int(pid), signal.SIGHUP)  # a worker ignores it: the parent drives reloads
            config.write_text(route % second)
            proc.send_signal(signal.SIGHUP)
            _wait_for(lambda: b"configuration reloaded" in output.read_bytes(), "reload", proc)
            first = 1
            if workers == "1":
                assert get(kept, "/count")[1] == b"/count 1\n"  # origin b, same connection
                first = 2
            else:
                _wait_for(lambda: b"process a reload replaced has ended" in output.read_bytes(), "replacement", proc)
            bodies = []
            for _ in range(6):  # new connections: every worker serves the new file
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                bodies.append(get(conn, "/count")[1])
                conn.close()
            # Origin b's own count, in order: none of them reached origin a.
            assert bodies == [b"/count %d\n" % n for n in range(first, first + 6)]
            assert proc.poll() is None
    text = output.read_text("latin-1")
    assert "Traceback" not in text and "restarting" not in text, text[-3000:]
    if workers == "2":
        assert "by signal" not in text, text[-3000:]

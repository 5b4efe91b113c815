"""``--workers``: several processes, one set of listeners, one store.

Pure parts first (how many workers, the CPUs counted, the TLS wrapping, the
sockets bound, the order of stopping); then end to end: ``twistd -n
accel`` with several workers as a process in front of a small origin
process. Which process holds each client connection is read from ``/proc``
(socket inodes), so the tests need no debug header.
"""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import ssl
import sys
import textwrap
import time
from pathlib import Path

import pytest
from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory

from accel.app import _InOrder
from accel.config import Config
from accel.workers import (
    WorkerPlan,
    available_cpus,
    bind_listeners,
    plan_workers,
    serving_factory,
)
from tests.test_e2e import _wait_for, accel, process
from tests.test_upstream import _self_signed

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

# --- how many workers ----------------------------------------------------------


def test_available_cpus_is_the_affinity_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPUs this process may run on, not all the machine's."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert available_cpus() == 2


@pytest.mark.parametrize("count, expected", [(6, 6), (None, 1)])
def test_available_cpus_without_affinity(monkeypatch: pytest.MonkeyPatch, count: int | None, expected: int) -> None:
    """Without an affinity mask, the CPU count; at least 1 when it is unknown."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: count)
    assert available_cpus() == expected


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 2), (64, 64), (5000, 1024)])
def test_auto_is_one_worker_per_cpu(cpus: int, expected: int) -> None:
    """auto runs one worker per usable CPU (at most 1024), TLS and UNIX listeners included."""
    config = Config(listen=("tcp:8080", "ssl:8443", "unix:/run/accel.sock", "tcp6:8080"))
    assert plan_workers(config, cpus) == WorkerPlan(expected)


@pytest.mark.parametrize("workers", [1, 3, 16])
def test_an_explicit_number_is_taken_as_it_is(workers: int) -> None:
    """--workers N runs N workers, whatever the CPU count."""
    assert plan_workers(Config(workers=workers), 4) == WorkerPlan(workers)


def test_auto_settles_on_one_worker_for_an_unshareable_listener() -> None:
    """auto with a listener several processes cannot share: one worker, and why."""
    config = Config(listen=("tcp:8080", "systemd:domain=INET:index=0"))
    assert plan_workers(config, 4) == WorkerPlan(
        1, "--workers auto: one worker, as the listener 'systemd:domain=INET:index=0' cannot be shared by several"
    )


def test_one_cpu_needs_no_reason() -> None:
    """On one CPU auto is one worker anyway: nothing to explain."""
    assert plan_workers(Config(listen=("systemd:domain=INET:index=0",)), 1) == WorkerPlan(1)


# --- sockets and factories ---------------------------------------------------------


@pytest.fixture(scope="module")
def tls_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed server key and certificate (one PEM file), and its CA file."""
    directory = tmp_path_factory.mktemp("tls")
    pem, ca = _self_signed(str(directory))
    (directory / "server.pem").write_bytes(pem)
    return str(directory / "server.pem"), ca


def test_plain_listeners_serve_the_factory_itself(tls_key: tuple[str, str]) -> None:
    """A worker serves tcp and unix sockets with the HTTP factory as it is."""
    factory = Factory()
    assert serving_factory("tcp:0", factory, reactor) is factory
    assert serving_factory("unix:/tmp/x.sock", factory, reactor) is factory


def test_tls_listeners_wrap_the_factory_in_tls(tls_key: tuple[str, str]) -> None:
    """A worker wraps its inherited ssl socket's factory in TLS, as listenSSL would."""
    factory = Factory()
    served = serving_factory(f"ssl:0:privateKey={tls_key[0]}", factory, reactor)
    assert isinstance(served, TLSMemoryBIOFactory) and served.wrappedFactory is factory


def test_tls_listener_gets_a_socket_per_worker_on_one_port(tls_key: tuple[str, str]) -> None:
    """An ssl listener is bound like tcp: one SO_REUSEPORT socket per worker, one port."""
    (socks,) = bind_listeners([f"ssl:0:privateKey={tls_key[0]}:interface=127.0.0.1"], 3, reactor)
    try:
        assert len({sock.fileno() for sock in socks}) == 3
        assert {sock.getsockname() for sock in socks} == {socks[0].getsockname()}
        assert socks[0].family == socket.AF_INET
    finally:
        for sock in socks:
            sock.close()


def test_a_port_another_accel_listens_on_is_in_use() -> None:
    """SO_REUSEPORT does not let the workers join another process's listener:
    binding answers "address in use" as for one process."""
    with socket.socket() as other:  # another accel's worker socket, same user
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError) as info:
            bind_listeners([f"tcp:{port}:interface=127.0.0.1"], 2, reactor)
    assert info.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_an_ipv6_interface_makes_ipv6_sockets() -> None:
    """tcp with an IPv6 interface binds IPv6 sockets, as Twisted's own port does."""
    try:
        (socks,) = bind_listeners(["tcp:0:interface=\\:\\:1"], 2, reactor)
    except OSError as error:
        pytest.skip(f"no IPv6 loopback: {error}")
    try:
        assert {sock.family for sock in socks} == {socket.AF_INET6}
    finally:
        for sock in socks:
            sock.close()


# --- stopping in order -------------------------------------------------------------


class _Slow(Service):
    """Records when it is told to stop; finishes stopping when ``done`` fires."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self._log = log
        self.done: Deferred[None] = Deferred()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._log.append(self.name)
        return self.done


def test_services_stop_one_after_another_last_first() -> None:
    """The cleanup added first waits until the workers added later have stopped."""
    log: list[str] = []
    top = _InOrder()
    cleanup, pool = _Slow("cleanup", log), _Slow("pool", log)
    cleanup.setServiceParent(top)
    pool.setServiceParent(top)
    top.startService()
    finished: list[object] = []
    top.stopService().addCallback(finished.append)
    assert log == ["pool"]
    pool.done.callback(None)
    assert log == ["pool", "cleanup"] and finished == []
    cleanup.done.callback(None)
    assert finished == [None]


def test_a_failed_stop_does_not_skip_the_rest() -> None:
    """A service that fails to stop is logged; the ones before it still stop."""
    log: list[str] = []
    top = _InOrder()
    cleanup, pool = _Slow("cleanup", log), _Slow("pool", log)
    cleanup.setServiceParent(top)
    pool.setServiceParent(top)
    top.startService()
    top.stopService()
    pool.done.errback(RuntimeError("boom"))
    assert log == ["pool", "cleanup"]


# --- end to end ----------------------------------------------------------------------

#: GET: a body counting the origin's GETs, cacheable for a minute; POST: 204.
ORIGIN = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class Count(Resource):
        isLeaf = True
        gets = 0

        def render_GET(self, request):
            Count.gets += 1
            request.setHeader(b"cache-control", b"max-age=60")
            return b"%d" % Count.gets

        def render_POST(self, request):
            request.setResponseCode(204)
            return b""

    port = reactor.listenTCP(0, Site(Count()), interface="127.0.0.1")
    print("listening", port.getHost().port, flush=True)
    reactor.run()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _server_side_inodes(port: int) -> set[str]:
    """Inodes of established TCP connections whose local port is ``port``."""
    found = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.split(":")[1], 16) == port:
                found.add(inode)
    return found


def _get(conn: http.client.HTTPConnection, path: str = "/count") -> bytes:
    conn.request("GET", path)
    return conn.getresponse().read()


@needs_proc
def test_two_workers_share_connections_and_the_store(tmp_path: Path) -> None:
    """Connections land on two processes; an invalidation through one is seen by the other."""
    origin_log = tmp_path / "origin.log"
    with process([sys.executable, "-c", ORIGIN], origin_log) as origin:
        _wait_for(lambda: b"listening" in origin_log.read_bytes(), "origin", origin)
        origin_port = int(origin_log.read_bytes().split()[1])
        port = _free_port()
        with accel(
            tmp_path,
            "--workers", "2",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--origin", f"http://127.0.0.1:{origin_port}",
            "--cache-dir", str(tmp_path / "cache"),
        ) as proxy:  # fmt: skip

            def ready() -> bool:
                try:
                    return len(_children(proxy.pid)) == 1 and _get(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) == b"1"
                except OSError:
                    return False

            _wait_for(ready, "accel with two workers", proxy)
            (child,) = _children(proxy.pid)
            conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
            for _ in range(3):  # enough for each worker's hot tier to hold the hit
                assert [_get(c) for c in conns] == [b"1"] * 16

            established = _server_side_inodes(port)
            parent_has = established & _socket_inodes(proxy.pid)
            child_has = established & _socket_inodes(child)
            assert parent_has and child_has, "both workers hold client connections"

            conns[0].request("POST", "/count", body=b"")
            assert conns[0].getresponse().read() == b""
            assert [_get(c) for c in conns] == [b"2"] * 16
            for c in conns:
                c.close()


@needs_proc
def test_a_worker_that_dies_is_restarted(tmp_path: Path) -> None:
    """A killed worker is replaced by a new process, and service goes on."""
    port = _free_port()
    with accel(tmp_path, "--workers", "2", "--listen", f"tcp:{port}:interface=127.0.0.1") as proxy:
        _wait_for(lambda: len(_children(proxy.pid)) == 1, "the worker", proxy)
        (first,) = _children(proxy.pid)
        os.kill(first, 9)
        _wait_for(lambda: _children(proxy.pid) not in ([], [first]), "a new worker", proxy)
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                assert conn.getresponse().status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@needs_proc
@pytest.mark.skipif(available_cpus() < 2, reason="the default is one worker on one CPU")
def test_default_runs_a_worker_per_cpu_and_stopping_ends_them_all(tmp_path: Path) -> None:
    """Plain ``twistd -n accel`` (demo origin, temporary cache) runs one worker per
    CPU; every worker serves the demo; SIGTERM to twistd ends every worker and
    removes the temporary directories."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    sock = str(tmp_path / "accel.sock")
    with accel(tmp_path, "--listen", f"unix:{sock}", env={"TMPDIR": str(temp)}) as proxy:
        expected = available_cpus() - 1
        _wait_for(lambda: os.path.exists(sock) and len(_children(proxy.pid)) == expected, "the workers", proxy)
        children = _children(proxy.pid)
        log = tmp_path / "accel.log"
        _wait_for(lambda: log.read_text().count("serving (pid") == expected, "the workers serving", proxy)
        assert sorted(p.name.split("-")[1] for p in temp.iterdir()) == ["cache", "demo"]
        answered = []
        for _ in range(4 * (expected + 1)):
            conn = _UnixConnection(sock)
            conn.request("GET", "/")
            response = conn.getresponse()
            answered.append((response.status, b"demo origin" in response.read()))
            conn.close()
        assert set(answered) == {(200, True)}

        proxy.send_signal(signal.SIGTERM)
        proxy.wait(timeout=30)  # twistd ends with the signal that stopped it, once shut down
        assert "Server Shut Down." in log.read_text()
    assert not [pid for pid in children if _alive(pid)]
    assert list(temp.iterdir()) == []


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


@needs_proc
def test_workers_end_when_twistd_is_killed(tmp_path: Path) -> None:
    """SIGKILL to twistd: every worker notices its parent is gone and exits."""
    port = _free_port()
    temp = tmp_path / "tmp"  # what the killed twistd cannot remove stays here
    temp.mkdir()
    args = ("--workers", "3", "--listen", f"tcp:{port}:interface=127.0.0.1")
    with accel(tmp_path, *args, env={"TMPDIR": str(temp)}) as proxy:
        _wait_for(lambda: len(_children(proxy.pid)) == 2, "the workers", proxy)
        children = _children(proxy.pid)
        _wait_for(lambda: (tmp_path / "accel.log").read_text().count("serving (pid") == 2, "the workers serving", proxy)
        proxy.kill()
        proxy.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)  # other processes' exit: no clock to inject
        assert not [pid for pid in children if _alive(pid)]


@needs_proc
def test_tls_listener_is_shared_by_workers(tmp_path: Path, tls_key: tuple[str, str]) -> None:
    """With an ssl listener, every worker terminates TLS on its own socket of the port."""
    key, ca = tls_key
    port = _free_port()
    context = ssl.create_default_context(cafile=ca)
    with accel(tmp_path, "--workers", "2", "--listen", f"ssl:{port}:privateKey={key}:interface=127.0.0.1") as proxy:

        def ready() -> bool:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
                return len(_children(proxy.pid)) == 1 and _get(conn, "/").startswith(b"Hello")
            except OSError:
                return False

        _wait_for(ready, "accel with two TLS workers", proxy)
        _wait_for(lambda: "worker 1 serving" in (tmp_path / "accel.log").read_text(), "worker 1", proxy)
        (child,) = _children(proxy.pid)
        conns = [http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context) for _ in range(16)]
        assert {_get(c, "/").split(b"\n")[0] for c in conns} == {b"Hello from accel's built-in demo origin."}
        established = _server_side_inodes(port)
        assert established & _socket_inodes(proxy.pid), "the parent holds TLS clients"
        assert established & _socket_inodes(child), "the child holds TLS clients"
        for c in conns:
            c.close()


def test_shared_sockets_listen_with_nginx_default_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers' sockets get backlog 511 unless the description sets one."""
    backlogs: list[int] = []
    listen = socket.socket.listen

    def recording(sock: socket.socket, backlog: int) -> None:
        backlogs.append(backlog)
        listen(sock, backlog)

    monkeypatch.setattr(socket.socket, "listen", recording)
    groups = bind_listeners(["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=9"], 2, reactor)
    for sock in (sock for socks in groups for sock in socks):
        sock.close()
    assert backlogs == [511, 511, 9, 9]

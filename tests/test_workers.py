"""``--workers``: several processes, one set of listeners, one store.

End to end: ``twistd -n accel --workers 2`` as a process in front of a small
origin process. Which process holds each client connection is read from
``/proc`` (socket inodes), so the test needs no debug header.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.test_e2e import _wait_for, accel, process

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")

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

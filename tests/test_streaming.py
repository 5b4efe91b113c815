"""Bodies stream through accel with back-pressure: big transfers, flat memory.

accel runs as ``twistd -n accel`` in front of a fast asyncio origin
(tests/stream_origin.py); the test reads accel's peak resident memory
(``VmHWM`` in /proc) before and after moving 1 GiB each way.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from tests.test_e2e import HERE, _wait_for, accel, accepting, free_port, process

GiB = 1 << 30
MiB = 1 << 20
#: How much accel's peak memory may grow while moving a body of any size.
ALLOWED_GROWTH = 48 * MiB

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The head up to the blank line, and whatever body bytes came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no content-length in {head!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streaming")
    port_file = tmp / "origin.port"
    with process([sys.executable, str(HERE / "stream_origin.py"), str(port_file)], tmp / "origin.log") as origin:
        _wait_for(port_file.exists, "origin", origin)
        origin_port = int(port_file.read_text())
        port = free_port()
        # One worker: the tests read that one process's memory.
        with accel(tmp, "--workers", "1", "--listen", f"tcp:{port}:interface=127.0.0.1", "--origin",
                   f"http://127.0.0.1:{origin_port}", "--cache-dir", str(tmp / "cache"),
                   "--access-log", str(tmp / "access.log")) as proc:  # fmt: skip

            _wait_for(lambda: accepting(port), "accel", proc)
            yield port, proc.pid


def download(
    port: int, target: str, pause_after: int | None = None, pid: int | None = None
) -> tuple[int, int, bytes]:
    """GET ``target``; returns (body bytes read, accel RSS seen during a pause, head)."""
    seen = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head, body = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        expected = content_length(head)
        received = len(body)
        paused = False
        while received < expected:
            if pause_after is not None and not paused and received >= pause_after:
                paused = True
                # A client that stops reading: give a proxy without
                # back-pressure time to pull the whole body into memory.
                time.sleep(1.0)
                assert pid is not None
                seen = rss(pid)
            chunk = sock.recv(MiB)
            if not chunk:
                break
            received += len(chunk)
    return received, seen, head


def test_one_gib_download_keeps_memory_flat(stack):
    """1 GiB passes through accel while its peak memory grows by a few MiB at most."""
    port, pid = stack
    download(port, "/big?size=1024")  # warm up: imports, pools, buffers
    before = peak_rss(pid)
    received, _, _ = download(port, f"/big?size={GiB}")
    assert received == GiB
    assert peak_rss(pid) - before < ALLOWED_GROWTH


def test_one_gib_upload_keeps_memory_flat(stack):
    """A 1 GiB request body streams to the origin without being held in accel."""
    port, pid = stack
    before = peak_rss(pid)
    block = b"u" * MiB
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % GiB)
        for _ in range(GiB // MiB):
            sock.sendall(block)
        head, body = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head
        while len(body) < content_length(head):
            body += sock.recv(65536)
    assert body == str(GiB).encode()
    assert peak_rss(pid) - before < ALLOWED_GROWTH


def test_slow_reader_pauses_the_origin(stack):
    """While a client does not read, accel does not pull the rest of the body in."""
    port, pid = stack
    before = rss(pid)
    received, during, _ = download(port, f"/big?size={256 * MiB}", pause_after=MiB, pid=pid)
    assert received == 256 * MiB
    assert during - before < ALLOWED_GROWTH


def test_large_object_is_stored_while_streaming(stack):
    """A cacheable 256 MiB body streams to the client and into the store at once,
    then is served from the cache, with flat memory both times."""
    port, pid = stack
    before = peak_rss(pid)
    target = f"/big?size={256 * MiB}&store=1"
    first, _, head1 = download(port, target)
    second, _, head2 = download(port, target)
    assert first == second == 256 * MiB
    assert b"fwd=uri-miss" in head1 and b"stored" in head1
    assert b"cache-status: accel; hit" in head2
    assert peak_rss(pid) - before < ALLOWED_GROWTH

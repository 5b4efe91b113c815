"""Stored bodies by os.sendfile, over real loopback sockets (and the fallbacks).

The server is the real HTTP/1.1 protocol on the global reactor, iterated by
hand (no reactor.run(), so other tests may use it too); clients are plain
sockets in a thread, one of them a deliberately slow reader with a small
receive buffer, so the server's socket fills and sendfile meets EAGAIN.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from twisted.internet.testing import StringTransport

from accel.http.headers import Headers
from accel.http.server import HTTPServerFactory
from accel.streams import SENDFILE_MIN, FileSender

SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def body_file(tmp_path):
    path = tmp_path / "body"
    path.write_bytes(os.urandom(SIZE))
    return path


class FileHandler:
    """Answers every request with ``path``'s bytes from ``offset`` on."""

    def __init__(self, path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset

    def handle(self, request, responder) -> None:
        f = open(self.path, "rb")  # noqa: SIM115 - FileSender closes it
        f.seek(self.offset)
        count = SIZE - self.offset
        responder.start(200, b"OK", Headers([(b"content-length", b"%d" % count)]))
        FileSender(f, responder, count).start()


def serve(handler, client) -> list[bytes]:
    """Run ``client(port)`` in a thread against ``handler``; what it returned."""
    from twisted.internet import reactor

    port = reactor.listenTCP(0, HTTPServerFactory(handler, reactor), interface="127.0.0.1")
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(client(port.getHost().port)))
    thread.start()
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        reactor.iterate(0.005)
    thread.join(1)
    port.stopListening()
    for _ in range(5):
        reactor.iterate(0)
    return result


def read_all(s: socket.socket, slow: bool = False) -> bytes:
    data = bytearray()
    while chunk := s.recv(16384 if slow else 1 << 20):
        data += chunk
        if slow and len(data) < 1024 * 1024:
            time.sleep(0.001)
    return bytes(data)


def split(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(head, body) pairs of back-to-back fixed-length responses."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        out.append((head, rest[:length]))
        raw = rest[length:]
    return out


@pytest.fixture
def sendfile_calls(monkeypatch):
    calls = []
    real = os.sendfile

    def spy(*args):
        n = real(*args)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", spy)
    return calls


def test_slow_reader_gets_every_byte_in_order(body_file, sendfile_calls):
    """A slow reader gets the head, then exactly the file, then the next pipelined response."""

    def client(port: int) -> bytes:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect(("127.0.0.1", port))
        with s:
            s.sendall(
                b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            )
            return read_all(s, slow=True)

    (raw,) = serve(FileHandler(body_file), client)
    expected = body_file.read_bytes()
    responses = split(raw)
    assert [body == expected for _, body in responses] == [True, True]
    assert len(sendfile_calls) > 2  # the socket filled: several turns, EAGAIN between


def test_ranges_start_at_the_file_offset(body_file, sendfile_calls):
    """A body served from an offset (a range) sends the bytes from there."""

    def client(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            return read_all(s)

    offset = 1000
    (raw,) = serve(FileHandler(body_file, offset), client)
    ((_, body),) = split(raw)
    assert body == body_file.read_bytes()[offset:]
    assert sendfile_calls


def test_client_leaving_mid_body_closes_the_file(body_file, sendfile_calls, monkeypatch):
    """A client that goes away mid-body stops the send and the file is closed."""
    opened = []

    class Tracking(FileHandler):
        def handle(self, request, responder) -> None:
            real_open = open

            def tracked(*args, **kw):
                f = real_open(*args, **kw)
                opened.append(f)
                return f

            monkeypatch.setattr("builtins.open", tracked)
            try:
                super().handle(request, responder)
            finally:
                monkeypatch.setattr("builtins.open", real_open)

    def client(port: int) -> bytes:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = s.recv(65536)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # reset
        s.close()
        time.sleep(0.2)
        return data

    serve(Tracking(body_file), client)
    assert opened and all(f.closed for f in opened)


def test_other_transports_fall_back_to_writes(body_file, sendfile_calls):
    """Without a plain socket (TLS, or a test transport) the body goes through write()."""
    from twisted.internet.task import Clock

    proto = HTTPServerFactory(FileHandler(body_file), Clock()).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    ((_, body),) = split(transport.value())
    assert body == body_file.read_bytes()
    assert sendfile_calls == []
    assert SIZE >= SENDFILE_MIN

"""accel.directwrite: past Twisted's write buffer while it is empty, in order always."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet.testing import StringTransport

from accel import directwrite


class Plain(StringTransport):
    """A transport with the buffer attributes of Twisted's FileDescriptor."""

    dataBuffer = b""
    _tempDataLen = 0

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._tempDataLen += len(data)
        super().write(data)

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def received(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_plain_socket_is_none_for_other_transports():
    """A transport that is not a plain Twisted TCP/UNIX connection is never bypassed."""
    assert directwrite.plain_socket(StringTransport()) is None


def test_an_empty_buffer_sends_at_once(pair):
    """Nothing queued: the bytes go to the socket, the transport sees nothing."""
    a, b = pair
    t = Plain()
    directwrite.write(t, a, b"hello")
    directwrite.write_parts(t, a, (b", ", b"world"))
    assert received(b) == b"hello, world"
    assert t.writes == []


def test_queued_bytes_keep_the_order(pair):
    """With bytes queued in the transport, new ones queue behind them."""
    a, b = pair
    t = Plain()
    t._tempDataLen = 5  # something is waiting in Twisted's buffer
    directwrite.write(t, a, b"later")
    directwrite.write_parts(t, a, (b"and ", b"later"))
    assert received(b) == b""
    assert t.writes == [b"later", b"and later"]


def test_what_the_socket_does_not_take_goes_to_the_transport(pair):
    """A full socket takes a prefix; the rest follows through the transport, in order."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes
    t = Plain()
    directwrite.write(t, a, data)
    direct = received(b)
    assert 0 < len(direct) < len(data)
    assert direct + b"".join(t.writes) == data


def test_parts_not_taken_go_to_the_transport(pair):
    """write_parts: the same, across the parts' boundaries."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    parts = (b"head\r\n\r\n", bytes(range(256)) * 4096)
    t = Plain()
    directwrite.write_parts(t, a, parts)
    assert received(b) + b"".join(t.writes) == b"".join(parts)


def test_a_broken_socket_leaves_the_bytes_to_the_transport(pair):
    """An error on send: the transport gets the bytes and reports the error its own way."""
    a, b = pair
    b.close()
    t = Plain()
    directwrite.write(t, a, b"lost?")
    assert t.writes == [b"lost?"]


class Piecemeal:
    """A socket that takes at most ``piece`` bytes per call, then is full."""

    def __init__(self, piece: int, calls: int) -> None:
        self.piece = piece
        self.left = calls
        self.taken = b""

    def _take(self, data: bytes) -> int:
        if self.left == 0:
            raise BlockingIOError
        self.left -= 1
        self.taken += bytes(data[: self.piece])
        return min(self.piece, len(data))

    def send(self, data: bytes) -> int:
        return self._take(data)

    def sendmsg(self, parts) -> int:
        return self._take(b"".join(parts))


def test_a_socket_taking_pieces_is_sent_to_again():
    """A socket that takes part and then more (TCP_NOTSENT_LOWAT) gets the rest directly."""
    sock = Piecemeal(piece=4, calls=3)
    t = Plain()
    directwrite.write(t, sock, b"0123456789")
    assert sock.taken == b"0123456789"
    assert t.writes == []


def test_parts_taken_in_pieces():
    """write_parts: the rest after a partial sendmsg is sent again, in order."""
    sock = Piecemeal(piece=3, calls=10)
    t = Plain()
    directwrite.write_parts(t, sock, (b"head:", b"body"))
    assert sock.taken == b"head:body"
    assert t.writes == []


def test_sends_in_a_row_are_bounded():
    """A socket that keeps taking a little is left to the transport after a few sends."""
    sock = Piecemeal(piece=1, calls=1000)
    t = Plain()
    data = bytes(100)
    directwrite.write(t, sock, data)
    assert 0 < len(sock.taken) < len(data)
    assert sock.taken + b"".join(t.writes) == data


# --- Batches: writes held back for the length of one delivery ---


def test_nothing_is_held_outside_a_batch():
    """hold() says no, and keeps nothing, when no batch runs."""
    flushed = []
    assert not directwrite.hold(lambda: flushed.append(1))
    assert flushed == []


def test_a_batch_flushes_after_the_delivery():
    """Inside batched(), hold() says yes; each flush runs once the delivery returns."""
    events = []

    def receive(data: bytes) -> None:
        assert directwrite.hold(lambda: events.append(("flush", data)))
        events.append(("received", data))

    directwrite.batched(receive, b"x")
    assert events == [("received", b"x"), ("flush", b"x")]
    assert not directwrite.hold(lambda: None)


def test_a_nested_batch_is_part_of_the_outer_one():
    """A delivery inside another flushes with the outer one, not before."""
    events = []

    def inner(data: bytes) -> None:
        directwrite.hold(lambda: events.append("flush"))

    def outer(data: bytes) -> None:
        directwrite.batched(inner, data)
        events.append("inner returned")

    directwrite.batched(outer, b"x")
    assert events == ["inner returned", "flush"]


def test_a_failing_delivery_still_flushes():
    """What was held is sent even when the delivery raises; the error propagates."""
    events = []

    def receive(data: bytes) -> None:
        directwrite.hold(lambda: events.append("flush"))
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        directwrite.batched(receive, b"x")
    assert events == ["flush"]
    assert not directwrite.hold(lambda: None)


# --- write_file: a body from its file (sendfile), the same bytes in memory ---


@pytest.fixture
def body_file(tmp_path):
    data = bytes(range(256)) * 512  # 128 KiB
    path = tmp_path / "body"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data, path
    os.close(fd)


def test_a_file_body_follows_its_head(pair, body_file):
    """Nothing queued: head and body reach the peer, in order, none through the transport."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    fd, data, _ = body_file
    t = Plain()
    directwrite.write_file(t, a, b"head\r\n\r\n", fd, data)
    assert t.writes == []
    assert received(b) == b"head\r\n\r\n" + data


def test_a_file_body_behind_queued_bytes_queues(pair, body_file):
    """With bytes waiting in the transport, head and body queue behind them."""
    a, b = pair
    fd, data, _ = body_file
    t = Plain()
    t._tempDataLen = 5
    directwrite.write_file(t, a, b"head", fd, data)
    assert received(b) == b""
    assert b"".join(t.writes) == b"head" + data


def test_what_the_socket_does_not_take_of_a_file_follows_from_memory(pair, body_file):
    """A full socket: the rest of the body goes through the transport, from memory, in order."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    fd, data, _ = body_file
    t = Plain()
    directwrite.write_file(t, a, b"head", fd, data)
    direct = received(b)
    assert 0 < len(direct) < len(data)
    assert direct + b"".join(t.writes) == b"head" + data


def test_a_file_shorter_than_its_body_is_completed_from_memory(pair, body_file):
    """If the file gives less than the body (cut short behind our back), the
    rest is sent from memory: the client still gets the whole body."""
    a, b = pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    fd, data, path = body_file
    os.truncate(path, 1000)
    t = Plain()
    directwrite.write_file(t, a, b"head", fd, data)
    assert received(b) + b"".join(t.writes) == b"head" + data
    assert b"".join(t.writes) == data[1000:]

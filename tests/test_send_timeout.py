"""ServerLimits.send_timeout, and closes that must not wait on the client for ever.

Real sockets on 127.0.0.1 through :class:`accel.reactor.Reactor` (turned by
hand, client sockets in the test's thread), with a :class:`Clock` as the
server's clock: the time a client takes is the clock's, the bytes it takes
or leaves are the kernel's.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock

from accel import directwrite
from accel.http.server import HTTPServerFactory, HTTPServerProtocol, ServerLimits
from accel.reactor import Reactor
from accel.tls import TLSFactory
from tests.test_ports import _pump
from tests.test_server import answer

#: send_timeout in these tests; the watchdog looks every quarter of it.
T = 8.0
BODY = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the kernel holds for one socket
GET = b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"


class Big:
    """Answers every request with :data:`BODY`, written at once: what the
    socket does not take waits in the transport."""

    def handle(self, request: Any, responder: Any) -> None:
        answer(responder, BODY)


class Serving:
    """A server on accel's reactor, with a Clock, and its one connection."""

    def __init__(
        self, reactor: Reactor, handler: Any = None, tls: Any = None, fast_path: Any = None, **limits: Any
    ) -> None:
        self.reactor = reactor
        self.clock = Clock()
        self.protocols: list[HTTPServerProtocol] = []
        serving = self

        class Factory(HTTPServerFactory):
            def buildProtocol(self, addr: Any) -> HTTPServerProtocol:
                serving.protocols.append(super().buildProtocol(addr))
                return serving.protocols[-1]

        limits.setdefault("send_timeout", T)
        self.factory = Factory(
            handler or Big(), self.clock, limits=ServerLimits(**limits), fast_path=fast_path
        )
        if tls is None:
            self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        else:
            # As accel's listenSSL.
            wrapped = TLSFactory(tls, False, self.factory, reactor)
            self.port = reactor.listenTCP(0, wrapped, interface="127.0.0.1")

    def connect(self) -> socket.socket:
        """A client socket with a small receive buffer, connected and accepted."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.connect(("127.0.0.1", self.port.getHost().port))
        _pump(self.reactor, lambda: bool(self.protocols))
        return sock

    @property
    def proto(self) -> HTTPServerProtocol:
        (proto,) = self.protocols
        return proto

    def open(self) -> bool:
        return self.factory.open_connections == 1

    def turn(self, times: int = 20) -> None:
        for _ in range(times):
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.001)

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of the server's time pass, the reactor turning."""
        self.clock.advance(seconds)
        self.turn()

    def stop(self) -> None:
        self.port.stopListening()


def _blocked(serving: Serving) -> Callable[[], bool]:
    """Bytes wait for the client in the server's transport."""
    return lambda: serving.proto._send_queue is not None and directwrite.waiting(serving.proto._send_queue)


def _read_all(sock: socket.socket) -> bytes:
    """What the client can read until the server's close (or reset)."""
    sock.setblocking(True)
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
    except ConnectionResetError:
        pass
    return data


@pytest.mark.parametrize("sendfile", [False, True], ids=["buffered", "sendfile"])
def test_a_client_that_stops_reading_is_cut_off_after_send_timeout(
    accel_reactor: Reactor, tmp_path: Any, sendfile: bool
) -> None:
    """A client that reads none of a 4 MiB answer: the connection stays for
    send_timeout, then is aborted; the client has less than the whole answer.
    Whether the rest waits in the transport or in the stored file that
    ``sendfile`` sends from (a fast hit's body)."""
    stored = tmp_path / "body"
    stored.write_bytes(BODY)

    def file_hit(
        factory: Any, method: bytes, authority: bytes, path: bytes, query: Any, pairs: Any, connection: bytes
    ) -> Any:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n" % (len(BODY), connection)
        return head, 200, len(BODY), {}, open(stored, "rb")  # the server closes it

    serving = Serving(accel_reactor, fast_path=file_hit if sendfile else None)
    with serving.connect() as sock:
        sock.sendall(GET)
        _pump(accel_reactor, _blocked(serving))
        for _ in range(4):  # the watchdog's first look, then send_timeout
            serving.advance(T / 4)
        assert serving.open()
        serving.advance(T / 4)
        serving.advance(T / 4)
        _pump(accel_reactor, lambda: not serving.open())
        assert len(_read_all(sock)) < len(BODY)
    serving.stop()


@pytest.mark.parametrize("close", [False, True], ids=["keep-alive", "close"])
def test_a_client_that_reads_slowly_is_not_cut_off(accel_reactor: Reactor, close: bool) -> None:
    """A client that takes a little of its answer now and then, never pausing
    for send_timeout, is kept for many times send_timeout and gets it whole;
    also when the answer closes the connection (which lingers only once the
    answer is sent: the client sends nothing meanwhile, and that silence
    is not the lingering's)."""
    serving = Serving(accel_reactor)
    with serving.connect() as sock:
        # A slow network: a small send buffer, so each read lets the server write.
        serving.proto._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        sock.sendall(GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") if close else GET)
        _pump(accel_reactor, _blocked(serving))
        sock.setblocking(False)
        received = b""
        for _ in range(24):  # 12 send_timeouts
            written = serving.proto.transport.writable
            for _ in range(4):
                try:
                    received += sock.recv(16 * 1024)
                except BlockingIOError:
                    pass
                serving.turn(2)
            _pump(accel_reactor, lambda written=written: serving.proto.transport.writable != written)
            serving.advance(T / 2)
            assert serving.open()
        assert len(received) < len(BODY)  # still reading: the test proves the wait
        head, _, body = _receive(serving, sock, received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == BODY
    serving.stop()


def _receive(serving: Serving, sock: socket.socket, received: bytes) -> bytes:
    """Read the rest of the answer after ``received``, the reactor sending it."""
    sock.setblocking(False)
    for _ in range(100_000):
        body = received.partition(b"\r\n\r\n")[2]
        if len(body) >= len(BODY):
            return received
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            serving.turn(1)
            continue
        if not chunk:
            break
        received += chunk
    return received


def test_a_close_that_waits_for_an_unread_answer_is_bounded(accel_reactor: Reactor) -> None:
    """An answer with ``Connection: close`` the client never reads: the close
    waits to send it, for send_timeout at most, then the connection is aborted."""
    serving = Serving(accel_reactor)
    with serving.connect() as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        _pump(accel_reactor, _blocked(serving))
        assert serving.proto._closing  # answered: the close waits for the client
        for _ in range(4):
            serving.advance(T / 4)
        assert serving.open()
        serving.advance(T / 4)
        serving.advance(T / 4)
        _pump(accel_reactor, lambda: not serving.open())
    serving.stop()


def _tls_client(serving: Serving) -> ssl.SSLSocket:
    """A TLS client connected to ``serving``, handshake done, non-blocking."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = serving.connect()
    raw.setblocking(False)
    sock = context.wrap_socket(raw, do_handshake_on_connect=False)
    for _ in range(2000):
        try:
            sock.do_handshake()
            return sock
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            serving.turn(1)
    raise AssertionError("no TLS handshake")


def _tls_read(serving: Serving, sock: ssl.SSLSocket, until: Callable[[bytes], bool]) -> bytes:
    data = b""
    for _ in range(5000):
        if until(data):
            return data
        try:
            chunk = sock.recv(65536)
        except ssl.SSLWantReadError:
            serving.turn(1)
            continue
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest.mark.parametrize("close", [False, True], ids=["idle", "close"])
def test_tls_close_does_not_wait_for_the_clients_close_notify(
    accel_reactor: Reactor, tmp_path: Any, close: bool
) -> None:
    """Over TLS, a connection the server closes (idle past keepalive_timeout,
    or after an answer with ``Connection: close``) is closed once the
    server's close_notify is sent, not held until the client answers it: a
    client that never does cannot keep it open. The client reads the answer
    and then the close_notify (a clean end of the TLS stream)."""
    from twisted.internet.ssl import PrivateCertificate

    from tests.test_upstream import _self_signed

    pem, _ = _self_signed(str(tmp_path))

    class Small:
        def handle(self, request: Any, responder: Any) -> None:
            answer(responder, b"ok")

    serving = Serving(accel_reactor, Small(), tls=PrivateCertificate.loadPEM(pem).options(), idle_timeout=5.0)
    sock = _tls_client(serving)
    try:
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
        )
        assert _tls_read(serving, sock, lambda data: data.endswith(b"\r\n\r\nok")).endswith(b"ok")
        if not close:
            serving.turn()
            assert serving.open()
            serving.advance(5.0)
        _pump(accel_reactor, lambda: not serving.open())  # the client has not closed, nor answered
        assert _tls_read(serving, sock, lambda data: False) == b""  # close_notify: a clean end
    finally:
        sock.close()
        serving.stop()

"""accel.tls: server-side TLS whose records leave when they are written.

Real sockets on 127.0.0.1 through :class:`accel.reactor.Reactor`, turned by
hand; the client is the standard library's ``ssl``, driven without blocking
in the test's thread.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.tls import TLSMemoryBIOProtocol

from accel import directwrite, ports, tls
from accel.reactor import Reactor
from accel.workers import serving_factory
from tests.test_ports import _pump
from tests.test_upstream import _self_signed

# Twisted's TLS hands pyOpenSSL its own certificate objects, which it deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL")


class Recorder(Protocol):
    """Keeps what it receives; the test writes through its transport."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = True


class Served:
    """A ``listenSSL`` listener on accel's reactor and the client connected to it."""

    def __init__(self, reactor: Reactor, directory: str) -> None:
        self.reactor = reactor
        self.protocols: list[Recorder] = []
        pem, ca = _self_signed(directory)
        factory = Factory()
        factory.buildProtocol = self._build  # type: ignore[method-assign]
        self.port = reactor.listenSSL(0, factory, PrivateCertificate.loadPEM(pem).options(), interface="127.0.0.1")
        context = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.client = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        self.client.setblocking(False)

    def _build(self, addr: Any) -> Recorder:
        self.protocols.append(Recorder())
        return self.protocols[-1]

    @property
    def app(self) -> Recorder:
        (app,) = self.protocols
        return app

    @property
    def layer(self) -> Any:
        """The TLS layer between the TCP connection and the application's protocol."""
        return self.app.transport

    def turn(self) -> None:
        self.reactor.runUntilCurrent()
        self.reactor.doIteration(0.01)

    def handshake(self) -> None:
        """Both sides through the handshake (the server's ends with the client's Finished)."""
        for _ in range(500):
            try:
                self.client.do_handshake()
                break
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                self.turn()
        self.client.sendall(b"ping")  # the server has the client's Finished once this arrives
        _pump(self.reactor, lambda: bool(self.protocols) and self.app.received == b"ping")

    def read(self, length: int) -> bytes:
        """``length`` bytes from the client, the reactor turning meanwhile."""
        data = b""
        for _ in range(2000):
            try:
                data += self.client.recv(length - len(data))
            except ssl.SSLWantReadError:
                self.turn()
            if len(data) >= length:
                return data
        raise AssertionError(f"read {len(data)} of {length} bytes")

    def close(self) -> None:
        self.client.close()
        self.port.stopListening()


@pytest.fixture
def served(accel_reactor: Reactor, tmp_path: Any) -> Iterator[Served]:
    serving = Served(accel_reactor, str(tmp_path))
    yield serving
    serving.close()


def test_listen_ssl_makes_tls_server_connections_over_lean_ports(served: Served) -> None:
    """accel's ``listenSSL`` wraps each connection of an :class:`accel.ports.Port`
    in a :class:`accel.tls.TLSConnection`, and the two sides talk."""
    served.handshake()
    assert isinstance(served.port, ports.Port)
    assert type(served.layer) is tls.TLSConnection
    assert isinstance(served.layer.transport, ports.Server)


def test_a_write_leaves_at_once(served: Served) -> None:
    """A write after the handshake is on the wire when ``write`` returns: no
    timed call gathers it, and the TCP transport below holds none of it."""
    served.handshake()
    before = served.reactor.getDelayedCalls()
    served.layer.write(b"a" * 1024)
    assert served.reactor.getDelayedCalls() == before
    assert not directwrite.waiting(served.layer.transport)
    served.client.setblocking(True)
    served.client.settimeout(5)
    data = b""
    while len(data) < 1024:
        data += served.client.recv(4096)  # no turn of the reactor: already sent
    assert data == b"a" * 1024


def test_a_write_of_many_records_arrives_whole_and_in_order(served: Served) -> None:
    """A write larger than a TLS record (here about 40 records), then a small one:
    the client reads every byte in order, through back-pressure (its receive
    buffer is small, so the TCP transport holds the rest meanwhile)."""
    served.handshake()
    big = bytes(range(256)) * 2600  # 665,600 bytes
    served.layer.write(big)
    served.layer.write(b"end")
    assert served.read(len(big) + 3) == big + b"end"


def test_a_flush_sends_all_the_records_made_however_many(served: Served) -> None:
    """``_flushSendBIO`` (Twisted calls it after the handshake, alerts and the
    ``close_notify``) sends everything the TLS connection has made, even
    more than it reads out at a time."""
    served.handshake()
    for _ in range(3):  # three full records: more than the 32 KiB read at a time
        served.layer._tlsConnection.send(b"r" * 16384)
    served.layer._flushSendBIO()
    assert served.read(3 * 16384) == b"r" * (3 * 16384)


def test_writes_before_the_handshake_ends_arrive_after_it_in_order(served: Served) -> None:
    """What the application writes before the handshake is done waits in the
    layer and reaches the client, in order, once it is."""
    _pump(served.reactor, lambda: bool(served.protocols))
    served.layer.write(b"early ")
    served.layer.write(b"bird")
    served.handshake()
    assert served.read(10) == b"early bird"


def test_close_sends_close_notify_after_what_was_written(served: Served) -> None:
    """``loseConnection`` after a write: the client reads the bytes, then a
    clean TLS end (``close_notify``: ``recv`` gives ``b""``, not an error)."""
    served.handshake()
    served.layer.write(b"bye")
    served.layer.loseConnection()
    assert served.read(3) == b"bye"
    for _ in range(500):
        try:
            assert served.client.recv(10) == b""
            break
        except ssl.SSLWantReadError:
            served.turn()
    else:
        raise AssertionError("no close_notify")


def test_workers_wrap_inherited_ssl_sockets_in_the_same_layer(tmp_path: Any, accel_reactor: Reactor) -> None:
    """A worker serving an inherited ``ssl:`` socket makes TLSConnection connections too."""
    pem, _ = _self_signed(str(tmp_path))
    (tmp_path / "server.pem").write_bytes(pem)
    served = serving_factory(f"ssl:0:privateKey={tmp_path / 'server.pem'}", Factory(), accel_reactor)
    assert isinstance(served, tls.TLSFactory) and served.protocol is tls.TLSConnection


def test_a_client_endpoint_wraps_its_connection_in_the_same_layer(served: Served, tmp_path: Any) -> None:
    """tls_client_endpoint (how accel reaches https origins) makes a verified
    TLSConnection whose writes leave at once, as wrapClientTLS would with
    Twisted's layer."""
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    reactor = served.reactor
    ca = Certificate.loadPEM((tmp_path / "ca.pem").read_bytes())  # written by _self_signed
    endpoint = tls.tls_client_endpoint(
        optionsForClientTLS("127.0.0.1", trustRoot=ca),
        TCP4ClientEndpoint(reactor, "127.0.0.1", served.port.getHost().port),
    )
    connected: list[Any] = []
    endpoint.connect(Factory.forProtocol(Recorder)).addCallback(connected.append)
    _pump(reactor, lambda: bool(connected) and len(served.protocols) == 2)
    (client,) = connected
    assert type(client.transport) is tls.TLSConnection
    client.transport.write(b"hello")
    _pump(reactor, lambda: served.protocols[1].received == b"hello")
    client.transport.loseConnection()
    _pump(reactor, lambda: client.lost)


def test_the_twisted_internals_it_overrides_are_there() -> None:
    """TLSConnection replaces ``_write`` and ``_flushSendBIO`` and uses the state
    they use; if Twisted renames them, this says so before anything misbehaves."""
    for name in ("_write", "_flushSendBIO", "_bufferedWrite", "_tlsShutdownFinished"):
        assert callable(getattr(TLSMemoryBIOProtocol, name))
    proto = TLSMemoryBIOProtocol(None, Protocol())  # type: ignore[arg-type]
    assert proto._lostTLSConnection is False

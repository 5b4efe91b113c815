"""accel.ports: leaner listening ports and connections, on accel's reactor.

The first tests hold :mod:`accel.ports` to the Twisted internals it copies
or relies on: if Twisted changes them, these fail. The others run real
sockets on 127.0.0.1 through :class:`accel.reactor.Reactor` (turned by hand;
each client runs in a thread with blocking sockets and a timeout).
Twisted's own TCP and UNIX conformance suites also run against these ports
(tests/test_reactor.py).
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import tcp, unix
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.python import log
from twisted.python.failure import Failure

from accel import directwrite, ports
from accel.http.server import HTTPServerFactory
from accel.reactor import Reactor
from tests.test_server import FastSpy, Recorder

_CLOSE = b"GET /hit HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nhit"


# --- The Twisted internals accel.ports relies on ---


class _Stub:
    """The listening port a server transport is told about."""

    _realPortNumber = 8080


def _pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    if family == socket.AF_UNIX:
        return socket.socketpair(socket.AF_UNIX)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


def _transports(kind: str, client: tuple[Any, ...]) -> Iterator[tuple[Any, Any]]:
    """Twisted's server transport and accel's, each on its own fresh connection."""
    twisted_class, lean_class = {
        "tcp": (tcp.Server, ports.Server),
        "unix": (unix.Server, ports.UNIXServer),
    }[kind]
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    made = []
    stub = _Stub()
    for cls in (twisted_class, lean_class):
        server, peer = _pair(family)
        reactor = MemoryReactor()
        reactor._closing = []  # type: ignore[attr-defined]
        made.append((cls(server, Protocol(), client, stub, 7, reactor), peer))
    yield made[0][0], made[1][0]
    for transport, peer in made:
        peer.close()
        if hasattr(transport, "socket"):
            transport.socket.close()


_CASES = [
    ("tcp", ("127.0.0.1", 4321)),
    ("tcp", ("::1", 4321, 0, 0)),
    ("unix", "/tmp/client.sock"),
]


def _state(transport: Any) -> dict[str, Any]:
    """A transport's attributes, with what differs between two connections left out."""
    skip = {"socket", "fileno", "protocol", "reactor", "logstr", "repstr", "_logstr", "_repstr", "_protocol_class"}
    return {k: v for k, v in vars(transport).items() if k not in skip}


@pytest.mark.parametrize(("kind", "client"), _CASES)
def test_server_init_sets_what_twisted_sets(kind: str, client: Any) -> None:
    """ports.Server.__init__ leaves the same state as tcp.Server.__init__ (and the
    UNIX ones likewise), with the same log prefix and repr, made when asked."""
    for theirs, ours in _transports(kind, client):
        assert _state(ours) == _state(theirs)
        assert "logstr" in vars(theirs) and "logstr" not in vars(ours)
        assert ours.logstr == theirs.logstr
        assert repr(ours) == repr(theirs)
        assert ours.getPeer() == theirs.getPeer()


@pytest.mark.parametrize(("kind", "client"), _CASES)
def test_fast_close_leaves_what_twisted_close_leaves(kind: str, client: Any) -> None:
    """A close at the end of the event leaves the transport as Twisted's closing
    write does (connectionLost with ConnectionDone), and tells the protocol the same."""
    for theirs, ours in _transports(kind, client):
        their_protocol, our_protocol = theirs.protocol, ours.protocol
        lost: list[Failure] = []
        their_protocol.connectionLost = our_protocol.connectionLost = lost.append
        their_socket, our_socket = theirs.socket, ours.socket
        theirs.loseConnection()
        theirs.connectionLost(Failure(ConnectionDone()))  # what its doWrite leads to
        ours.loseConnection()
        assert ours.reactor._closing == [ours]
        ports.end_of_event(ours.reactor._closing)
        assert _state(ours) == _state(theirs)
        assert [f.type for f in lost] == [ConnectionDone, ConnectionDone]
        assert their_socket.fileno() == our_socket.fileno() == -1
        assert ours.logstr.startswith("Protocol,7,")


def test_port_reads_what_twisted_port_reads() -> None:
    """tcp.Port.doRead scales its accepts with numberAccepts and numbers sessions with
    sessionno; ports.Port accepts the same connections and scales the same way, and
    each connection's getPeer is the address its protocol was built for."""
    results = []
    for cls in (tcp.Port, ports.Port):
        built: list[Any] = []
        made: list[Protocol] = []

        def build(addr: Any, built: list[Any] = built, made: list[Protocol] = made) -> Protocol:
            built.append(addr)
            made.append(Protocol())
            return made[-1]

        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = build  # type: ignore[method-assign]
        port = cls(0, factory, 50, "127.0.0.1", MemoryReactor())
        port.startListening()
        address = port.getHost()
        clients = [socket.create_connection((address.host, address.port)) for _ in range(3)]
        steps = []
        for _ in range(3):
            port.doRead()
            steps.append((port.numberAccepts, port.sessionno))
        assert [p.transport.getPeer() for p in made] == built
        results.append((steps, [(a.type, a.host) for a in built]))
        for sock in clients:
            sock.close()
        port.connectionLost(Failure(ConnectionDone()))
    assert results[0] == results[1]
    assert results[0][0][0] == (3, 3)  # 100 allowed, 3 taken: scaled down to 3


def test_accepted_sockets_have_what_twisted_and_accel_use() -> None:
    """ports.Port wraps accepted descriptors in the C socket object, not
    socket.socket: every method a connection's socket is asked for (by
    Twisted's transports, accel.directwrite and the HTTP server) is there."""
    port = ports.Port(0, Factory.forProtocol(Protocol), 50, "127.0.0.1", MemoryReactor())
    port.startListening()
    address = port.getHost()
    client = socket.create_connection((address.host, address.port))
    try:
        port.doRead()
        (transport,) = [r for r in port.reactor.readers if isinstance(r, ports.Server)]
        used = ["recv", "send", "sendmsg", "recvmsg", "shutdown", "close", "fileno", "setblocking",
                "setsockopt", "getsockopt", "getpeername", "getsockname"]  # fmt: skip
        assert all(callable(getattr(transport.socket, name)) for name in used)
        assert transport.socket.family == socket.AF_INET and transport.getTcpNoDelay()
    finally:
        client.close()
        port.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_peer_addresses_are_twisteds(host: str) -> None:
    """The address ports.Port builds for a client is the one tcp.Port builds:
    same class, equal, same hash and repr."""
    built = []
    for cls in (tcp.Port, ports.Port):
        addresses: list[Any] = []
        factory = Factory.forProtocol(Protocol)
        factory.buildProtocol = lambda addr, addresses=addresses: addresses.append(addr) or Protocol()  # type: ignore[method-assign]
        try:
            port = cls(0, factory, 50, host, MemoryReactor())
            port.startListening()
        except OSError:
            pytest.skip(f"no {host} here")
        client = socket.create_connection((host, port.getHost().port))
        port.doRead()
        (peer,) = addresses
        built.append(peer)
        assert (peer.host, peer.port) == client.getsockname()[:2]
        client.close()
        port.connectionLost(Failure(ConnectionDone()))
    theirs, ours = built
    ours_like_theirs = type(theirs)(*[getattr(ours, name) for name in vars(theirs)])
    assert type(ours) is type(ours_like_theirs) and ours == ours_like_theirs
    assert hash(ours) == hash(ours_like_theirs) and repr(ours) == repr(ours_like_theirs)
    assert vars(ours) == vars(ours_like_theirs)


class _FailingAccepts:
    """A listening socket whose accepts fail with ``error``."""

    def __init__(self, real: socket.socket, error: int) -> None:
        self._real = real
        self._error = error

    def _accept(self) -> Any:
        raise OSError(self._error, "no")

    def accept(self) -> Any:
        raise OSError(self._error, "no")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_accept_errors_are_left_to_twisted() -> None:
    """An accept failing with anything but EAGAIN goes to Twisted's doRead, which
    logs ENOBUFS and the like and waits for the next turn, accepting fewer."""
    port = ports.Port(0, Factory.forProtocol(Protocol), 50, "127.0.0.1", MemoryReactor())
    port.startListening()
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    real = port.socket
    try:
        port.socket = _FailingAccepts(real, errno.ENOBUFS)
        port.doRead()
    finally:
        globalLogPublisher.removeObserver(events.append)
        port.socket = real
        port.connectionLost(Failure(ConnectionDone()))
    assert any(e.get("acceptError") == "ENOBUFS" for e in events)
    assert port.numberAccepts == 1


# --- Real sockets, on accel's reactor ---


@pytest.fixture
def reactor(accel_reactor: Reactor) -> Reactor:
    return accel_reactor


def _pump(reactor: Reactor, done: Callable[[], bool], turns: int = 500) -> None:
    for _ in range(turns):
        if done():
            return
        reactor.runUntilCurrent()
        reactor.doIteration(0.01)
    raise AssertionError("the reactor never got there")


def _in_thread(reactor: Reactor, client: Callable[[], Any]) -> Any:
    """Run ``client`` in a thread while the reactor turns; what it returned (or raise what it raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, client()))
        except BaseException as e:  # noqa: BLE001 (handed to the test's thread)
            outcome.append((False, e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    _pump(reactor, lambda: not thread.is_alive())
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def _exchange(connect: Callable[[], socket.socket], request: bytes) -> bytes:
    """Send ``request`` and read until the server closes; a reset raises."""
    with connect() as sock:
        sock.settimeout(10)
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _http(reactor: Reactor) -> HTTPServerFactory:
    return HTTPServerFactory(Recorder(), reactor, fast_path=FastSpy())


def _tcp(port: Any) -> Callable[[], socket.socket]:
    address = port.getHost()
    return lambda: socket.create_connection((address.host, address.port))


def test_sequential_connections_each_get_a_full_answer_and_a_clean_close(reactor: Reactor) -> None:
    """Connection after connection (Connection: close), each gets its whole answer
    and then an orderly close (a reset would raise in the client)."""
    factory = _http(reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    assert isinstance(port, ports.Port)
    connect = _tcp(port)
    answers = _in_thread(reactor, lambda: [_exchange(connect, _CLOSE) for _ in range(50)])
    assert all(answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhit") for answer in answers)
    _pump(reactor, lambda: factory.open_connections == 0)


def test_close_happens_in_the_event_that_answers(reactor: Reactor) -> None:
    """A connection that has sent all it was given closes when the event whose
    request it answered is handled, not a reactor turn later."""
    lost: list[Any] = []
    made: list[Any] = []

    class Answer(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

        def dataReceived(self, data: bytes) -> None:
            # As accel writes: past Twisted's buffer, which stays empty.
            directwrite.write(self.transport, directwrite.plain_socket(self.transport), b"bye")
            self.transport.loseConnection()

        def connectionLost(self, reason: Any) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Answer), interface="127.0.0.1")
    client = _tcp(port)()
    try:
        _pump(reactor, lambda: bool(made))
        client.sendall(b"hi")
        reactor.doIteration(5)  # the read event: answered and closed
        assert [r.type for r in lost] == [ConnectionDone] and reactor._closing == []
        client.settimeout(10)
        assert client.recv(100) == b"bye" and client.recv(100) == b""
    finally:
        client.close()


class _Registrations:
    """Spies on a reactor's epoll: the descriptors it is asked to register."""

    def __init__(self, reactor: Reactor) -> None:
        self.fds: list[int] = []
        self._real = reactor._poller
        reactor._poller = self

    def register(self, fd: int, flags: int) -> None:
        self.fds.append(fd)
        self._real.register(fd, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _arrived(port: Any, data: bytes, shut: bool = False) -> socket.socket:
    """A client connected to ``port`` that has sent ``data`` (and shut its side
    if ``shut``), all before the server has accepted it."""
    client = _tcp(port)()
    if data:
        client.sendall(data)
    if shut:
        client.shutdown(socket.SHUT_WR)
    return client


def test_a_request_sent_with_the_connection_is_answered_as_it_is_accepted(reactor: Reactor) -> None:
    """A request there when its connection is accepted is read, answered and
    closed in the accepting event: its socket is never registered with epoll."""
    factory = _http(reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = _arrived(port, _CLOSE)
    spy = _Registrations(reactor)
    try:
        reactor.doIteration(5)  # the listening socket's event: accept, read, answer, close
        assert factory.open_connections == 0 and spy.fds == []
        client.settimeout(10)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
        assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nhit")
    finally:
        reactor._poller = spy._real
        client.close()


def test_connections_read_at_accept_are_accepted_a_bounded_batch_at_a_time(reactor: Reactor) -> None:
    """A port that answers connections as it accepts them takes at most
    READ_AT_ACCEPT_BATCH in one event, however many wait and however large
    Twisted's batch has grown: the rest wait for the next event, after the
    reactor has looked at its other sockets."""
    built: list[Any] = []
    factory = Factory.forProtocol(Protocol)
    build = factory.buildProtocol
    factory.buildProtocol = lambda addr: built.append(addr) or build(addr)  # type: ignore[method-assign]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port.numberAccepts = 1000
    waiting = ports.READ_AT_ACCEPT_BATCH + 5
    clients = [_tcp(port)() for _ in range(waiting)]
    try:
        port.doRead()
        assert len(built) == ports.READ_AT_ACCEPT_BATCH
        port.doRead()
        assert len(built) == waiting
    finally:
        for client in clients:
            client.close()


def test_a_connection_with_nothing_sent_yet_is_watched_for_its_request(reactor: Reactor) -> None:
    """A connection accepted before its request arrives is registered, and its
    request is read when it comes."""
    factory = _http(reactor)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = _arrived(port, b"")
    try:
        _pump(reactor, lambda: factory.open_connections == 1)
        assert any(getattr(r, "protocol", None) is not None for r in reactor.getReaders())
        answer = _in_thread(reactor, lambda: _exchange(lambda: client, _CLOSE))
        assert answer.endswith(b"\r\n\r\nhit")
    finally:
        client.close()


def test_a_protocol_paused_as_it_is_made_is_read_only_once_resumed(reactor: Reactor) -> None:
    """A protocol that pauses its transport in connectionMade gets nothing
    at the accept, even if its client's bytes are there, and gets them once
    it resumes."""
    received: list[bytes] = []
    made: list[Any] = []

    class Paused(Protocol):
        def connectionMade(self) -> None:
            self.transport.pauseProducing()
            made.append(self)

        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    port = reactor.listenTCP(0, Factory.forProtocol(Paused), interface="127.0.0.1")
    client = _arrived(port, b"early")
    try:
        _pump(reactor, lambda: bool(made))
        for _ in range(3):
            reactor.doIteration(0.01)
        assert received == [] and made[0].transport not in reactor.getReaders()
        made[0].transport.resumeProducing()
        _pump(reactor, lambda: bool(received))
        assert received == [b"early"]
    finally:
        client.close()


def test_a_connection_closed_before_its_accept_is_lost_at_once(reactor: Reactor) -> None:
    """A client gone before the server accepted it: the first read finds the
    end, and the protocol hears ConnectionDone in the accepting event."""
    lost: list[Any] = []

    class Lost(Protocol):
        def connectionLost(self, reason: Any) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Lost), interface="127.0.0.1")
    _arrived(port, b"", shut=True).close()
    _pump(reactor, lambda: bool(lost))
    assert [r.type for r in lost] == [ConnectionDone]
    assert all(getattr(r, "protocol", None) is None for r in reactor.getReaders())


def test_a_first_read_that_raises_drops_that_connection_only(reactor: Reactor) -> None:
    """A protocol whose first dataReceived raises is logged and disconnected;
    the connections accepted with it are served."""
    served: list[bytes] = []
    lost: list[Any] = []

    class Picky(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if data == b"bad":
                raise RuntimeError("first read went wrong")
            served.append(data)

        def connectionLost(self, reason: Any) -> None:
            lost.append(reason)

    port = reactor.listenTCP(0, Factory.forProtocol(Picky), interface="127.0.0.1")
    clients = [_arrived(port, data) for data in (b"bad", b"good")]
    events: list[dict[str, Any]] = []
    log.addObserver(events.append)
    try:
        _pump(reactor, lambda: bool(served) and bool(lost))
    finally:
        log.removeObserver(events.append)
        for client in clients:
            client.close()
    assert served == [b"good"] and len(lost) == 1
    assert any(e.get("isError") and "first read went wrong" in str(e.get("failure")) for e in events)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accepted_connections_have_tcp_nodelay_from_the_listening_socket(reactor: Reactor, host: str) -> None:
    """The kernel copies the listening socket's TCP_NODELAY to each socket it
    accepts: a connection has it without a setsockopt of its own, and says so."""
    made: list[Any] = []

    class Made(Protocol):
        def connectionMade(self) -> None:
            made.append(self.transport)

    try:
        port = reactor.listenTCP(0, Factory.forProtocol(Made), interface=host)
    except OSError:
        pytest.skip(f"no {host} here")
    assert port.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client = socket.create_connection((host, port.getHost().port))
    try:
        _pump(reactor, lambda: bool(made))
        transport = made[0]
        assert transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert transport.getTcpNoDelay()
    finally:
        client.close()


def test_tcp_nodelay_turned_off_and_on_again_is_set_each_time(reactor: Reactor) -> None:
    """setTcpNoDelay still turns Nagle's algorithm off and on when asked:
    only turning on what the socket already has is skipped."""
    made: list[Any] = []

    class Made(Protocol):
        def connectionMade(self) -> None:
            made.append(self.transport)

    port = reactor.listenTCP(0, Factory.forProtocol(Made), interface="127.0.0.1")
    client = _tcp(port)()
    try:
        _pump(reactor, lambda: bool(made))
        transport = made[0]
        transport.setTcpNoDelay(True)
        assert transport.getTcpNoDelay()
        transport.setTcpNoDelay(False)
        assert not transport.getTcpNoDelay()
        transport.setTcpNoDelay(True)
        assert transport.getTcpNoDelay()
    finally:
        client.close()


def test_pipelined_request_after_close_does_not_cut_the_answer(reactor: Reactor) -> None:
    """A client that pipelines a request behind ``Connection: close`` gets the whole
    first answer, and nothing for the second."""
    port = reactor.listenTCP(0, _http(reactor), interface="127.0.0.1")
    request = _CLOSE + b"GET /hit2 HTTP/1.1\r\nHost: a\r\n\r\n"
    assert _in_thread(reactor, lambda: _exchange(_tcp(port), request)).endswith(_ANSWER[-30:])
    answer = _in_thread(reactor, lambda: _exchange(_tcp(port), request))
    assert answer.count(b"HTTP/1.1") == 1 and answer.endswith(b"\r\n\r\nhit")


class _Writes(Protocol):
    """Answers the first bytes with ``writes`` (bytes as accel writes them, past
    Twisted's buffer while it is empty; ``None``: loseConnection, ``"abort"``:
    abortConnection), in one event; records why it was lost."""

    def __init__(self, writes: list[Any], lost: list[Any]) -> None:
        self._writes = writes
        self._lost = lost

    def dataReceived(self, data: bytes) -> None:
        for item in self._writes:
            if item is None:
                self.transport.loseConnection()
            elif item == "abort":
                self.transport.abortConnection()
            else:
                directwrite.write(self.transport, directwrite.plain_socket(self.transport), item)

    def connectionLost(self, reason: Any) -> None:
        self._lost.append(reason)


def _serve_writes(reactor: Reactor, writes: list[Any]) -> tuple[Any, list[Any]]:
    lost: list[Any] = []
    factory = Factory()
    factory.buildProtocol = lambda addr: _Writes(writes, lost)  # type: ignore[method-assign]
    return reactor.listenTCP(0, factory, interface="127.0.0.1"), lost


def test_bytes_queued_before_the_close_are_sent_first(reactor: Reactor) -> None:
    """More than the socket takes at once, then loseConnection: all of it arrives, then
    the close (Twisted's way: the transport closes once its buffer is sent)."""
    big = b"x" * (8 * 1024 * 1024)
    port, lost = _serve_writes(reactor, [big, None])
    assert _in_thread(reactor, lambda: _exchange(_tcp(port), b"go")) == big
    _pump(reactor, lambda: bool(lost))
    assert lost[0].type is ConnectionDone


def test_bytes_written_after_lose_connection_still_go(reactor: Reactor) -> None:
    """What is written after loseConnection, in the same event, is sent before the close."""
    port, lost = _serve_writes(reactor, [b"early ", None, b"late"])
    assert _in_thread(reactor, lambda: _exchange(_tcp(port), b"go")) == b"early late"
    _pump(reactor, lambda: bool(lost))
    assert lost[0].type is ConnectionDone


def test_abort_after_lose_connection_still_aborts(reactor: Reactor) -> None:
    """abortConnection after loseConnection, in the same event, resets the connection."""
    port, lost = _serve_writes(reactor, [b"never", None, "abort"])

    def client() -> bytes:
        with pytest.raises(ConnectionResetError):
            _exchange(_tcp(port), b"go")
        return b""

    _in_thread(reactor, client)
    _pump(reactor, lambda: bool(lost))
    assert [r.type for r in lost] == [ConnectionAborted]


def test_failing_connection_lost_is_logged_with_the_protocol_prefix(reactor: Reactor) -> None:
    """A protocol whose connectionLost raises, at a close at the end of an event, is
    logged under its own log prefix, and the reactor goes on serving."""

    class Bad(_Writes):
        def connectionLost(self, reason: Any) -> None:
            super().connectionLost(reason)
            raise RuntimeError("connectionLost went wrong")

    lost: list[Any] = []
    factory = Factory()
    factory.buildProtocol = lambda addr: Bad([b"ok", None], lost)  # type: ignore[method-assign]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    events: list[dict[str, Any]] = []
    log.addObserver(events.append)
    try:
        assert _in_thread(reactor, lambda: _exchange(_tcp(port), b"go")) == b"ok"
        _pump(reactor, lambda: bool(lost))
    finally:
        log.removeObserver(events.append)
    errors = [e for e in events if e.get("isError")]
    assert len(errors) == 1 and errors[0]["system"].startswith("Bad,0,127.0.0.1")
    assert _in_thread(reactor, lambda: _exchange(_tcp(port), b"again")) == b"ok"


def test_unix_listener_answers_and_closes(reactor: Reactor, tmp_path: Any) -> None:
    """listenUNIX makes a ports.UNIXPort; its connections answer and close cleanly."""
    path = str(tmp_path / "accel.sock")
    port = reactor.listenUNIX(path, _http(reactor))
    assert isinstance(port, ports.UNIXPort)

    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return sock

    answers = _in_thread(reactor, lambda: [_exchange(connect, _CLOSE) for _ in range(5)])
    assert all(answer.endswith(b"\r\n\r\nhit") for answer in answers)


def test_unix_connections_ignore_tcp_nodelay_quietly(reactor: Reactor, tmp_path: Any) -> None:
    """setTcpNoDelay on a UNIX connection does nothing and logs nothing, as
    Twisted's unix.Server: twisted.web's HTTPChannel (the demo origin) calls
    it on every connection; TCP's would log an error for each."""
    made: list[Any] = []

    class Made(Protocol):
        def connectionMade(self) -> None:
            made.append(self.transport)

    path = str(tmp_path / "quiet.sock")
    reactor.listenUNIX(path, Factory.forProtocol(Made))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    events: list[dict[str, Any]] = []
    log.addObserver(events.append)
    try:
        _pump(reactor, lambda: bool(made))
        made[0].setTcpNoDelay(True)
        made[0].setTcpNoDelay(False)
    finally:
        log.removeObserver(events.append)
        client.close()
    assert isinstance(made[0], ports.UNIXServer)
    assert [e for e in events if e.get("isError")] == []


def test_adopted_listener_answers_and_closes(reactor: Reactor) -> None:
    """adoptStreamPort (how workers serve inherited sockets) makes a ports.Port."""
    listening = socket.create_server(("127.0.0.1", 0))
    listening.setblocking(False)
    try:
        port = reactor.adoptStreamPort(listening.fileno(), socket.AF_INET, _http(reactor))
        assert isinstance(port, ports.Port)
        address = listening.getsockname()
        answer = _in_thread(reactor, lambda: _exchange(lambda: socket.create_connection(address), _CLOSE))
        assert answer.endswith(b"\r\n\r\nhit")
    finally:
        listening.close()


def test_an_adopted_unix_listener_leaves_its_path_when_it_stops(reactor: Reactor, tmp_path: Any) -> None:
    """A UNIX socket adopted (a worker's inherited listener) keeps its path, and
    still accepts, when the port stops: both belong to the process that bound
    it, and other workers, or those a reload starts, still accept on it."""
    path = str(tmp_path / "shared.sock")
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(5)
    listening.setblocking(False)
    try:
        port = reactor.adoptStreamPort(listening.fileno(), socket.AF_UNIX, _http(reactor))
        stopped = port.stopListening()
        done: list[object] = []
        stopped.addBoth(done.append)
        _pump(reactor, lambda: bool(done))
        assert done == [None]
        assert os.path.exists(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)  # refused if the socket was shut down
    finally:
        listening.close()


# Twisted's TLS hands pyOpenSSL its own certificate objects, which it deprecates.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL")
def test_tls_listener_answers_and_closes(reactor: Reactor, tmp_path: Any) -> None:
    """An ``ssl:`` listener (listenSSL: TLS over a ports.Port) still answers, and closes."""
    from twisted.internet.endpoints import serverFromString

    from tests.test_upstream import _self_signed

    pem, ca = _self_signed(str(tmp_path))
    (tmp_path / "server.pem").write_bytes(pem)
    endpoint = serverFromString(reactor, f"ssl:0:privateKey={tmp_path / 'server.pem'}:interface=127.0.0.1")
    listening: list[Any] = []
    endpoint.listen(_http(reactor)).addCallback(listening.append)
    port = listening[0]
    assert isinstance(port, ports.Port)
    client_context = ssl.create_default_context(cafile=ca)
    address = port.getHost()

    def connect() -> socket.socket:
        raw = socket.create_connection((address.host, address.port))
        raw.settimeout(10)
        return client_context.wrap_socket(raw, server_hostname="127.0.0.1")

    answers = _in_thread(reactor, lambda: [_exchange(connect, _CLOSE) for _ in range(3)])
    assert all(answer.endswith(b"\r\n\r\nhit") for answer in answers)


def test_a_close_left_by_a_timed_call_does_not_let_the_poll_wait(reactor: Reactor) -> None:
    """A close made by a timed call is done at the start of the next poll, and
    that poll does not wait: what the close scheduled (here, connectionLost's
    callLater) runs on the next turn, not after the timeout reckoned before."""
    lost: list[Any] = []
    made: list[Any] = []

    class Later(Protocol):
        def connectionMade(self) -> None:
            made.append(self)

        def dataReceived(self, data: bytes) -> None:
            reactor.callLater(0, self.transport.loseConnection)

        def connectionLost(self, reason: Any) -> None:
            lost.append(reactor.callLater(0, lambda: None))

    port = reactor.listenTCP(0, Factory.forProtocol(Later), interface="127.0.0.1")
    client = _tcp(port)()
    timeouts: list[Any] = []
    real = reactor._poller

    class Spy:
        def poll(self, timeout: float, maxevents: int) -> Any:
            timeouts.append(timeout)
            return real.poll(timeout, maxevents)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    try:
        _pump(reactor, lambda: bool(made))
        client.sendall(b"hi")
        _pump(reactor, lambda: bool(reactor.getDelayedCalls()))  # read: the close is scheduled
        reactor.runUntilCurrent()  # the timed call: loseConnection, left for the poll
        assert reactor._closing and not lost
        reactor._poller = Spy()
        reactor.doIteration(5)
        assert lost and timeouts == [0]
    finally:
        reactor._poller = real
        client.close()

"""Listening ports and server connections: Twisted's, with a cheaper accept and close.

A client that opens a connection for one request (``Connection: close``)
costs a server more for the connection than for the request. Twisted's
:class:`twisted.internet.tcp.Port` and :class:`~twisted.internet.tcp.Server`
spend much of it on things accel does not use:

* ``Port.doRead`` sets up a buffering logging context for every batch of
  accepts, and ``socket.accept`` converts the listening socket's family and
  type to enums for every socket it builds, a :class:`socket.socket` whose
  ``__init__`` and ``close`` are Python wrappers around the C object's;
* ``Server.__init__`` formats two strings per connection, a log prefix and
  a ``repr``, that are needed only if something logs or prints it;
* ``loseConnection`` with nothing left to send still registers the socket
  for writing and closes it on the reactor's next turn, after an empty
  ``send``: two ``epoll_ctl`` calls, a ``send`` and a turn per connection;
* a connection is registered with epoll as it is accepted and read on a
  later turn, although its client's first bytes (a request, a TLS
  ClientHello) have usually arrived by then.

:class:`Port` accepts with the listening socket's ``_accept`` directly,
wraps each descriptor in the C socket object (``_socket.socket``, the base
of :class:`socket.socket`: every method Twisted and accel call on a
connection's socket is its own), and leaves every error to Twisted's own
``doRead`` (which reserves a descriptor for ``EMFILE``, logs the others and
scales the number of accepts per turn): an accept that fails with anything
but ``EAGAIN`` is retried there.
:class:`Server` computes ``logstr`` and ``repr`` when asked. Its
:meth:`~Server.loseConnection`, when Twisted's write buffer is empty and no
producer is registered (accel writes past that buffer: see
:mod:`accel.directwrite`), stops reading at once and closes the connection
when the reactor has finished handling the current event: not in the
middle of the caller, whose protocol may still be using its state, and
not a turn later. Anything written or registered meanwhile sends the
connection down Twisted's usual path. The close is Twisted's orderly one
(``shutdown``, ``close``, the protocol's ``connectionLost`` with
``ConnectionDone``). ``getPeer`` returns the address the factory was given
instead of building another. On accel's reactor, :class:`Port` reads each
connection as it accepts it (:meth:`Server._read_first`, the reactor's own
read, after ``connectionMade``), and registers it with epoll only then, if
its protocol still reads: a request that came with its connection is
answered in the accepting event, and a connection closed there is never
registered at all (no ``epoll_ctl``, no second turn). A protocol that
pauses in ``connectionMade`` is not read until it resumes. ``doWrite``
counts its calls (:attr:`Server.writable`), the one thing added: how the
HTTP server tells a client that reads slowly from one that has stopped
reading. The UNIX classes
differ in the same ways (but for ``getPeer``).

Only :class:`accel.reactor.Reactor` makes these (``listenTCP``,
``listenUNIX``, ``adoptStreamPort``, and so ``listenSSL``, which is TLS
over ``listenTCP``) and closes what they leave for the end of an event
(:func:`end_of_event`); with another reactor, :class:`Server` closes as
Twisted's does.

Twisted internals relied on, all in this module (tests/test_ports.py
fails if they change): :meth:`Server.__init__` does what
``tcp.Server.__init__`` (with ``tcp.Connection`` and ``FileDescriptor``)
and ``unix.Server.__init__`` do, but for ``logstr`` and ``repstr``; the
close at the end of an event leaves what ``tcp.Connection.connectionLost``
leaves (``_shouldShutdown``, ``_aborting``); :meth:`Port.doRead` keeps
``numberAccepts`` and ``sessionno`` as ``tcp.Port.doRead`` does, and
builds addresses with ``_buildAddr``; the epoll reactor reads a ready
socket with ``_doReadOrWrite`` (given ``_POLL_IN``) and maps descriptors
to what it watches in ``_selectables``; ``FileDescriptor`` keeps unsent
bytes in ``dataBuffer`` and ``_tempDataLen`` (as :mod:`accel.directwrite`
also assumes), a UNIX connection its descriptors in ``_sendmsgQueue``, and
a connection that started TLS says so in ``TLS``.
"""

from __future__ import annotations

import _socket
import socket
from socket import socket as Socket  # noqa: N812 (the class, apart from the module)
from typing import Any

from twisted.internet import address, tcp, unix
from twisted.internet.error import ConnectionDone
from twisted.python import log
from twisted.python.failure import Failure

__all__ = ["Port", "Server", "UNIXPort", "UNIXServer", "end_of_event"]

#: Why a connection closed by :class:`Server` ended: one value, as Twisted's
#: reactor passes one to every connection whose ``doWrite`` closes it.
_DONE = Failure(ConnectionDone())

class _LeanServer:
    """What :class:`Server` and :class:`UNIXServer` change in Twisted's server transports."""

    # Provided by tcp.Server (tcp.Connection, FileDescriptor).
    reactor: Any
    socket: Socket
    protocol: Any
    sessionno: int
    server: Any
    hostname: Any
    connected: int
    disconnected: int
    disconnecting: int
    producer: Any
    dataBuffer: bytes
    _tempDataLen: int
    _writeDisconnecting: bool
    _writeDisconnected: bool
    _aborting: bool
    TLS: bool
    _shouldShutdown: bool
    _logstr: str | None = None
    _repstr: str | None = None
    #: How many times the reactor found the socket writable while the
    #: connection waited to send (its ``doWrite`` calls): the progress of a
    #: client that reads what it is sent, which the HTTP server's
    #: ``send_timeout`` watches (accel.http.server).
    writable: int = 0
    #: The address the accepting port built the protocol for (Server.getPeer).
    _peer: Any = None
    #: Between the accept and the first read (:meth:`_read_first`): the
    #: socket is not registered with the reactor yet. ``stopReading`` then
    #: only records that it is not to be read; ``startReading`` registers it.
    _unregistered: bool = False
    _wants_reading: bool = True

    def _lean_init(
        self,
        sock: Socket,
        protocol: Any,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
        reading: bool = True,
    ) -> None:
        """``tcp.Server.__init__`` without formatting ``logstr`` and ``repstr``;
        without ``reading``, the socket is read first by :meth:`_read_first`."""
        # FileDescriptor.__init__ (given a reactor), tcp.Connection.__init__:
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.socket = sock
        sock.setblocking(False)
        self.fileno = sock.fileno
        self.protocol = protocol
        # tcp.Server.__init__:
        self._protocol_class = protocol.__class__  # for repr and logstr once it is gone
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        if reading:
            self.startReading()
        else:
            self._unregistered = True
        self.connected = 1

    def startReading(self) -> None:
        """As Twisted's (the first read, if still to come, then registers nothing more)."""
        if self._unregistered:
            self._unregistered = False
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        """As Twisted's; before the first read, only recorded."""
        if self._unregistered:
            self._wants_reading = False
            return
        self.reactor.removeReader(self)

    def _read_first(self) -> None:
        """Read what the client sent with its connection, then have the reactor
        watch the socket if the protocol still reads.

        Clients send their first bytes (a request, a TLS ClientHello) as
        soon as the connection is open, and by the time it is accepted they
        have usually arrived. Read now, in the accepting event, they save
        the reactor a turn, and a connection answered and closed in it (one
        request with ``Connection: close``) is never registered with epoll:
        two ``epoll_ctl`` calls fewer. The read is the reactor's own
        (``_doReadOrWrite``, as for a readable socket): nothing there is
        ``EAGAIN``, an error or an end disconnects as usual.
        """
        if not self._unregistered:
            return  # registered by the protocol meanwhile: the reactor reads it
        if not (self._wants_reading and self.connected):
            self._unregistered = False  # paused, closing or closed already
            return
        reactor = self.reactor
        try:
            reactor._doReadOrWrite(self, self.fileno(), reactor._POLL_IN)
        finally:
            unregistered = self._unregistered
            self._unregistered = False
        if unregistered and self._wants_reading and self.connected:
            reactor.addReader(self)

    @property
    def logstr(self) -> str:
        """The log prefix ``tcp.Server.__init__`` would have set: ``protocol,session,host``."""
        logstr = self._logstr
        if logstr is None:
            logstr = self._logstr = self._make_logstr(getattr(self, "protocol", None))
        return logstr

    @logstr.setter
    def logstr(self, value: str) -> None:
        self._logstr = value

    def _make_logstr(self, protocol: Any) -> str:
        # Once connectionLost has dropped the protocol, its class name stands
        # in (an error raised by the protocol's connectionLost is logged with
        # the protocol's own prefix: see connectionLost).
        if protocol is None:
            prefix = self._protocol_class.__name__
        else:
            prefix = self._getLogPrefix(protocol)  # type: ignore[attr-defined]
        return f"{prefix},{self.sessionno},{self.hostname}"

    @property
    def repstr(self) -> str:
        """The ``repr`` ``tcp.Server.__init__`` would have set."""
        repstr = self._repstr
        if repstr is None:
            number = self.server._realPortNumber if self.server is not None else None
            repstr = self._repstr = f"<{self._protocol_class.__name__} #{self.sessionno} on {number}>"
        return repstr

    @repstr.setter
    def repstr(self, value: str) -> None:
        self._repstr = value

    def connectionLost(self, reason: Failure) -> None:
        """As Twisted's; if the protocol's ``connectionLost`` raises, the log
        prefix the reactor labels the error with is the protocol's."""
        protocol = getattr(self, "protocol", None)
        try:
            tcp.Connection.connectionLost(self, reason)  # type: ignore[arg-type]
        except BaseException:
            if self._logstr is None:
                self._logstr = self._make_logstr(protocol)
            raise

    def doWrite(self) -> Any:
        """As Twisted's, counted in :attr:`writable`."""
        self.writable += 1
        return super().doWrite()  # type: ignore[misc]

    def loseConnection(self) -> None:
        """Close once everything written is sent: at the end of this event if it all is.

        See the module docstring. Otherwise, or with a reactor that is not
        accel's, as Twisted's ``FileDescriptor.loseConnection``.
        """
        pending = getattr(self.reactor, "_closing", None)
        if (
            pending is None
            or not self.connected
            or self.disconnecting
            or not self._nothing_to_send()
            or self._writeDisconnecting
            or self.TLS
        ):
            tcp.Server.loseConnection(self)  # type: ignore[arg-type]
            return
        self.stopReading()
        self.disconnecting = 1
        pending.append(self)

    def _nothing_to_send(self) -> bool:
        """Whether Twisted's ``doWrite`` would find nothing to send, and no producer to ask."""
        return self.producer is None and not self.dataBuffer and not self._tempDataLen

    def _close_pending(self) -> None:
        """The end of the event in which :meth:`loseConnection` found nothing to send."""
        if self.disconnected or self._aborting:
            return  # gone meanwhile (abortConnection, the reactor's shutdown)
        if not self._nothing_to_send():
            # Written to, or given a producer, since: Twisted's way (doWrite
            # sends, or asks the producer, and closes when done).
            self.startWriting()  # type: ignore[attr-defined]
            return
        # tcp.Connection.connectionLost(ConnectionDone), less what cannot
        # apply: there is no producer, and the close is orderly.
        self.disconnected = 1
        self.connected = 0
        skt = self.socket
        watched = getattr(self.reactor, "_selectables", None)  # epoll's: fd -> selectable
        if watched is None or watched.get(skt.fileno()) is self:
            self.stopReading()
            self.stopWriting()  # type: ignore[attr-defined]
        try:
            if self._shouldShutdown:
                skt.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            skt.close()
        except OSError:
            pass
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        try:
            protocol.connectionLost(_DONE)
        except BaseException:
            if self._logstr is None:
                self._logstr = self._make_logstr(protocol)
            raise


class Server(_LeanServer, tcp.Server):  # type: ignore[misc]
    """A TCP connection accepted by :class:`Port` (see the module docstring)."""

    #: The socket is known to have ``TCP_NODELAY``: inherited from the
    #: listening socket (Port), until ``setTcpNoDelay`` is called otherwise.
    _no_delay: bool = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        """As Twisted's, but nothing to do to turn on what the socket has already.

        Only here: a UNIX connection's (``unix.Server``'s) does nothing.
        """
        if enabled and self._no_delay:
            return
        self._no_delay = False
        tcp.Connection.setTcpNoDelay(self, enabled)  # type: ignore[arg-type]

    def getPeer(self) -> Any:
        """The client's address: the one the factory was given to build the protocol.

        (Twisted's builds an equal one per call. A UNIX connection's differs:
        ``UNIXAddress(None)`` for an unnamed client, not ``UNIXAddress('')``.)
        """
        peer = self._peer
        if peer is None:
            return super().getPeer()
        return peer

    def __init__(
        self,
        sock: Socket,
        protocol: Any,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
        reading: bool = True,
    ) -> None:
        self._lean_init(sock, protocol, client, server, sessionno, reactor, reading)


class UNIXServer(_LeanServer, unix.Server):  # type: ignore[misc]
    """A UNIX connection accepted by :class:`UNIXPort` (see the module docstring)."""

    def __init__(
        self,
        sock: Socket,
        protocol: Any,
        client: Any,
        server: Any,
        sessionno: int,
        reactor: Any,
        reading: bool = True,
    ) -> None:
        unix._SendmsgMixin.__init__(self)
        self._lean_init(sock, protocol, (client, None), server, sessionno, reactor, reading)

    def _nothing_to_send(self) -> bool:
        """... and no descriptors waiting to be sent (``sendFileDescriptor``)."""
        return not self._sendmsgQueue and super()._nothing_to_send()


#: Connections a port accepts in one event when it reads each as it accepts
#: it (:meth:`Server._read_first`). Each is then answered in that event, so
#: Twisted's batch, which grows by 20 every time it is filled, would hold
#: every other socket's events for as long as the batch takes: with a new
#: connection per request (wrk, 64 connections), an unbounded batch gave a
#: p99 of 17-20 ms where 16 gives 10-12 ms (nginx's: 10-11), at the same rate.
READ_AT_ACCEPT_BATCH = 16


class _LeanPort:
    """What :class:`Port` and :class:`UNIXPort` change in Twisted's listening ports."""

    # Provided by tcp.Port.
    socket: Socket
    factory: Any
    reactor: Any
    transport: Any
    numberAccepts: int
    sessionno: int
    _socket_args: tuple[int, int, int] = (0, 0, 0)
    #: Whether the listening socket has ``TCP_NODELAY``, which (on Linux)
    #: the sockets it accepts inherit: see :class:`Port`.
    _no_delay = False
    #: Whether connections are read as they are accepted (Server._read_first):
    #: on accel's reactor (which closes at the end of an event), not others.
    _read_at_accept = False

    def startListening(self) -> None:
        super().startListening()  # type: ignore[misc]
        listening = self.socket
        # Plain integers, once: socket.accept converts them to enums per socket.
        self._socket_args = (int(listening.family), socket.SOCK_STREAM, listening.proto)
        self._read_at_accept = getattr(self.reactor, "_closing", None) is not None

    def doRead(self) -> None:
        """Accept up to ``numberAccepts`` connections, as ``tcp.Port.doRead`` does, more cheaply
        (at most :data:`READ_AT_ACCEPT_BATCH` when each is read as it is accepted)."""
        limit = self.numberAccepts
        if self._read_at_accept and limit > READ_AT_ACCEPT_BATCH:
            limit = READ_AT_ACCEPT_BATCH
        accepted = 0
        try:
            accept = self.socket._accept  # type: ignore[attr-defined]
            family, kind, proto = self._socket_args
            build = self.factory.buildProtocol
            make_address = self._buildAddr  # type: ignore[attr-defined]
            transport = self.transport
            reactor = self.reactor
            read_now = self._read_at_accept
            no_delay = self._no_delay
            while accepted < limit:
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    break
                except OSError:
                    # EMFILE, EPERM and the like: Twisted knows what to do.
                    tcp.Port.doRead(self)  # type: ignore[arg-type]
                    return
                accepted += 1
                skt = _socket.socket(family, kind, proto, fd)
                if family == socket.AF_INET6:
                    # As Twisted: the scope id goes into the host.
                    host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0], *addr[1:])
                peer = make_address(addr)
                protocol = build(peer)
                if protocol is None:
                    skt.close()
                    continue
                number = self.sessionno
                self.sessionno = number + 1
                connection = transport(skt, protocol, addr, self, number, reactor, not read_now)
                connection._peer = peer  # its getPeer: the same address, not built again
                if no_delay:
                    connection._no_delay = True
                protocol.makeConnection(connection)
                if read_now:
                    try:
                        connection._read_first()
                    except KeyboardInterrupt:
                        raise
                    except BaseException:  # noqa: BLE001 (as accel's reactor: log, go on accepting)
                        log.err(system=connection.logstr)
            # Scale the accepts per turn to the traffic, as Twisted does.
            self.numberAccepts = limit + 20 if accepted == limit else accepted or 1
        except BaseException:  # noqa: BLE001 (as Twisted's tcp.Port.doRead: log, keep accepting)
            log.deferr()


class Port(_LeanPort, tcp.Port):
    """A TCP listening port whose connections are :class:`Server` (see the module docstring).

    Its socket has ``TCP_NODELAY``, so that every connection it accepts has
    it from the start (Linux copies it to accepted sockets): a protocol that
    turns Nagle's algorithm off, as accel's HTTP server does, makes no
    ``setsockopt`` call per connection (:meth:`Server.setTcpNoDelay`).
    """

    transport = Server

    def startListening(self) -> None:
        super().startListening()
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # then each connection sets it, if its protocol asks
        else:
            self._no_delay = True


class UNIXPort(_LeanPort, unix.Port):
    """A UNIX listening port whose connections are :class:`UNIXServer` (see the module docstring).

    One made from a socket already listening (``adoptStreamPort``: a
    worker's inherited listener) leaves the socket's path when it stops,
    where Twisted's removes it, and closes its descriptor without the
    ``shutdown`` Twisted makes first, which would stop the socket itself
    accepting: the socket and its path belong to the process that bound
    them, and the other workers, and those a reload starts, still accept on
    them (:mod:`accel.workers`; the parent removes the path as it stops).
    """

    transport = UNIXServer
    #: Made from a socket already listening: its path is not this port's to remove.
    _adopted = False

    @classmethod
    def _fromListeningDescriptor(cls, reactor: Any, fd: int, factory: Any) -> UNIXPort:  # noqa: N802 (Twisted's name)
        port = super()._fromListeningDescriptor(reactor, fd, factory)
        port._adopted = True
        port._shouldShutdown = False
        return port

    def connectionLost(self, reason: Failure) -> None:
        if self._adopted:
            tcp.Port.connectionLost(self, reason)  # unix.Port's, but for the unlink
        else:
            super().connectionLost(reason)


def end_of_event(pending: list[Any]) -> None:
    """Close the connections :meth:`Server.loseConnection` left for the end of
    the event just handled; ``pending`` is the reactor's list of them, emptied.

    An error in one (its protocol's ``connectionLost``) is logged, as the
    reactor logs one raised while handling an event, and the others close.
    """
    for transport in pending:  # closes may add more: the loop sees them
        try:
            transport._close_pending()
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 (as Twisted's callWithLogger: log, go on)
            log.err(system=transport.logstr)
    pending.clear()

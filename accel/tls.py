"""TLS whose records leave when they are written, for clients and origins.

Twisted puts a :class:`~twisted.protocols.tls.BufferingTLSTransport`
between a connection and its protocol, on both sides (``listenSSL``,
``wrapClientTLS``). A write to it waits for the reactor's next turn (a
``callLater(0)`` that gathers small writes into one ``SSL_write``); the
records that write makes are then handed to the TCP transport one at a
time, and the TCP transport sends them on a turn after that, having
registered the socket for writability. For a cached 1 KiB answer that is
a timed call, two ``epoll_ctl`` calls and two turns of the reactor per
request, about a third of a TLS hit's CPU; a request to an ``https``
origin pays the same.

accel writes whole messages at once (the HTTP server holds back what it
writes while it handles an event: see :func:`accel.directwrite.batched`;
the origin client writes a request's head in one piece), so there is
nothing to gather. :class:`TLSConnection` encrypts each write as it comes,
reads every record it made out of the memory BIO in one piece, and sends
that with :func:`accel.directwrite.write`: straight to the socket when the
TCP transport has nothing queued, else after what is queued, by the
transport, which then applies back-pressure as usual. Everything else
(handshake, reading, ``close_notify``, producers, errors) is
:class:`~twisted.protocols.tls.TLSMemoryBIOProtocol`'s.

:class:`TLSFactory` makes them: accel's reactor's ``listenSSL`` and the
workers wrap client connections in it, and :func:`tls_client_endpoint`
wraps an origin's endpoint in it, as ``wrapClientTLS`` does with
Twisted's.

Twisted internals relied on (tests/test_tls.py fails if they change): the
protocol's ``_write`` (every application write, and the buffered ones once
the handshake is done) and ``_flushSendBIO`` (everything else that makes
TLS records: the handshake, alerts, ``close_notify``), with the state they
use: ``_tlsConnection``, ``_lostTLSConnection``, ``_bufferedWrite`` and
``_tlsShutdownFinished``.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Error, WantReadError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IProtocol, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from accel import directwrite

__all__ = ["TLSConnection", "TLSFactory", "tls_client_endpoint"]

#: The most plaintext one TLS record carries (RFC 8446 section 5.1).
_RECORD = 2**14
#: What a record may add to its plaintext, generously: header, nonce,
#: padding and tag, in TLS 1.2 and 1.3.
_OVERHEAD = 256
#: Bytes read out of the memory BIO at a time when nothing says how many
#: to expect (the handshake, alerts, ``close_notify``): Twisted's size.
_FLUSH = 2**15


class TLSConnection(TLSMemoryBIOProtocol):
    """:class:`~twisted.protocols.tls.TLSMemoryBIOProtocol` sending each write's
    records at once, in one ``send`` when the socket takes them."""

    #: The plain socket under the TLS layer (:func:`accel.directwrite.plain_socket`),
    #: or ``None``: then records go through the transport's ``write``.
    _socket: Any = None

    def makeConnection(self, transport: Any) -> None:
        """As Twisted's, noting the socket to send on."""
        self._socket = directwrite.plain_socket(transport)
        super().makeConnection(transport)

    def _write(self, data: bytes) -> None:
        """Encrypt ``data`` and send its records, together.

        As ``TLSMemoryBIOProtocol._write``, which reads the BIO after each
        record, but for the read: once, after the last record. Before the
        handshake is done (``WantReadError``) the rest is buffered by the
        layer, to be written when it is.
        """
        if self._lostTLSConnection:
            return
        connection = self._tlsConnection
        length = len(data)
        view = memoryview(data) if length > _RECORD else data
        done = 0
        while done < length:
            try:
                done += connection.send(view[done : done + _RECORD])
            except WantReadError:
                self._bufferedWrite(bytes(view[done:]))
                break
            except Error:
                # As Twisted's: it sends what the BIO holds (an alert, the
                # records made before) and closes.
                self._tlsShutdownFinished(Failure())
                return
        if done:
            self._send_records(done + (done // _RECORD + 1) * _OVERHEAD)

    def _flushSendBIO(self) -> None:
        """Send whatever TLS records the connection has made."""
        self._send_records(_FLUSH)

    def _send_records(self, size: int) -> None:
        """Read the memory BIO out, ``size`` bytes at a time, and send what it held."""
        connection = self._tlsConnection
        try:
            data = connection.bio_read(size)
        except WantReadError:
            return  # nothing made
        if len(data) == size:
            parts = [data]
            while True:
                try:
                    more = connection.bio_read(size)
                except WantReadError:
                    break
                parts.append(more)
                if len(more) < size:
                    break
            data = b"".join(parts)
        directwrite.write(self.transport, self._socket, data)


class TLSFactory(TLSMemoryBIOFactory):
    """:class:`~twisted.protocols.tls.TLSMemoryBIOFactory` making
    :class:`TLSConnection` connections (server or client side)."""

    protocol = TLSConnection


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    """An endpoint whose connections start TLS as soon as they are made."""

    def __init__(self, creator: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint) -> None:
        self._creator = creator
        self._wrapped = wrapped

    def connect(self, protocolFactory: Factory) -> Deferred[IProtocol]:  # noqa: N803 (Twisted API)
        """Connect the wrapped endpoint, TLS on top; fires with ``protocolFactory``'s protocol."""
        connecting = self._wrapped.connect(TLSFactory(self._creator, True, protocolFactory))
        return connecting.addCallback(lambda layer: layer.wrappedProtocol)


def tls_client_endpoint(
    creator: IOpenSSLClientConnectionCreator, wrapped: IStreamClientEndpoint
) -> IStreamClientEndpoint:
    """``wrapped`` with TLS on top, as ``twisted.internet.endpoints.wrapClientTLS``
    makes it (``creator``: ``optionsForClientTLS``, which verifies the peer),
    with :class:`TLSConnection` as the layer."""
    return _TLSClientEndpoint(creator, wrapped)

"""Writing to a plain socket past Twisted's write buffer while it is empty.

``transport.write`` on a Twisted TCP or UNIX connection appends to the
transport's buffer, registers the socket for writability (``epoll_ctl``),
sends on the reactor's next turn and unregisters it (``epoll_ctl`` again).
For the usual exchange (one small response per request, or one request head
per origin request, with nothing queued) that is a third of a small cache
hit's cost. :func:`write` sends such bytes with one ``send`` instead, and
hands whatever the socket does not take at once (it is full, or broken) to
the transport, which sends it in order when it can, pausing producers as
usual, or finds the error and closes.

:func:`batched` holds writes back for the length of one event: while an
origin's bytes are delivered, a request is handled, or what waits for the
store's commit at the end of a reactor turn runs, a client
connection written to (a response's head, its body, the end of its chunked
coding) keeps what it is given and sends it all at once when the event is
handled (:func:`hold`). A small response relayed from an origin (stored on
its way or not), or served
from the cache on the general path, thus leaves in one ``send`` rather than
one for its head and one for its body, without waiting for anything that
has not already arrived.

It relies on two attributes of Twisted's ``FileDescriptor`` that are not
public: ``dataBuffer`` (with ``offset``) and ``_tempDataLen`` hold what the
transport has not sent yet. :func:`plain_socket` only returns a socket for
transports that have them; any other transport (TLS above all, whose bytes
must go through the TLS layer) always takes the ordinary path.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

__all__ = [
    "batched",
    "buffer_empty",
    "hold",
    "plain_socket",
    "queued",
    "send_queue",
    "waiting",
    "write",
    "write_file",
    "write_parts",
]


def plain_socket(transport: object) -> socket.socket | None:
    """The socket under a plain TCP or UNIX ``transport``, or ``None`` (TLS, tests, others)."""
    # tcp.Connection: the server and client sides of TCP and UNIX connections.
    if isinstance(transport, tcp.Connection) and hasattr(transport, "_tempDataLen"):
        return transport.socket  # type: ignore[no-any-return]
    return None


def send_queue(transport: object) -> Any | None:
    """The plain transport whose buffer holds what ``transport`` has not sent, or ``None``.

    ``transport`` itself when it is plain TCP or UNIX; for TLS over plain
    TCP, the TCP transport below, where the TLS layer puts each record as
    soon as it is written (the layer keeps bytes of its own only before its
    handshake ends, and then only what was written before that).
    """
    if plain_socket(transport) is not None:
        return transport
    if isinstance(transport, TLSMemoryBIOProtocol) and plain_socket(transport.transport) is not None:
        return transport.transport
    return None


def queued(transport: Any) -> int:
    """Bytes a plain transport holds, written but not yet sent."""
    return transport._tempDataLen + len(transport.dataBuffer) - getattr(transport, "offset", 0)  # type: ignore[no-any-return]


def waiting(transport: Any) -> bool:
    """Whether a plain transport waits for its socket to take more: bytes it
    holds, or a pull producer (a ``sendfile`` sender) it asks once it can send."""
    if transport._tempDataLen or transport.dataBuffer:
        return True
    return transport.producer is not None and not transport.streamingProducer


def buffer_empty(transport: Any) -> bool:
    """Whether a plain transport has sent everything written to it and is not closing."""
    return not transport._tempDataLen and not transport.dataBuffer and not transport.disconnecting


#: Sends tried in a row while the socket keeps taking part of the data. A
#: socket with ``TCP_NOTSENT_LOWAT`` (the server's client connections) takes
#: a large write in pieces: each send stops at the limit having pushed what
#: it queued, and the next usually takes more at once, which is much cheaper
#: than leaving the rest to the transport (a reactor turn and two
#: ``epoll_ctl`` calls). Bounded, so a slow socket goes to the transport.
_TRIES = 8


def write(transport: Any, sock: socket.socket | None, data: bytes) -> None:
    """Send ``data`` on ``transport``, straight to ``sock`` when nothing is queued before it.

    ``sock`` is :func:`plain_socket` of ``transport`` (``None``: the transport).
    """
    if sock is not None and buffer_empty(transport):
        for _ in range(_TRIES):
            try:
                sent = sock.send(data)
            except OSError:
                break  # EAGAIN, or an error the transport will report
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


def write_parts(transport: Any, sock: socket.socket | None, parts: tuple[bytes, ...]) -> None:
    """:func:`write` of the concatenation of ``parts``, without copying them (``sendmsg``)."""
    if sock is not None and buffer_empty(transport):
        try:
            sent = sock.sendmsg(parts)
        except OSError:
            sent = 0
        if sent == sum(len(part) for part in parts):
            return
        rest = b"".join(parts)[sent:]
        if sent:
            write(transport, sock, rest)  # it took some: it may take more now
        else:
            transport.write(rest)
        return
    transport.writeSequence(parts)


_T = TypeVar("_T")

def write_file(transport: Any, sock: socket.socket, head: bytes, fd: int, data: bytes) -> None:
    """``head`` then ``data``, sending ``data`` from ``fd`` (which reads it from
    offset 0) with ``sendfile`` when nothing is queued before it.

    The head goes with ``MSG_MORE``, so the kernel sends it in the same
    segments as the start of the file. Whatever the socket does not take
    (full), or the file does not give (gone short), is sent from ``data`` by
    the transport, in order.
    """
    if not buffer_empty(transport):
        transport.writeSequence((head, data))
        return
    try:
        sent = sock.send(head, socket.MSG_MORE)
    except OSError:
        sent = 0
    if sent < len(head):
        transport.writeSequence((head[sent:], data))
        return
    offset, length = 0, len(data)
    out = sock.fileno()
    for _ in range(_TRIES):
        try:
            sent = os.sendfile(out, fd, offset, length - offset)
        except OSError:
            break  # EAGAIN, or an error the transport will report
        if not sent:
            break  # the file is shorter than it was
        offset += sent
        if offset == length:
            return
    transport.write(data[offset:])


#: While :func:`batched` runs: the flushes of the connections holding writes
#: back until it returns; ``None`` otherwise.
_flushes: list[Callable[[], None]] | None = None


def hold(flush: Callable[[], None]) -> bool:
    """Whether writes may be held back now; if so, ``flush`` is called to send them.

    True only inside :func:`batched`: the caller keeps what it is given to
    write, and ``flush`` sends it, once, when the batch ends (or earlier,
    should the caller need to: a second call then finds nothing to send).
    """
    flushes = _flushes
    if flushes is None:
        return False
    flushes.append(flush)
    return True


def batched(handle: Callable[[_T], object], event: _T) -> None:
    """``handle(event)``, then the flushes of the writes it held back (:func:`hold`).

    For an event that may write to connections in pieces: an origin
    connection's bytes, a request handed to the proxy, the store's
    callbacks after a commit. Inside another
    batch, it is part of that one.
    """
    global _flushes  # noqa: PLW0603 (the batch in progress, at most one)
    if _flushes is not None:
        handle(event)
        return
    _flushes = flushes = []
    try:
        handle(event)
    finally:
        _flushes = None
        for flush in flushes:
            flush()

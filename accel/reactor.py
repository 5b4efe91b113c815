"""accel's reactor: Twisted's epoll reactor, minus a logging context per event.

For every ready descriptor, Twisted's :class:`EPollReactor` calls
``log.callWithLogger(selectable, ...)``: it asks the selectable for its
``logPrefix()``, pushes a context for the legacy ``twisted.python.log``
system (so that a ``log.msg`` made while handling the event is labelled
with it), runs the handler, and pops the context. For a server answering
small cached objects that is about a sixth of its CPU: more than parsing the
request, looking it up and writing the answer together (docs/performance.rst).

:class:`Reactor` differs from its parent in :meth:`Reactor.doPoll` only: it
calls the same handler (``_doReadOrWrite``, which already logs and
disconnects a selectable whose ``doRead`` or ``doWrite`` raised) directly,
and logs, as ``callWithLogger`` does, anything that escapes it. accel logs
with :class:`twisted.logger.Logger`, which never reads that context; only a
legacy ``log.msg`` made inside an event (some of Twisted's own) loses its
prefix and is labelled ``-``. :meth:`Reactor.timeout` reckons how long a
poll may wait as its parent does, without two calls to builtins per turn.

``twistd accel`` installs it unless the reactor is already chosen (twistd's
``--reactor`` option, or an import of :mod:`twisted.internet.reactor`
before the service is made); workers use it when their parent does. Where
there is no epoll (not Linux), Twisted's default reactor is used.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

from twisted.internet.error import UnsupportedAddressFamily
from twisted.python import log

from accel import ports, tls

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # pragma: no cover - no epoll on this platform
    EPollReactor = None  # type: ignore[assignment,misc]

__all__ = ["Reactor", "install", "install_default", "installed"]

#: The longest poll, in seconds, as Twisted's ``ReactorBase.timeout`` has it.
_LONGEST_WAIT = 2147483


if EPollReactor is not None:

    class Reactor(EPollReactor):  # type: ignore[misc,valid-type]
        """:class:`EPollReactor` dispatching events without ``callWithLogger``,
        with leaner listening ports (:mod:`accel.ports`)."""

        def __init__(self) -> None:
            #: Connections to close once the event being handled is
            #: (:meth:`accel.ports.Server.loseConnection`).
            self._closing: list[Any] = []
            super().__init__()

        def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
            """As Twisted's, with an :class:`accel.ports.Port` (also under ``listenSSL``)."""
            listening = ports.Port(port, factory, backlog, interface, self)
            listening.startListening()
            return listening

        def listenSSL(
            self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
        ) -> Any:
            """As Twisted's (TLS over :meth:`listenTCP`), with :class:`accel.tls.TLSConnection`
            connections, which send each write's records at once."""
            listening = self.listenTCP(port, tls.TLSFactory(contextFactory, False, factory), backlog, interface)
            listening._type = "TLS"
            return listening

        def listenUNIX(
            self, address: Any, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
        ) -> Any:
            """As Twisted's, with an :class:`accel.ports.UNIXPort`."""
            listening = ports.UNIXPort(address, factory, backlog, mode, self, wantPID)
            listening.startListening()
            return listening

        def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
            """As Twisted's (workers serve inherited sockets), with :mod:`accel.ports`' ports."""
            if addressFamily not in self._supportedAddressFamilies:
                raise UnsupportedAddressFamily(addressFamily)
            if addressFamily == socket.AF_UNIX:
                listening = ports.UNIXPort._fromListeningDescriptor(self, fileDescriptor, factory)
            else:
                listening = ports.Port._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
            listening.startListening()
            return listening

        def doPoll(self, timeout: float | None) -> None:
            """Poll for events and handle each one (``EPollReactor.doPoll``, leaner)."""
            closing = self._closing
            if closing:
                # Left by what ran since the last poll (timed calls, calls
                # from threads): closed now, before waiting for more. The
                # timeout was reckoned before these closes, which may have
                # scheduled calls of their own (connectionLost): look
                # without waiting, so that the next turn runs them.
                ports.end_of_event(closing)
                timeout = 0
            if timeout is None:
                timeout = -1  # wait indefinitely
            selectables = self._selectables
            try:
                events = self._poller.poll(timeout, len(selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    continue  # removed while handling an earlier event
                try:
                    handle(selectable, fd, event)
                except KeyboardInterrupt:
                    raise
                except BaseException:  # noqa: BLE001 (as Twisted's callWithLogger: log, go on)
                    # Only _disconnectSelectable (connectionLost) can raise
                    # here: log it as callWithLogger would, and go on.
                    log.err(system=_prefix(selectable))
                if closing:
                    ports.end_of_event(closing)

        doIteration = doPoll

        def timeout(self) -> float | None:
            """How long the next poll may wait: ``ReactorBase.timeout``'s value.

            Without its ``max(0, min(longest, delay))``: the builtins parse
            their arguments as keywords-capable calls, about 900 instructions
            each, twice a reactor turn (four turns a pass-through request).
            """
            self._insertNewDelayedCalls()
            pending = self._pendingTimedCalls
            if not pending:
                return None
            delay = pending[0].time - self.seconds()
            if delay <= 0:
                return 0
            # 2 ** 31 / 1000: the milliseconds epoll_wait takes as a C int.
            return delay if delay < _LONGEST_WAIT else _LONGEST_WAIT  # noqa: FURB136 (min() is the call avoided)

else:  # pragma: no cover
    Reactor = None  # type: ignore[assignment,misc]


def _prefix(selectable: Any) -> str:
    try:
        return str(selectable.logPrefix())
    except Exception:  # noqa: BLE001 (as Twisted's _getLogPrefix)
        return "(buggy logPrefix method)"


def install() -> Any:
    """Install a :class:`Reactor` as the global reactor and return it."""
    from twisted.internet.main import installReactor

    if Reactor is None:  # pragma: no cover
        raise RuntimeError("accel's reactor needs epoll (Linux)")
    reactor = Reactor()
    installReactor(reactor)
    return reactor


def install_default() -> bool:
    """Install :class:`Reactor` if no reactor is installed yet and epoll exists; whether it did."""
    if "twisted.internet.reactor" in sys.modules or Reactor is None:
        return False
    install()
    return True


def installed(reactor: Any) -> bool:
    """Whether ``reactor`` is accel's."""
    return Reactor is not None and isinstance(reactor, Reactor)

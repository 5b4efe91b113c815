"""Several worker processes serving the same listeners and the same store.

``--workers N`` runs the ``twistd`` process plus ``N - 1`` children, each a
whole accel (its own reactor, origin pools, hot tier and ``Store`` on the
shared cache directory: diskcache is safe across processes, and the store's
change stamps carry invalidations between their hot tiers).

The parent creates every listening socket before the reactor runs and hands
them to the children as inherited file descriptors, so a child never binds
anything itself and the listeners' ports (even port 0) and privileges are
decided once. For TCP each worker gets *its own* socket, all bound to the
same address with ``SO_REUSEPORT``: the kernel spreads new connections
evenly over the workers, where one shared accept queue lets whichever
process wakes first accept a whole burst. A UNIX socket cannot be shared
that way, so its one socket is inherited by every worker. A TLS (``ssl:``)
listener is a TCP listener whose connections each worker wraps in TLS
itself, with a context built from the same description (as
``reactor.listenSSL`` does with ``TLSMemoryBIOFactory``). The parent keeps
every socket open, so connections waiting for a worker that is restarting
are not lost.

``--workers auto``, the default, is one worker per CPU this process may run
on (:func:`available_cpus`); :func:`plan_workers` decides, and settles on
one worker when a listener cannot be shared (only an explicit number is
refused for that, by the configuration).

A child that exits is started again after a delay (doubling up to a minute
while it keeps failing); stopping the service stops the children (TERM,
on which each lets its requests in progress finish for the configured
``shutdown_timeout``, then KILL if it is still running
:data:`_STOP_MARGIN` seconds after that). SIGUSR1 to the parent is passed on
to every child (each reopens its access log). A configuration reload
(SIGHUP to the parent, :meth:`WorkerPool.reload`) replaces each child with
a new one, started before the old one is told to stop.

A child whose parent is gone, even killed with SIGKILL, stops by itself:
its standard input is a pipe from the parent, and the end of that pipe
ends the child. Children ignore SIGINT (a Ctrl-C at the terminal reaches
the whole process group; the parent stops them) and SIGHUP (the parent
drives reloads). Children log to their standard error, which the parent relays to its own
log with the worker's number; their standard output is the parent's, so an
access log on standard output (``--access-log -``) gets every worker's lines
as they are.

Run as a module (``python -m accel.workers``) this is the child: it reads
its configuration and descriptors from standard input (a length-prefixed
pickle written by the parent, which is trusted: it is the same program)
and serves until terminated.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.application.service import Service
from twisted.internet import abstract
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone, ProcessExitedAlready
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from accel.config import MAX_WORKERS, Config, unshareable_listener, with_backlog
from accel.reactor import install, installed
from accel.tls import TLSFactory

__all__ = [
    "Listener",
    "ListenerService",
    "WorkerPlan",
    "WorkerPool",
    "available_cpus",
    "bind_listeners",
    "plan_workers",
    "serving_factory",
]

_log = Logger()

#: Seconds before restarting a child that exited, doubled while it keeps
#: failing within a minute of its start, up to :data:`_MAX_RESTART_DELAY`.
_RESTART_DELAY = 1.0
_MAX_RESTART_DELAY = 60.0
#: Seconds a child has to exit after TERM, beyond its ``shutdown_timeout``,
#: before it is killed: for closing its store and logs once its connections
#: are gone.
_STOP_MARGIN = 5.0


#: The length prefix of the parent's message to a child.
_HEADER = struct.Struct("!I")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system
    has one, else every CPU), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this system
        return max(1, os.cpu_count() or 1)


@frozen
class WorkerPlan:
    """How many workers to run; ``reason`` says why ``auto`` settled on one."""

    count: int
    reason: str | None = None


def plan_workers(config: Config, cpus: int) -> WorkerPlan:
    """The number of workers ``config`` asks for, on a machine with ``cpus`` usable CPUs.

    An explicit number is taken as it is (the configuration has checked
    that the listeners can be shared). ``auto`` is one per CPU, but one in
    all when a listener cannot be shared between processes.
    """
    if config.workers is not None:
        return WorkerPlan(config.workers)
    count = max(1, min(cpus, MAX_WORKERS))
    culprit = unshareable_listener(config.listen)
    if count > 1 and culprit is not None:
        return WorkerPlan(1, f"--workers auto: one worker, as the listener {culprit!r} cannot be shared by several")
    return WorkerPlan(count)


@frozen
class Listener:
    """One listening socket, as inherited: its descriptor and address family."""

    fileno: int
    family: int


def bind_listeners(descriptions: Sequence[str], workers: int, reactor: Any) -> list[list[socket.socket]]:
    """For each listen description, the listening sockets of each of ``workers`` workers.

    TCP and TLS: ``workers`` sockets bound to one address with
    ``SO_REUSEPORT`` (port 0 is resolved by the first); UNIX: one socket,
    repeated. Descriptions are parsed by Twisted (the configuration has
    already checked them, and :func:`plan_workers` any other kind).
    """
    out = []
    for description in descriptions:
        endpoint = serverFromString(reactor, with_backlog(description))
        # Twisted keeps an endpoint's address in private attributes and has
        # no public way to bind with SO_REUSEPORT; read them here only.
        kind = description.split(":", 1)[0]
        backlog = int(endpoint._backlog)  # type: ignore[attr-defined]
        if kind == "unix":
            path = endpoint._address  # type: ignore[attr-defined]
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, endpoint._mode)  # type: ignore[attr-defined]
            sock.listen(backlog)
            # Every worker wakes for a new connection and one wins it: the
            # others must find the queue empty, not block in accept(). The
            # flag belongs to the socket, which all the workers share.
            sock.setblocking(False)
            out.append([sock] * workers)
            continue
        interface = endpoint._interface  # type: ignore[attr-defined]
        # As Twisted's own TCP port: an IPv6 interface makes an IPv6 socket.
        ipv6 = kind == "tcp6" or abstract.isIPv6Address(interface)
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        interface = interface or ("::" if ipv6 else "")
        port = int(endpoint._port)  # type: ignore[attr-defined]
        if port:
            _check_free(family, interface, port)
        socks = []
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.setblocking(False)
            socks.append(sock)
        out.append(socks)
    return out


def _check_free(family: int, interface: str, port: int) -> None:
    """Raise ``OSError`` (address in use) if something listens on ``port`` already.

    ``SO_REUSEPORT`` would let the workers' sockets join the listener of
    another process of the same user, a second accel started by mistake,
    and split its connections with it, where one process alone is told the
    port is in use. A plain bind first keeps that answer.
    """
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, port))


def serving_factory(description: str, factory: Any, reactor: Any) -> Any:
    """The factory to serve an inherited socket of the listener ``description`` with.

    ``factory`` itself, or for ``ssl`` it wrapped in TLS with the context
    the description asks for (key, certificate, options), exactly as
    ``reactor.listenSSL`` wraps it on a socket it binds itself.
    """
    if description.split(":", 1)[0] != "ssl":
        return factory
    endpoint = serverFromString(reactor, description)
    # SSL4ServerEndpoint keeps the context factory it parsed privately.
    return TLSFactory(endpoint._sslContextFactory, False, factory)  # type: ignore[attr-defined]


class ListenerService(Service):
    """Serves ``factory`` on an already listening socket (``reactor.adoptStreamPort``)."""

    def __init__(self, reactor: Any, listener: Listener, factory: Any) -> None:
        self._reactor = reactor
        self._listener = listener
        self._factory = factory
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.adoptStreamPort(self._listener.fileno, self._listener.family, self._factory)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        return port.stopListening() if port is not None else None


#: In the line a child logs once its service has started: from then on its
#: signal handlers are installed (see :meth:`WorkerPool.signal_children`).
_SERVING = b" serving (pid "


class _Child(ProcessProtocol):
    """One child process: relays its log lines, reports its end.

    ``serving`` is set when the child says it serves; ``held`` are the
    signals to send it then (``on_serving`` sends them).
    """

    def __init__(
        self,
        number: int,
        ended: Callable[[_Child, Failure], None],
        on_serving: Callable[[_Child], None] | None = None,
    ) -> None:
        self.number = number
        self.started_at = 0.0
        self.serving = False
        self.held: list[int] = []
        #: The children this one replaces (a reload): told to stop once it serves.
        self.replaces: list[_Child] = []
        #: This child's process (``IProcessTransport``), once spawned.
        self.process: Any = None
        self._ended = ended
        self._on_serving = on_serving
        self._partial = b""
        self.done: Deferred[None] = Deferred()

    def errReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            _log.info(
                "worker {number}: {line}", number=self.number, line=line.decode("utf-8", "replace")
            )
            if not self.serving and _SERVING in line:
                self.serving = True
                if self._on_serving is not None:
                    self._on_serving(self)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(None)
        self._ended(self, reason)


class WorkerPool(Service):
    """Runs and supervises workers ``1 .. N - 1`` (the parent is worker 0).

    ``listeners[i]`` are worker ``i + 1``'s inherited sockets, in the
    order of ``config.listen``; ``config`` is what every child serves.
    """

    def __init__(self, reactor: Any, config: Config, listeners: Sequence[Sequence[socket.socket]]) -> None:
        self._reactor = reactor
        self._config = config
        self._listeners = listeners
        self._children: dict[int, _Child] = {}
        self._delays: dict[int, float] = {}
        #: Children a reload replaced, still running: until their
        #: replacement serves, then while they drain.
        self._outgoing: list[_Child] = []

    def startService(self) -> None:
        super().startService()
        for number in range(1, len(self._listeners) + 1):
            self._spawn(number)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        waits = []
        for child in list(self._children.values()):
            # Those it replaces are told to stop as well (once is enough).
            for old in child.replaces:
                self._terminate(old)
            child.replaces = []
            self._terminate(child)
            waits.append(child.done)
        waits.extend(old.done for old in self._outgoing)
        return DeferredList(waits)

    def _terminate(self, child: _Child) -> None:
        """Send ``child`` SIGTERM (it drains); kill it if it is still running
        ``shutdown_timeout`` plus a margin later."""
        process = child.process
        if process is None or process.pid is None:
            return
        try:
            process.signalProcess("TERM")
        except ProcessExitedAlready:
            return
        grace = self._config.shutdown_timeout + _STOP_MARGIN
        killer = self._reactor.callLater(grace, self._kill, child)
        child.done.addBoth(lambda _, k=killer: k.cancel() if k.active() else None)

    def reload(self, config: Config) -> int:
        """Replace every child with one serving ``config``, as nginx does on reload.

        For each worker a new child starts on the same inherited sockets;
        once it says it serves, the one it replaces gets SIGTERM and lets
        its requests in progress finish (``accel.app._Drain``), so a socket
        is never without a worker. The old child's exit is expected, not a
        crash: it is not restarted. A replacement that exits before it
        serves leaves the old child in place (and the usual restart
        follows). Returns the number of children being replaced.
        """
        self._config = config
        if not self.running:
            return 0
        count = 0
        for number, old in list(self._children.items()):
            self._spawn(number)
            new = self._children[number]
            # A replacement still starting is replaced in turn, with those it replaces.
            new.replaces = [old, *old.replaces]
            old.replaces = []
            self._outgoing.append(old)
            count += 1
        return count

    def signal_children(self, signum: int) -> None:
        """Send the signal ``signum`` (e.g. ``signal.SIGUSR1``) to every running child.

        A child still starting has not installed its handlers yet (the
        default action of SIGUSR1 ends a process): it gets the signal once
        it says it serves.
        """
        for child in [*self._children.values(), *self._outgoing]:
            if child.serving:
                self._send(child, signum)
            elif signum not in child.held:
                child.held.append(signum)

    def _send(self, child: _Child, signum: int) -> None:
        process = child.process
        if process is None or process.pid is None:
            return
        try:
            process.signalProcess(signum)
        except ProcessExitedAlready:
            pass  # it ended meanwhile: _ended restarts it
        except OSError as error:
            _log.warn("cannot signal worker {number}: {error}", number=child.number, error=error)

    def _serving(self, child: _Child) -> None:
        held, child.held = child.held, []
        if self._children.get(child.number) is child or child in self._outgoing:
            for signum in held:
                self._send(child, signum)
        replaced, child.replaces = child.replaces, []
        for old in replaced:
            self._terminate(old)

    @property
    def pids(self) -> list[int]:
        """The running children's process ids (those a reload replaced included)."""
        children = [*self._children.values(), *self._outgoing]
        return [c.process.pid for c in children if c.process is not None and c.process.pid is not None]

    def stop_now(self) -> None:
        """The operator asked again while the workers drain: pass SIGTERM on
        once more, so each one aborts what it still serves and exits (see
        ``accel.app._Drain``)."""
        for child in [*self._children.values(), *self._outgoing]:
            self._send(child, signal.SIGTERM)

    def _kill(self, child: _Child) -> None:
        process = child.process
        if process is not None and process.pid is not None:
            _log.warn("worker {number} did not stop in time; killing it", number=child.number)
            with contextlib.suppress(ProcessExitedAlready):
                process.signalProcess("KILL")

    def _spawn(self, number: int) -> None:
        socks = self._listeners[number - 1]
        first = 3
        # Standard output is shared (the access log may go there: its lines
        # must reach it as they are); standard error is relayed to our log.
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: "r"}
        inherited = []
        for offset, sock in enumerate(socks):
            child_fds[first + offset] = sock.fileno()
            inherited.append(Listener(first + offset, sock.family))
        child = _Child(number, self._ended, self._serving)
        child.started_at = self._reactor.seconds()
        process = self._reactor.spawnProcess(
            child,
            sys.executable,
            [sys.executable, "-m", "accel.workers"],
            env=dict(os.environ),
            childFDs=child_fds,
        )
        message = pickle.dumps((number, self._config, inherited, installed(self._reactor)))
        # The pipe stays open: its end tells the child that this process is gone.
        process.writeToChild(0, _HEADER.pack(len(message)) + message)
        child.process = process
        self._children[number] = child

    def _ended(self, child: _Child, reason: Failure) -> None:
        number = child.number
        if child in self._outgoing:
            self._outgoing.remove(child)  # replaced by a reload: expected
            _log.info(
                "worker {number}: the process a reload replaced has ended ({reason})",
                number=number,
                reason=reason.getErrorMessage(),
            )
            return
        if self._children.get(number) is not child:
            return
        del self._children[number]
        if child.replaces:
            # A reload's replacement that never served: the child it was
            # to replace goes on (the nearest one still running).
            kept, *older = child.replaces
            kept.replaces = older
            self._outgoing.remove(kept)
            self._children[number] = kept
            _log.error(
                "worker {number}: its replacement exited before serving ({reason});"
                " the previous one goes on",
                number=number,
                reason=reason.getErrorMessage(),
            )
            return
        if not self.running:
            return
        quick = self._reactor.seconds() - child.started_at < _MAX_RESTART_DELAY
        delay = min(self._delays.get(number, _RESTART_DELAY / 2) * 2, _MAX_RESTART_DELAY) if quick else _RESTART_DELAY
        self._delays[number] = delay
        _log.error(
            "worker {number} exited ({reason}); restarting it in {delay:.0f}s",
            number=number,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._reactor.callLater(delay, self._restart, number)

    def _restart(self, number: int) -> None:
        if self.running and number not in self._children:
            self._spawn(number)


def _read_exactly(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            raise SystemExit("accel worker: the parent went away before sending the configuration")
        data += chunk
    return data


@implementer(IReadDescriptor)
class _ParentWatch:
    """Stops the reactor when the pipe from the parent ends (the parent is gone)."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> Exception | None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError as error:
            return error
        return None if data else ConnectionDone("the parent is gone")

    def connectionLost(self, reason: Failure) -> None:
        if self._reactor.running:
            _log.warn("the parent process is gone; stopping")
            self._reactor.stop()

    def logPrefix(self) -> str:
        return "parent"


def _child_main() -> None:
    """A worker: serve the parent's configuration on the inherited sockets until told to stop."""
    # Before anything else, and kept by the reactor (which only replaces
    # Python's default handler): a Ctrl-C is the parent's to act on. SIGUSR1
    # (passed on by the parent to reopen the logs) would end a child that
    # is still starting: ignored until the service installs its handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    # The parent drives reloads (it replaces its children): SIGHUP, sent to
    # the whole process group, must not end a worker.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    (size,) = _HEADER.unpack(_read_exactly(0, _HEADER.size))
    number, config, listeners, own_reactor = pickle.loads(_read_exactly(0, size))
    if own_reactor:  # as the parent: accel's unless twistd was told otherwise
        install()
    from twisted.internet import reactor as _reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from accel.app import make_service

    reactor: Any = _reactor
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    service = make_service(config, reactor, listeners=listeners)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    os.set_blocking(0, False)
    reactor.addReader(_ParentWatch(reactor, 0))
    _log.info("worker {number} serving (pid {pid})", number=number, pid=os.getpid())
    reactor.run()


if __name__ == "__main__":
    _child_main()

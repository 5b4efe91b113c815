"""Stopping gracefully, and the signals an operator sends: SIGTERM/SIGINT, SIGUSR1.

The drain (``HTTPServerFactory.drain``) is driven through ``StringTransport``
and ``MemoryReactorClock``; the services of :mod:`accel.app` with fakes for
the signal module and the reactor's thread hand-off. The processes
themselves are in tests/test_e2e.py.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from accel import app
from accel.config import Config
from accel.http.server import _DRAIN_IDLE_GRACE, HTTPServerFactory
from accel.workers import WorkerPool
from tests.test_server import FastSpy, Recorder, answer, connect, fast_connect, responses

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"


def get(name: bytes) -> bytes:
    return GET % name


def lose(proto: Any) -> None:
    """What the reactor does once a closing transport is gone."""
    proto.connectionLost(Failure(Exception("closed")))


def waiting() -> tuple[Any, StringTransport, MemoryReactorClock, Recorder]:
    """A connection whose request ``/a`` is with the handler, not answered yet."""
    proto, t, clock, h = connect(Recorder(auto=False))
    proto.dataReceived(get(b"a"))
    return proto, t, clock, h


# --- Idle connections ---


def test_idle_keepalive_connection_is_closed_after_the_grace():
    """A keep-alive connection between requests is closed once it has been silent
    for the grace a request already sent needs to arrive, not at once."""
    proto, t, clock, _ = connect()
    proto.dataReceived(get(b"a"))
    done = proto.factory.drain(10)
    clock.advance(_DRAIN_IDLE_GRACE - 0.01)
    assert not t.disconnecting
    clock.advance(0.01)
    assert t.disconnecting and not t.disconnected  # closed, not aborted
    assert not done.called
    lose(proto)
    assert done.called


def test_request_arriving_in_the_grace_is_answered_with_close():
    """A request an idle keep-alive client sent as the drain began is answered, with
    Connection: close, and the connection then closes (none is lost to the stop)."""
    proto, t, clock, h = connect()
    proto.dataReceived(get(b"a"))
    proto.factory.drain(10)
    clock.advance(_DRAIN_IDLE_GRACE / 2)
    proto.dataReceived(get(b"b"))
    (first, second) = responses(t.value())
    assert first.get(b"connection") is None  # answered before the drain: kept alive
    assert second.body == b"ok" and second.get(b"connection") == b"close"
    assert [r.path for r in h.requests] == [b"/a", b"/b"] and t.disconnecting


def test_fast_path_answer_in_the_grace_says_close():
    """The hit fast path, too, answers a request arriving in the grace with close."""
    proto, t, spy, _ = fast_connect()
    proto.factory.drain(10)
    proto.dataReceived(get(b"hit"))
    (response,) = responses(t.value())
    assert response.body == b"hit" and response.get(b"connection") == b"close"
    assert len(spy.offers) == 1 and t.disconnecting


def test_new_connection_without_a_request_is_closed_after_the_grace():
    """A connection that has sent nothing yet is idle too."""
    proto, t, clock, _ = connect()
    proto.factory.drain(10)
    clock.advance(_DRAIN_IDLE_GRACE)
    assert t.disconnecting and t.value() == b""


def test_connection_made_while_draining_is_served_then_closed():
    """A connection accepted as the listener stopped gets the grace as well, then
    is closed; the drain waits for it."""
    proto, _, clock, _ = connect()
    factory = proto.factory
    done = factory.drain(10)
    clock.advance(_DRAIN_IDLE_GRACE)
    lose(proto)
    assert done.called
    late = factory.buildProtocol(None)
    t = StringTransport()
    late.makeConnection(t)
    assert not t.disconnecting
    clock.advance(_DRAIN_IDLE_GRACE)
    assert t.disconnecting


def test_drain_without_connections_fires_at_once():
    """Nothing open: nothing to wait for, and no timer left behind."""
    clock = MemoryReactorClock()
    factory = HTTPServerFactory(Recorder(), clock)
    assert factory.drain(10).called
    assert clock.getDelayedCalls() == []


# --- Requests in progress ---


def test_response_in_progress_completes_with_connection_close():
    """A request with the handler when the drain begins gets its whole answer, saying
    Connection: close, and the connection closes after it."""
    proto, t, _, h = waiting()
    done = proto.factory.drain(10)
    assert not t.disconnecting
    answer(h.calls[0][1], b"whole body")
    (response,) = responses(t.value())
    assert response.body == b"whole body" and response.get(b"connection") == b"close"
    assert t.disconnecting and not t.disconnected
    assert not done.called
    lose(proto)
    assert done.called


def test_response_started_before_the_drain_ends_the_connection():
    """A response whose head went out with keep-alive is finished, then the connection closes."""
    proto, t, _, h = waiting()
    responder = h.calls[0][1]
    from accel.http.headers import Headers

    responder.start(200, b"OK", Headers([(b"content-length", b"4")]))
    responder.write(b"ab")
    proto.factory.drain(10)
    assert not t.disconnecting
    responder.write(b"cd")
    responder.finish()
    (response,) = responses(t.value())
    assert response.body == b"abcd" and response.get(b"connection") is None
    assert t.disconnecting


def test_pipelined_request_sent_after_the_drain_began_is_not_read():
    """Nothing after the request in progress is read: the client retries elsewhere."""
    proto, t, _, h = waiting()
    proto.factory.drain(10)
    proto.dataReceived(get(b"b"))
    answer(h.calls[0][1], b"a")
    assert [r.path for r in h.requests] == [b"/a"]
    assert len(responses(t.value())) == 1 and t.disconnecting


def test_pipelined_requests_read_before_the_drain_are_answered_the_last_with_close():
    """Requests already read are answered in order; only the last says close."""
    proto, t, _, h = connect(Recorder(auto=False))
    proto.dataReceived(get(b"a") + get(b"b"))
    proto.factory.drain(10)
    answer(h.calls[0][1], b"a")
    assert not t.disconnecting
    answer(h.calls[1][1], b"b")
    first, last = responses(t.value())
    assert first.get(b"connection") is None and last.get(b"connection") == b"close"
    assert t.disconnecting


def test_partial_pipelined_head_behind_a_request_in_progress_is_dropped():
    """Half a pipelined head is never completed nor answered (not even with a 408)."""
    proto, t, clock, h = waiting()
    proto.dataReceived(b"GET /b HTTP/1.1\r\nHo")
    proto.factory.drain(30)
    proto.dataReceived(b"st: a\r\n\r\n")
    clock.advance(20)  # past header_timeout
    answer(h.calls[0][1], b"a")
    (response,) = responses(t.value())
    assert response.status == 200 and response.get(b"connection") == b"close"
    assert [r.path for r in h.requests] == [b"/a"]


def test_head_arriving_with_nothing_in_progress_is_answered_with_close():
    """A request half-sent when the drain begins is read and answered, then the connection closes."""
    proto, t, _, h = connect()
    proto.dataReceived(b"GET /a HTTP/1.1\r\nHo")
    proto.factory.drain(10)
    assert not t.disconnecting
    proto.dataReceived(b"st: a\r\n\r\n" + get(b"b"))
    (response,) = responses(t.value())
    assert response.get(b"connection") == b"close"
    assert [r.path for r in h.requests] == [b"/a"] and t.disconnecting


def test_fast_path_answer_to_a_head_arriving_says_close():
    """The fast path, too, answers the last request with Connection: close."""
    spy = FastSpy()
    factory = HTTPServerFactory(Recorder(), MemoryReactorClock(), fast_path=spy)
    proto = factory.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"GET /hit HTTP/1.1\r\nHo")
    factory.drain(10)
    proto.dataReceived(b"st: a\r\n\r\n")
    (response,) = responses(t.value())
    assert response.body == b"hit" and response.get(b"connection") == b"close"
    assert t.disconnecting


def test_request_content_still_arriving_is_read_to_its_end():
    """An upload in progress is read whole and answered; what follows it is not read."""
    proto, t, _, h = connect(Recorder(read_body=True))
    proto.dataReceived(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
    proto.factory.drain(10)
    proto.dataReceived(b"def" + get(b"b"))
    (response,) = responses(t.value())
    assert response.body == b"got abcdef" and response.get(b"connection") == b"close"
    assert [r.path for r in h.requests] == [b"/up"] and t.disconnecting


# --- The grace period ---


def test_connections_left_at_the_timeout_are_aborted():
    """At shutdown_timeout the connections still open are aborted, cutting their answers."""
    proto, t, clock, _ = waiting()
    done = proto.factory.drain(10)
    clock.advance(9.9)
    assert not t.disconnecting
    clock.advance(0.1)
    assert t.disconnected  # abortConnection
    assert not done.called  # until the reactor reports the connection gone
    lose(proto)
    assert done.called


def test_timeout_zero_aborts_at_once():
    """shutdown_timeout = 0: nothing waits; requests in progress are cut at once."""
    proto, t, _, _ = waiting()
    proto.factory.drain(0)
    assert t.disconnected


def test_drained_before_the_timeout_leaves_no_timer():
    """The deadline is cancelled once the last connection is gone."""
    proto, _, clock, h = waiting()
    proto.factory.drain(10)
    answer(h.calls[0][1], b"a")
    lose(proto)
    assert clock.getDelayedCalls() == []


def test_second_drain_waits_for_the_same_end():
    """drain() called again gives a result that fires with the first's."""
    proto, _, _, h = waiting()
    first = proto.factory.drain(10)
    second = proto.factory.drain(10)
    answer(h.calls[0][1], b"a")
    lose(proto)
    assert first.called and second.called


# --- The service ---


def test_stopping_the_drain_service_fires_when_the_last_connection_goes():
    """stopService's Deferred (which twistd waits for) fires once every connection of
    every listener's factory is gone, and not before."""
    first, t1, _, h1 = waiting()
    second, t2, _, _ = connect()
    drain = app._Drain(10)
    drain.add(first.factory)
    drain.add(second.factory)
    drain.startService()
    stopped = drain.stopService()
    second.factory.clock.advance(_DRAIN_IDLE_GRACE)
    first.factory.clock.advance(_DRAIN_IDLE_GRACE)
    assert t2.disconnecting and not t1.disconnecting
    lose(second)
    assert not stopped.called
    answer(h1.calls[0][1], b"a")
    lose(first)
    assert stopped.called


def test_make_service_drains_with_the_configured_timeout(tmp_path):
    """server.shutdown_timeout reaches the drain of what make_service builds."""
    path = tmp_path / "accel.toml"
    path.write_text(
        '[server]\nshutdown_timeout = "3s"\n[cache]\nenabled = false\n'
        '[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://127.0.0.1:9"\n'
    )
    config = Config.from_toml(str(path))
    top = app.make_service(config, MemoryReactorClock(), install_handler=lambda s, h: None)
    (drain,) = [s for group in top if isinstance(group, app.MultiService) for s in group if isinstance(s, app._Drain)]
    assert drain.timeout == 3.0


# --- SIGUSR1 ---


class Reactor:
    """The reactor's thread hand-off, run later by the test."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def callFromThread(self, f, *args):
        self.pending.append((f, args))

    def run_pending(self) -> None:
        pending, self.pending = self.pending, []
        for f, args in pending:
            f(*args)


class Signals:
    """signal.signal for one process, in memory."""

    def __init__(self, previous: Any = signal.SIG_DFL) -> None:
        self.handlers: dict[int, Any] = {signal.SIGUSR1: previous}

    def __call__(self, signum: int, handler: Any) -> Any:
        previous, self.handlers[signum] = self.handlers.get(signum), handler
        return previous


def test_signal_handler_only_schedules_the_work():
    """The handler does nothing but hand the actions to the reactor thread."""
    ran: list[str] = []
    reactor, signals = Reactor(), Signals()
    service = app._OnSignal(reactor, signal.SIGUSR1, signals)
    service.add(lambda: ran.append("reopen"))
    service.startService()
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    assert ran == [] and len(reactor.pending) == 1
    reactor.run_pending()
    assert ran == ["reopen"]


def test_signal_handler_chains_to_the_one_it_replaced():
    """twistd's own SIGUSR1 handler (rotating twistd.log) still runs, first."""
    calls: list[str] = []
    reactor = Reactor()
    signals = Signals(previous=lambda signum, frame: calls.append("twistd rotates"))
    service = app._OnSignal(reactor, signal.SIGUSR1, signals)
    service.add(lambda: calls.append("reopen"))
    service.startService()
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    reactor.run_pending()
    assert calls == ["twistd rotates", "reopen"]


def test_signal_handler_is_restored_when_stopped():
    """Stopping puts back the handler that was there before."""
    previous = signal.SIG_IGN
    signals = Signals(previous=previous)
    service = app._OnSignal(Reactor(), signal.SIGUSR1, signals)
    service.startService()
    service.stopService()
    assert signals.handlers[signal.SIGUSR1] is previous


def test_failing_action_does_not_stop_the_others():
    """One action raising is logged; the next still runs."""
    ran: list[str] = []

    def broken() -> None:
        raise OSError("disk gone")

    reactor, signals = Reactor(), Signals()
    service = app._OnSignal(reactor, signal.SIGUSR1, signals)
    service.add(broken)
    service.add(lambda: ran.append("next"))
    service.startService()
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    reactor.run_pending()
    assert ran == ["next"]


def test_make_service_reopens_a_file_access_log_on_sigusr1(tmp_path):
    """With a file access log, SIGUSR1 makes a new file after the old one was moved."""
    log = tmp_path / "access.log"
    config = Config(access_log=str(log), workers=1)
    reactor, signals = Reactor(), Signals()
    clock = MemoryReactorClock()
    clock.callFromThread = reactor.callFromThread  # type: ignore[attr-defined]
    top = app.make_service(config.with_demo_origin("http://127.0.0.1:9"), clock, install_handler=signals)
    (on_usr1,) = [s for s in top if isinstance(s, app._OnSignal)]
    on_usr1.startService()
    log.rename(tmp_path / "access.log.1")
    signals.handlers[signal.SIGUSR1](signal.SIGUSR1, None)
    reactor.run_pending()
    assert log.exists()
    top.stopService()


# --- Workers ---


class Process:
    def __init__(self, pid: int | None = 1) -> None:
        self.pid = pid
        self.signals: list[str | int] = []

    def signalProcess(self, signum: str | int) -> None:
        self.signals.append(signum)


def pool_of(*processes: Process) -> tuple[WorkerPool, list[Any]]:
    """A WorkerPool supervising ``processes`` (as workers 1, 2, ...) and their protocols."""
    from accel.workers import _Child

    clock = MemoryReactorClock()
    pool = WorkerPool(clock, Config(shutdown_timeout=30.0), [])
    children = [_Child(n, lambda c, r: None, pool._serving) for n in range(1, len(processes) + 1)]
    pool._children = {c.number: c for c in children}
    for child, process in zip(children, processes, strict=True):
        child.process = process
    return pool, children


def test_parent_passes_sigusr1_on_to_every_serving_child():
    """In --workers mode each serving child gets the parent's SIGUSR1."""
    first, second = Process(), Process()
    pool, children = pool_of(first, second)
    for child in children:
        child.errReceived(b"2026-11-26T03:57:00+0000 [-] worker %d serving (pid 7)\n" % child.number)
    pool.signal_children(signal.SIGUSR1)
    assert first.signals == [signal.SIGUSR1] and second.signals == [signal.SIGUSR1]


def test_child_still_starting_gets_sigusr1_once_it_serves():
    """SIGUSR1's default action ends a process: a child that has not installed its
    handler yet is sent the signal only once it says it serves (and only once)."""
    process = Process()
    pool, (child,) = pool_of(process)
    pool.signal_children(signal.SIGUSR1)
    pool.signal_children(signal.SIGUSR1)
    assert process.signals == []
    child.errReceived(b"[-] worker 1 serving (pid 7)\n")
    assert process.signals == [signal.SIGUSR1]


def test_children_get_the_shutdown_timeout_before_kill():
    """A child told TERM is killed only shutdown_timeout plus a margin later."""
    from accel.workers import _STOP_MARGIN

    process = Process()
    pool, _ = pool_of(process)
    clock = pool._reactor
    pool.running = True
    pool.stopService()
    assert process.signals == ["TERM"]
    clock.advance(30.0 + _STOP_MARGIN - 0.1)
    assert process.signals == ["TERM"]
    clock.advance(0.1)
    assert process.signals == ["TERM", "KILL"]



# --- A second stop signal ---


def stop_signals(previous: Any = signal.SIG_DFL) -> Signals:
    signals = Signals()
    signals.handlers = {signal.SIGTERM: previous, signal.SIGINT: previous}
    return signals


def test_second_stop_signal_aborts_what_is_still_open():
    """SIGTERM (or SIGINT) again while the connections drain aborts them at once,
    through the reactor thread, and the stop completes."""
    proto, t, _, _ = waiting()
    reactor, signals = Reactor(), stop_signals()
    drain = app._Drain(10, reactor, signals)
    drain.add(proto.factory)
    drain.startService()
    stopped = drain.stopService()
    assert not t.disconnecting and not stopped.called
    signals.handlers[signal.SIGTERM](signal.SIGTERM, None)
    assert not t.disconnecting  # the handler only schedules the work
    reactor.run_pending()
    assert t.disconnecting  # StringTransport.abortConnection
    lose(proto)
    assert stopped.called
    assert proto.factory.clock.getDelayedCalls() == []  # the deadline went too


def test_second_stop_signal_runs_the_force_actions():
    """What was added with on_force (the worker pool's stop_now) runs as well."""
    proto, _, _, _ = waiting()
    reactor, signals = Reactor(), stop_signals()
    forced: list[str] = []
    drain = app._Drain(10, reactor, signals)
    drain.add(proto.factory)
    drain.on_force(lambda: forced.append("workers"))
    drain.startService()
    drain.stopService()
    signals.handlers[signal.SIGINT](signal.SIGINT, None)
    reactor.run_pending()
    assert forced == ["workers"]


def test_stop_signal_handlers_are_restored_when_drained():
    """Once every connection is gone the handlers that were there come back."""
    proto, _, _, h = waiting()
    previous = object()
    signals = stop_signals(previous)
    drain = app._Drain(10, Reactor(), signals)
    drain.add(proto.factory)
    drain.startService()
    drain.stopService()
    assert signals.handlers[signal.SIGTERM] is not previous
    answer(h.calls[0][1], b"a")
    lose(proto)
    assert signals.handlers == {signal.SIGTERM: previous, signal.SIGINT: previous}


def test_an_ignored_sigint_stays_ignored_while_draining():
    """A worker ignores SIGINT (the parent stops it): the drain leaves that alone."""
    proto, _, _, _ = waiting()
    signals = stop_signals()
    signals.handlers[signal.SIGINT] = signal.SIG_IGN
    drain = app._Drain(10, Reactor(), signals)
    drain.add(proto.factory)
    drain.startService()
    drain.stopService()
    assert signals.handlers[signal.SIGINT] is signal.SIG_IGN
    assert signals.handlers[signal.SIGTERM] is not signal.SIG_IGN


def test_stop_now_passes_sigterm_on_to_every_child():
    """The pool's part of a forced stop: each child gets SIGTERM again."""
    first, second = Process(), Process()
    pool, _ = pool_of(first, second)
    pool.stop_now()
    assert first.signals == [signal.SIGTERM] and second.signals == [signal.SIGTERM]


# --- Cache fills cut by the stop ---


def test_fill_ended_by_the_shutdown_is_not_committed(tmp_path):
    """A body still being stored when the store closes (the process stops after the
    drain) is never committed, even one without a declared length, whose origin
    connection the reactor closes last: its end would look like the whole body."""
    import hashlib

    from tests.test_store import URL, make_store

    store = make_store(tmp_path)
    writer = store.begin(
        URL, b"", (), 200, b"OK", [(b"x-sha256", hashlib.sha256(b"part").hexdigest().encode())],
        10.0, 11.0, None, (),
    )  # fmt: skip
    writer.write(b"part")
    store.close()
    assert writer.commit() is None
    reopened = make_store(tmp_path)
    assert reopened.lookup(URL) == []
    reopened.close()

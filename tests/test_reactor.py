"""accel's reactor (accel.reactor): Twisted's own reactor tests, and what differs.

:class:`accel.reactor.Reactor` changes how :class:`EPollReactor` dispatches
an event, so it is held to the reactor conformance suites Twisted runs
against every reactor (TCP, UNIX sockets, descriptors, system events,
time, threads), built here for it with Twisted's :class:`ReactorBuilder`.
Two of their tests are expected to differ, each for a stated reason.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python import log
from twisted.trial.unittest import SkipTest, SynchronousTestCase

import accel.reactor
from accel.reactor import Reactor

pytest.importorskip("hamcrest")  # Twisted's test modules need it

from twisted.internet.test import (
    test_core,
    test_fdset,
    test_tcp,
    test_threads,
    test_time,
    test_tls,
    test_unix,
)

# Twisted's test_badContext hands TLS a deliberately old-style context factory.
pytestmark = pytest.mark.filterwarnings("ignore:.*does not explicitly provide any OpenSSL")


@pytest.fixture(autouse=True)
def _in_a_temporary_directory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twisted's tests make their files relative to the working directory
    (trial runs them in _trial_temp): here, in a temporary one."""
    monkeypatch.chdir(tmp_path)


_DIFFERENT = {
    "test_logPrefix": (
        "by design: no logging context per event, so a legacy log.msg made "
        "inside one is labelled '-' (accel.reactor)"
    ),
    "test_lostFileDescriptor": (
        "as for EPollReactor, which this test skips by class name: epoll drops "
        "a closed descriptor silently, so a lost one cannot be detected"
    ),
}


def _skipped(reason: str) -> Any:
    def test(self: Any) -> None:
        raise SkipTest(reason)

    return test


def _for_accel(builder: type) -> dict[str, type]:
    """``builder``'s test cases, run against accel's reactor only."""
    overrides: dict[str, Any] = {"_reactors": ["accel.reactor.Reactor"]}
    overrides.update({name: _skipped(why) for name, why in _DIFFERENT.items() if hasattr(builder, name)})
    adapted = type("Accel" + builder.__name__, (builder,), overrides)
    return adapted.makeTestCaseClasses()  # type: ignore[attr-defined,no-any-return]


for _builder in (
    test_tcp.TCPConnectionTestsBuilder,
    test_tcp.TCP4ClientTestsBuilder,
    test_tcp.TCPPortTestsBuilder,
    test_tcp.TCPTransportTestsBuilder,
    test_tcp.AbortConnectionTests,
    test_tls.SSLClientTestsMixin,
    test_tls.StartTLSClientTestsMixin,
    test_tls.TLSPortTestsBuilder,
    test_tls.AbortSSLConnectionTests,
    test_unix.UNIXTestsBuilder,
    test_core.SystemEventTestsBuilder,
    test_fdset.ReactorFDSetTestsBuilder,
    test_time.TimeTestsBuilder,
    test_threads.ThreadTestsBuilder,
):
    globals().update(_for_accel(_builder))
del _builder


class _Pump:
    """Turns a reactor that is not the global one by hand, a bounded number of times."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor

    def until(self, done: Any, turns: int = 200) -> None:
        for _ in range(turns):
            if done():
                return
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.05)
        raise AssertionError("the reactor never got there")


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost = reason


class _BadLoss(_Recorder):
    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        raise RuntimeError("connectionLost went wrong")


class DispatchTests(SynchronousTestCase):
    """Events reach protocols, and failures are contained, as with EPollReactor."""

    def setUp(self) -> None:
        self.reactor = Reactor()
        self.pump = _Pump(self.reactor)
        self.addCleanup(self._close)

    def _close(self) -> None:
        for selectable in list(self.reactor.getReaders()) + list(self.reactor.getWriters()):
            self.reactor.removeReader(selectable)
            self.reactor.removeWriter(selectable)
        self.reactor._poller.close()

    def _serve(self, protocol_class: type) -> tuple[socket.socket, list[Any]]:
        made: list[Any] = []

        class F(Factory):
            def buildProtocol(self, addr: Any) -> Protocol:
                made.append(protocol_class())
                return made[-1]  # type: ignore[no-any-return]

        port = self.reactor.listenTCP(0, F(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(client.close)
        self.pump.until(lambda: made)
        return client, made

    def test_data_reaches_protocol(self) -> None:
        """Bytes a client sends are delivered to the protocol's dataReceived."""
        client, made = self._serve(_Recorder)
        client.sendall(b"hello")
        self.pump.until(lambda: made[0].received == b"hello")

    def test_failing_connection_lost_is_logged_and_others_go_on(self) -> None:
        """An exception from connectionLost is logged; the reactor keeps serving others."""
        bad_client, bad = self._serve(_BadLoss)
        good_client, good = self._serve(_Recorder)
        bad_client.close()
        self.pump.until(lambda: bad[0].lost is not None)
        self.assertTrue(bad[0].lost.check(ConnectionDone))
        errors = self.flushLoggedErrors(RuntimeError)
        self.assertEqual([str(e.value) for e in errors], ["connectionLost went wrong"])
        good_client.sendall(b"still here")
        self.pump.until(lambda: good[0].received == b"still here")

    def test_escaping_error_logged_with_prefix(self) -> None:
        """What escapes the handler is logged under the selectable's log prefix."""
        events: list[dict[str, Any]] = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        bad_client, bad = self._serve(_BadLoss)
        bad_client.close()
        self.pump.until(lambda: bad[0].lost is not None)
        self.flushLoggedErrors(RuntimeError)
        failures = [e for e in events if e.get("isError")]
        self.assertEqual(len(failures), 1)
        self.assertIn("_BadLoss", failures[0]["system"])


class InstallTests(SynchronousTestCase):
    """twistd accel installs accel's reactor only when none is chosen yet."""

    def test_not_when_a_reactor_is_installed(self) -> None:
        """With twisted.internet.reactor imported (as in this test run), nothing changes."""
        import twisted.internet.reactor  # noqa: F401

        self.assertFalse(accel.reactor.install_default())

    def test_installs_in_a_fresh_process(self) -> None:
        """A process that has imported no reactor gets accel's."""
        import subprocess

        code = (
            "import accel.reactor, sys\n"
            "assert accel.reactor.install_default()\n"
            "from twisted.internet import reactor\n"
            "print(type(reactor).__module__, accel.reactor.installed(reactor))\n"
        )
        here = os.path.dirname(os.path.dirname(accel.__file__))  # wherever accel is imported from
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        out = run.stdout
        self.assertEqual(out.split(), ["accel.reactor", "True"])



@pytest.mark.parametrize(
    ("delays", "elapsed"),
    [
        ([], 0.0),
        ([0.0], 0.0),
        ([0.0], 5.0),
        ([0.5], 0.2),
        ([0.5, 3.0], 0.0),
        ([3.0, 0.25], 1.0),
        ([2147483.0], 0.0),
        ([2147484.5], 0.0),
        ([1e12], 3.0),
    ],
)
def test_the_poll_timeout_is_twisteds(delays: list[float], elapsed: float) -> None:
    """How long a turn may wait for events is what Twisted's ``timeout``
    reckons (value and type), whatever calls are pending and however late."""
    reactor = Reactor()
    try:
        now = [1000.0]
        reactor.seconds = lambda: now[0]
        for delay in delays:
            reactor.callLater(delay, lambda: None)
        now[0] += elapsed
        ours, twisteds = reactor.timeout(), EPollReactor.timeout(reactor)
        assert (ours, type(ours)) == (twisteds, type(twisteds))
    finally:
        reactor._poller.close()

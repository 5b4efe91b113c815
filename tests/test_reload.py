"""Reloading the configuration on SIGHUP, without dropping a connection.

What may change live and what waits for a restart (:func:`accel.reload.plan_reload`,
pure); the server factory taking a new handler at the next request; origin
pools retiring; the whole reload through the services of :mod:`accel.app`
(a real configuration file, ``MemoryReactorClock`` for the network and
time, fakes for the signal module and the reactor's thread hand-off); and
the worker pool replacing its children. The process itself is in
tests/test_e2e.py.
"""

from __future__ import annotations

import ipaddress
import signal
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from accel import app
from accel.cache.memory import HotEntry
from accel.config import (
    CacheSettings,
    Config,
    Limits,
    OriginURL,
    Route,
    Site,
    UpstreamLimits,
)
from accel.http.headers import Headers
from accel.http.server import HTTPServerFactory, ServerLimits
from accel.reload import plan_reload
from accel.tap import Options
from accel.upstream import Origin, OriginPool
from accel.workers import WorkerPool, _Child
from tests.test_server import Recorder, answer, responses
from tests.test_shutdown import Reactor, Signals

GET = b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n"


def get(name: bytes) -> bytes:
    return GET % name


@pytest.fixture
def logged():
    """The text of every log event emitted during the test."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


# --- What may change live (pure) ---


def site(origin: str = "http://a:1", cache: bool = True) -> tuple[Site, ...]:
    route = Route(prefix=b"/", origins=(OriginURL.parse(origin, "origin"),), cache=CacheSettings(enabled=cache))
    return (Site(hosts=(), routes=(route,)),)


def test_settings_bound_at_start_are_kept_and_named():
    """listen, workers and the store's directory, size and variants wait for a restart."""
    current = Config(sites=site(), cache_dir="/var/cache/a", workers=2)
    new = evolve(current, listen=("tcp:8081",), workers=4, cache_dir="/var/cache/b", cache_size=5, cache_max_variants=2)
    plan = plan_reload(current, new)
    assert plan.config == current
    assert plan.restart == ("listen", "workers", "cache.dir", "cache.size", "cache.max_variants")


def test_live_settings_are_applied():
    """Sites, routes, origins, cache rules, limits, upstream and forwarding settings apply at once."""
    current = Config(sites=site(), cache_dir="/c")
    new = evolve(
        current,
        sites=site("http://b:2"),
        limits=Limits(keepalive_timeout=5.0),
        upstream=UpstreamLimits(tries=2),
        trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),),
        cache_lock_timeout=3.0,
        shutdown_timeout=1.0,
    )
    plan = plan_reload(current, new)
    assert plan.config == new and plan.restart == ()


def test_access_log_path_moves_but_its_kind_waits():
    """A new file (or -) applies; turning the log off, or to the twistd log, waits."""
    current = Config(sites=site(), access_log="/var/log/a.log")
    assert plan_reload(current, evolve(current, access_log="-")).restart == ()
    for other in ("off", None):
        plan = plan_reload(current, evolve(current, access_log=other))
        assert plan.config.access_log == "/var/log/a.log" and plan.restart == ("access_log",)


def test_caching_without_a_store_stays_off_until_a_restart():
    """No route cached at start, so no store was opened: routes that now cache are served
    uncached, and that is named."""
    current = Config(sites=site(cache=False))
    plan = plan_reload(current, Config(sites=site("http://b:2", cache=True)))
    route = plan.config.sites[0].routes[0]
    assert not route.cache.enabled and route.origins == (OriginURL("http", "b", 2),)
    assert plan.restart == ("cache.enabled (no store was opened at start)",)


# --- The server factory takes a new handler ---


def factory_with(handler: Recorder) -> tuple[HTTPServerFactory, Any, StringTransport]:
    factory = HTTPServerFactory(handler, MemoryReactorClock())
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return factory, proto, transport


def test_next_request_on_an_open_connection_takes_the_new_handler():
    """After reconfigure, the next request on a keep-alive connection goes to the new handler."""
    old, new = Recorder(), Recorder()
    factory, proto, _ = factory_with(old)
    proto.dataReceived(get(b"a"))
    factory.reconfigure(new, limits=ServerLimits())
    proto.dataReceived(get(b"b"))
    assert [r.path for r in old.requests] == [b"/a"] and [r.path for r in new.requests] == [b"/b"]


def test_request_in_progress_finishes_with_the_handler_it_began_with():
    """A request with the old handler when the factory is reconfigured is answered by it;
    the connection goes on with the new one."""
    old, new = Recorder(auto=False), Recorder()
    factory, proto, transport = factory_with(old)
    proto.dataReceived(get(b"a"))
    factory.reconfigure(new, limits=ServerLimits())
    answer(old.calls[0][1], b"old")
    proto.dataReceived(get(b"b"))
    assert [r.body for r in responses(transport.value())] == [b"old", b"ok"]
    assert [r.path for r in new.requests] == [b"/b"]


def test_new_limits_apply_to_new_connections():
    """[server] limits are taken by the connections accepted after the reload."""
    factory, proto, _ = factory_with(Recorder())
    factory.reconfigure(Recorder(), limits=ServerLimits(max_target=10))
    assert proto._limits.max_target != 10
    assert factory.buildProtocol(None)._limits.max_target == 10


# --- Origin pools retire ---


ORIGIN = Origin.parse("http://127.0.0.1:8001")


def accept(reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    host, port, factory, _, _ = reactor.tcpClients.pop(0)
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_retired_pool_closes_idle_connections_at_once():
    """Idle keep-alive origin connections close as the pool retires."""
    reactor = MemoryReactorClock()
    pool = OriginPool([ORIGIN], reactor)
    pool.request(b"GET", b"/x", Headers([(b"host", b"h")]))
    protocol, transport = accept(reactor)
    protocol.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")  # idle, pooled
    assert pool.idle_connections(ORIGIN) == 1 and not transport.disconnecting
    pool.retire()
    assert transport.disconnecting and pool.idle_connections(ORIGIN) == 0


def test_retired_pool_closes_a_busy_connection_once_its_call_completes():
    """A call in flight when the pool retires gets its whole response; its connection
    then closes instead of returning to the pool."""
    reactor = MemoryReactorClock()
    pool = OriginPool([ORIGIN], reactor)
    d = pool.request(b"GET", b"/x", Headers([(b"host", b"h")]))
    protocol, transport = accept(reactor)
    pool.retire()
    assert not transport.disconnecting
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    response = d.result
    from tests.test_server import Sink

    sink = Sink()
    response.body.deliver(sink)
    assert sink.body == b"ok" and sink.ended
    assert transport.disconnecting and pool.idle_connections(ORIGIN) == 0


# --- The reload in a process (make_service) ---


CONFIG = """\
{extra}
[cache]
enabled = {cache}
[[sites]]
  [[sites.routes]]
  prefix = "/"
  origin = "http://127.0.0.1:{port}"
"""


class Running:
    """make_service over a configuration file, started, with the signal fakes."""

    def __init__(self, tmp_path: Path, port: int = 8001, cache: bool = False, extra: str = "", args: tuple[str, ...] = ("--access-log", "off")):
        self.path = tmp_path / "accel.toml"
        self.write(port, cache, extra)
        options = Options()
        options.parseOptions(["--config", str(self.path), "--workers", "1", *args])
        self.clock = MemoryReactorClock()
        self.threads = Reactor()
        self.clock.callFromThread = self.threads.callFromThread  # type: ignore[attr-defined]
        self.signals = Signals()
        assert options.config is not None
        #: What SIGHUP reads the configuration with (a test may wrap it).
        self.reread = options.reread
        self.top = app.make_service(
            options.config, self.clock, install_handler=self.signals, reread=lambda: self.reread()  # noqa: PLW0108 (late binding: tests change self.reread)
        )
        self.top.privilegedStartService()
        self.top.startService()
        (self.factory,) = [s._factory for s in self.top if isinstance(s, app._Listener)]

    def write(self, port: int, cache: bool = False, extra: str = "") -> None:
        self.path.write_text(CONFIG.format(port=port, cache=str(cache).lower(), extra=extra))

    def hup(self) -> None:
        """SIGHUP, then the reactor runs what the handler handed it."""
        self.signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
        self.threads.run_pending()

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def origin(self) -> tuple[int, Any, StringTransport]:
        """The port of the latest origin connection attempt, completed to a StringTransport."""
        port = self.clock.tcpClients[0][1]
        protocol, transport = accept(self.clock)
        return port, protocol, transport


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-store\r\n\r\nok"


def test_sighup_only_schedules_the_reload(tmp_path):
    """The handler does nothing but hand the reload to the reactor thread."""
    running = Running(tmp_path)
    before = running.factory.handler
    running.signals.handlers[signal.SIGHUP](signal.SIGHUP, None)
    assert running.factory.handler is before and len(running.threads.pending) == 1
    running.threads.run_pending()
    assert running.factory.handler is not before


def test_bad_file_keeps_the_old_configuration_and_logs_one_line(tmp_path, logged):
    """A file that no longer parses: one line with start-up's text; nothing changes."""
    running = Running(tmp_path)
    before = running.factory.handler
    running.path.write_text("[[sites]\n")
    del logged[:]
    running.hup()
    assert running.factory.handler is before
    (line,) = logged
    assert line.startswith("configuration not reloaded, still serving the previous one: ")
    assert "invalid TOML" in line and str(running.path) in line


def test_next_request_on_an_open_connection_reaches_the_new_origin(tmp_path, logged):
    """The route now points elsewhere: the next request on a keep-alive connection
    opened before the reload goes there."""
    running = Running(tmp_path, port=8001)
    proto, _ = running.connect()
    proto.dataReceived(get(b"a"))
    port, origin, _ = running.origin()
    assert port == 8001
    origin.dataReceived(OK)
    running.write(port=8002)
    running.hup()
    proto.dataReceived(get(b"b"))
    port, _, _ = running.origin()
    assert port == 8002
    assert any(line.startswith("configuration reloaded: 1 site(s), 1 route(s)") for line in logged)


def test_request_in_progress_completes_with_the_old_origin(tmp_path):
    """A request waiting for the old origin at the reload gets its answer from there,
    and that origin connection then closes (the old pool keeps nothing)."""
    running = Running(tmp_path, port=8001)
    proto, transport = running.connect()
    proto.dataReceived(get(b"a"))
    port, origin, origin_transport = running.origin()
    running.write(port=8002)
    running.hup()
    origin.dataReceived(OK)
    (response,) = responses(transport.value())
    assert port == 8001 and response.status == 200 and response.body == b"ok"
    assert origin_transport.disconnecting
    assert not transport.disconnecting  # the client's connection goes on


def test_hot_tier_is_cleared(tmp_path):
    """The old handler's remembered hits (checked against the old rules) are dropped;
    the new handler starts with an empty hot tier of its own, on the same store."""
    running = Running(tmp_path, cache=True, args=("--cache-dir", str(tmp_path / "cache")))
    old = running.factory.handler
    entry = HotEntry(status=200, head=b"HTTP/1.1 200 OK\r\n", body=b"x", fresh_until=1e9, age_at=0.0, slot=0, generation=0)
    old._hot.put((b"http", b"a", b"/x", None), entry)
    running.hup()
    new = running.factory.handler
    assert len(old._hot) == 0
    assert new._hot is not old._hot and len(new._hot) == 0
    assert new._store is old._store
    assert running.factory.fast_path == new.fast_hit


def test_restart_only_settings_are_logged_and_not_applied(tmp_path, logged):
    """A new listen and cache size: one line each; the rest is applied."""
    running = Running(tmp_path, cache=True, args=("--cache-dir", str(tmp_path / "cache")))
    running.write(port=8002, cache=True, extra='listen = ["tcp:9999"]\n[upstream]\ntries = 1\n')
    text = running.path.read_text().replace("enabled = true", "enabled = true\nsize = \"5M\"")
    running.path.write_text(text)
    del logged[:]
    running.hup()
    assert [line for line in logged if "next restart" in line] == [
        "listen changed: takes effect at the next restart",
        "cache.size changed: takes effect at the next restart",
    ]
    pool = running.factory.handler._router.routes()[0].upstream
    assert pool.settings.tries == 1 and pool.origins[0].port == 8002


def test_access_log_moves_to_a_new_path(tmp_path):
    """access_log names another file: the lines after the reload go there."""
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    running = Running(tmp_path, extra=f'access_log = "{first}"', args=())
    running.write(8001, extra=f'access_log = "{second}"')
    running.hup()
    proto, _ = running.connect()
    proto.dataReceived(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    proto.connectionLost(Failure(Exception("closed")))
    running.top.stopService()  # flushes the access log
    assert first.read_bytes() == b"" and b'"OPTIONS * HTTP/1.1" 200' in second.read_bytes()


HTTPS_ROUTE = """\
[[sites]]
  [[sites.routes]]
  prefix = "/"
  origin = "https://a.internal"
  ca_file = "{ca}"
"""
#: Between the PEM markers, text that is not a certificate.
DAMAGED_PEM = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"


@pytest.fixture
def events():
    """Every log event emitted during the test."""
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def test_damaged_ca_bundle_keeps_the_old_configuration_and_logs_one_line(tmp_path, events):
    """sites.routes.ca_file that stopped holding valid certificates: one line naming the
    key, no traceback; nothing changes."""
    from tests.test_upstream import _self_signed

    _, ca = _self_signed(str(tmp_path))
    running = Running(tmp_path)
    running.path.write_text(HTTPS_ROUTE.format(ca=ca))
    running.hup()
    before = running.factory.handler
    Path(ca).write_text(DAMAGED_PEM)
    del events[:]
    running.hup()
    assert running.factory.handler is before
    (event,) = events
    assert "log_failure" not in event
    line = formatEvent(event)
    assert line.startswith("configuration not reloaded, still serving the previous one: ")
    assert "sites[0].routes[0].ca_file" in line and ca in line


def test_ca_bundle_damaged_while_reloading_logs_one_line(tmp_path, events):
    """A CA bundle that changes between the check and building the origin pools (so
    only loading it finds the damage): one line naming the file, no traceback."""
    from tests.test_upstream import _self_signed

    _, ca = _self_signed(str(tmp_path))
    running = Running(tmp_path)
    running.path.write_text(HTTPS_ROUTE.format(ca=ca))
    check = running.reread

    def damaged_after_the_check() -> Config:
        config = check()
        Path(ca).write_text(DAMAGED_PEM)
        return config

    running.reread = damaged_after_the_check
    before = running.factory.handler
    del events[:]
    running.hup()
    assert running.factory.handler is before
    (event,) = events
    assert "log_failure" not in event
    line = formatEvent(event)
    assert line.startswith("configuration not reloaded, still serving the previous one: ") and ca in line


def test_sighup_while_stopping_changes_nothing(tmp_path):
    """Once the service is stopping, a reload is not started."""
    running = Running(tmp_path)
    before = running.factory.handler
    handler = running.signals.handlers[signal.SIGHUP]
    running.top.stopService()
    handler(signal.SIGHUP, None)
    running.threads.run_pending()
    assert running.factory.handler is before


# --- Workers ---


class Process:
    """A child process as spawnProcess returns it."""

    def __init__(self, pid: int) -> None:
        self.pid: int | None = pid
        self.signals: list[str | int] = []

    def signalProcess(self, signum: str | int) -> None:
        self.signals.append(signum)

    def writeToChild(self, fd: int, data: bytes) -> None:
        pass


class Spawner(MemoryReactorClock):
    """A reactor that records the children it spawns."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[_Child, Process]] = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        process = Process(100 + len(self.spawned))
        self.spawned.append((protocol, process))
        return process


def serving(child: _Child) -> None:
    child.errReceived(b"[-] worker %d serving (pid 7)\n" % child.number)


def ended(child: _Child) -> None:
    child.processEnded(Failure(Exception("ended by signal 15")))


def running_pool() -> tuple[WorkerPool, Spawner]:
    """A pool of one child (worker 1), started and serving."""
    reactor = Spawner()
    pool = WorkerPool(reactor, Config(shutdown_timeout=30.0), [[]])
    pool.startService()
    serving(reactor.spawned[0][0])
    return pool, reactor


def test_reload_starts_a_new_child_and_terms_the_old_once_it_serves():
    """The old child is told to stop only when its replacement says it serves."""
    pool, reactor = running_pool()
    new_config = Config(shutdown_timeout=5.0)
    assert pool.reload(new_config) == 1
    (old, old_process), (new, _) = reactor.spawned
    assert new is not old and pool._config is new_config
    assert old_process.signals == []
    serving(new)
    assert old_process.signals == ["TERM"]


def test_old_childs_exit_is_not_restarted():
    """The replaced child's exit is expected: no restart is scheduled, nothing spawned."""
    pool, reactor = running_pool()
    pool.reload(Config())
    (old, _), (new, _) = reactor.spawned
    serving(new)
    ended(old)
    reactor.advance(120)
    assert len(reactor.spawned) == 2 and pool._children == {1: new}


def test_replacement_that_exits_before_serving_leaves_the_old_child():
    """A new child that never serves: the old one is neither told to stop nor replaced."""
    pool, reactor = running_pool()
    pool.reload(Config())
    (old, old_process), (new, _) = reactor.spawned
    ended(new)
    assert pool._children == {1: old} and old_process.signals == []
    reactor.advance(120)
    assert len(reactor.spawned) == 2


def test_reload_while_a_replacement_starts_replaces_both():
    """Two reloads in a row: the newest child, once serving, stops both before it."""
    pool, reactor = running_pool()
    pool.reload(Config())
    pool.reload(Config())
    (_, first), (_, second), (newest, _) = reactor.spawned
    serving(newest)
    assert first.signals == ["TERM"] and second.signals == ["TERM"]


def test_stopping_during_a_replacement_stops_old_and_new():
    """Stopping the pool while a replacement starts: both get TERM, once."""
    pool, reactor = running_pool()
    pool.reload(Config())
    (_, old_process), (_, new_process) = reactor.spawned
    pool.stopService()
    assert old_process.signals == ["TERM"] and new_process.signals == ["TERM"]

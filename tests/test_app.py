"""accel.app: what the configuration file sets reaches what make_service builds."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from accel import app
from accel.config import Config
from accel.http.server import ServerLimits
from accel.upstream import UpstreamSettings

LIMITS = """\
listen = "tcp:0:interface=127.0.0.1"
workers = 1

[server]
header_timeout = "5s"
keepalive_timeout = "20s"
body_timeout = "30s"
send_timeout = "45s"
max_header_bytes = "16k"
max_headers = 50
max_target = "4k"
max_pipelined = 4
max_buffered_body = "128k"
max_discard = 0
max_connections_per_client = "off"
linger_time = "10s"
linger_timeout = 2
notsent_lowat = "16k"
max_unsent = "2M"

[upstream]
max_idle_per_origin = 8
max_fails = 5
fail_timeout = "30s"
tries = 2
max_header_bytes = "16k"
max_headers = 64
max_connections_per_origin = 16
queue = 50
queue_timeout = "20s"

[cache]
dir = "{cache_dir}"
lock_timeout = "5s"
hit_for_miss_ttl = 0
max_variants = 4

[timeouts]
connect = "3s"
keepalive = "15s"

[[sites]]
  [[sites.routes]]
  prefix = "/"
  origin = "http://a"

  [[sites.routes]]
  prefix = "/slow/"
  origin = "http://b"
  timeouts = {{ keepalive = "2s" }}
"""


class Built:
    """What make_service constructed, recorded by wrapping the constructors it calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pools: list[Any] = []
        self.collapsers: list[Any] = []
        self.stores: list[dict[str, Any]] = []
        self.factories: list[Any] = []
        for name, built in (
            ("OriginPool", self.pools),
            ("Collapser", self.collapsers),
            ("HTTPServerFactory", self.factories),
        ):
            monkeypatch.setattr(app, name, self._recording(getattr(app, name), built))
        store = app.Store

        def recording_store(*args: Any, **kwargs: Any) -> Any:
            self.stores.append(kwargs)
            return store(*args, **kwargs)

        monkeypatch.setattr(app, "Store", recording_store)

    @staticmethod
    def _recording(kind: Any, built: list[Any]) -> Any:
        def make(*args: Any, **kwargs: Any) -> Any:
            made = kind(*args, **kwargs)
            built.append(made)
            return made

        return make


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """make_service run on LIMITS (never started), with what it built, and the clock."""
    path = tmp_path / "accel.toml"
    path.write_text(textwrap.dedent(LIMITS.format(cache_dir=tmp_path / "cache")))
    built = Built(monkeypatch)
    reactor = MemoryReactorClock()
    top = app.make_service(Config.from_toml(str(path)), reactor)
    yield built, reactor
    top.stopService()  # closes the store and the pools


def test_server_limits_reach_the_server(service: Any) -> None:
    """Every [server] limit set in the file is in the HTTP server factory's ServerLimits."""
    built, _ = service
    (factory,) = built.factories
    assert factory.limits == ServerLimits(
        header_timeout=5.0,
        idle_timeout=20.0,
        body_timeout=30.0,
        send_timeout=45.0,
        max_header_bytes=16 * 1024,
        max_headers=50,
        max_target=4096,
        max_pipelined=4,
        max_buffered_body=128 * 1024,
        max_discard=0,
        max_connections_per_client=None,
        linger_time=10.0,
        linger_timeout=2.0,
        notsent_lowat=16 * 1024,
        max_unsent=2 * 1024 * 1024,
    )


def test_upstream_limits_reach_every_pool(service: Any) -> None:
    """[upstream] applies to every route's pool; [timeouts] with the route's overrides."""
    built, _ = service
    root, slow = built.pools
    common = dict(
        connect_timeout=3.0,
        max_idle_per_origin=8,
        max_fails=5,
        fail_timeout=30.0,
        tries=2,
        max_head_bytes=16 * 1024,
        max_headers=64,
        max_connections_per_origin=16,
        queue=50,
        queue_timeout=20.0,
    )
    assert root.settings == UpstreamSettings(keepalive_timeout=15.0, **common)
    assert slow.settings == UpstreamSettings(keepalive_timeout=2.0, **common)


def test_cache_lock_timeout_reaches_the_collapser(service: Any) -> None:
    """A request waiting on another's fetch is released after cache.lock_timeout."""
    built, reactor = service
    (collapser,) = built.collapsers
    woken: list[bool] = []
    collapser.lead("key")
    collapser.wait("key", woken.append)
    reactor.advance(4.9)
    assert woken == []
    reactor.advance(0.2)
    assert woken == [True]


def test_hit_for_miss_ttl_reaches_the_collapser(service: Any) -> None:
    """With cache.hit_for_miss_ttl = 0 an unstorable response leaves no hit-for-miss marker."""
    built, _ = service
    (collapser,) = built.collapsers
    collapser.lead("key")
    collapser.done("key", storable=False)
    assert not collapser.passing("key")


def test_max_variants_reaches_the_store(service: Any) -> None:
    """cache.max_variants is the bound the store is opened with."""
    built, _ = service
    (options,) = built.stores
    assert options["max_variants"] == 4


def test_a_routes_ca_file_reaches_its_https_origins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sites.routes.ca_file: the route's https origins trust that bundle; its http ones need none."""
    from tests.test_upstream import _self_signed

    _, ca = _self_signed(str(tmp_path))
    path = tmp_path / "accel.toml"
    path.write_text(textwrap.dedent(f"""\
        listen = "tcp:0:interface=127.0.0.1"
        workers = 1
        [cache]
        dir = "{tmp_path / 'cache'}"
        [[sites]]
          [[sites.routes]]
          prefix = "/"
          origin = ["https://a.internal", "http://b.internal"]
          ca_file = "{ca}"
        """))
    built = Built(monkeypatch)
    top = app.make_service(Config.from_toml(str(path)), MemoryReactorClock())
    try:
        (pool,) = built.pools
        assert [(o.scheme, o.ca_file) for o in pool.origins] == [("https", ca), ("http", None)]
    finally:
        top.stopService()


def test_max_ranges_reaches_the_route_cache_rules() -> None:
    """cache.max_ranges becomes the route's CacheRules.max_ranges, where ranges are answered."""
    from accel.config import CacheSettings

    rules = app.cache_rules(CacheSettings(max_ranges=3))
    assert rules is not None and rules.max_ranges == 3


def test_a_listener_without_backlog_listens_with_nginx_default(tmp_path: Path) -> None:
    """A single-process listener that sets no ``backlog=`` asks the reactor for 511."""
    path = tmp_path / "accel.toml"
    path.write_text(textwrap.dedent(f"""\
        listen = ["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=7"]
        workers = 1
        [cache]
        dir = "{tmp_path / 'cache'}"
        [[sites]]
          [[sites.routes]]
          prefix = "/"
          origin = "http://127.0.0.1:9"
        """))
    reactor = MemoryReactorClock()
    top = app.make_service(Config.from_toml(str(path)), reactor)
    top.privilegedStartService()
    try:
        assert [backlog for _, _, backlog, _ in reactor.tcpServers] == [511, 7]
    finally:
        top.stopService()

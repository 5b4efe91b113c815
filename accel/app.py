"""Wiring: turn a validated :class:`~accel.config.Config` into running services.

This is the only module (with :mod:`accel.tap`) that knows every part: it
builds the origin pools, the store, the accelerator, the HTTP server factory
and the listeners, and ties their lifetimes to one ``MultiService``.
Everything it builds takes the reactor as an argument.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from attrs import evolve
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.python.failure import Failure
from twisted.logger import Logger

from accel import config as cfg
from accel.accesslog import AccessLog, format_line
from accel.cache.collapse import Collapser
from accel.cache.keys import KeyRecipe
from accel.cache.memory import HotTier, MemoryTier
from accel.cache.policy import PolicySettings
from accel.cache.store import Store
from accel.forwarding import ForwardingPolicy
from accel.http.server import HTTPServerFactory, ServerLimits
from accel.proxy import Accelerator
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.workers import (
    Listener,
    ListenerService,
    WorkerPool,
    available_cpus,
    bind_listeners,
    plan_workers,
    serving_factory,
)
from accel.upstream import Origin, OriginPool, UpstreamSettings

__all__ = ["make_service", "build_accelerator"]

_log = Logger()

#: Memory for small stored bodies read from disk (shared with the hot tier:
#: one bytes object per body), and for ready-to-send fresh hits. Sized so a
#: worker stays under about 80 MiB resident whatever the store holds.
MEMORY_TIER_BYTES = 8 * 1024 * 1024
HOT_TIER_BYTES = 16 * 1024 * 1024
#: Largest body either tier holds (read whole from disk on the reactor
#: thread when first served: a bounded read from the page cache). Larger
#: hot bodies are sent from their files with sendfile.
MEMORY_MAX_ITEM = 256 * 1024


def cache_rules(settings: cfg.CacheSettings) -> CacheRules | None:
    """The runtime cache rules of a route, or None when it does not cache."""
    if not settings.enabled:
        return None
    query = "ignore" if settings.ignore_query else "sort" if settings.sort_query else "keep"
    rules = PolicySettings(
        heuristic_fraction=settings.heuristic_fraction,
        heuristic_max=settings.heuristic_max,
        store_set_cookie=settings.store_set_cookie,
        stale_if_error_default=settings.stale_if_error,
    )
    strip = [rules.targeted_field] if rules.targeted_field is not None else []
    if settings.strip_cdn_cache_control:
        strip.append(b"cdn-cache-control")
    return CacheRules(
        policy=rules,
        recipe=KeyRecipe(query=query, headers=settings.key_headers),
        range_fetch_max=settings.range_fetch_max,
        max_ranges=settings.max_ranges,
        strip=tuple(strip),
    )


def server_limits(config: cfg.Config) -> ServerLimits:
    """The client-side limits ``config`` asks for (its ``[server]`` table).

    Request bodies are bounded per route, by the server asking
    :meth:`~accel.proxy.Accelerator.body_limit` before the handler runs.
    """
    limits = config.limits
    return ServerLimits(
        max_target=limits.max_target,
        max_header_bytes=limits.max_header_bytes,
        max_headers=limits.max_headers,
        header_timeout=limits.header_timeout,
        idle_timeout=limits.keepalive_timeout,
        body_timeout=limits.body_timeout,
        max_pipelined=limits.max_pipelined,
        max_buffered_body=limits.max_buffered_body,
        max_discard=limits.max_discard,
        max_connections_per_client=limits.max_connections_per_client,
        linger_time=limits.linger_time,
        linger_timeout=limits.linger_timeout,
        notsent_lowat=limits.notsent_lowat,
        max_unsent=limits.max_unsent,
    )


def upstream_settings(timeouts: cfg.Timeouts, upstream: cfg.UpstreamLimits) -> UpstreamSettings:
    """The settings of one route's origin pool: its timeouts, and the
    server-wide ``[upstream]`` table."""
    return UpstreamSettings(
        connect_timeout=timeouts.connect,
        first_byte_timeout=timeouts.first_byte,
        idle_timeout=timeouts.idle,
        keepalive_timeout=timeouts.keepalive,
        max_idle_per_origin=upstream.max_idle_per_origin,
        max_fails=upstream.max_fails,
        fail_timeout=upstream.fail_timeout,
        tries=upstream.tries,
        max_head_bytes=upstream.max_header_bytes,
        max_headers=upstream.max_headers,
        max_connections_per_origin=upstream.max_connections_per_origin,
        queue=upstream.queue,
        queue_timeout=upstream.queue_timeout,
    )


def collapser(config: cfg.Config, reactor: Any) -> Collapser:
    """The request collapser ``config`` asks for: its cache lock and hit-for-miss times."""
    return Collapser(reactor, timeout=config.cache_lock_timeout, pass_ttl=config.cache_hit_for_miss_ttl)


def open_store(directory: str, size_limit: int, reactor: Any, **options: Any) -> Store:
    """The store as accel runs it: on disk, with its memory tier for small bodies."""
    return Store(
        directory, size_limit, reactor, memory=MemoryTier(MEMORY_TIER_BYTES, MEMORY_MAX_ITEM), **options
    )


def build_accelerator(config: cfg.Config, reactor: Any, store: Store | None) -> Accelerator:
    """The request handler for ``config``'s sites and routes."""
    trusted = tuple(config.trusted_proxies)
    sites = []
    for site in config.sites:
        routes = []
        for route in site.routes:
            origins = [
                Origin.parse(str(o), ca_file=route.ca_file if o.scheme == "https" else None)
                for o in route.origins
            ]
            pool = OriginPool(origins, reactor, upstream_settings(route.timeouts, config.upstream))
            runtime = Route(
                upstream=pool,
                forwarding=ForwardingPolicy(trusted=trusted, host=route.host),
                cache=cache_rules(route.cache),
                name=route.prefix.decode("latin-1"),
                access=route.access,
                hide_headers=route.hidden_fields,
                max_body=route.max_body,
            )
            routes.append((route.prefix, runtime))
        sites.append((site.hosts, routes))
    router: Router[Route] = Router(sites)
    hot = HotTier(HOT_TIER_BYTES, MEMORY_MAX_ITEM) if store is not None else None
    return Accelerator(router, reactor, store, collapser(config, reactor), hot=hot)


class _InOrder(MultiService):
    """A ``MultiService`` that stops its services one at a time, last first.

    Each waits for the one started after it to finish stopping, so the
    worker processes have exited before the demo origin they fetch from
    stops and the temporary cache directory they share is removed.
    """

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        done: Deferred[None] = succeed(None)
        for service in reversed(list(self)):
            done.addCallback(_stop, service)
            done.addErrback(_stop_failed)
        return done


def _stop(_: object, service: Any) -> Deferred[None]:
    return maybeDeferred(service.stopService)


def _stop_failed(failure: Failure) -> None:
    _log.failure("error while shutting down", failure)


class _StoreOpener(Service):
    """Opens the store's database as the service starts, in the serving process."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def startService(self) -> None:
        super().startService()
        self._store.open()


class _Closer(Service):
    """Closes what the proxy opened (store, logs, temp dirs) when stopping."""

    def __init__(self) -> None:
        self._actions: list[Any] = []

    def add(self, action: Any) -> None:
        self._actions.append(action)

    def stopService(self) -> None:
        super().stopService()
        for action in reversed(self._actions):
            try:
                action()
            except Exception:
                _log.failure("error while shutting down")


class _Listener(Service):
    """Listens on one endpoint; a listener that cannot start ends start-up.

    Binding happens in ``privilegedStartService`` (before twistd drops
    privileges). The usual endpoints bind synchronously, so a port in use
    becomes one line on stderr and a non-zero exit, not a traceback in the
    log and a server that silently listens nowhere.
    """

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        self._description = description
        self._endpoint = endpoint
        self._factory = factory
        self._port: IListeningPort | None = None
        self._failure: Failure | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        d: Deferred[IListeningPort] = self._endpoint.listen(self._factory)
        d.addCallbacks(self._listening, self._failed)
        if self._failure is not None:
            reason = self._failure.getErrorMessage()
            if self.parent is not None:
                self.parent.stopService()  # remove temporary directories
            raise SystemExit(f"accel: --listen {self._description}: cannot listen: {reason}")

    def _listening(self, port: IListeningPort) -> None:
        self._port = port

    def _failed(self, failure: Failure) -> None:
        if self.running:
            _log.failure("cannot listen on {description}", failure, description=self._description)
        self._failure = failure

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            return maybeDeferred(port.stopListening)
        return None


def _access_log(config: cfg.Config, reactor: Any, closer: _Closer) -> Any:
    if config.access_log == "off":
        return None
    if config.access_log is None:

        def to_twisted_log(*args: Any) -> None:
            _log.info("{line}", line=format_line(*args).decode("latin-1").rstrip("\n"))

        return to_twisted_log
    log = AccessLog(config.access_log, reactor)
    closer.add(log.close)
    return log


def make_service(
    config: cfg.Config, reactor: Any, listeners: Sequence[Listener] | None = None
) -> IService:
    """Everything ``twistd accel`` runs, as one service.

    With more than one worker (``config.workers``, or for ``auto`` one per
    CPU: :func:`~accel.workers.plan_workers`) this process binds every
    listener, serves as worker 0 and runs the others (:mod:`accel.workers`);
    a worker is given its already listening sockets as ``listeners``, one
    per ``config.listen`` entry, and runs no workers itself.
    """
    top = _InOrder()
    closer = _Closer()
    closer.setServiceParent(top)

    if config.demo:
        from accel.demo import DemoOrigin

        demo = DemoOrigin.create(reactor, reactor, config.listen)
        demo.setServiceParent(top)
        config = evolve(config.with_demo_origin(demo.url), demo=False)

    store = None
    if any(route.cache.enabled for site in config.sites for route in site.routes):
        directory = config.cache_dir
        if directory is None:
            directory = tempfile.mkdtemp(prefix="accel-cache-")
            closer.add(lambda: shutil.rmtree(directory, ignore_errors=True))
            config = evolve(config, cache_dir=directory)  # the workers share it
        # Opened when the service starts, not now: twistd forks into a daemon
        # in between, and SQLite connections must not cross a fork.
        store = open_store(
            directory, config.cache_size, reactor, max_variants=config.cache_max_variants, lazy=True
        )
        _StoreOpener(store).setServiceParent(top)
        closer.add(store.close)

    handler = build_accelerator(config, reactor, store)
    closer.add(handler.close)
    limits = server_limits(config)
    access_log = _access_log(config, reactor, closer)
    workers = 1
    if listeners is None:
        plan = plan_workers(config, available_cpus())
        if plan.reason is not None:
            _log.info("{reason}", reason=plan.reason)
        workers = plan.count
    if workers > 1:
        try:
            sockets = bind_listeners(config.listen, workers, reactor)
        except OSError as e:
            top.stopService()  # remove temporary directories
            raise SystemExit(f"accel: --listen {' '.join(config.listen)}: cannot listen: {e}") from None
        for group in sockets:
            for sock in set(group):
                closer.add(sock.close)
        listeners = [Listener(group[0].fileno(), group[0].family) for group in sockets]
        pool = WorkerPool(reactor, evolve(config, workers=1), [list(w) for w in zip(*sockets)][1:])
        pool.setServiceParent(top)
    for number, description in enumerate(config.listen):
        tls = description.split(":", 1)[0] in ("ssl", "tls")
        factory = HTTPServerFactory(
            handler,
            reactor,
            scheme=b"https" if tls else b"http",
            limits=limits,
            access_log=access_log,
            body_limit=handler.body_limit,
            fast_path=handler.fast_hit,
        )
        if listeners is not None:
            served = serving_factory(description, factory, reactor)
            ListenerService(reactor, listeners[number], served).setServiceParent(top)
        else:
            endpoint = serverFromString(reactor, description)
            _Listener(description, endpoint, factory).setServiceParent(top)
    return top

"""Wiring: turn a validated :class:`~accel.config.Config` into running services.

This is the only module (with :mod:`accel.tap`) that knows every part: it
builds the origin pools, the store, the accelerator, the HTTP server factory
and the listeners, and ties their lifetimes to one ``MultiService``.
Everything it builds takes the reactor as an argument.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from attrs import evolve
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

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
from accel.reload import caches, plan_reload
from accel.routes import CacheRules, Route
from accel.routing import Router
from accel.upstream import Origin, OriginPool, UpstreamSettings
from accel.workers import (
    Listener,
    ListenerService,
    WorkerPool,
    available_cpus,
    bind_listeners,
    plan_workers,
    serving_factory,
)

__all__ = ["build_accelerator", "make_service"]

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
        strip=frozenset(strip),
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
        send_timeout=limits.send_timeout,
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


def freeze_heap() -> None:
    """Collect once, then move every object alive to the collector's permanent
    generation (``gc.freeze``), where its collections no longer look."""
    gc.collect()
    gc.freeze()


class _FrozenStartUp(Service):
    """Freezes the heap built at start-up once the reactor runs (:func:`freeze_heap`).

    The modules, configuration and long-lived objects of a started process
    are some 50,000 tracked objects; every full collection walked them all,
    and a stored miss, whose objects outlive a reactor turn under load
    (their rows commit at its end), makes collections frequent: about 6 %
    of a miss's instructions (docs/performance.rst, "Seventh round").

    What is frozen is never collected, so a reload thaws the heap
    (:meth:`thaw_until`): the cycles the replaced configuration leaves are
    collected as usual, and the heap is frozen again once the handler it
    replaced has retired.
    """

    def __init__(
        self,
        reactor: Any,
        freeze: Callable[[], None] = freeze_heap,
        thaw: Callable[[], None] = gc.unfreeze,
    ) -> None:
        self._reactor = reactor
        self._freeze = freeze
        self._thaw = thaw
        #: Whether the heap is frozen (the reactor has run, and no reload
        #: has thawed it since).
        self.frozen = False
        #: Reloads whose replaced handler has not retired yet.
        self._thawing = 0
        #: The freeze scheduled once the last of them has.
        self._refreeze: Any = None

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._freeze_now)

    def _freeze_now(self) -> None:
        self._refreeze = None
        if not self.running:
            return
        self._freeze()
        self.frozen = True

    def thaw_until(self, retired: Deferred[None]) -> None:
        """Thaw the heap now, and freeze it again on the reactor's turn after
        ``retired`` fires (and any other reload's since has too). Nothing
        if it was never frozen (the reactor has not run)."""
        if self._refreeze is not None:
            self._refreeze.cancel()  # thawed still: frozen after this one too
            self._refreeze = None
        elif not self.frozen and not self._thawing:
            return
        if self.frozen:
            self._thaw()
            self.frozen = False
        self._thawing += 1

        def refreeze(result: object) -> object:
            self._thawing -= 1
            if not self._thawing:
                self._refreeze = self._reactor.callLater(0, self._freeze_now)
            return result

        retired.addBoth(refreeze)


def _remove_socket_path(path: str) -> None:
    """Remove a UNIX listener's path the workers shared, unless gone already."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
            except Exception:  # noqa: BLE001 (every shutdown action must still run)
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


#: ``install(signum, handler)``: sets a signal's handler, returns the one it
#: replaces (``signal.signal``).
InstallHandler = Callable[[int, Any], Any]


class _Drain(Service):
    """Lets the requests in progress finish when the service stops.

    Stopped once every listener has stopped accepting; each server factory
    closes its idle connections (after a second's grace for a request on
    its way), lets the others answer what they have read
    (the last answer with ``Connection: close``) and aborts what is left
    after ``timeout`` seconds (:meth:`HTTPServerFactory.drain`). Stopping
    fires once every client connection is gone, so twistd waits for it
    before the store and the logs close.

    Given a ``reactor``, a second SIGTERM or SIGINT while it waits ends the
    wait at once, as an operator who sends it again means: what is still
    open is aborted, and the actions added with :meth:`on_force` run (the
    worker pool passes the signal on). ``install`` sets a signal's handler
    (``signal.signal``); the handlers it replaced are put back when the
    wait ends.
    """

    def __init__(self, timeout: float, reactor: Any = None, install: InstallHandler = signal.signal) -> None:
        #: Seconds the connections get to finish (a reload may change it).
        self.timeout = timeout
        self._factories: list[HTTPServerFactory] = []
        self._reactor = reactor
        self._install = install
        self._forced: list[Callable[[], object]] = []
        self._replaced: dict[int, Any] = {}

    def add(self, factory: HTTPServerFactory) -> None:
        self._factories.append(factory)

    def on_force(self, action: Callable[[], object]) -> None:
        """Run ``action`` too when a second stop signal ends the wait."""
        self._forced.append(action)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        open_connections = sum(factory.open_connections for factory in self._factories)
        if open_connections:
            _log.info(
                "stopping: {count} client connection(s) open; waiting up to {timeout:g}s for them",
                count=open_connections,
                timeout=self.timeout,
            )
        drained = [factory.drain(self.timeout) for factory in self._factories]
        if self._reactor is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous = self._install(signum, self._again)
                if previous is signal.SIG_IGN:
                    self._install(signum, previous)  # a worker ignores SIGINT
                else:
                    self._replaced[signum] = previous
        done = gatherResults(drained).addCallback(lambda _: None)
        return done.addBoth(self._restore)

    def _again(self, signum: int, frame: Any) -> None:
        """A stop signal while the connections drain: stop waiting (on the reactor)."""
        self._reactor.callFromThread(self._force, signum)

    def _force(self, signum: int) -> None:
        _log.warn(
            "signal {signum} while stopping: closing the remaining connections now",
            signum=signum,
        )
        for action in self._forced:
            try:
                action()
            except Exception:  # noqa: BLE001 (the connections must still be closed)
                _log.failure("error while forcing the stop")
        for factory in self._factories:
            factory.abort_open()

    def _restore(self, result: object) -> object:
        replaced, self._replaced = self._replaced, {}
        for signum, previous in replaced.items():
            self._install(signum, signal.SIG_DFL if previous is None else previous)
        return result


class _OnSignal(Service):
    """Runs its actions (see :meth:`add`) on the reactor each time the process gets ``signum``.

    The handler is installed when the service starts (under twistd, after
    twistd's own SIGUSR1 handler, which rotates ``twistd.log`` when it logs
    to a file) and calls the handler it replaced first, so both happen. It
    only hands the work to the reactor (``callFromThread``, safe in a
    signal handler); the actions run there. It is restored when the service
    has stopped: this service is stopped last, so a signal while the
    connections drain is still handled, not left to a default that would
    end the process.
    """

    def __init__(
        self,
        reactor: Any,
        signum: int,
        install: InstallHandler = signal.signal,
    ) -> None:
        self._reactor = reactor
        self._signum = signum
        self._actions: list[Callable[[], object]] = []
        self._install = install
        self._previous: Any = None
        self._installed = False

    def add(self, action: Callable[[], object]) -> None:
        """Run ``action`` at each signal, after those added before it."""
        self._actions.append(action)

    def startService(self) -> None:
        super().startService()
        self._previous = self._install(self._signum, self._handle)
        self._installed = True

    def stopService(self) -> None:
        super().stopService()
        if self._installed:
            self._installed = False
            previous = self._previous
            self._install(self._signum, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum: int, frame: Any) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        self._reactor.callFromThread(self._run)

    def _run(self) -> None:
        for action in self._actions:
            try:
                action()
            except Exception:  # noqa: BLE001 (one failing must not stop the others)
                _log.failure("error while handling signal {signum}", signum=self._signum)


class _Reloader:
    """Applies the configuration read anew on SIGHUP, as ``nginx -s reload`` does.

    ``reread`` gives the configuration exactly as start-up built it (the
    same command line, the ``--config`` file read again) or raises
    :class:`~accel.config.ConfigError`: then one line says why and nothing
    changes. ``settle`` fills in what start-up decided (the demo origin's
    address, a temporary cache directory). What only a restart can change
    is kept, one line each (:func:`accel.reload.plan_reload`); the rest is
    applied:

    * a new handler (origin pools, routes, cache rules, a fresh hot tier)
      on the same store is swapped into every server factory: new requests,
      including the next one on an open connection, take it; those in
      progress finish with the one they began with, which then keeps
      nothing (:meth:`Accelerator.retire <accel.proxy.Accelerator.retire>`);
    * the access log moves to a new path, the drain takes the new
      ``shutdown_timeout``;
    * the worker pool replaces each child with one serving the new
      configuration (:meth:`WorkerPool.reload`).
    """

    def __init__(
        self,
        reactor: Any,
        config: cfg.Config,
        handler: Accelerator,
        store: Store | None,
        settle: Callable[[cfg.Config], cfg.Config],
        serving: Service,
    ) -> None:
        self.handler = handler
        self.factories: list[HTTPServerFactory] = []
        self.access_log: AccessLog | None = None
        self.drain: _Drain | None = None
        self.pool: WorkerPool | None = None
        #: Thawed while a replaced handler retires (see _FrozenStartUp).
        self.heap: _FrozenStartUp | None = None
        self._reactor = reactor
        self._config = config
        self._store = store
        self._settle = settle
        self._serving = serving

    def reload(self, reread: Callable[[], cfg.Config]) -> None:
        """Read the configuration again and apply what may change live."""
        if not self._serving.running:
            _log.info("SIGHUP while stopping: the configuration is not reloaded")
            return
        try:
            new = self._settle(reread())
        except cfg.ConfigError as error:
            _log.error("configuration not reloaded, still serving the previous one: {error}", error=str(error))
            return
        plan = plan_reload(self._config, new)
        config = plan.config
        try:
            handler = build_accelerator(config, self._reactor, self._store)
        except ValueError as error:  # a file changed since it was checked (a CA bundle)
            _log.error("configuration not reloaded, still serving the previous one: {error}", error=str(error))
            return
        except Exception as error:  # noqa: BLE001 (keep serving with what works)
            _log.failure(
                "configuration not reloaded, still serving the previous one: {error}", error=str(error)
            )
            return
        for name in plan.restart:
            _log.warn("{name} changed: takes effect at the next restart", name=name)
        limits = server_limits(config)
        for factory in self.factories:
            factory.reconfigure(handler, limits=limits, body_limit=handler.body_limit, fast_path=handler.fast_hit)
        old, self.handler = self.handler, handler
        retired = old.retire().addErrback(_log_failure, "error while retiring the previous handler")
        if self.heap is not None:
            self.heap.thaw_until(retired)
        if self.access_log is not None and config.access_log is not None and config.access_log != "off":
            self.access_log.move(config.access_log)
        if self.drain is not None:
            self.drain.timeout = config.shutdown_timeout
        replaced = ""
        if self.pool is not None:
            count = self.pool.reload(evolve(config, workers=1))
            replaced = f"; replacing {count} worker(s)"
        self._config = config
        _log.info(
            "configuration reloaded: {sites} site(s), {routes} route(s){replaced}",
            sites=len(config.sites),
            routes=sum(len(site.routes) for site in config.sites),
            replaced=replaced,
        )


def _log_failure(failure: Failure, what: str) -> None:
    _log.failure(what, failure)


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
    config: cfg.Config,
    reactor: Any,
    listeners: Sequence[Listener] | None = None,
    install_handler: InstallHandler = signal.signal,
    reread: Callable[[], cfg.Config] | None = None,
) -> IService:
    """Everything ``twistd accel`` runs, as one service.

    With more than one worker (``config.workers``, or for ``auto`` one per
    CPU: :func:`~accel.workers.plan_workers`) this process binds every
    listener, serves as worker 0 and runs the others (:mod:`accel.workers`);
    a worker is given its already listening sockets as ``listeners``, one
    per ``config.listen`` entry, and runs no workers itself.

    Stopping it stops accepting, then lets the requests in progress finish
    for ``config.shutdown_timeout`` seconds (the workers too, at the same
    time), then closes the store and the logs. SIGUSR1 reopens the access
    log, and is passed on to the workers. Given ``reread`` (which builds
    the configuration anew, as start-up did, or raises
    :class:`~accel.config.ConfigError`), SIGHUP reloads it (see
    :class:`_Reloader`). ``install_handler`` installs the signal handlers
    when the service starts.
    """
    top = _InOrder()
    # First in, so stopped last: the handlers stay while connections drain.
    on_usr1 = _OnSignal(reactor, signal.SIGUSR1, install_handler)
    on_usr1.setServiceParent(top)
    on_hup = None
    if reread is not None:
        on_hup = _OnSignal(reactor, signal.SIGHUP, install_handler)
        on_hup.setServiceParent(top)
    closer = _Closer()
    closer.setServiceParent(top)

    demo_url: str | None = None
    if config.demo:
        from accel.demo import DemoOrigin

        demo = DemoOrigin.create(reactor, reactor, config.listen)
        demo.setServiceParent(top)
        demo_url = demo.url
        config = evolve(config.with_demo_origin(demo.url), demo=False)

    store = None
    temporary: str | None = None
    if caches(config):
        directory = config.cache_dir
        if directory is None:
            directory = temporary = tempfile.mkdtemp(prefix="accel-cache-")
            closer.add(lambda: shutil.rmtree(directory, ignore_errors=True))
            config = evolve(config, cache_dir=directory)  # the workers share it
        # Opened when the service starts, not now: twistd forks into a daemon
        # in between, and SQLite connections must not cross a fork.
        store = open_store(
            directory, config.cache_size, reactor, max_variants=config.cache_max_variants, lazy=True
        )
        _StoreOpener(store).setServiceParent(top)
        closer.add(store.close)

    def settle(new: cfg.Config) -> cfg.Config:
        """A configuration read anew, as this process runs it: with what start-up filled in."""
        if new.demo and demo_url is not None:
            new = evolve(new.with_demo_origin(demo_url), demo=False)
        if new.cache_dir is None and temporary is not None:
            new = evolve(new, cache_dir=temporary)
        return new

    handler = build_accelerator(config, reactor, store)
    reloader = _Reloader(reactor, config, handler, store, settle, top)
    closer.add(lambda: reloader.handler.close())  # noqa: PLW0108 (late binding: a reload replaces the handler)
    if on_hup is not None and reread is not None:
        on_hup.add(lambda: reloader.reload(reread))
    limits = server_limits(config)
    access_log = _access_log(config, reactor, closer)
    if isinstance(access_log, AccessLog):
        on_usr1.add(access_log.reopen)
        reloader.access_log = access_log
    workers = 1
    if listeners is None:
        plan = plan_workers(config, available_cpus())
        if plan.reason is not None:
            _log.info("{reason}", reason=plan.reason)
        workers = plan.count
    # The workers and this process's own connections wind down side by side,
    # after the listeners (added later, so stopped first) stop accepting.
    stopping = MultiService()
    stopping.setServiceParent(top)
    drain = reloader.drain = _Drain(config.shutdown_timeout, reactor, install_handler)
    drain.setServiceParent(stopping)
    if workers > 1:
        try:
            sockets = bind_listeners(config.listen, workers, reactor)
        except OSError as e:
            top.stopService()  # remove temporary directories
            raise SystemExit(f"accel: --listen {' '.join(config.listen)}: cannot listen: {e}") from None
        for group in sockets:
            for sock in set(group):
                closer.add(sock.close)
            path = group[0].getsockname() if group[0].family == socket.AF_UNIX else None
            if isinstance(path, str) and path:
                # The workers' ports leave it (accel.ports.UNIXPort): removed
                # here, once, when the last of them has stopped.
                closer.add(lambda path=path: _remove_socket_path(path))
        listeners = [Listener(group[0].fileno(), group[0].family) for group in sockets]
        pool = WorkerPool(reactor, evolve(config, workers=1), [list(w) for w in zip(*sockets, strict=True)][1:])
        pool.setServiceParent(stopping)
        reloader.pool = pool
        on_usr1.add(lambda: pool.signal_children(signal.SIGUSR1))
        drain.on_force(pool.stop_now)
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
        drain.add(factory)
        reloader.factories.append(factory)
        if listeners is not None:
            served = serving_factory(description, factory, reactor)
            ListenerService(reactor, listeners[number], served).setServiceParent(top)
        else:
            endpoint = serverFromString(reactor, cfg.with_backlog(description))
            _Listener(description, endpoint, factory).setServiceParent(top)
    reloader.heap = _FrozenStartUp(reactor)
    reloader.heap.setServiceParent(top)
    return top

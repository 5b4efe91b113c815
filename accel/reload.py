"""What a configuration reload (SIGHUP) may change in a running accel, and what waits.

Pure: :func:`plan_reload` compares the configuration in force with the one
just read and returns the configuration to apply, with the settings that
only a restart can change left as they are, and the names of those that
changed (each logged as "... changed: takes effect at the next restart").
:mod:`accel.app` applies the plan; the rules are here so that they can be
read, and tested, apart from the services.

What a restart needs is what is bound when the process starts:

* ``listen``: the listening sockets (bound once, inherited by the workers);
* ``workers``: the number of processes;
* ``cache.dir``, ``cache.size``, ``cache.max_variants``: the store, opened
  once and shared by every worker;
* caching itself when no route cached at start: no store was opened then,
  so the routes that now cache are served uncached until the restart;
* ``access_log`` turned on or off, or moved between a file and the twistd
  log: each connection holds its logger (a new path, or ``-``, applies at
  once: the same log writes to the new place);
* ``admin``: a listener.

Everything else applies to the requests that begin after the reload: the
sites and routes, origins and ``[upstream]`` settings (new origin pools),
cache rules, forwarding, ``trusted_proxies``, the cache lock and
hit-for-miss times, and ``shutdown_timeout``; the ``[server]`` limits
apply to the connections accepted after it.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve, frozen

from accel.config import Config

__all__ = ["ReloadPlan", "caches", "plan_reload"]


@frozen
class ReloadPlan:
    """The configuration to apply, and the settings left for the next restart.

    ``restart`` names each setting that changed but cannot change in a
    running process, as the configuration file spells it.
    """

    config: Config
    restart: tuple[str, ...] = ()


#: Config fields fixed at start, with their names in the file.
_BOUND_AT_START = (
    ("listen", "listen"),
    ("workers", "workers"),
    ("cache_dir", "cache.dir"),
    ("cache_size", "cache.size"),
    ("cache_max_variants", "cache.max_variants"),
    ("admin", "admin.listen"),
    ("admin_token_file", "admin.token_file"),
)


def caches(config: Config) -> bool:
    """Whether any route of ``config`` caches (and so whether accel opens a store)."""
    return any(route.cache.enabled for site in config.sites for route in site.routes)


def _log_kind(path: str | None) -> str:
    """How the access log is written: ``off``, the twistd log, or a file (``-`` included)."""
    if path == "off":
        return "off"
    return "twistd log" if path is None else "file"


def plan_reload(current: Config, new: Config) -> ReloadPlan:
    """What to apply of ``new`` in a process running ``current``.

    Both are as the process uses them (a temporary cache directory and the
    demo origin filled in alike). The plan's configuration is ``new`` with
    every setting of :data:`_BOUND_AT_START` kept from ``current``, the
    access log kept when its kind changes, and caching turned off on every
    route when ``current`` opened no store.
    """
    keep: dict[str, Any] = {}
    restart = []
    for field, name in _BOUND_AT_START:
        if getattr(new, field) != getattr(current, field):
            keep[field] = getattr(current, field)
            restart.append(name)
    if _log_kind(new.access_log) != _log_kind(current.access_log):
        keep["access_log"] = current.access_log
        restart.append("access_log")
    if caches(new) and not caches(current):
        keep["sites"] = tuple(
            evolve(site, routes=tuple(evolve(route, cache=evolve(route.cache, enabled=False)) for route in site.routes))
            for site in new.sites
        )
        restart.append("cache.enabled (no store was opened at start)")
    return ReloadPlan(evolve(new, **keep), tuple(restart))

"""``twistd accel``: command-line options and the service maker.

Start-up errors end the process with one line, ``accel: <what is wrong>``,
and exit status 1. They are raised as :class:`SystemExit` rather than
``usage.UsageError`` because twistd answers a ``UsageError`` by printing the
whole option list before the message, which buries the one line that
matters.
"""

from __future__ import annotations

import os
import resource
from typing import Any, ClassVar

from attrs import evolve
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from accel import __version__
from accel.config import Config, ConfigError, check_log_path

__all__ = ["Options", "makeService", "raise_open_files_limit"]

_log = Logger()

#: The most open files accel asks for when the hard limit allows more.
MAX_OPEN_FILES = 1 << 20


class Options(usage.Options):
    """The options of ``twistd accel``; ``self.config`` is set once parsed."""

    synopsis = "[options]"
    longdesc = (
        "accel is a caching reverse proxy (an HTTP accelerator). Without --origin or --config it serves "
        "a built-in demo origin. Repeatable options may be given several times. Full reference: "
        "docs/configuration.rst."
    )

    optParameters: ClassVar[list[list[str | None]]] = [
        ["config", "c", None, "TOML configuration file (sites, routes, per-route settings)."],
        ["cache-dir", None, None, "Cache directory (created if missing) [default: a temporary one]."],
        ["cache-size", None, None, "Cache size limit, e.g. 512M or 2G [default: 1G]."],
        ["origin-host", None, None, "Host header sent to the --origin pool instead of the client's."],
        [
            "access-log",
            None,
            None,
            (
                "Access log file, - for stdout, or off "
                "[default: beside the twistd log: stdout with -n, else access.log in its directory]."
            ),
        ],
        ["workers", None, None, "Worker processes, 1 to 1024, or auto for one per CPU [default: auto]."],
        ["admin", None, None, "Endpoint of the admin API, e.g. tcp:9090:interface=127.0.0.1."],
        ["admin-token-file", None, None, "File holding the admin API's bearer token."],
    ]

    optFlags: ClassVar[list[list[str | None]]] = [
        [
            "check-config",
            None,
            (
                "Check the options and the --config file, print what they configure, and exit: "
                "status 0 if valid, else 1 with the error (as nginx -t; before a reload, say)."
            ),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        for key in ("listen", "origin", "parent", "static", "trusted-proxy"):
            self[key] = []
        self.config: Config | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Endpoint to serve on, e.g. tcp:8080 or unix:/run/accel.sock (repeatable) [default: tcp:8080]."""
        self["listen"].append(endpoint)

    def opt_origin(self, url: str) -> None:
        """Origin URL: http://host[:port], https://host[:port], unix:/path (repeatable: a pool)."""
        self["origin"].append(url)

    def opt_parent(self, url: str) -> None:
        """Parent cache URL to fetch through before the origin (repeatable)."""
        self["parent"].append(url)

    def opt_static(self, mapping: str) -> None:
        """Serve a directory at a path prefix: PREFIX=DIR, e.g. /assets=/srv/assets (repeatable)."""
        self["static"].append(mapping)

    def opt_trusted_proxy(self, cidr: str) -> None:
        """Client network trusted to have set X-Forwarded-For/Forwarded, e.g. 10.0.0.0/8 (repeatable)."""
        self["trusted-proxy"].append(cidr)

    def opt_version(self) -> None:
        """Display accel's version and exit."""
        print(f"accel {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """Build and validate the configuration; end start-up on any error.

        With ``--check-config`` that is all: a summary of the configuration
        goes to standard output and the process exits with status 0.
        """
        try:
            self.config = self.reread()
        except ConfigError as error:
            raise SystemExit(f"accel: {error}") from None
        if self["check-config"]:
            print(describe(self.config, self["config"]))
            raise SystemExit(0)

    def reread(self) -> Config:
        """The configuration these options give now: the ``--config`` file read again.

        Exactly what start-up builds from the same command line (on SIGHUP,
        see :mod:`accel.app`); raises :class:`ConfigError` with the text
        start-up prints after ``accel:``.
        """
        config = Config.from_options(self)
        if config.access_log is None:
            # Beside the twistd log, written directly: a line through twistd's
            # log observers costs several times the hit it records.
            beside = default_access_log(getattr(self, "parent", None))
            if beside is not None:
                try:
                    config = evolve(config, access_log=check_log_path(beside, "--access-log"))
                except ConfigError as error:
                    raise ConfigError(f"{error} (the default beside the twistd log)") from None
        return config


def describe(config: Config, path: str | None) -> str:
    """What ``--check-config`` prints of a valid ``config`` (read from ``path``, if any).

    The checks are those of start-up before anything is bound: the syntax
    and values of the options and the file. Whether the ports are free,
    the origins answer or the certificates load is only known when accel
    starts.
    """
    routes = sum(len(site.routes) for site in config.sites)
    origins = sorted({str(origin) for site in config.sites for route in site.routes for origin in route.origins})
    source = f"{path}: " if path else ""
    lines = [
        f"accel: {source}configuration OK",
        f"  listen: {', '.join(config.listen)}",
        "  origin: the built-in demo"
        if config.demo
        else f"  {len(config.sites)} site(s), {routes} route(s); origins: {', '.join(origins) or 'none'}",
        f"  cache: {config.cache_dir or 'a temporary directory'}, at most {config.cache_size:,} bytes",
        f"  workers: {config.workers if config.workers is not None else 'auto (one per CPU)'}",
        f"  access log: {config.access_log or 'the twistd log'}",
    ]
    return "\n".join(lines)


def default_access_log(twistd_options: Any) -> str | None:
    """Where the access log goes when none is given, for twistd's ``ServerOptions``.

    Beside the twistd log: standard output (``-``) when twistd logs there
    (``twistd -n`` or ``--debug`` without ``--logfile``, or with
    ``--logfile -``); else ``access.log`` in the directory of twistd's log
    file (``twistd.log`` in the working directory by default). ``None``
    (the twistd log itself) for ``--syslog``, ``--logger``, or outside twistd.
    """
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("syslog") or get("logger") is not None:
        return None
    logfile = get("logfile") or None
    if logfile == "-" or (logfile is None and (get("nodaemon") or get("debug"))):
        return "-"
    return os.path.join(os.path.dirname(os.path.abspath(logfile or "twistd.log")), "access.log")


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft limit on open files to its hard limit.

    Every client connection, origin connection and body file sent is a
    descriptor, and the soft limit is often 1,024: reached by a few hundred
    busy clients. As nginx's ``worker_rlimit_nofile`` and Go's runtime do,
    accel takes what the hard limit allows (at most :data:`MAX_OPEN_FILES`);
    workers inherit it. Returns the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft, soft  # e.g. above the kernel's nr_open: keep what there is
        return soft, want
    return soft, soft


def makeService(options: Options) -> IService:
    """The accel service for twistd: the configured proxy on the global reactor."""
    before, after = raise_open_files_limit()
    if after != before:
        _log.info("open files limit raised from {before} to {after}", before=before, after=after)
    # Imported here: only the service maker touches the global reactor, and
    # parsing options must not install one. accel's own (accel.reactor)
    # unless one was chosen already (twistd --reactor).
    from accel.reactor import install_default

    install_default()
    from twisted.internet import reactor

    from accel.app import make_service

    assert options.config is not None, "parseOptions() sets config"
    return make_service(options.config, reactor, reread=options.reread)

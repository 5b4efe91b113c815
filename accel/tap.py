"""``twistd accel``: command-line options and the service maker.

Start-up errors end the process with one line, ``accel: <what is wrong>``,
and exit status 1. They are raised as :class:`SystemExit` rather than
``usage.UsageError`` because twistd answers a ``UsageError`` by printing the
whole option list before the message, which buries the one line that
matters.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.application.service import IService
from twisted.python import usage

from accel import __version__
from accel.config import Config, ConfigError

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """The options of ``twistd accel``; ``self.config`` is set once parsed."""

    synopsis = "[options]"
    longdesc = (
        "accel is a caching reverse proxy (an HTTP accelerator). Without --origin or --config it serves "
        "a built-in demo origin. Repeatable options may be given several times. Full reference: "
        "docs/configuration.rst."
    )

    optParameters = [
        ["config", "c", None, "TOML configuration file (sites, routes, per-route settings)."],
        ["cache-dir", None, None, "Cache directory (created if missing) [default: a temporary one]."],
        ["cache-size", None, None, "Cache size limit, e.g. 512M or 2G [default: 1G]."],
        ["origin-host", None, None, "Host header sent to the --origin pool instead of the client's."],
        [
            "access-log",
            None,
            None,
            "Access log file, - for stdout, or off [default: stdout if twistd logs there (-n), else the twistd log].",
        ],
        ["workers", None, None, "Worker processes, 1 to 1024, or auto for one per CPU [default: auto]."],
        ["admin", None, None, "Endpoint of the admin API, e.g. tcp:9090:interface=127.0.0.1."],
        ["admin-token-file", None, None, "File holding the admin API's bearer token."],
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
        """Build and validate the configuration; end start-up on any error."""
        try:
            config = Config.from_options(self)
        except ConfigError as error:
            raise SystemExit(f"accel: {error}") from None
        if config.access_log is None and twistd_logs_to_stdout(getattr(self, "parent", None)):
            # The same place as the twistd log, written directly: a line
            # through twistd's log observers costs several times the hit.
            config = evolve(config, access_log="-")
        self.config = config


def twistd_logs_to_stdout(twistd_options: Any) -> bool:
    """Whether twistd, given ``twistd_options`` (its ``ServerOptions``), logs to standard output.

    That is ``twistd -n`` (or ``--debug``) without ``--logfile``, or with
    ``--logfile -``, and without ``--syslog`` or ``--logger``.
    """
    if twistd_options is None:
        return False
    get = twistd_options.get
    return (
        bool(get("nodaemon") or get("debug"))
        and get("logfile") in (None, "", "-")
        and not get("syslog")
        and get("logger") is None
    )


def makeService(options: Options) -> IService:
    """The accel service for twistd: the configured proxy on the global reactor."""
    # Imported here: only the service maker touches the global reactor, and
    # parsing options must not install one. accel's own (accel.reactor)
    # unless one was chosen already (twistd --reactor).
    from accel.reactor import install_default

    install_default()
    from twisted.internet import reactor

    from accel.app import make_service

    assert options.config is not None, "parseOptions() sets config"
    return make_service(options.config, reactor)

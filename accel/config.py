"""accel's configuration: frozen values, built and validated once at start-up.

Two named constructors build the same :class:`Config`:

* :meth:`Config.from_options` from the command line (the simple case: one
  default site with one route ``/``), optionally layered over a TOML file
  given with ``--config``;
* :meth:`Config.from_toml` from a TOML file alone (the full case: several
  sites chosen by Host, routes by longest path prefix).

Every problem is reported as a :class:`ConfigError` whose text is one line
naming the option or key and saying what is wrong, in the form
``--cache-size: expected a size such as 512M or 2G, got '12Q'`` or
``accel.toml: sites[0].routes[1].origin: expected http://host[:port], ...``.
The twistd plugin turns it into ``accel: <message>`` and a non-zero exit.

The values are dumb frozen ``attrs`` classes; all checking happens in the
loaders, which know where each value came from and so can name it. Apart
from the endpoint syntax check (Twisted's own parser, run against a memory
reactor) and a few file-system checks (directories exist, files readable),
this module does no I/O and never touches the reactor.

Precedence when both a file and options are given (``--config`` plus
others): a scalar option replaces the file's value; ``--listen`` replaces the
file's listen list; ``--trusted-proxy`` extends the file's list; the routes
that ``--origin``/``--parent``/``--static`` define join the file's default
site (the one without ``hosts``), replacing a file route with the same
prefix, and take their cache, compression, timeout and body-size settings
from the file's top-level defaults.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar

from attrs import evolve, frozen

__all__ = [
    "DEFAULT_HIDE_HEADERS",
    "MAX_WORKERS",
    "NOT_YET_SUPPORTED",
    "SHAREABLE_LISTENERS",
    "CacheSettings",
    "ClientAccess",
    "CompressionSettings",
    "Config",
    "ConfigError",
    "Limits",
    "OriginURL",
    "Route",
    "Site",
    "Timeouts",
    "UpstreamLimits",
    "check_log_path",
    "parse_duration",
    "parse_size",
    "unshareable_listener",
    "with_backlog",
]

#: The text that ends start-up when an option for a later release is used.
NOT_YET_SUPPORTED = "not yet supported by this version of accel"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem: the message is one line, naming the culprit."""


def _fail(name: str, message: str) -> NoReturn:
    raise ConfigError(f"{name}: {message}")


# ---------------------------------------------------------------------------
# Values


@frozen
class OriginURL:
    """Where an origin (or a parent cache) listens.

    ``scheme`` is ``"http"``, ``"https"`` or ``"unix"``; for ``unix``,
    ``path`` is the socket path and ``host``/``port`` are unused. IPv6
    literals are kept without brackets. ``str()`` gives the canonical URL.
    """

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    _DEFAULT_PORTS: ClassVar[dict[str, int]] = {"http": 80, "https": 443}
    # RFC 3986 reg-name restricted to what DNS can hold, or an IPv4 literal.
    _HOSTNAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?", re.ASCII)
    _EXPECTED = "expected http://host[:port], https://host[:port] or unix:/path"

    @classmethod
    def parse(cls, raw: object, name: str) -> OriginURL:
        """Parse ``http://host[:port]``, ``https://host[:port]`` or ``unix:/path``.

        A trailing ``/`` is allowed; any other path, a query, a fragment or
        user information is refused: an origin is an address, not a URL
        prefix. ``name`` is how the value is called in error messages.
        """
        if not isinstance(raw, str):
            _fail(name, f"{cls._EXPECTED}, got {raw!r}")
        if raw.startswith("unix:"):
            path = raw[len("unix:"):]
            if not path.startswith("/") or "\x00" in path:
                _fail(name, f"{cls._EXPECTED} (an absolute socket path), got {raw!r}")
            return cls(scheme="unix", path=path)
        match = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[^/:\[\]?#@]+)(?::([0-9]{1,5}))?/?", raw, re.ASCII)
        if match is None:
            _fail(name, f"{cls._EXPECTED}, got {raw!r}")
        scheme, host, port_text = match.groups()
        host = host.lower()
        if host.startswith("["):
            host = host[1:-1]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                _fail(name, f"{cls._EXPECTED} (bad IPv6 address), got {raw!r}")
        elif cls._HOSTNAME.fullmatch(host) is None:
            _fail(name, f"{cls._EXPECTED} (bad host name), got {raw!r}")
        port = cls._DEFAULT_PORTS[scheme] if port_text is None else int(port_text)
        if not 1 <= port <= 65535:
            _fail(name, f"{cls._EXPECTED} (port out of range 1-65535), got {raw!r}")
        return cls(scheme=scheme, host=host, port=port)

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@frozen
class Timeouts:
    """Upstream timeouts, in seconds.

    ``connect``: to establish the connection (and TLS); ``first_byte``: from
    the request sent to the response head received; ``idle``: the longest
    silence while a response body streams; ``keepalive``: how long an idle
    pooled connection is kept for reuse (nginx's upstream
    ``keepalive_timeout``).
    """

    connect: float = 10.0
    first_byte: float = 60.0
    idle: float = 60.0
    keepalive: float = 30.0


@frozen
class CacheSettings:
    """Per-route cache policy.

    ``ignore_query``: the query is left out of the cache key;
    ``sort_query``: query parameters are sorted before keying (so ``?a=1&b=2``
    and ``?b=2&a=1`` share an entry); ``key_headers``: request header values
    added to the key (lower-case names). ``heuristic_fraction`` and
    ``heuristic_max`` bound heuristic freshness (RFC 9111 section 4.2.2: a
    fraction of the time since Last-Modified, at most ``heuristic_max``
    seconds). ``store_set_cookie``: responses carrying Set-Cookie may be
    stored (off by default: they are usually personal). ``stale_if_error``:
    seconds a stale entry may be served when the origin fails (RFC 5861),
    unless the response says otherwise. ``range_fetch_max``: a Range request
    for an uncached resource fetches (and caches) the whole body when it is
    at most this many bytes; larger ones pass the range through uncached.
    ``max_ranges``: the most ranges a ``Range`` field answered from the
    cache may ask for, as nginx's ``max_ranges``; more are answered with the
    whole body (``0``: ``Range`` is always ignored; ``1``: single ranges
    only).
    ``strip_cdn_cache_control``: remove ``CDN-Cache-Control`` (RFC 9213)
    from responses to clients, for the last CDN hop; accel's own targeted
    field (``Accel-Cache-Control``) is always removed.
    """

    enabled: bool = True
    ignore_query: bool = False
    sort_query: bool = False
    key_headers: tuple[bytes, ...] = ()
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    store_set_cookie: bool = False
    stale_if_error: float = 0.0
    range_fetch_max: int = 8 * 1024**2
    max_ranges: int = 100
    strip_cdn_cache_control: bool = False


@frozen
class CompressionSettings:
    """Per-route response compression. Reserved: accepted and validated, not
    yet applied by this version."""

    enabled: bool = False
    encodings: tuple[str, ...] = ("br", "gzip")
    types: tuple[str, ...] = (
        "text/html",
        "text/css",
        "text/plain",
        "text/javascript",
        "application/javascript",
        "application/json",
        "image/svg+xml",
    )
    min_size: int = 1024


@frozen
class ClientAccess:
    """Which clients may use a site or a route, by the peer's address.

    ``deny`` wins: a client in any ``deny`` network is refused; otherwise,
    when ``allow`` is given (not ``None``), the client must be in one of its
    networks; with ``allow`` ``None`` every client not denied is let in.
    Clients on a UNIX-socket listener (address ``"unix"``) have no network
    address: they are refused only when ``deny_unix`` is set, whatever
    ``allow`` says (filesystem permissions guard the socket).

    The address is the connecting peer's, not ``X-Forwarded-For``: behind a
    load balancer, rules see the balancer.
    """

    allow: tuple[Network, ...] | None = None
    deny: tuple[Network, ...] = ()
    deny_unix: bool = False

    def allows(self, client: str) -> bool:
        """Whether the peer ``client`` (``"192.0.2.1"``, ``"::1"``, ``"unix"``) may pass."""
        if client == "unix":
            return not self.deny_unix
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False  # no usable address: rules cannot vouch for it
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a tcp6 listener's view of an IPv4 client
        if any(address in network for network in self.deny):
            return False
        return self.allow is None or any(address in network for network in self.allow)


#: Response fields that only reveal the origin's software, removed by default
#: (as nginx's ``proxy_hide_header`` defaults hide ``X-Pad``/``X-Accel-*``).
DEFAULT_HIDE_HEADERS: tuple[bytes, ...] = (b"x-powered-by", b"x-aspnet-version", b"x-aspnetmvc-version")


@frozen
class Route:
    """What serves the paths under ``prefix`` (a bytes prefix of the path
    percent-decoded and normalised, as nginx's prefix ``location``: see
    :func:`accel.routing.route_path`).

    A route is served by an origin pool (``origins``), optionally through
    ``parents`` (upstream caches), or by a ``static`` directory. ``host``,
    when set, is the Host sent upstream instead of the client's.
    ``max_body`` caps request bodies (bytes). ``access``, when set, limits
    which clients may use the route (its own rules, else its site's).
    ``hide_headers`` are response fields removed before responses reach
    clients or the store; ``hide_origin_server`` adds ``server`` to them.
    ``ca_file``, when set, is a PEM bundle of the CAs trusted for the
    route's ``https`` origins instead of the system's (an internal CA).
    """

    prefix: bytes
    origins: tuple[OriginURL, ...] = ()
    parents: tuple[OriginURL, ...] = ()
    static: str | None = None
    host: bytes | None = None
    max_body: int = 1024**3
    timeouts: Timeouts = Timeouts()
    cache: CacheSettings = CacheSettings()
    compression: CompressionSettings = CompressionSettings()
    access: ClientAccess | None = None
    hide_headers: tuple[bytes, ...] = DEFAULT_HIDE_HEADERS
    hide_origin_server: bool = False
    ca_file: str | None = None

    @property
    def hidden_fields(self) -> tuple[bytes, ...]:
        """Every response field this route removes (lower-case names)."""
        return (*self.hide_headers, b"server") if self.hide_origin_server else self.hide_headers


@frozen
class Site:
    """A virtual host: the names it answers for and its routes.

    ``hosts`` holds lower-case names, exact (``example.com``) or wildcard
    (``*.example.com``, any depth of subdomain, not the bare domain). An empty
    ``hosts`` makes this the default site, chosen when no other matches.
    ``access`` is the site's client rules, inherited by each route that sets
    none of its own.
    """

    hosts: tuple[bytes, ...]
    routes: tuple[Route, ...]
    access: ClientAccess | None = None


@frozen
class Limits:
    """Client-side limits of the HTTP server (the ``[server]`` table).

    ``header_timeout``: seconds to receive a complete request head;
    ``keepalive_timeout``: seconds an idle persistent connection is kept;
    ``body_timeout``: seconds of silence while request content is awaited;
    ``send_timeout``: seconds a client may take nothing it is sent;
    ``max_header_bytes``: the largest request head accepted;
    ``max_headers``: the most field lines in it; ``max_target``: the longest
    request-target; ``max_pipelined``: parsed requests queued behind the one
    being answered before reading pauses; ``max_buffered_body``: request
    content buffered before reading pauses; ``max_discard``: unread request
    content drained after a response to keep the connection;
    ``max_connections_per_client``: open connections per client address, or
    None for no limit; ``linger_time``/``linger_timeout``: the lingering
    close (in all, and of silence); ``notsent_lowat``: response bytes the
    kernel may hold unsent per TCP connection sending a body from its file,
    or None for the kernel's default; ``max_unsent``: answered bytes a
    client may leave unread before its further requests wait. The meaning of each is that of the field
    of the same name in :class:`accel.http.server.ServerLimits`, whose
    defaults these are (``max_header_bytes`` excepted: 64 KiB here).
    """

    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    body_timeout: float = 60.0
    send_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_target: int = 8192
    max_pipelined: int = 16
    max_buffered_body: int = 64 * 1024
    max_discard: int = 64 * 1024
    max_connections_per_client: int | None = 1024
    linger_time: float = 30.0
    linger_timeout: float = 5.0
    notsent_lowat: int | None = 64 * 1024
    max_unsent: int = 1024 * 1024


@frozen
class UpstreamLimits:
    """How every route's origin pool reuses connections, skips failing
    origins and bounds responses (the ``[upstream]`` table).

    ``max_idle_per_origin``: idle connections kept per origin for reuse;
    ``max_fails`` failures within ``fail_timeout`` seconds make an origin be
    skipped for ``fail_timeout`` seconds (0 disables this); ``tries``: how
    many origins one request may be sent to (0: each origin once);
    ``max_header_bytes``/``max_headers``: the largest response head and its
    most field lines; ``max_connections_per_origin``: connections a worker
    keeps open to one origin at most (0: no cap), beyond which up to
    ``queue`` requests per origin wait for one, each at most
    ``queue_timeout`` seconds. The meaning of each is that of the field in
    :class:`accel.upstream.UpstreamSettings`, whose defaults these are.
    """

    max_idle_per_origin: int = 64
    max_fails: int = 3
    fail_timeout: float = 10.0
    tries: int = 0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections_per_origin: int = 0
    queue: int = 100
    queue_timeout: float = 60.0


@frozen
class Config:
    """The whole configuration of one accel process.

    ``listen``: endpoint descriptions (Twisted ``serverFromString`` syntax).
    ``sites``: the virtual hosts (at most one default site). ``cache_dir``:
    the cache directory, or None for a private temporary one that lasts as
    long as the process. ``cache_size``: the cache's size limit in bytes.
    ``admin``/``admin_token_file``: the admin API listener and its token.
    ``trusted_proxies``: client networks whose X-Forwarded-For/Forwarded
    fields are believed. ``access_log``: a file path, ``"-"`` for standard
    output, or None for the Twisted log. ``workers``: the number of worker
    processes, or None (``auto``) for one per CPU this process may run on,
    counted at start-up (:func:`accel.workers.plan_workers`).
    ``limits``: the HTTP server's limits on clients; ``upstream``: how
    origin pools reuse connections, skip failing origins and bound
    responses. ``cache_lock_timeout``: seconds a request waits for another's
    fetch of the same key before fetching itself (nginx's
    ``proxy_cache_lock_timeout``); ``cache_hit_for_miss_ttl``: seconds a key
    whose response could not be stored is fetched without waiting on
    others (0: never); ``cache_max_variants``: stored variants per URL (Vary)
    at most. ``shutdown_timeout``: seconds a stopping process lets the
    requests in progress finish before it closes their connections (0:
    at once; see :meth:`accel.http.server.HTTPServerFactory.drain`).
    ``demo``: no origin was configured,
    so the built-in demo origin is to be started; see
    :meth:`with_demo_origin`.
    """

    listen: tuple[str, ...] = ("tcp:8080",)
    sites: tuple[Site, ...] = ()
    cache_dir: str | None = None
    cache_size: int = 1024**3
    admin: str | None = None
    admin_token_file: str | None = None
    trusted_proxies: tuple[Network, ...] = ()
    access_log: str | None = None
    workers: int | None = None
    limits: Limits = Limits()
    upstream: UpstreamLimits = UpstreamLimits()
    cache_lock_timeout: float = 10.0
    cache_hit_for_miss_ttl: float = 120.0
    cache_max_variants: int = 32
    shutdown_timeout: float = 10.0
    demo: bool = False

    def with_demo_origin(self, origin: str) -> Config:
        """This configuration with one default site proxying ``/`` to the
        demo origin at ``origin`` (its URL, e.g. ``unix:/tmp/…/origin.sock``).
        """
        route = Route(prefix=b"/", origins=(OriginURL.parse(origin, "demo origin"),))
        return evolve(self, sites=(Site(hosts=(), routes=(route,)),))

    @classmethod
    def from_toml(cls, path: str) -> Config:
        """Load and validate a TOML configuration file (see the docs)."""
        config, _ = _load_file(path, "--config")
        _check_workers(config, "workers")
        if not config.sites:
            _fail(path, "sites: expected at least one [[sites]] table with routes (or give --origin)")
        return config

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Config:
        """Build the configuration from parsed command-line options.

        ``options`` maps long option names to raw values: strings (or None
        when not given) for single options, lists of strings for repeatable
        ones (``listen``, ``origin``, ``parent``, ``static``,
        ``trusted-proxy``), as :class:`accel.tap.Options` collects them.
        """
        return _from_options(options)


# ---------------------------------------------------------------------------
# Scalar parsers, shared by the file and the command line


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(raw: object, name: str) -> int:
    """A size in bytes: ``512M``, ``2G``, ``64k``, ``1.5G`` or plain bytes.

    Units are binary (K = 1024) and case-insensitive; a ``B``/``iB`` suffix
    is allowed. TOML integers are taken as bytes.
    """
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    match = _SIZE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        _fail(name, f"expected a size such as 512M or 2G, got {raw!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_duration(raw: object, name: str) -> float:
    """A duration in seconds: ``30s``, ``5m``, ``1h``, ``1d``, ``250ms`` or
    plain seconds (TOML numbers are seconds)."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw) and raw >= 0:
        return float(raw)
    match = _DURATION.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        _fail(name, f"expected a duration such as 30s, 5m or 1h, got {raw!r}")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit]


def _parse_endpoint(raw: object, name: str) -> str:
    """Check a server endpoint description with Twisted's own parser.

    The description is parsed against a memory reactor, so nothing listens;
    TLS descriptions do load their key and certificate files here, so a
    missing file is reported at start-up.
    """
    # Imported here: the rest of this module is pure, and only this check
    # needs Twisted.
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    expected = "expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock"
    if not isinstance(raw, str) or not raw.strip():
        _fail(name, f"{expected}, got {raw!r}")
    try:
        endpoint = serverFromString(MemoryReactor(), raw)
    except TypeError as error:
        unknown = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        detail = f"unknown parameter {unknown.group(1)!r}" if unknown else str(error)
        _fail(name, f"{expected}, got {raw!r} ({detail})")
    except OSError as error:
        _fail(name, f"cannot use {raw!r}: {error.strerror or error}: {error.filename!r}")
    except Exception as error:  # noqa: BLE001 (Twisted's parsers raise ValueError, KeyError, ...)
        _fail(name, f"{expected}, got {raw!r} ({error})")
    # TCP-based endpoints keep their port here; Twisted does not range-check it.
    port = getattr(endpoint, "_port", 0)
    if isinstance(port, int) and not 0 <= port <= 65535:
        _fail(name, f"{expected}, got {raw!r} (port out of range 0-65535)")
    # A UNIX socket's directory is not created (as nginx does not); without
    # this, Twisted's lock file names the failure obscurely.
    address = getattr(endpoint, "_address", None)
    if raw.startswith("unix:") and isinstance(address, str):
        directory = os.path.dirname(os.path.abspath(address))
        if not os.path.isdir(directory):
            _fail(name, f"cannot listen on {raw!r}: no directory {directory!r}")
    return raw


#: The listen queue of a listener whose description sets no ``backlog``:
#: nginx's default on Linux. Twisted's own, 50, is overrun by a burst of a
#: few hundred new connections; the handshakes that overflow it wait for the
#: client's retransmission, a second or more. The kernel caps it at
#: ``net.core.somaxconn``.
DEFAULT_BACKLOG = 511

#: The endpoint kinds that take a ``backlog`` parameter.
_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=`` :data:`DEFAULT_BACKLOG` added when it
    is a TCP, TLS or UNIX listener that sets none; any other unchanged.

    Parameters are separated by colons that are not escaped (``\\:``), as
    Twisted's ``serverFromString`` reads them.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in _BACKLOG_KINDS or description.endswith("\\"):
        return description
    if any(part.startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


def _parse_network(raw: object, name: str) -> Network:
    expected = "expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1"
    if not isinstance(raw, str):
        _fail(name, f"{expected}, got {raw!r}")
    try:
        return ipaddress.ip_network(raw.strip(), strict=True)
    except ValueError as error:
        _fail(name, f"{expected}, got {raw!r} ({error})")


def _parse_client_network(raw: object, name: str) -> Network | str:
    """A network, or ``"unix"`` for clients of UNIX-socket listeners."""
    if raw == "unix":
        return "unix"
    expected = "expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, or unix"
    if not isinstance(raw, str):
        _fail(name, f"{expected}, got {raw!r}")
    try:
        return ipaddress.ip_network(raw.strip(), strict=True)
    except ValueError as error:
        _fail(name, f"{expected}, got {raw!r} ({error})")


def _read_access(table: _Table, inherited: ClientAccess | None) -> ClientAccess | None:
    """``allow``/``deny`` of a site or route; a table setting either replaces ``inherited``."""
    allow = table.get_list("allow", _parse_client_network)
    deny = table.get_list("deny", _parse_client_network)
    if allow is None and deny is None:
        return inherited
    deny = deny or ()
    return ClientAccess(
        allow=None if allow is None else tuple(n for n in allow if not isinstance(n, str)),
        deny=tuple(n for n in deny if not isinstance(n, str)),
        deny_unix="unix" in deny,
    )


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)  # RFC 9110 section 5.6.2
#: Fields accel itself manages or needs for caching and framing: never hidden.
_UNHIDEABLE = frozenset(
    {"connection", "content-length", "transfer-encoding", "date", "cache-control", "expires",
     "etag", "last-modified", "vary", "age", "content-type", "content-range", "content-encoding"}
)


def _parse_hidden_header(raw: object, name: str) -> bytes:
    field = _parse_header_name(raw, name)
    if field.decode("ascii") in _UNHIDEABLE:
        _fail(name, f"expected a field accel may remove, got {raw!r} (framing and caching need it)")
    return field
_SITE_HOST = re.compile(r"(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*", re.ASCII)


def _parse_header_name(raw: object, name: str) -> bytes:
    if not isinstance(raw, str) or _TOKEN.fullmatch(raw) is None:
        _fail(name, f"expected a header field name such as Accept-Language, got {raw!r}")
    return raw.lower().encode("ascii")


def _parse_host_rewrite(raw: object, name: str) -> bytes:
    """A Host value to send upstream: ``host`` or ``host:port`` (RFC 9110 section 7.2)."""
    if isinstance(raw, str):
        host, _, port = raw.lower().rpartition(":") if raw.count(":") == 1 else (raw.lower(), "", "")
        if _SITE_HOST.fullmatch(host) and not host.startswith("*") and (not port or port.isdigit()):
            return raw.lower().encode("ascii")
        if raw.startswith("[") and raw.endswith("]"):
            try:
                ipaddress.IPv6Address(raw[1:-1])
                return raw.lower().encode("ascii")
            except ValueError:
                pass
    _fail(name, f"expected a host such as example.com or example.com:8080, got {raw!r}")


def _parse_site_host(raw: object, name: str) -> bytes:
    if not isinstance(raw, str) or _SITE_HOST.fullmatch(raw.lower()) is None:
        _fail(name, f"expected a host name such as example.com or *.example.com, got {raw!r}")
    return raw.lower().encode("ascii")


def _parse_prefix(raw: object, name: str) -> bytes:
    if (
        not isinstance(raw, str)
        or not raw.startswith("/")
        or not raw.isascii()
        or any(c in raw for c in " ?#\x7f")
        or not raw.isprintable()
    ):
        _fail(name, f"expected a path prefix starting with '/', such as /static/, got {raw!r}")
    return raw.encode("ascii")


def _check_directory(raw: object, name: str) -> str:
    if not isinstance(raw, str) or not raw:
        _fail(name, f"expected a directory, got {raw!r}")
    if not os.path.isdir(raw):
        _fail(name, f"expected an existing directory, got {raw!r}")
    return raw


def _check_cache_dir(raw: object, name: str) -> str:
    """The directory, or its nearest existing ancestor, must be a writable directory."""
    if not isinstance(raw, str) or not raw:
        _fail(name, f"expected a directory, got {raw!r}")
    probe = os.path.abspath(raw)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        _fail(name, f"expected a directory, but {probe!r} is not one")
    if not os.access(probe, os.W_OK | os.X_OK):
        _fail(name, f"cannot create or write {raw!r}: {probe!r} is not writable")
    return raw


def _check_readable_file(raw: object, name: str) -> str:
    if not isinstance(raw, str) or not raw:
        _fail(name, f"expected a file, got {raw!r}")
    if not os.path.isfile(raw) or not os.access(raw, os.R_OK):
        _fail(name, f"expected a readable file, got {raw!r}")
    return raw


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _check_ca_bundle(raw: object, name: str) -> str:
    """A readable PEM file of certificates, every one of which OpenSSL can load.

    Each block is loaded here as the origin pool will load it, so a damaged
    bundle is one line at start-up, from ``--check-config`` and on SIGHUP,
    never a traceback when the pool is built.
    """
    path = _check_readable_file(raw, name)
    try:
        with open(path, encoding="ascii", errors="replace") as bundle:
            text = bundle.read()
    except OSError as e:
        _fail(name, f"cannot read {path!r}: {e.strerror}")
    blocks = _PEM_CERTIFICATE.findall(text)
    if not blocks:
        _fail(name, f"expected PEM certificates in {path!r}, found none")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for number, block in enumerate(blocks, 1):
        try:
            context.load_verify_locations(cadata=ssl.PEM_cert_to_DER_cert(block))
        except (ValueError, ssl.SSLError) as e:  # binascii.Error is a ValueError
            reason = getattr(e, "reason", None) or str(e)
            _fail(name, f"certificate {number} of {len(blocks)} in {path!r} is not a valid certificate ({reason})")
    return path


def check_log_path(raw: object, name: str) -> str:
    """A valid ``access_log`` value: a writable file path, ``-`` or ``off``."""
    if raw == "-" or raw == "off":
        return raw
    if not isinstance(raw, str) or not raw:
        _fail(name, f"expected a file path, '-' for standard output or 'off', got {raw!r}")
    if os.path.isdir(raw):
        _fail(name, f"expected a file path or '-' for standard output, got the directory {raw!r}")
    parent = os.path.dirname(os.path.abspath(raw))
    if not os.path.isdir(parent):
        _fail(name, f"cannot write {raw!r}: no directory {parent!r}")
    target = raw if os.path.exists(raw) else parent
    if not os.access(target, os.W_OK):
        _fail(name, f"cannot write {raw!r}: permission denied")
    return raw


#: Listener kinds several workers can share: the parent binds them, each
#: worker serves its inherited socket (``ssl`` wrapped in TLS by the worker).
SHAREABLE_LISTENERS = ("tcp", "tcp6", "unix", "ssl")
#: The most worker processes accepted (``auto`` is capped there too).
MAX_WORKERS = 1024


def _parse_workers(raw: object, name: str) -> int | None:
    """``auto`` (None: one worker per CPU) or a number of processes, 1 to 1024."""
    if raw == "auto":
        return None
    number = int(raw) if isinstance(raw, str) and raw.isascii() and raw.isdigit() else raw
    if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= MAX_WORKERS:
        _fail(name, f"expected auto or a number of processes from 1 to {MAX_WORKERS}, got {raw!r}")
    return number


def unshareable_listener(listen: Iterable[str]) -> str | None:
    """The first listen description several workers cannot share, or None."""
    for description in listen:
        if description.split(":", 1)[0] not in SHAREABLE_LISTENERS:
            return description
    return None


def _check_workers(config: Config, name: str) -> None:
    """An explicit number of workers above 1 needs listeners they can share.

    ``auto`` is not checked here: it falls back to one worker at start-up.
    """
    if config.workers is not None and config.workers > 1:
        culprit = unshareable_listener(config.listen)
        if culprit is not None:
            kinds = ", ".join(SHAREABLE_LISTENERS)
            _fail(name, f"more than one worker needs {kinds} listeners, got {culprit!r}")


def _parse_positive_duration(raw: object, name: str) -> float:
    """A duration above zero (a timer that can never run out is not a timeout)."""
    seconds = parse_duration(raw, name)
    if seconds <= 0:
        _fail(name, f"expected a duration above zero such as 30s, 5m or 1h, got {raw!r}")
    return seconds


def _parse_positive_size(raw: object, name: str) -> int:
    """A size above zero (a buffer or head bound of 0 would refuse everything)."""
    size = parse_size(raw, name)
    if size <= 0:
        _fail(name, f"expected a size above zero such as 64k or 1M, got {raw!r}")
    return size


def _parse_count(minimum: int) -> Callable[[object, str], int]:
    """A parser of whole numbers from ``minimum`` up (TOML integers only)."""

    def parse(raw: object, name: str) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < minimum:
            _fail(name, f"expected a whole number from {minimum} up, got {raw!r}")
        return raw

    return parse


def _parse_connection_limit(raw: object, name: str) -> int | None:
    """A number of connections from 1 up, or ``off`` (None: no limit)."""
    if raw == "off":
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        _fail(name, f"expected a number of connections from 1 up, or off, got {raw!r}")
    return raw


def _parse_optional_size(raw: object, name: str) -> int | None:
    """A size of at least one byte, or ``off`` (None)."""
    if raw == "off":
        return None
    if isinstance(raw, str) and _SIZE.fullmatch(raw.strip()) is None:
        _fail(name, f"expected a size such as 64k, or off, got {raw!r}")
    return _parse_positive_size(raw, name)


def _parse_fraction(raw: object, name: str) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 <= raw <= 1:
        return float(raw)
    _fail(name, f"expected a number from 0 to 1 such as 0.1, got {raw!r}")


def _parse_bool(raw: object, name: str) -> bool:
    if not isinstance(raw, bool):
        _fail(name, f"expected true or false, got {raw!r}")
    return raw


def _parse_str(raw: object, name: str) -> str:
    if not isinstance(raw, str):
        _fail(name, f"expected a string, got {raw!r}")
    return raw


# ---------------------------------------------------------------------------
# The TOML file


class _Table:
    """A TOML table being read: tracks which keys were used, names values."""

    def __init__(self, data: object, where: str, source: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: {where}: expected a table, got {data!r}")
        self._data: dict[str, object] = data
        self._where = where
        self._source = source
        self._used: set[str] = set()

    def name(self, key: str) -> str:
        """How ``key`` is called in messages: ``file: path.key``."""
        return f"{self._source}: {self._where + '.' if self._where else ''}{key}"

    def path(self, key: str) -> str:
        return f"{self._where + '.' if self._where else ''}{key}"

    def get(self, key: str, parse: Callable[[object, str], T], default: T) -> T:
        """The parsed value of ``key``, or ``default`` when absent."""
        self._used.add(key)
        if key not in self._data:
            return default
        return parse(self._data[key], self.name(key))

    def get_list(self, key: str, parse: Callable[[object, str], T]) -> tuple[T, ...] | None:
        """A string-or-list value as a tuple of parsed items, None when absent."""
        self._used.add(key)
        if key not in self._data:
            return None
        value = self._data[key]
        if isinstance(value, list):
            return tuple(parse(item, f"{self.name(key)}[{i}]") for i, item in enumerate(value))
        return (parse(value, self.name(key)),)

    def table(self, key: str) -> _Table:
        """A sub-table (empty when absent)."""
        self._used.add(key)
        return _Table(self._data.get(key, {}), self.path(key), self._source)

    def tables(self, key: str) -> list[_Table]:
        """An array of tables (``[[key]]``)."""
        self._used.add(key)
        value = self._data.get(key, [])
        if not isinstance(value, list):
            raise ConfigError(f"{self.name(key)}: expected an array of tables ([[{key}]]), got {value!r}")
        return [_Table(item, f"{self.path(key)}[{i}]", self._source) for i, item in enumerate(value)]

    def finish(self, also: Iterable[str] = ()) -> None:
        """Refuse keys nobody asked for (typos must not pass silently)."""
        known = self._used | set(also)
        for key in self._data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{self.name(key)}: unknown key{hint}")


def _read_timeouts(table: _Table, base: Timeouts) -> Timeouts:
    timeouts = Timeouts(
        connect=table.get("connect", _parse_positive_duration, base.connect),
        first_byte=table.get("first_byte", _parse_positive_duration, base.first_byte),
        idle=table.get("idle", _parse_positive_duration, base.idle),
        keepalive=table.get("keepalive", _parse_positive_duration, base.keepalive),
    )
    table.finish()
    return timeouts


def _read_limits(server: _Table) -> Limits:
    """The client limits of the ``[server]`` table (``max_body`` is read by the caller)."""
    base = Limits()
    return Limits(
        header_timeout=server.get("header_timeout", _parse_positive_duration, base.header_timeout),
        keepalive_timeout=server.get("keepalive_timeout", _parse_positive_duration, base.keepalive_timeout),
        body_timeout=server.get("body_timeout", _parse_positive_duration, base.body_timeout),
        send_timeout=server.get("send_timeout", _parse_positive_duration, base.send_timeout),
        max_header_bytes=server.get("max_header_bytes", _parse_positive_size, base.max_header_bytes),
        max_headers=server.get("max_headers", _parse_count(1), base.max_headers),
        max_target=server.get("max_target", _parse_positive_size, base.max_target),
        max_pipelined=server.get("max_pipelined", _parse_count(1), base.max_pipelined),
        max_buffered_body=server.get("max_buffered_body", _parse_positive_size, base.max_buffered_body),
        max_discard=server.get("max_discard", parse_size, base.max_discard),
        max_connections_per_client=server.get(
            "max_connections_per_client", _parse_connection_limit, base.max_connections_per_client
        ),
        linger_time=server.get("linger_time", parse_duration, base.linger_time),
        linger_timeout=server.get("linger_timeout", parse_duration, base.linger_timeout),
        notsent_lowat=server.get("notsent_lowat", _parse_optional_size, base.notsent_lowat),
        max_unsent=server.get("max_unsent", _parse_positive_size, base.max_unsent),
    )


def _read_upstream(table: _Table) -> UpstreamLimits:
    base = UpstreamLimits()
    upstream = UpstreamLimits(
        max_idle_per_origin=table.get("max_idle_per_origin", _parse_count(0), base.max_idle_per_origin),
        max_fails=table.get("max_fails", _parse_count(0), base.max_fails),
        fail_timeout=table.get("fail_timeout", _parse_positive_duration, base.fail_timeout),
        tries=table.get("tries", _parse_count(0), base.tries),
        max_header_bytes=table.get("max_header_bytes", _parse_positive_size, base.max_header_bytes),
        max_headers=table.get("max_headers", _parse_count(1), base.max_headers),
        max_connections_per_origin=table.get(
            "max_connections_per_origin", _parse_count(0), base.max_connections_per_origin
        ),
        queue=table.get("queue", _parse_count(0), base.queue),
        queue_timeout=table.get("queue_timeout", _parse_positive_duration, base.queue_timeout),
    )
    table.finish()
    return upstream


def _read_cache_settings(table: _Table, base: CacheSettings, also: Iterable[str] = ()) -> CacheSettings:
    key_headers = table.get_list("key_headers", _parse_header_name)
    cache = CacheSettings(
        enabled=table.get("enabled", _parse_bool, base.enabled),
        ignore_query=table.get("ignore_query", _parse_bool, base.ignore_query),
        sort_query=table.get("sort_query", _parse_bool, base.sort_query),
        key_headers=base.key_headers if key_headers is None else key_headers,
        heuristic_fraction=table.get("heuristic_fraction", _parse_fraction, base.heuristic_fraction),
        heuristic_max=table.get("heuristic_max", parse_duration, base.heuristic_max),
        store_set_cookie=table.get("store_set_cookie", _parse_bool, base.store_set_cookie),
        stale_if_error=table.get("stale_if_error", parse_duration, base.stale_if_error),
        range_fetch_max=table.get("range_fetch_max", parse_size, base.range_fetch_max),
        max_ranges=table.get("max_ranges", _parse_count(0), base.max_ranges),
        strip_cdn_cache_control=table.get(
            "strip_cdn_cache_control", _parse_bool, base.strip_cdn_cache_control
        ),
    )
    if cache.ignore_query and cache.sort_query:
        raise ConfigError(f"{table.name('sort_query')}: cannot be combined with ignore_query = true")
    table.finish(also)
    return cache


_ENCODINGS = ("br", "gzip")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+*-]+", re.ASCII)


def _parse_encoding(raw: object, name: str) -> str:
    if raw not in _ENCODINGS:
        _fail(name, f"expected one of {', '.join(_ENCODINGS)}, got {raw!r}")
    return str(raw)


def _parse_media_type(raw: object, name: str) -> str:
    if not isinstance(raw, str) or _MEDIA_TYPE.fullmatch(raw.lower()) is None:
        _fail(name, f"expected a media type such as text/html, got {raw!r}")
    return raw.lower()


def _read_compression(table: _Table, base: CompressionSettings) -> CompressionSettings:
    encodings = table.get_list("encodings", _parse_encoding)
    types = table.get_list("types", _parse_media_type)
    compression = CompressionSettings(
        enabled=table.get("enabled", _parse_bool, base.enabled),
        encodings=base.encodings if encodings is None else encodings,
        types=base.types if types is None else types,
        min_size=table.get("min_size", parse_size, base.min_size),
    )
    table.finish()
    return compression


def _read_route(
    table: _Table, template: Route, unsupported: list[str], site_access: ClientAccess | None = None
) -> Route:
    prefix = table.get("prefix", _parse_prefix, None)
    if prefix is None:
        raise ConfigError(f"{table.name('prefix')}: missing (every route needs a path prefix such as \"/\")")
    origins = table.get_list("origin", OriginURL.parse) or ()
    parents = table.get_list("parent", OriginURL.parse) or ()
    static = table.get("static", _check_directory, None)
    hide = table.get_list("hide_headers", _parse_hidden_header)
    route = evolve(
        template,
        prefix=prefix,
        origins=origins,
        parents=parents,
        static=static,
        host=table.get("host", _parse_host_rewrite, template.host),
        max_body=table.get("max_body", parse_size, template.max_body),
        timeouts=_read_timeouts(table.table("timeouts"), template.timeouts),
        cache=_read_cache_settings(table.table("cache"), template.cache),
        compression=_read_compression(table.table("compression"), template.compression),
        access=_read_access(table, site_access),
        hide_headers=template.hide_headers if hide is None else hide,
        hide_origin_server=table.get("hide_origin_server", _parse_bool, template.hide_origin_server),
        ca_file=table.get("ca_file", _check_ca_bundle, template.ca_file),
    )
    table.finish()
    if route.ca_file is not None and not any(o.scheme == "https" for o in (*origins, *parents)):
        raise ConfigError(f"{table.name('ca_file')}: only for https origins, and the route has none")
    if static is not None and (origins or parents):
        raise ConfigError(f"{table.name('static')}: a static route cannot also have origin or parent")
    if static is None and not origins and not parents:
        raise ConfigError(f"{table.name('origin')}: missing (a route needs origin, parent or static)")
    if static is not None:
        unsupported.append(table.name("static"))
    if parents:
        unsupported.append(table.name("parent"))
    return route


def _read_sites(tables: list[_Table], template: Route, unsupported: list[str]) -> tuple[Site, ...]:
    sites: list[Site] = []
    seen_hosts: dict[bytes, str] = {}
    default_site: str | None = None
    for table in tables:
        hosts = table.get_list("hosts", _parse_site_host) or ()
        for i, host in enumerate(hosts):
            if host in seen_hosts:
                raise ConfigError(
                    f"{table.name('hosts')}[{i}]: {host.decode()!r} is already a host of {seen_hosts[host]}"
                )
            seen_hosts[host] = table.path("hosts")
        if not hosts:
            if default_site is not None:
                raise ConfigError(
                    f"{table.name('hosts')}: missing, but {default_site} is already the default site"
                    " (the one without hosts)"
                )
            default_site = table.path("hosts").rpartition(".")[0]
        access = _read_access(table, None)
        routes: list[Route] = []
        prefixes: set[bytes] = set()
        route_tables = table.tables("routes")
        if not route_tables:
            raise ConfigError(f"{table.name('routes')}: expected at least one [[sites.routes]] table")
        for route_table in route_tables:
            route = _read_route(route_table, template, unsupported, access)
            if route.prefix in prefixes:
                raise ConfigError(
                    f"{route_table.name('prefix')}: duplicate prefix {route.prefix.decode()!r} in this site"
                )
            prefixes.add(route.prefix)
            routes.append(route)
        table.finish()
        sites.append(Site(hosts=hosts, routes=tuple(routes), access=access))
    return tuple(sites)


#: Keys of ``[cache]`` that set the store and the collapser, not route defaults.
_STORE_KEYS = ("dir", "size", "lock_timeout", "hit_for_miss_ttl", "max_variants")


def _load_file(path: str, option: str) -> tuple[Config, Route]:
    """Read ``path``; return its Config and the route template (the file's
    top-level defaults) that command-line routes are built from.

    Features of later releases are parsed and validated, then refused.
    """
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{option}: cannot read {path!r}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({error.reason})") from None
    top = _Table(data, "", path)
    unsupported: list[str] = []

    server = top.table("server")
    limits = _read_limits(server)
    max_body = server.get("max_body", parse_size, Route(prefix=b"/").max_body)
    shutdown_timeout = server.get("shutdown_timeout", parse_duration, Config().shutdown_timeout)
    server.finish()
    upstream = _read_upstream(top.table("upstream"))

    defaults, cache = Config(), top.table("cache")
    cache_dir = cache.get("dir", _check_cache_dir, None)
    cache_size = cache.get("size", parse_size, defaults.cache_size)
    lock_timeout = cache.get("lock_timeout", _parse_positive_duration, defaults.cache_lock_timeout)
    hit_for_miss_ttl = cache.get("hit_for_miss_ttl", parse_duration, defaults.cache_hit_for_miss_ttl)
    max_variants = cache.get("max_variants", _parse_count(1), defaults.cache_max_variants)
    template = Route(
        prefix=b"/",
        max_body=max_body,
        timeouts=_read_timeouts(top.table("timeouts"), Timeouts()),
        cache=_read_cache_settings(cache, CacheSettings(), also=_STORE_KEYS),
        compression=_read_compression(top.table("compression"), CompressionSettings()),
    )

    admin = top.table("admin")
    admin_listen = admin.get("listen", _parse_endpoint, None)
    admin_token_file = admin.get("token_file", _check_readable_file, None)
    admin.finish()
    if admin_listen is not None:
        unsupported.append(admin.name("listen"))
    if admin_token_file is not None:
        unsupported.append(admin.name("token_file"))

    workers = top.get("workers", _parse_workers, None)
    config = Config(
        listen=top.get_list("listen", _parse_endpoint) or Config().listen,
        sites=_read_sites(top.tables("sites"), template, unsupported),
        cache_dir=cache_dir,
        cache_size=cache_size,
        admin=admin_listen,
        admin_token_file=admin_token_file,
        trusted_proxies=top.get_list("trusted_proxies", _parse_network) or (),
        access_log=top.get("access_log", check_log_path, None),
        workers=workers,
        limits=limits,
        upstream=upstream,
        cache_lock_timeout=lock_timeout,
        cache_hit_for_miss_ttl=hit_for_miss_ttl,
        cache_max_variants=max_variants,
        shutdown_timeout=shutdown_timeout,
    )
    top.finish()
    if unsupported:
        raise ConfigError(f"{unsupported[0]}: {NOT_YET_SUPPORTED}")
    return config, template


# ---------------------------------------------------------------------------
# The command line


def _from_options(options: Mapping[str, Any]) -> Config:
    def given(key: str) -> Any:
        return options.get(key)

    def many(key: str) -> Sequence[str]:
        return options.get(key) or ()

    # Validate everything first, then refuse what later releases will do,
    # so that a typo is reported as a typo even in a reserved option.
    listen = tuple(_parse_endpoint(value, "--listen") for value in many("listen"))
    origins = tuple(OriginURL.parse(value, "--origin") for value in many("origin"))
    parents = tuple(OriginURL.parse(value, "--parent") for value in many("parent"))
    statics = [_parse_static(value) for value in many("static")]
    trusted = tuple(_parse_network(value, "--trusted-proxy") for value in many("trusted-proxy"))
    host = None if given("origin-host") is None else _parse_host_rewrite(given("origin-host"), "--origin-host")
    cache_dir = None if given("cache-dir") is None else _check_cache_dir(given("cache-dir"), "--cache-dir")
    cache_size = None if given("cache-size") is None else parse_size(given("cache-size"), "--cache-size")
    admin = None if given("admin") is None else _parse_endpoint(given("admin"), "--admin")
    token_file = (
        None
        if given("admin-token-file") is None
        else _check_readable_file(given("admin-token-file"), "--admin-token-file")
    )
    access_log = None if given("access-log") is None else check_log_path(given("access-log"), "--access-log")
    workers_given = given("workers") is not None
    workers = _parse_workers(given("workers"), "--workers") if workers_given else None
    if host is not None and not origins and not parents:
        _fail("--origin-host", "needs --origin (it sets the Host sent to the --origin pool)")
    for option, value in (
        ("--static", statics),
        ("--parent", parents),
        ("--admin", admin),
        ("--admin-token-file", token_file),
    ):
        if value:
            _fail(option, NOT_YET_SUPPORTED)

    config_file = given("config")
    if config_file is not None:
        config, template = _load_file(_parse_str(config_file, "--config"), "--config")
    else:
        config, template = Config(), Route(prefix=b"/")

    routes = []
    if origins or parents:
        routes.append(evolve(template, prefix=b"/", origins=origins, parents=parents, host=host))
    for prefix, directory in statics:
        if any(route.prefix == prefix for route in routes):
            _fail("--static", f"prefix {prefix.decode()!r} is already served by --origin")
        routes.append(evolve(template, prefix=prefix, static=directory))

    changes: dict[str, Any] = {"sites": _merge_default_site(config.sites, routes)}
    if listen:
        changes["listen"] = listen
    if trusted:
        changes["trusted_proxies"] = config.trusted_proxies + trusted
    for key, value in (
        ("cache_dir", cache_dir),
        ("cache_size", cache_size),
        ("admin", admin),
        ("admin_token_file", token_file),
        ("access_log", access_log),
    ):
        if value is not None:
            changes[key] = value
    if workers_given:  # even --workers auto replaces the file's number
        changes["workers"] = workers
    config = evolve(config, **changes)
    _check_workers(config, "--workers" if workers_given else "workers")
    if not config.sites:
        if config_file is not None:
            _fail(config_file, "sites: expected at least one [[sites]] table with routes (or give --origin)")
        config = evolve(config, demo=True)
    return config


def _parse_static(raw: str) -> tuple[bytes, str]:
    prefix, sep, directory = raw.partition("=")
    if not sep:
        _fail("--static", f"expected PREFIX=DIR such as /assets=/srv/www/assets, got {raw!r}")
    return _parse_prefix(prefix, "--static"), _check_directory(directory, "--static")


def _merge_default_site(sites: tuple[Site, ...], routes: list[Route]) -> tuple[Site, ...]:
    """Add command-line routes to the default site, replacing same prefixes."""
    if not routes:
        return sites
    new = {route.prefix for route in routes}
    for i, site in enumerate(sites):
        if not site.hosts:
            kept = tuple(route for route in site.routes if route.prefix not in new)
            return sites[:i] + (evolve(site, routes=kept + tuple(routes)),) + sites[i + 1:]
    return sites + (Site(hosts=(), routes=tuple(routes)),)

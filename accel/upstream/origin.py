"""Where requests go (:class:`Origin`) and how patiently (:class:`UpstreamSettings`).

Pure: stdlib and attrs only, so configuration parsing can use it without a
reactor.
"""

from __future__ import annotations

import re
from functools import cached_property

from attrs import field, frozen, validators

__all__ = ["Origin", "UpstreamSettings"]

# RFC 3986 section 3.2.2 reg-name (plus "_", common in container names) or an
# IP-literal; section 3.3 path characters for the optional prefix.
_NETWORK_URL = re.compile(
    r"(?P<scheme>https?)://"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<prefix>/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*)?"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _expected(url: str) -> ValueError:
    return ValueError(
        f"expected http://host[:port][/prefix], https://host[:port][/prefix] "
        f"or unix:/path, got {url!r}"
    )


@frozen
class Origin:
    """One origin server: a TCP host and port (TLS for ``https``) or a UNIX socket.

    ``prefix`` is a path prepended to every origin-form request target
    (``http://app:8080/api`` sends ``/x`` as ``/api/x``); it never ends with
    ``/``. ``ca_file`` is a PEM bundle of trusted CAs for ``https`` origins
    served by a private CA; without it the platform's trust store is used.
    Certificate verification is never off.
    """

    scheme: str  # "http", "https" or "unix"
    host: str = ""  # lower-case; IPv6 without brackets
    port: int = 0
    path: str = ""  # the UNIX socket path
    prefix: bytes = b""
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, *, ca_file: str | None = None) -> Origin:
        """Parse ``http://host[:port][/prefix]``, ``https://...`` or ``unix:/path``."""
        if url.startswith("unix:"):
            path = url[len("unix:") :]
            if not path.startswith("/") or "\x00" in path or path.endswith("/"):
                raise _expected(url)
            if ca_file is not None:
                raise ValueError(
                    f"a CA bundle only applies to https origins, got {url!r}"
                )
            return cls("unix", path=path)
        match = _NETWORK_URL.fullmatch(url)
        if match is None:
            raise _expected(url)
        scheme = match["scheme"]
        host = match["host"].lower()
        if host.startswith("["):
            host = host[1:-1]
        elif host.strip(".") == "" or ".." in host:
            raise _expected(url)
        port = int(match["port"]) if match["port"] else _DEFAULT_PORTS[scheme]
        if not 0 < port < 65536:
            raise ValueError(f"expected a port between 1 and 65535 in {url!r}")
        if ca_file is not None and scheme != "https":
            raise ValueError(f"a CA bundle only applies to https origins, got {url!r}")
        prefix = (match["prefix"] or "").rstrip("/").encode("ascii")
        return cls(scheme, host=host, port=port, prefix=prefix, ca_file=ca_file)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    # name and authority are read for every request: computed once.

    @cached_property
    def name(self) -> str:
        """How logs name this origin: ``http://app:8080`` or ``unix:/run/app.sock``."""
        if self.scheme == "unix":
            return f"unix:{self.path}"
        return f"{self.scheme}://{self.authority.decode('ascii')}{self.prefix.decode('ascii')}"

    @cached_property
    def authority(self) -> bytes:
        """``host[:port]`` for a default Host field (the port unless the default)."""
        if self.scheme == "unix":
            return b"localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port != _DEFAULT_PORTS[self.scheme]:
            host = f"{host}:{self.port}"
        return host.encode("ascii")


def _positive(instance: object, attribute: object, value: float) -> None:
    if value <= 0:
        raise ValueError(
            f"expected a positive number of seconds for {attribute.name}, got {value!r}"
        )  # type: ignore[attr-defined]


_non_negative_int = [validators.instance_of(int), validators.ge(0)]


@frozen
class UpstreamSettings:
    """How the pool talks to origins; times in seconds.

    ``connect_timeout`` covers TCP connect and the TLS handshake;
    ``first_byte_timeout`` runs from the request being sent until the
    response head is complete; ``idle_timeout`` is the longest silence
    allowed between two reads of the body, and while the origin refuses to
    read the request body; ``keepalive_timeout`` closes pooled connections
    idle that long; at most ``max_idle_per_origin`` idle connections are kept
    per origin (LIFO reuse, the least recently used is closed beyond).

    Passive health checks, as nginx's ``max_fails``/``fail_timeout``: an
    origin that fails ``max_fails`` times within ``fail_timeout`` seconds is
    skipped for ``fail_timeout`` seconds (``max_fails=0`` disables this).
    A failure is a connect error, a timeout, a connection lost before the
    response head or a broken head.

    ``tries`` bounds how many origins one request may be sent to when
    failures allow moving on (0: each origin once), as nginx's
    ``proxy_next_upstream_tries``. The free retry of the keep-alive race
    does not count.

    ``max_head_bytes`` and ``max_headers`` bound a response head.

    ``max_connections_per_origin`` caps the connections open to one origin,
    busy, idle in the pool or being opened (0: no cap), as nginx's
    ``max_conns`` and Varnish's ``.max_connections``; an origin at its cap
    is passed over for one with room. When every origin is at its cap, up to
    ``queue`` requests per origin wait, first come first served, for one of
    its connections to be released or to close, each at most
    ``queue_timeout`` seconds; beyond either bound a request fails with
    :class:`~accel.upstream.errors.UpstreamBusy`. The cap belongs to one
    pool, hence to one worker process.
    """

    connect_timeout: float = field(default=10.0, validator=_positive)
    first_byte_timeout: float = field(default=60.0, validator=_positive)
    idle_timeout: float = field(default=60.0, validator=_positive)
    keepalive_timeout: float = field(default=30.0, validator=_positive)
    max_idle_per_origin: int = field(default=64, validator=_non_negative_int)
    max_fails: int = field(default=3, validator=_non_negative_int)
    fail_timeout: float = field(default=10.0, validator=_positive)
    tries: int = field(default=0, validator=_non_negative_int)
    max_head_bytes: int = field(default=64 * 1024, validator=validators.gt(0))
    max_headers: int = field(default=100, validator=validators.gt(0))
    max_connections_per_origin: int = field(default=0, validator=_non_negative_int)
    queue: int = field(default=100, validator=_non_negative_int)
    queue_timeout: float = field(default=60.0, validator=_positive)

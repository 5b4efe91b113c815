"""What a proxy adds to and removes from messages as they cross it.

Pure: builds header lists, reads no clock and does no I/O.

* Hop-by-hop fields, and the fields ``Connection`` names, stop here in both
  directions (RFC 9110 section 7.6.1).
* ``Via`` records the hop (RFC 9110 section 7.6.3).
* ``X-Forwarded-For/-Proto/-Host`` and ``Forwarded`` (RFC 7239) tell the
  origin who the client is. Values a client sent are kept (and appended to)
  only when the client's address is one the operator trusts to have set them,
  another proxy in front of accel; from anyone else they are replaced, so a
  client cannot forge its address to the origin.
* The other fields proxies set to describe the original request
  (:data:`PROXY_SET_FIELDS`: ``X-Forwarded-Scheme``, ``X-Forwarded-Port``,
  ``X-Forwarded-Prefix``, ``X-Host``, ``X-Real-IP``...) are forwarded only
  from those trusted clients, and dropped from anyone else.
* ``Host`` (and the host in ``X-Forwarded-Host`` and ``Forwarded``) is the
  authority as the cache key holds it (:func:`accel.cache.keys.normal_authority`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network

from attrs import frozen

from accel.cache.keys import normal_authority
from accel.http.headers import HOP_BY_HOP, Headers, split_list
from accel.http.model import Request

__all__ = [
    "PROXY_SET_FIELDS",
    "ForwardingPolicy",
    "remove_connection_named",
    "request_headers_for_origin",
    "response_headers_for_client",
]

_FORWARDED_FIELDS = (
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"forwarded",
)

#: Fields a client must never pass through: ``Expect`` is answered by accel
#: itself (the server sends ``100 Continue`` when the body is wanted).
_REQUEST_ONLY_HERE = (b"expect",)

#: Fields some frameworks read as a different URL or method than the
#: request line's. On a GET or HEAD, whose answer may be stored under the
#: request line's URL for everyone, they would let one client poison the
#: cache (the "unkeyed header" attack), so they are not forwarded.
UNKEYED_OVERRIDES = (
    b"x-original-url",
    b"x-rewrite-url",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
)

#: Fields that proxies set to tell an origin what the original request was
#: (its scheme, port, host, path prefix or URI) or who sent it. Frameworks
#: believe them from a proxy they trust, and to its origins accel is that
#: proxy: Rack and Rails read ``X-Forwarded-Scheme``, ``X-Forwarded-Ssl``,
#: ``X-Url-Scheme`` and ``X-Forwarded-Port``, Symfony, Spring and Werkzeug
#: ``X-Forwarded-Prefix``, many applications ``X-Host`` or ``X-Real-IP``.
#: None of them is in the cache key, so from a client they would let one
#: request decide what is stored for everyone (a redirect to ``https`` that
#: loops, links to another host); they also forge the client's address.
#: They pass only from a trusted client, as sent.
PROXY_SET_FIELDS = (
    b"x-forwarded-port",
    b"x-forwarded-scheme",
    b"x-forwarded-ssl",
    b"x-forwarded-protocol",
    b"x-forwarded-prefix",
    b"x-forwarded-path",
    b"x-forwarded-uri",
    b"x-forwarded-server",
    b"x-forwarded-client-cert",
    b"x-original-uri",
    b"x-original-host",
    b"x-host",
    b"x-http-host-override",
    b"x-url-scheme",
    b"front-end-https",
    b"x-real-ip",
    b"true-client-ip",
    b"x-client-ip",
    b"client-ip",
    b"x-cluster-client-ip",
)

#: What never goes upstream as the client sent it: hop-by-hop fields, the
#: forwarding fields (replaced, or extended when trusted) and ``Expect``;
#: for GET and HEAD also the unkeyed overrides; from an untrusted client
#: also the fields proxies set.
_NOT_FORWARDED = HOP_BY_HOP | frozenset(_FORWARDED_FIELDS) | frozenset(_REQUEST_ONLY_HERE)
_NOT_FORWARDED_SAFE = _NOT_FORWARDED | frozenset(UNKEYED_OVERRIDES)
_NOT_FORWARDED_UNTRUSTED = _NOT_FORWARDED | frozenset(PROXY_SET_FIELDS)
_NOT_FORWARDED_SAFE_UNTRUSTED = _NOT_FORWARDED_SAFE | frozenset(PROXY_SET_FIELDS)

#: Looked for as an int: ``bytes in bytes`` first tries its operand as an
#: integer, and the TypeError it raises and clears costs ten times the
#: search itself (CPython 3.11, about 2,000 instructions a test).
_UNDERSCORE = ord("_")


@frozen
class ForwardingPolicy:
    """How requests are rewritten on their way to an origin.

    ``trusted`` lists the networks whose ``X-Forwarded-*``/``Forwarded``
    fields are believed and extended; ``via`` is this hop's pseudonym in
    ``Via``; ``host`` replaces the client's ``Host`` when a route says so.
    """

    trusted: tuple[IPv4Network | IPv6Network, ...] = ()
    via: bytes = b"accel"
    host: bytes | None = None

    @classmethod
    def from_strings(
        cls, trusted: Iterable[str], via: str = "accel", host: str | None = None
    ) -> ForwardingPolicy:
        return cls(
            trusted=tuple(ipaddress.ip_network(t, strict=False) for t in trusted),
            via=via.encode("ascii"),
            host=host.encode("ascii") if host is not None else None,
        )

    def trusts(self, client: str) -> bool:
        if not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            return False
        return any(address in net for net in self.trusted)


def _forwarded_node(client: str) -> bytes:
    """A ``Forwarded`` node (RFC 7239 section 6): IPv6 is quoted and bracketed."""
    if ":" in client:
        return b'"[' + client.encode("ascii") + b']"'
    if not client or client == "unix":
        return b"unknown"
    return client.encode("ascii")


def remove_connection_named(headers: Headers) -> None:
    """Remove from a request's ``headers`` the fields its ``Connection`` names.

    RFC 9110 section 7.6.1: they belong to the hop the client sent them on
    and are never forwarded, so an origin answers as if they were absent.
    The cache must key and select that answer the same way: had it read a
    ``Vary`` field (``Origin``, ``Accept-Language``) or a
    ``cache.key_headers`` field from the client while the origin never saw
    it, a client sending ``Origin: https://app.example`` with ``Connection:
    origin`` would store the answer for no ``Origin`` (without CORS fields)
    as the variant for ``https://app.example``, for every client. As
    Varnish does, the fields are gone before the request is looked up.
    """
    named = headers.get_all(b"connection")
    if named:
        headers.remove(*(token.lower() for token in split_list(named) if token.lower() != b"connection"))


def request_headers_for_origin(request: Request, policy: ForwardingPolicy) -> Headers:
    """The header list to send upstream for ``request``.

    Keeps the client's end-to-end fields in order, drops hop-by-hop ones
    (and those ``Connection`` names), and adds ``Via`` and the forwarding
    fields as the module docstring says. ``Host`` is the route's, or the
    request's authority as the cache key holds it, in place of the
    client's first ``Host`` line.

    One pass over the client's fields, and the fields added for a client
    with nothing to extend remembered (:data:`_ADDED`): this runs for every
    request that reaches an origin.
    """
    method = request.method
    safe = method == b"GET" or method == b"HEAD"
    trusted = policy.trusts(request.client)
    if trusted:
        drop = _NOT_FORWARDED_SAFE if safe else _NOT_FORWARDED
    else:
        drop = _NOT_FORWARDED_SAFE_UNTRUSTED if safe else _NOT_FORWARDED_UNTRUSTED
    named = request.headers.get_all(b"connection")
    by_connection: frozenset[bytes] | set[bytes] = frozenset()
    if named:
        by_connection = {token.lower() for token in split_list(named)}
        drop = drop | by_connection
    #: The forwarding fields a trusted client sent, to extend.
    prior: dict[bytes, list[bytes]] = {}
    authority = normal_authority(request.scheme, request.authority)
    host = policy.host if policy.host is not None else authority
    host_placed = False
    pairs: list[tuple[bytes, bytes]] = []
    for pair in request.headers:
        name = pair[0]
        if name in drop:
            if trusted and name in _FORWARDED_FIELDS and name not in by_connection:
                prior.setdefault(name, []).append(pair[1])
        elif _UNDERSCORE in name:
            # Dropped, as nginx does: CGI-style origins read
            # "Transfer_Encoding" as Transfer-Encoding, a known smuggling route.
            pass
        elif name == b"host":
            if not host_placed:
                pairs.append((b"host", host))
                host_placed = True
        else:
            pairs.append(pair)
    key = (request.client, authority, request.scheme, request.version, policy.via)
    if prior:
        pairs += _added_fields(*key, prior)
    else:
        added = _ADDED.get(key)
        if added is None:
            if len(_ADDED) >= _ADDED_MAX:
                _ADDED.clear()
            added = _ADDED[key] = _added_fields(*key, prior)
        pairs += added
    if not host_placed:
        pairs.append((b"host", host))
    headers = Headers(pairs)
    if method == b"OPTIONS" or method == b"TRACE":
        _decrement_max_forwards(headers)
    return headers


#: What :func:`_added_fields` gave for a client with nothing to extend, by
#: its arguments: one client's requests to one site all get the same
#: fields. Bounded (cleared when full), as a proxy sees many clients.
_ADDED: dict[tuple[str, bytes, bytes, bytes, bytes], tuple[tuple[bytes, bytes], ...]] = {}
_ADDED_MAX = 1024


def _added_fields(
    client: str,
    authority: bytes,
    scheme: bytes,
    version: bytes,
    via: bytes,
    prior: dict[bytes, list[bytes]],
) -> tuple[tuple[bytes, bytes], ...]:
    """The forwarding fields and ``Via`` accel adds to a request upstream,
    extending the values a trusted client sent (``prior``)."""
    client = client or "unknown"
    node = client.encode("ascii", "replace")
    prior_xff = b", ".join(prior[b"x-forwarded-for"]) if b"x-forwarded-for" in prior else None
    prior_fwd = b", ".join(prior[b"forwarded"]) if b"forwarded" in prior else None
    proto = b", ".join(prior.get(b"x-forwarded-proto", ())) or scheme
    forwarded_host = b", ".join(prior.get(b"x-forwarded-host", ())) or authority
    element = b"for=%s;host=%s;proto=%s" % (
        _forwarded_node(client),
        _quote_if_needed(authority),
        scheme,
    )
    return (
        (b"x-forwarded-for", prior_xff + b", " + node if prior_xff else node),
        (b"x-forwarded-proto", proto),
        (b"x-forwarded-host", forwarded_host),
        (b"forwarded", prior_fwd + b", " + element if prior_fwd else element),
        (b"via", _via(version, via)),
    )


def response_headers_for_client(
    origin_headers: Headers, version: bytes, policy: ForwardingPolicy
) -> Headers:
    """The origin's header list as it may go to the client: hop-by-hop
    fields removed and this hop added to ``Via``."""
    headers = origin_headers.without_hop_by_hop()
    headers.add(b"via", _via(version, policy.via))
    return headers


def _decrement_max_forwards(headers: Headers) -> None:
    """RFC 9110 section 7.6.2: forward ``Max-Forwards`` one lower.

    The caller answers ``0`` itself; an invalid value is left alone.
    """
    value = headers.get(b"max-forwards")
    if value is not None and value.isdigit() and value != b"0":
        headers.set(b"max-forwards", b"%d" % (min(int(value), 2**31) - 1))


def _via(version: bytes, pseudonym: bytes) -> bytes:
    """``Via`` entry: protocol version without the ``HTTP/`` prefix, then us."""
    return version + b" " + pseudonym


def _quote_if_needed(value: bytes) -> bytes:
    """RFC 7239 values that are not tokens (a port's ``:``, ``[``, empty) are quoted."""
    if not value or any(c in value for c in b':[]"'):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return value

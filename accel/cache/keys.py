"""Cache keys: which stored responses a request may be answered from.

The *primary* key names the resource: scheme, authority (lower-case,
without a default or empty port: :func:`normal_authority`) and path plus
query, exactly as the client sent them except
for the normalisations a route asks for (drop or sort the query, add the
value of some request fields). GET and HEAD share keys: a stored GET
answers a HEAD. Vary's *secondary* keys live under it (see the policy).

Only validated parts of the request reach the key: the server has already
checked the method, target and Host; nothing else the client sends (such as
``X-Forwarded-Host``) is part of it unless the operator names it.

Pure.
"""

from __future__ import annotations

from attrs import frozen

from accel.http.headers import Headers

__all__ = ["KeyRecipe", "normal_authority", "primary_key"]

_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


def normal_authority(scheme: bytes, authority: bytes) -> bytes:
    """``authority`` as the key holds it, and as the origin is told it.

    RFC 3986 section 6.2.3 and RFC 9110 section 4.2.3: a port that is empty
    or the scheme's default names the same resource as no port, so
    ``example.com:80``, ``example.com:`` and ``example.com`` (for ``http``)
    share a key; so does ``example.com.``, a fully qualified name whose
    trailing dot names the same host (routing reads it so too:
    :func:`accel.routing.host_without_port`). The origin must then be sent
    this form too (in ``Host``, ``X-Forwarded-Host`` and ``Forwarded``): an
    origin that answered the raw ``example.com:80`` differently (a redirect
    to its canonical host, say) would otherwise store that answer for every
    client of ``example.com``. ``authority`` is lower-case already (the
    server's).
    """
    known = _normal.get(scheme)
    if known is not None:
        normal = known.get(authority)
        if normal is not None:
            return normal
    normal = _normalise(scheme, authority)
    if known is not None and len(known) < _NORMAL_MEMO:
        known[authority] = normal
    return normal


#: :func:`normal_authority`'s results, per scheme: a server sees few
#: authorities, and every request asks (bounded for one that sees many).
_normal: dict[bytes, dict[bytes, bytes]] = {b"http": {}, b"https": {}}
_NORMAL_MEMO = 4096


def _normalise(scheme: bytes, authority: bytes) -> bytes:
    """:func:`normal_authority`, worked out."""
    if authority[:1] == b"[":
        split = authority.find(b"]") + 1  # an IP literal: no trailing dot
        host, port = authority[:split], authority[split:]
    else:
        colon = authority.rfind(b":")
        if colon == -1:
            host, port = authority, b""
        else:
            host, port = authority[:colon], authority[colon:]
        if host[-1:] == b".":
            host = host.rstrip(b".") or host
    if port == b":" or port == _DEFAULT_PORTS.get(scheme):
        return host
    return host + port


@frozen
class KeyRecipe:
    """How a route builds primary keys.

    ``query``: ``"keep"`` (as sent), ``"sort"`` (parameters sorted, so
    ``?b=1&a=2`` and ``?a=2&b=1`` share an entry) or ``"ignore"``.
    ``headers``: request fields whose values join the key (lower-case names).
    """

    query: str = "keep"
    headers: tuple[bytes, ...] = ()


DEFAULT_RECIPE = KeyRecipe()


def primary_key(
    scheme: bytes,
    authority: bytes,
    path: bytes,
    query: bytes | None,
    headers: Headers | None = None,
    recipe: KeyRecipe = DEFAULT_RECIPE,
) -> str:
    """The primary cache key, as text (latin-1 keeps every byte)."""
    key = scheme + b"://" + normal_authority(scheme, authority.lower()) + path
    if query is not None and recipe.query != "ignore":
        if recipe.query == "sort":
            query = b"&".join(sorted(query.split(b"&")))
        key += b"?" + query
    if recipe.headers and headers is not None:
        for name in recipe.headers:
            key += b"\n" + name + b": " + b", ".join(headers.get_all(name))
    return key.decode("latin-1")


def primary_key_for_uri(uri: bytes) -> str | None:
    """The default-recipe key for an absolute URI (for invalidation); None if not one."""
    scheme, sep, rest = uri.partition(b"://")
    if not sep or scheme.lower() not in _DEFAULT_PORTS:
        return None
    slash = rest.find(b"/")
    if slash == -1:
        authority, target = rest, b"/"
    else:
        authority, target = rest[:slash], rest[slash:]
    target = target.partition(b"#")[0]
    path, qmark, query = target.partition(b"?")
    return primary_key(scheme.lower(), authority, path, query if qmark else None)

"""Choosing a route for a request: site by Host, then longest path prefix.

Pure. Sites and routes are built once at start-up from the validated
configuration (:mod:`accel.app`); a lookup is a dict probe plus a scan of a
short list of prefixes, longest first. Prefixes are compared with the path
as an origin reads it (:func:`route_path`), never with the bytes as sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar
from urllib.parse import unquote_to_bytes

from attrs import frozen

__all__ = ["Router", "host_without_port", "route_path"]

R = TypeVar("R")


def host_without_port(authority: bytes) -> bytes:
    """``example.com:8080`` -> ``example.com``; IPv6 literals keep brackets.

    A fully qualified name's trailing dot goes too (``example.com.`` is
    ``example.com``, as nginx's ``$host`` has it): left on, the name would
    match no site but the default one, and a request could reach a site's
    origin without its ``access`` rules.
    """
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[: end + 1] if end != -1 else authority
    colon = authority.rfind(b":")
    host = authority[:colon] if colon != -1 else authority
    return (host.rstrip(b".") or host) if host[-1:] == b"." else host


def route_path(path: bytes) -> bytes:
    """The path a route prefix is compared with: ``path`` percent-decoded,
    repeated slashes merged, dot-segments removed (RFC 3986 section 5.2.4).

    That is the path most origins serve (and what nginx matches its
    locations against): compared with the bytes as sent, ``/pub/../admin/``,
    ``/pub/%2e%2e/admin/`` or ``/%61dmin/`` would take the route of ``/pub/``
    (or ``/``) and its client rules, and reach an origin that serves
    ``/admin/``. Only the choice of route uses it: the origin gets the path
    as sent, and the cache key is built from that. A ``..`` never climbs
    above the root. Anything but an origin-form path (``*``) is unchanged.
    """
    # Nothing to normalise in most paths. (37 is "%": ``bytes in bytes``
    # first tries its operand as an integer, and the TypeError it raises and
    # clears costs more than the search; find() does not.)
    if 37 not in path and path.find(b"/.") == -1 and path.find(b"//") == -1:
        return path
    if path[:1] != b"/":
        return path
    if b"%" in path:
        path = unquote_to_bytes(path)
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    for segment in segments:
        if segment == b"..":
            if out:
                out.pop()
        elif segment and segment != b".":
            out.append(segment)
    joined = b"/" + b"/".join(out)
    if out and segments[-1] in (b"", b".", b".."):
        joined += b"/"  # it names a directory: "/a/b/.." is "/a/"
    return joined


@frozen
class _Site(Generic[R]):
    routes: tuple[tuple[bytes, R], ...]  # longest prefix first

    def select(self, path: bytes) -> R | None:
        for prefix, route in self.routes:
            if path.startswith(prefix):
                return route
        return None


class Router(Generic[R]):
    """Maps (authority, path) to a route value.

    ``sites`` is a list of ``(host names, [(prefix, route), ...])``. A name is
    exact (``example.com``) or a wildcard (``*.example.com``: any subdomain,
    not the bare domain); a site with no names, or named ``*``, is the
    default for hosts no other site names. Without a default site, an
    unknown host has no route (accel answers 404).
    An exact name beats a wildcard, a longer wildcard a shorter one. Names
    compare case-insensitively and without port.
    """

    def __init__(
        self, sites: Iterable[tuple[Iterable[str | bytes], Iterable[tuple[str | bytes, R]]]]
    ) -> None:
        self._by_host: dict[bytes, _Site[R]] = {}
        self._wildcards: list[tuple[bytes, _Site[R]]] = []
        self._default: _Site[R] | None = None
        for names, routes in sites:
            ordered = sorted(
                ((route_path(_bytes(p)), r) for p, r in routes),
                key=lambda pr: len(pr[0]),
                reverse=True,
            )
            site: _Site[R] = _Site(tuple(ordered))
            lowered = [_bytes(n).lower() for n in names]
            if not lowered:
                self._default = site
            for name in lowered:
                if name == b"*":
                    self._default = site
                elif name.startswith(b"*."):
                    self._wildcards.append((name[1:], site))
                else:
                    self._by_host.setdefault(name, site)
        self._wildcards.sort(key=lambda ws: len(ws[0]), reverse=True)

    def routes(self) -> list[R]:
        """Every route value, once each."""
        seen: dict[int, R] = {}
        sites = [*self._by_host.values(), *(s for _, s in self._wildcards)]
        if self._default is not None:
            sites.append(self._default)
        for site in sites:
            for _, route in site.routes:
                seen.setdefault(id(route), route)
        return list(seen.values())

    def select(self, authority: bytes, path: bytes) -> R | None:
        host = host_without_port(authority).lower()
        site = self._by_host.get(host)
        if site is None:
            for suffix, candidate in self._wildcards:
                if host.endswith(suffix):
                    site = candidate
                    break
            else:
                site = self._default
                if site is None:
                    return None
        return site.select(route_path(path))


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("ascii")

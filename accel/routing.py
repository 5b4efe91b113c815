"""Choosing a route for a request: site by Host, then longest path prefix.

Pure. Sites and routes are built once at start-up from the validated
configuration (:mod:`accel.app`); a lookup is a dict probe plus a scan of a
short list of prefixes, longest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

from attrs import frozen

__all__ = ["Router", "host_without_port"]

R = TypeVar("R")


def host_without_port(authority: bytes) -> bytes:
    """``example.com:8080`` -> ``example.com``; IPv6 literals keep brackets."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        return authority[: end + 1] if end != -1 else authority
    colon = authority.rfind(b":")
    return authority[:colon] if colon != -1 else authority


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

    ``sites`` is a list of ``(host names, [(prefix, route), ...])``; a site
    whose names include ``*`` (or the first site, when none does) answers for
    hosts no other site names. Host names compare case-insensitively and
    without port.
    """

    def __init__(self, sites: Iterable[tuple[Iterable[str], Iterable[tuple[str, R]]]]) -> None:
        self._by_host: dict[bytes, _Site[R]] = {}
        self._default: _Site[R] | None = None
        first: _Site[R] | None = None
        for names, routes in sites:
            ordered = sorted(
                ((p.encode("ascii"), r) for p, r in routes),
                key=lambda pr: len(pr[0]),
                reverse=True,
            )
            site: _Site[R] = _Site(tuple(ordered))
            if first is None:
                first = site
            for name in names:
                if name == "*":
                    self._default = site
                else:
                    self._by_host.setdefault(name.lower().encode("idna"), site)
        if self._default is None:
            self._default = first

    def select(self, authority: bytes, path: bytes) -> R | None:
        site = self._by_host.get(host_without_port(authority).lower())
        if site is None:
            site = self._default
            if site is None:
                return None
        return site.select(path)

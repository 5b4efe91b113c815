"""HTTP fields: an ordered, multi-valued, bytes-only header list.

Names are stored lower-cased (they are case-insensitive, RFC 9110 section 5.1,
and HTTP/2 requires lower case on the wire); values are stored as received,
with surrounding whitespace already trimmed by the parser. Repeated fields are
never folded into a dict: ``Set-Cookie`` and friends survive intact.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Set
from operator import itemgetter

__all__ = [
    "HOP_BY_HOP",
    "Headers",
    "split_list",
]

#: RFC 9110 section 7.6.1 connection-specific fields, plus the proxy
#: authentication pair, which belong to one hop as well, and
#: ``HTTP2-Settings``, which only means something with an ``Upgrade: h2c``
#: of this hop (RFC 7540 section 3.2.1).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"http2-settings",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)


_NAME = itemgetter(0)


def split_list(values: Iterable[bytes]) -> list[bytes]:
    """Split comma-separated list fields (RFC 9110 section 5.6.1).

    Elements may be spread over several field lines; empty elements are
    dropped. Quoted strings are respected: a comma inside quotes does not
    split.
    """
    out: list[bytes] = []
    for value in values:
        if b'"' not in value:
            for part in value.split(b","):
                part = part.strip(b" \t")
                if part:
                    out.append(part)
            continue
        start = 0
        quoted = False
        escaped = False
        for i, c in enumerate(value):
            if escaped:
                escaped = False
            elif quoted and c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # dquote
                quoted = not quoted
            elif c == 0x2C and not quoted:  # comma
                part = value[start:i].strip(b" \t")
                if part:
                    out.append(part)
                start = i + 1
        part = value[start:].strip(b" \t")
        if part:
            out.append(part)
    return out


class Headers:  # noqa: PLW1641 (mutable, so unhashable: defining __eq__ sets __hash__ to None)
    """An ordered list of ``(name, value)`` byte pairs; names lower-case.

    Cheap to build from a parser (``Headers(pairs)`` takes the list as is)
    and cheap to serialise. Lookups are linear, which beats a dict for the
    dozen fields a typical message has.
    """

    __slots__ = ("_pairs",)

    def __init__(self, pairs: list[tuple[bytes, bytes]] | None = None) -> None:
        self._pairs: list[tuple[bytes, bytes]] = pairs if pairs is not None else []

    @classmethod
    def of(cls, *pairs: tuple[bytes, bytes]) -> Headers:
        """Build from pairs whose names may be in any case."""
        return cls([(n.lower(), v) for n, v in pairs])

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, name: bytes) -> bool:
        for n, _ in self._pairs:  # noqa: SIM110 (a loop is cheaper than any() over a generator)
            if n == name:
                return True
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._pairs == other._pairs

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"

    @property
    def pairs(self) -> list[tuple[bytes, bytes]]:
        """The underlying list (shared, not copied)."""
        return self._pairs

    def copy(self) -> Headers:
        return Headers(list(self._pairs))

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The field's value, repeated lines joined with ``", "``.

        Only correct for list-based fields; use :meth:`get_all` for
        ``Set-Cookie``.
        """
        found = [v for n, v in self._pairs if n == name]
        if not found:
            return default
        if len(found) == 1:
            return found[0]
        return b", ".join(found)

    def get_all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self._pairs if n == name]

    def get_list(self, name: bytes) -> list[bytes]:
        """The field's list elements, across all its lines."""
        return split_list(self.get_all(name))

    def count(self, name: bytes) -> int:
        return sum(1 for n, _ in self._pairs if n == name)

    def add(self, name: bytes, value: bytes) -> None:
        self._pairs.append((name, value))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every line of ``name`` with one line, kept in place of the first."""
        out: list[tuple[bytes, bytes]] = []
        placed = False
        for pair in self._pairs:
            if pair[0] == name:
                if not placed:
                    out.append((name, value))
                    placed = True
            else:
                out.append(pair)
        if not placed:
            out.append((name, value))
        self._pairs[:] = out

    def setdefault(self, name: bytes, value: bytes) -> None:
        if name not in self:
            self._pairs.append((name, value))

    def remove(self, *names: bytes) -> None:
        """Remove every line whose name is one of ``names``."""
        drop = set(names)
        pairs = self._pairs
        if drop.isdisjoint(map(_NAME, pairs)):
            return  # the usual case: a check in C, no copy
        pairs[:] = [p for p in pairs if p[0] not in drop]

    def discard(self, drop: Set[bytes]) -> None:
        """Remove every line whose name is in ``drop``: :meth:`remove` for a
        set of names built once (a frozen set kept by the caller), without
        building one on every call."""
        pairs = self._pairs
        if drop.isdisjoint(map(_NAME, pairs)):
            return
        pairs[:] = [p for p in pairs if p[0] not in drop]

    def without_hop_by_hop(self) -> Headers:
        """A copy without hop-by-hop fields, including those ``Connection`` names.

        RFC 9110 section 7.6.1.
        """
        pairs = self._pairs
        if HOP_BY_HOP.isdisjoint(map(_NAME, pairs)):
            # No Connection field either (it is hop-by-hop): nothing to drop.
            return Headers(list(pairs))
        drop = HOP_BY_HOP
        named = self.get_all(b"connection")
        if named:
            drop = drop | {token.lower() for token in split_list(named)}
        return Headers([p for p in pairs if p[0] not in drop])

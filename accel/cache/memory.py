"""Bounded in-memory tiers in front of the disk store: hot bodies, and hot hits.

Keyed by ``body_id``, which names one stored body and is never reused: a
replaced or purged body can therefore never be served from memory for a newer
entry, even when another process did the replacing. Dropping a body here when
the store deletes it only gives the memory back sooner.

:class:`HotTier` holds more: whole fresh hits, header section pre-serialised,
so the proxy can answer one with a dictionary lookup and a float comparison
(see :meth:`accel.fasthit.HotHits.fast_hit`). A large hit is held as its
head and the path of its stored body file, which the wire layer sends from
the page cache; a body held in memory may come with an open descriptor of
its stored file too (:class:`~accel.http.model.FileBackedBody`), for the
wire layer to send it with ``sendfile``. Whoever made the descriptor is told
when an entry is dropped (``on_drop``), to close it.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from attrs import define, frozen

if TYPE_CHECKING:
    from accel.cache.store import Entry
    from accel.http.fields import EntityTag
    from accel.http.model import FileBackedBody

__all__ = ["HotEntry", "HotTier", "MemoryTier"]


class MemoryTier:
    """Least-recently-used bodies of at most ``max_item`` bytes, ``max_bytes`` in all."""

    def __init__(self, max_bytes: int, max_item: int = 64 * 1024) -> None:
        if not 0 <= max_item <= max_bytes:
            raise ValueError(f"expected 0 <= max_item <= max_bytes, got {max_item} and {max_bytes}")
        self.max_bytes = max_bytes
        self.max_item = max_item
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._bodies)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, body_id: str) -> bytes | None:
        """The body, marked as most recently used; ``None`` if not held."""
        body = self._bodies.get(body_id)
        if body is not None:
            self._bodies.move_to_end(body_id)
        return body

    def put(self, body_id: str, body: bytes) -> None:
        """Hold ``body`` if it is small enough, evicting the least recently used."""
        if len(body) > self.max_item:
            return
        self.discard(body_id)
        self._bodies[body_id] = body
        self._bytes += len(body)
        while self._bytes > self.max_bytes:
            _, evicted = self._bodies.popitem(last=False)
            self._bytes -= len(evicted)

    def discard(self, body_id: str) -> None:
        body = self._bodies.pop(body_id, None)
        if body is not None:
            self._bytes -= len(body)

    def clear(self) -> None:
        self._bodies.clear()
        self._bytes = 0


@frozen
class NotModified:
    """What a hot 2xx entry needs to answer a conditional ``GET`` or ``HEAD``.

    ``head`` is the ``304`` the general path sends when the client's copy
    is current, as :attr:`HotEntry.head` is its ``200`` (same end, same two
    placeholders). ``etag`` and ``modified`` are the validators that
    ``If-None-Match`` and ``If-Modified-Since`` are compared with
    (:func:`accel.cache.policy.entity_tag`,
    :func:`accel.cache.policy.modification_date`). ``tags`` and ``dates``
    are single field values already known to find the copy current (the
    entity tag and the date as sent, which browsers send back): a set
    lookup instead of parsing them again.
    """

    head: bytes
    etag: EntityTag | None
    modified: float
    tags: frozenset[bytes] = frozenset()
    dates: frozenset[bytes] = frozenset()


@define(eq=False)
class HotEntry:
    """One stored response, ready to send as a fresh hit without consulting the store.

    ``head`` is the status line and header section up to, not including,
    the connection-management fields and the blank line, with two ``%d``
    placeholders (every other ``%`` doubled): the ``Age`` in seconds and the
    ``Cache-Status`` ``ttl``. ``age_at``/``fresh_until`` are on the proxy's
    clock: the age at time *t* is ``t + age_at`` and the entry is fresh while
    *t* < ``fresh_until`` (RFC 9111 section 4.2, computed once when the entry
    was made). ``slot``/``generation`` are the store's change stamp for the
    entry's primary key when it was read: a different stamp now means the
    store changed (replaced, invalidated, purged) something under that key.
    ``vary``/``secondary`` select the variant (RFC 9111 section 4.1).
    ``needs_server``: the stored fields have no ``Server``, so the wire layer
    adds its own, as it would for a response through the general path.
    ``path``, if not empty, names the stored body file of ``length`` bytes,
    sent from there instead of ``body`` (then empty): a large body.
    ``mapped``, if set, is ``body`` with an open descriptor of its stored
    file, for ``sendfile``.
    ``not_modified`` answers conditional requests (:class:`NotModified`);
    ``None`` for a response that is not 2xx, whose preconditions are
    ignored (RFC 9110 section 13.2.1).
    ``stored`` is the store's entry, stamped as used (its LRU time) when a
    fast hit finds the proxy's clock past ``touch_due``, the one field that
    changes: so a response hot in memory is not the first evicted on disk.
    """

    status: int
    head: bytes
    body: bytes
    fresh_until: float
    age_at: float
    slot: int
    generation: int
    vary: tuple[bytes, ...] = ()
    secondary: bytes = b""
    needs_server: bool = True
    path: str = ""
    length: int = 0
    stored: Entry | None = None
    touch_due: float = float("inf")
    mapped: FileBackedBody | None = None
    not_modified: NotModified | None = None

    @property
    def size(self) -> int:
        """Bytes charged against the tier: heads, body and an allowance for the objects."""
        extra = 0 if self.not_modified is None else len(self.not_modified.head)
        return len(self.head) + extra + len(self.body) + _ENTRY_OVERHEAD

    @property
    def uses_file(self) -> bool:
        """Whether the entry names its body file or holds it open (counted by ``max_files``)."""
        return bool(self.path) or self.mapped is not None


#: Approximate bytes of Python objects per hot entry besides head and body.
_ENTRY_OVERHEAD = 512
#: Variants (different ``Vary`` selections) kept per URL.
_MAX_VARIANTS = 4


class HotTier:
    """Ready-to-send fresh hits (:class:`HotEntry`), least recently used out first.

    Keyed by whatever identifies a request-target on the wire (the proxy
    uses ``(scheme, authority, path, query)`` exactly as received); each key
    holds up to four variants. Bodies of at most ``max_item`` bytes; at most
    ``max_bytes`` in all, heads and overhead included; of those, at most
    ``max_files`` entries that name a body file instead (their bodies stay
    on disk, so they are bounded by count) or hold one open (bounded by
    count too: descriptors). Correctness does not
    depend on dropping entries here: the proxy checks freshness and the
    store's change stamp on every use; :meth:`discard` only frees memory.
    ``on_drop`` is called with each entry put and then dropped, or refused.
    """

    def __init__(
        self,
        max_bytes: int,
        max_item: int = 64 * 1024,
        max_files: int = 256,
        on_drop: Callable[[HotEntry], object] | None = None,
    ) -> None:
        if not 0 <= max_item <= max_bytes:
            raise ValueError(f"expected 0 <= max_item <= max_bytes, got {max_item} and {max_bytes}")
        if max_files < 0:
            raise ValueError(f"expected max_files >= 0, got {max_files}")
        self.max_bytes = max_bytes
        self.max_item = max_item
        self.max_files = max_files
        self._entries: OrderedDict[object, tuple[HotEntry, ...]] = OrderedDict()
        self._bytes = 0
        self._files = 0
        self.on_drop = on_drop

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes charged (see :attr:`HotEntry.size`)."""
        return self._bytes

    def get(self, key: object) -> tuple[HotEntry, ...] | None:
        """The variants held for ``key``, marked most recently used; ``None`` if none."""
        variants = self._entries.get(key)
        if variants is not None:
            self._entries.move_to_end(key)
        return variants

    def put(self, key: object, entry: HotEntry) -> None:
        """Hold ``entry`` (replacing the variant it selects), evicting the least recently used."""
        if (
            len(entry.body) > self.max_item
            or entry.size > self.max_bytes
            or (entry.uses_file and not self.max_files)
        ):
            self._forget((), (entry,))
            return
        old = self._entries.pop(key, ())
        kept = tuple(e for e in old if e.secondary != entry.secondary)[: _MAX_VARIANTS - 1]
        self._forget(e for e in old if not any(e is k for k in kept))
        self._entries[key] = (entry, *kept)
        self._bytes += entry.size
        self._files += entry.uses_file
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._forget(evicted)
        if self._files > self.max_files:
            self._evict_file()

    def discard(self, key: object, entry: HotEntry) -> None:
        """Drop ``entry`` from ``key``'s variants, if it is still there."""
        variants = self._entries.get(key)
        if variants is None or not any(e is entry for e in variants):
            return
        kept = tuple(e for e in variants if e is not entry)
        self._forget((entry,))
        if kept:
            self._entries[key] = kept
        else:
            del self._entries[key]

    def clear(self) -> None:
        entries = [e for variants in self._entries.values() for e in variants]
        self._entries.clear()
        self._bytes = 0
        self._files = 0
        self._forget((), entries)

    def _forget(self, entries: Iterable[HotEntry], refused: Iterable[HotEntry] = ()) -> None:
        """Uncharge ``entries``, which are no longer held; tell ``on_drop`` of
        them and of the ``refused`` ones, which were never charged."""
        on_drop = self.on_drop
        for e in entries:
            self._bytes -= e.size
            self._files -= e.uses_file
            if on_drop is not None:
                on_drop(e)
        if on_drop is not None:
            for e in refused:
                on_drop(e)

    def _evict_file(self) -> None:
        """Drop the least recently used entry that names or holds a body file."""
        for key, variants in self._entries.items():
            for e in variants:
                if e.uses_file:
                    self.discard(key, e)
                    return

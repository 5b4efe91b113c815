"""A bounded in-memory tier for small, hot bodies, in front of the disk store.

Keyed by ``body_id``, which names one stored body and is never reused: a
replaced or purged body can therefore never be served from memory for a newer
entry, even when another process did the replacing. Dropping a body here when
the store deletes it only gives the memory back sooner.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["MemoryTier"]


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

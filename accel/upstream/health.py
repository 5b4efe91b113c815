"""Passive health and origin choice, nginx-style (``max_fails``/``fail_timeout``).

Pure: time is passed in. The pool keeps one :class:`OriginHealth` per origin
and replaces it with :func:`attrs.evolve`-made successors.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

from attrs import evolve, frozen

__all__ = ["OriginHealth", "choose_origin"]


@frozen
class OriginHealth:
    """Recent failures of one origin.

    ``fails`` counts failures since ``window_start``; the origin is skipped
    until ``down_until``. ``last_failure`` orders origins when all are down.
    """

    fails: int = 0
    window_start: float = -math.inf
    down_until: float = -math.inf
    last_failure: float = -math.inf

    def available(self, now: float) -> bool:
        return now >= self.down_until

    def failed(self, now: float, max_fails: int, fail_timeout: float) -> OriginHealth:
        """Count one failure at ``now``.

        Failures older than ``fail_timeout`` are forgotten; the
        ``max_fails``-th failure within it takes the origin down for
        ``fail_timeout`` seconds. ``max_fails=0`` never takes it down.
        """
        if now - self.window_start >= fail_timeout:
            fails, window_start = 1, now
        else:
            fails, window_start = self.fails + 1, self.window_start
        down_until = self.down_until
        if max_fails and fails >= max_fails:
            down_until = now + fail_timeout
            fails, window_start = 0, -math.inf
        return OriginHealth(fails, window_start, down_until, now)

    def succeeded(self) -> OriginHealth:
        """A response head arrived: the origin is up, its failures are forgiven."""
        if self.fails == 0 and self.down_until == -math.inf:
            return self
        return evolve(self, fails=0, window_start=-math.inf, down_until=-math.inf)


def choose_origin(
    health: Sequence[OriginHealth],
    start: int,
    exclude: Collection[int],
    now: float,
    crowding: Sequence[int] | None = None,
) -> int | None:
    """The index of the origin to try next, or ``None`` when all are excluded.

    Round-robin from ``start`` over available origins not in ``exclude``;
    when every remaining origin is down, the one that failed least recently
    is tried anyway (better a likely failure than a certain one, as nginx
    does).

    ``crowding`` ranks each origin by how full it is (by the pool: 0 has a
    connection to spare, 1 makes the request wait, 2 cannot even queue it;
    ``None``: all 0). The least crowded origins come first, round-robin
    among the available ones, as nginx skips a server at its ``max_conns``
    while another has room.
    """
    count = len(health)
    best: int | None = None
    for step in range(count):
        index = (start + step) % count
        if index in exclude or not health[index].available(now):
            continue
        if crowding is None or crowding[index] == 0:
            return index
        if best is None or crowding[index] < crowding[best]:
            best = index
    if best is not None:
        return best
    remaining = [i for i in range(count) if i not in exclude]
    if not remaining:
        return None
    if crowding is None:
        return min(remaining, key=lambda i: health[i].last_failure)
    return min(remaining, key=lambda i: (crowding[i], health[i].last_failure))

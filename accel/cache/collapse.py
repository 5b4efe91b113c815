"""Request collapsing: one origin fetch for many concurrent misses.

The first miss for a key becomes the *leader* and fetches; later misses for
the same key *wait*. When the leader's fetch ends, every waiter is woken
and looks the key up again: it finds the stored response (a hit), or, when
the response turned out not to be storable, a *hit-for-miss* marker that
sends it and later requests for a while straight to the origin, so
uncacheable traffic is never serialised behind one fetch (Varnish's
hit-for-miss, nginx's ``proxy_cache_lock``).

A waiter never waits longer than ``timeout`` seconds (nginx's
``proxy_cache_lock_timeout``): after that it is woken with ``timed_out`` and
forwards on its own.

The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Collapser"]

#: A waiter's callback: ``wake(timed_out)``.
Wake = Callable[[bool], None]


class _Flight:
    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[tuple[Wake, IDelayedCall | None]] = []


class Collapser:
    """Tracks in-flight fetches and hit-for-miss markers by cache key."""

    def __init__(
        self,
        clock: IReactorTime,
        timeout: float = 10.0,
        pass_ttl: float = 120.0,
        max_passes: int = 100_000,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._pass_ttl = pass_ttl
        self._max_passes = max_passes
        self._flights: dict[str, _Flight] = {}
        #: Hit-for-miss markers, oldest first: key -> expiry time.
        self._passes: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    def passing(self, key: str) -> bool:
        """True while a hit-for-miss marker for ``key`` is live."""
        until = self._passes.get(key)
        if until is None:
            return False
        if until <= self._clock.seconds():
            del self._passes[key]
            return False
        return True

    def lead(self, key: str) -> bool:
        """Become the leader for ``key``; False if someone already is."""
        if key in self._flights:
            return False
        self._flights[key] = _Flight()
        return True

    def wait(self, key: str, wake: Wake) -> None:
        """Wait for the leader of ``key`` (which must exist)."""
        flight = self._flights[key]
        timer: IDelayedCall | None = None
        if self._timeout > 0:
            timer = self._clock.callLater(self._timeout, self._expire, key, wake)
        flight.waiters.append((wake, timer))

    def done(self, key: str, storable: bool) -> None:
        """The leader finished; wake the waiters.

        ``storable=False`` records a hit-for-miss marker first, so woken
        waiters and later requests skip collapsing for ``pass_ttl`` seconds.
        """
        flight = self._flights.pop(key, None)
        if storable:
            self._passes.pop(key, None)
        elif self._pass_ttl > 0:
            self._mark(key)
        if flight is None:
            return
        for wake, timer in flight.waiters:
            if timer is not None and timer.active():
                timer.cancel()
            wake(False)

    def _mark(self, key: str) -> None:
        """Record a marker; drop expired ones and, past the bound, the oldest."""
        now = self._clock.seconds()
        passes = self._passes
        passes.pop(key, None)
        passes[key] = now + self._pass_ttl
        while passes:
            oldest, until = next(iter(passes.items()))
            if until > now and len(passes) <= self._max_passes:
                break
            del passes[oldest]

    def _expire(self, key: str, wake: Wake) -> None:
        flight = self._flights.get(key)
        if flight is None:
            return
        flight.waiters = [(w, t) for w, t in flight.waiters if w is not wake]
        wake(True)

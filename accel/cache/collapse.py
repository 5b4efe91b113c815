"""Request collapsing: one origin fetch for many concurrent misses.

The first miss for a key becomes the *leader* and fetches; later misses for
the same key *wait*. When the leader's fetch ends, every waiter is woken
and looks the key up again: it finds the stored response (a hit), or, when
the response turned out not to be storable, a *hit-for-miss* marker that
sends it and later requests for a while straight to the origin, so
uncacheable traffic is never serialised behind one fetch (Varnish's
hit-for-miss, nginx's ``proxy_cache_lock``).

A fill that is being stored can be shared while it streams: the leader
*publishes* a handle on it (:meth:`Collapser.publish`, an opaque object to
this module: in practice an :class:`accel.streams.Feed`) as soon as its
response head is in, and every waiter that registered a ``follow`` callback
is offered it at once, as is every request that arrives while the fill goes
on (:meth:`Collapser.published`). A waiter that declines (it needs the
whole stored response: a range, a conditional, another variant) keeps
waiting for the end.

A marker can also remember that the store held nothing at all for its key
as of a given change stamp (:meth:`Collapser.note_unstored`, see
:class:`accel.cache.store.Generations`): while the slot's stamp is unchanged
nothing has been stored under the key since, by any process, so the requests
the marker passes need not read the store to find that out again
(:meth:`Collapser.known_unstored`).

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
#: A waiter's offer of a published fill: ``follow(handle)``; True takes it
#: (the waiter is done waiting), False keeps waiting for the end.
Follow = Callable[[object], bool]


class _Waiter:
    __slots__ = ("follow", "timer", "wake")

    def __init__(self, wake: Wake, follow: Follow | None, timer: IDelayedCall | None) -> None:
        self.wake = wake
        self.follow = follow
        self.timer = timer

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class _Pass:
    """A hit-for-miss marker: until when, and the stamp the store was seen empty at."""

    __slots__ = ("unstored_at", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.unstored_at: int | None = None


class _Flight:
    __slots__ = ("handle", "waiters")

    def __init__(self) -> None:
        self.waiters: list[_Waiter] = []
        self.handle: object | None = None


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
        #: Hit-for-miss markers, oldest first.
        self._passes: OrderedDict[str, _Pass] = OrderedDict()

    def __len__(self) -> int:
        return len(self._flights)

    def in_flight(self, key: str) -> bool:
        return key in self._flights

    def passing(self, key: str) -> bool:
        """True while a hit-for-miss marker for ``key`` is live."""
        return self._live(key) is not None

    def note_unstored(self, key: str, stamp: int) -> None:
        """The store held no response at all for ``key`` when its change stamp was ``stamp``.

        Remembered only while a hit-for-miss marker for ``key`` is live (so
        this never grows beyond the markers); the caller must have read
        ``stamp`` *before* it read the store.
        """
        marker = self._live(key)
        if marker is not None:
            marker.unstored_at = stamp

    def known_unstored(self, key: str, stamp: int) -> bool:
        """True if a live marker for ``key`` saw the store empty at this very stamp.

        The stamp changes with every store, freshening, invalidation or purge
        under the key, in any process; unchanged, nothing was stored since.
        """
        return self.unstored_at(key) == stamp

    def unstored_at(self, key: str) -> int | None:
        """The stamp a live marker for ``key`` saw the store empty at, if any.

        For a caller that has not read the stamp yet: with no marker for
        the key (most keys), it need not.
        """
        marker = self._live(key)
        return None if marker is None else marker.unstored_at

    def _live(self, key: str) -> _Pass | None:
        marker = self._passes.get(key)
        if marker is None:
            return None
        if marker.until <= self._clock.seconds():
            del self._passes[key]
            return None
        return marker

    def lead(self, key: str) -> bool:
        """Become the leader for ``key``; False if someone already is."""
        if key in self._flights:
            return False
        self._flights[key] = _Flight()
        return True

    def wait(self, key: str, wake: Wake, follow: Follow | None = None) -> None:
        """Wait for the leader of ``key`` (which must exist).

        ``follow``, if given, is offered the fill as soon as it is published;
        once it takes it, ``wake`` is never called.
        """
        flight = self._flights[key]
        timer: IDelayedCall | None = None
        if self._timeout > 0:
            timer = self._clock.callLater(self._timeout, self._expire, key, wake)
        flight.waiters.append(_Waiter(wake, follow, timer))

    def publish(self, key: str, handle: object) -> None:
        """The leader of ``key`` is streaming a fill others may follow.

        Offers ``handle`` to the waiters that can follow; those that take it
        stop waiting. Later requests find it with :meth:`published` until
        :meth:`done`.
        """
        flight = self._flights.get(key)
        if flight is None:
            return
        flight.handle = handle
        waiting: list[_Waiter] = []
        for waiter in list(flight.waiters):
            if waiter.follow is not None and waiter.follow(handle):
                waiter.cancel_timer()
            else:
                waiting.append(waiter)
        flight.waiters = waiting

    def published(self, key: str) -> object | None:
        """The handle the leader of ``key`` published, if any."""
        flight = self._flights.get(key)
        return None if flight is None else flight.handle

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
        for waiter in flight.waiters:
            waiter.cancel_timer()
            waiter.wake(False)

    def _mark(self, key: str) -> None:
        """Record a marker; drop expired ones and, past the bound, the oldest."""
        now = self._clock.seconds()
        passes = self._passes
        passes.pop(key, None)
        passes[key] = _Pass(now + self._pass_ttl)
        while passes:
            oldest, marker = next(iter(passes.items()))
            if marker.until > now and len(passes) <= self._max_passes:
                break
            del passes[oldest]

    def _expire(self, key: str, wake: Wake) -> None:
        flight = self._flights.get(key)
        if flight is None:
            return
        flight.waiters = [w for w in flight.waiters if w.wake is not wake]
        wake(True)

"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from accel.cache.store import Store
from accel.reactor import Reactor
from tests.fakes import T0


@pytest.fixture
def accel_reactor() -> Iterator[Reactor]:
    """A fresh :class:`accel.reactor.Reactor`, turned by hand by the test;
    what is left on it is closed after."""
    reactor = Reactor()
    yield reactor
    for selectable in list(reactor.getReaders()) + list(reactor.getWriters()):
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        if hasattr(selectable, "connectionLost"):
            selectable.connectionLost(Failure(ConnectionDone()))
    reactor._poller.close()


@pytest.fixture
def clock() -> Clock:
    """A fake clock at :data:`tests.fakes.T0`."""
    c = Clock()
    c.advance(T0)
    return c


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    """A store of 64 MiB in a fresh directory, on ``clock``; closed after."""
    s = Store(str(tmp_path / "cache"), 64 * 1024 * 1024, clock)
    yield s
    s.close()

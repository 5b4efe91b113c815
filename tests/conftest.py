"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from accel.reactor import Reactor


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

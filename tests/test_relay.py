"""accel.streams.Relay: one origin body to one client and one store writer."""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field

from accel.http.headers import Headers
from accel.streams import Relay
from tests.fakes import ControlledBody, FakeResponder


@define
class Writer:
    """A store writer that notes what the client had been sent when it committed,
    and keeps what waits for the commit to be visible until :meth:`visible`."""

    responder: FakeResponder
    written: list[bytes] = field(factory=list)
    client_had_at_commit: bytes | None = None
    aborted: bool = False
    waiting: list[Callable[[], None]] = field(factory=list)
    fails: bool = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def commit(self) -> object:
        self.client_had_at_commit = self.responder.body
        if self.fails:
            raise OSError("disk full")
        return "entry"

    def when_committed(self, then: Callable[[], None]) -> None:
        self.waiting.append(then)

    def visible(self) -> None:
        """The store's commit is done: every process sees the entry."""
        waiting, self.waiting = self.waiting, []
        for then in waiting:
            then()

    def abort(self) -> None:
        self.aborted = True


def relay(length: int | None, with_writer: bool = True):
    responder = FakeResponder()
    responder.start(200, b"OK", Headers())
    body = ControlledBody(length=length)
    writer = Writer(responder) if with_writer else None
    done: list[tuple[bool, object]] = []
    Relay(body, responder, writer, lambda complete, stored: done.append((complete, stored))).start()
    return body, responder, writer, done


def test_the_completing_chunk_waits_for_the_commit():
    """With a declared length, the client gets its last bytes only once the
    entry is committed where every process sees it."""
    body, responder, writer, done = relay(length=6)
    body.feed(b"abc")
    assert responder.body == b"abc"
    body.feed(b"def")
    assert responder.body == b"abc"  # held back
    body.finish()
    assert writer.client_had_at_commit == b"abc"
    assert responder.body == b"abc" and not responder.finished and done == []
    writer.visible()
    assert responder.body == b"abcdef" and responder.finished
    assert done == [(True, "entry")]


def test_without_a_length_every_chunk_goes_at_once():
    """A chunked body's end is only known at its end: chunks pass straight
    through, and the response ends (its last chunk) once the entry is committed."""
    body, responder, writer, _ = relay(length=None)
    body.feed(b"abc")
    body.feed(b"def")
    assert responder.body == b"abcdef" and not responder.finished
    body.finish()
    assert writer.client_had_at_commit == b"abcdef" and not responder.finished
    writer.visible()
    assert responder.finished


def test_a_response_not_stored_ends_with_its_body():
    """Pass-through: nothing to wait for, the response ends as the body does."""
    body, responder, _, done = relay(length=3, with_writer=False)
    body.feed(b"abc")
    body.finish()
    assert responder.body == b"abc" and responder.finished
    assert done == [(True, None)]


def test_a_commit_that_raises_still_completes_the_response():
    """The store failing at commit loses the entry, not the client's response."""
    responder = FakeResponder()
    responder.start(200, b"OK", Headers())
    body = ControlledBody(length=3)
    writer = Writer(responder, fails=True)
    done: list[tuple[bool, object]] = []
    Relay(body, responder, writer, lambda complete, stored: done.append((complete, stored))).start()
    body.feed(b"abc")
    body.finish()
    assert responder.body == b"abc" and responder.finished
    assert done == [(True, None)]


def test_without_a_writer_nothing_is_held():
    """Pass-through: the last chunk goes to the client as it arrives."""
    body, responder, _, _ = relay(length=3, with_writer=False)
    body.feed(b"abc")
    assert responder.body == b"abc"


def test_a_failure_after_the_last_chunk_sends_nothing_more():
    """If the body fails instead of ending, the held bytes are dropped and the client aborted."""
    body, responder, writer, done = relay(length=3)
    body.feed(b"abc")
    body.break_off()
    assert responder.body == b"" and responder.aborted
    assert writer.aborted and writer.client_had_at_commit is None
    assert done == [(False, None)]

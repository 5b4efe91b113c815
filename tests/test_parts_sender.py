"""accel.streams.PartsSender: a multipart/byteranges body from a stored file, with back-pressure."""

from __future__ import annotations

import io

from accel.http.headers import Headers
from accel.streams import CHUNK, PartsSender
from tests.fakes import FakeResponder

DATA = bytes(range(256)) * (3 * CHUNK // 256)  # three chunks


class TrackedFile(io.BytesIO):
    """A stored body that remembers whether it was closed."""

    was_closed = False

    def close(self) -> None:
        self.was_closed = True
        super().close()


class PausingResponder(FakeResponder):
    """A client whose socket is full after every write: it pauses the producer."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None:
            self.producer.pauseProducing()


def started(responder: FakeResponder) -> FakeResponder:
    responder.start(206, b"Partial Content", Headers())
    return responder


PIECES: list[bytes | tuple[int, int]] = [b"<a>", (10, 5), b"<b>", (CHUNK, 2 * CHUNK), b"<end>"]
EXPECTED = b"<a>" + DATA[10:15] + b"<b>" + DATA[CHUNK : 3 * CHUNK] + b"<end>"


def test_sends_heads_and_spans_in_order():
    """Literal pieces and file spans go out in order, then the response finishes
    and the file is closed."""
    f = TrackedFile(DATA)
    r = started(FakeResponder())
    PartsSender(f, r, PIECES).start()
    assert r.body == EXPECTED and r.finished and f.was_closed
    assert r.producer is None


def test_small_pieces_share_a_write():
    """Many small parts do not cost one write each."""
    pieces: list[bytes | tuple[int, int]] = []
    for i in range(50):
        pieces += [b"--part--", (i * 10, 3)]
    r = started(FakeResponder())
    PartsSender(TrackedFile(DATA), r, [*pieces, b"--end--"]).start()
    assert len(r.chunks) == 1 and r.finished


def test_writes_stay_within_a_chunk():
    """No write carries more than a chunk of the file plus a head."""
    r = started(FakeResponder())
    PartsSender(TrackedFile(DATA), r, PIECES).start()
    assert max(len(c) for c in r.chunks) <= CHUNK + len(b"<end>")


def test_a_paused_client_gets_no_more_until_it_resumes():
    """Back-pressure: after a pause nothing is read or sent until resumeProducing."""
    f = TrackedFile(DATA)
    r = started(PausingResponder())
    sender = PartsSender(f, r, PIECES)
    sender.start()
    sent = len(r.body)
    assert 0 < sent < len(EXPECTED) and not r.finished
    while not r.finished:
        sender.resumeProducing()
        assert len(r.body) > sent
        sent = len(r.body)
    assert r.body == EXPECTED and f.was_closed


def test_a_short_file_aborts():
    """A stored file shorter than its entry said is never passed off as complete."""
    f = TrackedFile(DATA[: CHUNK + 100])
    r = started(FakeResponder())
    PartsSender(f, r, PIECES).start()
    assert r.aborted and not r.finished and f.was_closed


def test_a_client_that_leaves_closes_the_file():
    """stopProducing (the client went away) closes the file; nothing more is sent."""
    f = TrackedFile(DATA)
    r = started(PausingResponder())
    PartsSender(f, r, PIECES).start()
    sent = r.body
    r.disconnect()
    assert f.was_closed and r.body == sent and not r.finished

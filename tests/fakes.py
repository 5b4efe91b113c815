"""In-memory stand-ins for the proxy's collaborators: a responder, an origin.

They implement the structural interfaces of :mod:`accel.http.model` and
``accel.upstream`` so the accelerator's logic can be driven step by step on a
fake clock, with no sockets.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from accel.http.headers import Headers
from accel.http.model import BodySink, PushProducer, Request
from accel.upstream import OriginResponse, UpstreamError
from accel.upstream.origin import Origin

#: The fake clock's start (the ``clock`` fixture of tests/conftest.py): a
#: fixed wall-clock time, so dates in responses are known.
T0 = 1_700_000_000.0


def make_request(
    target: bytes = b"/",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    authority: bytes = b"example.com",
    client: str = "192.0.2.1",
) -> Request:
    path, qmark, query = target.partition(b"?")
    return Request(
        method=method,
        target=target,
        path=path,
        query=query if qmark else None,
        version=b"1.1",
        headers=Headers.of((b"host", authority), *(headers or [])),
        authority=authority,
        scheme=b"http",
        client=client,
    )


@define
class FakeResponder:
    """Records what the handler answered."""

    status: int | None = None
    reason: bytes = b""
    headers: Headers | None = None
    chunks: list[bytes] = field(factory=list)
    finished: bool = False
    aborted: bool = False
    disconnected: bool = False
    producer: PushProducer | None = None
    log: dict[str, str] = field(factory=dict)
    #: Interim (1xx) responses sent before the final one.
    interims: list[tuple[int, bytes, Headers]] = field(factory=list)
    _on_disconnect: list[Callable[[], object]] = field(factory=list)

    def start(self, status: int, reason: bytes, headers: Headers) -> None:
        assert self.status is None, "start() called twice"
        if status < 200:
            self.interims.append((status, reason, headers))
            return
        self.status, self.reason, self.headers = status, reason, headers

    def write(self, data: bytes) -> None:
        assert self.status is not None and not self.finished
        self.chunks.append(data)

    def finish(self) -> None:
        assert self.status is not None and not self.finished and not self.aborted
        self.finished = True

    def abort(self) -> None:
        self.aborted = True

    def register_producer(self, producer: PushProducer) -> None:
        self.producer = producer

    def unregister_producer(self) -> None:
        self.producer = None

    def on_disconnect(self, callback: Callable[[], object]) -> None:
        self._on_disconnect.append(callback)

    def disconnect(self) -> None:
        self.disconnected = True
        for cb in self._on_disconnect:
            cb()
        if self.producer is not None:
            self.producer.stopProducing()

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: bytes) -> bytes | None:
        assert self.headers is not None
        return self.headers.get(name)


@define
class ControlledBody:
    """A response body the test feeds by hand."""

    length: int | None = None
    sink: BodySink | None = None
    paused: bool = False
    discarded: bool = False
    pending: list[bytes] = field(factory=list)
    ended: bool = False
    failed: Exception | None = None

    def deliver(self, sink: BodySink) -> None:
        self.sink = sink
        for chunk in self.pending:
            sink.data(chunk)
        self.pending.clear()
        if self.ended:
            sink.end()
        elif self.failed is not None:
            sink.fail(self.failed)

    def feed(self, data: bytes) -> None:
        if self.sink is None:
            self.pending.append(data)
        else:
            self.sink.data(data)

    def finish(self) -> None:
        self.ended = True
        if self.sink is not None:
            self.sink.end()

    def break_off(self) -> None:
        self.failed = UpstreamError("origin closed mid-body")
        if self.sink is not None:
            self.sink.fail(self.failed)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def discard(self) -> None:
        self.discarded = True


@define
class Call:
    method: bytes
    target: bytes
    headers: Headers
    deferred: Deferred[OriginResponse]
    #: Where the proxy wants interim (1xx) responses, if anywhere.
    interim: Callable[[int, bytes, Headers], None] | None = None


ORIGIN = Origin.parse("http://origin.test:80")


def response(
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
    complete: bool = True,
) -> tuple[OriginResponse, ControlledBody]:
    """An origin response whose body is ``body`` (ended unless ``complete=False``)."""
    h = Headers.of(*(headers or []))
    if b"content-length" not in h and complete and status not in (204, 304):
        h.add(b"content-length", b"%d" % len(body))
    src = ControlledBody(length=len(body) if complete and status not in (204, 304) else None)
    if body:
        src.feed(body)
    if complete:
        src.finish()
    return OriginResponse(status, b"OK", b"1.1", h, src, ORIGIN), src


@define
class FakeUpstream:
    """An origin that records requests; answers with ``auto`` or by hand."""

    auto: Callable[[Call], OriginResponse] | None = None
    calls: list[Call] = field(factory=list)

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: object,
        interim: Callable[[int, bytes, Headers], None] | None = None,
    ) -> Deferred[OriginResponse]:
        d: Deferred[OriginResponse] = Deferred()
        call = Call(method, target, headers, d, interim)
        self.calls.append(call)
        if self.auto is not None:
            try:
                d.callback(self.auto(call))
            except UpstreamError as e:
                d.errback(e)
        return d


def always(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"x"):
    """An ``auto`` answer: the same complete response every time."""

    def answer(call: Call) -> OriginResponse:
        return response(status, headers, body)[0]

    return answer


def end_turn(clock: Clock) -> None:
    """End the reactor's turn: what it scheduled with ``callLater(0)`` runs.

    The store commits the rows stored during the turn then, and the
    responses that stored them send their last bytes (see "Group commit"
    in :mod:`accel.cache.store`); a real reactor does so before it waits
    for more events.
    """
    clock.advance(0)


__all__ = [
    "Call",
    "ControlledBody",
    "FakeResponder",
    "FakeUpstream",
    "always",
    "end_turn",
    "make_request",
    "response",
    "succeed",
]

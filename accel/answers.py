"""What accel answers itself, and where origin failures become answers.

Short plain-text answers (:func:`simple_response`), the head of a 304 that
accel answers from what it has (:func:`not_modified`), and the one place an
origin error becomes a 502, 503 or 504 (:func:`answer_origin_failure`); an origin
body that fails after its head is sent can only be cut short, and
:class:`OriginRelay` logs it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.cache import policy
from accel.forwarding import response_headers_for_client
from accel.http.headers import Headers
from accel.http.model import BodySink, Request, Responder
from accel.routes import Route
from accel.streams import BodyWriter, Relay
from accel.upstream import InterimCallback, OriginResponse, UpstreamError

__all__ = [
    "CONDITIONAL_FIELDS",
    "DRAIN",
    "OriginRelay",
    "answer_origin_failure",
    "interim_relay",
    "log_origin_failure",
    "not_modified",
    "relay_interim",
    "simple_response",
]

_log = Logger()

#: Client fields that make a request conditional or partial; a cache fill
#: drops them and accel evaluates them itself against what it has.
CONDITIONAL_FIELDS = (
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"range",
)

_REASONS = {
    304: b"Not Modified",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    416: b"Range Not Satisfiable",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def simple_response(
    responder: Responder,
    status: int,
    message: bytes,
    extra: Headers | None = None,
) -> None:
    """Answer with a short plain-text body (never origin internals)."""
    headers = extra.copy() if extra is not None else Headers()
    body = message + b"\n"
    headers.add(b"content-type", b"text/plain; charset=utf-8")
    headers.add(b"content-length", b"%d" % len(body))
    headers.setdefault(b"cache-control", b"no-store")
    responder.start(status, _REASONS.get(status, b"Error"), headers)
    responder.write(body)
    responder.finish()


def not_modified(headers: Headers) -> Headers:
    """The fields of a 304 for a response with ``headers``, as accel sends it.

    What RFC 9110 section 15.4.5 keeps (:func:`accel.cache.policy.not_modified_headers`),
    plus the ``Age``, ``Via`` and ``Cache-Status`` accel added.
    """
    out = policy.not_modified_headers(headers)
    for name in (b"age", b"via", b"cache-status"):
        for value in headers.get_all(name):
            out.add(name, value)
    return out


def answer_origin_failure(
    failure: Failure, route: Route, request: Request, responder: Responder | None
) -> None:
    """Log a failed origin request and answer 502, 503 or 504 (nothing if cancelled).

    The one place origin errors become HTTP: the status is the upstream
    error's (:class:`~accel.upstream.UpstreamTimeout` is 504,
    :class:`~accel.upstream.UpstreamBusy` 503: every origin at its
    connection cap), the body is a short plain sentence that names no
    origin internals, and nothing is sent if the client is gone. The 503
    has no ``Retry-After``: it already waited ``queue_timeout``, or found the
    queue full, and no time can be promised after which the origin has room.
    """
    if failure.check(CancelledError):
        return
    status = log_origin_failure(failure, route, request)
    if responder is None or responder.disconnected:
        return
    if status == 504:
        simple_response(responder, 504, b"The origin did not answer in time.")
    elif status == 503:
        simple_response(responder, 503, b"The origin is too busy; try again later.")
    else:
        simple_response(responder, 502, b"The origin could not be reached.")


def log_origin_failure(failure: Failure, route: Route, request: Request) -> int:
    """Log a failed origin request once; the status to answer it with."""
    if failure.check(UpstreamError):
        error = failure.value
        _log.warn(
            "origin failed for {method} {target} on route {route}: {error}",
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
            route=route.name,
            error=str(error),
        )
        return int(getattr(error, "status", 502))
    _log.failure("unexpected error while forwarding", failure)
    return 502


class _Drain:
    """A body sink that throws the body away (so the connection is reusable)."""

    def data(self, chunk: bytes) -> None:
        pass

    def end(self) -> None:
        pass

    def fail(self, reason: Exception) -> None:
        pass


DRAIN: BodySink = _Drain()


class OriginRelay(Relay):
    """A :class:`~accel.streams.Relay` of an origin's response body that
    logs a failure after the head.

    Failures before the head are logged where the request fails; this covers
    the rest (a reset, a timeout or broken framing mid-body), which otherwise
    only shows as a truncated response to the client. Naming the origin is
    the upstream error's job: its text starts with the origin's name. One
    object with the relay, rather than a body wrapped around the origin's,
    as it is built for every response that comes from an origin.
    """

    __slots__ = ("_request", "_route")

    def __init__(
        self,
        response: OriginResponse,
        route: Route,
        request: Request,
        responder: Responder | None,
        writer: BodyWriter | None = None,
        on_done: Callable[[bool, object], None] | None = None,
    ) -> None:
        super().__init__(response.body, responder, writer, on_done)
        self._route = route
        self._request = request

    def fail(self, reason: Exception) -> None:
        request = self._request
        _log.warn(
            "origin body failed for {method} {target} on route {route}: {error}",
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
            route=self._route.name,
            error=str(reason),
        )
        super().fail(reason)


def relay_interim(
    route: Route, responder: Responder, status: int, reason: bytes, headers: Headers
) -> None:
    """Pass an origin's interim (1xx) response on to the client.

    RFC 9110 section 15.2: a proxy MUST forward 1xx responses (here 102,
    103 and any other; the upstream side keeps ``100 Continue``, accel
    answering ``Expect`` itself). Their fields are treated as a final
    head's: hop-by-hop and the route's hidden fields removed, ``Via``
    added. The server never sends them to an HTTP/1.0 client. They are not
    stored: only the final response is (RFC 9111 section 3).
    """
    if responder.disconnected:
        return
    if route.hide_headers:
        headers.remove(*route.hide_headers)
    # The origin connection is HTTP/1.1: only that version carries 1xx.
    responder.start(status, reason, response_headers_for_client(headers, b"1.1", route.forwarding))


def interim_relay(route: Route, responder: Responder) -> InterimCallback:
    """The :data:`~accel.upstream.InterimCallback` that passes the 1xx
    responses of one request to its client (:func:`relay_interim`)."""
    return partial(relay_interim, route, responder)

"""The accelerator: the handler that ties routes, the cache and origins together.

For each request the :class:`Accelerator` picks a route, and then:

* not cacheable here (method, route without a cache, no store): forward it;
* cacheable: look the URL up in the store, pick the variant that matches the
  request's ``Vary`` fields, and let :mod:`accel.cache.policy` decide whether
  that stored response may be served (fresh), must be validated first, may be
  served stale while validated in the background, or does not apply;
* on a miss, concurrent requests for one URL are collapsed into one origin
  fetch (:class:`~accel.cache.collapse.Collapser`); the response streams to
  the client and into the store at once (:class:`~accel.streams.Relay`),
  and is kept only if the policy allows it and the body arrived whole.

Everything the handler sees is the wire-independent model of
:mod:`accel.http.model`; the decisions are the pure functions of
:mod:`accel.cache.policy`. Errors from origins are mapped to clean 502/504
answers here, and nowhere else.
"""

from __future__ import annotations

from attrs import define, frozen
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from accel.forwarding import (
    ForwardingPolicy,
    request_headers_for_origin,
    response_headers_for_client,
)
from accel.http.headers import Headers
from accel.http.model import Request, Responder
from accel.routing import Router
from accel.streams import Relay
from accel.upstream import OriginResponse, UpstreamError, UpstreamTimeout

__all__ = ["Accelerator", "Route", "simple_response"]

_log = Logger()


class Upstream:
    """Structural: what a route forwards to (an origin pool, or parents)."""

    def request(
        self, method: bytes, target: bytes, headers: Headers, body: object
    ) -> Deferred[OriginResponse]: ...


@define
class Route:
    """One route's runtime parts, built from the configuration at start-up."""

    upstream: Upstream
    forwarding: ForwardingPolicy = ForwardingPolicy()
    cache: object | None = None  # accel.cache.CacheRules when the route caches
    name: str = "/"


_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    412: b"Precondition Failed",
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
    headers.add(b"cache-control", b"no-store")
    responder.start(status, _REASONS.get(status, b"Error"), headers)
    responder.write(body)
    responder.finish()


@frozen
class _Pending:
    """An origin fetch in progress, for cancellation when the client leaves."""

    deferred: Deferred[OriginResponse]


class Accelerator:
    """The :class:`~accel.http.model.Handler` for proxied routes."""

    def __init__(self, router: Router[Route], clock: IReactorTime) -> None:
        self._router = router
        self._clock = clock

    def handle(self, request: Request, responder: Responder) -> None:
        route = self._router.select(request.authority, request.path)
        if route is None:
            responder.log["cache"] = "-"
            simple_response(responder, 404, b"No route for this host and path.")
            return
        self.forward(route, request, responder)

    # Forwarding

    def forward(self, route: Route, request: Request, responder: Responder) -> None:
        """Pass ``request`` to the route's origin and stream the answer back."""
        responder.log.setdefault("cache", "BYPASS")
        headers = request_headers_for_origin(request, route.forwarding)
        d = route.upstream.request(request.method, request.target, headers, request.body)
        responder.on_disconnect(d.cancel)
        d.addCallbacks(
            self._relay,
            self._origin_failed,
            callbackArgs=(route, request, responder),
            errbackArgs=(route, request, responder),
        )

    def _relay(
        self, response: OriginResponse, route: Route, request: Request, responder: Responder
    ) -> None:
        if responder.disconnected:
            response.body.discard()
            return
        responder.log["upstream"] = response.origin.name
        headers = response_headers_for_client(response.headers, response.version, route.forwarding)
        responder.start(response.status, response.reason, headers)
        Relay(response.body, responder).start()

    def _origin_failed(
        self, failure: Failure, route: Route, request: Request, responder: Responder
    ) -> None:
        if failure.check(CancelledError) or responder.disconnected:
            return
        if failure.check(UpstreamError):
            error = failure.value
            _log.warn(
                "origin failed for {method} {target} on route {route}: {error}",
                method=request.method.decode("latin-1"),
                target=request.target.decode("latin-1"),
                route=route.name,
                error=str(error),
            )
            if isinstance(error, UpstreamTimeout):
                simple_response(responder, 504, b"The origin did not answer in time.")
            else:
                simple_response(responder, 502, b"The origin could not be reached.")
            return
        _log.failure("unexpected error while forwarding", failure)
        simple_response(responder, 502, b"The origin could not be reached.")

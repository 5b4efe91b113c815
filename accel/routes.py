"""Routes at run time: where a request goes, and how its answers are cached.

A :class:`Route` and its :class:`CacheRules` are built once from the
configuration (:func:`accel.app.build_accelerator`) and selected per request
by :class:`accel.routing.Router`; a :class:`Lookup` carries one cacheable
request along its route through the accelerator (:mod:`accel.proxy` and
the modules it uses).
"""

from __future__ import annotations

from attrs import define, field, frozen
from twisted.internet.defer import Deferred

from accel.cache import policy
from accel.cache.keys import DEFAULT_RECIPE, KeyRecipe
from accel.config import ClientAccess
from accel.forwarding import ForwardingPolicy
from accel.http.headers import Headers
from accel.http.model import BodySource, Request, Responder
from accel.upstream import InterimCallback, OriginResponse

__all__ = ["CacheRules", "Lookup", "Route", "Upstream"]


class Upstream:
    """Structural: what a route forwards to (an origin pool, or parents)."""

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: BodySource,
        interim: InterimCallback | None = None,
    ) -> Deferred[OriginResponse]: ...

    def close(self) -> Deferred[None]: ...


@frozen
class CacheRules:
    """A caching route's settings, resolved for the request path.

    ``range_fetch_max``: a range request that misses fetches the whole object
    into the cache only if it is at most this many bytes; larger ones are
    passed through with their ``Range``. ``max_ranges``: the most ranges one
    ``Range`` field may ask for from the cache (nginx's ``max_ranges``):
    more, and the field is ignored (200 with the whole); ``0`` ignores every
    ``Range``, ``1`` allows single ranges only (see
    :func:`accel.cache.policy.range_answer`).
    """

    policy: policy.PolicySettings = policy.DEFAULT_SETTINGS
    recipe: KeyRecipe = DEFAULT_RECIPE
    range_fetch_max: int = 64 * 1024 * 1024
    max_ranges: int = 100
    #: Fields for this cache alone (RFC 9213), removed before responses
    #: go downstream: accel's targeted field, and CDN-Cache-Control when the
    #: operator says this is the last CDN hop. A set, built once, for
    #: :meth:`Headers.discard <accel.http.headers.Headers.discard>`.
    strip: frozenset[bytes] = field(
        default=frozenset({b"accel-cache-control"}), converter=frozenset
    )


@define
class Route:
    """One route's runtime parts, built from the configuration at start-up.

    ``access``: which clients may use the route (403 for others);
    ``hide_headers``: origin response fields removed as responses arrive, so
    they reach neither clients nor the store; ``max_body``: a request whose
    declared Content-Length exceeds it gets 413 without reaching the origin.
    """

    upstream: Upstream
    forwarding: ForwardingPolicy = ForwardingPolicy()
    cache: CacheRules | None = None
    name: str = "/"
    access: ClientAccess | None = None
    hide_headers: tuple[bytes, ...] = ()
    #: The most request content accepted, or None: see
    #: :meth:`accel.proxy.Accelerator.body_limit`.
    max_body: int | None = None


@define(slots=True)
class Lookup:
    """One GET/HEAD on a caching route, carried through lookup and fetch."""

    route: Route
    rules: CacheRules
    request: Request
    responder: Responder | None
    key: str
    #: The store's change stamp for ``key`` before the latest lookup.
    generation: int | None = None
    #: When the latest lookup decided (the ``now`` of its ages and ttls).
    looked_up_at: float = 0.0
    #: Times this request already waited for another's fetch.
    waited: int = 0
    collapsed: bool = False
    #: The ``fwd`` reason of a fill this request started for itself and is
    #: then answered from (a Range miss): its answer is a miss, not a hit.
    fetched: str | None = None
    #: When the request reached the accelerator (``None``: a background
    #: fetch): a stored response received or validated since needs no
    #: validation for it (:class:`accel.cache.policy.Validated`).
    received_at: float | None = None

"""The origin side: an HTTP/1.1 client with pools, keep-alive, timeouts and streaming.

* :mod:`.origin` and :mod:`.health` are pure (configuration values, passive
  health and round-robin choice, time passed in);
* :mod:`.connection` speaks HTTP/1.1 on one connection (httptools' llhttp);
* :mod:`.pool` chooses origins, pools connections and retries.

The proxy sees :class:`Upstream` (``request(method, target, headers, body,
interim)`` firing with an :class:`OriginResponse`, and calling ``interim``
with any 1xx responses before that) and the :class:`UpstreamError` family
(:class:`UpstreamBusy` when an origin's connection cap and wait queue are
full).
"""

from accel.upstream.connection import OriginResponse
from accel.upstream.errors import (
    UpstreamBusy,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from accel.upstream.health import OriginHealth, choose_origin
from accel.upstream.origin import Origin, UpstreamSettings
from accel.upstream.pool import InterimCallback, OriginPool, Upstream

__all__ = [
    "InterimCallback",
    "Origin",
    "OriginHealth",
    "OriginPool",
    "OriginResponse",
    "Upstream",
    "UpstreamBusy",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamSettings",
    "UpstreamTimeout",
    "choose_origin",
]

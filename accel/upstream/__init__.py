"""The origin side: an HTTP/1.1 client with pools, keep-alive, timeouts and streaming.

* :mod:`.origin` and :mod:`.health` are pure (configuration values, passive
  health and round-robin choice, time passed in);
* :mod:`.connection` speaks HTTP/1.1 on one connection (httptools' llhttp);
* :mod:`.pool` chooses origins, pools connections and retries.

The proxy sees :class:`Upstream` (``request(method, target, headers, body)``
firing with an :class:`OriginResponse`) and the :class:`UpstreamError` family.
"""

from accel.upstream.connection import OriginResponse
from accel.upstream.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from accel.upstream.health import OriginHealth, choose_origin
from accel.upstream.origin import Origin, UpstreamSettings
from accel.upstream.pool import OriginPool, Upstream

__all__ = [
    "Origin",
    "OriginHealth",
    "OriginPool",
    "OriginResponse",
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamSettings",
    "UpstreamTimeout",
    "choose_origin",
]

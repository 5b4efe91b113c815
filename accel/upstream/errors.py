"""Typed failures of the origin side, each carrying the status a proxy answers with.

Messages name the origin and say what went wrong on the wire; they are meant
for the error log, never for clients (the proxy answers with a bare status).
"""

from __future__ import annotations

__all__ = [
    "UpstreamBusy",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """The origin could not give a usable answer: 502 Bad Gateway.

    Raised as such when the connection is lost before or during the
    response (the body ended short of its framing).
    """

    status = 502


class UpstreamConnectError(UpstreamError):
    """No connection could be made: refused, unresolvable, TLS handshake failed."""


class UpstreamTimeout(UpstreamError):
    """The origin took too long to connect, answer or send the next body bytes: 504."""

    status = 504


class UpstreamProtocolError(UpstreamError):
    """The origin spoke broken HTTP: garbage, invalid framing, a head too large."""


class UpstreamBusy(UpstreamError):
    """Every origin the request could go to had its most connections open and
    no connection came free in time (or too many requests were already
    waiting): 503. Not a failure of the origin: passive health ignores it.
    """

    status = 503

"""The HTTP caching policy of a shared cache, as pure functions and values.

What may be stored, for how long, when a stored response may be reused, how
it is validated and updated, what an unsafe request invalidates, and how the
cache answers conditional and range requests on its own. Specifications:

* RFC 9111 (HTTP Caching): sections 3, 4 and 5, section by section below;
* RFC 5861 (``stale-while-revalidate``, ``stale-if-error``);
* RFC 9213 (targeted cache-control fields, ``CDN-Cache-Control``);
* RFC 9110 sections 13 (conditional requests) and 14 (range requests);
* RFC 9211 (the ``Cache-Status`` field).

Pure: stdlib, attrs and :mod:`accel.http` only; no I/O, and the clock is
never read here: every function that needs the time takes ``now`` (POSIX
seconds, as a float). Decisions are frozen values for the proxy to dispatch
on; see :data:`Decision`.
"""

from __future__ import annotations

import bisect
import enum
import functools
import math
import re
from typing import Literal
from urllib.parse import urljoin, urlsplit

from attrs import field, frozen
from attrs.validators import ge, gt

from accel.http.byteranges import Multipart, multipart_byteranges
from accel.http.dates import format_http_date, parse_http_date
from accel.http.fields import (
    DELTA_SECONDS_MAX,
    CacheControl,
    EntityTag,
    parse_age,
    parse_cache_control,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_targeted_cache_control,
    strong_match,
    weak_match,
)
from accel.http.headers import Headers, split_list

__all__ = [
    "DEFAULT_SETTINGS",
    "HEURISTIC_STATUSES",
    "MULTIPART_SLACK",
    "SAFE_METHODS",
    "STAR",
    "UNDERSTOOD_STATUSES",
    "UNSATISFIABLE",
    "Decision",
    "Forward",
    "Fresh",
    "NotStorable",
    "OnlyIfCachedMiss",
    "PolicySettings",
    "RangeAnswer",
    "Revalidate",
    "ServeStale",
    "SingleRange",
    "StaleWhileRevalidate",
    "Star",
    "Storable",
    "StoredResponse",
    "Unsatisfiable",
    "Validated",
    "age_header_value",
    "cache_status",
    "conditional_headers",
    "current_age",
    "decide",
    "decide_without_stored",
    "entity_tag",
    "evaluate_conditionals",
    "freshen",
    "freshness_lifetime",
    "if_range_allows",
    "invalidated_uris",
    "may_serve_stale_on_error",
    "modification_date",
    "modified_since_fails",
    "none_match_fails",
    "not_modified_headers",
    "parse_range",
    "range_answer",
    "request_cache_control",
    "response_cache_control",
    "secondary_key",
    "select_ranges",
    "selects_stored",
    "storable",
    "stored_headers",
    "vary_matches",
    "vary_names",
]

#: RFC 9110 section 15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUSES: frozenset[int] = frozenset(
    {200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501}
)

#: The final status codes whose semantics this cache implements, for
#: ``must-understand`` (RFC 9111 section 5.2.2.3): the RFC 9110 codes of
#: complete responses. 206 and 304 are handled apart and never stored.
UNDERSTOOD_STATUSES: frozenset[int] = frozenset(
    {200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308}
    | {400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413}
    | {414, 415, 416, 417, 421, 422, 426, 500, 501, 502, 503, 504, 505}
)

#: RFC 9110 section 9.2.1: methods defined as safe. Any other method,
#: including unknown ones, is unsafe for invalidation (RFC 9111 section 4.4).
SAFE_METHODS: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

#: Fields never stored (RFC 9111 section 3.1) beyond the hop-by-hop ones.
_NOT_STORED = (b"proxy-authentication-info",)
_NOT_STORED_SET = frozenset(_NOT_STORED)


def _lower_name(name: bytes | None) -> bytes | None:
    """Field names are matched lower-case (see :class:`accel.http.headers.Headers`)."""
    return name.lower() if name else None


@frozen
class PolicySettings:
    """What the operator may tune; the defaults are RFC 9111 for a shared cache.

    ``shared``
        A shared cache (RFC 9111 section 1): honours ``s-maxage`` and
        ``proxy-revalidate``, refuses ``private``. False makes a private one.
    ``heuristic_fraction``, ``heuristic_max``
        Heuristic freshness (section 4.2.2): this fraction of the time since
        ``Last-Modified``, capped at ``heuristic_max`` seconds.
    ``targeted_field``
        A targeted cache-control field for this cache alone (RFC 9213),
        consulted before ``CDN-Cache-Control``; ``None`` for none.
    ``honour_cdn_cache_control``
        Whether ``CDN-Cache-Control`` targets this cache (RFC 9213 section 3).
    ``honour_request_cache_control``
        Whether the client's ``max-age``, ``min-fresh``, ``max-stale``,
        ``no-cache`` and ``stale-if-error`` (and ``Pragma: no-cache``) are
        honoured. An accelerator may turn this off so that clients cannot
        make every request reach the origin; request ``no-store`` and
        ``only-if-cached`` are honoured regardless.
    ``cache_authorized``
        Store responses to requests with ``Authorization`` even without
        ``public``, ``s-maxage`` or ``must-revalidate`` (section 3.5): for
        an origin whose credentials do not change its content.
    ``store_set_cookie``
        Store responses that carry ``Set-Cookie``. HTTP allows it (the field
        does not inhibit caching), but sharing one client's cookie with all
        is rarely intended, so the default refuses.
    ``stale_if_error_default``
        Seconds of staleness for which a stored response may stand in for an
        origin that failed, when the response itself did not say
        ``stale-if-error`` (like nginx's ``proxy_cache_use_stale``). Never
        overrides ``must-revalidate`` and the other prohibitions.
    ``cacheable_statuses``
        The heuristically cacheable status codes (RFC 9110 section 15.1).
    ``max_tags``
        At most this many purge tags are kept per response.
    """

    shared: bool = True
    heuristic_fraction: float = field(default=0.1, validator=ge(0.0))
    heuristic_max: float = field(default=86400.0, validator=ge(0.0))
    targeted_field: bytes | None = field(default=b"accel-cache-control", converter=_lower_name)
    honour_cdn_cache_control: bool = True
    honour_request_cache_control: bool = True
    cache_authorized: bool = False
    store_set_cookie: bool = False
    stale_if_error_default: float = field(default=0.0, validator=ge(0.0))
    cacheable_statuses: frozenset[int] = field(default=HEURISTIC_STATUSES, converter=frozenset)
    max_tags: int = field(default=128, validator=gt(0))


DEFAULT_SETTINGS = PolicySettings()


# -- Directives: RFC 9111 section 5.2, RFC 9213, RFC 9111 section 5.4 --------


def _response_control(headers: Headers, settings: PolicySettings) -> tuple[CacheControl, bool]:
    """The directives that govern this cache, and whether a targeted field gave them.

    RFC 9213 section 2.1: the first targeted field in the target list with a
    valid, non-empty value is used, and ``Cache-Control`` and ``Expires`` are
    then ignored; otherwise ``Cache-Control`` applies.
    """
    targets: list[bytes] = []
    if settings.targeted_field:
        targets.append(settings.targeted_field)
    if settings.honour_cdn_cache_control:
        targets.append(b"cdn-cache-control")
    for name in targets:
        lines = headers.get_all(name)
        if lines:
            targeted = parse_targeted_cache_control(lines)
            if targeted is not None:
                return targeted, True
    return parse_cache_control(headers.get_all(b"cache-control")), False


def response_cache_control(
    headers: Headers, settings: PolicySettings = DEFAULT_SETTINGS
) -> CacheControl:
    """The response directives this cache obeys: a targeted field's, or Cache-Control's.

    RFC 9213 section 2.1; see :class:`PolicySettings` for the target list.
    """
    return _response_control(headers, settings)[0]


def request_cache_control(
    headers: Headers, settings: PolicySettings = DEFAULT_SETTINGS
) -> CacheControl:
    """The request directives this cache obeys (RFC 9111 section 5.2.1).

    ``Pragma: no-cache`` counts as ``Cache-Control: no-cache`` only when the
    request has no ``Cache-Control`` (RFC 9111 section 5.4, RFC 7234 5.4).
    With ``honour_request_cache_control`` off, only ``no-store`` and
    ``only-if-cached`` are kept.
    """
    cc = parse_cache_control(headers.get_all(b"cache-control"))
    if not cc.present and any(p.lower() == b"no-cache" for p in headers.get_list(b"pragma")):
        cc = CacheControl(present=True, no_cache=True)
    if not settings.honour_request_cache_control:
        cc = CacheControl(present=cc.present, no_store=cc.no_store, only_if_cached=cc.only_if_cached)
    return cc


# -- Dates ---------------------------------------------------------------------


def _single_date(headers: Headers, name: bytes) -> float | None:
    """A date field's value; ``None`` if absent, invalid, or repeated with different values."""
    return _one_date(headers.get_all(name))


def _one_date(lines: list[bytes]) -> float | None:
    """The date of a field's ``lines``; ``None`` if none, invalid, or different."""
    if not lines or any(line != lines[0] for line in lines):
        return None
    return parse_http_date(lines[0])


def _date_value(headers: Headers, response_time: float) -> float:
    """The ``Date`` of a response, or when it was received if it has no valid one.

    RFC 9110 section 6.6.1: a recipient of a response without ``Date``
    records the time it was received as its date.
    """
    date = _single_date(headers, b"date")
    return response_time if date is None else date


# -- Freshness: RFC 9111 section 4.2 ------------------------------------------------


def _lifetime(
    cc: CacheControl,
    targeted: bool,
    headers: Headers,
    status: int,
    settings: PolicySettings,
    response_time: float,
) -> tuple[float, bool]:
    """(freshness lifetime, whether heuristic); RFC 9111 sections 4.2.1 and 4.2.2."""
    if settings.shared and cc.s_maxage is not None:
        return float(cc.s_maxage), False
    if cc.max_age is not None:
        return float(cc.max_age), False
    if not targeted and b"expires" in headers:
        expires = _single_date(headers, b"expires")
        if expires is None:
            return 0.0, False  # section 5.3: an invalid Expires is in the past
        return max(0.0, expires - _date_value(headers, response_time)), False
    if status in settings.cacheable_statuses or cc.public:
        last_modified = _single_date(headers, b"last-modified")
        date = _date_value(headers, response_time)
        if last_modified is not None and last_modified < date:
            heuristic = settings.heuristic_fraction * (date - last_modified)
            return min(heuristic, settings.heuristic_max), True
    return 0.0, False


def freshness_lifetime(
    headers: Headers,
    status: int,
    response_time: float,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> float:
    """A response's freshness lifetime in seconds (RFC 9111 section 4.2.1).

    The first that applies: ``s-maxage`` (shared cache), ``max-age``,
    ``Expires`` minus ``Date`` (both ignored when a targeted field governs,
    RFC 9213 section 2.1; an invalid ``Expires`` means already expired,
    section 5.3), then the heuristic of section 4.2.2 for a heuristically
    cacheable status or a ``public`` response with a ``Last-Modified``: a
    fraction of ``Date - Last-Modified``, capped. ``response_time`` stands in
    for a missing or invalid ``Date``.
    """
    cc, targeted = _response_control(headers, settings)
    return _lifetime(cc, targeted, headers, status, settings, response_time)[0]


def current_age(
    headers: Headers, request_time: float, response_time: float, now: float
) -> float:
    """The current age of a stored response in seconds (RFC 9111 section 4.2.3).

    ``request_time`` is when the cache sent the request that produced the
    response, ``response_time`` when the response arrived; both are the
    cache's clock, as is ``now``::

        apparent_age = max(0, response_time - date_value)
        response_delay = response_time - request_time
        corrected_age_value = age_value + response_delay
        corrected_initial_age = max(apparent_age, corrected_age_value)
        resident_time = now - response_time
        current_age = corrected_initial_age + resident_time

    A missing ``Date`` is taken as ``response_time`` and an invalid ``Age``
    as 0 (section 5.1). The two time differences are floored at 0 so that a
    clock stepping backwards never makes a response younger than it was.
    """
    age_value = parse_age(headers.get_all(b"age")) or 0
    apparent_age = max(0.0, response_time - _date_value(headers, response_time))
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = age_value + response_delay
    corrected_initial_age = max(apparent_age, corrected_age_value)
    resident_time = max(0.0, now - response_time)
    return corrected_initial_age + resident_time


def age_header_value(age: float) -> bytes:
    """The ``Age`` field value for ``age`` seconds (RFC 9111 section 5.1).

    Whole seconds, rounded down, capped at 2147483648 as the RFC asks of a
    cache that cannot represent more.
    """
    return b"%d" % min(max(0, math.floor(age)), DELTA_SECONDS_MAX)


# -- Vary: RFC 9111 section 4.1 ------------------------------------------------------


class Star(enum.Enum):
    """The type of :data:`STAR`."""

    STAR = "*"


#: ``Vary: *``: the response can never be selected by another request.
STAR = Star.STAR

#: Request fields whose values are case-insensitive lists of ``token;params``
#: (RFC 9110 section 12.5), which can safely be normalised further.
_CASE_INSENSITIVE = frozenset({b"accept-encoding", b"accept-language", b"accept-charset"})
_PARAM_SPACE = re.compile(rb"[ \t]*([;=])[ \t]*")


def vary_names(headers: Headers) -> tuple[bytes, ...] | Literal[Star.STAR]:
    """The request fields a response varies on, sorted and lower-case, or :data:`STAR`.

    RFC 9111 section 4.1; a ``*`` anywhere in any line wins (``Vary: Foo, *``).
    """
    lines = headers.get_all(b"vary")
    if not lines:
        return ()
    names = {name.lower() for name in split_list(lines)}
    if b"*" in names:
        return STAR
    return tuple(sorted(names))


def _normalise(name: bytes, lines: list[bytes]) -> bytes:
    """A canonical form of one selecting field's value (RFC 9111 section 4.1).

    Lines are combined and list elements re-joined with a bare comma, which
    erases the whitespace around commas and empty elements; values of the
    case-insensitive ``Accept-*`` fields are also lower-cased, with the
    whitespace around ``;`` and ``=`` removed.
    """
    elements = split_list(lines)
    if name in _CASE_INSENSITIVE:
        elements = [_PARAM_SPACE.sub(rb"\1", e.lower()) for e in elements]
    return b",".join(elements)


def secondary_key(names: tuple[bytes, ...], request_headers: Headers) -> bytes:
    """A deterministic encoding of the request fields a response varies on.

    RFC 9111 section 4.1: two requests get the same key exactly when their
    nominated fields match after normalisation (see :func:`_normalise`). An
    absent field is distinct from an empty one. The encoding is
    length-prefixed, hence unambiguous; ``b""`` when ``names`` is empty.
    """
    out = bytearray()
    for name in names:
        out += b"%d:%s" % (len(name), name)
        lines = request_headers.get_all(name)
        if not lines:
            out += b"!"
        else:
            value = _normalise(name, lines)
            out += b"=%d:%s" % (len(value), value)
    return bytes(out)


def vary_matches(
    stored_response_headers: Headers, stored_key: bytes, request_headers: Headers
) -> bool:
    """Whether a stored response may be selected for this request (RFC 9111 section 4.1).

    ``stored_key`` is the :func:`secondary_key` computed from the request
    that produced the stored response. ``Vary: *`` never matches.
    """
    names = vary_names(stored_response_headers)
    if names is STAR:
        return False
    return secondary_key(names, request_headers) == stored_key


# -- Storing: RFC 9111 section 3 ----------------------------------------------------------


@frozen
class Storable:
    """The response may be stored; what the store needs to know about it.

    ``lifetime``: freshness lifetime in seconds when received (section 4.2.1),
    ``heuristic`` if it came from section 4.2.2. ``strip_fields``: fields to
    drop before storing (qualified ``no-cache`` and, in a shared cache,
    qualified ``private``; sections 5.2.2.4 and 5.2.2.7); use
    :func:`stored_headers`. ``vary``: the sorted request field names it
    varies on (section 4.1). ``tags``: purge tags from ``Surrogate-Key``
    (space-separated) and ``Cache-Tag`` (comma-separated). ``stale_window``:
    seconds past ``lifetime`` for which the response may still be served
    without the origin (``stale-while-revalidate``, ``stale-if-error`` or the
    operator's default; 0 when serving stale is prohibited).
    ``has_validator``: an ``ETag`` or ``Last-Modified`` lets it be revalidated
    after that.
    """

    lifetime: float
    heuristic: bool
    strip_fields: tuple[bytes, ...]
    vary: tuple[bytes, ...]
    tags: tuple[bytes, ...]
    stale_window: float
    has_validator: bool


@frozen
class NotStorable:
    """The response must not (or need not) be stored; ``reason`` says why."""

    reason: str


def _stale_prohibited(cc: CacheControl, settings: PolicySettings) -> bool:
    """RFC 9111 section 4.2.4: directives that forbid serving this response stale.

    ``must-revalidate`` (5.2.2.2), unqualified ``no-cache`` (5.2.2.4) and, in
    a shared cache, ``proxy-revalidate`` (5.2.2.8) and ``s-maxage``, which
    implies it (5.2.2.10).
    """
    return (
        cc.must_revalidate
        or (cc.no_cache and not cc.no_cache_fields)
        or (settings.shared and (cc.proxy_revalidate or cc.s_maxage is not None))
    )


def _tags(headers: Headers, limit: int) -> tuple[bytes, ...]:
    """Purge tags: ``Surrogate-Key`` is space-separated, ``Cache-Tag`` comma-separated."""
    tags: dict[bytes, None] = {}
    for line in headers.get_all(b"surrogate-key"):
        for tag in line.split():
            tags[tag] = None
    for tag in headers.get_list(b"cache-tag"):
        tags[tag] = None
    return tuple(tags)[:limit]


def storable(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    response_time: float,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> Storable | NotStorable:
    """Whether a shared cache may store a response (RFC 9111 section 3).

    In order: the method is GET (HEAD responses do not replace GET ones,
    and POST responses are not reused here); the status is final and not
    206 (only complete responses are stored) or 304; the request has no
    ``no-store`` (5.2.1.5); ``must-understand`` requires an understood status
    (and then overrides ``no-store``, 5.2.2.3), otherwise ``no-store``
    forbids (5.2.2.5); unqualified ``private`` forbids in a shared cache
    (5.2.2.7); a request with ``Authorization`` needs ``public``,
    ``s-maxage`` or ``must-revalidate`` (3.5); ``Vary: *`` can never be
    reused (4.1); ``Set-Cookie`` per :class:`PolicySettings`. Then the
    response needs explicit freshness, ``public``, or a heuristically
    cacheable status (3); and one with no freshness, no validator and no
    stale allowance is refused as useless to store. ``response_time``
    (when the response arrived) stands in for a missing ``Date``.

    The caller also must not store an incomplete response (3.3).
    """
    if method != b"GET":
        return NotStorable("method")
    if status < 200 or status > 999:
        return NotStorable("status not final")
    if status == 206:
        return NotStorable("partial content")
    if status == 304:
        return NotStorable("not modified")
    if parse_cache_control(request_headers.get_all(b"cache-control")).no_store:
        return NotStorable("request no-store")
    cc, targeted = _response_control(response_headers, settings)
    if cc.must_understand:
        if status not in UNDERSTOOD_STATUSES:
            return NotStorable("must-understand: status not understood")
    elif cc.no_store:
        return NotStorable("no-store")
    if settings.shared and cc.private and not cc.private_fields:
        return NotStorable("private")
    if (
        settings.shared
        and b"authorization" in request_headers
        and not settings.cache_authorized
        and not (cc.public or cc.s_maxage is not None or cc.must_revalidate)
    ):
        return NotStorable("authorization")
    vary = vary_names(response_headers)
    if vary is STAR:
        return NotStorable("vary: *")
    if b"set-cookie" in response_headers and not settings.store_set_cookie:
        return NotStorable("set-cookie")
    explicit = (
        cc.max_age is not None
        or (settings.shared and cc.s_maxage is not None)
        or (not targeted and b"expires" in response_headers)
    )
    if not (explicit or cc.public or status in settings.cacheable_statuses):
        return NotStorable("no explicit freshness and status not heuristically cacheable")
    lifetime, heuristic = _lifetime(
        cc, targeted, response_headers, status, settings, response_time
    )
    has_validator = b"etag" in response_headers or b"last-modified" in response_headers
    stale_window = 0.0
    if not _stale_prohibited(cc, settings):
        stale_window = float(
            max(
                cc.stale_while_revalidate or 0,
                cc.stale_if_error or 0,
                settings.stale_if_error_default,
            )
        )
    if lifetime <= 0 and not has_validator and stale_window <= 0:
        return NotStorable("no freshness, no validator: nothing to reuse")
    strip = cc.no_cache_fields + (cc.private_fields if settings.shared else ())
    return Storable(
        lifetime=lifetime,
        heuristic=heuristic,
        strip_fields=tuple(dict.fromkeys(strip)),
        vary=vary,
        tags=_tags(response_headers, settings.max_tags),
        stale_window=stale_window,
        has_validator=has_validator,
    )


def stored_headers(response_headers: Headers, entry: Storable, response_time: float) -> Headers:
    """The header section to store for a :class:`Storable` response.

    RFC 9111 section 3.1: hop-by-hop fields, those ``Connection`` names,
    ``Proxy-Authentication-Info`` and the fields in ``entry.strip_fields``
    are left out. A missing ``Date`` is added as ``response_time`` (RFC 9110
    section 6.6.1), so that the stored response's age stays computable.
    """
    out = response_headers.without_hop_by_hop()
    if entry.strip_fields:
        out.remove(*_NOT_STORED, *entry.strip_fields)
    else:
        out.discard(_NOT_STORED_SET)
    if b"date" not in out:
        out.add(b"date", _date_field(math.floor(response_time)))
    return out


@functools.lru_cache(maxsize=4)
def _date_field(second: int) -> bytes:
    """:func:`~accel.http.dates.format_http_date` of a whole second, remembered:
    the responses stored during one second without a ``Date`` all get this one."""
    return format_http_date(second)


# -- Reuse: RFC 9111 section 4 ---------------------------------------------------------


@frozen
class StoredResponse:
    """A stored response as the policy sees it: no body, no key.

    ``request_time``/``response_time`` are the cache's clock when the request
    that produced it was sent and when its header section arrived (or when
    it was last freshened by a 304, RFC 9111 section 4.3.4).
    """

    status: int
    headers: Headers
    request_time: float
    response_time: float


@frozen
class Fresh:
    """Serve the stored response as is: it is fresh enough (RFC 9111 section 4.2).

    ``age`` goes in the ``Age`` field (section 5.1, :func:`age_header_value`);
    ``ttl`` is the remaining freshness in seconds (``Cache-Status: ttl``).
    """

    age: float
    ttl: float


@frozen
class ServeStale:
    """Serve the stale stored response: the client's ``max-stale`` allows it.

    RFC 9111 section 5.2.1.2; ``ttl`` is negative (how stale it is).
    """

    age: float
    ttl: float


@frozen
class StaleWhileRevalidate:
    """Serve the stale stored response now and revalidate it in the background.

    RFC 5861 section 3. ``conditional`` holds the validators for the
    background request (see :class:`Revalidate`).
    """

    age: float
    ttl: float
    conditional: Headers


@frozen
class Revalidate:
    """Forward the request with ``conditional`` added, then act on the answer.

    RFC 9111 section 4.3. ``conditional`` is :func:`conditional_headers` of
    the stored response; it is empty when the response has no validator, and
    the request is then effectively unconditional. On a 304, update the
    stored response with :func:`freshen` (if :func:`selects_stored`); on a
    full response, replace it. The client's own conditional fields are
    evaluated by the cache afterwards, not forwarded in place of these.
    ``stale_on_error``: whether the stored response may be served if the
    origin fails (RFC 9111 section 4.2.4, RFC 5861 section 4); see
    :func:`may_serve_stale_on_error`. ``reason`` is for logs and
    ``Cache-Status`` detail.
    """

    conditional: Headers
    stale_on_error: bool
    reason: str


@frozen
class Forward:
    """Forward the request as is; the stored response cannot serve it."""

    reason: str


@frozen
class OnlyIfCachedMiss:
    """Answer 504 without contacting the origin (RFC 9111 section 5.2.1.7)."""

    reason: str


#: What :func:`decide` returns; dispatch on it exhaustively.
@frozen
class Validated:
    """Serve the stored response: it was validated after the request arrived.

    The request would otherwise be validated (RFC 9111 section 4.3), but
    the stored response is already as current as that validation would
    make it: it was received, or freshened by a 304, after the request
    arrived, by a fetch that this request waited for (request collapsing)
    or that another worker made meanwhile (see :func:`decide` for the
    request's own directives). Validating again would send the same
    conditional request and serve the same stored response. ``reason`` is
    why it would have been validated.
    """

    age: float
    ttl: float
    reason: str


Decision = Fresh | ServeStale | StaleWhileRevalidate | Revalidate | Validated | Forward | OnlyIfCachedMiss


_MISS = Forward("miss")


def decide_without_stored(
    request_headers: Headers, settings: PolicySettings = DEFAULT_SETTINGS
) -> Forward | OnlyIfCachedMiss:
    """The decision when no stored response matches (RFC 9111 sections 4 and 5.2.1.7).

    Only ``Cache-Control`` can say ``only-if-cached`` (``Pragma`` means
    ``no-cache`` at most): without it, nothing needs parsing, which is every
    pass-through request of a typical client.
    """
    if (
        b"cache-control" in request_headers
        and request_cache_control(request_headers, settings).only_if_cached
    ):
        return OnlyIfCachedMiss("only-if-cached and nothing stored")
    return _MISS


def decide(
    method: bytes,
    request_headers: Headers,
    stored: StoredResponse,
    now: float,
    settings: PolicySettings = DEFAULT_SETTINGS,
    received_at: float | None = None,
) -> Decision:
    """How to answer a request given a stored response that it selects (RFC 9111 section 4).

    The caller has already matched the URI and :func:`vary_matches`. A
    stored GET response serves GET and HEAD; any other method is forwarded.
    Then, in order:

    * unqualified response ``no-cache`` (5.2.2.4) and request ``no-cache``
      (5.2.1.4) always revalidate; a response with qualified ``no-cache`` was
      stored without the named fields and is otherwise reusable;
    * request ``max-age`` revalidates a response older than it (5.2.1.1),
      request ``min-fresh`` one fresh for less than it (5.2.1.3);
    * a fresh response is served (4.2);
    * a stale one revalidates if ``must-revalidate``, ``proxy-revalidate``
      or ``s-maxage`` forbid serving it stale (4.2.4), whatever the client
      or ``stale-if-error`` say; otherwise it is served if within the
      client's ``max-stale`` (5.2.1.2), served while revalidating if within
      ``stale-while-revalidate`` (RFC 5861 section 3), and else revalidated.

    With request ``only-if-cached`` (5.2.1.7), any decision that would
    contact the origin becomes :class:`OnlyIfCachedMiss`.

    ``received_at`` is when the request arrived. A response that would be
    revalidated is :class:`Validated` instead when that validation already
    happened for this request: for the response's own reasons (``no-cache``,
    stale), when it was received or freshened after the request arrived
    (``stored.response_time > received_at``: collapsed requests share the
    validation they waited for); for the request's (``no-cache``,
    ``max-age``, ``min-fresh``), only when the origin was asked after the
    request arrived (``stored.request_time > received_at``).
    """
    req = request_cache_control(request_headers, settings)
    decision = _decide(method, req, request_headers, stored, now, settings, received_at)
    if req.only_if_cached and isinstance(decision, (Revalidate, Forward)):
        return OnlyIfCachedMiss(f"only-if-cached: {decision.reason}")
    return decision


def _decide(
    method: bytes,
    req: CacheControl,
    request_headers: Headers,
    stored: StoredResponse,
    now: float,
    settings: PolicySettings,
    received_at: float | None,
) -> Decision:
    if method not in (b"GET", b"HEAD"):
        return Forward("method")
    cc, targeted = _response_control(stored.headers, settings)
    lifetime, _ = _lifetime(
        cc, targeted, stored.headers, stored.status, settings, stored.response_time
    )
    age = current_age(stored.headers, stored.request_time, stored.response_time, now)
    ttl = lifetime - age

    def revalidate(reason: str) -> Revalidate | Validated:
        if received_at is not None:
            # What the client asks for needs the origin asked after the
            # request arrived; what the response asks for, a validation
            # completed after it (one shared by concurrent requests).
            client = (
                req.no_cache
                or (req.max_age is not None and age > req.max_age)
                or (req.min_fresh is not None and ttl < req.min_fresh)
            )
            if (stored.request_time if client else stored.response_time) > received_at:
                return Validated(age, ttl, reason)
        on_error = _stale_on_error(cc, req, lifetime, age, settings)
        return Revalidate(conditional_headers(stored.headers), on_error, reason)

    if cc.no_cache and not cc.no_cache_fields:
        return revalidate("response no-cache")
    if req.no_cache:
        return revalidate("request no-cache")
    if req.max_age is not None and age > req.max_age:
        return revalidate("request max-age")
    if req.min_fresh is not None and ttl < req.min_fresh:
        return revalidate("request min-fresh")
    if ttl > 0:
        return Fresh(age, ttl)
    if _stale_prohibited(cc, settings):
        return revalidate("stale, must revalidate")
    staleness = -ttl
    if req.max_stale is not None and staleness <= req.max_stale:
        return ServeStale(age, ttl)
    if cc.stale_while_revalidate is not None and staleness <= cc.stale_while_revalidate:
        return StaleWhileRevalidate(age, ttl, conditional_headers(stored.headers))
    return revalidate("stale")


def _stale_on_error(
    cc: CacheControl, req: CacheControl, lifetime: float, age: float, settings: PolicySettings
) -> bool:
    """See :func:`may_serve_stale_on_error`."""
    if cc.no_cache and not cc.no_cache_fields:
        return False
    staleness = age - lifetime
    if staleness < 0:
        return True
    if _stale_prohibited(cc, settings):
        return False
    window = max(
        settings.stale_if_error_default,
        cc.stale_if_error or 0,
        req.stale_if_error or 0,
        req.max_stale or 0,
    )
    return window > 0 and staleness <= window


def may_serve_stale_on_error(
    request_headers: Headers,
    stored: StoredResponse,
    now: float,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> bool:
    """Whether the stored response may answer a request whose origin fetch failed.

    "Failed" means the origin could not be reached or answered 500, 502,
    503 or 504 (RFC 5861 section 4). A response that is still fresh may be
    served, unless it has unqualified ``no-cache``. A stale one may be
    served within the largest of the response's ``stale-if-error``, the
    request's ``stale-if-error`` or ``max-stale``, and the operator's
    ``stale_if_error_default``, unless ``must-revalidate``,
    ``proxy-revalidate``, ``s-maxage`` or ``no-cache`` prohibit serving it
    stale (RFC 9111 section 4.2.4).
    """
    cc, targeted = _response_control(stored.headers, settings)
    req = request_cache_control(request_headers, settings)
    lifetime, _ = _lifetime(
        cc, targeted, stored.headers, stored.status, settings, stored.response_time
    )
    age = current_age(stored.headers, stored.request_time, stored.response_time, now)
    return _stale_on_error(cc, req, lifetime, age, settings)


# -- Validation: RFC 9111 section 4.3 ----------------------------------------------


def entity_tag(headers: Headers) -> EntityTag | None:
    """A response's entity tag (RFC 9110 section 8.8.3): its first ``ETag`` line, if any."""
    lines = headers.get_all(b"etag")
    return parse_entity_tag(lines[0]) if lines else None


def conditional_headers(stored_headers: Headers) -> Headers:
    """The validators to send when revalidating a stored response (RFC 9111 section 4.3.1).

    ``If-None-Match`` with its entity tag (quoted if the origin sent it
    unquoted) and ``If-Modified-Since`` with its ``Last-Modified``, exactly
    as received; never with its ``Date``. Empty if it has neither.
    """
    out = Headers()
    raw = stored_headers.get_all(b"etag")
    if raw:
        tag = parse_entity_tag(raw[0])
        out.add(b"if-none-match", raw[0] if b'"' in tag.opaque else tag.to_bytes())
    last_modified = stored_headers.get_all(b"last-modified")
    if last_modified and parse_http_date(last_modified[0]) is not None:
        out.add(b"if-modified-since", last_modified[0])
    return out


def selects_stored(stored_headers: Headers, new_headers: Headers) -> bool:
    """Whether a 304 answer to our conditional request updates this stored response.

    RFC 9111 section 4.3.4: a strong entity tag in the 304 selects a stored
    response with the same strong tag; a weak one, a stored response whose
    tag matches weakly; failing an entity tag, a ``Last-Modified`` selects a
    stored response with the same date. A 304 with no validator at all is
    taken to confirm the response we validated: only one is validated at a
    time here, and we sent its validators.
    """
    new_tag = entity_tag(new_headers)
    if new_tag is not None:
        old_tag = entity_tag(stored_headers)
        if old_tag is None:
            return False
        return strong_match(new_tag, old_tag) if not new_tag.weak else weak_match(new_tag, old_tag)
    if b"last-modified" in new_headers:
        new_lm = _single_date(new_headers, b"last-modified")
        return new_lm is not None and new_lm == _single_date(stored_headers, b"last-modified")
    return True


def freshen(
    stored_headers: Headers,
    new_headers: Headers,
    response_time: float,
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> Headers:
    """The stored header section updated from a 304 (RFC 9111 sections 3.2 and 4.3.4).

    Every field in the 304 replaces the stored lines of the same name (in
    place of the first, the rest appended), except ``Content-Length`` and
    the fields a cache never stores (section 3.1: hop-by-hop, those named by
    ``Connection``, ``Proxy-Authentication-Info``). Fields the new
    directives exclude from storage (qualified ``no-cache``/``private``) are
    then removed. Other stored fields are kept. A 304 without ``Date`` counts
    as dated ``response_time`` (when it arrived, RFC 9110 section 6.6.1), so
    that the old ``Date`` does not age the freshened response; the caller
    also sets the entry's request and response times to the 304's.
    """
    incoming = new_headers.without_hop_by_hop()
    incoming.remove(b"content-length", *_NOT_STORED)
    if b"date" not in incoming:
        incoming.add(b"date", format_http_date(response_time))
    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for pair in incoming:
        by_name.setdefault(pair[0], []).append(pair)
    out: list[tuple[bytes, bytes]] = []
    placed: set[bytes] = set()
    for pair in stored_headers:
        name = pair[0]
        if name not in by_name:
            out.append(pair)
        elif name not in placed:
            out.extend(by_name[name])
            placed.add(name)
    for name, pairs in by_name.items():
        if name not in placed:
            out.extend(pairs)
    result = Headers(out)
    cc = response_cache_control(result, settings)
    strip = cc.no_cache_fields + (cc.private_fields if settings.shared else ())
    if strip:
        result.remove(*strip)
    return result


# -- Invalidation: RFC 9111 section 4.4 ----------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_of(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with defaults applied, for same-origin checks (RFC 6454)."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    scheme = scheme.lower()
    return scheme, (parts.hostname or ""), port if port is not None else _DEFAULT_PORTS.get(scheme)


def invalidated_uris(
    method: bytes,
    status: int,
    request_uri: bytes,
    response_headers: Headers,
    origin: tuple[bytes, bytes],
) -> list[bytes]:
    """The URIs whose stored responses an unsafe request invalidates (RFC 9111 section 4.4).

    After a non-error (2xx or 3xx) response to an unsafe method (any
    method but GET, HEAD, OPTIONS and TRACE, unknown ones included), the
    target URI, and the ``Location`` and ``Content-Location`` references
    when they resolve (RFC 3986 section 5) to the same origin. URIs are
    returned in origin-form (``/path?query``, no fragment), the form of
    ``request_uri``; ``origin`` is the target's ``(scheme, authority)``.
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    out = [request_uri]
    scheme, authority = (part.decode("latin-1") for part in origin)
    base = f"{scheme}://{authority}{request_uri.decode('latin-1')}"
    own = _origin_of(scheme, authority)
    for name in (b"location", b"content-location"):
        lines = response_headers.get_all(name)
        if len(lines) != 1:
            continue
        target = urlsplit(urljoin(base, lines[0].strip(b" \t").decode("latin-1")))
        if own is None or _origin_of(target.scheme, target.netloc) != own:
            continue
        uri = (target.path or "/") + (f"?{target.query}" if target.query else "")
        encoded = uri.encode("latin-1")
        if encoded not in out:
            out.append(encoded)
    return out


# -- Conditional requests answered by the cache: RFC 9110 section 13 -------------------


def evaluate_conditionals(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    response_time: float,
) -> Literal[304, 412] | None:
    """Evaluate a request's preconditions against the response the cache selected.

    RFC 9110 section 13.2.2, in its order: ``If-Match`` (strong comparison;
    false gives 412), else ``If-Unmodified-Since`` (412 if modified since);
    then ``If-None-Match`` (weak comparison; a match gives 304 for GET/HEAD,
    412 otherwise), else ``If-Modified-Since`` (GET/HEAD only; 304 if not
    modified since). ``None`` means: send the selected response. As a
    gateway, this cache evaluates them all, as an origin would (RFC 9110
    section 3.7). Preconditions are ignored unless the response is 2xx
    (section 13.2.1). Without ``Last-Modified``, ``If-Modified-Since`` is
    evaluated against ``Date``, or else ``response_time`` (RFC 9111 4.3.2).
    ``If-Range`` is :func:`if_range_allows`.
    """
    if not 200 <= status < 300:
        return None
    # The response's validators are read only for a precondition that
    # compares with them: most requests have none.
    if b"if-match" in request_headers:
        tags = parse_entity_tag_list(request_headers.get_all(b"if-match"))
        if tags is not None:
            etag = entity_tag(response_headers)
            if etag is None or not any(strong_match(t, etag) for t in tags):
                return 412
    elif b"if-unmodified-since" in request_headers:
        since = _single_date(request_headers, b"if-unmodified-since")
        if since is not None:
            last_modified = _single_date(response_headers, b"last-modified")
            if last_modified is not None and last_modified > since:
                return 412
    if b"if-none-match" in request_headers:
        if none_match_fails(request_headers.get_all(b"if-none-match"), entity_tag(response_headers)):
            return 304 if method in (b"GET", b"HEAD") else 412
    elif b"if-modified-since" in request_headers and method in (b"GET", b"HEAD"):
        modified = _single_date(response_headers, b"last-modified")
        if modified is None:
            modified = _date_value(response_headers, response_time)
        if modified_since_fails(request_headers.get_all(b"if-modified-since"), modified):
            return 304
    return None


def none_match_fails(lines: list[bytes], etag: EntityTag | None) -> bool:
    """Whether ``If-None-Match`` field ``lines`` evaluate to false for a
    representation with entity tag ``etag`` (``None``: it has none).

    RFC 9110 section 13.1.2: false for ``*`` (the cache has a current
    representation) and when a listed tag matches ``etag`` by the weak
    comparison (section 8.8.3.2).
    """
    tags = parse_entity_tag_list(lines)
    return tags is None or (etag is not None and any(weak_match(t, etag) for t in tags))


def modified_since_fails(lines: list[bytes], modified: float) -> bool:
    """Whether ``If-Modified-Since`` field ``lines`` evaluate to false for a
    representation last modified at ``modified`` (:func:`modification_date`).

    RFC 9110 section 13.1.3: false when ``modified`` is no later than the
    field's date; an invalid date (or lines that differ) is ignored: true.
    """
    since = _one_date(lines)
    return since is not None and modified <= since


def modification_date(headers: Headers, response_time: float) -> float:
    """What ``If-Modified-Since`` is compared with for a stored response.

    Its ``Last-Modified``; without one, its ``Date``, or else when it was
    received (RFC 9110 section 6.6.1, RFC 9111 section 4.3.2).
    """
    last_modified = _single_date(headers, b"last-modified")
    return _date_value(headers, response_time) if last_modified is None else last_modified


#: RFC 9110 section 15.4.5: what a 304 carries from the 200 it stands for.
_NOT_MODIFIED_FIELDS = (
    b"cache-control",
    b"content-location",
    b"date",
    b"etag",
    b"expires",
    b"vary",
)


def not_modified_headers(stored_headers: Headers) -> Headers:
    """The header section of a 304 generated from a stored response.

    RFC 9110 section 15.4.5: ``Cache-Control``, ``Content-Location``,
    ``Date``, ``ETag``, ``Expires`` and ``Vary`` as the 200 would have them,
    plus ``Last-Modified`` when there is no ``ETag``. The caller adds ``Age``.
    """
    keep = set(_NOT_MODIFIED_FIELDS)
    if b"etag" not in stored_headers:
        keep.add(b"last-modified")
    return Headers([pair for pair in stored_headers if pair[0] in keep])


# -- Range requests: RFC 9110 section 14 ----------------------------------------------


class Unsatisfiable(enum.Enum):
    """The type of :data:`UNSATISFIABLE`."""

    UNSATISFIABLE = "unsatisfiable"


#: No range of the request overlaps the representation: answer 416 with
#: ``Content-Range: bytes */length`` (RFC 9110 section 15.5.17).
UNSATISFIABLE = Unsatisfiable.UNSATISFIABLE

_DIGITS = frozenset(b"0123456789")


def _position(raw: bytes) -> int | None:
    """A byte position: ``1*DIGIT``; huge values saturate rather than overflow."""
    if not raw or not all(c in _DIGITS for c in raw):
        return None
    return int(raw) if len(raw) <= 18 else 10**18


def _requested_ranges(
    value: bytes, length: int, max_ranges: int
) -> list[tuple[int, int]] | Literal[Unsatisfiable.UNSATISFIABLE] | None:
    """The satisfiable ranges of a ``Range`` field as requested: in the
    field's order, clamped to ``length``, neither sorted nor coalesced.
    ``None`` and :data:`UNSATISFIABLE` as for :func:`parse_range`."""
    unit, eq, spec = value.partition(b"=")
    if not eq or unit.lower() != b"bytes":
        return None
    elements = [e.strip(b" \t") for e in spec.split(b",")]
    elements = [e for e in elements if e]
    if not elements or len(elements) > max_ranges:
        return None
    ranges: list[tuple[int, int]] = []
    suffix_of_empty = False
    for element in elements:
        first_raw, dash, last_raw = element.partition(b"-")
        if not dash:
            return None
        if not first_raw:
            suffix = _position(last_raw)
            if suffix is None:
                return None
            if suffix > 0:
                if length == 0:
                    suffix_of_empty = True
                else:
                    ranges.append((max(0, length - suffix), length - 1))
            continue
        first = _position(first_raw)
        if first is None:
            return None
        last = length - 1
        if last_raw:
            explicit_last = _position(last_raw)
            if explicit_last is None or explicit_last < first:
                return None
            last = min(explicit_last, length - 1)
        if first < length:
            ranges.append((first, last))
    if not ranges:
        return None if suffix_of_empty else UNSATISFIABLE
    return ranges


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``ranges`` sorted, with overlapping and adjacent ones merged."""
    ordered = sorted(ranges)
    merged = [ordered[0]]
    for first, last in ordered[1:]:
        prev_first, prev_last = merged[-1]
        if first <= prev_last + 1:
            merged[-1] = (prev_first, max(prev_last, last))
        else:
            merged.append((first, last))
    return merged


def parse_range(
    value: bytes, length: int, max_ranges: int = 100
) -> list[tuple[int, int]] | Literal[Unsatisfiable.UNSATISFIABLE] | None:
    """The byte ranges a ``Range`` field selects from ``length`` bytes (RFC 9110 section 14).

    Each range is ``(first, last)``, inclusive as in ``Content-Range``, with
    ``0 <= first <= last < length``. The ranges are sorted, and overlapping
    or adjacent ones coalesced (section 14.2 allows it, whatever the order
    requested). :func:`select_ranges` says which of them to send, in what
    order, or whether to send the whole instead.

    ``None`` means ignore the field and send the whole representation: a
    unit other than ``bytes`` (case-insensitive, section 14.1), a syntax
    error, ``last < first`` (section 14.1.1), more than ``max_ranges``
    ranges (section 14.2 lets a server ignore such abuse; ``0`` ignores
    every ``Range``), or a suffix range of an empty representation.
    :data:`UNSATISFIABLE` means no range overlaps the representation
    (section 14.1.1): 416.
    """
    ranges = _requested_ranges(value, length, max_ranges)
    if not isinstance(ranges, list):
        return ranges
    return _coalesce(ranges)


def select_ranges(
    value: bytes, length: int, max_ranges: int = 100
) -> list[tuple[int, int]] | Literal[Unsatisfiable.UNSATISFIABLE] | None:
    """The ranges to send for a ``Range`` field, in the order to send them.

    :func:`parse_range`'s ranges (coalesced, as RFC 9110 section 14.2 allows
    "regardless of the order in which the corresponding range-spec
    appeared"), but sent in the order in which they were first asked for:
    a multipart response "SHOULD send the parts in the same order that the
    corresponding range-spec appeared" (section 14.2), and a client may
    want the end of a file (its index) before the rest.

    Also ``None`` (send the whole) when the requested ranges add up to more
    than the representation before they are coalesced: heavily overlapping
    ranges are a sign of abuse (sections 14.2 and 17.15). This is nginx's
    rule; a single range never trips it.
    """
    requested = _requested_ranges(value, length, max_ranges)
    if not isinstance(requested, list):
        return requested
    if sum(last - first + 1 for first, last in requested) > length:
        return None
    merged = _coalesce(requested)
    if len(merged) == 1:
        return merged
    starts = [first for first, _ in merged]
    order: dict[int, None] = {}
    for first, _ in requested:
        order.setdefault(bisect.bisect_right(starts, first) - 1)
    return [merged[i] for i in order]


@frozen
class SingleRange:
    """Answer 206 with bytes ``first`` to ``last`` (inclusive) and a
    ``Content-Range`` field (RFC 9110 section 15.3.7.1)."""

    first: int
    last: int


#: How much larger than the whole representation a ``multipart/byteranges``
#: body may be. Beyond it, the whole is sent (200) instead: many small ranges
#: cost more in part headers than they save (RFC 9110 section 17.15), and
#: sending the whole is then cheaper for both sides. The slack keeps a few
#: ranges of a small object answered as asked.
MULTIPART_SLACK = 1024

#: How a stored response answers a request's ``Range``: ``None`` is the
#: whole representation (200), :data:`UNSATISFIABLE` is 416.
RangeAnswer = SingleRange | Multipart | Literal[Unsatisfiable.UNSATISFIABLE] | None


def range_answer(
    method: bytes,
    status: int,
    request_headers: Headers,
    response_headers: Headers,
    length: int,
    boundary: bytes,
    max_ranges: int = 100,
) -> RangeAnswer:
    """How to answer a request's ``Range`` from a complete response of ``length`` bytes.

    RFC 9110 section 14: only a GET's ``Range`` applies (section 14.2), only
    to a 200, and only when its ``If-Range`` holds (section 13.1.5,
    :func:`if_range_allows`); the ranges are :func:`select_ranges`'s. One
    range is a :class:`SingleRange`; several are a ``multipart/byteranges``
    body (section 14.6) delimited by ``boundary``, which the caller picks at
    random for each response. ``None``, the whole representation, also when:

    * the response has a ``Content-Encoding``: its parts would be fragments
      of encoded data under a multipart type that is not encoded, which
      clients that decode content codings cannot take apart;
    * the multipart body would be more than :data:`MULTIPART_SLACK` bytes
      larger than the whole representation.
    """
    value = request_headers.get(b"range")
    if value is None or method != b"GET" or status != 200:
        return None
    if_range = request_headers.get(b"if-range")
    if if_range is not None and not if_range_allows(if_range, response_headers):
        return None
    ranges = select_ranges(value, length, max_ranges)
    if ranges is None or ranges is UNSATISFIABLE:
        return ranges
    if len(ranges) == 1:
        return SingleRange(*ranges[0])
    coding = response_headers.get(b"content-encoding")
    if coding is not None and coding.strip(b" \t").lower() != b"identity":
        return None
    content_types = response_headers.get_all(b"content-type")
    # A singleton field (section 5.3): if it is repeated, the last one wins,
    # as most recipients read it.
    body = multipart_byteranges(
        ranges, length, content_types[-1] if content_types else None, boundary
    )
    if body.length > length + MULTIPART_SLACK:
        return None
    return body


def if_range_allows(if_range: bytes, response_headers: Headers) -> bool:
    """Whether an ``If-Range`` condition holds, so the ``Range`` applies (RFC 9110 13.1.5).

    An entity tag must match the response's ``ETag`` by strong comparison.
    An HTTP-date must equal its ``Last-Modified`` exactly, and that date must
    be a strong validator: at least 60 seconds before the response's
    ``Date`` (section 8.8.2.2). Anything else is false: send the whole
    representation with 200.
    """
    raw = if_range.strip(b" \t")
    if raw[:1] == b'"' or raw[:2] in (b"W/", b"w/"):
        etag = entity_tag(response_headers)
        return etag is not None and strong_match(parse_entity_tag(raw), etag)
    when = parse_http_date(raw)
    last_modified = _single_date(response_headers, b"last-modified")
    date = _single_date(response_headers, b"date")
    if when is None or last_modified is None or date is None:
        return False
    return when == last_modified and date - last_modified >= 60


# -- Cache-Status: RFC 9211 -----------------------------------------------------------------

#: RFC 9211 section 2.2: the registered values of ``fwd``.
_FWD_REASONS = frozenset(
    {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}
)
_SF_TOKEN = re.compile(rb"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z")


def _sf_string(value: bytes) -> bytes:
    """``value`` as a Structured Field String (RFC 8941 section 3.3.3).

    Characters a String cannot hold (controls, non-ASCII) are dropped.
    """
    printable = bytes(c for c in value if 0x20 <= c <= 0x7E)
    return b'"' + printable.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _sf_token_or_string(value: bytes) -> bytes:
    """``value`` as a Structured Field Token if it is one, else as a String."""
    return value if _SF_TOKEN.match(value) else _sf_string(value)


def cache_status(
    *,
    hit: bool = False,
    fwd: str | None = None,
    fwd_status: int | None = None,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool = False,
    key: bytes | None = None,
    detail: bytes | None = None,
    name: bytes = b"accel",
) -> bytes:
    """One ``Cache-Status`` list member for this cache (RFC 9211 section 2).

    For example ``accel; hit; ttl=42`` or
    ``accel; fwd=uri-miss; fwd-status=200; stored``. ``fwd`` must be one of
    the registered reasons (section 2.2); ``ttl`` is rounded down and may be
    negative for a stale response (section 2.5); ``name`` and ``detail`` are
    emitted as Tokens when they are, else as Strings.
    """
    params = [_sf_token_or_string(name)]
    if hit:
        params.append(b"hit")
    if fwd is not None:
        if fwd not in _FWD_REASONS:
            raise ValueError(f"fwd: expected one of {sorted(_FWD_REASONS)}, got {fwd!r}")
        params.append(b"fwd=" + fwd.encode("ascii"))
    if fwd_status is not None:
        params.append(b"fwd-status=%d" % fwd_status)
    if ttl is not None:
        params.append(b"ttl=%d" % math.floor(ttl))
    if stored:
        params.append(b"stored")
    if collapsed:
        params.append(b"collapsed")
    if key is not None:
        params.append(b"key=" + _sf_string(key))
    if detail is not None:
        params.append(b"detail=" + _sf_token_or_string(detail))
    return b"; ".join(params)


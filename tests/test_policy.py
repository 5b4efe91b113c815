"""Tests for accel.cache.policy, one class per RFC section."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from accel.cache.policy import (
    DEFAULT_SETTINGS,
    MULTIPART_SLACK,
    STAR,
    UNSATISFIABLE,
    Forward,
    Fresh,
    NotStorable,
    OnlyIfCachedMiss,
    PolicySettings,
    Revalidate,
    ServeStale,
    SingleRange,
    StaleWhileRevalidate,
    Storable,
    StoredResponse,
    Validated,
    age_header_value,
    cache_status,
    conditional_headers,
    current_age,
    decide,
    decide_without_stored,
    evaluate_conditionals,
    freshen,
    freshness_lifetime,
    if_range_allows,
    invalidated_uris,
    may_serve_stale_on_error,
    not_modified_headers,
    parse_range,
    range_answer,
    request_cache_control,
    response_cache_control,
    secondary_key,
    select_ranges,
    selects_stored,
    storable,
    stored_headers,
    vary_matches,
    vary_names,
)
from accel.http.byteranges import Multipart
from accel.http.dates import format_http_date, parse_http_date
from accel.http.headers import Headers

NOW = 1_700_000_000.0


def H(*pairs: tuple[bytes, bytes]) -> Headers:  # noqa: N802 (short, as the tables use it)
    return Headers.of(*pairs)


def date(offset: float = 0.0) -> bytes:
    """An IMF-fixdate ``offset`` seconds from NOW."""
    return format_http_date(NOW + offset)


def store(*pairs: tuple[bytes, bytes], status: int = 200, at: float = NOW) -> StoredResponse:
    """A stored response received at ``at``, with a Date of ``at`` unless given."""
    headers = H(*pairs)
    if b"date" not in headers:
        headers.add(b"date", format_http_date(at))
    return StoredResponse(status=status, headers=headers, request_time=at, response_time=at)


def check(
    *pairs: tuple[bytes, bytes],
    status: int = 200,
    request: Headers | None = None,
    method: bytes = b"GET",
    settings: PolicySettings = DEFAULT_SETTINGS,
) -> Storable | NotStorable:
    return storable(method, request or H(), status, H(*pairs), NOW, settings)


class TestStoring:
    """RFC 9111 section 3: storing responses in caches."""

    def test_max_age_is_storable(self) -> None:
        """A 200 with max-age is stored with that lifetime."""
        result = check((b"cache-control", b"max-age=60"))
        assert isinstance(result, Storable) and result.lifetime == 60 and not result.heuristic

    def test_only_get(self) -> None:
        """HEAD and POST responses are not stored."""
        for method in (b"HEAD", b"POST", b"PUT"):
            assert check((b"cache-control", b"max-age=60"), method=method) == NotStorable("method")

    def test_interim_status_not_stored(self) -> None:
        """1xx responses are not final."""
        assert isinstance(check((b"cache-control", b"max-age=60"), status=103), NotStorable)

    def test_partial_not_stored(self) -> None:
        """206 responses are not stored (only complete responses are)."""
        result = check((b"cache-control", b"max-age=60"), status=206)
        assert result == NotStorable("partial content")

    def test_304_not_stored(self) -> None:
        """A 304 is an update, not a response to store."""
        assert isinstance(check((b"cache-control", b"max-age=60"), status=304), NotStorable)

    def test_response_no_store(self) -> None:
        """no-store forbids storing, even with freshness."""
        result = check((b"cache-control", b"max-age=10000, No-StOrE"), (b"expires", date(10000)))
        assert result == NotStorable("no-store")

    def test_request_no_store(self) -> None:
        """A request no-store forbids storing its response (5.2.1.5)."""
        request = H((b"cache-control", b"no-store"))
        assert isinstance(check((b"cache-control", b"max-age=60"), request=request), NotStorable)

    def test_request_no_store_honoured_when_request_directives_are_not(self) -> None:
        """Request no-store holds even with honour_request_cache_control off."""
        settings = PolicySettings(honour_request_cache_control=False)
        request = H((b"cache-control", b"no-store"))
        result = check((b"cache-control", b"max-age=60"), request=request, settings=settings)
        assert isinstance(result, NotStorable)

    def test_private_in_shared_cache(self) -> None:
        """A shared cache does not store private responses."""
        assert check((b"cache-control", b"private, max-age=3600")) == NotStorable("private")

    def test_private_in_private_cache(self) -> None:
        """A private cache may."""
        settings = PolicySettings(shared=False)
        assert isinstance(check((b"cache-control", b"private, max-age=60"), settings=settings), Storable)

    def test_qualified_private_strips_fields(self) -> None:
        """``private="x"`` stores the response without x (5.2.2.7)."""
        result = check((b"cache-control", b'private="x-user", max-age=60'))
        assert isinstance(result, Storable) and result.strip_fields == (b"x-user",)

    def test_qualified_no_cache_strips_fields(self) -> None:
        """``no-cache="a, b"`` stores the response without a and b (5.2.2.4)."""
        result = check((b"cache-control", b'no-cache="a, b"'), (b"cache-control", b"max-age=3600"))
        assert isinstance(result, Storable) and result.strip_fields == (b"a", b"b")

    def test_must_understand_unknown_status(self) -> None:
        """must-understand with an unknown status is not stored (5.2.2.3)."""
        result = check((b"cache-control", b"max-age=3600, no-store, must-understand"), status=599)
        assert isinstance(result, NotStorable)

    def test_must_understand_overrides_no_store(self) -> None:
        """must-understand with an understood status ignores no-store."""
        result = check((b"cache-control", b"max-age=3600, no-store, must-understand"))
        assert isinstance(result, Storable)

    def test_unknown_status_with_freshness(self) -> None:
        """A fresh response of an unknown status is storable (no must-understand)."""
        assert isinstance(check((b"cache-control", b"max-age=3600"), status=599), Storable)

    def test_vary_star(self) -> None:
        """A response with Vary: * is never stored."""
        for vary in (b"*", b"*, *", b", *", b"Foo, *"):
            result = check((b"cache-control", b"max-age=60"), (b"vary", vary))
            assert result == NotStorable("vary: *"), vary

    def test_set_cookie_refused_by_default(self) -> None:
        """Set-Cookie responses are not stored unless the settings allow it."""
        pairs = ((b"cache-control", b"max-age=60"), (b"set-cookie", b"a=b"))
        assert check(*pairs) == NotStorable("set-cookie")
        assert isinstance(check(*pairs, settings=PolicySettings(store_set_cookie=True)), Storable)

    def test_tags(self) -> None:
        """Surrogate-Key (spaces) and Cache-Tag (commas) give deduplicated tags."""
        result = check(
            (b"cache-control", b"max-age=60"),
            (b"surrogate-key", b"a  b"),
            (b"cache-tag", b"b, c"),
            (b"cache-tag", b"d"),
        )
        assert isinstance(result, Storable) and result.tags == (b"a", b"b", b"c", b"d")

    def test_tags_bounded(self) -> None:
        """At most max_tags tags are kept."""
        keys = b" ".join(b"k%d" % i for i in range(50))
        result = check((b"cache-control", b"max-age=60"), (b"surrogate-key", keys),
                       settings=PolicySettings(max_tags=3))  # fmt: skip
        assert isinstance(result, Storable) and result.tags == (b"k0", b"k1", b"k2")

    def test_vary_recorded(self) -> None:
        """The Vary names are reported sorted and lower-case."""
        result = check((b"cache-control", b"max-age=60"), (b"vary", b"Foo, accept-encoding"))
        assert isinstance(result, Storable) and result.vary == (b"accept-encoding", b"foo")

    def test_heuristic_status(self) -> None:
        """A heuristically cacheable status with Last-Modified is stored heuristically."""
        result = check((b"last-modified", date(-1000)), (b"date", date()))
        assert isinstance(result, Storable) and result.heuristic and result.lifetime == 100

    def test_not_heuristic_status(self) -> None:
        """A 403 without explicit freshness is not stored."""
        result = check((b"last-modified", date(-1000)), (b"date", date()), status=403)
        assert isinstance(result, NotStorable)

    def test_public_makes_any_status_cacheable(self) -> None:
        """public allows heuristic freshness for any status (3, 4.2.2)."""
        result = check((b"last-modified", date(-1000)), (b"date", date()),
                       (b"cache-control", b"public"), status=599)  # fmt: skip
        assert isinstance(result, Storable) and result.heuristic

    def test_nothing_to_reuse(self) -> None:
        """No freshness, no validator, no stale allowance: not worth storing."""
        assert isinstance(check((b"content-type", b"text/plain")), NotStorable)
        assert isinstance(check((b"cache-control", b"max-age=0")), NotStorable)

    def test_no_cache_with_validator(self) -> None:
        """no-cache with an ETag is stored, to be revalidated on use."""
        result = check((b"cache-control", b"no-cache"), (b"etag", b'"abcd"'))
        assert isinstance(result, Storable) and result.has_validator

    def test_stale_window(self) -> None:
        """The stale window is the largest stale allowance."""
        result = check((b"cache-control", b"max-age=1, stale-while-revalidate=30, stale-if-error=60"))
        assert isinstance(result, Storable) and result.stale_window == 60

    def test_stale_window_prohibited(self) -> None:
        """must-revalidate leaves no stale window."""
        result = check((b"cache-control", b"max-age=1, must-revalidate, stale-if-error=60"))
        assert isinstance(result, Storable) and result.stale_window == 0

    def test_stale_window_default(self) -> None:
        """The operator's stale_if_error_default counts."""
        result = check((b"cache-control", b"max-age=1"),
                       settings=PolicySettings(stale_if_error_default=300))  # fmt: skip
        assert isinstance(result, Storable) and result.stale_window == 300


class TestStoredHeaders:
    """RFC 9111 section 3.1: storing header fields."""

    def test_hop_by_hop_and_connection_listed(self) -> None:
        """Hop-by-hop fields, Connection-listed ones and Proxy-Authentication-Info are dropped."""
        headers = H((b"connection", b"a, b"), (b"a", b"1"), (b"b", b"2"), (b"c", b"3"),
                    (b"keep-alive", b"5"), (b"proxy-authentication-info", b"x"),
                    (b"date", date()))  # fmt: skip
        entry = check((b"cache-control", b"max-age=60"))
        assert isinstance(entry, Storable)
        out = stored_headers(headers, entry, NOW)
        assert [n for n, _ in out] == [b"c", b"date"]

    def test_strip_fields(self) -> None:
        """Fields named by qualified no-cache are dropped."""
        headers = H((b"cache-control", b'no-cache="a", max-age=60'), (b"a", b"1"), (b"b", b"2"))
        entry = storable(b"GET", H(), 200, headers, NOW)
        assert isinstance(entry, Storable)
        out = stored_headers(headers, entry, NOW)
        assert b"a" not in out and out.get(b"b") == b"2"

    def test_date_added(self) -> None:
        """A response without Date gets one, the time it was received."""
        entry = check((b"cache-control", b"max-age=60"))
        assert isinstance(entry, Storable)
        out = stored_headers(H((b"cache-control", b"max-age=60")), entry, NOW)
        assert out.get(b"date") == date()

    def test_date_kept(self) -> None:
        """An existing Date is kept as is."""
        entry = check((b"cache-control", b"max-age=60"))
        assert isinstance(entry, Storable)
        out = stored_headers(H((b"date", date(-5))), entry, NOW)
        assert out.get_all(b"date") == [date(-5)]


class TestAuthorization:
    """RFC 9111 section 3.5: storing responses to authenticated requests."""

    auth = H((b"authorization", b"FOO"))

    def test_not_stored(self) -> None:
        """Explicit freshness alone does not allow storing."""
        result = check((b"cache-control", b"max-age=3600"), request=self.auth)
        assert result == NotStorable("authorization")

    def test_allowed_by(self) -> None:
        """public, s-maxage and must-revalidate each allow storing."""
        for cc in (b"max-age=3600, public", b"s-maxage=3600", b"max-age=3600, must-revalidate"):
            assert isinstance(check((b"cache-control", cc), request=self.auth), Storable), cc

    def test_operator_override(self) -> None:
        """cache_authorized stores anyway."""
        settings = PolicySettings(cache_authorized=True)
        result = check((b"cache-control", b"max-age=3600"), request=self.auth, settings=settings)
        assert isinstance(result, Storable)


class TestTargetedCacheControl:
    """RFC 9213: targeted cache-control fields."""

    def test_cdn_overrides_cache_control(self) -> None:
        """CDN-Cache-Control replaces Cache-Control for this cache."""
        headers = H((b"cache-control", b"max-age=3600"), (b"cdn-cache-control", b"max-age=1"))
        assert freshness_lifetime(headers, 200, NOW) == 1

    def test_cdn_ignores_expires(self) -> None:
        """With a targeted field, Expires is ignored too."""
        headers = H((b"cdn-cache-control", b"max-age=3600"), (b"expires", b"0"), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 3600

    def test_cdn_fresh_despite_no_store(self) -> None:
        """CDN-Cache-Control: max-age stores even with Cache-Control: no-store."""
        result = check((b"cache-control", b"no-store"), (b"cdn-cache-control", b"max-age=10000"))
        assert isinstance(result, Storable)

    def test_cdn_no_store(self) -> None:
        """CDN-Cache-Control: no-store forbids storing despite Cache-Control."""
        result = check((b"cache-control", b"max-age=10000"), (b"cdn-cache-control", b"no-store"))
        assert isinstance(result, NotStorable)

    def test_cdn_private(self) -> None:
        """CDN-Cache-Control: private forbids storing in a shared cache."""
        assert isinstance(check((b"cdn-cache-control", b"private"),
                                (b"cache-control", b"max-age=10000")), NotStorable)  # fmt: skip

    def test_invalid_targeted_falls_back(self) -> None:
        """An invalid targeted field is ignored: Cache-Control applies."""
        for raw in (b"max-age=10000, &&&&&", b'max-age="10000"'):
            result = check((b"cdn-cache-control", raw), (b"cache-control", b"no-store"))
            assert result == NotStorable("no-store"), raw

    def test_accel_field_first(self) -> None:
        """The cache's own targeted field beats CDN-Cache-Control."""
        headers = H((b"cdn-cache-control", b"max-age=5"), (b"Accel-Cache-Control", b"max-age=50"))
        assert response_cache_control(headers).max_age == 50

    def test_custom_field_name(self) -> None:
        """The targeted field name is a setting; CDN-Cache-Control can be ignored."""
        settings = PolicySettings(targeted_field=b"Edge-Control", honour_cdn_cache_control=False)
        headers = H((b"cdn-cache-control", b"max-age=5"), (b"cache-control", b"max-age=9"))
        assert response_cache_control(headers, settings).max_age == 9
        headers.add(b"edge-control", b"max-age=7")
        assert response_cache_control(headers, settings).max_age == 7


class TestFreshnessLifetime:
    """RFC 9111 section 4.2.1: calculating freshness lifetime."""

    def test_s_maxage_beats_max_age(self) -> None:
        """A shared cache prefers s-maxage, shorter or longer."""
        assert freshness_lifetime(H((b"cache-control", b"max-age=3600, s-maxage=1")), 200, NOW) == 1
        headers = H((b"cache-control", b"max-age=1"), (b"cache-control", b"s-maxage=3600"))
        assert freshness_lifetime(headers, 200, NOW) == 3600

    def test_private_cache_ignores_s_maxage(self) -> None:
        """A private cache uses max-age."""
        headers = H((b"cache-control", b"s-maxage=3600, max-age=1"))
        assert freshness_lifetime(headers, 200, NOW, PolicySettings(shared=False)) == 1

    def test_max_age_beats_expires(self) -> None:
        """max-age wins over Expires, past or invalid."""
        for expires in (date(-7200), b"0"):
            headers = H((b"cache-control", b"max-age=3600"), (b"expires", expires), (b"date", date()))
            assert freshness_lifetime(headers, 200, NOW) == 3600

    def test_max_age_zero_beats_future_expires(self) -> None:
        """max-age=0 wins over a future Expires."""
        headers = H((b"expires", date(3600)), (b"cache-control", b"max-age=0"), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 0

    def test_expires_minus_date(self) -> None:
        """Expires minus Date."""
        headers = H((b"expires", date(400)), (b"date", date(100)))
        assert freshness_lifetime(headers, 200, NOW) == 300

    def test_expires_before_date(self) -> None:
        """An Expires older than Date gives 0."""
        assert freshness_lifetime(H((b"expires", date(300)), (b"date", date(400))), 200, NOW) == 0

    def test_expires_without_date(self) -> None:
        """An invalid or missing Date is replaced by the response time."""
        headers = H((b"date", b"foo"), (b"expires", date(10)))
        assert freshness_lifetime(headers, 200, NOW) == 10

    def test_expires_far_future_and_old_formats(self) -> None:
        """Far-future dates and the obsolete formats parse."""
        for raw in (b"Sun, 21 Nov 2286 04:46:39 GMT", b"Thu Aug  8 02:01:18 2050",
                    b"Thu, 18 AUG 2050 02:01:18 GMT"):  # fmt: skip
            assert freshness_lifetime(H((b"expires", raw), (b"date", date())), 200, NOW) > 0, raw

    def test_duplicate_conflicting_max_age_is_stale(self) -> None:
        """Conflicting duplicate max-age values give 0 (4.2.1)."""
        assert freshness_lifetime(H((b"cache-control", b"max-age=1800, max-age=1")), 200, NOW) == 0

    def test_no_information(self) -> None:
        """Nothing to go on: 0."""
        assert freshness_lifetime(H(), 200, NOW) == 0

    def test_max_age_capped(self) -> None:
        """A huge max-age is capped at 2**31 seconds."""
        assert freshness_lifetime(H((b"cache-control", b"max-age=99999999999")), 200, NOW) == 2**31


class TestExpires:
    """RFC 9111 section 5.3: Expires."""

    def test_invalid_means_expired(self) -> None:
        """An invalid Expires is in the past."""
        for raw in (b"0", b"Thu, 18 Aug 2050 02:01:18 UTC", b"Thu, 18 Aug 50 02:01:18 GMT",
                    b"Thu 18 Aug 2050 02:01:18 GMT", b"Thu, 18 Aug 2050 2:01:18 GMT"):  # fmt: skip
            headers = H((b"expires", raw), (b"date", date()))
            assert freshness_lifetime(headers, 200, NOW) == 0, raw

    def test_extra_spaces_are_invalid(self) -> None:
        """HTTP-date has exactly one SP between its parts (RFC 9110 5.6.7): more is invalid."""
        for raw in (b"Thu, 18  Aug  2050 02:01:18 GMT", b"Thu,  18 Aug 2050 02:01:18 GMT",
                    b"Thu, 18 Aug 2050  02:01:18 GMT", b"Thu Aug   8 02:01:18 2050",
                    b"Thursday,  18-Aug-50 02:01:18 GMT"):  # fmt: skip
            headers = H((b"expires", raw), (b"date", date()))
            assert parse_http_date(raw) is None, raw
            assert freshness_lifetime(headers, 200, NOW) == 0, raw

    def test_case_of_names_is_forgiven(self) -> None:
        """Day, month and GMT in another case still parse (RFC 9110 5.6.7: be robust)."""
        expected = parse_http_date(b"Thu, 18 Aug 2050 02:01:18 GMT")
        for raw in (b"THU, 18 Aug 2050 02:01:18 GMT", b"Thu, 18 AUG 2050 02:01:18 GMT",
                    b"Thu, 18 Aug 2050 02:01:18 gMT", b"thursday, 18-aug-50 02:01:18 gmt"):  # fmt: skip
            assert parse_http_date(raw) == expected, raw

    def test_unknown_day_name_is_invalid(self) -> None:
        """A day-name that is not one of the seven is not an HTTP-date."""
        assert parse_http_date(b"Thx, 18 Aug 2050 02:01:18 GMT") is None
        assert parse_http_date(b"Thirsday, 18-Aug-50 02:01:18 GMT") is None

    @given(st.integers(min_value=0, max_value=2**33))
    def test_imf_fixdate_round_trips(self, when: int) -> None:
        """What accel writes as a date, it reads back unchanged."""
        assert parse_http_date(format_http_date(when)) == when

    def test_multiple_different_lines(self) -> None:
        """Several different Expires lines are treated as invalid."""
        headers = H((b"expires", date(100)), (b"expires", date(200)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 0

    def test_invalid_expires_blocks_heuristic(self) -> None:
        """An invalid Expires is explicit: no heuristic freshness."""
        headers = H((b"expires", b"0"), (b"last-modified", date(-100000)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 0


class TestHeuristicFreshness:
    """RFC 9111 section 4.2.2: calculating heuristic freshness."""

    def test_fraction(self) -> None:
        """10% of the time since Last-Modified."""
        headers = H((b"last-modified", date(-36000)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 3600

    def test_capped(self) -> None:
        """Capped at heuristic_max."""
        headers = H((b"last-modified", date(-10**8)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 86400

    def test_settings(self) -> None:
        """Fraction and cap are settings."""
        settings = PolicySettings(heuristic_fraction=0.5, heuristic_max=100.0)
        headers = H((b"last-modified", date(-60)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW, settings) == 30
        headers = H((b"last-modified", date(-6000)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW, settings) == 100

    def test_statuses(self) -> None:
        """Only heuristically cacheable statuses, unless public."""
        headers = H((b"last-modified", date(-1000)), (b"date", date()))
        for status in (200, 203, 204, 404, 405, 410, 414, 501):
            assert freshness_lifetime(headers, status, NOW) == 100, status
        for status in (201, 202, 403, 502, 503, 504, 599):
            assert freshness_lifetime(headers, status, NOW) == 0, status

    def test_future_last_modified(self) -> None:
        """A Last-Modified after Date gives nothing."""
        headers = H((b"last-modified", date(10)), (b"date", date()))
        assert freshness_lifetime(headers, 200, NOW) == 0

    def test_not_with_explicit(self) -> None:
        """No heuristic when max-age is present."""
        headers = H((b"last-modified", date(-36000)), (b"cache-control", b"max-age=5"))
        assert freshness_lifetime(headers, 200, NOW) == 5


class TestAge:
    """RFC 9111 section 4.2.3: calculating age."""

    def test_resident_time(self) -> None:
        """A response with Date = response_time ages with the clock."""
        headers = H((b"date", date()))
        assert current_age(headers, NOW, NOW, NOW + 42) == 42

    def test_age_header(self) -> None:
        """The Age received is added."""
        headers = H((b"date", date()), (b"age", b"30"))
        assert current_age(headers, NOW, NOW, NOW + 2) == 32

    def test_apparent_age(self) -> None:
        """A Date in the past counts (apparent_age)."""
        headers = H((b"date", date(-7200)))
        assert current_age(headers, NOW, NOW, NOW) == 7200

    def test_response_delay(self) -> None:
        """The request/response delay is added to Age."""
        headers = H((b"date", date()), (b"age", b"10"))
        assert current_age(headers, NOW - 3, NOW, NOW) == 13

    def test_max_not_sum(self) -> None:
        """apparent_age and corrected_age_value combine by max."""
        headers = H((b"date", date(-100)), (b"age", b"50"))
        assert current_age(headers, NOW, NOW, NOW) == 100

    def test_invalid_age_ignored(self) -> None:
        """An invalid Age counts as 0."""
        headers = H((b"date", date()), (b"age", b"-7200"))
        assert current_age(headers, NOW, NOW, NOW) == 0

    def test_missing_date(self) -> None:
        """Without Date, the response time stands in."""
        assert current_age(H(), NOW, NOW, NOW + 5) == 5

    @given(
        date_offset=st.integers(-10**6, 10**6),
        age=st.integers(0, 10**6),
        delay=st.floats(0, 1000),
        resident=st.floats(0, 10**6),
    )
    def test_never_negative_and_monotonic(
        self, date_offset: int, age: int, delay: float, resident: float
    ) -> None:
        """Age is at least the Age received and the resident time, and grows with now."""
        headers = H((b"date", date(date_offset)), (b"age", b"%d" % age))
        now = NOW + resident
        value = current_age(headers, NOW - delay, NOW, now)
        assert value >= age + delay - 1e-6
        assert value >= resident - 1e-6
        assert current_age(headers, NOW - delay, NOW, now + 1) >= value + 1 - 1e-6

    @given(st.floats(-1000, 1000))
    def test_clock_steps_back(self, step: float) -> None:
        """A clock stepping backwards never makes a response younger than zero."""
        headers = H((b"date", date()))
        assert current_age(headers, NOW + 5, NOW, NOW + step) >= 0

    def test_age_header_value(self) -> None:
        """Whole seconds, floored, capped at 2**31, never negative."""
        assert age_header_value(41.9) == b"41"
        assert age_header_value(-3) == b"0"
        assert age_header_value(1e12) == b"2147483648"


class TestVary:
    """RFC 9111 section 4.1: calculating cache keys with Vary."""

    def test_names(self) -> None:
        """Names are lower-cased, deduplicated, sorted, across lines."""
        assert vary_names(H((b"vary", b"Foo, bar"), (b"vary", b"FOO"))) == (b"bar", b"foo")

    def test_star(self) -> None:
        """A ``*`` anywhere is STAR."""
        assert vary_names(H((b"vary", b""), (b"vary", b"*"))) is STAR

    def test_no_vary(self) -> None:
        """No Vary: empty names, empty key, always matches."""
        assert vary_names(H()) == ()
        assert secondary_key((), H((b"foo", b"1"))) == b""

    def test_match(self) -> None:
        """Same nominated values match; others are irrelevant."""
        key = secondary_key((b"foo",), H((b"foo", b"1"), (b"other", b"2")))
        assert key == secondary_key((b"foo",), H((b"foo", b"1"), (b"other", b"3")))

    def test_no_match(self) -> None:
        """Different values do not match."""
        assert secondary_key((b"foo",), H((b"foo", b"1"))) != secondary_key((b"foo",), H((b"foo", b"2")))

    def test_absent_is_not_empty(self) -> None:
        """A missing field differs from an empty one, and from any value."""
        names = (b"foo",)
        absent, empty = secondary_key(names, H()), secondary_key(names, H((b"foo", b"")))
        assert absent != empty and absent != secondary_key(names, H((b"foo", b"1")))

    def test_combine_lines(self) -> None:
        """Repeated lines equal one combined line, whitespace aside."""
        names = (b"foo",)
        one = secondary_key(names, H((b"foo", b"1, 2")))
        assert one == secondary_key(names, H((b"foo", b"1"), (b"foo", b"2")))
        assert one == secondary_key(names, H((b"foo", b" 1 ,2 ")))

    def test_case_insensitive_fields(self) -> None:
        """Accept-Encoding and Accept-Language values ignore case and parameter spacing."""
        names = (b"accept-encoding",)
        assert secondary_key(names, H((b"accept-encoding", b"GZip ; q=0.5"))) == secondary_key(
            names, H((b"accept-encoding", b"gzip;q=0.5"))
        )

    def test_case_sensitive_fields(self) -> None:
        """Other fields keep their case."""
        names = (b"foo",)
        assert secondary_key(names, H((b"foo", b"A"))) != secondary_key(names, H((b"foo", b"a")))

    def test_vary_matches(self) -> None:
        """vary_matches compares against the stored key; STAR never matches."""
        response = H((b"vary", b"Foo"))
        key = secondary_key((b"foo",), H((b"foo", b"1")))
        assert vary_matches(response, key, H((b"foo", b"1")))
        assert not vary_matches(response, key, H((b"foo", b"2")))
        assert not vary_matches(H((b"vary", b"*")), b"", H())

    values = st.lists(
        st.binary(min_size=0, max_size=8).filter(lambda b: b"," not in b and b'"' not in b),
        max_size=3,
    )

    @given(st.dictionaries(st.sampled_from([b"foo", b"bar", b"accept-encoding"]), values))
    def test_lines_split_freely(self, fields: dict[bytes, list[bytes]]) -> None:
        """Sending a field's elements as one line or as several gives the same key."""
        names = (b"accept-encoding", b"bar", b"foo")
        split = Headers([(n, v) for n, vs in fields.items() for v in vs])
        joined = Headers([(n, b", ".join(vs)) for n, vs in fields.items() if vs])
        assume(all(v.strip(b" \t") == v and v for vs in fields.values() for v in vs))
        assert secondary_key(names, split) == secondary_key(names, joined)

    @staticmethod
    def norm(value: bytes) -> bytes:
        """The list normalisation, restated for values without quotes."""
        return b",".join(p.strip(b" \t") for p in value.split(b",") if p.strip(b" \t"))

    @given(st.binary(max_size=10), st.binary(max_size=10))
    def test_different_values_different_keys(self, a: bytes, b: bytes) -> None:
        """Values that differ after normalisation give different keys."""
        assume(b'"' not in a + b and self.norm(a) != self.norm(b))
        names = (b"foo", b"zzz")
        assert secondary_key(names, H((b"foo", a))) != secondary_key(names, H((b"foo", b)))

    @given(st.binary(max_size=10), st.binary(max_size=10))
    def test_key_injective_across_fields(self, a: bytes, b: bytes) -> None:
        """Swapping two different values between fields changes the key."""
        assume(b'"' not in a + b and self.norm(a) != self.norm(b))
        names = (b"a", b"b")
        assert secondary_key(names, H((b"a", a), (b"b", b))) != secondary_key(names, H((b"a", b), (b"b", a)))


class TestReuse:
    """RFC 9111 section 4 and 4.2: constructing responses from caches."""

    def test_fresh(self) -> None:
        """A fresh response is served, with its age and remaining ttl."""
        assert decide(b"GET", H(), store((b"cache-control", b"max-age=60")), NOW + 10) == Fresh(10, 50)

    def test_head_served_from_get(self) -> None:
        """A stored GET response serves HEAD."""
        assert isinstance(decide(b"HEAD", H(), store((b"cache-control", b"max-age=60")), NOW), Fresh)

    def test_other_methods_forwarded(self) -> None:
        """POST is forwarded."""
        assert decide(b"POST", H(), store((b"cache-control", b"max-age=60")), NOW) == Forward("method")

    def test_stale(self) -> None:
        """A stale response is revalidated with its validators."""
        stored = store((b"cache-control", b"max-age=60"), (b"etag", b'"x"'))
        decision = decide(b"GET", H(), stored, NOW + 60)
        assert isinstance(decision, Revalidate)
        assert decision.conditional == H((b"if-none-match", b'"x"'))

    def test_age_header_makes_stale(self) -> None:
        """An Age beyond max-age is stale on arrival."""
        stored = store((b"cache-control", b"max-age=3600"), (b"age", b"7200"))
        assert isinstance(decide(b"GET", H(), stored, NOW), Revalidate)

    def test_date_in_past_makes_stale(self) -> None:
        """apparent_age counts: a Date two hours old with max-age=3600 is stale."""
        stored = store((b"cache-control", b"max-age=3600"), (b"date", date(-7200)))
        assert isinstance(decide(b"GET", H(), stored, NOW), Revalidate)

    def test_no_store_in_request_still_served(self) -> None:
        """Request no-store does not prevent using a stored response (5.2.1.5)."""
        stored = store((b"cache-control", b"max-age=60"))
        assert isinstance(decide(b"GET", H((b"cache-control", b"no-store")), stored, NOW), Fresh)

    def test_response_pragma_ignored(self) -> None:
        """Pragma in a response has no effect (5.4)."""
        stored = store((b"cache-control", b"max-age=60"), (b"pragma", b"no-cache"))
        assert isinstance(decide(b"GET", H(), stored, NOW), Fresh)


class TestRequestDirectives:
    """RFC 9111 section 5.2.1: request directives."""

    stored = store((b"cache-control", b"max-age=1500"), (b"etag", b'"e"'))

    def test_max_age(self) -> None:
        """A response older than request max-age is revalidated (5.2.1.1)."""
        decision = decide(b"GET", H((b"cache-control", b"max-age=600")), self.stored, NOW + 601)
        assert isinstance(decision, Revalidate) and decision.reason == "request max-age"

    def test_max_age_zero(self) -> None:
        """max-age=0 revalidates any aged response."""
        decision = decide(b"GET", H((b"cache-control", b"max-age=0")), self.stored, NOW + 1)
        assert isinstance(decision, Revalidate)

    def test_max_age_young_enough(self) -> None:
        """A young enough response is served."""
        assert isinstance(decide(b"GET", H((b"cache-control", b"max-age=600")), self.stored, NOW + 5), Fresh)

    def test_min_fresh(self) -> None:
        """A response fresh for less than min-fresh is revalidated (5.2.1.3)."""
        decision = decide(b"GET", H((b"cache-control", b"min-fresh=2000")), self.stored, NOW)
        assert isinstance(decision, Revalidate) and decision.reason == "request min-fresh"

    def test_min_fresh_with_age(self) -> None:
        """min-fresh accounts for age."""
        decision = decide(b"GET", H((b"cache-control", b"min-fresh=1000")), self.stored, NOW + 1000)
        assert isinstance(decision, Revalidate)

    def test_max_stale(self) -> None:
        """A stale response within max-stale is served (5.2.1.2)."""
        decision = decide(b"GET", H((b"cache-control", b"max-stale=1000")), self.stored, NOW + 2000)
        assert decision == ServeStale(2000, -500)

    def test_max_stale_exceeded(self) -> None:
        """Beyond max-stale, revalidate."""
        decision = decide(b"GET", H((b"cache-control", b"max-stale=10")), self.stored, NOW + 2000)
        assert isinstance(decision, Revalidate)

    def test_bare_max_stale(self) -> None:
        """max-stale without a value accepts any staleness."""
        decision = decide(b"GET", H((b"cache-control", b"max-stale")), self.stored, NOW + 10**7)
        assert isinstance(decision, ServeStale)

    def test_no_cache(self) -> None:
        """Request no-cache revalidates even a fresh response (5.2.1.4)."""
        decision = decide(b"GET", H((b"cache-control", b"no-cache")), self.stored, NOW)
        assert isinstance(decision, Revalidate) and decision.reason == "request no-cache"

    def test_pragma_no_cache(self) -> None:
        """Pragma: no-cache counts as no-cache without Cache-Control (5.4)."""
        assert request_cache_control(H((b"pragma", b"no-cache"))).no_cache
        assert isinstance(decide(b"GET", H((b"pragma", b"No-Cache")), self.stored, NOW), Revalidate)

    def test_pragma_ignored_with_cache_control(self) -> None:
        """Cache-Control, if present, overrides Pragma."""
        request = H((b"pragma", b"no-cache"), (b"cache-control", b"max-stale=5"))
        assert not request_cache_control(request).no_cache

    def test_pragma_extension(self) -> None:
        """Other Pragma values mean nothing."""
        assert isinstance(decide(b"GET", H((b"pragma", b"foo")), self.stored, NOW), Fresh)

    def test_not_honoured(self) -> None:
        """With request directives off, no-cache and max-age are ignored."""
        settings = PolicySettings(honour_request_cache_control=False)
        request = H((b"cache-control", b"no-cache, max-age=0, only-if-cached"))
        cc = request_cache_control(request, settings)
        assert not cc.no_cache and cc.max_age is None and cc.only_if_cached
        assert isinstance(decide(b"GET", request, self.stored, NOW + 1, settings), Fresh)

    def test_only_if_cached_fresh(self) -> None:
        """only-if-cached with a fresh response serves it."""
        assert isinstance(decide(b"GET", H((b"cache-control", b"only-if-cached")), self.stored, NOW), Fresh)

    def test_only_if_cached_stale(self) -> None:
        """only-if-cached with a response needing validation is a 504 (5.2.1.7)."""
        decision = decide(b"GET", H((b"cache-control", b"only-if-cached")), self.stored, NOW + 2000)
        assert isinstance(decision, OnlyIfCachedMiss)

    def test_only_if_cached_miss(self) -> None:
        """only-if-cached with nothing stored is a 504; otherwise a plain miss."""
        assert isinstance(decide_without_stored(H((b"cache-control", b"only-if-cached"))), OnlyIfCachedMiss)
        assert decide_without_stored(H()) == Forward("miss")

    @given(
        st.lists(
            st.tuples(
                st.sampled_from([b"cache-control", b"pragma", b"accept"]),
                st.sampled_from(
                    [b"only-if-cached", b"no-cache", b"max-age=0, only-if-cached", b"no-store", b""]
                ),
            ),
            max_size=4,
        ),
        st.booleans(),
    )
    def test_without_stored_reads_request_directives(
        self, pairs: list[tuple[bytes, bytes]], honour: bool
    ) -> None:
        """Nothing stored: 504 exactly when the request's directives say
        only-if-cached, whatever Pragma says and whether or not request
        directives are honoured (the decision skips parsing without
        Cache-Control)."""
        settings = PolicySettings(honour_request_cache_control=honour)
        headers = H(*pairs)
        expected = request_cache_control(headers, settings).only_if_cached
        assert isinstance(decide_without_stored(headers, settings), OnlyIfCachedMiss) is expected


class TestResponseDirectives:
    """RFC 9111 section 5.2.2: response directives at reuse time."""

    def test_no_cache_revalidates_fresh(self) -> None:
        """Unqualified no-cache always revalidates (5.2.2.4)."""
        stored = store((b"cache-control", b"max-age=10000, No-CaChE"), (b"etag", b'"abcd"'))
        decision = decide(b"GET", H(), stored, NOW)
        assert isinstance(decision, Revalidate) and not decision.stale_on_error

    def test_qualified_no_cache_serves(self) -> None:
        """Qualified no-cache serves the (stripped) stored response."""
        stored = store((b"cache-control", b'no-cache="a", max-age=3600'))
        assert isinstance(decide(b"GET", H(), stored, NOW), Fresh)

    def test_must_revalidate_fresh(self) -> None:
        """must-revalidate does not affect a fresh response."""
        stored = store((b"cache-control", b"max-age=10000, must-revalidate"))
        assert isinstance(decide(b"GET", H(), stored, NOW), Fresh)

    def test_must_revalidate_beats_max_stale(self) -> None:
        """Stale with must-revalidate: revalidate even if the client allows staleness (5.2.2.2)."""
        stored = store((b"cache-control", b"max-age=2, must-revalidate, stale-while-revalidate=60"))
        decision = decide(b"GET", H((b"cache-control", b"max-stale=1000")), stored, NOW + 10)
        assert isinstance(decision, Revalidate) and not decision.stale_on_error

    def test_proxy_revalidate_shared_only(self) -> None:
        """proxy-revalidate binds a shared cache, not a private one (5.2.2.8)."""
        stored = store((b"cache-control", b"max-age=2, proxy-revalidate"))
        request = H((b"cache-control", b"max-stale=1000"))
        assert isinstance(decide(b"GET", request, stored, NOW + 10), Revalidate)
        private = PolicySettings(shared=False)
        assert isinstance(decide(b"GET", request, stored, NOW + 10, private), ServeStale)

    def test_s_maxage_implies_proxy_revalidate(self) -> None:
        """A stale s-maxage response is never served stale by a shared cache (5.2.2.10)."""
        stored = store((b"cache-control", b"s-maxage=2, stale-while-revalidate=600"))
        decision = decide(b"GET", H((b"cache-control", b"max-stale")), stored, NOW + 10)
        assert isinstance(decision, Revalidate)

    def test_targeted_no_cache(self) -> None:
        """CDN-Cache-Control: no-cache revalidates despite Cache-Control: max-age."""
        stored = store((b"cdn-cache-control", b"no-cache"), (b"cache-control", b"max-age=10000"))
        assert isinstance(decide(b"GET", H(), stored, NOW), Revalidate)


class TestValidatedSinceArrival:
    """decide(received_at=...): a validation that already happened for this request.

    A response the cache would revalidate is served as it is once a fetch
    completed after the request arrived (for the response's own reasons),
    or was sent after it arrived (for the request's reasons).
    """

    ARRIVED = NOW + 100

    def stored_at(self, request_time: float, response_time: float, *pairs: tuple[bytes, bytes]) -> StoredResponse:
        headers = H(*pairs, (b"etag", b'"v1"'))
        headers.add(b"date", format_http_date(response_time))
        return StoredResponse(200, headers, request_time, response_time)

    @pytest.mark.parametrize(
        ("fields", "asked", "now_offset", "reason"),
        [
            ([(b"cache-control", b"no-cache")], [], 0.5, "response no-cache"),
            ([(b"cache-control", b"max-age=0, must-revalidate")], [], 0.5, "stale, must revalidate"),
            ([(b"cache-control", b"max-age=0")], [], 0.5, "stale"),
        ],
    )
    def test_response_reasons_need_a_validation_completed_since(self, fields, asked, now_offset, reason) -> None:
        """Sent before the request arrived, completed after: one validation shared (collapsing)."""
        stored = self.stored_at(self.ARRIVED - 0.2, self.ARRIVED + 0.1, *fields)
        decision = decide(b"GET", H(*asked), stored, self.ARRIVED + now_offset, received_at=self.ARRIVED)
        assert isinstance(decision, Validated) and decision.reason == reason
        now = self.ARRIVED + now_offset
        age = current_age(stored.headers, stored.request_time, stored.response_time, now)
        assert decision.age == age and decision.ttl == -age  # a freshness lifetime of 0

    def test_a_validation_completed_before_arrival_does_not_count(self) -> None:
        """Received before the request arrived: the request is validated as usual."""
        stored = self.stored_at(self.ARRIVED - 0.2, self.ARRIVED - 0.1, (b"cache-control", b"no-cache"))
        decision = decide(b"GET", H(), stored, self.ARRIVED + 0.5, received_at=self.ARRIVED)
        assert isinstance(decision, Revalidate) and decision.reason == "response no-cache"

    def test_at_the_same_instant_does_not_count(self) -> None:
        """Only strictly after: the same clock reading is not known to be later."""
        stored = self.stored_at(self.ARRIVED, self.ARRIVED, (b"cache-control", b"no-cache"))
        assert isinstance(decide(b"GET", H(), stored, self.ARRIVED, received_at=self.ARRIVED), Revalidate)

    @pytest.mark.parametrize(
        ("asked", "reason"),
        [
            ([(b"cache-control", b"no-cache")], "request no-cache"),
            ([(b"pragma", b"no-cache")], "request no-cache"),
            ([(b"cache-control", b"max-age=0")], "request max-age"),
            ([(b"cache-control", b"min-fresh=1000")], "request min-fresh"),
        ],
    )
    def test_request_reasons_need_the_origin_asked_since(self, asked, reason) -> None:
        """RFC 9111 5.2.1: what the client asks is met only by a fetch sent after it asked."""
        fresh = [(b"cache-control", b"max-age=600")]
        in_flight = self.stored_at(self.ARRIVED - 0.2, self.ARRIVED + 0.1, *fresh)
        decision = decide(b"GET", H(*asked), in_flight, self.ARRIVED + 0.5, received_at=self.ARRIVED)
        assert isinstance(decision, Revalidate) and decision.reason == reason
        asked_since = self.stored_at(self.ARRIVED + 0.05, self.ARRIVED + 0.1, *fresh)
        decision = decide(b"GET", H(*asked), asked_since, self.ARRIVED + 0.5, received_at=self.ARRIVED)
        assert isinstance(decision, Validated) and decision.reason == reason

    def test_request_no_cache_also_binds_a_no_cache_response(self) -> None:
        """Both sides say no-cache: the client's demand decides (the origin asked since)."""
        fields = (b"cache-control", b"no-cache")
        request = H((b"cache-control", b"no-cache"))
        in_flight = self.stored_at(self.ARRIVED - 0.2, self.ARRIVED + 0.1, fields)
        assert isinstance(decide(b"GET", request, in_flight, self.ARRIVED + 0.5, received_at=self.ARRIVED), Revalidate)
        asked_since = self.stored_at(self.ARRIVED + 0.05, self.ARRIVED + 0.1, fields)
        assert isinstance(decide(b"GET", request, asked_since, self.ARRIVED + 0.5, received_at=self.ARRIVED), Validated)

    def test_only_if_cached_is_served(self) -> None:
        """A validated response needs no origin: only-if-cached gets it."""
        stored = self.stored_at(self.ARRIVED - 0.2, self.ARRIVED + 0.1, (b"cache-control", b"no-cache"))
        request = H((b"cache-control", b"only-if-cached"))
        assert isinstance(decide(b"GET", request, stored, self.ARRIVED + 0.5, received_at=self.ARRIVED), Validated)

    @given(
        directives=st.lists(
            st.sampled_from([b"no-cache", b"max-age=0", b"max-age=5", b"must-revalidate", b"max-age=600", b"s-maxage=0"]),
            max_size=3,
        ),
        requested=st.lists(st.sampled_from([b"no-cache", b"max-age=0", b"max-age=3", b"min-fresh=100", b"max-stale=2"]), max_size=2),
        sent=st.floats(-5, 5),
        took=st.floats(0, 5),
        later=st.floats(0, 20),
        arrived=st.floats(-5, 5),
    )
    def test_only_revalidations_change(self, directives, requested, sent, took, later, arrived) -> None:
        """received_at turns some Revalidate decisions into Validated (same reason, age
        and ttl of the stored response) and never changes any other decision."""
        fields = [(b"cache-control", b", ".join(directives))] if directives else []
        stored = self.stored_at(NOW + sent, NOW + sent + took, *fields)
        request = H((b"cache-control", b", ".join(requested))) if requested else H()
        now = NOW + sent + took + later
        plain = decide(b"GET", request, stored, now)
        seen = decide(b"GET", request, stored, now, received_at=NOW + arrived)
        if isinstance(seen, Validated):
            assert isinstance(plain, (Revalidate, OnlyIfCachedMiss))
            assert stored.response_time > NOW + arrived
            if b"no-cache" in requested:
                assert stored.request_time > NOW + arrived
            if isinstance(plain, Revalidate):
                assert seen.reason == plain.reason
        else:
            assert seen == plain


class TestStaleExtensions:
    """RFC 5861: stale-while-revalidate and stale-if-error."""

    def test_stale_while_revalidate(self) -> None:
        """Within the window, serve stale and revalidate in the background (section 3)."""
        stored = store((b"cache-control", b"max-age=1, stale-while-revalidate=3600"), (b"etag", b'"abc"'))
        decision = decide(b"GET", H(), stored, NOW + 10)
        assert isinstance(decision, StaleWhileRevalidate)
        assert decision.conditional == H((b"if-none-match", b'"abc"'))

    def test_stale_while_revalidate_window(self) -> None:
        """After the window, revalidate synchronously."""
        stored = store((b"cache-control", b"max-age=1, stale-while-revalidate=4"))
        assert isinstance(decide(b"GET", H(), stored, NOW + 6), Revalidate)

    def test_swr_yields_to_request_no_cache(self) -> None:
        """A request no-cache is not answered stale."""
        stored = store((b"cache-control", b"max-age=1, stale-while-revalidate=3600"))
        assert isinstance(decide(b"GET", H((b"cache-control", b"no-cache")), stored, NOW + 10), Revalidate)

    def test_stale_if_error_response(self) -> None:
        """Within stale-if-error, a failed origin may be replaced by the stale response."""
        stored = store((b"cache-control", b"max-age=2, stale-if-error=60"))
        decision = decide(b"GET", H(), stored, NOW + 10)
        assert isinstance(decision, Revalidate) and decision.stale_on_error
        assert may_serve_stale_on_error(H(), stored, NOW + 10)
        assert not may_serve_stale_on_error(H(), stored, NOW + 63)

    def test_stale_if_error_request(self) -> None:
        """A request stale-if-error allows it too (section 4)."""
        stored = store((b"cache-control", b"max-age=2"))
        assert not may_serve_stale_on_error(H(), stored, NOW + 10)
        assert may_serve_stale_on_error(H((b"cache-control", b"stale-if-error=60")), stored, NOW + 10)

    def test_operator_default(self) -> None:
        """stale_if_error_default allows it for responses that did not say."""
        stored = store((b"cache-control", b"max-age=2"))
        settings = PolicySettings(stale_if_error_default=30)
        assert may_serve_stale_on_error(H(), stored, NOW + 10, settings)
        assert not may_serve_stale_on_error(H(), stored, NOW + 40, settings)

    def test_prohibitions_win(self) -> None:
        """must-revalidate, proxy-revalidate, s-maxage and no-cache forbid it."""
        settings = PolicySettings(stale_if_error_default=3600)
        for cc in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=2", b"no-cache"):
            stored = store((b"cache-control", b"max-age=2, stale-if-error=60, " + cc))
            assert not may_serve_stale_on_error(H(), stored, NOW + 10, settings), cc

    def test_fresh_on_error(self) -> None:
        """A still-fresh response may stand in for a failed revalidation."""
        stored = store((b"cache-control", b"max-age=100, must-revalidate"))
        decision = decide(b"GET", H((b"cache-control", b"no-cache")), stored, NOW + 10)
        assert isinstance(decision, Revalidate) and decision.stale_on_error


class TestValidation:
    """RFC 9111 section 4.3: validation."""

    def test_conditional_etag_and_last_modified(self) -> None:
        """Both validators are sent (4.3.1)."""
        headers = H((b"etag", b'W/"x"'), (b"last-modified", date(-100)), (b"date", date()))
        assert conditional_headers(headers) == H(
            (b"if-none-match", b'W/"x"'), (b"if-modified-since", date(-100))
        )

    def test_unquoted_etag_quoted(self) -> None:
        """An unquoted ETag is sent quoted."""
        assert conditional_headers(H((b"etag", b"abcdef"))).get(b"if-none-match") == b'"abcdef"'

    def test_never_date(self) -> None:
        """Date alone gives no If-Modified-Since."""
        assert conditional_headers(H((b"date", date()))) == H()

    def test_invalid_last_modified_not_sent(self) -> None:
        """An unparseable Last-Modified is not echoed."""
        assert conditional_headers(H((b"last-modified", b"yesterday"))) == H()

    def test_selects_strong(self) -> None:
        """A strong ETag selects only the same strong ETag (4.3.4)."""
        assert selects_stored(H((b"etag", b'"a"')), H((b"etag", b'"a"')))
        assert not selects_stored(H((b"etag", b'"a"')), H((b"etag", b'"b"')))
        assert not selects_stored(H((b"etag", b'W/"a"')), H((b"etag", b'"a"')))
        assert not selects_stored(H(), H((b"etag", b'"a"')))

    def test_selects_weak(self) -> None:
        """A weak ETag selects by weak comparison."""
        assert selects_stored(H((b"etag", b'"a"')), H((b"etag", b'W/"a"')))

    def test_selects_last_modified(self) -> None:
        """Without ETag, Last-Modified must match."""
        assert selects_stored(H((b"last-modified", date(-5))), H((b"last-modified", date(-5))))
        assert not selects_stored(H((b"last-modified", date(-5))), H((b"last-modified", date(-6))))

    def test_selects_without_validators(self) -> None:
        """A 304 without validators confirms the one response validated."""
        assert selects_stored(H((b"etag", b'"a"')), H((b"date", date())))

    def test_freshen_updates(self) -> None:
        """Fields of the 304 replace stored ones in place; others are kept (3.2)."""
        stored = H((b"cache-control", b"max-age=1"), (b"test-header", b"A"), (b"content-type", b"text/plain"),
                   (b"content-length", b"36"), (b"x", b"1"), (b"x", b"2"))  # fmt: skip
        new = H((b"cache-control", b"max-age=3600"), (b"test-header", b"B"), (b"content-length", b"10"),
                (b"x", b"3"), (b"new", b"n"), (b"date", date()))  # fmt: skip
        assert freshen(stored, new, NOW) == H(
            (b"cache-control", b"max-age=3600"), (b"test-header", b"B"), (b"content-type", b"text/plain"),
            (b"content-length", b"36"), (b"x", b"3"), (b"new", b"n"), (b"date", date()),
        )  # fmt: skip

    def test_freshen_dates_an_undated_304(self) -> None:
        """A 304 without Date replaces the stored Date with its arrival time."""
        stored = H((b"date", date(-3600)), (b"cache-control", b"max-age=60"))
        out = freshen(stored, H((b"etag", b'"a"')), NOW)
        assert out.get_all(b"date") == [date()]
        assert current_age(out, NOW, NOW, NOW) == 0

    def test_freshen_skips_hop_by_hop(self) -> None:
        """Hop-by-hop and Connection-listed fields of the 304 are not stored."""
        stored = H((b"a", b"1"), (b"date", date(-5)))
        new = H((b"connection", b"a"), (b"a", b"2"), (b"keep-alive", b"5"),
                (b"transfer-encoding", b"chunked"), (b"date", date()))  # fmt: skip
        assert freshen(stored, new, NOW) == H((b"a", b"1"), (b"date", date()))

    def test_freshen_applies_new_qualified_no_cache(self) -> None:
        """Fields the new directives exclude are removed."""
        stored = H((b"secret", b"1"), (b"cache-control", b"max-age=1"))
        new = H((b"cache-control", b'no-cache="secret", max-age=60'))
        assert b"secret" not in freshen(stored, new, NOW)


class TestInvalidation:
    """RFC 9111 section 4.4: invalidating stored responses."""

    origin = (b"http", b"example.com")

    def test_unsafe_success(self) -> None:
        """A successful unsafe method invalidates the target URI."""
        for method in (b"POST", b"PUT", b"DELETE", b"M-SEARCH"):
            assert invalidated_uris(method, 200, b"/a", H(), self.origin) == [b"/a"], method

    def test_safe_methods(self) -> None:
        """Safe methods invalidate nothing."""
        for method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE"):
            assert invalidated_uris(method, 200, b"/a", H(), self.origin) == [], method

    def test_errors(self) -> None:
        """Error statuses invalidate nothing; redirects do."""
        assert invalidated_uris(b"POST", 500, b"/a", H(), self.origin) == []
        assert invalidated_uris(b"POST", 404, b"/a", H(), self.origin) == []
        assert invalidated_uris(b"POST", 303, b"/a", H(), self.origin) == [b"/a"]

    def test_location_and_content_location(self) -> None:
        """Relative references resolve against the target URI."""
        headers = H((b"location", b"location_target"), (b"content-location", b"/x/content?q=1#frag"))
        result = invalidated_uris(b"POST", 201, b"/dir/res?x", headers, self.origin)
        assert result == [b"/dir/res?x", b"/dir/location_target", b"/x/content?q=1"]

    def test_same_origin_only(self) -> None:
        """Other hosts, schemes or ports are not invalidated; default ports are normalised."""
        headers = H((b"location", b"http://other.example/a"), (b"content-location", b"https://example.com/b"))
        assert invalidated_uris(b"POST", 200, b"/t", headers, self.origin) == [b"/t"]
        headers = H((b"location", b"http://EXAMPLE.com:80/c"), (b"content-location", b"//example.com:8080/d"))
        assert invalidated_uris(b"POST", 200, b"/t", headers, self.origin) == [b"/t", b"/c"]


class TestConditionalRequests:
    """RFC 9110 section 13 (and RFC 9111 4.3.2): conditionals answered from the cache."""

    etagged = H((b"etag", b'"abcdef"'), (b"date", date()), (b"last-modified", date(-3000)))

    def ev(self, *pairs: tuple[bytes, bytes], method: bytes = b"GET", headers: Headers | None = None,
           status: int = 200) -> int | None:  # fmt: skip
        return evaluate_conditionals(method, H(*pairs), status, headers or self.etagged, NOW)

    def test_none_match_strong(self) -> None:
        """A matching If-None-Match gives 304."""
        assert self.ev((b"if-none-match", b'"abcdef"')) == 304

    def test_none_match_list(self) -> None:
        """Any member of the list matches."""
        for value in (b'"abcdef", "1234"', b'"1234", "abcdef", "5678"', b'"1", W/"abcdef"'):
            assert self.ev((b"if-none-match", value)) == 304, value

    def test_none_match_weak(self) -> None:
        """If-None-Match uses weak comparison."""
        headers = H((b"etag", b'W/"abcdef"'))
        assert self.ev((b"if-none-match", b'W/"abcdef"'), headers=headers) == 304
        assert self.ev((b"if-none-match", b'"abcdef"'), headers=headers) == 304

    def test_none_match_no_match(self) -> None:
        """A non-matching If-None-Match sends the response."""
        assert self.ev((b"if-none-match", b'"other"')) is None

    def test_none_match_star(self) -> None:
        """``*`` matches any stored response."""
        assert self.ev((b"if-none-match", b"*")) == 304

    def test_none_match_unsafe_method(self) -> None:
        """For other methods, a matching If-None-Match is 412."""
        assert self.ev((b"if-none-match", b'"abcdef"'), method=b"DELETE") == 412

    def test_none_match_precedes_modified_since(self) -> None:
        """If-None-Match takes precedence over If-Modified-Since (13.2.2)."""
        assert self.ev((b"if-none-match", b'"abcdef"'), (b"if-modified-since", date(-10000))) == 304
        assert self.ev((b"if-none-match", b'"zz"'), (b"if-modified-since", date())) is None

    def test_modified_since(self) -> None:
        """Not modified since gives 304; modified since sends the response."""
        assert self.ev((b"if-modified-since", date(-3000))) == 304
        assert self.ev((b"if-modified-since", date(-2000))) == 304
        assert self.ev((b"if-modified-since", date(-4000))) is None

    def test_modified_since_rfc850(self) -> None:
        """An equivalent RFC 850 date works."""
        when = format_http_date(NOW - 3000).decode()
        day, rest = when.split(", ", 1)
        d, mon, year, clock, _ = rest.split(" ")
        full = {"Mon": "Monday", "Tue": "Tuesday", "Wed": "Wednesday", "Thu": "Thursday",
                "Fri": "Friday", "Sat": "Saturday", "Sun": "Sunday"}[day]  # fmt: skip
        rfc850 = f"{full}, {d}-{mon}-{year[2:]} {clock} GMT".encode()
        assert parse_http_date(rfc850) == NOW - 3000
        assert self.ev((b"if-modified-since", rfc850)) == 304

    def test_modified_since_falls_back_to_date(self) -> None:
        """Without Last-Modified, Date is used (RFC 9111 4.3.2)."""
        headers = H((b"date", date()))
        assert self.ev((b"if-modified-since", date(-3000)), headers=headers) is None
        assert self.ev((b"if-modified-since", date(10)), headers=headers) == 304

    def test_modified_since_only_get_head(self) -> None:
        """If-Modified-Since is ignored for other methods."""
        assert self.ev((b"if-modified-since", date()), method=b"POST") is None

    def test_modified_since_invalid(self) -> None:
        """An invalid date is ignored."""
        assert self.ev((b"if-modified-since", b"yesterday")) is None

    def test_if_match(self) -> None:
        """If-Match uses strong comparison; failure is 412."""
        assert self.ev((b"if-match", b'"abcdef"')) is None
        assert self.ev((b"if-match", b'W/"abcdef"')) == 412
        assert self.ev((b"if-match", b'"nope"')) == 412
        assert self.ev((b"if-match", b"*")) is None

    def test_unmodified_since(self) -> None:
        """If-Unmodified-Since fails when modified after the date."""
        assert self.ev((b"if-unmodified-since", date(-4000))) == 412
        assert self.ev((b"if-unmodified-since", date(-3000))) is None

    def test_if_match_precedes_unmodified_since(self) -> None:
        """If-Unmodified-Since is not evaluated when If-Match is present."""
        assert self.ev((b"if-match", b'"abcdef"'), (b"if-unmodified-since", date(-4000))) is None

    def test_non_2xx_ignores_preconditions(self) -> None:
        """Preconditions apply only to a 2xx response (13.2.1)."""
        assert self.ev((b"if-none-match", b'"abcdef"'), status=404) is None

    def test_not_modified_headers(self) -> None:
        """A 304 carries the RFC 9110 15.4.5 fields, Last-Modified only without ETag."""
        stored = H((b"etag", b'"a"'), (b"cache-control", b"max-age=5"), (b"content-type", b"text/plain"),
                   (b"date", date()), (b"last-modified", date(-5)), (b"vary", b"accept"))  # fmt: skip
        out = not_modified_headers(stored)
        assert [n for n, _ in out] == [b"etag", b"cache-control", b"date", b"vary"]
        assert b"last-modified" in not_modified_headers(H((b"last-modified", date(-5))))


class TestRanges:
    """RFC 9110 section 14: range requests."""

    def test_simple(self) -> None:
        """bytes=0-1 of 11 bytes."""
        assert parse_range(b"bytes=0-1", 11) == [(0, 1)]

    def test_open(self) -> None:
        """bytes=1- runs to the end."""
        assert parse_range(b"bytes=1-", 11) == [(1, 10)]

    def test_suffix(self) -> None:
        """bytes=-1 is the last byte; a longer suffix is the whole."""
        assert parse_range(b"bytes=-1", 11) == [(10, 10)]
        assert parse_range(b"bytes=-50", 11) == [(0, 10)]

    def test_clamped(self) -> None:
        """A last-pos past the end is clamped."""
        assert parse_range(b"bytes=5-100", 10) == [(5, 9)]

    def test_unit_case_insensitive(self) -> None:
        """The unit is case-insensitive."""
        assert parse_range(b"Bytes=0-0", 10) == [(0, 0)]

    def test_coalesced(self) -> None:
        """Overlapping and adjacent ranges merge, in order."""
        assert parse_range(b"bytes=5-6,0-1,2-3,6-8", 10) == [(0, 3), (5, 8)]

    def test_unsatisfiable(self) -> None:
        """No range overlaps: unsatisfiable."""
        assert parse_range(b"bytes=20-30", 10) is UNSATISFIABLE
        assert parse_range(b"bytes=-0", 10) is UNSATISFIABLE
        assert parse_range(b"bytes=0-5", 0) is UNSATISFIABLE

    def test_partly_satisfiable(self) -> None:
        """Unsatisfiable ranges are dropped when another is satisfiable."""
        assert parse_range(b"bytes=20-30, 0-0", 10) == [(0, 0)]

    def test_ignored(self) -> None:
        """Other units, bad syntax and reversed ranges: ignore the field."""
        for raw in (b"items=0-1", b"bytes=", b"bytes=a-b", b"bytes=1", b"bytes=5-2", b"bytes 0-1",
                    b"bytes=+1-2", b"bytes=1-2-3", b"bytes = 0-1"):  # fmt: skip
            assert parse_range(raw, 10) is None, raw

    def test_empty_suffix(self) -> None:
        """A suffix range of an empty representation: send it whole."""
        assert parse_range(b"bytes=-5", 0) is None

    def test_too_many(self) -> None:
        """More than max_ranges ranges: ignore."""
        many = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 300, 2))
        assert parse_range(many, 1000) is None
        assert parse_range(many, 1000, max_ranges=1000) is not None

    def test_huge_numbers(self) -> None:
        """Huge positions do not overflow."""
        assert parse_range(b"bytes=0-" + b"9" * 5000, 10) == [(0, 9)]
        assert parse_range(b"bytes=" + b"9" * 5000 + b"-", 10) is UNSATISFIABLE

    specs = st.one_of(
        st.tuples(st.integers(0, 300), st.none()).map(lambda t: b"%d-" % t[0]),
        st.tuples(st.integers(0, 300), st.integers(0, 300)).map(lambda t: b"%d-%d" % (min(t), max(t))),
        st.integers(0, 300).map(lambda n: b"-%d" % n),
    )

    @given(st.lists(specs, min_size=1, max_size=8), st.integers(0, 200))
    def test_within_bounds(self, specs: list[bytes], length: int) -> None:
        """Ranges are always sorted, disjoint and within [0, length)."""
        result = parse_range(b"bytes=" + b", ".join(specs), length)
        if isinstance(result, list):
            assert result
            for first, last in result:
                assert 0 <= first <= last < length
            for (_, a_last), (b_first, _) in itertools.pairwise(result):
                assert a_last + 1 < b_first

    @given(st.lists(specs, min_size=1, max_size=8), st.integers(1, 200))
    def test_covers_every_requested_byte(self, specs: list[bytes], length: int) -> None:
        """Each byte a spec asks for is in the result, and no other."""
        result = parse_range(b"bytes=" + b",".join(specs), length)
        wanted: set[int] = set()
        for spec in specs:
            first, _, last = spec.partition(b"-")
            if not first:
                wanted.update(range(max(0, length - int(last)), length) if int(last) else ())
            else:
                end = min(int(last), length - 1) if last else length - 1
                wanted.update(range(int(first), end + 1))
        if not wanted:
            assert result is UNSATISFIABLE
        else:
            assert isinstance(result, list)
            assert {i for first, last in result for i in range(first, last + 1)} == wanted

    @given(st.binary(max_size=40), st.integers(0, 100))
    def test_never_raises(self, raw: bytes, length: int) -> None:
        """Arbitrary values parse or are ignored, never raise."""
        parse_range(raw, length)

    def test_if_range_etag(self) -> None:
        """An If-Range entity tag must match strongly (13.1.5)."""
        headers = H((b"etag", b'"a"'))
        assert if_range_allows(b'"a"', headers)
        assert not if_range_allows(b'"b"', headers)
        assert not if_range_allows(b'W/"a"', headers)
        assert not if_range_allows(b'"a"', H((b"etag", b'W/"a"')))

    def test_if_range_date(self) -> None:
        """An If-Range date must equal a strong Last-Modified exactly."""
        headers = H((b"last-modified", date(-100)), (b"date", date()))
        assert if_range_allows(date(-100), headers)
        assert not if_range_allows(date(-99), headers)
        weak = H((b"last-modified", date(-10)), (b"date", date()))
        assert not if_range_allows(date(-10), weak)
        assert not if_range_allows(b"garbage", headers)


class TestRangeSelection:
    """RFC 9110 sections 14.2 and 17.15: which ranges are sent, in what order, or the whole."""

    def test_parts_keep_the_requested_order(self) -> None:
        """14.2: parts SHOULD come in the order their range-specs appeared."""
        assert select_ranges(b"bytes=8-9,0-1", 10) == [(8, 9), (0, 1)]
        assert select_ranges(b"bytes=-2,0-1", 10) == [(8, 9), (0, 1)]

    def test_coalesced_ranges_come_where_first_asked_for(self) -> None:
        """Coalesced groups are ordered by the first range-spec each contains."""
        assert select_ranges(b"bytes=5-6,0-1,2-3,6-8", 10) == [(5, 8), (0, 3)]

    def test_overlap_beyond_the_length_is_ignored(self) -> None:
        """17.15: ranges adding up to more than the representation: the whole (nginx's rule)."""
        assert select_ranges(b"bytes=0-,0-", 10) is None
        assert select_ranges(b"bytes=0-5,4-9", 10) is None
        assert parse_range(b"bytes=0-,0-", 10) == [(0, 9)]

    def test_overlap_within_the_length_is_coalesced(self) -> None:
        """Ranges that overlap but add up to no more than the length merge into one."""
        assert select_ranges(b"bytes=0-2,1-3", 10) == [(0, 3)]

    def test_unsatisfiable_and_ignored_as_parse_range(self) -> None:
        """416 and ignored fields are parse_range's."""
        assert select_ranges(b"bytes=20-30", 10) is UNSATISFIABLE
        assert select_ranges(b"items=0-1", 10) is None

    @given(st.lists(TestRanges.specs, min_size=1, max_size=8), st.integers(1, 200))
    def test_the_same_bytes_as_parse_range(self, specs: list[bytes], length: int) -> None:
        """When it answers ranges, they are parse_range's ranges, reordered."""
        value = b"bytes=" + b",".join(specs)
        selected = select_ranges(value, length)
        if isinstance(selected, list):
            assert sorted(selected) == parse_range(value, length)


class TestRangeAnswer:
    """RFC 9110 section 14: how a stored 200 answers a request's Range."""

    STORED = H((b"etag", b'"a"'), (b"content-type", b"text/plain"))

    def answer(self, value: bytes, *extra: tuple[bytes, bytes], method: bytes = b"GET",
               status: int = 200, stored: Headers | None = None, length: int = 10000,
               max_ranges: int = 100):  # fmt: skip
        request = H((b"range", value), *extra)
        return range_answer(method, status, request, stored or self.STORED, length, b"b", max_ranges)

    def test_one_range_is_a_single_part(self) -> None:
        """One range (after coalescing): a plain 206."""
        assert self.answer(b"bytes=0-99") == SingleRange(0, 99)
        assert self.answer(b"bytes=0-99,50-149") == SingleRange(0, 149)

    def test_several_ranges_are_multipart(self) -> None:
        """14.6: several ranges, a multipart/byteranges body of them, typed as stored."""
        body = self.answer(b"bytes=0-99,200-299")
        assert isinstance(body, Multipart)
        assert [(p.first, p.last) for p in body.parts] == [(0, 99), (200, 299)]
        assert body.content_type == b"multipart/byteranges; boundary=b"
        assert b"Content-Type: text/plain\r\n" in body.parts[0].head

    def test_head_and_other_statuses_ignore_range(self) -> None:
        """14.2: Range applies to GET only, and here to a stored 200 only."""
        assert self.answer(b"bytes=0-1", method=b"HEAD") is None
        assert self.answer(b"bytes=0-1", status=404) is None

    def test_failing_if_range_is_the_whole(self) -> None:
        """13.1.5: If-Range that does not match: the whole, for several ranges too."""
        assert self.answer(b"bytes=0-1,5-6", (b"if-range", b'"other"')) is None
        assert isinstance(self.answer(b"bytes=0-1,5-6", (b"if-range", b'"a"')), Multipart)

    def test_unsatisfiable(self) -> None:
        """15.5.17: no satisfiable range."""
        assert self.answer(b"bytes=20000-,30000-") is UNSATISFIABLE

    def test_max_ranges_zero_ignores_every_range(self) -> None:
        """max_ranges = 0: Range support is off."""
        assert self.answer(b"bytes=0-1", max_ranges=0) is None

    def test_max_ranges_one_allows_single_ranges_only(self) -> None:
        """max_ranges = 1: one range is answered, two get the whole."""
        assert self.answer(b"bytes=0-1", max_ranges=1) == SingleRange(0, 1)
        assert self.answer(b"bytes=0-1,5-6", max_ranges=1) is None

    def test_multipart_much_larger_than_the_whole_is_the_whole(self) -> None:
        """17.15: many small ranges whose part heads outweigh the body: the whole."""
        many = b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 100, 4))
        assert self.answer(many, length=100) is None
        assert isinstance(self.answer(many, length=100 + 25 * 80), Multipart)

    def test_a_few_ranges_of_a_small_object_are_multipart(self) -> None:
        """Within MULTIPART_SLACK of the whole, a multipart body is still sent."""
        body = self.answer(b"bytes=0-1,5-6", length=10)
        assert isinstance(body, Multipart) and 10 < body.length <= 10 + MULTIPART_SLACK

    def test_content_coded_responses_answer_several_ranges_whole(self) -> None:
        """Parts of an encoded representation under an unencoded multipart type: the whole."""
        gzip = H((b"content-encoding", b"gzip"), (b"content-type", b"text/plain"))
        assert self.answer(b"bytes=0-1,5-6", stored=gzip) is None
        assert self.answer(b"bytes=0-1", stored=gzip) == SingleRange(0, 1)
        identity = H((b"content-encoding", b"identity"))
        assert isinstance(self.answer(b"bytes=0-1,5-6", stored=identity), Multipart)

    def test_no_content_type_no_part_content_type(self) -> None:
        """A representation without Content-Type: parts without one."""
        body = self.answer(b"bytes=0-1,5-6", stored=H((b"etag", b'"a"')))
        assert isinstance(body, Multipart)
        assert all(b"Content-Type" not in p.head for p in body.parts)

    @given(st.lists(TestRanges.specs, min_size=1, max_size=12), st.integers(1, 400))
    def test_multipart_bounded_and_disjoint(self, specs: list[bytes], length: int) -> None:
        """A multipart answer has several disjoint parts and is never more than
        MULTIPART_SLACK larger than the whole."""
        body = self.answer(b"bytes=" + b",".join(specs), length=length)
        if isinstance(body, Multipart):
            assert len(body.parts) >= 2 and body.length <= length + MULTIPART_SLACK
            spans = sorted((p.first, p.last) for p in body.parts)
            assert all(a_last + 1 < b_first for (_, a_last), (b_first, _) in itertools.pairwise(spans))


class TestCacheStatus:
    """RFC 9211: the Cache-Status field."""

    def test_hit(self) -> None:
        """A hit with its ttl."""
        assert cache_status(hit=True, ttl=42.9) == b"accel; hit; ttl=42"

    def test_miss_stored(self) -> None:
        """A forwarded miss that was stored."""
        assert cache_status(fwd="uri-miss", fwd_status=200, stored=True) == (
            b"accel; fwd=uri-miss; fwd-status=200; stored"
        )

    def test_negative_ttl(self) -> None:
        """A stale response has a negative ttl."""
        assert cache_status(hit=True, ttl=-0.5) == b"accel; hit; ttl=-1"

    def test_collapsed_key_detail(self) -> None:
        """collapsed, key (a String) and detail (Token or String)."""
        out = cache_status(fwd="miss", collapsed=True, key=b'/a"b', detail=b"origin down")
        assert out == b'accel; fwd=miss; collapsed; key="/a\\"b"; detail="origin down"'
        assert cache_status(fwd="stale", detail=b"revalidated") == b"accel; fwd=stale; detail=revalidated"

    def test_name_as_string(self) -> None:
        """A name that is not a Token is sent as a String."""
        assert cache_status(hit=True, name=b"my cache") == b'"my cache"; hit'

    def test_bad_fwd(self) -> None:
        """Unregistered fwd values are refused."""
        try:
            cache_status(fwd="nope")
        except ValueError as e:
            assert "fwd" in str(e)
        else:
            raise AssertionError("expected ValueError")


class TestPurity:
    """The policy is a pure module: no Twisted, no I/O libraries."""

    def test_imports_nothing_heavy(self) -> None:
        """Importing the policy loads neither Twisted nor diskcache."""
        import subprocess
        import sys

        code = (
            "import sys, accel.cache.policy;"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'diskcache')];"
            "assert not bad, bad"
        )
        subprocess.run([sys.executable, "-c", code], check=True)

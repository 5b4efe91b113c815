"""Tests for accel.http.fields, grouped by the RFC section each parser implements."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from accel.http.fields import (
    DELTA_SECONDS_MAX,
    CacheControl,
    EntityTag,
    parse_age,
    parse_cache_control,
    parse_delta_seconds,
    parse_entity_tag,
    parse_entity_tag_list,
    parse_targeted_cache_control,
    strong_match,
    weak_match,
)

tchars = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!#$%&'*+^`|~", min_size=1)


class TestDeltaSeconds:
    """RFC 9111 section 1.2.2: delta-seconds."""

    def test_digits(self) -> None:
        """Plain digits parse, leading zeros included."""
        assert parse_delta_seconds(b"003600") == 3600

    def test_cap(self) -> None:
        """Values past 2**31 are capped to 2**31, however long."""
        assert parse_delta_seconds(b"2147483649") == DELTA_SECONDS_MAX
        assert parse_delta_seconds(b"9" * 5000) == DELTA_SECONDS_MAX

    def test_rejects_what_int_accepts(self) -> None:
        """Signs, spaces, underscores, decimals and non-ASCII digits are invalid."""
        for raw in (b"+1", b"-1", b" 1", b"1 ", b"1_0", b"1.0", b"", "١".encode()):  # noqa: RUF001 (deliberate: a digit that is not ASCII)
            assert parse_delta_seconds(raw) is None, raw

    @given(st.integers(min_value=0, max_value=10**12))
    def test_round_trip(self, n: int) -> None:
        """Any decimal integer reads back as itself, capped."""
        assert parse_delta_seconds(str(n).encode()) == min(n, DELTA_SECONDS_MAX)


class TestCacheControlSyntax:
    """RFC 9111 section 5.2: cache-directive = token [ "=" ( token / quoted-string ) ]."""

    def test_absent(self) -> None:
        """No field line: nothing present."""
        assert parse_cache_control([]) == CacheControl()
        assert not parse_cache_control([]).present

    def test_case_insensitive_names(self) -> None:
        """Directive names are case-insensitive."""
        cc = parse_cache_control([b"MaX-aGe=3600, No-StOrE"])
        assert cc.max_age == 3600 and cc.no_store

    def test_split_across_lines(self) -> None:
        """Directives from several field lines combine."""
        cc = parse_cache_control([b"max-age=3600", b"must-revalidate"])
        assert cc.max_age == 3600 and cc.must_revalidate

    def test_quoted_value(self) -> None:
        """A quoted-string argument is unquoted."""
        assert parse_cache_control([b'max-age="3600"']).max_age == 3600

    def test_quoted_string_hides_directives(self) -> None:
        """A directive inside an extension's quoted string is not a directive."""
        cc = parse_cache_control([b'extension="max-age=3600", max-age=1'])
        assert cc.max_age == 1
        cc = parse_cache_control([b'max-age=1, extension="max-age=3600, no-store"'])
        assert cc.max_age == 1 and not cc.no_store

    def test_space_before_equals_is_not_a_directive(self) -> None:
        """``max-age =3600`` is malformed: ignored entirely."""
        cc = parse_cache_control([b"max-age =3600"])
        assert cc.max_age is None and cc.present

    def test_space_after_equals_is_invalid(self) -> None:
        """``max-age= 3600`` has an invalid argument: reads as 0 (stale)."""
        assert parse_cache_control([b"max-age= 3600"]).max_age == 0

    def test_invalid_values_read_as_stale(self) -> None:
        """Non-integer max-age arguments read as 0 (RFC 9111 section 4.2.1)."""
        for raw in (b"max-age=3600.0", b"max-age=a3600", b"max-age=3600a", b"max-age='3600'",
                    b"max-age=-3600", b"max-age", b's-maxage="1'):  # fmt: skip
            cc = parse_cache_control([raw])
            assert (cc.max_age, cc.s_maxage) in ((0, None), (None, 0)), raw

    def test_unknown_extensions_ignored(self) -> None:
        """Unknown directives do not disturb known ones (section 5.2.3)."""
        assert parse_cache_control([b"foobar, max-age=3600, x=\"y\""]).max_age == 3600

    def test_empty_elements(self) -> None:
        """Empty list elements are skipped (RFC 9110 section 5.6.1)."""
        assert parse_cache_control([b", ,max-age=5,,"]).max_age == 5

    def test_huge_max_age(self) -> None:
        """A max-age beyond 2**31 is capped, still fresh."""
        assert parse_cache_control([b"max-age=99999999999"]).max_age == DELTA_SECONDS_MAX

    @given(st.lists(st.sampled_from([b"max-age=60", b"no-store", b"private", b"x=\"a,b\"",
                                     b"public", b'no-cache="set-cookie"', b"foo"]), max_size=6))  # fmt: skip
    def test_order_independent(self, directives: list[bytes]) -> None:
        """Splitting the same directives over lines in any grouping gives the same value."""
        one_line = parse_cache_control([b", ".join(directives)] if directives else [b""])
        many = parse_cache_control(directives or [b""])
        assert one_line == many

    @given(st.binary(max_size=60))
    def test_never_raises(self, raw: bytes) -> None:
        """Arbitrary bytes parse without error."""
        parse_cache_control([raw])


class TestDuplicates:
    """RFC 9111 section 4.2.1: duplicated freshness directives."""

    def test_conflicting_max_age_is_stale(self) -> None:
        """Different max-age values, same line or not, read as 0."""
        assert parse_cache_control([b"max-age=1800, max-age=1"]).max_age == 0
        assert parse_cache_control([b"max-age=1", b"max-age=1800"]).max_age == 0

    def test_identical_duplicates_agree(self) -> None:
        """Repeating the same value is harmless."""
        assert parse_cache_control([b"max-age=60", b"max-age=60"]).max_age == 60

    def test_request_directives_most_restrictive(self) -> None:
        """Duplicated request deltas keep the strictest value."""
        cc = parse_cache_control([b"max-stale=10, max-stale=5, min-fresh=1, min-fresh=9"])
        assert cc.max_stale == 5 and cc.min_fresh == 9


class TestDirectives:
    """RFC 9111 sections 5.2.1 and 5.2.2: individual directives."""

    def test_bare_max_stale(self) -> None:
        """``max-stale`` without a value accepts any staleness."""
        assert parse_cache_control([b"max-stale"]).max_stale == DELTA_SECONDS_MAX

    def test_invalid_max_stale_ignored(self) -> None:
        """An invalid max-stale argument allows nothing."""
        assert parse_cache_control([b"max-stale=abc"]).max_stale is None

    def test_qualified_no_cache(self) -> None:
        """``no-cache="a, B"`` lists lower-cased field names."""
        cc = parse_cache_control([b'no-cache="a, B"'])
        assert cc.no_cache and cc.no_cache_fields == (b"a", b"b")

    def test_token_qualified_no_cache(self) -> None:
        """The token form ``no-cache=a`` is accepted as well."""
        assert parse_cache_control([b"no-cache=a"]).no_cache_fields == (b"a",)

    def test_unqualified_no_cache_wins(self) -> None:
        """Unqualified no-cache alongside a qualified one is unqualified."""
        cc = parse_cache_control([b'no-cache="a", no-cache'])
        assert cc.no_cache and cc.no_cache_fields == ()

    def test_empty_qualified_is_unqualified(self) -> None:
        """``no-cache=""`` names nothing; it reads as the unqualified form."""
        assert parse_cache_control([b'no-cache=""']).no_cache_fields == ()

    def test_private_fields(self) -> None:
        """``private="set-cookie"`` is qualified."""
        cc = parse_cache_control([b'private="Set-Cookie"'])
        assert cc.private and cc.private_fields == (b"set-cookie",)

    def test_flags(self) -> None:
        """Boolean directives set their flags."""
        cc = parse_cache_control(
            [(b"no-store, no-transform, only-if-cached, must-revalidate, proxy-revalidate,"
              b" must-understand, public")]
        )  # fmt: skip
        assert (cc.no_store, cc.no_transform, cc.only_if_cached, cc.must_revalidate,
                cc.proxy_revalidate, cc.must_understand, cc.public) == (True,) * 7  # fmt: skip

    def test_rfc5861(self) -> None:
        """stale-while-revalidate and stale-if-error parse as delta-seconds."""
        cc = parse_cache_control([b"stale-while-revalidate=30, stale-if-error=600"])
        assert cc.stale_while_revalidate == 30 and cc.stale_if_error == 600


class TestTargetedFields:
    """RFC 9213 section 2.1: targeted fields are Structured Field Dictionaries."""

    def test_max_age(self) -> None:
        """An Integer max-age parses."""
        assert parse_targeted_cache_control([b"max-age=3600"]).max_age == 3600  # type: ignore[union-attr]

    def test_large_integer_capped(self) -> None:
        """Integers past 2**31 are capped."""
        cc = parse_targeted_cache_control([b"max-age=99999999999"])
        assert cc is not None and cc.max_age == DELTA_SECONDS_MAX

    def test_invalid_syntax_ignored(self) -> None:
        """A member that is not valid SF makes the whole field invalid."""
        for raw in (b"max-age=10000, &&&&&", b"max-age =100", b"max-age= 100", b"max-age=1,",
                    b"no-cache=\"unterminated"):  # fmt: skip
            assert parse_targeted_cache_control([raw]) is None, raw

    def test_wrong_type_ignored(self) -> None:
        """A max-age that is not an Integer makes the field invalid."""
        for raw in (b'max-age="10000"', b"max-age=1.5", b"max-age=-1", b"max-age=?1",
                    b"max-age=tok"):  # fmt: skip
            assert parse_targeted_cache_control([raw]) is None, raw

    def test_empty_ignored(self) -> None:
        """An empty field is ignored."""
        assert parse_targeted_cache_control([b""]) is None
        assert parse_targeted_cache_control([]) is None

    def test_booleans_and_parameters(self) -> None:
        """Bare keys are true, ``?0`` is absent, parameters are skipped."""
        cc = parse_targeted_cache_control([b"no-store=?0, private;foo=1, must-revalidate"])
        assert cc is not None and not cc.no_store and cc.private and cc.must_revalidate

    def test_string_field_list(self) -> None:
        """``no-cache="a"`` qualifies no-cache."""
        cc = parse_targeted_cache_control([b'no-cache="a, b", max-age=5'])
        assert cc is not None and cc.no_cache_fields == (b"a", b"b")

    def test_extension_types(self) -> None:
        """Unknown members of any valid type are ignored."""
        cc = parse_targeted_cache_control([b'foo, bar=tok, baz=:aGk=:, q=1.5, s="x", max-age=7'])
        assert cc is not None and cc.max_age == 7

    def test_duplicate_last_wins(self) -> None:
        """SF dictionaries keep the last value of a repeated key."""
        cc = parse_targeted_cache_control([b"max-age=1", b"max-age=100"])
        assert cc is not None and cc.max_age == 100

    def test_key_case(self) -> None:
        """Keys are read case-insensitively, like cache directives."""
        cc = parse_targeted_cache_control([b"MaX-aGe=3600"])
        assert cc is not None and cc.max_age == 3600

    @given(st.binary(max_size=60))
    def test_never_raises(self, raw: bytes) -> None:
        """Arbitrary bytes parse or are rejected, never raise."""
        parse_targeted_cache_control([raw])


class TestAge:
    """RFC 9111 section 5.1: Age."""

    def test_valid(self) -> None:
        """A delta-seconds value parses."""
        assert parse_age([b"30"]) == 30

    def test_invalid_ignored(self) -> None:
        """Non-numeric, negative and decimal values are ignored."""
        for raw in (b"abc", b"-7200", b"7200.0", b""):
            assert parse_age([raw]) is None, raw

    def test_absent(self) -> None:
        """No Age field: None."""
        assert parse_age([]) is None

    def test_first_member(self) -> None:
        """``7200, 0`` reads 7200 and ``0, 7200`` reads 0."""
        assert parse_age([b"7200, 0"]) == 7200
        assert parse_age([b"0, 7200"]) == 0

    def test_first_line(self) -> None:
        """With several lines, the first counts."""
        assert parse_age([b"7200", b"0"]) == 7200

    def test_parameters_dropped(self) -> None:
        """``7200;foo=bar`` reads 7200."""
        assert parse_age([b"7200;foo=bar"]) == 7200

    def test_cap(self) -> None:
        """Huge ages are capped at 2**31."""
        assert parse_age([b"2147483649"]) == DELTA_SECONDS_MAX


class TestEntityTags:
    """RFC 9110 section 8.8.3: entity tags and their comparison."""

    def test_strong(self) -> None:
        """A quoted tag is strong."""
        assert parse_entity_tag(b'"xyz"') == EntityTag(False, b"xyz")

    def test_weak(self) -> None:
        """``W/`` (or ``w/``) marks a weak tag."""
        assert parse_entity_tag(b'W/"xyz"') == EntityTag(True, b"xyz")
        assert parse_entity_tag(b'w/"xyz"') == EntityTag(True, b"xyz")

    def test_unquoted_matches_quoted(self) -> None:
        """An unquoted tag compares equal to the quoted one."""
        assert strong_match(parse_entity_tag(b"abc"), parse_entity_tag(b'"abc"'))

    def test_malformed_compares_by_bytes(self) -> None:
        """A malformed tag still matches identical bytes."""
        assert strong_match(parse_entity_tag(b'W\\"abc"'), parse_entity_tag(b'W\\"abc"'))

    def test_comparison_table(self) -> None:
        """The table of RFC 9110 section 8.8.3.2."""
        w1, w2, s1 = EntityTag(True, b"1"), EntityTag(True, b"2"), EntityTag(False, b"1")
        assert not strong_match(w1, w1) and weak_match(w1, w1)
        assert not strong_match(w1, w2) and not weak_match(w1, w2)
        assert not strong_match(w1, s1) and weak_match(w1, s1)
        assert strong_match(s1, s1) and weak_match(s1, s1)

    def test_list_and_star(self) -> None:
        """Lists split across lines; ``*`` is None."""
        tags = parse_entity_tag_list([b'"a", W/"b"', b'"c,d"'])
        assert tags == [EntityTag(False, b"a"), EntityTag(True, b"b"), EntityTag(False, b"c,d")]
        assert parse_entity_tag_list([b"*"]) is None

    @given(st.booleans(), tchars)
    def test_round_trip(self, weak: bool, opaque: str) -> None:
        """Serialising then parsing gives back the tag."""
        tag = EntityTag(weak, opaque.replace('"', "").encode() or b"x")
        assert parse_entity_tag(tag.to_bytes()) == tag


class TestParsedValuesAreRemembered:
    """parse_cache_control and parse_http_date remember short values: same answers, bounded."""

    @given(st.binary(max_size=80))
    def test_cache_control_remembered_equals_parsed(self, value: bytes) -> None:
        """A remembered Cache-Control value reads as a fresh parse of it, every time."""
        from accel.http import fields

        assert parse_cache_control([value]) == fields._parse_cache_control([value])
        assert parse_cache_control([value]) == fields._parse_cache_control([value])

    def test_cache_control_memo_is_bounded(self) -> None:
        """Never more than MEMO_MAX values, and none longer than MEMO_VALUE_MAX."""
        from accel.http import fields

        for n in range(fields.MEMO_MAX * 2 + 10):
            parse_cache_control([b"max-age=%d" % n])
            assert len(fields._CC_MEMO) <= fields.MEMO_MAX
        long = b"max-age=1, " + b"x" * fields.MEMO_VALUE_MAX
        assert parse_cache_control([long]).max_age == 1
        assert long not in fields._CC_MEMO

    @given(st.floats(0, 2**33).map(int), st.sampled_from([b"", b" ", b"\t "]))
    def test_dates_remembered_equal_parsed(self, seconds: int, pad: bytes) -> None:
        """A remembered IMF-fixdate reads the same the second time, padded or not."""
        from accel.http.dates import format_http_date, parse_http_date

        raw = pad + format_http_date(seconds) + pad
        assert parse_http_date(raw) == float(seconds)
        assert parse_http_date(raw) == float(seconds)

    def test_date_memo_is_bounded(self) -> None:
        from accel.http import dates

        for n in range(dates._MEMO_MAX * 2 + 10):
            assert dates.parse_http_date(dates.format_http_date(n * 86400.0)) == n * 86400.0
            assert len(dates._MEMO) <= dates._MEMO_MAX

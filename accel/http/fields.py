"""Parsers for the fields the cache reads: Cache-Control and friends.

Pure: stdlib, attrs and :mod:`accel.http.headers` only. Every parser is
pedantic about syntax and recovers exactly as the RFC says, because what it
reads comes off the wire: digits are checked before ``int()`` ever sees them,
quoted strings are unescaped, and list elements may be spread across lines.

* ``Cache-Control`` (RFC 9111 section 5.2), with the recovery rules of
  section 4.2.1 for duplicated or invalid freshness directives.
* Targeted cache-control fields such as ``CDN-Cache-Control`` (RFC 9213),
  which are Structured Field Dictionaries (RFC 8941 section 3.2).
* ``Age`` (RFC 9111 section 5.1).
* Entity tags (RFC 9110 section 8.8.3) and their comparison functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from attrs import frozen

from accel.http.headers import split_list

__all__ = [
    "DELTA_SECONDS_MAX",
    "CacheControl",
    "EntityTag",
    "parse_age",
    "parse_cache_control",
    "parse_delta_seconds",
    "parse_entity_tag",
    "parse_entity_tag_list",
    "parse_targeted_cache_control",
    "strong_match",
    "weak_match",
]

#: RFC 9111 section 1.2.2: a delta-seconds too large to represent is sent,
#: and may be treated, as 2147483648 (2**31).
DELTA_SECONDS_MAX = 2**31

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset(b"0123456789")


def _is_token(raw: bytes) -> bool:
    """RFC 9110 section 5.6.2: ``token = 1*tchar``."""
    return bool(raw) and all(c in _TCHAR for c in raw)


def parse_delta_seconds(raw: bytes) -> int | None:
    """RFC 9111 section 1.2.2: ``delta-seconds = 1*DIGIT``.

    ``None`` means invalid (the caller applies its recovery rule). Values
    are capped at :data:`DELTA_SECONDS_MAX`. Only ASCII digits are accepted:
    ``int()`` alone would take ``b" +1_0"``.
    """
    if not raw or not all(c in _DIGITS for c in raw):
        return None
    if len(raw) > 10:  # anything this long is past the cap already
        return DELTA_SECONDS_MAX
    return min(int(raw), DELTA_SECONDS_MAX)


def _unquote(raw: bytes) -> bytes | None:
    """The content of a quoted-string (RFC 9110 section 5.6.4), or ``None``.

    ``raw`` must be exactly one quoted-string; backslash escapes are undone.
    """
    if len(raw) < 2 or raw[0] != 0x22 or raw[-1] != 0x22:
        return None
    out = bytearray()
    i, end = 1, len(raw) - 1
    while i < end:
        c = raw[i]
        if c == 0x5C:  # quoted-pair
            if i + 1 >= end:
                return None
            out.append(raw[i + 1])
            i += 2
            continue
        if c == 0x22:
            return None  # a bare quote inside: two strings, not one
        out.append(c)
        i += 1
    return bytes(out)


def _field_names(raw: bytes) -> tuple[bytes, ...]:
    """The field names of a qualified ``no-cache``/``private`` (lower-cased)."""
    names: list[bytes] = []
    for part in raw.split(b","):
        part = part.strip(b" \t").lower()
        if _is_token(part) and part not in names:
            names.append(part)
    return tuple(names)


@frozen
class CacheControl:
    """The directives of one message's cache-control field(s).

    Request and response directives share this value; each side reads the
    attributes that apply to it (RFC 9111 sections 5.2.1 and 5.2.2).
    Unknown extension directives are ignored, as section 5.2.3 requires.

    Delta-seconds attributes are ``None`` when the directive is absent.
    A ``max-age``/``s-maxage`` that is invalid, or repeated with different
    values, reads as ``0``: RFC 9111 section 4.2.1 lets a cache consider such
    a response stale, and a shared cache should err that way. The other
    delta-seconds directives ignore an invalid value and resolve duplicates
    to the most restrictive one. ``max_stale`` is :data:`DELTA_SECONDS_MAX`
    for a bare ``max-stale`` (any staleness is acceptable).
    ``no_cache`` is true for both forms of the directive;
    ``no_cache_fields`` lists the names of the qualified form and is empty
    for the unqualified one (which then wins). ``private`` likewise.
    """

    present: bool = False
    max_age: int | None = None
    s_maxage: int | None = None
    max_stale: int | None = None
    min_fresh: int | None = None
    stale_while_revalidate: int | None = None
    stale_if_error: int | None = None
    no_cache: bool = False
    no_cache_fields: tuple[bytes, ...] = ()
    no_store: bool = False
    no_transform: bool = False
    only_if_cached: bool = False
    must_revalidate: bool = False
    proxy_revalidate: bool = False
    must_understand: bool = False
    public: bool = False
    private: bool = False
    private_fields: tuple[bytes, ...] = ()


#: Directives whose duplicates or bad values make a response stale
#: (RFC 9111 section 4.2.1): they read as 0.
_FRESHNESS = (b"max-age", b"s-maxage")
#: Directives whose argument is delta-seconds; duplicates resolve to the
#: most restrictive value (the smallest, except ``min-fresh``).
_DELTAS = (b"max-stale", b"min-fresh", b"stale-while-revalidate", b"stale-if-error")
_FLAGS = {
    b"no-store": "no_store",
    b"no-transform": "no_transform",
    b"only-if-cached": "only_if_cached",
    b"must-revalidate": "must_revalidate",
    b"proxy-revalidate": "proxy_revalidate",
    b"must-understand": "must_understand",
    b"public": "public",
}


def _build(directives: Iterable[tuple[bytes, bytes | None]]) -> CacheControl:
    """Fold ``(lower-case name, unquoted value or None)`` pairs into a value.

    Shared by the classic and the Structured Field parsers so that the two
    agree on every directive's meaning.
    """
    fields: dict[str, object] = {"present": True}
    freshness: dict[bytes, list[int | None]] = {}
    deltas: dict[bytes, list[int]] = {}
    # Per occurrence: the qualified form's names, or None for the unqualified
    # form (an empty or unreadable list counts as unqualified: stricter).
    no_cache: list[tuple[bytes, ...] | None] = []
    private: list[tuple[bytes, ...] | None] = []
    for name, value in directives:
        if name in _FRESHNESS:
            freshness.setdefault(name, []).append(
                parse_delta_seconds(value) if value is not None else None
            )
        elif name in _DELTAS:
            if name == b"max-stale" and value is None:
                deltas.setdefault(name, []).append(DELTA_SECONDS_MAX)
            elif value is not None and (seconds := parse_delta_seconds(value)) is not None:
                deltas.setdefault(name, []).append(seconds)
        elif name == b"no-cache":
            no_cache.append(_field_names(value) if value is not None else None)
        elif name == b"private":
            private.append(_field_names(value) if value is not None else None)
        elif name in _FLAGS:
            fields[_FLAGS[name]] = True
    for name, values in freshness.items():
        first = values[0]
        agreed = first is not None and all(value == first for value in values)
        fields[name.decode().replace("-", "_")] = first if agreed else 0
    for name, candidates in deltas.items():
        pick = max if name == b"min-fresh" else min
        fields[name.decode().replace("-", "_")] = pick(candidates)
    if no_cache:
        fields["no_cache"] = True
        if all(no_cache):
            fields["no_cache_fields"] = _merge(no_cache)
    if private:
        fields["private"] = True
        if all(private):
            fields["private_fields"] = _merge(private)
    return CacheControl(**fields)  # type: ignore[arg-type]


def _merge(lists: list[tuple[bytes, ...] | None]) -> tuple[bytes, ...]:
    """The union of several field-name lists, first-seen order."""
    out: list[bytes] = []
    for names in lists:
        for name in names or ():
            if name not in out:
                out.append(name)
    return tuple(out)


#: Stands for an argument that is neither a token nor a quoted-string: it
#: reads as an invalid delta-seconds and as an unqualified field list, the
#: strict reading in both cases. NUL cannot occur in a field value.
_INVALID = b"\x00"


#: No ``Cache-Control`` at all, the usual case: one frozen value, shared.
_ABSENT = CacheControl()


#: Parsed one-line ``Cache-Control`` values: the same few recur on nearly
#: every request and stored response, and a stored response's is read
#: several times per use. Only short values are kept, at most
#: :data:`MEMO_MAX` of them (emptied when full): a client sending a new
#: value each time costs a parse, never memory.
_CC_MEMO: dict[bytes, CacheControl] = {}
MEMO_MAX = 1024
MEMO_VALUE_MAX = 256


def parse_cache_control(values: list[bytes]) -> CacheControl:
    """Parse ``Cache-Control`` field lines (RFC 9111 section 5.2).

    ``cache-directive = token [ "=" ( token / quoted-string ) ]``; names are
    case-insensitive, elements may be spread over several lines, and commas
    inside quoted strings do not split. A malformed element (``max-age =1``)
    is not a directive and is ignored; a known directive with a malformed
    argument (``max-age= 1``, ``max-age=1.5``) is kept as invalid. With no
    field line at all, ``present`` is false.
    """
    if not values:
        return _ABSENT
    if len(values) == 1 and len(value := values[0]) <= MEMO_VALUE_MAX:
        parsed = _CC_MEMO.get(value)
        if parsed is None:
            parsed = _parse_cache_control(values)
            if len(_CC_MEMO) >= MEMO_MAX:
                _CC_MEMO.clear()
            _CC_MEMO[value] = parsed
        return parsed
    return _parse_cache_control(values)


def _parse_cache_control(values: list[bytes]) -> CacheControl:
    pairs: list[tuple[bytes, bytes | None]] = []
    for element in split_list(values):
        name, eq, raw = element.partition(b"=")
        if not _is_token(name):
            continue
        value: bytes | None = None
        if eq:
            if raw[:1] == b'"':
                value = _unquote(raw)
            elif _is_token(raw):
                value = raw
            value = _INVALID if value is None else value
        pairs.append((name.lower(), value))
    return _build(pairs)


# -- RFC 8941 Structured Field Dictionary, as RFC 9213 targeted fields use it --

_KEY_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyz*")
_KEY_REST = _KEY_FIRST | _DIGITS | frozenset(b"_-.")
_TOKEN_FIRST = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*")
_TOKEN_REST = _TCHAR | frozenset(b":/")
_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")

#: Directives whose Structured Field value must be a non-negative Integer.
_INTEGER_DIRECTIVES = frozenset(_FRESHNESS + _DELTAS)


def _lower(c: int) -> int:
    """ASCII lower-case of one byte."""
    return c | 0x20 if 0x41 <= c <= 0x5A else c


class _SFError(ValueError):
    """The field is not a valid Structured Field Dictionary."""


class _SFParser:
    """A strict RFC 8941 section 4.2 parser, reduced to what a dictionary needs.

    Items become ``(kind, value)`` pairs with ``kind`` one of ``int``,
    ``decimal``, ``string``, ``token``, ``bytes``, ``bool``. Key case is
    accepted loosely (``MaX-aGe``) since cache directives are case-
    insensitive; everything else is as strict as RFC 8941 asks.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def _skip(self, chars: bytes) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in chars:
            self.pos += 1

    def dictionary(self) -> list[tuple[bytes, tuple[str, object]]]:
        self._skip(b" ")
        members: dict[bytes, tuple[str, object]] = {}
        while self.pos < len(self.data):
            key = self._key()
            if self._peek() == 0x3D:  # "="
                self.pos += 1
                item = self._bare_item()
            else:
                item = ("bool", True)
            self._parameters()
            members.pop(key, None)  # a later duplicate overwrites, in its place
            members[key] = item
            self._skip(b" \t")
            if self.pos >= len(self.data):
                break
            if self._peek() != 0x2C:
                raise _SFError("expected a comma between members")
            self.pos += 1
            self._skip(b" \t")
            if self.pos >= len(self.data):
                raise _SFError("trailing comma")
        return list(members.items())

    def _key(self) -> bytes:
        start = self.pos
        c = self._peek()
        if c is None or _lower(c) not in _KEY_FIRST:
            raise _SFError("expected a key")
        while (c := self._peek()) is not None and _lower(c) in _KEY_REST:
            self.pos += 1
        return self.data[start : self.pos].lower()

    def _parameters(self) -> None:
        while self._peek() == 0x3B:  # ";"
            self.pos += 1
            self._skip(b" ")
            self._key()
            if self._peek() == 0x3D:
                self.pos += 1
                self._bare_item()

    def _bare_item(self) -> tuple[str, object]:
        c = self._peek()
        if c is None:
            raise _SFError("expected an item")
        if c == 0x2D or c in _DIGITS:
            return self._number()
        if c == 0x22:
            return self._string()
        if c in _TOKEN_FIRST:
            start = self.pos
            while (c := self._peek()) is not None and c in _TOKEN_REST:
                self.pos += 1
            return ("token", self.data[start : self.pos])
        if c == 0x3A:  # ":" byte sequence
            end = self.data.find(b":", self.pos + 1)
            if end < 0 or not all(b in _BASE64 for b in self.data[self.pos + 1 : end]):
                raise _SFError("bad byte sequence")
            self.pos = end + 1
            return ("bytes", None)
        if c == 0x3F:  # "?" boolean
            flag = self.data[self.pos + 1 : self.pos + 2]
            if flag not in (b"0", b"1"):
                raise _SFError("bad boolean")
            self.pos += 2
            return ("bool", flag == b"1")
        raise _SFError("unknown item type")

    def _number(self) -> tuple[str, object]:
        start = self.pos
        if self._peek() == 0x2D:
            self.pos += 1
        digits_start = self.pos
        self._skip(b"0123456789")
        integer = self.data[digits_start : self.pos]
        if not integer:
            raise _SFError("expected digits")
        if self._peek() == 0x2E:  # "." decimal
            self.pos += 1
            frac_start = self.pos
            self._skip(b"0123456789")
            frac = self.data[frac_start : self.pos]
            if len(integer) > 12 or not 1 <= len(frac) <= 3:
                raise _SFError("bad decimal")
            return ("decimal", self.data[start : self.pos])
        if len(integer) > 15:
            raise _SFError("integer too long")
        return ("int", int(self.data[start : self.pos]))

    def _string(self) -> tuple[str, object]:
        self.pos += 1
        out = bytearray()
        while self.pos < len(self.data):
            c = self.data[self.pos]
            self.pos += 1
            if c == 0x5C:
                nxt = self._peek()
                if nxt not in (0x22, 0x5C):
                    raise _SFError("bad escape")
                out.append(nxt)
                self.pos += 1
            elif c == 0x22:
                return ("string", bytes(out))
            elif not 0x20 <= c <= 0x7E:
                raise _SFError("bad string character")
            else:
                out.append(c)
        raise _SFError("unterminated string")


def parse_targeted_cache_control(values: list[bytes]) -> CacheControl | None:
    """Parse a targeted cache-control field (RFC 9213 section 2.1).

    Targeted fields are Structured Field Dictionaries (RFC 8941). ``None``
    means the field is absent, empty or invalid, and so must be ignored
    (section 2.1: the cache then falls back to ``Cache-Control``). Besides
    syntax errors, a directive of the wrong type makes the field invalid:
    ``max-age`` and the other delta-seconds directives must be non-negative
    Integers. ``no-cache``/``private`` may carry a String of field names; a
    Boolean false (``no-store=?0``) means the directive is absent.
    """
    data = b",".join(values).strip(b" \t")
    if not data:
        return None
    try:
        members = _SFParser(data).dictionary()
    except _SFError:
        return None
    pairs: list[tuple[bytes, bytes | None]] = []
    for name, (kind, value) in members:
        if name in _INTEGER_DIRECTIVES:
            if kind != "int" or not isinstance(value, int) or value < 0:
                return None
            pairs.append((name, b"%d" % value))
        elif kind == "bool":
            if value:
                pairs.append((name, None))
        elif kind == "string" and isinstance(value, bytes):
            pairs.append((name, value))
        else:
            pairs.append((name, None))
    if not pairs:
        return None
    return _build(pairs)


def parse_age(values: list[bytes]) -> int | None:
    """The ``Age`` value (RFC 9111 section 5.1), or ``None`` if unusable.

    An invalid Age is ignored. Only the first member counts when the field
    is repeated (``Age: 7200, 0`` is 7200), and parameters are dropped
    (``7200;foo=bar`` is 7200): both read the age as large as claimed,
    which errs towards staleness.
    """
    members = split_list(values[:1])
    if not members:
        return None
    return parse_delta_seconds(members[0].split(b";", 1)[0].strip(b" \t"))


@frozen
class EntityTag:
    """An entity tag (RFC 9110 section 8.8.3); ``opaque`` excludes the quotes."""

    weak: bool
    opaque: bytes

    def to_bytes(self) -> bytes:
        """The canonical serialisation, quoted, ``W/`` for weak tags."""
        quoted = b'"' + self.opaque + b'"'
        return b"W/" + quoted if self.weak else quoted


def parse_entity_tag(raw: bytes) -> EntityTag:
    """Read an entity tag leniently, so that equal bytes always compare equal.

    ``"x"`` and ``W/"x"`` (also ``w/"x"``) parse per RFC 9110; an unquoted
    value, as some servers send, is taken whole as a strong opaque tag, so
    ``abc`` and ``"abc"`` match each other as they do in common caches.
    """
    raw = raw.strip(b" \t")
    weak = raw[:2] in (b"W/", b"w/")
    body = raw[2:] if weak else raw
    if len(body) >= 2 and body[0] == 0x22 and body[-1] == 0x22 and b'"' not in body[1:-1]:
        return EntityTag(weak, body[1:-1])
    return EntityTag(False, raw)


def parse_entity_tag_list(values: list[bytes]) -> list[EntityTag] | None:
    """An ``If-Match``/``If-None-Match`` list; ``None`` stands for ``*``.

    RFC 9110 sections 13.1.1 and 13.1.2. An empty list is returned for an
    absent or empty field.
    """
    members = split_list(values)
    if b"*" in members:
        return None
    return [parse_entity_tag(member) for member in members]


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 section 8.8.3.2: both strong and identical."""
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """RFC 9110 section 8.8.3.2: identical opaque tags, weakness ignored."""
    return a.opaque == b.opaque

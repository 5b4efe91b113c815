"""HTTP-date (RFC 9110 section 5.6.7): parse all three forms, emit IMF-fixdate.

Pure. Times are POSIX seconds as ``float``/``int``; parse failures return
``None`` so callers can apply the RFC's recovery rule (an invalid Expires
means "already expired", section 5.3 of RFC 9111).
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["format_http_date", "parse_http_date"]

_MONTHS = {
    b"jan": 1, b"feb": 2, b"mar": 3, b"apr": 4, b"may": 5, b"jun": 6,
    b"jul": 7, b"aug": 8, b"sep": 9, b"oct": 10, b"nov": 11, b"dec": 12,
}  # fmt: skip
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTH_NAMES = (
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
)  # fmt: skip


#: RFC 9110 section 5.6.7, with the single SP separators of the grammar. The
#: names of days, months and ``GMT`` are matched without regard to case
#: (recipients are "encouraged to be robust in parsing timestamps"); the
#: layout is not, so ``Thu, 18  Aug  2050 ...`` is not a date.
_IMF_FIXDATE = re.compile(
    rb"([A-Za-z]{3}), ([0-9]{2}) ([A-Za-z]{3}) ([0-9]{4})"
    rb" ([0-9]{2}):([0-9]{2}):([0-9]{2}) [Gg][Mm][Tt]"
)
_RFC850_DATE = re.compile(
    rb"([A-Za-z]{6,9}), ([0-9]{2})-([A-Za-z]{3})-([0-9]{2})"
    rb" ([0-9]{2}):([0-9]{2}):([0-9]{2}) [Gg][Mm][Tt]"
)
_ASCTIME_DATE = re.compile(
    rb"([A-Za-z]{3}) ([A-Za-z]{3}) ([0-9]{2}| [0-9])"
    rb" ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([0-9]{4})"
)
_DAY_NAMES = frozenset(day.lower() for day in _DAYS)
_LONG_DAY_NAMES = frozenset(
    {b"monday", b"tuesday", b"wednesday", b"thursday", b"friday", b"saturday", b"sunday"}
)  # fmt: skip


def _build(
    year: int, month: bytes, day: bytes, hour: bytes, minute: bytes, second: bytes
) -> float | None:
    """POSIX seconds for a parsed date, or ``None`` if a part is out of range."""
    number = _MONTHS.get(month.lower())
    h, m, s, d = int(hour), int(minute), int(second), int(day)
    if number is None or not 1 <= d <= 31 or h > 23 or m > 59 or s > 60:
        return None
    try:
        return float(calendar.timegm((year, number, d, h, m, s, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


#: IMF-fixdates already read (the same ``Date`` and ``Expires`` recur on
#: every use of a stored response); at most 1,024, emptied when full.
_MEMO: dict[bytes, float] = {}
_MEMO_MAX = 1024
_MEMO_VALUE_MAX = 64


def parse_http_date(raw: bytes) -> float | None:
    """Parse an HTTP-date; ``None`` if it is not one.

    Accepts IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), the obsolete
    RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``, two-digit years read
    per RFC 9110 as within 50 years of now) and asctime
    (``Sun Nov  6 08:49:37 1994``), as a recipient MUST (RFC 9110 section
    5.6.7). Each form must follow its grammar exactly, one space where it
    has ``SP``; only the case of the names is forgiven. Surrounding
    whitespace is ignored.
    """
    if (seconds := _MEMO.get(raw)) is not None:
        return seconds
    stripped = raw.strip(b" \t")
    if (match := _IMF_FIXDATE.fullmatch(stripped)) is not None:
        name, day, month, year, hour, minute, second = match.groups()
        if name.lower() not in _DAY_NAMES:
            return None
        seconds = _build(int(year), month, day, hour, minute, second)
        if seconds is not None and len(raw) <= _MEMO_VALUE_MAX:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            _MEMO[raw] = seconds
        return seconds
    raw = stripped
    if (match := _RFC850_DATE.fullmatch(raw)) is not None:
        name, day, month, yy, hour, minute, second = match.groups()
        if name.lower() not in _LONG_DAY_NAMES:
            return None
        this_year = time.gmtime().tm_year
        year = this_year - this_year % 100 + int(yy)
        if year > this_year + 50:
            year -= 100
        return _build(year, month, day, hour, minute, second)
    if (match := _ASCTIME_DATE.fullmatch(raw)) is not None:
        name, month, day, hour, minute, second, year = match.groups()
        if name.lower() not in _DAY_NAMES:
            return None
        return _build(int(year), month, day.lstrip(b" "), hour, minute, second)
    return None


def format_http_date(when: float) -> bytes:
    """IMF-fixdate for ``when`` (POSIX seconds)."""
    t = time.gmtime(when)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTH_NAMES[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )

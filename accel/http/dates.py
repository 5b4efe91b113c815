"""HTTP-date (RFC 9110 section 5.6.7): parse all three forms, emit IMF-fixdate.

Pure. Times are POSIX seconds as ``float``/``int``; parse failures return
``None`` so callers can apply the RFC's recovery rule (an invalid Expires
means "already expired", section 5.3 of RFC 9111).
"""

from __future__ import annotations

import calendar
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


def _clock(raw: bytes) -> tuple[int, int, int] | None:
    parts = raw.split(b":")
    if len(parts) != 3 or not all(len(p) == 2 and p.isdigit() for p in parts):
        return None
    h, m, s = (int(p) for p in parts)
    if h > 23 or m > 59 or s > 60:
        return None
    return h, m, s


def _build(year: int, month: int, day: int, hms: tuple[int, int, int]) -> float | None:
    if not 1 <= day <= 31:
        return None
    try:
        return float(calendar.timegm((year, month, day, *hms, 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


def parse_http_date(raw: bytes) -> float | None:
    """Parse an HTTP-date; ``None`` if it is not one.

    Accepts IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), the obsolete
    RFC 850 form (``Sunday, 06-Nov-94 08:49:37 GMT``, two-digit years read
    per RFC 9110 as within 50 years of now) and asctime
    (``Sun Nov  6 08:49:37 1994``), as a recipient MUST.
    """
    raw = raw.strip(b" \t")
    if not raw.isascii():
        return None
    words = raw.split()
    if len(words) == 6 and words[5] == b"GMT" and words[0].endswith(b","):
        # IMF-fixdate: day-name, DD Mon YYYY HH:MM:SS GMT
        day, mon, year, clock = words[1], words[2], words[3], words[4]
        if len(day) != 2 or not day.isdigit() or len(year) != 4 or not year.isdigit():
            return None
        month = _MONTHS.get(mon.lower())
        hms = _clock(clock)
        if month is None or hms is None:
            return None
        return _build(int(year), month, int(day), hms)
    if len(words) == 4 and words[3] == b"GMT" and words[0].endswith(b","):
        # RFC 850: Weekday, DD-Mon-YY HH:MM:SS GMT
        dmy = words[1].split(b"-")
        if len(dmy) != 3:
            return None
        day, mon, yy = dmy
        if len(day) != 2 or not day.isdigit() or len(yy) != 2 or not yy.isdigit():
            return None
        month = _MONTHS.get(mon.lower())
        hms = _clock(words[2])
        if month is None or hms is None:
            return None
        this_year = time.gmtime().tm_year
        full_year = this_year - this_year % 100 + int(yy)
        if full_year > this_year + 50:
            full_year -= 100
        return _build(full_year, month, int(day), hms)
    if len(words) == 5:
        # asctime: Sun Nov  6 08:49:37 1994
        _, mon, day, clock, year = words
        if not day.isdigit() or len(day) > 2 or len(year) != 4 or not year.isdigit():
            return None
        month = _MONTHS.get(mon.lower())
        hms = _clock(clock)
        if month is None or hms is None:
            return None
        return _build(int(year), month, int(day), hms)
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

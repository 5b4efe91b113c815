"""``multipart/byteranges`` bodies (RFC 9110 section 14.6), framed byte-exactly.

A 206 answer to a request for several ranges carries each range as one body
part of a ``multipart/byteranges`` body, in the multipart syntax of RFC 2046
section 5.1.1. For ranges ``a-b`` and ``c-d`` of a representation of ``len``
bytes the body is exactly::

    CRLF "--" boundary CRLF
    "Content-Type: " type CRLF            (only if the representation has one)
    "Content-Range: bytes a-b/len" CRLF
    CRLF
    <bytes a to b>
    CRLF "--" boundary CRLF
    ...                                   (the same for c-d)
    <bytes c to d>
    CRLF "--" boundary "--" CRLF

The CRLF before the first delimiter is allowed: RFC 2046 reads it as an
empty preamble (``[preamble CRLF] dash-boundary``). Sending it makes every
delimiter the same ``CRLF "--" boundary``, as nginx's range filter does.
Each part's ``Content-Type`` is the representation's (RFC 9110 section
15.3.7.2: the server "SHOULD generate that same Content-Type header field"),
and its ``Content-Range`` is the complete-length form of section 14.4.

Pure: stdlib and attrs only. The boundary is chosen by the caller (random
per response, never taken from the client) and checked here: 1 to 70
characters that need no quoting in the ``boundary`` parameter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from attrs import frozen

__all__ = ["Multipart", "Part", "multipart_byteranges"]

_CRLF = b"\r\n"

#: A boundary: 1 to 70 of the characters that are both RFC 2046 ``bchars``
#: (section 5.1.1) and RFC 9110 ``tchar`` (section 5.6.2), so that the
#: ``boundary`` parameter is a token and never needs quoting.
_BOUNDARY = re.compile(rb"[0-9A-Za-z'+_.\-]{1,70}\Z")


@frozen
class Part:
    """One body part: its delimiter and header section, then bytes ``first``
    to ``last`` (inclusive, as in ``Content-Range``) of the representation."""

    head: bytes
    first: int
    last: int

    @property
    def count(self) -> int:
        """How many bytes of the representation this part carries."""
        return self.last - self.first + 1


@frozen
class Multipart:
    """A ``multipart/byteranges`` body, ready to send.

    ``content_type`` is the value of the response's ``Content-Type``;
    ``parts`` are in the order to send them, followed by ``tail`` (the close
    delimiter); ``length`` is the body's exact ``Content-Length``.
    """

    content_type: bytes
    parts: tuple[Part, ...]
    tail: bytes
    length: int

    def pieces(self) -> list[bytes | tuple[int, int]]:
        """The body in order: literal bytes, and ``(offset, count)`` spans of
        the representation, for a sender that reads them from a file."""
        out: list[bytes | tuple[int, int]] = []
        for part in self.parts:
            out.append(part.head)
            out.append((part.first, part.count))
        out.append(self.tail)
        return out

    def render(self, representation: bytes) -> bytes:
        """The whole body, from a representation held in memory."""
        out = []
        for part in self.parts:
            out.append(part.head)
            out.append(representation[part.first : part.last + 1])
        out.append(self.tail)
        return b"".join(out)


def multipart_byteranges(
    ranges: Sequence[tuple[int, int]],
    length: int,
    content_type: bytes | None,
    boundary: bytes,
) -> Multipart:
    """The ``multipart/byteranges`` body for ``ranges`` of ``length`` bytes.

    ``ranges`` are ``(first, last)`` pairs within ``[0, length)``, sent in the
    order given; ``content_type`` is the representation's ``Content-Type``
    value, or None if it has none. Raises ValueError for a boundary RFC
    2046 does not allow.
    """
    if _BOUNDARY.match(boundary) is None:
        raise ValueError(f"boundary: expected 1 to 70 letters, digits or '+_.-, got {boundary!r}")
    delimiter = _CRLF + b"--" + boundary + _CRLF
    typed = b"" if content_type is None else b"Content-Type: " + content_type + _CRLF
    parts = []
    total = 0
    for first, last in ranges:
        if not 0 <= first <= last < length:
            raise ValueError(f"range: expected 0 <= first <= last < {length}, got {first}-{last}")
        head = b"%s%sContent-Range: bytes %d-%d/%d\r\n\r\n" % (delimiter, typed, first, last, length)
        parts.append(Part(head, first, last))
        total += len(head) + last - first + 1
    tail = _CRLF + b"--" + boundary + b"--" + _CRLF
    return Multipart(
        b"multipart/byteranges; boundary=" + boundary, tuple(parts), tail, total + len(tail)
    )

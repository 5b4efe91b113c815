"""multipart/byteranges framing (accel.http.byteranges): RFC 9110 section 14.6, RFC 2046 5.1.1."""

from __future__ import annotations

import io

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from accel.http.byteranges import multipart_byteranges

REPRESENTATION = b"0123456789abcdefghij"


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[dict[bytes, bytes], bytes]]:
    """Take a multipart body apart as an RFC 2046 reader does, by its delimiters:
    (lower-cased part fields, part content) per part. Asserts the framing."""
    delimiter = b"\r\n--" + boundary
    close = delimiter + b"--\r\n"
    assert body.endswith(close)
    chunks = body[: -len(close) + len(delimiter)].split(delimiter)
    assert chunks[0] == b"" and chunks[-1] == b""  # empty preamble, nothing after the close
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n")
        head, sep, content = chunk[2:].partition(b"\r\n\r\n")
        assert sep
        fields = {}
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            assert colon and name.lower() not in fields
            fields[name.lower()] = value.strip(b" ")
        parts.append((fields, content))
    return parts


class TestFraming:
    def test_two_ranges_byte_exact(self) -> None:
        """Two parts, each with Content-Type and Content-Range, then the close delimiter."""
        body = multipart_byteranges([(0, 1), (5, 7)], 20, b"text/plain", b"B0UNDARY")
        assert body.render(REPRESENTATION) == (
            b"\r\n--B0UNDARY\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Range: bytes 0-1/20\r\n"
            b"\r\n"
            b"01"
            b"\r\n--B0UNDARY\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Range: bytes 5-7/20\r\n"
            b"\r\n"
            b"567"
            b"\r\n--B0UNDARY--\r\n"
        )
        assert body.content_type == b"multipart/byteranges; boundary=B0UNDARY"

    def test_three_ranges_without_a_content_type_byte_exact(self) -> None:
        """A representation without Content-Type: the parts carry only Content-Range,
        in the order given."""
        body = multipart_byteranges([(19, 19), (0, 0), (10, 12)], 20, None, b"x")
        assert body.render(REPRESENTATION) == (
            b"\r\n--x\r\nContent-Range: bytes 19-19/20\r\n\r\nj"
            b"\r\n--x\r\nContent-Range: bytes 0-0/20\r\n\r\n0"
            b"\r\n--x\r\nContent-Range: bytes 10-12/20\r\n\r\nabc"
            b"\r\n--x--\r\n"
        )

    def test_length_is_the_rendered_length(self) -> None:
        """Content-Length is exactly the bytes the body is made of."""
        body = multipart_byteranges([(0, 1), (5, 7), (9, 19)], 20, b"image/png", b"0123456789abcdef0123")
        assert body.length == len(body.render(REPRESENTATION))

    def test_pieces_read_from_a_file_give_the_rendered_body(self) -> None:
        """The pieces (heads and file spans) are the rendered body, in order."""
        body = multipart_byteranges([(3, 4), (0, 1)], 20, b"text/plain", b"b")
        f = io.BytesIO(REPRESENTATION)
        out = b""
        for piece in body.pieces():
            if isinstance(piece, bytes):
                out += piece
            else:
                offset, count = piece
                f.seek(offset)
                out += f.read(count)
        assert out == body.render(REPRESENTATION)

    @pytest.mark.parametrize("boundary", [b"", b"a" * 71, b"has space", b'quo"te', b"semi;colon", b"\xff"])
    def test_bad_boundaries_are_refused(self, boundary: bytes) -> None:
        """A boundary must be 1 to 70 characters that need no quoting."""
        with pytest.raises(ValueError, match="boundary"):
            multipart_byteranges([(0, 0), (2, 2)], 5, None, boundary)

    @pytest.mark.parametrize("first, last", [(-1, 2), (3, 2), (0, 5)])
    def test_ranges_outside_the_representation_are_refused(self, first: int, last: int) -> None:
        """Each range must lie within the representation."""
        with pytest.raises(ValueError, match="range"):
            multipart_byteranges([(first, last)], 5, None, b"b")


@st.composite
def representations_and_ranges(draw: st.DrawFn) -> tuple[bytes, list[tuple[int, int]]]:
    representation = draw(st.binary(min_size=1, max_size=2000))
    length = len(representation)
    ranges = []
    for _ in range(draw(st.integers(1, 12))):
        first = draw(st.integers(0, length - 1))
        ranges.append((first, draw(st.integers(first, length - 1))))
    return representation, ranges


BOUNDARIES = st.text("0123456789abcdefABCDEF'+_.-", min_size=1, max_size=70).map(str.encode)
CONTENT_TYPES = st.none() | st.sampled_from([b"text/plain", b"application/pdf", b'text/html; charset="utf-8"'])


@given(representations_and_ranges(), CONTENT_TYPES, BOUNDARIES)
def test_parsed_back_each_part_is_its_range(
    drawn: tuple[bytes, list[tuple[int, int]]], content_type: bytes | None, boundary: bytes
) -> None:
    """Taken apart by its delimiters, the body gives each range's bytes with its
    Content-Range and the representation's Content-Type, and Content-Length is exact."""
    representation, ranges = drawn
    assume(b"\r\n--" + boundary not in representation)
    body = multipart_byteranges(ranges, len(representation), content_type, boundary)
    rendered = body.render(representation)
    assert body.length == len(rendered)
    parts = parse_multipart(rendered, boundary)
    assert len(parts) == len(ranges)
    for (fields, content), (first, last) in zip(parts, ranges, strict=True):
        assert content == representation[first : last + 1]
        assert fields[b"content-range"] == b"bytes %d-%d/%d" % (first, last, len(representation))
        assert fields.get(b"content-type") == content_type
        assert set(fields) <= {b"content-range", b"content-type"}


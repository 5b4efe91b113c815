"""The access log (accel.accesslog)."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from accel.accesslog import AccessLog, _batches, _clf_time, _escape, _quote, format_fields, format_line
from accel.http.headers import Headers
from accel.http.model import Request


def req(**kw) -> Request:
    base = dict(
        method=b"GET",
        target=b"/a?b=1",
        path=b"/a",
        query=b"b=1",
        version=b"1.1",
        headers=Headers.of((b"User-Agent", b"curl/8"), (b"Referer", b"http://x/")),
        authority=b"x",
        client="192.0.2.1",
    )
    base.update(kw)
    return Request(**base)


def test_combined_format_with_cache_status_and_time():
    """Combined log format, then the cache status and the request time."""
    line = format_line(req(), 200, 1024, 0.0, 0.25, {"cache": "HIT"})
    assert line == (
        b'192.0.2.1 - - [01/Jan/1970:00:00:00 +0000] "GET /a?b=1 HTTP/1.1" 200 1024 '
        b'"http://x/" "curl/8" HIT 0.250\n'
    )


def test_hostile_bytes_are_escaped():
    """Quotes, newlines and non-ASCII in client fields cannot forge log lines."""
    r = req(headers=Headers.of((b"User-Agent", b'a"b\nc\xff')))
    line = format_line(r, 400, 0, 0.0, 0.0, {})
    assert line.count(b"\n") == 1
    assert b'"a\\x22b\\x0Ac\\xFF"' in line
    assert line.endswith(b" - 0.000\n")


def test_a_request_refused_before_it_was_parsed_is_logged_with_its_client(tmp_path):
    """A head the server refuses (here: no Host, 400), given to a file access log,
    is one line with the client's address and "-" for the request line, as nginx
    logs a request it could not read; no exception reaches the server."""
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from accel.http.server import HTTPServerFactory
    from tests.test_server import Recorder

    path = tmp_path / "access.log"
    clock = MemoryReactorClock()
    log = AccessLog(str(path), clock)
    factory = HTTPServerFactory(Recorder(), clock, access_log=log)
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    log.close()
    assert re.fullmatch(rb'192\.168\.1\.1 - - \[[^]]+\] "-" 400 \d+ "-" "-" - 0\.000\n', path.read_bytes())


def test_lines_reach_the_file_on_flush(tmp_path):
    """Lines are buffered and written by the periodic flush."""
    path = tmp_path / "access.log"
    clock = Clock()
    log = AccessLog(str(path), clock)
    log(req(), 200, 5, 0.0, 0.0, {"cache": "MISS"})
    clock.advance(1.0)
    assert path.read_bytes().endswith(b" MISS 0.000\n")
    log.close()


def _unescape(field: bytes) -> bytes:
    """Undo the log's quoting of one field."""
    assert field[:1] == b'"' and field[-1:] == b'"'
    inner, out, i = field[1:-1], bytearray(), 0
    while i < len(inner):
        if inner[i : i + 2] == b"\\x":
            out.append(int(inner[i + 2 : i + 4], 16))
            i += 4
        else:
            out.append(inner[i])
            i += 1
    return bytes(out)


@given(st.binary(min_size=1, max_size=64))
def test_any_field_is_one_printable_token_that_decodes_back(value):
    """Whatever a client sends, the quoted field is printable ASCII, has no bare quote or
    backslash inside, and decodes back to the bytes sent."""
    quoted = _quote(value)
    inner = quoted[1:-1]
    assert all(0x20 <= c < 0x7F for c in quoted)
    assert b'"' not in inner and inner.replace(b"\\x", b"").count(b"\\") == 0
    assert _unescape(quoted) == value


def test_first_referer_and_user_agent_are_logged():
    """Repeated fields: the first value of each, as nginx logs them; absent ones are "-"."""
    r = req(headers=Headers.of((b"User-Agent", b"one"), (b"User-Agent", b"two"), (b"Accept", b"*/*")))
    line = format_line(r, 200, 0, 0.0, 0.0, {})
    assert b' "-" "one" ' in line


@given(st.lists(st.binary(min_size=1, max_size=6000).map(lambda b: b.replace(b"\n", b"") + b"\n")))
def test_batches_keep_lines_whole_within_the_limit(lines):
    """Writes are whole lines, at most the limit each unless one line alone is longer, in order."""
    batches = list(_batches(lines, 4096))
    assert b"".join(batches) == b"".join(lines)
    assert all(b.endswith(b"\n") for b in batches)
    assert all(len(b) <= 4096 or b.count(b"\n") == 1 for b in batches)


def test_standard_output_is_written_unbuffered(capfd):
    """``-`` writes to the process's standard output descriptor itself (shared by the
    workers), in pipe-atomic batches of whole lines."""
    log = AccessLog("-", Clock())
    lines = []
    for n in range(100):
        r = req(target=b"/%d" % n)
        log(r, 200, n, 0.0, 0.0, {})
        lines.append(format_line(r, 200, n, 0.0, 0.0, {}))
    log.close()
    assert capfd.readouterr().out.encode() == b"".join(lines)


_TOKEN = st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x41 + c % 26 for c in b))


@given(
    client=st.sampled_from([b"192.0.2.1", b"unix", b"-", b"::1"]),
    method=_TOKEN,
    target=st.binary(min_size=1, max_size=300),
    version=st.sampled_from([b"1.0", b"1.1"]),
    pairs=st.lists(
        st.tuples(st.sampled_from([b"referer", b"user-agent", b"accept"]), st.binary(max_size=300)),
        max_size=4,
    ),
    status=st.integers(100, 999),
    sent=st.integers(0, 2**40),
    started=st.floats(0, 4e9),
    elapsed=st.floats(-1, 5000),
    cache=st.sampled_from([b"HIT", b"MISS", b"-"]),
)
def test_fields_are_written_as_the_combined_format_says(
    client, method, target, version, pairs, status, sent, started, elapsed, cache
):
    """format_fields (pieces and memos) writes exactly what one formatting of the
    combined format writes, the request time rounded to the millisecond."""
    line = format_fields(
        client, method, target, version, pairs, status, sent, started, started + elapsed, cache
    )
    referer = next((v for n, v in pairs if n == b"referer"), None)
    user_agent = next((v for n, v in pairs if n == b"user-agent"), None)
    head = b"%s - - %s %s %d %d %s %s %s " % (
        client,
        _clf_time(started),
        _escape(b"%s %s HTTP/%s" % (method, target, version)),
        status,
        sent,
        _escape(referer) if referer else b'"-"',
        _escape(user_agent) if user_agent else b'"-"',
        cache,
    )
    assert line.startswith(head) and line.endswith(b"\n")
    seconds = line[len(head) : -1]
    assert re.fullmatch(rb"[0-9]+\.[0-9]{3}", seconds)
    assert abs(float(seconds) - max(0.0, started + elapsed - started)) <= 0.0005 + 1e-9


@pytest.mark.parametrize(
    ("elapsed", "written"),
    [
        (math.nextafter(0.9995, 0.0), b"0.999"),  # 999.5 ms once multiplied by 1000
        (0.9995, b"1.000"),
        (0.9994, b"0.999"),
        (-0.25, b"0.000"),  # the clock stepped back
        (12.3456, b"12.346"),
    ],
)
def test_request_time_rounds_to_the_millisecond_near_a_second(elapsed, written):
    """A request time just under a second is written rounded, as any other:
    the table of millisecond strings is never indexed past its end."""
    line = format_fields(b"192.0.2.1", b"GET", b"/", b"1.1", [], 200, 0, 0.0, elapsed, b"-")
    assert line.endswith(b" " + written + b"\n")


def test_remembered_lines_differ_where_their_requests_do():
    """A line made again from the same parts is the same; each part that
    differs shows in the line (the remembered middle is keyed by all of them)."""
    pairs = [(b"user-agent", b"ua/1"), (b"referer", b"http://r/")]
    base = (b"192.0.2.1", b"GET", b"/a", b"1.1", pairs, 200, 10, 0.0, 0.0, b"HIT")
    first = format_fields(*base)
    assert format_fields(*base) == first
    variants = {
        1: b"HEAD", 2: b"/b", 3: b"1.0", 4: [(b"user-agent", b"ua/2")], 5: 404, 6: 11, 9: b"MISS",
    }  # fmt: skip
    for index, value in variants.items():
        args = list(base)
        args[index] = value
        assert format_fields(*args) != first, index


def test_long_requests_are_not_remembered():
    """Lines of long targets or fields are made each time, not kept: the
    memory a hostile client can fill is bounded."""
    from accel import accesslog

    accesslog._MIDDLES.clear()
    format_fields(b"-", b"GET", b"/" + b"x" * 4000, b"1.1", [], 200, 0, 0.0, 0.0, b"-")
    format_fields(b"-", b"GET", b"/", b"1.1", [(b"user-agent", b"u" * 4000)], 200, 0, 0.0, 0.0, b"-")
    assert accesslog._MIDDLES == {}
    format_fields(b"-", b"GET", b"/", b"1.1", [], 200, 0, 0.0, 0.0, b"-")
    assert len(accesslog._MIDDLES) == 1


# --- Reopening (SIGUSR1, after logrotate) ---


def test_reopen_after_a_move_writes_a_new_file_and_loses_nothing(tmp_path):
    """Lines logged before the reopen end in the moved file (pending ones included),
    lines after it in a new file at the path."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    log(req(target=b"/written", path=b"/written"), 200, 1, 0.0, 0.0, {})
    log.flush()
    log(req(target=b"/pending", path=b"/pending"), 200, 1, 0.0, 0.0, {})
    path.rename(tmp_path / "access.log.1")
    log.reopen()
    log(req(target=b"/after", path=b"/after"), 200, 1, 0.0, 0.0, {})
    log.close()
    old = (tmp_path / "access.log.1").read_bytes()
    assert b"/written" in old and b"/pending" in old and b"/after" not in old
    new = path.read_bytes()
    assert new.count(b"\n") == 1 and b"/after" in new


def test_reopen_without_a_move_appends_to_the_same_file(tmp_path):
    """Reopening a file still in place (copytruncate, or a stray signal) keeps appending."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    log(req(), 200, 1, 0.0, 0.0, {})
    log.reopen()
    log(req(), 200, 1, 0.0, 0.0, {})
    log.close()
    assert path.read_bytes().count(b"\n") == 2


def test_reopen_failure_keeps_the_old_file(tmp_path):
    """If the path cannot be opened any more, lines keep going to the file open now."""
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "access.log"
    log = AccessLog(str(path), Clock())
    moved = tmp_path / "access.log.1"
    path.rename(moved)
    directory.rmdir()  # nowhere to create the new file
    log.reopen()
    log(req(), 200, 1, 0.0, 0.0, {})
    log.close()
    assert moved.read_bytes().count(b"\n") == 1


def test_reopen_leaves_standard_output_alone(capfd):
    """``-``: nothing to reopen; lines still reach standard output."""
    log = AccessLog("-", Clock())
    log.reopen()
    log(req(), 200, 1, 0.0, 0.0, {})
    log.close()
    assert capfd.readouterr().out.count("\n") == 1


def test_reopen_after_close_does_nothing(tmp_path):
    """A signal arriving after the log was closed (at shutdown) opens nothing."""
    path = tmp_path / "access.log"
    log = AccessLog(str(path), Clock())
    log.close()
    path.unlink()
    log.reopen()
    assert not path.exists()

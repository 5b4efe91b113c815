"""Header rewriting across the proxy (accel.forwarding): RFC 9110 7.6, RFC 7239."""

from hypothesis import given
from hypothesis import strategies as st

from accel.forwarding import (
    ForwardingPolicy,
    request_headers_for_origin,
    response_headers_for_client,
)
from accel.http.headers import HOP_BY_HOP, Headers
from accel.http.model import Request


def req(headers: list[tuple[bytes, bytes]], client: str = "192.0.2.7") -> Request:
    return Request(
        method=b"GET",
        target=b"/a?b",
        path=b"/a",
        query=b"b",
        version=b"1.1",
        headers=Headers.of(*headers),
        authority=b"www.example.com",
        scheme=b"http",
        client=client,
    )


def test_hop_by_hop_fields_and_those_connection_names_are_dropped():
    """RFC 9110 7.6.1: Connection, its named fields, and the fixed list stop here."""
    r = req(
        [
            (b"Host", b"www.example.com"),
            (b"Connection", b"keep-alive, X-Secret"),
            (b"X-Secret", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"TE", b"trailers"),
            (b"Upgrade", b"websocket"),
            (b"Proxy-Authorization", b"Basic x"),
            (b"Accept", b"*/*"),
        ]
    )
    out = request_headers_for_origin(r, ForwardingPolicy())
    names = {n for n, _ in out}
    assert not names & (HOP_BY_HOP | {b"x-secret"})
    assert out.get(b"accept") == b"*/*"


def test_via_is_added_with_the_protocol_version():
    """RFC 9110 7.6.3: Via names the received protocol and this hop."""
    out = request_headers_for_origin(req([(b"Host", b"www.example.com")]), ForwardingPolicy())
    assert out.get_all(b"via") == [b"1.1 accel"]


def test_untrusted_client_cannot_forge_forwarded_fields():
    """X-Forwarded-* and Forwarded from an untrusted peer are replaced, not extended."""
    r = req(
        [
            (b"Host", b"www.example.com"),
            (b"X-Forwarded-For", b"10.9.9.9"),
            (b"X-Forwarded-Host", b"evil.example"),
            (b"Forwarded", b"for=10.9.9.9"),
        ]
    )
    out = request_headers_for_origin(r, ForwardingPolicy())
    assert out.get_all(b"x-forwarded-for") == [b"192.0.2.7"]
    assert out.get_all(b"x-forwarded-host") == [b"www.example.com"]
    assert out.get_all(b"x-forwarded-proto") == [b"http"]
    assert out.get_all(b"forwarded") == [b"for=192.0.2.7;host=www.example.com;proto=http"]


def test_trusted_proxy_fields_are_extended():
    """A trusted peer's chain is kept and this client appended."""
    r = req(
        [
            (b"Host", b"www.example.com"),
            (b"X-Forwarded-For", b"203.0.113.1"),
            (b"X-Forwarded-Proto", b"https"),
            (b"Forwarded", b"for=203.0.113.1"),
        ],
        client="10.0.0.2",
    )
    out = request_headers_for_origin(r, ForwardingPolicy.from_strings(["10.0.0.0/8"]))
    assert out.get(b"x-forwarded-for") == b"203.0.113.1, 10.0.0.2"
    assert out.get(b"x-forwarded-proto") == b"https"
    assert out.get(b"forwarded") == b"for=203.0.113.1, for=10.0.0.2;host=www.example.com;proto=http"


def test_ipv6_client_is_quoted_in_forwarded():
    """RFC 7239 section 6: an IPv6 node is bracketed and quoted."""
    out = request_headers_for_origin(
        req([(b"Host", b"www.example.com")], client="2001:db8::1"), ForwardingPolicy()
    )
    assert out.get(b"forwarded").startswith(b'for="[2001:db8::1]"')


def test_host_passes_through_unless_rewritten():
    """Host is the client's unless the route names another."""
    r = req([(b"Host", b"www.example.com")])
    assert request_headers_for_origin(r, ForwardingPolicy()).get_all(b"host") == [
        b"www.example.com"
    ]
    rewritten = request_headers_for_origin(r, ForwardingPolicy(host=b"origin.internal"))
    assert rewritten.get_all(b"host") == [b"origin.internal"]


def test_expect_is_not_forwarded():
    """accel answers Expect: 100-continue itself; the origin never sees it."""
    r = req([(b"Host", b"www.example.com"), (b"Expect", b"100-continue")])
    assert b"expect" not in request_headers_for_origin(r, ForwardingPolicy())


def test_response_keeps_repeated_fields_and_drops_hop_by_hop():
    """Set-Cookie lines survive one by one; Connection-named fields do not."""
    origin = Headers.of(
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"yes"),
        (b"Transfer-Encoding", b"chunked"),
    )
    out = response_headers_for_client(origin, b"1.1", ForwardingPolicy())
    assert out.get_all(b"set-cookie") == [b"a=1", b"b=2"]
    assert b"x-internal" not in out and b"transfer-encoding" not in out
    assert out.get_all(b"via") == [b"1.1 accel"]


@given(st.lists(st.sampled_from(sorted(HOP_BY_HOP)), max_size=5))
def test_no_hop_by_hop_field_ever_reaches_the_origin(names):
    """Whatever hop-by-hop fields a client sends, none is forwarded."""
    r = req([(b"Host", b"www.example.com")] + [(n, b"x") for n in names])
    out = request_headers_for_origin(r, ForwardingPolicy())
    assert not {n for n, _ in out} & HOP_BY_HOP


def test_max_forwards_is_decremented_for_options_and_trace():
    """RFC 9110 7.6.2: a forwarded OPTIONS carries Max-Forwards one lower."""
    r = req([(b"Host", b"www.example.com"), (b"Max-Forwards", b"5")])
    r.method = b"OPTIONS"
    assert request_headers_for_origin(r, ForwardingPolicy()).get(b"max-forwards") == b"4"
    r.method = b"GET"
    assert request_headers_for_origin(r, ForwardingPolicy()).get(b"max-forwards") == b"5"


def test_underscored_field_names_are_not_forwarded():
    """Transfer_Encoding and friends never reach an origin that might read them as dashes."""
    r = req([(b"Host", b"www.example.com"), (b"Transfer_Encoding", b"chunked"), (b"X-Ok", b"1")])
    out = request_headers_for_origin(r, ForwardingPolicy())
    assert b"transfer_encoding" not in out and out.get(b"x-ok") == b"1"


def test_empty_host_is_quoted_in_forwarded():
    """RFC 7239: an empty value is not a token, so it is sent as a quoted string."""
    r = req([])
    r.authority = b""
    assert b'host="";' in request_headers_for_origin(r, ForwardingPolicy()).get(b"forwarded")


def test_url_and_method_overrides_are_not_forwarded_on_get():
    """A GET's answer is stored under its request line: no field may change what it fetches."""
    r = req(
        [
            (b"Host", b"www.example.com"),
            (b"X-Original-URL", b"/admin"),
            (b"X-Rewrite-URL", b"/admin"),
            (b"X-HTTP-Method-Override", b"DELETE"),
        ]
    )
    out = request_headers_for_origin(r, ForwardingPolicy())
    assert not {b"x-original-url", b"x-rewrite-url", b"x-http-method-override"} & {n for n, _ in out}
    r.method = b"POST"
    assert request_headers_for_origin(r, ForwardingPolicy()).get(b"x-http-method-override") == b"DELETE"

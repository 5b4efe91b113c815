"""Header rewriting across the proxy (accel.forwarding): RFC 9110 7.6, RFC 7239."""

from hypothesis import given, settings
from hypothesis import strategies as st

from accel.forwarding import (
    PROXY_SET_FIELDS,
    UNKEYED_OVERRIDES,
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


def test_untrusted_client_cannot_send_the_fields_proxies_set():
    """X-Forwarded-Scheme, -Port, -Prefix, X-Host, X-Real-IP... from an untrusted
    peer are dropped: origins believe them, and none is in the cache key."""
    sent = [(b"Host", b"www.example.com")] + [(name, b"evil") for name in PROXY_SET_FIELDS]
    for method in (b"GET", b"POST"):
        r = req(sent)
        r.method = method
        out = request_headers_for_origin(r, ForwardingPolicy())
        assert not {n for n, _ in out} & set(PROXY_SET_FIELDS)


def test_trusted_proxy_passes_the_fields_proxies_set():
    """From a trusted proxy they are forwarded as it sent them."""
    r = req(
        [(b"Host", b"www.example.com"), (b"X-Forwarded-Port", b"443"), (b"X-Real-IP", b"203.0.113.1")],
        client="10.0.0.2",
    )
    out = request_headers_for_origin(r, ForwardingPolicy.from_strings(["10.0.0.0/8"]))
    assert out.get(b"x-forwarded-port") == b"443"
    assert out.get(b"x-real-ip") == b"203.0.113.1"


def test_origin_is_told_the_authority_as_the_cache_key_has_it():
    """Host: example.com:80 shares the key of example.com (RFC 9110 section
    4.2.3), and so does example.com. (its fully qualified form), so the
    origin is told example.com: were it told the port or the dot, an
    answer to that form (a redirect to the canonical host) would be stored
    for every client of example.com."""
    for authority in (b"www.example.com:80", b"www.example.com:", b"www.example.com.", b"www.example.com.:80"):
        r = req([(b"Host", authority)])
        r.authority = authority
        out = request_headers_for_origin(r, ForwardingPolicy())
        assert out.get_all(b"host") == [b"www.example.com"]
        assert out.get_all(b"x-forwarded-host") == [b"www.example.com"]
        assert out.get_all(b"forwarded") == [b"for=192.0.2.7;host=www.example.com;proto=http"]


def test_a_port_that_is_not_the_default_is_kept_for_the_origin():
    """On https, :80 is another resource and is forwarded as it is."""
    r = req([(b"Host", b"www.example.com:80")])
    r.authority, r.scheme = b"www.example.com:80", b"https"
    out = request_headers_for_origin(r, ForwardingPolicy())
    assert out.get(b"host") == b"www.example.com:80"


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


def test_remembered_fields_are_each_clients_own():
    """The fields added for one client and site (remembered between its
    requests) never reach another client's, another site's or a trusted
    peer's request."""
    policy = ForwardingPolicy.from_strings(["10.0.0.0/8"])
    first = request_headers_for_origin(req([(b"Host", b"www.example.com")]), policy)
    again = request_headers_for_origin(req([(b"Host", b"www.example.com")]), policy)
    other = request_headers_for_origin(req([(b"Host", b"www.example.com")], client="192.0.2.8"), policy)
    extended = request_headers_for_origin(
        req([(b"Host", b"www.example.com"), (b"X-Forwarded-For", b"203.0.113.1")], client="10.0.0.2"),
        policy,
    )
    site = req([(b"Host", b"www.example.com")])
    site = Request(
        site.method, site.target, site.path, site.query, site.version, site.headers,
        b"other.example", site.scheme, site.client,
    )  # fmt: skip
    elsewhere = request_headers_for_origin(site, policy)
    assert again == first
    assert other.get(b"x-forwarded-for") == b"192.0.2.8"
    assert extended.get(b"x-forwarded-for") == b"203.0.113.1, 10.0.0.2"
    assert elsewhere.get(b"x-forwarded-host") == b"other.example"
    assert first.get(b"x-forwarded-host") == b"www.example.com"


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


def _reference_headers_for_origin(request: Request, policy: ForwardingPolicy) -> Headers:
    """The rules of request_headers_for_origin spelled out one at a time (its
    earlier, multi-pass form): the one-pass version must agree with it."""
    headers = request.headers.without_hop_by_hop()
    if any(b"_" in name for name, _ in headers):
        headers = Headers([pair for pair in headers if b"_" not in pair[0]])
    if not policy.trusts(request.client):
        headers.remove(*PROXY_SET_FIELDS)
    if request.method in (b"GET", b"HEAD"):
        headers.remove(*UNKEYED_OVERRIDES)
    elif request.method in (b"OPTIONS", b"TRACE"):
        value = headers.get(b"max-forwards")
        if value is not None and value.isdigit() and value != b"0":
            headers.set(b"max-forwards", b"%d" % (min(int(value), 2**31) - 1))
    client = request.client or "unknown"
    authority = request.authority
    if authority.endswith(b":"):
        authority = authority[:-1]
    elif authority.endswith(b":80") and request.scheme == b"http":
        authority = authority[:-3]
    if policy.trusts(request.client):
        prior_xff = headers.get(b"x-forwarded-for")
        prior_fwd = headers.get(b"forwarded")
        proto = headers.get(b"x-forwarded-proto") or request.scheme
        host = headers.get(b"x-forwarded-host") or authority
    else:
        prior_xff = prior_fwd = None
        proto, host = request.scheme, authority
    headers.remove(
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"expect"
    )
    node = client.encode("ascii", "replace")
    headers.add(b"x-forwarded-for", prior_xff + b", " + node if prior_xff else node)
    headers.add(b"x-forwarded-proto", proto)
    headers.add(b"x-forwarded-host", host)
    quoted = authority if authority and not any(
        c in authority for c in b':[]"'
    ) else b'"' + authority.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    node_f = (
        b'"[' + client.encode() + b']"' if ":" in client
        else b"unknown" if client in ("", "unix") else client.encode()
    )  # fmt: skip
    element = b"for=%s;host=%s;proto=%s" % (node_f, quoted, request.scheme)
    headers.add(b"forwarded", prior_fwd + b", " + element if prior_fwd else element)
    headers.add(b"via", request.version + b" " + policy.via)
    headers.set(b"host", policy.host if policy.host is not None else authority)
    return headers


_FIELD_NAMES = st.sampled_from(
    sorted(HOP_BY_HOP)
    + [
        b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
        b"expect", b"max-forwards", b"x_under", b"accept", b"cookie", b"x-original-url",
        b"x-http-method-override", b"x-forwarded-scheme", b"x-real-ip", b"x-host",
    ]
)  # fmt: skip


@settings(max_examples=500)
@given(
    fields=st.lists(
        st.tuples(
            _FIELD_NAMES,
            st.one_of(
                st.sampled_from([b"", b"7", b"a, b", b"x-forwarded-for", b"close, forwarded"]),
                st.binary(max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v),
            ),
        ),
        max_size=12,
    ),
    method=st.sampled_from([b"GET", b"HEAD", b"POST", b"OPTIONS", b"TRACE"]),
    client=st.sampled_from(["192.0.2.7", "10.1.2.3", "2001:db8::1", "", "unix"]),
    host=st.sampled_from([None, b"origin.internal"]),
    authority=st.sampled_from([b"www.example.com", b"www.example.com:80", b"h:", b"[::1]:8080"]),
    scheme=st.sampled_from([b"http", b"https"]),
)
def test_one_pass_forwarding_matches_the_rules_applied_one_at_a_time(
    fields, method, client, host, authority, scheme
):
    """Whatever the fields, method, peer, authority and route, the origin gets
    exactly the fields the rules give when applied one after another."""
    r = req(fields, client=client)
    r.method, r.authority, r.scheme = method, authority, scheme
    policy = ForwardingPolicy.from_strings(["10.0.0.0/8"], host=host.decode() if host else None)
    assert request_headers_for_origin(r, policy) == _reference_headers_for_origin(r, policy)


_NAMES = st.sampled_from([b"age", b"etag", b"range", b"if-match", b"set-cookie", b"x-a"])


@given(
    fields=st.lists(st.tuples(_NAMES, st.binary(max_size=4)), max_size=10),
    drop=st.frozensets(_NAMES, max_size=4),
)
def test_discard_removes_what_remove_removes(fields, drop):
    """``Headers.discard(a set)`` leaves exactly what ``remove(*the names)``
    leaves: every line of the named fields gone, the others in order."""
    by_remove, by_discard = Headers(list(fields)), Headers(list(fields))
    by_remove.remove(*drop)
    by_discard.discard(drop)
    assert by_discard == by_remove
    assert [p for p in fields if p[0] not in drop] == by_discard.pairs

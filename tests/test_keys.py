"""Primary cache keys (accel.cache.keys)."""

from hypothesis import given
from hypothesis import strategies as st

from accel.cache.keys import KeyRecipe, normal_authority, primary_key, primary_key_for_uri
from accel.http.headers import Headers


def test_scheme_host_path_and_query_make_the_key():
    """The key is the effective request URI."""
    assert primary_key(b"http", b"Example.COM", b"/a", b"x=1") == "http://example.com/a?x=1"


def test_default_port_is_dropped_other_ports_kept():
    """example.com and example.com:80 are one resource; :8080 is another."""
    assert primary_key(b"http", b"example.com:80", b"/", None) == "http://example.com/"
    assert primary_key(b"https", b"example.com:443", b"/", None) == "https://example.com/"
    assert primary_key(b"http", b"example.com:8080", b"/", None) == "http://example.com:8080/"


def test_empty_port_is_dropped():
    """RFC 3986 section 6.2.3: example.com: is example.com (and example.com:80)."""
    assert primary_key(b"http", b"example.com:", b"/", None) == "http://example.com/"
    assert primary_key(b"https", b"[::1]:", b"/", None) == "https://[::1]/"


def test_a_trailing_dot_names_the_same_host():
    """example.com. is the fully qualified example.com: one key, with or
    without a port; an IP literal and a name of dots alone are kept."""
    assert primary_key(b"http", b"Example.COM.", b"/", None) == "http://example.com/"
    assert primary_key(b"http", b"example.com..:80", b"/", None) == "http://example.com/"
    assert primary_key(b"http", b"example.com.:8080", b"/", None) == "http://example.com:8080/"
    assert normal_authority(b"http", b"[::1]:80") == b"[::1]"
    assert normal_authority(b"http", b".") == b"."


def test_default_port_of_the_other_scheme_is_kept():
    """On https, :80 is not the default port: another resource."""
    assert primary_key(b"https", b"example.com:80", b"/", None) == "https://example.com:80/"


def test_empty_query_differs_from_no_query():
    """'/a?' and '/a' are different request targets."""
    assert primary_key(b"http", b"h", b"/a", b"") != primary_key(b"http", b"h", b"/a", None)


def test_sorted_query_recipe():
    """With query='sort', parameter order does not matter."""
    r = KeyRecipe(query="sort")
    assert primary_key(b"http", b"h", b"/", b"b=1&a=2", recipe=r) == primary_key(
        b"http", b"h", b"/", b"a=2&b=1", recipe=r
    )


def test_ignored_query_recipe():
    """With query='ignore', every query maps to the bare path."""
    r = KeyRecipe(query="ignore")
    assert primary_key(b"http", b"h", b"/p", b"utm=1", recipe=r) == "http://h/p"


def test_headers_join_the_key_only_when_named():
    """An unnamed field never changes the key; a named one does."""
    h1 = Headers.of((b"X-Forwarded-Host", b"evil"), (b"X-Device", b"mobile"))
    h2 = Headers.of((b"X-Device", b"desktop"))
    assert primary_key(b"http", b"h", b"/", None, h1) == primary_key(b"http", b"h", b"/", None, h2)
    r = KeyRecipe(headers=(b"x-device",))
    assert primary_key(b"http", b"h", b"/", None, h1, r) != primary_key(
        b"http", b"h", b"/", None, h2, r
    )


def test_uri_form_matches_request_form():
    """Invalidation by absolute URI hits the same key as the request did."""
    assert primary_key_for_uri(b"http://Example.com:80/a?b") == primary_key(
        b"http", b"example.com", b"/a", b"b"
    )
    assert primary_key_for_uri(b"http://h") == "http://h/"
    assert primary_key_for_uri(b"/relative") is None


_paths = st.binary(max_size=20).filter(lambda b: b"?" not in b and b"#" not in b)
_queries = st.one_of(st.none(), st.binary(max_size=20))


@given(_paths, _queries, _paths, _queries)
def test_distinct_targets_give_distinct_keys(p1, q1, p2, q2):
    """Under the default recipe, two targets share a key only if they are the same."""
    k1 = primary_key(b"http", b"h", b"/" + p1, q1)
    k2 = primary_key(b"http", b"h", b"/" + p2, q2)
    assert (k1 == k2) == ((p1, q1) == (p2, q2))

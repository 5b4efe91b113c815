"""Route selection (accel.routing)."""

import pytest

from accel.routing import Router, host_without_port


def test_longest_prefix_wins():
    """/api/v2 beats /api beats /."""
    r = Router([(["*"], [("/", "root"), ("/api", "api"), ("/api/v2", "v2")])])
    assert r.select(b"x", b"/api/v2/users") == "v2"
    assert r.select(b"x", b"/api/v1") == "api"
    assert r.select(b"x", b"/other") == "root"


def test_site_by_host_case_insensitive_and_without_port():
    """Host picks the site; case and port do not matter."""
    r = Router([(["a.example"], [("/", "a")]), (["b.example"], [("/", "b")])])
    assert r.select(b"B.Example:8080", b"/") == "b"
    assert r.select(b"a.example", b"/") == "a"


def test_a_trailing_dot_picks_the_named_site():
    """example.com. is example.com (as nginx's $host): it takes that site and
    its rules, not the default site's."""
    r = Router([(["a.example"], [("/", "a")]), (["*"], [("/", "star")])])
    assert r.select(b"a.example.", b"/") == "a"
    assert r.select(b"A.Example..:8080", b"/") == "a"
    assert r.select(b".", b"/") == "star"


def test_unknown_host_goes_to_the_default_site_or_nowhere():
    """A Host no site names goes to the default site; without one, it has no route."""
    with_star = Router([(["a.example"], [("/", "a")]), (["*"], [("/", "star")])])
    assert with_star.select(b"zzz", b"/") == "star"
    without = Router([(["a.example"], [("/", "a")]), (["b.example"], [("/", "b")])])
    assert without.select(b"zzz", b"/") is None


def test_router_follows_the_configured_sites(tmp_path):
    """The runtime router picks the same site as docs/configuration.rst describes:
    exact name, then the longest wildcard, then the default site; port ignored."""
    from accel.config import Config, Route, Site

    def site(*hosts: bytes) -> Site:
        return Site(hosts, (Route(prefix=b"/"),))

    main, narrow, fallback = site(b"example.com", b"*.example.com"), site(b"*.cdn.example.com"), site()
    config = Config(sites=(main, narrow, fallback))
    router = Router((s.hosts, [(r.prefix, s) for r in s.routes]) for s in config.sites)
    assert router.select(b"example.com:8080", b"/") is main
    assert router.select(b"a.b.example.com", b"/") is main
    assert router.select(b"x.cdn.example.com", b"/") is narrow
    assert router.select(b"notexample.com", b"/") is fallback
    assert router.select(b"[::1]:8080", b"/") is fallback


def test_no_matching_prefix_is_none():
    """A path outside every prefix has no route."""
    r = Router([(["*"], [("/api", "api")])])
    assert r.select(b"x", b"/web") is None


def test_host_without_port_keeps_ipv6_brackets():
    assert host_without_port(b"[::1]:8080") == b"[::1]"
    assert host_without_port(b"example.com:80") == b"example.com"
    assert host_without_port(b"example.com") == b"example.com"


def test_wildcard_names_match_subdomains_longest_first():
    """*.example.com matches any subdomain but not the bare name; exact beats wildcard."""
    r = Router(
        [
            ([b"*.example.com"], [("/", "wild")]),
            ([b"*.api.example.com"], [("/", "api")]),
            ([b"www.example.com"], [("/", "www")]),
            ([], [("/", "default")]),
        ]
    )
    assert r.select(b"a.example.com", b"/") == "wild"
    assert r.select(b"x.api.example.com", b"/") == "api"
    assert r.select(b"www.example.com", b"/") == "www"
    assert r.select(b"example.com", b"/") == "default"


@pytest.mark.parametrize(
    "path, route",
    [
        (b"/admin/x", "admin"),
        (b"/pub/../admin/x", "admin"),
        (b"/pub/%2e%2E/admin/x", "admin"),
        (b"/pub/.%2e/admin/x", "admin"),
        (b"/%61dmin/x", "admin"),
        (b"//admin/x", "admin"),
        (b"/./admin/x", "admin"),
        (b"/../../admin/x", "admin"),
        (b"/pub%2f..%2fadmin/x", "admin"),
        (b"/admin/../pub/x", "pub"),
        (b"/admin/..", "root"),
        (b"/admin/.", "admin"),
        (b"/adm%69n", "root"),
        (b"/pub/.well-known/x", "pub"),
        (b"/caf%c3%a9/x", "cafe"),
    ],
)
def test_prefixes_are_compared_with_the_path_an_origin_reads(path, route):
    """A route is chosen by the path percent-decoded, slashes merged and
    dot-segments removed (RFC 3986 section 5.2.4), as nginx chooses a
    location: dot-segments, encoded dots or letters and doubled slashes never
    take a request past a route (and its client rules) to the origin path
    that route serves. Configured prefixes are read the same way."""
    r = Router([(["*"], [("/", "root"), ("/admin/", "admin"), ("/pub/", "pub"), ("/caf%C3%A9/", "cafe")])])
    assert r.select(b"x", path) == route

"""accel.config: values, validation messages, the TOML loader, the command
line, and how the two combine."""

from __future__ import annotations

import ipaddress
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from accel.config import (
    DEFAULT_BACKLOG,
    NOT_YET_SUPPORTED,
    CacheSettings,
    Config,
    ConfigError,
    OriginURL,
    Timeouts,
    parse_duration,
    parse_size,
    with_backlog,
)


def options(**given: Any) -> dict[str, Any]:
    """Options as accel.tap.Options collects them: keyword names with ``_``
    for ``-``; repeatable ones are lists."""
    raw: dict[str, Any] = {key: [] for key in ("listen", "origin", "parent", "static", "trusted-proxy")}
    raw.update({key.replace("_", "-"): value for key, value in given.items()})
    return raw


def write(tmp_path: Path, text: str, name: str = "accel.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def error_of(call: Any, *args: Any) -> str:
    with pytest.raises(ConfigError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- scalars ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [("512M", 512 * 1024**2), ("2G", 2 * 1024**3), ("64k", 65536), ("1.5KiB", 1536), ("1000", 1000), ("3 MB", 3 * 1024**2), (0, 0), (4096, 4096)],
)
def test_size_units(raw: Any, expected: int) -> None:
    """Sizes take binary K/M/G/T units, case-insensitive, or plain bytes."""
    assert parse_size(raw, "x") == expected


@pytest.mark.parametrize("raw", ["12Q", "", "-1", "1e3", "G", "1_000", True, -5, 1.5, "１２"])  # noqa: RUF001 (deliberate: digits that are not ASCII)
def test_size_rejected(raw: Any) -> None:
    """A bad size names the option and shows the value."""
    assert error_of(parse_size, raw, "--cache-size") == f"--cache-size: expected a size such as 512M or 2G, got {raw!r}"


@pytest.mark.parametrize("raw, expected", [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0), ("250ms", 0.25), ("7", 7.0), (2, 2.0), (0.5, 0.5)])
def test_duration_units(raw: Any, expected: float) -> None:
    """Durations take ms/s/m/h/d or plain seconds."""
    assert parse_duration(raw, "x") == expected


@pytest.mark.parametrize("raw", ["5 minutes", "-1s", "s", False, float("inf"), -3])
def test_duration_rejected(raw: Any) -> None:
    """A bad duration names the key and shows the value."""
    assert error_of(parse_duration, raw, "k") == f"k: expected a duration such as 30s, 5m or 1h, got {raw!r}"


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "k", "M", "g", "T"]))
def test_size_roundtrip(number: int, unit: str) -> None:
    """Any whole number with any unit is that many units of bytes."""
    factor = {"": 1, "k": 1024, "M": 1024**2, "g": 1024**3, "T": 1024**4}[unit]
    assert parse_size(f"{number}{unit}", "x") == number * factor


# --- origins ---------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, parsed, text",
    [
        ("http://127.0.0.1:8000", OriginURL("http", "127.0.0.1", 8000), "http://127.0.0.1:8000"),
        ("https://Example.COM", OriginURL("https", "example.com", 443), "https://example.com:443"),
        ("http://origin.internal/", OriginURL("http", "origin.internal", 80), "http://origin.internal:80"),
        ("http://[::1]:8080", OriginURL("http", "::1", 8080), "http://[::1]:8080"),
        ("unix:/run/app.sock", OriginURL("unix", path="/run/app.sock"), "unix:/run/app.sock"),
    ],
)
def test_origin_parse(raw: str, parsed: OriginURL, text: str) -> None:
    """Origins are http/https host[:port] or unix:/path, with a canonical text form."""
    assert OriginURL.parse(raw, "x") == parsed
    assert str(parsed) == text


@pytest.mark.parametrize(
    "raw, detail",
    [
        ("ftp://x", ""),
        ("http://a/b", ""),
        ("http://a?q", ""),
        ("http://user@a", ""),
        ("http://a:0", " (port out of range 1-65535)"),
        ("http://a:99999", " (port out of range 1-65535)"),
        ("http://a_b", " (bad host name)"),
        ("http://[1::2::3]", " (bad IPv6 address)"),
        ("unix:run/app.sock", " (an absolute socket path)"),
        ("127.0.0.1:8000", ""),
    ],
)
def test_origin_rejected(raw: str, detail: str) -> None:
    """A bad origin says what forms are expected."""
    assert error_of(OriginURL.parse, raw, "--origin") == (
        f"--origin: expected http://host[:port], https://host[:port] or unix:/path{detail}, got {raw!r}"
    )


# --- the command line --------------------------------------------------------


def test_no_origin_means_demo() -> None:
    """Without --origin or --config the configuration asks for the demo origin."""
    config = Config.from_options(options())
    assert config.demo and config.sites == () and config.listen == ("tcp:8080",)


def test_demo_origin_is_wired_in() -> None:
    """with_demo_origin proxies / of a default site to the demo origin."""
    config = Config.from_options(options()).with_demo_origin("unix:/tmp/d/origin.sock")
    (site,) = config.sites
    assert site.hosts == () and site.routes[0].prefix == b"/"
    assert site.routes[0].origins == (OriginURL("unix", path="/tmp/d/origin.sock"),)


def test_cli_simple_case() -> None:
    """Command-line options build one default site with one route /."""
    config = Config.from_options(
        options(
            listen=["tcp:8080", "unix:/tmp/accel.sock"],
            origin=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
            origin_host="example.com",
            cache_size="2G",
            cache_dir="/tmp/accel-cache-test",
            access_log="-",
            workers="1",
            trusted_proxy=["10.0.0.0/8", "::1"],
        )
    )
    assert not config.demo
    assert config.listen == ("tcp:8080", "unix:/tmp/accel.sock")
    assert config.cache_size == 2 * 1024**3 and config.cache_dir == "/tmp/accel-cache-test"
    assert config.access_log == "-" and config.workers == 1
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))
    (site,) = config.sites
    (route,) = site.routes
    assert site.hosts == () and route.prefix == b"/" and route.host == b"example.com"
    assert [str(o) for o in route.origins] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert route.cache == CacheSettings() and route.timeouts == Timeouts()


@pytest.mark.parametrize(
    "given, message",
    [
        ({"cache_size": "12Q"}, "--cache-size: expected a size such as 512M or 2G, got '12Q'"),
        ({"listen": ["tcp:http"]}, "--listen: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'tcp:http' (invalid literal for int() with base 10: 'http')"),
        ({"listen": ["bogus:1"]}, "--listen: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'bogus:1' (Unknown endpoint type: 'bogus')"),
        ({"listen": ["tcp:8080:colour=red"]}, "--listen: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'tcp:8080:colour=red' (unknown parameter 'colour')"),
        ({"listen": ["tcp:70000"]}, "--listen: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'tcp:70000' (port out of range 0-65535)"),
        ({"listen": ["unix:/nonexistent/dir/a.sock"]}, "--listen: cannot listen on 'unix:/nonexistent/dir/a.sock': no directory '/nonexistent/dir'"),
        ({"listen": ["ssl:8443:privateKey=/nonexistent/key.pem"]}, "--listen: cannot use 'ssl:8443:privateKey=/nonexistent/key.pem': No such file or directory: '/nonexistent/key.pem'"),
        ({"origin": ["ftp://x"]}, "--origin: expected http://host[:port], https://host[:port] or unix:/path, got 'ftp://x'"),
        ({"trusted_proxy": ["10.0.0.1/8"]}, "--trusted-proxy: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, got '10.0.0.1/8' (10.0.0.1/8 has host bits set)"),
        ({"trusted_proxy": ["everyone"]}, "--trusted-proxy: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, got 'everyone' ('everyone' does not appear to be an IPv4 or IPv6 network)"),
        ({"origin": ["http://a"], "origin_host": "a b"}, "--origin-host: expected a host such as example.com or example.com:8080, got 'a b'"),
        ({"origin_host": "example.com"}, "--origin-host: needs --origin (it sets the Host sent to the --origin pool)"),
        ({"static": ["/assets"]}, "--static: expected PREFIX=DIR such as /assets=/srv/www/assets, got '/assets'"),
        ({"static": ["assets=/tmp"]}, "--static: expected a path prefix starting with '/', such as /static/, got 'assets'"),
        ({"static": ["/assets=/nonexistent/dir"]}, "--static: expected an existing directory, got '/nonexistent/dir'"),
        ({"admin": "tcp:x"}, "--admin: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'tcp:x' (invalid literal for int() with base 10: 'x')"),
        ({"admin_token_file": "/nonexistent/token"}, "--admin-token-file: expected a readable file, got '/nonexistent/token'"),
        ({"access_log": "/nonexistent/dir/access.log"}, "--access-log: cannot write '/nonexistent/dir/access.log': no directory '/nonexistent/dir'"),
        ({"access_log": "/"}, "--access-log: expected a file path or '-' for standard output, got the directory '/'"),
        ({"config": "/nonexistent/accel.toml"}, "--config: cannot read '/nonexistent/accel.toml': No such file or directory"),
    ],
)
def test_cli_errors(given: dict[str, Any], message: str) -> None:
    """Each bad option ends start-up with one line naming it."""
    assert error_of(Config.from_options, options(**given)) == message


def test_cache_dir_parent_must_be_a_directory(tmp_path: Path) -> None:
    """A cache directory under a regular file cannot be created."""
    (tmp_path / "file").write_text("")
    target = str(tmp_path / "file" / "cache")
    assert error_of(Config.from_options, options(cache_dir=target)) == (
        f"--cache-dir: expected a directory, but {str(tmp_path / 'file')!r} is not one"
    )


def test_cache_dir_may_not_exist_yet(tmp_path: Path) -> None:
    """A missing cache directory is fine when an ancestor is writable."""
    target = str(tmp_path / "a" / "b")
    assert Config.from_options(options(cache_dir=target)).cache_dir == target
    assert not os.path.exists(target)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cache_dir_unwritable(tmp_path: Path) -> None:
    """A cache directory whose nearest ancestor is read-only is refused."""
    tmp_path.chmod(0o500)
    try:
        message = error_of(Config.from_options, options(cache_dir=str(tmp_path / "c")))
    finally:
        tmp_path.chmod(0o700)
    assert message == f"--cache-dir: cannot create or write {str(tmp_path / 'c')!r}: {str(tmp_path)!r} is not writable"


@pytest.mark.parametrize(
    "given, option",
    [
        ({"static": ["/assets=/tmp"]}, "--static"),
        ({"origin": ["http://a"], "parent": ["http://cache1:3128"]}, "--parent"),
        ({"admin": "tcp:9090"}, "--admin"),
    ],
)
def test_reserved_options_are_refused_after_validation(given: dict[str, Any], option: str) -> None:
    """Options of later releases parse and validate, then end start-up naming the option."""
    assert error_of(Config.from_options, options(**given)) == f"{option}: {NOT_YET_SUPPORTED}"


def test_reserved_token_file(tmp_path: Path) -> None:
    """--admin-token-file is validated, then refused."""
    token = write(tmp_path, "secret\n", "token")
    assert error_of(Config.from_options, options(admin_token_file=token)) == f"--admin-token-file: {NOT_YET_SUPPORTED}"


# --- workers -------------------------------------------------------------------


def test_workers_default_is_auto() -> None:
    """Without --workers the number is left to start-up: one per CPU (None)."""
    assert Config.from_options(options()).workers is None
    assert Config().workers is None


@pytest.mark.parametrize("raw, expected", [("auto", None), ("1", 1), ("2", 2), ("1024", 1024)])
def test_workers_option_values(raw: str, expected: int | None) -> None:
    """--workers takes auto or a number of processes from 1 to 1024."""
    assert Config.from_options(options(workers=raw)).workers == expected


@pytest.mark.parametrize("raw", ["0", "1025", "-1", "two", "", " 2", "2.0", "AUTO", "²"])
def test_workers_option_errors(raw: str) -> None:
    """A bad --workers ends start-up with one line naming the option and the value."""
    assert error_of(Config.from_options, options(workers=raw)) == (
        f"--workers: expected auto or a number of processes from 1 to 1024, got {raw!r}"
    )


@pytest.mark.parametrize("text, expected", [('workers = "auto"', None), ("workers = 3", 3), ("", None)])
def test_workers_in_the_file(tmp_path: Path, text: str, expected: int | None) -> None:
    """workers = "auto" (the default) or an integer, in the file."""
    assert Config.from_toml(write(tmp_path, text + "\n" + ROUTE)).workers == expected


def test_workers_option_replaces_the_file(tmp_path: Path) -> None:
    """--workers, even auto, replaces the file's workers."""
    path = write(tmp_path, "workers = 3\n" + ROUTE)
    assert Config.from_options(options(config=path)).workers == 3
    assert Config.from_options(options(config=path, workers="auto")).workers is None
    assert Config.from_options(options(config=path, workers="2")).workers == 2


def test_several_workers_accepted() -> None:
    """--workers above 1 is accepted with TCP and UNIX listeners."""
    config = Config.from_options(options(workers="4", listen=["tcp:8080", "unix:/tmp/accel.sock"]))
    assert config.workers == 4


def test_several_workers_accepted_with_tls(monkeypatch) -> None:
    """Several workers share a TLS listener (each wraps its socket in TLS)."""
    import accel.config

    monkeypatch.setattr(accel.config, "_parse_endpoint", lambda raw, name: raw)
    assert Config.from_options(options(workers="2", listen=["ssl:8443", "tcp6:8080"])).workers == 2


def test_several_workers_refused_with_an_unshareable_listener(monkeypatch) -> None:
    """An explicit number above 1 with a listener that cannot be shared is one line."""
    import accel.config

    monkeypatch.setattr(accel.config, "_parse_endpoint", lambda raw, name: raw)
    assert error_of(Config.from_options, options(workers="2", listen=["tcp:80", "systemd:domain=INET:index=0"])) == (
        "--workers: more than one worker needs tcp, tcp6, unix, ssl listeners, got 'systemd:domain=INET:index=0'"
    )


def test_auto_workers_accept_an_unshareable_listener(monkeypatch) -> None:
    """auto is not refused for such a listener: start-up settles on one worker."""
    import accel.config

    monkeypatch.setattr(accel.config, "_parse_endpoint", lambda raw, name: raw)
    assert Config.from_options(options(listen=["systemd:domain=INET:index=0"])).workers is None


def test_file_workers_refused_with_an_unshareable_listener(tmp_path: Path, monkeypatch) -> None:
    """The file's workers is checked the same way, and named as the file's key."""
    import accel.config

    monkeypatch.setattr(accel.config, "_parse_endpoint", lambda raw, name: raw)
    path = write(tmp_path, 'workers = 2\nlisten = "systemd:domain=INET:index=0"\n' + ROUTE)
    assert error_of(Config.from_options, options(config=path)) == (
        "workers: more than one worker needs tcp, tcp6, unix, ssl listeners, got 'systemd:domain=INET:index=0'"
    )


# --- the TOML file ------------------------------------------------------------

FULL = """\
listen = ["tcp:8080", "tcp:8081:interface=127.0.0.1"]
access_log = "-"
trusted_proxies = ["10.0.0.0/8"]

[server]
header_timeout = "5s"
keepalive_timeout = 30
max_header_bytes = "32k"
max_body = "10M"

[cache]
dir = "{cache_dir}"
size = "2G"
heuristic_max = "1h"

[timeouts]
connect = "2s"

[compression]
enabled = true
types = ["text/html"]

[[sites]]
hosts = ["example.com", "*.example.com"]

  [[sites.routes]]
  prefix = "/"
  origin = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
  host = "example.com"

  [[sites.routes]]
  prefix = "/api/"
  origin = "unix:/run/api.sock"
  max_body = "1M"
  timeouts = {{ first_byte = "5m" }}
  cache = {{ sort_query = true, key_headers = ["Accept-Language"], stale_if_error = "10m" }}

[[sites]]
  [[sites.routes]]
  prefix = "/"
  origin = "https://fallback.internal"
  cache = {{ enabled = false, store_set_cookie = true, heuristic_fraction = 0.2, range_fetch_max = "1M", ignore_query = true }}
  compression = {{ encodings = ["gzip"], min_size = 256 }}
"""


def test_toml_full(tmp_path: Path) -> None:
    """A full file: sites by Host, routes by prefix, defaults and overrides."""
    config = Config.from_toml(write(tmp_path, FULL.format(cache_dir=tmp_path / "cache")))
    assert config.listen == ("tcp:8080", "tcp:8081:interface=127.0.0.1")
    assert config.access_log == "-" and config.cache_size == 2 * 1024**3
    assert config.cache_dir == str(tmp_path / "cache")
    assert config.limits.header_timeout == 5.0 and config.limits.keepalive_timeout == 30.0
    assert config.limits.max_header_bytes == 32 * 1024
    main, fallback = config.sites
    assert main.hosts == (b"example.com", b"*.example.com") and fallback.hosts == ()
    root, api = main.routes
    assert root.host == b"example.com" and len(root.origins) == 2 and root.max_body == 10 * 1024**2
    assert root.timeouts == Timeouts(connect=2.0) and root.cache == CacheSettings(heuristic_max=3600.0)
    assert root.compression.enabled and root.compression.types == ("text/html",)
    assert api.origins == (OriginURL("unix", path="/run/api.sock"),) and api.max_body == 1024**2
    assert api.timeouts == Timeouts(connect=2.0, first_byte=300.0)
    assert api.cache == CacheSettings(sort_query=True, key_headers=(b"accept-language",), stale_if_error=600.0, heuristic_max=3600.0)
    (other,) = fallback.routes
    assert other.cache == CacheSettings(enabled=False, store_set_cookie=True, heuristic_fraction=0.2, range_fetch_max=1024**2, ignore_query=True, heuristic_max=3600.0)
    assert other.compression.encodings == ("gzip",) and other.compression.min_size == 256


ROUTE = '[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('listen = "tcp:x"\n' + ROUTE, "listen: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 'tcp:x' (invalid literal for int() with base 10: 'x')"),
        ('listen = ["tcp:80", 3]\n' + ROUTE, "listen[1]: expected an endpoint such as tcp:8080, tcp:8080:interface=127.0.0.1 or unix:/run/accel.sock, got 3"),
        ("workers = 0\n" + ROUTE, "workers: expected auto or a number of processes from 1 to 1024, got 0"),
        ('workers = "two"\n' + ROUTE, "workers: expected auto or a number of processes from 1 to 1024, got 'two'"),
        ("workers = 2.0\n" + ROUTE, "workers: expected auto or a number of processes from 1 to 1024, got 2.0"),
        ("workers = true\n" + ROUTE, "workers: expected auto or a number of processes from 1 to 1024, got True"),
        ('trusted_proxies = ["x"]\n' + ROUTE, "trusted_proxies[0]: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, got 'x' ('x' does not appear to be an IPv4 or IPv6 network)"),
        ("access_log = 1\n" + ROUTE, "access_log: expected a file path, '-' for standard output or 'off', got 1"),
        ("lisen = []\n" + ROUTE, "lisen: unknown key (did you mean 'listen'?)"),
        ('[cache]\nsize = "12Q"\n' + ROUTE, "cache.size: expected a size such as 512M or 2G, got '12Q'"),
        ("[cache]\nsize = true\n" + ROUTE, "cache.size: expected a size such as 512M or 2G, got True"),
        ("[cache]\nheuristic_fraction = 2\n" + ROUTE, "cache.heuristic_fraction: expected a number from 0 to 1 such as 0.1, got 2"),
        ('[cache]\nenabled = "yes"\n' + ROUTE, "cache.enabled: expected true or false, got 'yes'"),
        ("[cache]\nignore_query = true\nsort_query = true\n" + ROUTE, "cache.sort_query: cannot be combined with ignore_query = true"),
        ('[cache]\nkey_headers = ["Accept Language"]\n' + ROUTE, "cache.key_headers[0]: expected a header field name such as Accept-Language, got 'Accept Language'"),
        ('[cache]\nstale_if_eror = "1m"\n' + ROUTE, "cache.stale_if_eror: unknown key (did you mean 'stale_if_error'?)"),
        ('[server]\nheader_timeout = "soon"\n' + ROUTE, "server.header_timeout: expected a duration such as 30s, 5m or 1h, got 'soon'"),
        ('[timeouts]\nconnect = "1 week"\n' + ROUTE, "timeouts.connect: expected a duration such as 30s, 5m or 1h, got '1 week'"),
        ('[compression]\nencodings = ["zstd"]\n' + ROUTE, "compression.encodings[0]: expected one of br, gzip, got 'zstd'"),
        ('[compression]\ntypes = ["html"]\n' + ROUTE, "compression.types[0]: expected a media type such as text/html, got 'html'"),
        ('[admin]\nlisten = "tcp:9090"\n' + ROUTE, f"admin.listen: {NOT_YET_SUPPORTED}"),
        ("server = 3\n" + ROUTE, "server: expected a table, got 3"),
        ("sites = 3\n", "sites: expected an array of tables ([[sites]]), got 3"),
        ("", "sites: expected at least one [[sites]] table with routes (or give --origin)"),
        ("[[sites]]\n", "sites[0].routes: expected at least one [[sites.routes]] table"),
        ('[[sites]]\nhosts = ["a b"]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n', "sites[0].hosts[0]: expected a host name such as example.com or *.example.com, got 'a b'"),
        ('[[sites]]\n[[sites.routes]]\norigin = "http://a"\n', 'sites[0].routes[0].prefix: missing (every route needs a path prefix such as "/")'),
        ('[[sites]]\n[[sites.routes]]\nprefix = "api"\norigin = "http://a"\n', "sites[0].routes[0].prefix: expected a path prefix starting with '/', such as /static/, got 'api'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\n', "sites[0].routes[0].origin: missing (a route needs origin, parent or static)"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n[[sites.routes]]\nprefix = "/"\norigin = "http://b"\n', "sites[0].routes[1].prefix: duplicate prefix '/' in this site"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n[[sites.routes]]\nprefix = "/x"\norigin = "ftp://x"\n', "sites[0].routes[1].origin: expected http://host[:port], https://host[:port] or unix:/path, got 'ftp://x'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = ["http://a", "b"]\n', "sites[0].routes[0].origin[1]: expected http://host[:port], https://host[:port] or unix:/path, got 'b'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\nhost = "*"\n', "sites[0].routes[0].host: expected a host such as example.com or example.com:8080, got '*'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\norigins = "http://b"\n', "sites[0].routes[0].origins: unknown key (did you mean 'origin'?)"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\ntimeouts = { idle = "x" }\n', "sites[0].routes[0].timeouts.idle: expected a duration such as 30s, 5m or 1h, got 'x'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\ncache = { dir = "/tmp" }\n', "sites[0].routes[0].cache.dir: unknown key"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\nstatic = "/tmp"\norigin = "http://a"\n', "sites[0].routes[0].static: a static route cannot also have origin or parent"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\nstatic = "/nonexistent"\n', "sites[0].routes[0].static: expected an existing directory, got '/nonexistent'"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\nstatic = "/tmp"\n', f"sites[0].routes[0].static: {NOT_YET_SUPPORTED}"),
        ('[[sites]]\n[[sites.routes]]\nprefix = "/"\nparent = "http://c:3128"\norigin = "http://a"\n', f"sites[0].routes[0].parent: {NOT_YET_SUPPORTED}"),
        (ROUTE + ROUTE, "sites[1].hosts: missing, but sites[0] is already the default site (the one without hosts)"),
        ('[[sites]]\nhosts = ["a.com"]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n[[sites]]\nhosts = ["A.com"]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n', "sites[1].hosts[0]: 'a.com' is already a host of sites[0].hosts"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, message: str) -> None:
    """Each bad key ends start-up with one line: file, key path, what is wrong."""
    path = write(tmp_path, text)
    assert error_of(Config.from_toml, path) == f"{path}: {message}"


def test_toml_syntax_error(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the position."""
    path = write(tmp_path, "listen = = 3\n")
    assert re.fullmatch(rf"{re.escape(path)}: invalid TOML: .*\(at line \d+, column \d+\)", error_of(Config.from_toml, path))


def test_toml_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported as such."""
    path = tmp_path / "accel.toml"
    path.write_bytes(b'listen = "\xff"\n')
    assert error_of(Config.from_toml, str(path)).startswith(f"{path}: invalid TOML:")


# --- file and command line together -------------------------------------------


def test_cli_overrides_file(tmp_path: Path) -> None:
    """Scalars and --listen replace the file's; --trusted-proxy extends it."""
    path = write(tmp_path, 'listen = "tcp:9000"\ntrusted_proxies = ["10.0.0.0/8"]\naccess_log = "-"\n[cache]\nsize = "1G"\n' + ROUTE)
    config = Config.from_options(options(config=path, listen=["tcp:9001"], cache_size="3G", trusted_proxy=["192.0.2.0/24"]))
    assert config.listen == ("tcp:9001",) and config.cache_size == 3 * 1024**3 and config.access_log == "-"
    assert config.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.0.2.0/24"))


def test_cli_origin_replaces_default_site_root(tmp_path: Path) -> None:
    """--origin replaces the / route of the file's default site, keeping its other routes."""
    path = write(tmp_path, ROUTE + '[[sites.routes]]\nprefix = "/api"\norigin = "http://api"\n')
    config = Config.from_options(options(config=path, origin=["http://new:81"]))
    (site,) = config.sites
    assert {route.prefix: str(route.origins[0]) for route in site.routes} == {b"/api": "http://api:80", b"/": "http://new:81"}


def test_cli_origin_adds_default_site(tmp_path: Path) -> None:
    """Without a default site in the file, --origin adds one using the file's defaults."""
    path = write(tmp_path, '[timeouts]\nconnect = "3s"\n[[sites]]\nhosts = ["a.com"]\n[[sites.routes]]\nprefix = "/"\norigin = "http://a"\n')
    config = Config.from_options(options(config=path, origin=["http://b"]))
    named, default = config.sites
    assert named.hosts == (b"a.com",) and default.hosts == ()
    assert default.routes[0].timeouts.connect == 3.0


def test_file_with_only_defaults_and_cli_origin(tmp_path: Path) -> None:
    """A file may hold only settings, the origin coming from the command line."""
    path = write(tmp_path, '[cache]\nsize = "5G"\n')
    config = Config.from_options(options(config=path, origin=["http://a"]))
    assert config.cache_size == 5 * 1024**3 and not config.demo


def test_file_without_sites_or_origin(tmp_path: Path) -> None:
    """A file with no sites and no --origin is an error, not the demo."""
    path = write(tmp_path, '[cache]\nsize = "5G"\n')
    assert error_of(Config.from_options, options(config=path)) == f"{path}: sites: expected at least one [[sites]] table with routes (or give --origin)"


def test_trusted_proxy_lookup() -> None:
    """--trusted-proxy networks are what the forwarding policy trusts, and only those."""
    from accel.forwarding import ForwardingPolicy

    config = Config.from_options(options(origin=["http://a"], trusted_proxy=["10.0.0.0/8", "::1"]))
    policy = ForwardingPolicy(trusted=config.trusted_proxies)
    assert policy.trusts("10.1.2.3") and policy.trusts("::1")
    assert not policy.trusts("192.0.2.1") and not policy.trusts("unix")


# --- the reference documentation ------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.rst"


def accepted_toml_keys(tmp_path: Path) -> set[str]:
    """Every dotted key the loader asks for, found by watching it read a file
    (it visits every table, present or not, and asks for every key)."""
    import accel.config

    seen: set[str] = set()
    original = accel.config._Table.finish

    def finish(self: Any, also: Any = ()) -> None:
        where = re.sub(r"\[\d+\]", "", self._where)
        seen.update(f"{where}.{key}" if where else key for key in (*self._used, *also))
        original(self, also)

    path = write(tmp_path, ROUTE + "timeouts = {}\ncache = {}\ncompression = {}\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(accel.config._Table, "finish", finish)
        Config.from_toml(path)
    return seen


@pytest.mark.skipif(not DOCS.exists(), reason="not running from a source checkout")
def test_every_toml_key_is_documented(tmp_path: Path) -> None:
    """docs/configuration.rst names every key the TOML loader accepts."""
    text = DOCS.read_text()
    keys = accepted_toml_keys(tmp_path)
    assert {"listen", "cache.size", "sites.routes.cache.sort_query", "sites.routes.timeouts.idle"} <= keys
    missing = sorted(key for key in keys if not re.search(rf"``\[*{re.escape(key)}\]*``", text))
    assert missing == []


@pytest.mark.skipif(not DOCS.exists(), reason="not running from a source checkout")
def test_every_option_is_documented() -> None:
    """docs/configuration.rst names every command-line option."""
    from accel.tap import Options

    text = DOCS.read_text()
    missing = sorted(name for name in (name.rstrip("=") for name in Options().longOpt) if f"``--{name}" not in text and name != "help")
    assert missing == []


def test_access_log_off_is_accepted() -> None:
    """--access-log off disables the access log (as nginx's access_log off)."""
    assert Config.from_options({"access-log": "off", "origin": ["http://a:1"]}).access_log == "off"


# --- access control and header hiding ----------------------------------------------

ACCESS = """
[[sites]]
allow = ["10.0.0.0/8", "unix"]
deny = ["10.9.0.0/16"]
  [[sites.routes]]
  prefix = "/"
  origin = "http://a"
  [[sites.routes]]
  prefix = "/admin/"
  origin = "http://a"
  deny = ["unix"]
  hide_headers = ["X-Backend", "Server-Timing"]
  hide_origin_server = true
"""


def test_route_without_rules_inherits_the_sites(tmp_path: Path) -> None:
    """A route that sets neither allow nor deny takes its site's rules."""
    site = Config.from_toml(write(tmp_path, ACCESS)).sites[0]
    root = site.routes[0]
    assert root.access is site.access
    assert root.access is not None and root.access.allows("10.1.2.3")
    assert not root.access.allows("10.9.2.3") and not root.access.allows("192.0.2.1")


def test_route_rules_replace_the_sites(tmp_path: Path) -> None:
    """A route with deny = ["unix"] drops the site's allow list: all TCP clients pass."""
    admin = Config.from_toml(write(tmp_path, ACCESS)).sites[0].routes[1]
    assert admin.access is not None
    assert admin.access.allows("192.0.2.1") and not admin.access.allows("unix")


@pytest.mark.parametrize(
    "rules, client, allowed",
    [
        ({}, "192.0.2.1", True),
        ({"deny": ("192.0.2.0/24",), "allow": ("192.0.2.1",)}, "192.0.2.1", False),
        ({"allow": ()}, "127.0.0.1", False),
        ({"allow": ()}, "unix", True),
        ({"deny_unix": True}, "unix", False),
        ({"allow": ("192.0.2.0/24",)}, "::ffff:192.0.2.7", True),
        ({"allow": ("2001:db8::/32",)}, "2001:db8::1", True),
        ({"allow": ("2001:db8::/32",)}, "", False),
    ],
)
def test_client_access_semantics(rules: dict[str, Any], client: str, allowed: bool) -> None:
    """Deny wins over allow; an allow list admits only its networks; unix only by deny_unix."""
    from accel.config import ClientAccess

    converted = {k: tuple(ipaddress.ip_network(n) for n in v) if k != "deny_unix" else v for k, v in rules.items()}
    assert ClientAccess(**converted).allows(client) is allowed


def test_hide_headers_defaults_and_server(tmp_path: Path) -> None:
    """Routes hide X-Powered-By and friends by default; hide_origin_server adds Server."""
    from accel.config import DEFAULT_HIDE_HEADERS

    root, admin = Config.from_toml(write(tmp_path, ACCESS)).sites[0].routes
    assert root.hidden_fields == DEFAULT_HIDE_HEADERS and b"x-powered-by" in DEFAULT_HIDE_HEADERS
    assert admin.hidden_fields == (b"x-backend", b"server-timing", b"server")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[sites]]\nallow = ["10.0.0.1/8"]\n' + ROUTE[10:], "sites[0].allow[0]: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, or unix, got '10.0.0.1/8' (10.0.0.1/8 has host bits set)"),
        ('[[sites]]\ndeny = 3\n' + ROUTE[10:], "sites[0].deny: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, or unix, got 3"),
        (ROUTE + 'allow = ["localhost"]\n', "sites[0].routes[0].allow[0]: expected an address or network such as 10.0.0.0/8, 192.0.2.1 or ::1, or unix, got 'localhost' ('localhost' does not appear to be an IPv4 or IPv6 network)"),
        (ROUTE + 'hide_headers = ["Content-Length"]\n', "sites[0].routes[0].hide_headers[0]: expected a field accel may remove, got 'Content-Length' (framing and caching need it)"),
        (ROUTE + 'hide_headers = ["a b"]\n', "sites[0].routes[0].hide_headers[0]: expected a header field name such as Accept-Language, got 'a b'"),
        (ROUTE + 'hide_origin_server = "yes"\n', "sites[0].routes[0].hide_origin_server: expected true or false, got 'yes'"),
        (ROUTE + 'max_body = "lots"\n', "sites[0].routes[0].max_body: expected a size such as 512M or 2G, got 'lots'"),
    ],
)
def test_access_and_hiding_errors(tmp_path: Path, text: str, message: str) -> None:
    """Each bad access or hiding key is one line naming it."""
    path = write(tmp_path, text)
    assert error_of(Config.from_toml, path) == f"{path}: {message}"


def test_strip_cdn_cache_control_key(tmp_path: Path) -> None:
    """cache.strip_cdn_cache_control is read as a boolean."""
    text = '[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://a"\n  cache = { strip_cdn_cache_control = true }\n'
    assert Config.from_toml(write(tmp_path, text)).sites[0].routes[0].cache.strip_cdn_cache_control


# --- limits: [server], [upstream], cache lock, hit-for-miss, variants ----------

LIMITS = """\
[server]
body_timeout = "30s"
send_timeout = "2m"
max_headers = 50
max_target = "4k"
max_pipelined = 4
max_buffered_body = "128k"
max_discard = 0
max_connections_per_client = 64
linger_time = "10s"
linger_timeout = 0
notsent_lowat = "off"
max_unsent = "512k"

[upstream]
max_idle_per_origin = 0
max_fails = 5
fail_timeout = "30s"
tries = 2
max_header_bytes = "16k"
max_headers = 64
max_connections_per_origin = 8
queue = 0
queue_timeout = "5s"

[cache]
lock_timeout = "5s"
hit_for_miss_ttl = 0
max_variants = 4

[timeouts]
keepalive = "15s"

[[sites]]
  [[sites.routes]]
  prefix = "/"
  origin = "http://a"

  [[sites.routes]]
  prefix = "/slow/"
  origin = "http://b"
  timeouts = { keepalive = "2s" }
"""


@pytest.mark.parametrize("raw, seconds", [('"30s"', 30.0), ("0", 0.0), ('"500ms"', 0.5)])
def test_shutdown_timeout_key(tmp_path: Path, raw: str, seconds: float) -> None:
    """server.shutdown_timeout is a duration, 0 allowed (cut at once); 10 s when absent."""
    site = '[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://a"\n'
    config = Config.from_toml(write(tmp_path, f"[server]\nshutdown_timeout = {raw}\n" + site))
    assert config.shutdown_timeout == seconds
    assert Config.from_toml(write(tmp_path, site)).shutdown_timeout == 10.0


def test_limit_keys(tmp_path: Path) -> None:
    """Every limit key reaches its field of the configuration."""
    from accel.config import Limits, UpstreamLimits

    config = Config.from_toml(write(tmp_path, LIMITS))
    assert config.limits == Limits(
        body_timeout=30.0,
        send_timeout=120.0,
        max_headers=50,
        max_target=4096,
        max_pipelined=4,
        max_buffered_body=128 * 1024,
        max_discard=0,
        max_connections_per_client=64,
        linger_time=10.0,
        linger_timeout=0.0,
        notsent_lowat=None,
        max_unsent=512 * 1024,
    )
    assert config.upstream == UpstreamLimits(
        max_idle_per_origin=0,
        max_fails=5,
        fail_timeout=30.0,
        tries=2,
        max_header_bytes=16 * 1024,
        max_headers=64,
        max_connections_per_origin=8,
        queue=0,
        queue_timeout=5.0,
    )
    assert (config.cache_lock_timeout, config.cache_hit_for_miss_ttl, config.cache_max_variants) == (5.0, 0.0, 4)


def test_keepalive_timeout_is_a_route_timeout(tmp_path: Path) -> None:
    """timeouts.keepalive is a route default that a route's timeouts table overrides."""
    root, slow = Config.from_toml(write(tmp_path, LIMITS)).sites[0].routes
    assert root.timeouts == Timeouts(keepalive=15.0) and slow.timeouts == Timeouts(keepalive=2.0)


def test_connection_limit_off(tmp_path: Path) -> None:
    """max_connections_per_client = "off" means no limit."""
    config = Config.from_toml(write(tmp_path, '[server]\nmax_connections_per_client = "off"\n' + ROUTE))
    assert config.limits.max_connections_per_client is None


def test_absent_limit_keys_take_the_defaults(tmp_path: Path) -> None:
    """A file that sets no limit gets the configuration's defaults."""
    config = Config.from_toml(write(tmp_path, ROUTE))
    defaults = Config()
    assert (config.limits, config.upstream) == (defaults.limits, defaults.upstream)
    assert config.sites[0].routes[0].timeouts == Timeouts()
    assert (config.cache_lock_timeout, config.cache_hit_for_miss_ttl, config.cache_max_variants) == (
        defaults.cache_lock_timeout,
        defaults.cache_hit_for_miss_ttl,
        defaults.cache_max_variants,
    )


def test_server_limit_defaults_are_the_servers() -> None:
    """The [server] defaults are ServerLimits' own."""
    from accel.app import server_limits
    from accel.http.server import ServerLimits

    assert server_limits(Config()) == ServerLimits()


def test_upstream_defaults_are_the_pools() -> None:
    """The [upstream] and [timeouts] defaults are UpstreamSettings' own."""
    from accel.app import upstream_settings
    from accel.config import UpstreamLimits
    from accel.upstream import UpstreamSettings

    assert upstream_settings(Timeouts(), UpstreamLimits()) == UpstreamSettings()


def test_cache_limit_defaults_are_the_collapsers_and_stores() -> None:
    """cache.lock_timeout, hit_for_miss_ttl and max_variants default to Collapser's and Store's defaults."""
    import inspect

    from accel.cache.collapse import Collapser
    from accel.cache.store import Store

    collapser = inspect.signature(Collapser).parameters
    store = inspect.signature(Store).parameters
    config = Config()
    assert config.cache_lock_timeout == collapser["timeout"].default
    assert config.cache_hit_for_miss_ttl == collapser["pass_ttl"].default
    assert config.cache_max_variants == store["max_variants"].default


@pytest.mark.parametrize(
    "text, message",
    [
        ("[server]\nbody_timeout = 0\n", "server.body_timeout: expected a duration above zero such as 30s, 5m or 1h, got 0"),
        ('[server]\nsend_timeout = "0s"\n', "server.send_timeout: expected a duration above zero such as 30s, 5m or 1h, got '0s'"),
        ('[server]\nheader_timeout = "0s"\n', "server.header_timeout: expected a duration above zero such as 30s, 5m or 1h, got '0s'"),
        ("[server]\nkeepalive_timeout = 0.0\n", "server.keepalive_timeout: expected a duration above zero such as 30s, 5m or 1h, got 0.0"),
        ("[server]\nmax_header_bytes = 0\n", "server.max_header_bytes: expected a size above zero such as 64k or 1M, got 0"),
        ("[server]\nmax_headers = 0\n", "server.max_headers: expected a whole number from 1 up, got 0"),
        ('[server]\nmax_headers = "100"\n', "server.max_headers: expected a whole number from 1 up, got '100'"),
        ("[server]\nmax_headers = true\n", "server.max_headers: expected a whole number from 1 up, got True"),
        ('[server]\nmax_target = "8 kilo"\n', "server.max_target: expected a size such as 512M or 2G, got '8 kilo'"),
        ("[server]\nmax_pipelined = 1.5\n", "server.max_pipelined: expected a whole number from 1 up, got 1.5"),
        ('[server]\nmax_buffered_body = "0k"\n', "server.max_buffered_body: expected a size above zero such as 64k or 1M, got '0k'"),
        ("[server]\nmax_discard = -1\n", "server.max_discard: expected a size such as 512M or 2G, got -1"),
        ("[server]\nmax_connections_per_client = 0\n", "server.max_connections_per_client: expected a number of connections from 1 up, or off, got 0"),
        ('[server]\nmax_connections_per_client = "none"\n', "server.max_connections_per_client: expected a number of connections from 1 up, or off, got 'none'"),
        ('[server]\nlinger_time = "long"\n', "server.linger_time: expected a duration such as 30s, 5m or 1h, got 'long'"),
        ('[server]\nshutdown_timeout = "soon"\n', "server.shutdown_timeout: expected a duration such as 30s, 5m or 1h, got 'soon'"),
        ("[server]\nshutdown_timeout = -1\n", "server.shutdown_timeout: expected a duration such as 30s, 5m or 1h, got -1"),
        ("[server]\nlinger_timeout = -5\n", "server.linger_timeout: expected a duration such as 30s, 5m or 1h, got -5"),
        ("[server]\nnotsent_lowat = 0\n", "server.notsent_lowat: expected a size above zero such as 64k or 1M, got 0"),
        ('[server]\nmax_unsent = "0"\n', "server.max_unsent: expected a size above zero such as 64k or 1M, got '0'"),
        ('[server]\nnotsent_lowat = "none"\n', "server.notsent_lowat: expected a size such as 64k, or off, got 'none'"),
        ("[server]\nmax_conections_per_client = 5\n", "server.max_conections_per_client: unknown key (did you mean 'max_connections_per_client'?)"),
        ("upstream = 1\n", "upstream: expected a table, got 1"),
        ("[upstream]\nmax_idle_per_origin = -1\n", "upstream.max_idle_per_origin: expected a whole number from 0 up, got -1"),
        ('[upstream]\nmax_fails = "3"\n', "upstream.max_fails: expected a whole number from 0 up, got '3'"),
        ("[upstream]\nfail_timeout = 0\n", "upstream.fail_timeout: expected a duration above zero such as 30s, 5m or 1h, got 0"),
        ("[upstream]\ntries = false\n", "upstream.tries: expected a whole number from 0 up, got False"),
        ("[upstream]\nmax_header_bytes = 0\n", "upstream.max_header_bytes: expected a size above zero such as 64k or 1M, got 0"),
        ("[upstream]\nmax_headers = 0\n", "upstream.max_headers: expected a whole number from 1 up, got 0"),
        ("[upstream]\nmax_connections_per_origin = -2\n", "upstream.max_connections_per_origin: expected a whole number from 0 up, got -2"),
        ('[upstream]\nmax_connections_per_origin = "10"\n', "upstream.max_connections_per_origin: expected a whole number from 0 up, got '10'"),
        ("[upstream]\nqueue = 1.5\n", "upstream.queue: expected a whole number from 0 up, got 1.5"),
        ("[upstream]\nqueue_timeout = 0\n", "upstream.queue_timeout: expected a duration above zero such as 30s, 5m or 1h, got 0"),
        ("[upstream]\nmax_conns = 2\n", "upstream.max_conns: unknown key"),
        ('[upstream]\nconnect = "1s"\n', "upstream.connect: unknown key"),
        ("[timeouts]\nkeepalive = 0\n", "timeouts.keepalive: expected a duration above zero such as 30s, 5m or 1h, got 0"),
        ('[timeouts]\nconnect = "0ms"\n', "timeouts.connect: expected a duration above zero such as 30s, 5m or 1h, got '0ms'"),
        ("[cache]\nlock_timeout = 0\n", "cache.lock_timeout: expected a duration above zero such as 30s, 5m or 1h, got 0"),
        ('[cache]\nhit_for_miss_ttl = "2 min"\n', "cache.hit_for_miss_ttl: expected a duration such as 30s, 5m or 1h, got '2 min'"),
        ("[cache]\nmax_variants = 0\n", "cache.max_variants: expected a whole number from 1 up, got 0"),
        ("[cache]\nmax_ranges = -1\n", "cache.max_ranges: expected a whole number from 0 up, got -1"),
        ('[cache]\nmax_ranges = "off"\n', "cache.max_ranges: expected a whole number from 0 up, got 'off'"),
    ],
)
def test_limit_key_errors(tmp_path: Path, text: str, message: str) -> None:
    """A bad limit ends start-up with one line naming the key."""
    path = write(tmp_path, text + ROUTE)
    assert error_of(Config.from_toml, path) == f"{path}: {message}"


def test_max_ranges_is_a_route_default_and_a_route_setting(tmp_path: Path) -> None:
    """cache.max_ranges is every route's default; a route's cache table overrides it,
    and 0 (ranges off) is allowed."""
    text = "[cache]\nmax_ranges = 1\n" + ROUTE + "cache = { max_ranges = 0 }\n[[sites.routes]]\nprefix = \"/b/\"\norigin = \"http://a\"\n"
    (site,) = Config.from_toml(write(tmp_path, text)).sites
    assert [route.cache.max_ranges for route in site.routes] == [0, 1]
    assert CacheSettings().max_ranges == 100


@pytest.mark.parametrize("key", ["lock_timeout", "hit_for_miss_ttl", "max_variants"])
def test_store_limits_are_not_route_keys(tmp_path: Path, key: str) -> None:
    """The cache lock, hit-for-miss and variant bounds are server-wide: a route's cache table refuses them."""
    path = write(tmp_path, ROUTE + f"cache = {{ {key} = 1 }}\n")
    # (A hint may follow: max_variants is close to the route key max_ranges.)
    assert error_of(Config.from_toml, path).startswith(
        f"{path}: sites[0].routes[0].cache.{key}: unknown key"
    )


@pytest.mark.skipif(not DOCS.exists(), reason="not running from a source checkout")
def test_the_documented_example_loads(tmp_path: Path) -> None:
    """The complete example in docs/configuration.rst is a valid configuration (its
    file-system paths moved under a temporary directory)."""
    import textwrap

    text = DOCS.read_text()
    block = text.split("A complete example::", 1)[1].split("\nTop-level keys", 1)[0]
    example = textwrap.dedent(block).strip("\n")
    for old, new in (
        ("/var/log/accel/access.log", str(tmp_path / "access.log")),
        ("/var/cache/accel", str(tmp_path / "cache")),
        ("/run/accel.sock", str(tmp_path / "accel.sock")),
    ):
        assert old in example
        example = example.replace(old, new)
    path = tmp_path / "accel.toml"
    path.write_text(example)
    config = Config.from_toml(str(path))
    assert config.cache_dir == str(tmp_path / "cache") and len(config.sites) == 2
    assert [route.prefix for route in config.sites[0].routes] == [b"/", b"/api/"]


def test_ca_file_needs_an_https_origin_and_a_readable_file(tmp_path: Path) -> None:
    """sites.routes.ca_file: accepted for a route with an https origin; otherwise, or if
    the file cannot be read or holds no PEM certificate, one line naming the key."""
    from tests.test_upstream import _self_signed

    _, ca = _self_signed(str(tmp_path))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    good = write(tmp_path, f'[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "https://a"\nca_file = "{ca}"\n')
    assert Config.from_toml(good).sites[0].routes[0].ca_file == ca
    for origin, path in (("http://a", ca), ("https://a", tmp_path / "missing.pem"), ("https://a", not_pem)):
        bad = write(tmp_path, f'[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "{origin}"\nca_file = "{path}"\n')
        assert "sites[0].routes[0].ca_file" in error_of(Config.from_toml, bad)


@pytest.mark.parametrize(
    "damage",
    ["not base64 at all", "QUJD", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
)
def test_ca_file_with_a_certificate_that_does_not_load_is_refused(tmp_path: Path, damage: str) -> None:
    """sites.routes.ca_file: a PEM block that is not a certificate (bad base64, or
    base64 of something else), even after a good one, is one line naming the key and
    the block, never a traceback when the origin pool loads it."""
    from tests.test_upstream import _self_signed

    _, good = _self_signed(str(tmp_path))
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(Path(good).read_text() + f"-----BEGIN CERTIFICATE-----\n{damage}\n-----END CERTIFICATE-----\n")
    path = write(tmp_path, f'[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "https://a"\nca_file = "{bundle}"\n')
    message = error_of(Config.from_toml, path)
    assert "sites[0].routes[0].ca_file: certificate 2 of 2 in" in message and "\n" not in message


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("tcp:8080", "tcp:8080:backlog=511"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=511"),
        ("tcp6:8080", "tcp6:8080:backlog=511"),
        ("tcp:0:interface=\\:\\:1", "tcp:0:interface=\\:\\:1:backlog=511"),
        ("unix:/run/accel.sock", "unix:/run/accel.sock:backlog=511"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=511"),
        ("tcp:8080:backlog=64", "tcp:8080:backlog=64"),
        ("tcp:8080:backlog=4096:interface=127.0.0.1", "tcp:8080:backlog=4096:interface=127.0.0.1"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_listeners_get_nginx_backlog_unless_they_set_one(description: str, expected: str) -> None:
    """A tcp, tcp6, ssl or unix listener without ``backlog=`` gets 511, nginx's
    default (Twisted's 50 overflows under a burst of connections); one that
    sets it, and other kinds, are left as they are."""
    assert with_backlog(description) == expected
    assert DEFAULT_BACKLOG == 511

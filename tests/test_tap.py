"""accel.tap and the twistd plugin: option parsing, the service maker, and
what an operator sees from a real ``twistd`` process."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from twisted.application.service import IServiceMaker, Service
from twisted.plugin import getPlugins
from twisted.python import usage

import accel
from accel.config import NOT_YET_SUPPORTED, Config, OriginURL
from accel.tap import Options, makeService

#: The directory that holds the ``accel`` package these tests import (the
#: checkout, or site-packages for an installed copy). twistd subprocesses get
#: it as PYTHONPATH, so they run the same code and find the plugin beside it.
SOURCE_ROOT = str(Path(accel.__file__).resolve().parent.parent)


def twistd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n accel ARGS`` in a subprocess with this interpreter."""
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "accel", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_repeatable_options_accumulate() -> None:
    """--listen, --origin and --trusted-proxy may be given several times."""
    options = parse(
        "--listen", "tcp:8080", "--listen", "tcp:8081",
        "--origin", "http://a:1", "--origin", "http://b:2",
        "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "::1",
    )  # fmt: skip
    assert options["listen"] == ["tcp:8080", "tcp:8081"]
    assert options["trusted-proxy"] == ["10.0.0.0/8", "::1"]
    assert options.config is not None
    assert options.config.listen == ("tcp:8080", "tcp:8081")
    assert options.config.sites[0].routes[0].origins == (OriginURL("http", "a", 1), OriginURL("http", "b", 2))


def test_options_build_the_same_config() -> None:
    """Options hand their raw values to Config.from_options."""
    options = parse("--origin", "unix:/run/app.sock", "--cache-size", "2G", "--access-log", "-")
    assert options.config == Config.from_options(options)
    assert options.config.cache_size == 2 * 1024**3


def test_no_origin_is_demo() -> None:
    """With no options at all the configuration asks for the demo origin."""
    config = parse().config
    assert config is not None and config.demo


def test_bad_value_exits_with_one_line() -> None:
    """A bad value ends parsing with SystemExit carrying 'accel: <message>'."""
    with pytest.raises(SystemExit) as info:
        parse("--cache-size", "12Q")
    assert info.value.code == "accel: --cache-size: expected a size such as 512M or 2G, got '12Q'"


def test_unknown_option_is_a_usage_error() -> None:
    """A misspelt option is twistd's usual UsageError."""
    with pytest.raises(usage.UsageError):
        parse("--cache-sise", "1G")


def test_make_service_passes_config_and_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """makeService hands the built Config, the global reactor and the options'
    reread (for SIGHUP) to accel.app.make_service."""
    from twisted.internet import reactor

    calls = []
    service = Service()
    fake = types.ModuleType("accel.app")
    fake.make_service = lambda config, given_reactor, reread: calls.append((config, given_reactor, reread)) or service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "accel.app", fake)
    options = parse("--origin", "http://a")
    assert makeService(options) is service
    assert calls == [(options.config, reactor, options.reread)]


def test_reread_reads_the_config_file_again(tmp_path: Path) -> None:
    """Options.reread builds the configuration anew from the same options and file."""
    path = tmp_path / "accel.toml"
    route = '[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://%s:1"\n'
    path.write_text(route % "a")
    options = parse("--config", str(path), "--cache-size", "2G")
    path.write_text(route % "b")
    config = options.reread()
    assert config.sites[0].routes[0].origins == (OriginURL("http", "b", 1),)
    assert config.cache_size == 2 * 1024**3


def test_reread_of_a_bad_file_raises_what_start_up_prints(tmp_path: Path) -> None:
    """A file that no longer parses: ConfigError, with start-up's text."""
    from accel.config import ConfigError

    path = tmp_path / "accel.toml"
    path.write_text('[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://a:1"\n')
    options = parse("--config", str(path))
    path.write_text("[[sites]\n")
    with pytest.raises(ConfigError) as raised:
        options.reread()
    with pytest.raises(SystemExit) as exited:
        parse("--config", str(path))
    assert str(exited.value) == f"accel: {raised.value}"


def test_plugin_is_found() -> None:
    """Twisted's plugin system finds the 'accel' service maker, pointing at accel.tap."""
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert makers["accel"].module == "accel.tap"
    assert makers["accel"].description == "Caching accelerator reverse proxy."


def test_help_lists_every_option() -> None:
    """`twistd -n accel --help` lists every long option, each with an explanation."""
    result = twistd("--help")
    assert result.returncode == 0, result.stderr
    names = [name.rstrip("=") for name in Options().longOpt]
    for name in names:
        assert f"--{name}" in result.stdout
    for required in ("listen", "origin", "cache-dir", "cache-size", "static", "admin", "admin-token-file", "parent", "config", "access-log", "workers", "trusted-proxy"):
        assert required in names


def test_bad_cache_size_process() -> None:
    """A bad --cache-size exits non-zero with one line naming it, and no traceback."""
    result = twistd("--cache-size", "12Q")
    assert result.returncode != 0
    assert result.stderr == "accel: --cache-size: expected a size such as 512M or 2G, got '12Q'\n"
    assert result.stdout == ""


def test_reserved_option_process() -> None:
    """An option of a later release exits with one 'not yet supported' line naming it."""
    result = twistd("--admin", "tcp:0:interface=127.0.0.1")
    assert result.returncode != 0
    assert result.stderr == f"accel: --admin: {NOT_YET_SUPPORTED}\n"


def test_bad_config_file_process(tmp_path: Path) -> None:
    """A bad key in the config file exits with one line naming the file and the key."""
    path = tmp_path / "accel.toml"
    path.write_text('[[sites]]\n[[sites.routes]]\nprefix = "/"\norigin = "ftp://x"\n')
    result = twistd("--config", str(path))
    assert result.returncode != 0
    assert result.stderr == (
        f"accel: {path}: sites[0].routes[0].origin: expected http://host[:port], https://host[:port] or unix:/path, got 'ftp://x'\n"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_check_config_prints_what_is_configured_and_exits_0(capsys) -> None:
    """--check-config: the configuration is built as at start-up, summarised on
    standard output, and the process ends with status 0 (nothing starts)."""
    with pytest.raises(SystemExit) as exited:
        parse("--check-config", "--origin", "http://127.0.0.1:8000", "--origin", "unix:/run/app.sock",
              "--listen", "tcp:8081", "--cache-dir", "/var/cache/accel", "--workers", "2", "--access-log", "off")
    assert exited.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        "accel: configuration OK",
        "  listen: tcp:8081",
        "  1 site(s), 1 route(s); origins: http://127.0.0.1:8000, unix:/run/app.sock",
        "  cache: /var/cache/accel, at most 1,073,741,824 bytes",
        "  workers: 2",
        "  access log: off",
    ]


def test_check_config_of_a_bad_value_is_the_start_up_error(capsys) -> None:
    """An invalid configuration ends --check-config exactly as it ends start-up."""
    with pytest.raises(SystemExit) as exited:
        parse("--check-config", "--cache-size", "12Q")
    assert exited.value.code == "accel: --cache-size: expected a size such as 512M or 2G, got '12Q'"
    assert capsys.readouterr().out == ""


def test_check_config_process(tmp_path: Path) -> None:
    """`twistd accel --check-config --config FILE`: status 0 and the file named when
    valid; status 1 and start-up's one line, no traceback, when the file is not."""
    path = tmp_path / "accel.toml"
    path.write_text('[[sites]]\n  [[sites.routes]]\n  prefix = "/"\n  origin = "http://127.0.0.1:9"\n')
    result = twistd("--check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"accel: {path}: configuration OK"
    path.write_text("[[sites]\n")
    result = twistd("--check-config", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"accel: {path}: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("twistd_args", "accel_args", "expected"),
    [
        (["-n"], [], "-"),  # twistd logs to stdout: the access log goes there, directly
        (["--nodaemon", "--logfile", "-"], [], "-"),
        (["-n", "--logfile", "{tmp}/logs/twistd.log"], [], "{tmp}/logs/access.log"),
        ([], [], "{cwd}/access.log"),  # a daemon: beside twistd.log
        (["--logfile", "{tmp}/logs/twistd.log"], [], "{tmp}/logs/access.log"),
        (["-n", "--syslog"], [], None),  # through the twistd log
        (["-n"], ["--access-log", "off"], "off"),  # what is asked for wins
        (["--logfile", "{tmp}/logs/twistd.log"], ["--access-log", "-"], "-"),
    ],
)
def test_default_access_log_goes_beside_the_twistd_log(
    twistd_args, accel_args, expected, tmp_path, monkeypatch
) -> None:
    """With no access log asked for, it is written directly where twistd logs:
    standard output, or access.log beside twistd's log file; with syslog it
    goes through the twistd log (None)."""
    from twisted.scripts._twistd_unix import ServerOptions

    (tmp_path / "logs").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    fill = {"tmp": str(tmp_path), "cwd": str(tmp_path / "cwd")}
    options = ServerOptions()
    args = [a.format(**fill) for a in [*twistd_args, "accel", "--origin", "http://127.0.0.1:9", *accel_args]]
    options.parseOptions(args)
    assert options.subOptions.config.access_log == (expected.format(**fill) if expected else None)


def test_default_access_log_that_cannot_be_written_is_one_line(tmp_path, monkeypatch) -> None:
    """A twistd log directory accel cannot write to ends start-up with one line."""
    from twisted.scripts._twistd_unix import ServerOptions

    missing = tmp_path / "nowhere" / "twistd.log"
    with pytest.raises(SystemExit) as info:
        ServerOptions().parseOptions(["--logfile", str(missing), "accel", "--origin", "http://127.0.0.1:9"])
    message = str(info.value)
    assert message.startswith("accel: --access-log: cannot write") and "beside the twistd log" in message
    assert "\n" not in message


def test_the_open_files_limit_is_raised_to_the_hard_limit():
    """twistd accel takes the open-files limit the hard limit allows (as nginx's
    worker_rlimit_nofile): checked in a child process with a low soft limit."""
    code = (
        "import resource\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))\n"
        "from accel.tap import MAX_OPEN_FILES, raise_open_files_limit\n"
        "before, after = raise_open_files_limit()\n"
        "now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "want = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)\n"
        "assert (before, after, now) == (64, want, want), (before, after, now, hard)\n"
        "assert raise_open_files_limit() == (want, want)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout == "ok\n", result.stderr

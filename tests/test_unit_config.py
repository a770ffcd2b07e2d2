"""Service configuration without a cluster: the config file and its precedence, token sources and
rotation, log redaction and journal prefixes, mount(8)'s helper arguments, metrics exposition."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from aisfs import auth, cli, logsetup
from aisfs.config import DEFAULT_ENDPOINT, ConfigError
from aisfs.daemon import DEFAULT_SHUTDOWN_TIMEOUT
from aisfs.metrics import Metrics, Snapshot

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A clean environment with HOME in tmp_path (no AIS CLI token file)."""
    for var in list(os.environ):
        if var.startswith(("AIS_", "AISFS_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return {"HOME": str(tmp_path / "home")}


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------------- config file


def test_config_file_keys_types_and_spellings(env: dict[str, str], tmp_path: Path) -> None:
    conf = write(tmp_path / "a.toml", """
        endpoint = "http://file:1"
        metadata_ttl = 2.5
        negative-metadata-ttl = 0
        uid = 4321
        file-mode = "600"
        read-only = true
        allow_other = false
        read-ahead-max = "16M"
        write-part-size = 1048576
        shutdown-timeout = 7
        metrics-addr = "127.0.0.1:9109"
        log-level = "debug"
        systemd = true
    """)
    inv = cli.parse_invocation(["ais://b", "/m", "--config", conf], env=env)
    c = inv.config
    assert c.client.endpoint == "http://file:1"
    assert (c.metadata_ttl, c.negative_metadata_ttl, c.uid) == (2.5, 0.0, 4321)
    assert (c.file_mode, c.read_only, c.allow_other) == (0o600, True, False)
    assert (c.read_ahead_max, c.write_part_size) == (16 << 20, 1 << 20)
    assert inv.service.shutdown_timeout == 7.0
    assert inv.service.metrics_addr == ("127.0.0.1", 9109)
    assert inv.service.systemd is True
    assert inv.values["log-level"] == logging.DEBUG


def test_precedence_cli_over_env_over_file_over_default(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    conf = write(tmp_path / "p.toml", 'endpoint = "http://file:1"\nuid = 11\nretries = 1\n')
    args = ["ais://b", "/m", "--config", conf]
    assert cli.parse_invocation(["ais://b", "/m"], env=env).config.client.endpoint == (
        DEFAULT_ENDPOINT)
    c = cli.parse_invocation(args, env=env).config
    assert (c.client.endpoint, c.uid, c.client.retries) == ("http://file:1", 11, 1)
    env["AIS_ENDPOINT"] = "http://env:2"
    assert cli.parse_invocation(args, env=env).config.client.endpoint == "http://env:2"
    c = cli.parse_invocation([*args, "-o", "endpoint=http://o:3,uid=12"], env=env).config
    assert (c.client.endpoint, c.uid) == ("http://o:3", 12)
    c = cli.parse_invocation([*args, "-o", "uid=12", "--uid", "13", "--endpoint", "http://l:4"],
                             env=env).config
    assert (c.client.endpoint, c.uid, c.client.retries) == ("http://l:4", 13, 1)


def test_config_from_env_variable_and_o_option(env: dict[str, str], tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", "uid = 1\n")
    b = write(tmp_path / "b.toml", "uid = 2\n")
    env["AISFS_CONFIG"] = a
    assert cli.parse_invocation(["ais://b", "/m"], env=env).config.uid == 1
    assert cli.parse_invocation(["ais://b", "/m", "-o", f"config={b}"], env=env).config.uid == 2
    assert cli.parse_invocation(["ais://b", "/m", "--config", b], env=env).config.uid == 2


def test_tls_env_beats_file(env: dict[str, str], tmp_path: Path) -> None:
    ca1, ca2 = write(tmp_path / "ca1.pem", "x"), write(tmp_path / "ca2.pem", "y")
    conf = write(tmp_path / "t.toml", f'ca-bundle = "{ca1}"\nskip-verify = false\n')
    tls = cli.parse_invocation(["ais://b", "/m", "--config", conf], env=env).config.client.tls
    assert (tls.ca_bundle, tls.skip_verify) == (ca1, False)
    env.update(AIS_CLIENT_CA=ca2, AIS_SKIP_VERIFY_CRT="true")
    tls = cli.parse_invocation(["ais://b", "/m", "--config", conf], env=env).config.client.tls
    assert (tls.ca_bundle, tls.skip_verify) == (ca2, True)


def test_service_defaults(env: dict[str, str]) -> None:
    inv = cli.parse_invocation(["ais://b", "/m"], env=env)
    assert inv.service.shutdown_timeout == DEFAULT_SHUTDOWN_TIMEOUT
    assert inv.service.metrics_addr is None and inv.service.systemd is False
    assert inv.token == auth.TokenSpec("none")


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("colour = 'red'\n", "unknown key 'colour'"),
        ("[section]\nuid = 1\n", "unknown table [section]"),
        ("uid = 'abc'\n", "bad value for uid"),
        ("file-mode = 999\n", "bad value for file-mode"),
        ("read-only = 'maybe'\n", "bad value for read-only"),
        ("metadata-ttl = true\n", "bad value for metadata-ttl"),
        ("metadata-ttl = -1\n", "bad value for metadata-ttl"),
        ("uid = [1, 2]\n", "bad value for uid"),
        ("metrics-addr = 'nowhere'\n", "bad value for metrics-addr"),
        ("log-level = 'loud'\n", "bad value for log-level"),
        ("uid = 1\nuid_ = 2\n", "unknown key"),
        ("uid = 1\n[[x]]\n", "unknown key 'x'"),
        ("metadata_ttl = 1\nmetadata-ttl = 2\n", "given twice"),
        ("config = '/etc/other.toml'\n", "cannot be set in a config file"),
        ("uid = \n", "invalid TOML"),
    ],
)
def test_config_file_errors_are_one_line(
    content: str, needle: str, env: dict[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    conf = write(tmp_path / "bad.toml", content)
    monkeypatch.setenv("AISFS_CONFIG", conf)
    rc = cli.main(["ais://b", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"aisfs: config file {conf}: ")
    assert needle in err


def test_readme_config_example_is_valid(env: dict[str, str]) -> None:
    from aisfs import configfile

    from .service_util import readme_blocks

    (example,) = readme_blocks("toml")
    path = Path(env["HOME"]) / "readme.toml"
    write(path, example)
    values = configfile.load(str(path))
    assert values["endpoint"] == "https://ais-proxy:51080"
    assert values["metrics-addr"] == ("127.0.0.1", 9109)
    assert values["read-ahead-max"] == 64 << 20


def test_missing_config_file(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        cli.parse_invocation(["ais://b", "/m", "--config", str(tmp_path / "nope.toml")], env=env)


# ---------------------------------------------------------------------- token sources


def test_token_precedence(env: dict[str, str], tmp_path: Path) -> None:
    default = tmp_path / "home" / ".config" / "ais" / "cli" / "auth.token"
    assert auth.choose(None, env, None) == auth.TokenSpec("none")
    write(default, json.dumps({"token": JWT}))
    assert auth.choose(None, env, None) == auth.TokenSpec("file", str(default))
    assert auth.choose(None, env, "/c/conf.token").path == "/c/conf.token"
    env["AIS_AUTHN_TOKEN_FILE"] = "/e/env.token"
    assert auth.choose(None, env, "/c/conf.token").path == "/e/env.token"
    env["AIS_AUTHN_TOKEN"] = JWT
    assert auth.choose(None, env, "/c/conf.token") == auth.TokenSpec("env")
    assert auth.choose("/l/cli.token", env, "/c/conf.token") == auth.TokenSpec(
        "file", "/l/cli.token")


def test_token_from_config_file_and_option(env: dict[str, str], tmp_path: Path) -> None:
    conf = write(tmp_path / "c.toml", f'token-file = "{tmp_path / "t1"}"\n')
    inv = cli.parse_invocation(["ais://b", "/m", "--config", conf], env=env)
    assert inv.token.path == str(tmp_path / "t1")
    inv = cli.parse_invocation(["ais://b", "/m", "--config", conf, "-o",
                                f"token_file={tmp_path / 't2'}"], env=env)
    assert inv.token.path == str(tmp_path / "t2")


def test_default_token_file_without_home(env: dict[str, str]) -> None:
    del env["HOME"]  # systemd units run without HOME: the passwd entry's home
    assert auth.default_token_file(env).endswith("/.config/ais/cli/auth.token")
    import pwd
    assert auth.default_token_file(env).startswith(pwd.getpwuid(os.getuid()).pw_dir)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b'{"token": ', "not valid JSON"),
        (b'{"tok": "x"}', 'no "token"'),
        (b'{"token": 5}', 'no "token"'),
        (b"two words", "more than one"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_token_files(content: bytes, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(content)
    source = auth.TokenSource(auth.TokenSpec("file", str(path)), {})
    with pytest.raises(auth.TokenFileError, match=needle) as info:
        source.load()
    assert str(info.value).startswith(f"token file {path}")


def test_token_file_formats(tmp_path: Path) -> None:
    for content in (json.dumps({"token": JWT}), JWT + "\n", f'  {{"token": "{JWT}"}}  '):
        path = tmp_path / "t"
        path.write_text(content)
        source = auth.TokenSource(auth.TokenSpec("file", str(path)), {})
        source.load()
        assert source() == JWT


def test_missing_explicit_token_file_is_one_line(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIS_AUTHN_TOKEN_FILE", str(tmp_path / "absent.token"))
    (tmp_path / "mnt").mkdir()
    assert cli.main(["ais://b", str(tmp_path / "mnt")]) != 0
    err = capsys.readouterr().err
    assert err == f"aisfs: token file {tmp_path / 'absent.token'}: No such file or directory\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rotated_token_file_is_reread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "t"
    path.write_text(json.dumps({"token": "first-token-1"}))
    clock = Clock()
    source = auth.TokenSource(auth.TokenSpec("file", str(path)), {}, clock=clock)
    source.load()
    assert source() == "first-token-1"
    tmp = tmp_path / "t.new"
    tmp.write_text(json.dumps({"token": "second-token-2"}))
    os.replace(tmp, path)  # the usual atomic rotation
    assert source() == "first-token-1"  # at most one stat a second
    clock.now += 1.0
    assert source() == "second-token-2"
    assert "changed: using the new token" in caplog.text
    # In place, same size: the mtime/ctime tells.
    path.write_text(json.dumps({"token": "third--token-3"}))
    os.utime(path, ns=(1, 1))
    clock.now += 1.0
    assert source() == "third--token-3"
    # Half-written, or removed while being replaced: keep the last good token, warn once.
    path.write_text("")
    caplog.clear()
    for _ in range(3):
        clock.now += 1.0
        assert source() == "third--token-3"
    assert caplog.text.count("is empty; keeping the token read before") == 1
    path.unlink()
    clock.now += 1.0
    assert source() == "third--token-3"
    path.write_text("fourth-token-4")
    clock.now += 1.0
    assert source() == "fourth-token-4"
    for secret in ("first-token-1", "second-token-2", "third--token-3", "fourth-token-4"):
        assert secret not in caplog.text


def test_env_token_source(tmp_path: Path) -> None:
    source = auth.TokenSource(auth.TokenSpec("env"), {"AIS_AUTHN_TOKEN": " tok-from-env \n"})
    source.load()
    assert source() == "tok-from-env" and source.has_token
    assert source.describe() == "AIS_AUTHN_TOKEN"
    none = auth.TokenSource(auth.TokenSpec("none"), {})
    assert none() is None and not none.has_token


# ---------------------------------------------------------------------- logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_redaction_in_logs_and_errors(tmp_path: Path) -> None:
    log_file = tmp_path / "l.log"
    logsetup.setup_logging(False, str(log_file))
    try:
        logsetup.add_secret("opaque-secret-value")
        logging.getLogger("t").warning("AIS said: token expired: %s; also opaque-secret-value",
                                       JWT)
        try:
            raise ValueError(f"bad {JWT}")
        except ValueError:
            logging.getLogger("t").exception("boom")
    finally:
        logging.getLogger().handlers[0].flush()
    text = log_file.read_text()
    assert JWT not in text and "opaque-secret-value" not in text
    assert text.count("<token>") == 3
    assert logsetup.redact(f"x {JWT} y") == "x <token> y"
    assert logsetup.redact("short") == "short"


@pytest.mark.usefixtures("restore_logging")
def test_journal_prefixes_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    logsetup.setup_logging(False, systemd=True)
    log = logging.getLogger("aisfs.test")
    log.warning("careful")
    log.info("two\nlines")
    log.debug("hidden")
    err = capsys.readouterr().err
    assert err.splitlines() == ["<4>aisfs.test: careful", "<6>aisfs.test: two", "<6>lines"]
    assert logsetup.cycle_level() == logging.DEBUG
    assert logsetup.cycle_level() == logging.WARNING
    assert logsetup.cycle_level() == logging.INFO


# ---------------------------------------------------------------------- mount(8) helper


def test_helper_arguments() -> None:
    rest, fake = cli._helper_args(["ais://b", "/mnt", "-s", "-n", "-v", "-o", "rw,_netdev",
                                   "-t", "aisfs"])
    assert (rest, fake) == (["ais://b", "/mnt", "-o", "rw,_netdev"], False)
    assert cli._helper_args(["ais://b", "/mnt", "-fv", "-o", "rw"])[1] is True
    with pytest.raises(ConfigError, match="not nfs"):
        cli._helper_args(["ais://b", "/mnt", "-t", "nfs"])
    with pytest.raises(ConfigError, match="-N"):
        cli._helper_args(["ais://b", "/mnt", "-N", "/proc/1/ns/mnt"])
    with pytest.raises(ConfigError, match="needs a value"):
        cli._helper_args(["ais://b", "/mnt", "-o"])


def test_helper_fake_mount_checks_options_only(env: dict[str, str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    mnt = str(tmp_path / "never-mounted")  # -f: nothing is mounted, so it need not exist
    assert cli.mount_main(["ais://b", mnt, "-f", "-o", "rw,_netdev,uid=5"]) == 0
    assert cli.mount_main(["ais://b", mnt, "-f", "-o", "rw,frobnicate"]) != 0
    assert capsys.readouterr().err == "mount.aisfs: unknown mount option: frobnicate\n"


# ---------------------------------------------------------------------- metrics


def test_metrics_exposition() -> None:
    m = Metrics("ais://b", "http://127.0.0.1:1", "0.0")
    m.fuse_op("read", 0.002, 0)
    m.fuse_op("lookup", 0.001, 2)
    m.request("get_range", 206, 0.01, 0)
    m.request("put_object", 200, 0.02, 1000)
    m.request("put_object", 403, 0.02, 1000)  # refused: nothing was written
    m.retry("get_range")
    m.read_bytes(4096)
    m.set_snapshot(lambda: Snapshot(
        cache_hits={"stats": 3}, cache_misses={"stats": 2}, cache_entries={"stats": 5},
        open_handles=1, inodes=9, read_ahead_bytes=123, read_ahead_limit=1000,
        write_buffer_bytes=77, spill_bytes=0,
    ))
    text = generate_latest(m.registry).decode()
    for line in (
        'aisfs_fuse_op_duration_seconds_count{op="read"} 1.0',
        'aisfs_fuse_op_errors_total{errno="ENOENT",op="lookup"} 1.0',
        'aisfs_backend_requests_total{kind="put_object",status="403"} 1.0',
        'aisfs_backend_retries_total{kind="get_range"} 1.0',
        "aisfs_backend_read_bytes_total 4096.0",
        "aisfs_backend_written_bytes_total 1000.0",
        'aisfs_metadata_cache_hits_total{cache="stats"} 3.0',
        'aisfs_metadata_cache_misses_total{cache="stats"} 2.0',
        "aisfs_open_handles 1.0",
        "aisfs_read_ahead_bytes 123.0",
        "aisfs_write_buffer_bytes 77.0",
        'aisfs_info{endpoint="http://127.0.0.1:1",source="ais://b",version="0.0"} 1.0',
    ):
        assert line in text, line
    assert "process_resident_memory_bytes" in text


@pytest.mark.usefixtures("restore_logging")
def test_systemd_mode_errors_have_journal_priority(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ais://b", str(tmp_path / "absent"), "--systemd"]) != 0
    err = capsys.readouterr().err
    assert err == f"<3>aisfs: mountpoint {tmp_path / 'absent'} does not exist\n"

"""aisfs/cli.py and aisfs/config.py: sources, -o expansion, option values, endpoint and TLS env."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from aisfs import cli
from aisfs.config import DEFAULT_ENDPOINT, MIB, ConfigError, MountConfig, Source, parse_source
from aisfs.daemon import DEFAULT_SHUTDOWN_TIMEOUT

# ---------------------------------------------------------------------- parse_source


@pytest.mark.parametrize(
    ("text", "bucket", "prefix"),
    [
        ("ais://", None, ""),
        ("ais://b", "b", ""),
        ("ais://b/", "b", ""),
        ("ais://b/p", "b", "p/"),
        ("ais://b/p/q", "b", "p/q/"),
        ("ais://b/p/q/", "b", "p/q/"),
        ("ais://my-bucket_1.x/dir", "my-bucket_1.x", "dir/"),
        ("ais://" + "a" * 64, "a" * 64, ""),
    ],
)
def test_parse_source_valid(text: str, bucket: str | None, prefix: str) -> None:
    src = parse_source(text)
    assert src == Source(bucket, prefix)


def test_source_str_round_trips() -> None:
    assert str(parse_source("ais://")) == "ais://"
    assert str(parse_source("ais://b")) == "ais://b"
    assert str(parse_source("ais://b/p/q")) == "ais://b/p/q/"


@pytest.mark.parametrize(
    "text",
    [
        "s3://b",
        "b",
        "ais:/b",
        "ais://b b",
        "ais://b..c",
        "ais://..",
        "ais://" + "a" * 65,
        "ais://b/../x",
        "ais://b/p/../x",
        "ais://b/./x",
        "ais://b/p//q",
        "ais://b/..",
        "ais://bück",
    ],
)
def test_parse_source_invalid(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_source(text)


def test_parse_source_error_names_the_part() -> None:
    with pytest.raises(ConfigError, match="bucket"):
        parse_source("ais://bad name")
    with pytest.raises(ConfigError, match="prefix"):
        parse_source("ais://b/../x")


# ---------------------------------------------------------------------- -o expansion


def test_expand_o_fstab_line() -> None:
    values = cli.expand_o(
        ["ro,allow_other,uid=5,metadata_ttl=2.5,_netdev,nofail,noauto,x-systemd.automount,rw"]
    )
    assert values == {"read-only": True, "allow-other": True, "uid": 5, "metadata-ttl": 2.5}
    assert isinstance(values["uid"], int)


def test_expand_o_several_o_and_spaces() -> None:
    values = cli.expand_o(["gid=7", " dir_mode=0700 , file-mode=600", ""])
    assert values == {"gid": 7, "dir-mode": 0o700, "file-mode": 0o600}


@pytest.mark.parametrize("spelling", ["metadata_ttl=3", "metadata-ttl=3"])
def test_underscore_and_dash_are_equal(spelling: str) -> None:
    assert cli.expand_o([spelling]) == {"metadata-ttl": 3.0}


def test_dash_and_underscore_for_flags() -> None:
    assert cli.expand_o(["read_only"]) == {"read-only": True}
    assert cli.expand_o(["read-only=false"]) == {"read-only": False}
    assert cli.expand_o(["skip_verify=yes"]) == {"skip-verify": True}


def test_ignored_mount_options() -> None:
    noise = "defaults,user,nosuid,nodev,noatime,comment=x,fsname=ais,subtype=aisfs,x-foo=bar"
    assert cli.expand_o([noise]) == {}


@pytest.mark.parametrize("item", ["bogus", "bogus=1", "colour=red", "ro=1"])
def test_unknown_option_is_named(item: str) -> None:
    key = item.partition("=")[0]
    with pytest.raises(ConfigError) as info:
        cli.expand_o([f"uid=1,{item}"])
    assert key in str(info.value)
    assert "unknown" in str(info.value)


@pytest.mark.parametrize(
    ("item", "name"),
    [
        ("file-mode=999", "file-mode"),
        ("file_mode=17777", "file-mode"),
        ("dir-mode=rwx", "dir-mode"),
        ("read-ahead-max=abc", "read-ahead-max"),
        ("read-part-size=-1M", "read-part-size"),
        ("uid=abc", "uid"),
        ("uid", "uid"),
        ("metadata-ttl=-1", "metadata-ttl"),
        ("metadata-ttl=soon", "metadata-ttl"),
        ("read-only=maybe", "read-only"),
    ],
)
def test_bad_values(item: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        cli.expand_o([item])
    assert name in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("8M", 8 * MIB),
        ("8m", 8 * MIB),
        ("8MiB", 8 * MIB),
        ("8MB", 8 * MIB),
        ("1G", 1 << 30),
        ("512k", 512 * 1024),
        ("512K", 512 * 1024),
        ("4096", 4096),
        ("1.5M", 3 * MIB // 2),
        ("2T", 2 << 40),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert cli.expand_o([f"read-ahead-max={text}"]) == {"read-ahead-max": value}


@pytest.mark.parametrize("text", ["abc", "M", "8X", "8 M B extra", ""])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ConfigError):
        cli.expand_o([f"read-ahead-budget={text}"])


# ---------------------------------------------------------------------- parse_args / make_config


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("AIS_ENDPOINT", "AIS_CLIENT_CA", "AIS_SKIP_VERIFY_CRT", "AIS_SKIP_VERIFY",
                "AIS_CRT", "AIS_CRT_KEY"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_parse_args_defaults(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config, values = cli.parse_args(["ais://b/p", str(tmp_path)])
    assert isinstance(config, MountConfig)
    assert config.source == Source("b", "p/")
    assert config.mountpoint == str(tmp_path)
    assert config.client.endpoint == DEFAULT_ENDPOINT
    assert config.uid == os.getuid() and config.gid == os.getgid()
    assert config.file_mode == 0o644 and config.dir_mode == 0o755
    assert config.read_only is False and config.allow_other is False
    assert config.client.tls.skip_verify is False and config.client.tls.ca_bundle is None
    assert values == {}


def test_parse_args_o_and_long_options(clean_env: pytest.MonkeyPatch) -> None:
    config, values = cli.parse_args([
        "ais://b", "rel/mnt", "-o", "ro,allow_other,uid=5,metadata_ttl=2.5,_netdev,nofail,"
        "noauto,x-systemd.automount,rw", "--read-ahead-max", "16M", "-o", "file_mode=600",
        "--negative-metadata-ttl", "0", "--retries", "1", "-f",
    ])
    assert config.read_only is True
    assert config.allow_other is True
    assert config.uid == 5
    assert config.metadata_ttl == 2.5
    assert config.negative_metadata_ttl == 0.0
    assert config.read_ahead_max == 16 * MIB
    assert config.file_mode == 0o600
    assert config.client.retries == 1
    assert config.mountpoint == os.path.abspath("rel/mnt")
    assert values["foreground"] is True


def test_long_option_beats_o(clean_env: pytest.MonkeyPatch) -> None:
    config, _ = cli.parse_args(["ais://b", "/m", "-o", "uid=5", "--uid", "7"])
    assert config.uid == 7


def test_long_option_bad_value(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="file-mode"):
        cli.parse_args(["ais://b", "/m", "--file-mode", "999"])
    with pytest.raises(ConfigError, match="unrecognized.*--bogus"):
        cli.parse_args(["ais://b", "/m", "--bogus"])


def test_minimums_are_enforced(clean_env: pytest.MonkeyPatch) -> None:
    config, _ = cli.parse_args(["ais://b", "/m", "-o", "read_part_size=1k,max_connections=0"])
    assert config.read_part_size == 64 * 1024
    assert config.client.max_connections == 1


def test_endpoint_precedence(clean_env: pytest.MonkeyPatch) -> None:
    config, _ = cli.parse_args(["ais://b", "/m"])
    assert config.client.endpoint == DEFAULT_ENDPOINT
    clean_env.setenv("AIS_ENDPOINT", "http://from-env:1/")
    config, _ = cli.parse_args(["ais://b", "/m"])
    assert config.client.endpoint == "http://from-env:1"
    config, _ = cli.parse_args(["ais://b", "/m", "--endpoint", "https://from-flag:2"])
    assert config.client.endpoint == "https://from-flag:2"
    config, _ = cli.parse_args(["ais://b", "/m", "-o", "endpoint=http://from-o:3"])
    assert config.client.endpoint == "http://from-o:3"


def test_make_config_endpoint_precedence() -> None:
    env = {"AIS_ENDPOINT": "http://env:9"}
    assert cli.make_config("ais://", "/m", {}, {}).client.endpoint == DEFAULT_ENDPOINT
    assert cli.make_config("ais://", "/m", {}, env).client.endpoint == "http://env:9"
    given = {"endpoint": "http://flag:8"}
    assert cli.make_config("ais://", "/m", given, env).client.endpoint == "http://flag:8"
    assert cli.make_config("ais://", "/m", {}, {"AIS_ENDPOINT": ""}).client.endpoint == (
        DEFAULT_ENDPOINT
    )


@pytest.mark.parametrize("endpoint", ["ftp://x", "localhost:8080", "http://", "http:// x"])
def test_bad_endpoint(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="endpoint"):
        cli.make_config("ais://b", "/m", {"endpoint": endpoint}, {})


def test_tls_ca_must_exist(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="nope.pem"):
        cli.make_config("ais://b", "/m", {}, {"AIS_CLIENT_CA": missing})
    ca = tmp_path / "ca.pem"
    ca.write_text("dummy")
    config = cli.make_config("ais://b", "/m", {}, {"AIS_CLIENT_CA": str(ca)})
    assert config.client.tls.ca_bundle == str(ca)
    with pytest.raises(ConfigError, match="nope.pem"):
        cli.make_config("ais://b", "/m", {"ca-bundle": missing}, {"AIS_CLIENT_CA": str(ca)})


def test_tls_client_cert_and_key(tmp_path: Path) -> None:
    crt, key = tmp_path / "c.crt", tmp_path / "c.key"
    crt.write_text("c")
    key.write_text("k")
    tls = cli.make_config("ais://b", "/m", {}, {"AIS_CRT": str(crt), "AIS_CRT_KEY": str(key)})
    assert (tls.client.tls.client_cert, tls.client.tls.client_key) == (str(crt), str(key))
    with pytest.raises(ConfigError):
        cli.make_config("ais://b", "/m", {}, {"AIS_CRT": str(tmp_path / "absent.crt")})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True),
     ("false", False), ("0", False), ("no", False), ("", False)],
)
def test_skip_verify_env(value: str, expected: bool) -> None:
    config = cli.make_config("ais://b", "/m", {}, {"AIS_SKIP_VERIFY_CRT": value})
    assert config.client.tls.skip_verify is expected


def test_skip_verify_env_garbage() -> None:
    with pytest.raises(ConfigError, match="AIS_SKIP_VERIFY_CRT"):
        cli.make_config("ais://b", "/m", {}, {"AIS_SKIP_VERIFY_CRT": "sometimes"})


def test_skip_verify_flag_beats_env() -> None:
    env = {"AIS_SKIP_VERIFY_CRT": "false"}
    assert cli.make_config("ais://b", "/m", {"skip-verify": True}, env).client.tls.skip_verify
    env = {"AIS_SKIP_VERIFY_CRT": "true"}
    assert not cli.make_config("ais://b", "/m", {"skip-verify": False}, env).client.tls.skip_verify


# ---------------------------------------------------------------------- main()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ais://b", "/nonexistent-mnt", "-o", "bogus"], "bogus"),
        (["ais://b", "/nonexistent-mnt", "-o", "file-mode=999"], "file-mode"),
        (["ais://b", "/nonexistent-mnt", "-o", "read-ahead-max=abc"], "read-ahead-max"),
        (["ais://b", "/nonexistent-mnt", "--bogus"], "--bogus"),
        (["ais://b/../x", "/nonexistent-mnt"], "prefix"),
        (["ais://b"], "mountpoint"),
    ],
)
def test_main_bad_option_is_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str],
    clean_env: pytest.MonkeyPatch,
) -> None:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc != 0
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aisfs: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_mount_helper_prog_name(capsys: pytest.CaptureFixture[str],
                                clean_env: pytest.MonkeyPatch) -> None:
    rc = cli.main(["ais://b", "/nonexistent-mnt", "-o", "nosuchopt"], prog="mount.aisfs")
    err = capsys.readouterr().err
    assert rc != 0
    assert err.startswith("mount.aisfs: ") and err.count("\n") == 1


def test_umount_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["umount"]) != 0
    assert capsys.readouterr().err.startswith("usage: aisfs umount")


def test_umount_not_mounted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["umount", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("aisfs: ") and "not mounted" in err and err.count("\n") == 1


def test_help_states_the_real_defaults() -> None:
    """Every "(default X)" in --help is the value the mount really gets without the option."""
    cfg = MountConfig(source=parse_source("ais://b"), mountpoint="/mnt")
    process_level = {"shutdown-timeout": DEFAULT_SHUTDOWN_TIMEOUT, "log-level": logging.INFO}
    checked = []
    for opt in cli.OPTIONS:
        m = re.search(r"\(default (\S+?)[);]", opt.help)
        if m is None or opt.parse is None:
            continue
        attr = opt.name.replace("-", "_")
        if opt.name in process_level:
            value = process_level[opt.name]
        else:
            holder = cfg if hasattr(cfg, attr) or hasattr(cfg, attr + "_bytes") else cfg.client
            value = getattr(holder, attr if hasattr(holder, attr) else attr + "_bytes")
        assert opt.parse(m.group(1)) == value, opt.name
        checked.append(opt.name)
    assert len(checked) >= 15, checked

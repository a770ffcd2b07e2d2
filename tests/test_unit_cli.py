"""aisfs/cli.py, aisfs/options.py and aisfs/config.py: sources, -o expansion, option values,
endpoint and TLS env, the help, exit codes, umount."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aisfs import cli, options
from aisfs.config import DEFAULT_ENDPOINT, MIB, ConfigError, MountConfig, Source, parse_source

from .util import aisfs_cmd, env_without

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


def test_archives_option(clean_env: pytest.MonkeyPatch) -> None:
    assert cli.parse_args(["ais://b", "/m"])[0].expand_archives is False
    assert cli.parse_args(["ais://b", "/m", "--archives", "expand"])[0].expand_archives is True
    assert cli.parse_args(["ais://b", "/m", "-o", "archives=expand"])[0].expand_archives is True
    assert cli.parse_args(["ais://b", "/m", "-o", "archives=file"])[0].expand_archives is False
    with pytest.raises(ConfigError, match="archives"):
        cli.parse_args(["ais://b", "/m", "-o", "archives=yes"])
    with pytest.raises(ConfigError, match="archives"):
        cli.parse_args(["ais://b", "/m", "-o", "archives"])


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


def test_umount_loads_neither_pyfuse3_nor_trio(tmp_path: Path) -> None:
    done = subprocess.run([*aisfs_cmd(), "umount", str(tmp_path)], capture_output=True,
                          text=True, timeout=60,
                          env=env_without(("pyfuse3", "trio"), tmp_path / "blocked"))
    assert done.returncode == 1
    assert done.stderr == f"aisfs: {tmp_path} is not mounted\n"


def help_by_option() -> dict[str, str]:
    """What ``aisfs --help`` says of each long option (its help text, before wrapping)."""
    parser = cli.build_parser()
    return {a.option_strings[-1][2:]: a.help % {} if a.help else ""
            for a in parser._actions if a.option_strings and a.option_strings[-1].startswith("--")}


def test_help_states_the_real_defaults() -> None:
    """Every "(default X)" in --help is the value the mount really gets without the option."""
    inv = cli.parse_invocation(["ais://b", "/mnt"], env={})
    cfg, service = inv.config, inv.service
    process_level = {"log-level": logging.INFO}
    checked = []
    for name, text in help_by_option().items():
        m = re.search(r"\(default (\S+?)\)", text)
        if m is None:
            continue
        attr = name.replace("-", "_")
        if name in process_level:
            value = process_level[name]
        else:
            holder = next(h for h in (cfg, cfg.client, service)
                          if hasattr(h, attr) or hasattr(h, attr + "_bytes"))
            value = getattr(holder, attr if hasattr(holder, attr) else attr + "_bytes")
        kind = options.BY_NAME[name].kind
        assert kind is not None and kind.parse(m.group(1)) == value, name
        checked.append(name)
    assert len(checked) >= 19, checked


def test_every_option_states_its_default_in_the_help() -> None:
    """An option with a value says what it is without it, and an option an environment variable
    sets names the variable: the help is made from the option's definition, not written twice."""
    helps = help_by_option()
    assert set(helps) >= {o.name for o in options.OPTIONS}
    for option in options.OPTIONS:
        text = helps[option.name]
        if option.kind is not None:
            assert "(default" in text, option.name
        for var in option.env[-1:]:
            assert f"${var}" in text, option.name


def test_config_file_keys_are_the_options(tmp_path: Path) -> None:
    """Every option but --config is a key of the config file, with the command line's value."""
    from aisfs import configfile

    samples = {"SIZE": "3M", "S": "7", "N": "3", "KB": "3", "MODE": "0600", "URL": "http://h:1",
               "DIR": "/d", "FILE": "/f", "HOST:PORT": "127.0.0.1:9", "LEVEL": "debug",
               "file|expand": "expand"}
    for option in options.OPTIONS:
        raw = "true" if option.kind is None else samples[option.metavar]
        path = tmp_path / f"{option.name}.toml"
        path.write_text(f"{option.name} = {raw if option.kind is None else repr(raw)}\n")
        if not option.in_file:
            with pytest.raises(ConfigError, match="cannot be set in a config file"):
                configfile.load(str(path))
            continue
        assert configfile.load(str(path)) == {option.name: option.convert(raw)}, option.name


def readme_option_defaults() -> list[tuple[str, str]]:
    """(option name, its default cell) from the README's options table; a row naming several
    options gives each its part of a cell like "5, 30, 4", or the whole cell."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    table = text.split("\n### Options\n", 1)[1].split("\n## ", 1)[0]
    pairs: list[tuple[str, str]] = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.findall(r"--([a-z][a-z-]*)", cells[0]) if len(cells) == 3 else []
        if not found or not cells[1]:
            continue
        parts = [p.strip() for p in cells[1].replace("`", "").split(", ")]
        if len(found) == 1 or len(parts) != len(found):
            parts = [cells[1].replace("`", "")] * len(found)
        pairs += zip(found, parts, strict=True)
    return pairs


def test_readme_states_the_defaults_of_the_definitions() -> None:
    checked = []
    for name, cell in readme_option_defaults():
        option = options.BY_NAME[name]
        if option.default_text:
            continue  # words of its own ("the mounting user", "see Authentication")
        assert cell == (option.default_summary() or "off"), name
        checked.append(name)
    assert len(checked) >= 25, checked


# ---------------------------------------------------------------------- exit codes


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """main() routes the root logger to stderr when it starts a mount: undone after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["ais://b", "{tmp}/mnt", "--bogus"], 2),  # argparse
        (["ais://b", "{tmp}/mnt", "--metadata-ttl", "soon"], 2),  # a bad value
        (["ais://b", "{tmp}/mnt", "-o", "nosuch"], 2),
        (["s3://b", "{tmp}/mnt"], 2),  # a bad source
        (["ais://b", "{tmp}/no-option-here"], 1),  # a failure whose text says "option"
        (["ais://b", "{tmp}/usage-dir"], 1),
        (["ais://b", "{tmp}/mnt", "--ca-bundle", "{tmp}/no-such-ca.pem"], 1),
    ],
)
@pytest.mark.usefixtures("clean_env")
def test_exit_code_follows_the_kind_of_error(
    argv: list[str], code: int, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    restore_root_logging: None,
) -> None:
    """2 when the invocation is wrong, 1 when a right one cannot run; never read off the
    message's text."""
    (tmp_path / "mnt").mkdir()
    assert cli.main([arg.format(tmp=tmp_path) for arg in argv]) == code
    assert capsys.readouterr().err.count("\n") == 1

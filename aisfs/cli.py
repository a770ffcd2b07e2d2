"""Command line: ``aisfs [options] SOURCE MOUNTPOINT``, ``aisfs umount DIR``, ``mount.aisfs``.

Every long option also works as ``-o key=value`` (the fstab form; ``_`` and ``-`` are equal) and
as a key of the TOML config file (``--config FILE`` or ``$AISFS_CONFIG``). Precedence, highest
first: command line (long options over ``-o``) > environment (``AIS_ENDPOINT``,
``AIS_CLIENT_CA``, ``AIS_SKIP_VERIFY_CRT``, ``AIS_CRT``, ``AIS_CRT_KEY``, the token variables)
> config file > defaults. The options mount(8) adds (``_netdev``, ``nofail``, ``rw``, ...) are
accepted and ignored. A bad option, an unreachable endpoint, a refused token, an untrusted
certificate, a missing bucket or a busy mountpoint is one line on stderr and a non-zero exit,
never a traceback. Runs in the main thread before anything else exists (no threads, no trio).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__, auth, configfile
from .config import (
    DEFAULT_ENDPOINT,
    ClientConfig,
    ConfigError,
    MountConfig,
    TlsConfig,
    parse_source,
)
from .daemon import DEFAULT_SHUTDOWN_TIMEOUT, ServiceSettings
from .logsetup import LEVEL_NAMES, redact

log = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILED = 1

# Options mount(8), fstab and systemd add that mean nothing to aisfs.
IGNORED_MOUNT_OPTIONS = {
    "_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "owner", "group",
    "defaults", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "atime",
    "noatime", "relatime", "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime",
    "rw", "loud", "silent", "nosymfollow", "default_permissions",
}
IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=", "helper=", "fsname=", "subtype=")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 8M, 1G)")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(f"not a file mode: {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"must be a non-negative number of seconds: {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 127.0.0.1:9109)")
    return host, int(port)


def _level(text: str) -> int:
    try:
        return LEVEL_NAMES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a log level: {text!r} (use {', '.join(LEVEL_NAMES)})") from None


@dataclass(frozen=True)
class Option:
    name: str  # long option without dashes
    parse: Callable[[str], Any] | None  # None: a flag
    help: str
    metavar: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("endpoint", str,
           f"AIS proxy URL (default: $AIS_ENDPOINT, else {DEFAULT_ENDPOINT})", "URL"),
    Option("read-only", None, "mount read-only (fstab: ro)"),
    Option("allow-other", None, "let other users access the mount (needs user_allow_other)"),
    Option("uid", int, "owner of every file (default: the mounting user)", "N"),
    Option("gid", int, "group of every file (default: the mounting user's group)", "N"),
    Option("file-mode", _octal, "permission bits of files (default 0644)", "MODE"),
    Option("dir-mode", _octal, "permission bits of directories (default 0755)", "MODE"),
    Option("metadata-ttl", _seconds,
           "seconds to trust cached attributes and listings (default 5)", "S"),
    Option("negative-metadata-ttl", _seconds, "seconds to trust 'does not exist' (default 1)", "S"),
    Option("max-connections", int, "parallel HTTP requests (default 16)", "N"),
    Option("connect-timeout", _seconds, "HTTP connect timeout (default 5)", "S"),
    Option("read-timeout", _seconds, "HTTP read timeout (default 30)", "S"),
    Option("retries", int, "retries of a failed idempotent request (default 4)", "N"),
    Option("read-ahead-max", _size,
           "largest read-ahead window per open file (default 64M)", "SIZE"),
    Option("read-ahead-budget", _size,
           "read-ahead memory of all files together (default 128M)", "SIZE"),
    Option("read-part-size", _size, "bytes per ranged GET (default 16M)", "SIZE"),
    Option("kernel-read-ahead-kb", int,
           "kernel read-ahead for the mount, 0 = leave (default 1024)", "KB"),
    Option("write-part-size", _size, "bytes of a file's first APPEND request (default 8M)", "SIZE"),
    Option("write-part-max", _size,
           "APPEND size a growing file doubles up to (default 32M)", "SIZE"),
    Option("write-buffer-budget", _size,
           "write memory above --write-part-size, all files together (default 256M)", "SIZE"),
    Option("spill-dir", str,
           "where non-sequential writes are staged (default /var/tmp/aisfs-spill)", "DIR"),
    Option("spill-max", _size, "cap of all staged files together (default 16G)", "SIZE"),
    Option("rename-dir-limit", int, "most objects a directory rename moves (default 10000)", "N"),
    Option("ca-bundle", str, "CA certificates for https (default: $AIS_CLIENT_CA)", "FILE"),
    Option("skip-verify", None, "do not verify the server certificate ($AIS_SKIP_VERIFY_CRT)"),
    Option("client-cert", str, "client certificate for mutual TLS ($AIS_CRT)", "FILE"),
    Option("client-key", str, "key of the client certificate ($AIS_CRT_KEY)", "FILE"),
    Option("token-file", str, "AuthN token file, re-read when it changes (default: "
           "$AIS_AUTHN_TOKEN, $AIS_AUTHN_TOKEN_FILE, else ~/.config/ais/cli/auth.token)", "FILE"),
    Option("config", str, "read options from this TOML file (default: $AISFS_CONFIG)", "FILE"),
    Option("foreground", None, "stay in the foreground (-f)"),
    Option("systemd", None, "run as a systemd Type=notify service: foreground, READY=1/STOPPING=1, "
           "journal log priorities"),
    Option("shutdown-timeout", _seconds, "on SIGTERM/SIGINT, seconds to finish uploads in flight "
           "before unmounting (default 30)", "S"),
    Option("metrics-addr", _address, "serve Prometheus metrics at HOST:PORT (default: off)",
           "HOST:PORT"),
    Option("debug", None, "log every request (-d)"),
    Option("log-level", _level,
           "warning, info or debug (default info; SIGUSR2 cycles it)", "LEVEL"),
    Option("log-file", str,
           "log to this file (default: stderr; syslog when in the background)", "FILE"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
_FSTAB_ALIASES = {"ro": ("read-only", "true"), "allow_other": ("allow-other", "true")}
# Environment variables that set an option (AIS's own names), applied above the config file.
ENV_OPTIONS = (
    ("AIS_ENDPOINT", "endpoint"),
    ("AIS_CLIENT_CA", "ca-bundle"),
    ("AIS_SKIP_VERIFY", "skip-verify"),  # legacy name; AIS_SKIP_VERIFY_CRT wins
    ("AIS_SKIP_VERIFY_CRT", "skip-verify"),
    ("AIS_CRT", "client-cert"),
    ("AIS_CRT_KEY", "client-key"),
)
CONFIG_ENV = "AISFS_CONFIG"
_NOT_IN_FILE = ("config",)


def expand_o(values: Sequence[str]) -> dict[str, Any]:
    """Translate ``-o a,b=c`` into option values; mount(8) noise is dropped."""
    out: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if not item or item in IGNORED_MOUNT_OPTIONS or item.startswith(IGNORED_PREFIXES):
                continue
            key, sep, raw = item.partition("=")
            if key in _FSTAB_ALIASES and not sep:
                key, raw = _FSTAB_ALIASES[key]
                sep = "="
            name = key.replace("_", "-")
            option = _BY_NAME.get(name)
            if option is None:
                raise ConfigError(f"unknown mount option: {key}")
            out[name] = _convert(option, raw if sep else None)
    return out


def _convert(option: Option, raw: str | None) -> Any:
    try:
        if option.parse is None:
            return True if raw is None else _bool(raw)
        if raw is None:
            raise ValueError("needs a value")
        return option.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"bad value for {option.name}: {exc}") from None


def _convert_file_value(name: str, raw: str | bool) -> Any:
    option = _BY_NAME[name]
    if isinstance(raw, bool):
        if option.parse is not None:
            raise ConfigError(f"bad value for {name}: needs a value, not {str(raw).lower()}")
        return raw
    return _convert(option, raw)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser(prog: str = "aisfs") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Mount an AIStore cluster, bucket or prefix as a local directory.",
        epilog="SOURCE is ais:// (all buckets), ais://BUCKET or ais://BUCKET/PREFIX/. "
        "Every option also works as -o name=value and as a key of the --config file. "
        "Unmount with: aisfs umount MOUNTPOINT",
    )
    parser.add_argument("source", help="ais://, ais://BUCKET or ais://BUCKET/PREFIX/")
    parser.add_argument("mountpoint", help="an existing empty directory")
    parser.add_argument("-o", dest="o", action="append", default=[], metavar="OPTS",
                        help="comma-separated options, fstab style")
    parser.add_argument("-f", dest="foreground", action="store_const", const=True)
    parser.add_argument("-d", dest="debug", action="store_const", const=True)
    parser.add_argument("--version", action="version", version=f"aisfs {__version__}")
    for option in OPTIONS:
        dest = option.name.replace("-", "_")
        if option.parse is None:
            parser.add_argument(f"--{option.name}", dest=dest, action="store_const", const=True,
                                help=option.help)
        else:
            parser.add_argument(f"--{option.name}", dest=dest, metavar=option.metavar,
                                type=_raw, help=option.help)
    return parser


def _raw(text: str) -> str:
    return text


@dataclass(frozen=True)
class Invocation:
    """Everything one ``aisfs SOURCE MOUNTPOINT ...`` asks for, after all layers were merged."""

    config: MountConfig
    values: dict[str, Any]  # every option value by name: file < environment < command line
    service: ServiceSettings
    token: auth.TokenSpec


def parse_invocation(
    argv: Sequence[str], prog: str = "aisfs", env: Mapping[str, str] | None = None
) -> Invocation:
    """Command line + environment + config file → Invocation. Raises ConfigError."""
    env = os.environ if env is None else env
    ns = build_parser(prog).parse_args(list(argv))
    cli_values: dict[str, Any] = expand_o(ns.o)
    for option in OPTIONS:
        raw = getattr(ns, option.name.replace("-", "_"))
        if raw is not None:
            cli_values[option.name] = _convert(option, None if raw is True else raw)
    config_path = cli_values.get("config") or env.get(CONFIG_ENV) or None
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = configfile.load(config_path, _convert_file_value, _BY_NAME, _NOT_IN_FILE)
    config = make_config(ns.source, ns.mountpoint, cli_values, env, file_values=file_values)
    values = {**file_values, **env_values(env), **cli_values}
    service = ServiceSettings(
        systemd=bool(values.get("systemd")),
        shutdown_timeout=values.get("shutdown-timeout", DEFAULT_SHUTDOWN_TIMEOUT),
        metrics_addr=values.get("metrics-addr"),
    )
    token = auth.choose(cli_values.get("token-file"), env, file_values.get("token-file"))
    return Invocation(config, values, service, token)


def parse_args(argv: Sequence[str], prog: str = "aisfs") -> tuple[MountConfig, dict[str, Any]]:
    """Command line → (MountConfig, all option values by name). Raises ConfigError."""
    inv = parse_invocation(argv, prog)
    return inv.config, inv.values


def env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Option values the AIS environment variables set (empty variables set nothing)."""
    out: dict[str, Any] = {}
    for var, name in ENV_OPTIONS:
        raw = env.get(var)
        if not raw:
            continue
        if name == "skip-verify":
            try:
                out[name] = _bool(raw)
            except ValueError:
                raise ConfigError(f"{var} must be true or false: {raw!r}") from None
        else:
            out[name] = raw
    return out


def make_config(
    source: str, mountpoint: str, values: dict[str, Any], env: Mapping[str, str],
    *, file_values: dict[str, Any] | None = None,
) -> MountConfig:
    """MountConfig from option values (command line) over ``env`` over ``file_values``."""
    merged = {**(file_values or {}), **env_values(env), **values}

    def pick(name: str, default: Any) -> Any:
        return merged[name] if name in merged else default

    endpoint = pick("endpoint", DEFAULT_ENDPOINT)
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ConfigError(f"endpoint must be an http:// or https:// URL: {endpoint!r}")
    tls = TlsConfig(
        ca_bundle=pick("ca-bundle", None),
        skip_verify=pick("skip-verify", False),
        client_cert=pick("client-cert", None),
        client_key=pick("client-key", None),
    )
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"no such certificate or key file: {path}")
    if tls.client_key and not tls.client_cert:
        raise ConfigError("client-key (AIS_CRT_KEY) needs client-cert (AIS_CRT) too")
    dflt_client = ClientConfig()
    client = ClientConfig(
        endpoint=endpoint.rstrip("/"),
        connect_timeout=pick("connect-timeout", dflt_client.connect_timeout),
        read_timeout=pick("read-timeout", dflt_client.read_timeout),
        retries=pick("retries", dflt_client.retries),
        max_connections=max(1, pick("max-connections", dflt_client.max_connections)),
        tls=tls,
    )
    if client.connect_timeout <= 0 or client.read_timeout <= 0:
        raise ConfigError("connect-timeout and read-timeout must be more than 0 seconds")
    d = MountConfig(parse_source(source), mountpoint)
    return MountConfig(
        source=d.source,
        mountpoint=os.path.abspath(mountpoint),
        client=client,
        uid=pick("uid", d.uid),
        gid=pick("gid", d.gid),
        file_mode=pick("file-mode", d.file_mode),
        dir_mode=pick("dir-mode", d.dir_mode),
        metadata_ttl=pick("metadata-ttl", d.metadata_ttl),
        negative_metadata_ttl=pick("negative-metadata-ttl", d.negative_metadata_ttl),
        read_only=pick("read-only", d.read_only),
        allow_other=pick("allow-other", d.allow_other),
        read_ahead_max=pick("read-ahead-max", d.read_ahead_max),
        read_ahead_budget=pick("read-ahead-budget", d.read_ahead_budget),
        read_part_size=max(64 * 1024, pick("read-part-size", d.read_part_size)),
        kernel_read_ahead_kb=pick("kernel-read-ahead-kb", d.kernel_read_ahead_kb),
        write_part_size=(part := max(64 * 1024, pick("write-part-size", d.write_part_size))),
        write_part_max=max(part, pick("write-part-max", d.write_part_max)),
        write_buffer_budget=pick("write-buffer-budget", d.write_buffer_budget),
        spill_dir=pick("spill-dir", d.spill_dir),
        spill_max_bytes=pick("spill-max", d.spill_max_bytes),
        rename_dir_limit=pick("rename-dir-limit", d.rename_dir_limit),
        debug=pick("debug", d.debug),
    )


def main(argv: Sequence[str] | None = None, prog: str = "aisfs") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "umount":
        return umount(args[1:])
    journal = "<3>" if "--systemd" in args else ""  # the journal's "error" priority
    try:
        return run_mount(parse_invocation(args, prog), prog)
    except ConfigError as exc:
        print(f"{journal}{prog}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE if "option" in str(exc) or "usage" in str(exc) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def run_mount(inv: Invocation, prog: str = "aisfs") -> int:
    from . import daemon, mount, transport  # pyfuse3 and trio load only when mounting
    from .client import AisClient
    from .logsetup import setup_logging

    config, values, service = inv.config, inv.values, inv.service
    foreground = service.systemd or bool(values.get("foreground"))
    log_file = values.get("log-file")
    level = logging.DEBUG if config.debug else values.get("log-level")

    def logging_to(syslog: bool) -> None:
        setup_logging(config.debug, log_file, systemd=service.systemd, syslog=syslog, level=level)

    logging_to(syslog=False)
    token = auth.TokenSource(inv.token, os.environ)
    token.load()
    mount.check_mountpoint(config.mountpoint)
    probe = AisClient(config.client, token)
    # The pre-flight check retries like any request, but a failure must read as one line:
    # the transport's per-retry log lines show only with --debug.
    transport_log = logging.getLogger(transport.__name__)
    saved_level = transport_log.level
    if not config.debug:
        transport_log.setLevel(logging.ERROR)
    try:
        mount.check_cluster(probe, config, token)
    finally:
        transport_log.setLevel(saved_level)
        probe.close()
    if foreground:
        readiness = daemon.Readiness(None, ("<3>" if service.systemd else "") + prog)
    else:
        readiness = daemon.daemonize(log_file, prog)
        logging_to(syslog=not log_file)
    daemon.tune_malloc()
    client = AisClient(config.client, token)
    return mount.serve(config, client, readiness, service)


def mount_main(argv: Sequence[str] | None = None) -> int:
    """``mount.aisfs SOURCE DIR [-sfnv] [-o opts]``: what mount(8) runs for ``-t aisfs``.

    mount(8) adds ``-f`` for a fake mount (check, do nothing), ``-s`` (sloppy), ``-n`` (no
    mtab) and ``-v`` (verbose); aisfs's own ``-f`` (foreground) is not available here.
    """
    prog = "mount.aisfs"
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rest, fake = _helper_args(args)
        if fake:
            parse_invocation(rest, prog)
            return 0
    except ConfigError as exc:
        print(f"{prog}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    return main(rest, prog=prog)


def _helper_args(args: Sequence[str]) -> tuple[list[str], bool]:
    rest: list[str] = []
    fake = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-t", "-o", "-N") and i + 1 >= len(args):
            raise ConfigError(f"option {arg} needs a value")
        if arg == "-t":
            if args[i + 1] not in ("aisfs", "fuse.aisfs"):
                raise ConfigError(f"this helper mounts type aisfs, not {args[i + 1]}")
            i += 2
            continue
        if arg == "-N":
            raise ConfigError("option -N (another mount namespace) is not supported")
        if arg == "-o":
            rest += [arg, args[i + 1]]
            i += 2
            continue
        if re.fullmatch(r"-[sfnv]+", arg):
            fake = fake or "f" in arg
            i += 1
            continue
        rest.append(arg)
        i += 1
    return rest, fake


def umount(args: Sequence[str]) -> int:
    """Unmount, also a dead mount ("Transport endpoint is not connected") of a killed daemon."""
    if len(args) != 1:
        print("usage: aisfs umount MOUNTPOINT", file=sys.stderr)
        return EXIT_USAGE
    path = os.path.abspath(args[0])
    from .mount import is_mounted

    if not is_mounted(path):
        print(f"aisfs: {path} is not mounted", file=sys.stderr)
        return EXIT_FAILED
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = [[tool, "-u", path], [tool, "-uz", path]] if tool else []
    commands += [["umount", path], ["umount", "-l", path]]
    reason = ""
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
            continue
        if done.returncode == 0 and not is_mounted(path):
            return 0
        reason = (done.stderr or done.stdout).strip() or reason
    print(f"aisfs: could not unmount {path}: {reason}", file=sys.stderr)
    return EXIT_FAILED

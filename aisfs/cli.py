"""Command line: ``aisfs [options] SOURCE MOUNTPOINT``, ``aisfs umount MOUNTPOINT``, ``mount.aisfs``.

Every long option also works as ``-o key=value`` (the fstab form; ``_`` and ``-`` are equal), and
the options mount(8) adds (``_netdev``, ``nofail``, ``rw``, ...) are accepted and ignored. A bad
option, an unreachable endpoint, a missing bucket or a busy mountpoint is one line on stderr and
a non-zero exit, never a traceback. Runs in the main thread before anything else exists.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__
from .config import (
    DEFAULT_ENDPOINT, ClientConfig, ConfigError, MountConfig, TlsConfig, parse_source,
)

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
    if value < 0:
        raise ValueError(f"must not be negative: {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


@dataclass(frozen=True)
class Option:
    name: str  # long option without dashes
    parse: Callable[[str], Any] | None  # None: a flag
    help: str
    metavar: str = ""


OPTIONS: tuple[Option, ...] = (
    Option("endpoint", str, f"AIS proxy URL (default: $AIS_ENDPOINT, else {DEFAULT_ENDPOINT})", "URL"),
    Option("read-only", None, "mount read-only (fstab: ro)"),
    Option("allow-other", None, "let other users access the mount (needs user_allow_other)"),
    Option("uid", int, "owner of every file (default: the mounting user)", "N"),
    Option("gid", int, "group of every file (default: the mounting user's group)", "N"),
    Option("file-mode", _octal, "permission bits of files (default 0644)", "MODE"),
    Option("dir-mode", _octal, "permission bits of directories (default 0755)", "MODE"),
    Option("metadata-ttl", _seconds, "seconds to trust cached attributes and listings (default 5)", "S"),
    Option("negative-metadata-ttl", _seconds, "seconds to trust 'does not exist' (default 1)", "S"),
    Option("max-connections", int, "parallel HTTP requests (default 16)", "N"),
    Option("connect-timeout", _seconds, "HTTP connect timeout (default 5)", "S"),
    Option("read-timeout", _seconds, "HTTP read timeout (default 30)", "S"),
    Option("retries", int, "retries of a failed idempotent request (default 4)", "N"),
    Option("read-ahead-max", _size, "largest read-ahead window per open file (default 64M)", "SIZE"),
    Option("read-ahead-budget", _size, "read-ahead memory of all files together (default 128M)", "SIZE"),
    Option("read-part-size", _size, "bytes per ranged GET (default 8M)", "SIZE"),
    Option("kernel-read-ahead-kb", int, "kernel read-ahead for the mount, 0 = leave (default 1024)", "KB"),
    Option("write-part-size", _size, "bytes per APPEND request (default 8M)", "SIZE"),
    Option("spill-dir", str, "where non-sequential writes are staged (default /var/tmp/aisfs-spill)", "DIR"),
    Option("spill-max", _size, "cap of all staged files together (default 16G)", "SIZE"),
    Option("rename-dir-limit", int, "most objects a directory rename moves (default 10000)", "N"),
    Option("ca-bundle", str, "CA certificates for https (default: $AIS_CLIENT_CA)", "FILE"),
    Option("skip-verify", None, "do not verify the server certificate ($AIS_SKIP_VERIFY_CRT)"),
    Option("client-cert", str, "client certificate for mutual TLS ($AIS_CRT)", "FILE"),
    Option("client-key", str, "key of the client certificate ($AIS_CRT_KEY)", "FILE"),
    Option("foreground", None, "stay in the foreground (-f)"),
    Option("debug", None, "log every request (-d)"),
    Option("log-file", str, "log to this file (default: stderr; syslog when in the background)", "FILE"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
_FSTAB_ALIASES = {"ro": ("read-only", "true"), "allow_other": ("allow-other", "true")}


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(message)


def build_parser(prog: str = "aisfs") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description="Mount an AIStore cluster, bucket or prefix as a local directory.",
        epilog="SOURCE is ais:// (all buckets), ais://BUCKET or ais://BUCKET/PREFIX/. "
        "Every option also works as -o name=value. Unmount with: aisfs umount MOUNTPOINT",
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


def parse_args(argv: Sequence[str], prog: str = "aisfs") -> tuple[MountConfig, dict[str, Any]]:
    """Command line → (MountConfig, all option values by name). Raises ConfigError."""
    ns = build_parser(prog).parse_args(list(argv))
    values: dict[str, Any] = expand_o(ns.o)
    for option in OPTIONS:
        raw = getattr(ns, option.name.replace("-", "_"))
        if raw is not None:
            values[option.name] = _convert(option, None if raw is True else raw)
    return make_config(ns.source, ns.mountpoint, values, os.environ), values


def make_config(
    source: str, mountpoint: str, values: dict[str, Any], env: os._Environ[str] | dict[str, str]
) -> MountConfig:
    def pick(name: str, default: Any) -> Any:
        return values[name] if name in values else default

    endpoint = pick("endpoint", env.get("AIS_ENDPOINT") or DEFAULT_ENDPOINT)
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ConfigError(f"endpoint must be an http:// or https:// URL: {endpoint!r}")
    skip_env = env.get("AIS_SKIP_VERIFY_CRT") or env.get("AIS_SKIP_VERIFY") or "false"
    try:
        skip_verify = pick("skip-verify", _bool(skip_env))
    except ValueError:
        raise ConfigError(f"AIS_SKIP_VERIFY_CRT must be true or false: {skip_env!r}") from None
    tls = TlsConfig(
        ca_bundle=pick("ca-bundle", env.get("AIS_CLIENT_CA") or None),
        skip_verify=skip_verify,
        client_cert=pick("client-cert", env.get("AIS_CRT") or None),
        client_key=pick("client-key", env.get("AIS_CRT_KEY") or None),
    )
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"no such certificate or key file: {path}")
    dflt_client = ClientConfig()
    client = ClientConfig(
        endpoint=endpoint.rstrip("/"),
        connect_timeout=pick("connect-timeout", dflt_client.connect_timeout),
        read_timeout=pick("read-timeout", dflt_client.read_timeout),
        retries=pick("retries", dflt_client.retries),
        max_connections=max(1, pick("max-connections", dflt_client.max_connections)),
        tls=tls,
    )
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
        write_part_size=max(64 * 1024, pick("write-part-size", d.write_part_size)),
        spill_dir=pick("spill-dir", d.spill_dir),
        spill_max_bytes=pick("spill-max", d.spill_max_bytes),
        rename_dir_limit=pick("rename-dir-limit", d.rename_dir_limit),
        debug=pick("debug", d.debug),
    )


def token_from_env() -> Callable[[], str | None]:
    token = os.environ.get("AIS_AUTHN_TOKEN") or None
    return lambda: token


def main(argv: Sequence[str] | None = None, prog: str = "aisfs") -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "umount":
        return umount(args[1:])
    try:
        config, values = parse_args(args, prog)
        return run_mount(config, values)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE if "option" in str(exc) or "usage" in str(exc) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def run_mount(config: MountConfig, values: dict[str, Any]) -> int:
    from . import daemon, mount  # pyfuse3 and trio load only when mounting
    from .client import AisClient
    from .logsetup import setup_logging

    foreground = bool(values.get("foreground"))
    log_file = values.get("log-file")
    setup_logging(config.debug, log_file)
    mount.check_mountpoint(config.mountpoint)
    probe = AisClient(config.client, token_from_env())
    try:
        mount.check_cluster(probe, config)
    finally:
        probe.close()
    if foreground:
        readiness = daemon.Readiness(None)
    else:
        readiness = daemon.daemonize(log_file)
        setup_logging(config.debug, log_file, syslog=not log_file)
    client = AisClient(config.client, token_from_env())
    return mount.serve(config, client, readiness)


def mount_main() -> int:
    """``mount.aisfs SOURCE DIR [-o opts]``: what mount(8) runs for ``-t aisfs``."""
    return main(sys.argv[1:], prog="mount.aisfs")


def umount(args: Sequence[str]) -> int:
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
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0 and not is_mounted(path):
            return 0
        reason = (done.stderr or done.stdout).strip() or reason
    print(f"aisfs: could not unmount {path}: {reason}", file=sys.stderr)
    return EXIT_FAILED

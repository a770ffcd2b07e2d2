"""Command line: ``aisfs [options] SOURCE MOUNTPOINT``, ``aisfs umount DIR``, ``mount.aisfs``.

The options are those of :mod:`aisfs.options` (their help, defaults and environment variables
come from there). Every long option also works as ``-o key=value`` (the fstab form; ``_`` and
``-`` are equal) and as a key of the TOML config file (``--config FILE`` or ``$AISFS_CONFIG``).
Precedence, highest first: command line (long options over ``-o``) > environment (``AIS_ENDPOINT``,
``AIS_CLIENT_CA``, ``AIS_SKIP_VERIFY_CRT``, ``AIS_CRT``, ``AIS_CRT_KEY``, the token variables)
> config file > defaults. The options mount(8) adds (``_netdev``, ``nofail``, ``rw``, ...) are
accepted and ignored. A bad option, an unreachable endpoint, a refused token, an untrusted
certificate, a missing bucket or a busy mountpoint is one line on stderr and a non-zero exit,
never a traceback: 2 for a :class:`~aisfs.config.UsageError` (the invocation is wrong), 1 for any
other failure. ``aisfs umount`` loads neither pyfuse3 nor trio (see ``umount.py``). Runs in the
main thread before anything else exists (no threads, no trio).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import __version__, auth, configfile
from .config import (
    EXIT_FAILED,
    EXIT_USAGE,
    ClientConfig,
    ConfigError,
    MountConfig,
    TlsConfig,
    UsageError,
    parse_source,
)
from .daemon import ServiceSettings
from .logsetup import redact
from .options import BY_NAME, OPTIONS, env_values
from .umount import umount

log = logging.getLogger(__name__)

# Options mount(8), fstab and systemd add that mean nothing to aisfs.
IGNORED_MOUNT_OPTIONS = {
    "_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "owner", "group",
    "defaults", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "async", "sync", "atime",
    "noatime", "relatime", "strictatime", "nodiratime", "diratime", "lazytime", "nolazytime",
    "rw", "loud", "silent", "nosymfollow", "default_permissions",
}
IGNORED_PREFIXES = ("x-systemd.", "x-", "comment=", "helper=", "fsname=", "subtype=")
_FSTAB_ALIASES = {"ro": ("read-only", "true"), "allow_other": ("allow-other", "true")}
# The smallest part sizes a mount accepts (smaller values are raised to these).
MIN_PART = 64 * 1024


def exit_code(exc: ConfigError) -> int:
    """The exit status for a start-up failure: the usage status for a wrong invocation."""
    return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILED


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
            option = BY_NAME.get(name)
            if option is None:
                raise UsageError(f"unknown mount option: {key}")
            out[name] = option.convert(raw if sep else None)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


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
        # argparse formats help with %: a literal % must be doubled.
        text = option.full_help().replace("%", "%%")
        if option.kind is None:
            parser.add_argument(f"--{option.name}", dest=dest, action="store_const", const=True,
                                help=text)
        else:
            parser.add_argument(f"--{option.name}", dest=dest, metavar=option.metavar,
                                type=_raw, help=text)
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
            cli_values[option.name] = option.convert(None if raw is True else raw)
    config_path = cli_values.get("config") or env_values(env).get("config")
    file_values: dict[str, Any] = {}
    if config_path:
        file_values = configfile.load(config_path)
    config = make_config(ns.source, ns.mountpoint, cli_values, env, file_values=file_values)
    values = {**file_values, **env_values(env), **cli_values}
    service = ServiceSettings(**_fields(values, "service."))
    token = auth.choose(cli_values.get("token-file"), env, file_values.get("token-file"))
    return Invocation(config, values, service, token)


def parse_args(argv: Sequence[str], prog: str = "aisfs") -> tuple[MountConfig, dict[str, Any]]:
    """Command line → (MountConfig, all option values by name). Raises ConfigError."""
    inv = parse_invocation(argv, prog)
    return inv.config, inv.values


def _fields(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The given option values whose field is directly under ``prefix`` ("" for MountConfig's
    own), by field name."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = BY_NAME[name].field
        if field and field.startswith(prefix) and "." not in field[len(prefix):]:
            out[field[len(prefix):]] = value
    return out


def make_config(
    source: str, mountpoint: str, values: dict[str, Any], env: Mapping[str, str],
    *, file_values: dict[str, Any] | None = None,
) -> MountConfig:
    """MountConfig from option values (command line) over ``env`` over ``file_values``; each
    option sets the field it names, then the rules across options apply."""
    merged = {**(file_values or {}), **env_values(env), **values}
    tls = TlsConfig(**_fields(merged, "client.tls."))
    client = ClientConfig(**_fields(merged, "client."), tls=tls)
    if not re.match(r"^https?://[^/\s]+", client.endpoint):
        raise UsageError(f"endpoint must be an http:// or https:// URL: {client.endpoint!r}")
    for path in (tls.ca_bundle, tls.client_cert, tls.client_key):
        if path and not os.path.isfile(path):
            raise ConfigError(f"no such certificate or key file: {path}")
    if tls.client_key and not tls.client_cert:
        raise UsageError("client-key (AIS_CRT_KEY) needs client-cert (AIS_CRT) too")
    if client.connect_timeout <= 0 or client.read_timeout <= 0:
        raise UsageError("connect-timeout and read-timeout must be more than 0 seconds")
    client = dataclasses.replace(client, endpoint=client.endpoint.rstrip("/"),
                                 max_connections=max(1, client.max_connections))
    config = MountConfig(parse_source(source), os.path.abspath(mountpoint), client=client,
                         **_fields(merged, ""))
    part = max(MIN_PART, config.write_part_size)
    return dataclasses.replace(
        config, read_part_size=max(MIN_PART, config.read_part_size), write_part_size=part,
        write_part_max=max(part, config.write_part_max),
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
        return exit_code(exc)
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
        return exit_code(exc)
    return main(rest, prog=prog)


def _helper_args(args: Sequence[str]) -> tuple[list[str], bool]:
    rest: list[str] = []
    fake = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-t", "-o", "-N") and i + 1 >= len(args):
            raise UsageError(f"option {arg} needs a value")
        if arg == "-t":
            if args[i + 1] not in ("aisfs", "fuse.aisfs"):
                raise UsageError(f"this helper mounts type aisfs, not {args[i + 1]}")
            i += 2
            continue
        if arg == "-N":
            raise UsageError("option -N (another mount namespace) is not supported")
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

"""Every option of ``aisfs``, defined once: its name, value type, help, environment variables and
where its value goes. The command line, ``-o``, the config file's keys, the ``--help`` text and the
environment all come from :data:`OPTIONS`; an option's default is read from the dataclass field it
sets (:class:`~aisfs.config.MountConfig`, ``ClientConfig``, ``TlsConfig``, or
:class:`~aisfs.daemon.ServiceSettings`), so it is written in one place only.

A value is converted by its :class:`ValueType` wherever it comes from, so it means the same on the
command line, in ``-o``, in the config file and in the environment; the same type shows the
default in the help the way a user writes it (``64M``, ``0644``, ``5``). A bad value is a
:class:`UsageError`.

Concurrency: constants and pure functions; used by the CLI in the main thread before anything
else runs.
"""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import MountConfig, Source, UsageError
from .daemon import ServiceSettings
from .logsetup import DEFAULT_LEVEL, LEVEL_NAMES

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 8M, 1G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def show_size(value: int) -> str:
    for unit in "TGMK":
        scale = _UNITS[unit.lower()]
        if value and value % scale == 0:
            return f"{value // scale}{unit}"
    return str(value)


def parse_mode(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise ValueError(f"not a file mode: {text!r}")
    return value


def parse_seconds(text: str) -> float:
    value = float(text)
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"must be a non-negative number of seconds: {text!r}")
    return value


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not HOST:PORT: {text!r} (e.g. 127.0.0.1:9109)")
    return host, int(port)


def parse_level(text: str) -> int:
    try:
        return LEVEL_NAMES[text.strip().lower()]
    except KeyError:
        raise ValueError(f"not a log level: {text!r} (use {', '.join(LEVEL_NAMES)})") from None


def parse_archives(text: str) -> str:
    """``--archives``: "file" (archives are files) or "expand" (directories of members)."""
    if text not in ("file", "expand"):
        raise ValueError(f"not an archives mode: {text!r} (use file or expand)")
    return text


@dataclass(frozen=True)
class ValueType:
    parse: Callable[[str], Any]  # the user's text -> the value; ValueError when it is bad
    show: Callable[[Any], str]  # a value -> the text a user would write for it


TEXT = ValueType(str, str)
COUNT = ValueType(int, str)
SECONDS = ValueType(parse_seconds, lambda v: f"{v:g}")
SIZE = ValueType(parse_size, show_size)
MODE = ValueType(parse_mode, lambda v: f"{v:04o}")
ADDRESS = ValueType(parse_address, lambda v: f"{v[0]}:{v[1]}")
LEVEL = ValueType(parse_level, lambda v: logging.getLevelName(v).lower())
ARCHIVES = ValueType(parse_archives, str)


@dataclass(frozen=True)
class Option:
    """One option. Invariant: ``field`` names a field of the configuration dataclasses
    (``"metadata_ttl"``, ``"client.retries"``, ``"client.tls.ca_bundle"``,
    ``"service.shutdown_timeout"``), or is empty for an option the CLI itself uses, whose
    default is then ``value_default``."""

    name: str  # the long option without dashes; also the config-file key and the -o name
    kind: ValueType | None  # None: a flag
    help: str  # what it does, without the default (added from the definition)
    metavar: str = ""
    field: str = ""
    env: tuple[str, ...] = ()  # environment variables that set it, the last one winning
    value_default: Any = None
    default_text: str = ""  # shown instead of the default value, when that says too little
    in_file: bool = True  # may be a config-file key

    @property
    def default(self) -> Any:
        """The value the mount gets when nothing sets this option."""
        return _defaults(self.field) if self.field else self.value_default

    def default_summary(self) -> str:
        """The default in a few words: "5", "64M", "$AIS_ENDPOINT, else http://localhost:8080",
        "off"; "" for a flag that nothing but itself sets."""
        if self.default_text:
            return self.default_text
        value = self.default
        shown = self.kind.show(value) if self.kind is not None and value is not None else ""
        if self.env:
            return f"${self.env[-1]}, else {shown}" if shown else f"${self.env[-1]}"
        return shown or ("off" if self.kind is not None else "")

    def default_help(self) -> str:
        """The default as ``--help`` states it: "(default 5)" for a value as a user writes it,
        "(default: ...)" for words."""
        summary = self.default_summary()
        if not summary:
            return ""
        plain = self.kind is not None and not self.env and not self.default_text and (
            self.default is not None)
        return f"(default {summary})" if plain else f"(default: {summary})"

    def full_help(self) -> str:
        return f"{self.help} {self.default_help()}".rstrip()

    def convert(self, raw: str | None) -> Any:
        """The value of ``--name raw`` (``raw`` None: the flag given without a value)."""
        try:
            if self.kind is None:
                return True if raw is None else parse_bool(raw)
            if raw is None:
                raise ValueError("needs a value")
            return self.kind.parse(raw)
        except ValueError as exc:
            raise UsageError(f"bad value for {self.name}: {exc}") from None


def _defaults(field: str) -> Any:
    """The default of a configuration field, read from the dataclasses themselves."""
    head, _, rest = field.partition(".")
    if head == "service":
        return operator.attrgetter(rest)(ServiceSettings())
    return operator.attrgetter(field)(MountConfig(source=Source(), mountpoint=""))


OPTIONS: tuple[Option, ...] = (
    Option("endpoint", TEXT, "AIS proxy URL", "URL", "client.endpoint", env=("AIS_ENDPOINT",)),
    Option("read-only", None, "mount read-only (fstab: ro)", field="read_only"),
    Option("allow-other", None, "let other users access the mount (needs user_allow_other)",
           field="allow_other"),
    Option("archives", ARCHIVES, "expand: .tar, .tgz, .tar.gz, .tar.lz4 and .zip objects are "
           "read-only directories of their members; file: they are files", "file|expand",
           "archives"),
    Option("uid", COUNT, "owner of every file", "N", "uid", default_text="the mounting user"),
    Option("gid", COUNT, "group of every file", "N", "gid",
           default_text="the mounting user's group"),
    Option("file-mode", MODE, "permission bits of files", "MODE", "file_mode"),
    Option("dir-mode", MODE, "permission bits of directories", "MODE", "dir_mode"),
    Option("metadata-ttl", SECONDS, "seconds to trust cached attributes and listings", "S",
           "metadata_ttl"),
    Option("negative-metadata-ttl", SECONDS, "seconds to trust 'does not exist'", "S",
           "negative_metadata_ttl"),
    Option("max-connections", COUNT, "parallel HTTP requests", "N", "client.max_connections"),
    Option("via-proxy", None,
           "send every object request through the proxy, none straight to its target",
           field="client.via_proxy"),
    Option("connect-timeout", SECONDS, "HTTP connect timeout", "S", "client.connect_timeout"),
    Option("read-timeout", SECONDS, "HTTP read timeout", "S", "client.read_timeout"),
    Option("retries", COUNT, "retries of a failed idempotent request", "N", "client.retries"),
    Option("read-ahead-max", SIZE, "largest read-ahead window per open file", "SIZE",
           "read_ahead_max"),
    Option("read-ahead-budget", SIZE, "read-ahead memory of all files together", "SIZE",
           "read_ahead_budget"),
    Option("read-part-size", SIZE, "bytes per ranged GET", "SIZE", "read_part_size"),
    Option("scan-batch", SIZE, "bytes per Get-Batch request that fetches ahead the small files "
           "of a directory read in listing order (cp -r, tar c), 0 = one GET per file", "SIZE",
           "scan_batch_bytes"),
    Option("kernel-read-ahead-kb", COUNT, "kernel read-ahead for the mount, 0 = leave", "KB",
           "kernel_read_ahead_kb"),
    Option("write-part-size", SIZE, "bytes of a file's first APPEND request", "SIZE",
           "write_part_size"),
    Option("write-part-max", SIZE, "APPEND size a growing file doubles up to", "SIZE",
           "write_part_max"),
    Option("write-buffer-budget", SIZE, "write memory above --write-part-size, all files together",
           "SIZE", "write_buffer_budget"),
    Option("spill-dir", TEXT, "where non-sequential writes are staged", "DIR", "spill_dir"),
    Option("spill-max", SIZE, "cap of all staged files together", "SIZE", "spill_max_bytes"),
    Option("rename-dir-limit", COUNT, "most objects a directory rename moves", "N",
           "rename_dir_limit"),
    Option("ca-bundle", TEXT, "CA certificates for https", "FILE", "client.tls.ca_bundle",
           env=("AIS_CLIENT_CA",)),
    # AIS_SKIP_VERIFY is the legacy name; AIS_SKIP_VERIFY_CRT wins.
    Option("skip-verify", None, "do not verify the server certificate",
           field="client.tls.skip_verify", env=("AIS_SKIP_VERIFY", "AIS_SKIP_VERIFY_CRT")),
    Option("client-cert", TEXT, "client certificate for mutual TLS", "FILE",
           "client.tls.client_cert", env=("AIS_CRT",)),
    Option("client-key", TEXT, "key of the client certificate", "FILE", "client.tls.client_key",
           env=("AIS_CRT_KEY",)),
    # The token's own sources and their order are auth.choose's.
    Option("token-file", TEXT, "AuthN token file, re-read when it changes", "FILE",
           default_text="$AIS_AUTHN_TOKEN, $AIS_AUTHN_TOKEN_FILE, else "
           "~/.config/ais/cli/auth.token"),
    Option("config", TEXT, "read options from this TOML file", "FILE", env=("AISFS_CONFIG",),
           in_file=False),
    Option("foreground", None, "stay in the foreground (-f)", value_default=False),
    Option("systemd", None, "run as a systemd Type=notify service: foreground, "
           "READY=1/STOPPING=1, journal log priorities", field="service.systemd"),
    Option("shutdown-timeout", SECONDS, "on SIGTERM/SIGINT, seconds to finish uploads in flight "
           "before unmounting", "S", "service.shutdown_timeout"),
    Option("metrics-addr", ADDRESS, "serve Prometheus metrics at HOST:PORT", "HOST:PORT",
           "service.metrics_addr"),
    Option("debug", None, "log every request (-d)", field="debug"),
    Option("log-level", LEVEL, "warning, info or debug; SIGUSR2 cycles it", "LEVEL",
           value_default=DEFAULT_LEVEL),
    Option("log-file", TEXT, "log to this file", "FILE",
           default_text="stderr; syslog when in the background"),
)
BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}


def file_value(name: str, raw: str | bool) -> Any:
    """The value of config-file key ``name`` (a TOML string or number as text, or a boolean)."""
    option = BY_NAME[name]
    if isinstance(raw, bool):
        if option.kind is not None:
            raise UsageError(f"bad value for {name}: needs a value, not {str(raw).lower()}")
        return raw
    return option.convert(raw)


def env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Option values the environment variables set (empty variables set nothing)."""
    out: dict[str, Any] = {}
    for option in OPTIONS:
        for var in option.env:
            raw = env.get(var)
            if not raw:
                continue
            if option.kind is None:
                try:
                    out[option.name] = parse_bool(raw)
                except ValueError:
                    raise UsageError(f"{var} must be true or false: {raw!r}") from None
            else:
                out[option.name] = option.convert(raw)
    return out

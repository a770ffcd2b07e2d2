"""Mount configuration: frozen dataclasses (their field defaults are the options' defaults: see
``options.py``), parsing of the mount source, and the start-up errors with their exit statuses.

Built once by the CLI and read everywhere else; immutable, so any thread may read it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import AisFsError

DEFAULT_ENDPOINT = "http://localhost:8080"
# Names of the temporary objects earlier versions streamed an overwrite into before a rename: a
# failed one could stay behind; hidden in listings.
TMP_MARKER = ".aisfs-tmp."
MIB = 1024 * 1024
_BUCKET_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# Exit statuses of the commands: a ConfigError, and a UsageError.
EXIT_FAILED = 1
EXIT_USAGE = 2


class ConfigError(AisFsError):
    """Why the mount cannot start (a bad option, a missing mountpoint, an unreachable cluster,
    ...); the CLI prints it as one line and exits with status 1."""


class UsageError(ConfigError):
    """The invocation itself is wrong: an unknown option or key, a bad value, a missing or
    malformed argument, wherever it was given (command line, ``-o``, environment, config file).
    The CLI exits with status 2."""


def read_capped(path: str, limit: int, what: str,
                error: type[ConfigError] = ConfigError) -> bytes:
    """The bytes of a small file (a config or token file), or ``error`` naming ``what``."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path}: larger than {limit} bytes")
    return data


@dataclass(frozen=True, slots=True)
class Source:
    """What to mount: the whole cluster (bucket is None), a bucket, or a prefix in a bucket."""

    bucket: str | None = None
    prefix: str = ""  # "" or ends with "/"

    def __str__(self) -> str:
        return f"ais://{self.bucket or ''}{'/' + self.prefix if self.prefix else ''}"


def parse_source(text: str) -> Source:
    """``ais://``, ``ais://BUCKET`` or ``ais://BUCKET/PREFIX/``."""
    if not text.startswith("ais://"):
        raise UsageError(
            f"source must look like ais://, ais://BUCKET or ais://BUCKET/PREFIX/: {text!r}"
        )
    rest = text[len("ais://"):]
    if not rest:
        return Source()
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UsageError(f"invalid bucket name {bucket!r}: letters, digits, '.', '_', '-' only")
    prefix = prefix.strip("/")
    if prefix:
        parts = prefix.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise UsageError(f"invalid prefix {prefix!r}")
        prefix += "/"
    return Source(bucket, prefix)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_bundle: str | None = None  # AIS_CLIENT_CA
    skip_verify: bool = False  # AIS_SKIP_VERIFY_CRT
    client_cert: str | None = None  # AIS_CRT
    client_key: str | None = None  # AIS_CRT_KEY


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything the HTTP client needs (no secrets: the token comes from a callable)."""

    endpoint: str = DEFAULT_ENDPOINT
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 4  # attempts after the first, for idempotent requests
    retry_backoff: float = 0.2  # seconds, doubled per attempt, capped at 5 s
    max_connections: int = 16  # size of the HTTP pool == worker-thread limit
    # Every object request through the proxy, none straight to the object's target computed
    # from the cluster map (for targets whose public URLs are unreachable from here).
    via_proxy: bool = False
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True, slots=True)
class MountConfig:
    source: Source
    mountpoint: str
    client: ClientConfig = field(default_factory=ClientConfig)
    uid: int = field(default_factory=os.getuid)
    gid: int = field(default_factory=os.getgid)
    file_mode: int = 0o644
    dir_mode: int = 0o755
    metadata_ttl: float = 5.0
    negative_metadata_ttl: float = 1.0
    read_only: bool = False
    allow_other: bool = False
    # "expand": archive objects (.tar, .tgz, .tar.gz, .tar.lz4, .zip) are read-only directories
    # of their members; "file": they are files.
    archives: str = "file"
    # read path
    read_ahead_initial: int = 1 * MIB
    read_ahead_max: int = 64 * MIB  # per handle
    read_part_size: int = 16 * MIB  # one ranged GET
    read_ahead_budget: int = 128 * MIB  # all handles together
    kernel_read_ahead_kb: int = 1024  # bdi read_ahead_kb; 0 leaves the kernel default
    scan_batch_bytes: int = 16 * MIB  # one Get-Batch of a directory read in order; 0: none
    # write path
    write_part_size: int = 8 * MIB  # the first APPEND of a file
    write_part_max: int = 32 * MIB  # parts double up to this while the file keeps growing
    write_buffer_budget: int = 256 * MIB  # parts above write_part_size, all handles together
    spill_dir: str = "/var/tmp/aisfs-spill"
    spill_max_bytes: int = 16 * 1024 * MIB
    rename_dir_limit: int = 10000
    debug: bool = False

    @property
    def expand_archives(self) -> bool:
        return self.archives == "expand"

"""The TOML configuration file: the command line's long options as top-level keys.

``metadata-ttl = 2`` and ``metadata_ttl = 2`` are the same key; flags take ``true``/``false``;
sizes may be numbers of bytes or strings such as ``"64M"``. The values are converted by the same
function as the command line's, so a value means the same in both places. An unknown key, a
table, a wrong type or a bad value is a :class:`ConfigError` of one line naming the file and the
key. Read with the standard library's ``tomllib``; called once by the CLI before anything runs.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection
from typing import Any

from .config import ConfigError, read_capped

MAX_CONFIG_FILE = 1024 * 1024

# convert(option name, raw) -> value; raw is str for values, bool for true/false.
Convert = Callable[[str, "str | bool"], Any]


def load(
    path: str, convert: Convert, names: Collection[str], forbidden: Collection[str] = ()
) -> dict[str, Any]:
    """Option values by (dash-spelled) option name from the file at ``path``."""
    data = read_capped(path, MAX_CONFIG_FILE, "config file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("_", "-")
        if isinstance(value, dict):
            raise ConfigError(f"config file {path}: unknown table [{key}] (use top-level keys)")
        if name not in names:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        if name in forbidden:
            raise ConfigError(f"config file {path}: {key!r} cannot be set in a config file")
        if name in values:
            raise ConfigError(f"config file {path}: {key!r} is given twice")
        raw: str | bool
        if isinstance(value, bool):
            raw = value
        elif isinstance(value, int | float | str):
            raw = str(value)
        else:
            raise ConfigError(
                f"config file {path}: bad value for {name}: a {type(value).__name__} "
                "(use a string, a number or true/false)"
            )
        try:
            values[name] = convert(name, raw)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return values

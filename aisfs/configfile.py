"""The TOML configuration file: the command line's long options as top-level keys.

The keys are the names in :data:`aisfs.options.OPTIONS` (``metadata-ttl = 2`` and
``metadata_ttl = 2`` are the same key); flags take ``true``/``false``; sizes may be numbers of
bytes or strings such as ``"64M"``. The values are converted by the option's own type, as on the
command line, so a value means the same in both places. A file that cannot be read is a
``ConfigError``; content that is not UTF-8 TOML, an unknown key, a table, a wrong type or a bad
value is a ``UsageError``; each is one line naming the file and the key. Read with the standard
library's ``tomllib``; called once by the CLI before anything runs.
"""

from __future__ import annotations

import tomllib
from typing import Any

from .config import UsageError, read_capped
from .options import BY_NAME, file_value

MAX_CONFIG_FILE = 1024 * 1024


def load(path: str) -> dict[str, Any]:
    """Option values by (dash-spelled) option name from the file at ``path``."""
    data = read_capped(path, MAX_CONFIG_FILE, "config file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: invalid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in doc.items():
        name = key.replace("_", "-")
        if isinstance(value, dict):
            raise UsageError(f"config file {path}: unknown table [{key}] (use top-level keys)")
        option = BY_NAME.get(name)
        if option is None:
            raise UsageError(f"config file {path}: unknown key {key!r}")
        if not option.in_file:
            raise UsageError(f"config file {path}: {key!r} cannot be set in a config file")
        if name in values:
            raise UsageError(f"config file {path}: {key!r} is given twice")
        raw: str | bool
        if isinstance(value, bool):
            raw = value
        elif isinstance(value, int | float | str):
            raw = str(value)
        else:
            raise UsageError(
                f"config file {path}: bad value for {name}: a {type(value).__name__} "
                "(use a string, a number or true/false)"
            )
        try:
            values[name] = file_value(name, raw)
        except UsageError as exc:
            raise UsageError(f"config file {path}: {exc}") from None
    return values

"""Logging set-up: stderr (the journal under systemd, with ``<N>`` priority prefixes) or a file.

Every handler redacts secrets: anything shaped like a JWT (AIS echoes a rejected token in its
error messages) and every value registered with :func:`add_secret` is replaced by ``<token>``
before a line is written. :func:`redact` does the same for one-line errors printed at mount time.

Called once by the CLI before anything logs (and again in the daemon after the fork).
``cycle_level`` is the runtime level switch the SIGUSR2 handler calls on the trio thread.
``add_secret``/``redact`` may be called from any thread (a lock guards the secret set).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
DEFAULT_LEVEL = logging.INFO  # without --debug or --log-level
LEVEL_NAMES = {"warning": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG,
               "error": logging.ERROR}
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}
# header.payload.signature, base64url; a JWT header always starts with '{"' = "eyJ".
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()
REDACTED = "<token>"


def add_secret(value: str | None) -> None:
    """Never write ``value`` to a log or an error line (short values would redact too much)."""
    if value and len(value) >= 8:
        with _secrets_lock:
            _secrets.add(value)


def redact(text: str) -> str:
    text = _JWT.sub(REDACTED, text)
    with _secrets_lock:
        known = list(_secrets)
    for secret in known:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, journal: bool) -> None:
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if not self.journal:
            return text
        # journald makes one entry per line: every line of a traceback gets the priority.
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


def setup_logging(
    debug: bool, log_file: str | None = None, systemd: bool = False, syslog: bool = False,
    level: int | None = None,
) -> None:
    """Route the root logger to one handler; ``level`` wins over ``debug`` when given."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.ident = "aisfs: "
    else:
        handler = logging.StreamHandler(sys.stderr)
    if systemd:
        handler.setFormatter(_Formatter("%(name)s: %(message)s", journal=True))
    else:
        handler.setFormatter(
            _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", journal=False)
        )
    root.addHandler(handler)
    if level is None:
        level = logging.DEBUG if debug else DEFAULT_LEVEL
    root.setLevel(level)
    # urllib3 logs every connection at DEBUG; keep it for --debug only, and never its headers.
    logging.getLogger("urllib3").setLevel(logging.DEBUG if debug else logging.WARNING)


def cycle_level() -> int:
    """WARNING → INFO → DEBUG → WARNING; returns the new level."""
    root = logging.getLogger()
    current = root.level if root.level in _LEVELS else logging.INFO
    new = _LEVELS[(_LEVELS.index(current) + 1) % len(_LEVELS)]
    root.setLevel(new)
    root.log(max(new, logging.WARNING), "log level is now %s", logging.getLevelName(new))
    return new

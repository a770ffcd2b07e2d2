"""Logging set-up: stderr (the journal under systemd, with ``<N>`` priority prefixes) or a file.

Called once by the CLI before anything logs. ``cycle_level`` is the runtime level switch a
signal handler calls (on the trio thread).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        return f"<{prio}>" + super().format(record)


def setup_logging(
    debug: bool, log_file: str | None = None, systemd: bool = False, syslog: bool = False
) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
    elif syslog and os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler("/dev/log")
        handler.ident = "aisfs: "
    else:
        handler = logging.StreamHandler(sys.stderr)
    if systemd:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
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

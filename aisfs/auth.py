"""Where the AuthN token comes from, the way AIS clients find it, and picking up a rotated file.

Order (``api/authn/loadtoken.go`` of AIS, plus our option and config file):
``--token-file`` on the command line > ``AIS_AUTHN_TOKEN`` (the JWT itself) >
``AIS_AUTHN_TOKEN_FILE`` > ``token-file`` in the config file > the AIS CLI's
``~/.config/ais/cli/auth.token`` (written by ``ais auth login``), when it exists.
A token file holds ``{"token": "<JWT>"}`` (the AIS format) or just the JWT on one line.

A file token is re-read when the file's inode, size or mtime change, with a ``stat`` at most
once a second, so a token renewed by a cron job or a secret manager is used without a remount.
A file that cannot be read or parsed after a change keeps the previous token (logged once).

The token is a secret: it is registered with :func:`logsetup.add_secret`, and nothing here puts
it in a log line or an exception; :meth:`TokenSource.describe` names only where it comes from.

Concurrency: a ``TokenSource`` is called by HTTP worker threads before every request; a lock
guards its cached token and file signature.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .config import ConfigError, read_capped
from .logsetup import add_secret

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between two stats of a token file
MAX_TOKEN_FILE = 64 * 1024


class TokenFileError(ConfigError):
    """A token file that cannot be used; the message never contains the file's content."""


@dataclass(frozen=True, slots=True)
class TokenSpec:
    """Which token to use; ``kind`` is "none", "env" (AIS_AUTHN_TOKEN) or "file"."""

    kind: str
    path: str | None = None


def default_token_file(env: Mapping[str, str]) -> str:
    """``$HOME/.config/ais/cli/auth.token``; without HOME (systemd units) the passwd home."""
    home = env.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return os.path.join(home, ".config", "ais", "cli", "auth.token")


def choose(cli_file: str | None, env: Mapping[str, str], conf_file: str | None) -> TokenSpec:
    if cli_file:
        return TokenSpec("file", os.path.abspath(cli_file))
    if env.get("AIS_AUTHN_TOKEN"):
        return TokenSpec("env")
    if env.get("AIS_AUTHN_TOKEN_FILE"):
        return TokenSpec("file", os.path.abspath(env["AIS_AUTHN_TOKEN_FILE"]))
    if conf_file:
        return TokenSpec("file", os.path.abspath(conf_file))
    default = default_token_file(env)
    if os.path.exists(default):
        return TokenSpec("file", default)
    return TokenSpec("none")


def parse_token(data: bytes, path: str) -> str:
    """The token in a file's content: AIS's JSON ``{"token": ...}`` or a bare JWT."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise TokenFileError(f"token file {path} is not UTF-8 text") from None
    if not text:
        raise TokenFileError(f"token file {path} is empty")
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenFileError(
                f"token file {path} is not valid JSON ({exc.msg}, line {exc.lineno})"
            ) from None
        token = doc.get("token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token.strip():
            raise TokenFileError(f'token file {path} has no "token" string')
        text = token.strip()
    if any(c.isspace() for c in text) or not text.isprintable():
        raise TokenFileError(f"token file {path} holds more than one token-like word")
    return text


class TokenSource:
    """The token callable the HTTP client asks before every request."""

    def __init__(
        self, spec: TokenSpec, env: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic, interval: float = CHECK_INTERVAL,
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._interval = interval
        self._lock = threading.Lock()
        self._token: str | None = None
        self._signature: tuple[int, int, int, int] | None = None
        self._bad_signature: tuple[int, int, int, int] | None = None
        self._next_check = 0.0
        if spec.kind == "env":
            self._token = env.get("AIS_AUTHN_TOKEN", "").strip() or None
            add_secret(self._token)

    def describe(self) -> str:
        if self.spec.kind == "env":
            return "AIS_AUTHN_TOKEN"
        if self.spec.kind == "file":
            return f"token file {self.spec.path}"
        return "no token"

    @property
    def has_token(self) -> bool:
        return self.spec.kind != "none"

    def load(self) -> None:
        """Read the token file now (at mount time); raises TokenFileError with the reason."""
        if self.spec.kind != "file":
            return
        assert self.spec.path is not None
        with self._lock:
            st = _stat(self.spec.path)
            self._token = _read(self.spec.path)
            add_secret(self._token)
            self._signature = _signature(st)
            self._next_check = self._clock() + self._interval

    def __call__(self) -> str | None:
        if self.spec.kind != "file":
            return self._token
        with self._lock:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self._interval
                self._refresh()
            return self._token

    def without_io(self) -> tuple[bool, str | None]:
        """(True, the token :meth:`__call__` would give) when giving it needs no look at the
        token file (its check is not due); (False, None) otherwise. For callers that must not
        block: the trio thread."""
        if self.spec.kind != "file":
            return True, self._token
        with self._lock:
            if self._clock() >= self._next_check:
                return False, None
            return True, self._token

    def _refresh(self) -> None:
        assert self.spec.path is not None
        path = self.spec.path
        try:
            sig = _signature(os.stat(path))
        except OSError as exc:
            if self._bad_signature != (0, 0, 0, 0):
                log.warning("token file %s: %s; keeping the token read before", path,
                            exc.strerror)
                self._bad_signature = (0, 0, 0, 0)
            return
        if sig == self._signature:
            return
        try:
            token = _read(path)
        except TokenFileError as exc:
            if sig != self._bad_signature:  # once per version of the file
                log.warning("%s; keeping the token read before", exc)
                self._bad_signature = sig
            return
        add_secret(token)
        changed = token != self._token
        self._token = token
        self._signature = sig
        self._bad_signature = None
        if changed:
            log.info("token file %s changed: using the new token", path)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as exc:
        raise TokenFileError(f"token file {path}: {exc.strerror}") from None


def _read(path: str) -> str:
    return parse_token(read_capped(path, MAX_TOKEN_FILE, "token file", TokenFileError), path)

r"""Helpers shared by the test tiers: a local AIS cluster, real aisfs mounts in subprocesses, and
the log rule.

The log rule: a WARNING or ERROR that aisfs logs during a test fails the test unless the test
declared it, with ``@pytest.mark.expect_log(REGEX, ...)`` (every mount and every in-process
operation of the test) or ``expect_log=[REGEX, ...]`` (one mount). A regex is searched in
``"LEVEL logger: message"``, e.g. ``r"WARNING aisfs\.listing: .*skipped"``. Declared lines may
also not appear: the declaration allows them, the test's own assertions check what it needs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
AIS_LOCAL = REPO / "scripts" / "ais-local"


def endpoint_ready(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/v1/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_block(start: int, end: int = 40000) -> int:
    """A base port with base..base+2, +1000, +2000 free (scripts/ais-local's layout), all of
    them below ``end``."""
    for base in range(start, end - 2002, 83):
        if all(_port_free(base + d + o) for d in (0, 1000, 2000) for o in (0, 1, 2)):
            return base
    raise RuntimeError(f"no free port block for a local AIS cluster in {start}-{end}")


def ephemeral_ports_start() -> int:
    """The lowest port the kernel gives to outgoing connections (``ip_local_port_range``)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def paths_of(keys: Iterable[str]) -> set[str]:
    """What a mount shows for these object names: each name and every directory above it."""
    return {k[:i] for k in keys for i in range(1, len(k) + 1) if i == len(k) or k[i] == "/"}


def is_mounted(path: str | Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f)


def fusermount_u(path: str | Path, lazy: bool = False) -> None:
    args = ["fusermount3", "-uz" if lazy else "-u", str(path)]
    subprocess.run(args, capture_output=True, timeout=30)


class Mount:
    """One aisfs process serving ``path`` in the foreground; its log is kept for assertions."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.path = path
        self.proc = proc
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if is_mounted(self.path):
            fusermount_u(self.path)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            fusermount_u(self.path, lazy=True)
            raise AssertionError(
                f"aisfs did not exit after unmount; log:\n{self.log()[-3000:]}"
            ) from None


def aisfs_cmd() -> list[str]:
    return [sys.executable, "-m", "aisfs"]


def env_without(modules: Sequence[str], where: Path) -> dict[str, str]:
    """The environment for a Python subprocess in which importing any of ``modules`` fails."""
    where.mkdir(parents=True, exist_ok=True)
    for name in modules:
        (where / f"{name}.py").write_text(f"raise ImportError('{name} is not to be imported')\n")
    path = os.pathsep.join(p for p in (str(where), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


@contextmanager
def mounted(
    source: str, path: Path, endpoint: str, args: Sequence[str] = (), log_dir: Path | None = None,
    check_log: bool = True, expect_log: Iterable[str] = (),
) -> Iterator[Mount]:
    """Mount ``source`` at ``path`` with ``aisfs -f`` and unmount at exit.

    At exit, fails the test when the daemon exited with an error, logged a traceback (an
    unexpected exception in a handler), or logged a WARNING or ERROR that no regex of
    ``expect_log`` allows (the module docstring's log rule). ``check_log=False`` skips all three.
    """
    expect_log = list(expect_log)
    path.mkdir(parents=True, exist_ok=True)
    log = (log_dir or path.parent) / f"{path.name}.log"
    env = {**os.environ, "AIS_ENDPOINT": endpoint, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*aisfs_cmd(), source, str(path), "-f", *args], stdout=out, stderr=subprocess.STDOUT,
            env=env, cwd=str(REPO),
        )
    mount = Mount(path, proc, log)
    deadline = time.monotonic() + 60
    while not (is_mounted(path) and "mounted ais://" in mount.log()):
        if proc.poll() is not None:
            raise AssertionError(f"aisfs exited with {proc.returncode}:\n{mount.log()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"aisfs did not mount within 60 s:\n{mount.log()[-3000:]}")
        time.sleep(0.05)
    try:
        yield mount
    finally:
        code = mount.stop()
        text = mount.log()
        if check_log:
            check_daemon_log(text, expect_log)
            assert code == 0, f"aisfs exited with {code}:\n{text[-3000:]}"


# One record of the daemon's log: "2026-01-02 03:04:05,678 LEVEL logger: message" (aisfs -f), or
# "<PRIORITY>logger: message" (--systemd, the journal's syslog priorities).
_LOG_RECORD = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+)|<(?P<prio>[0-7])>)"
    r" ?(?P<logger>[\w.]+): (?P<message>.*)$"
)
# What the warnings module prints to stderr: "FILE:LINE: CategoryWarning: message".
_PY_WARNING = re.compile(r"^\S+:\d+: (?P<category>\w*Warning): (?P<message>.*)$")
_PRIORITY_LEVEL = {0: "CRITICAL", 1: "CRITICAL", 2: "CRITICAL", 3: "ERROR", 4: "WARNING"}
_SERIOUS = ("WARNING", "ERROR", "CRITICAL")
# Allowed in every test: libfuse's line when the answer to a RELEASE the kernel sent in the
# background finds the connection already gone. Closing a file sends RELEASE without waiting for
# it; a test that unmounts right after the close can end the connection (umount aborts the
# requests still pending) before the daemon answers. The release itself ran in full.
ALWAYS_ALLOWED = (
    r"^ERROR pyfuse3: fuse_release(dir)?\(\): fuse_reply_\* failed with No such file or directory$",
)


def logged_problems(text: str) -> list[str]:
    """Every WARNING, ERROR or CRITICAL record of a daemon log, as ``"LEVEL logger: message"``;
    Python warnings printed to stderr count as ``WARNING``."""
    found = []
    for line in text.splitlines():
        record = _LOG_RECORD.match(line)
        if record:
            prio = record["prio"]
            level = _PRIORITY_LEVEL.get(int(prio), "") if prio else record["level"]
            if level in _SERIOUS:
                found.append(f"{level} {record['logger']}: {record['message']}")
            continue
        warning = _PY_WARNING.match(line)
        if warning:
            found.append(f"WARNING {warning['category']}: {warning['message']}")
    return found


def unexpected(problems: Iterable[str], expected: Iterable[str]) -> list[str]:
    """The ``problems`` that no regex of ``expected`` (or of ``ALWAYS_ALLOWED``) matches
    (``re.search``)."""
    patterns = [re.compile(p) for p in (*ALWAYS_ALLOWED, *expected)]
    return [p for p in problems if not any(pat.search(p) for pat in patterns)]


def unexpected_records(records: Iterable[logging.LogRecord], expected: Iterable[str]) -> list[str]:
    """The log rule for in-process code (pytest's ``caplog`` records)."""
    problems = [f"{r.levelname} {r.name}: {r.getMessage()}"
                for r in records if r.levelno >= logging.WARNING]
    return unexpected(problems, expected)


def check_daemon_log(text: str, expected: Iterable[str] = ()) -> None:
    """Fails (AssertionError) on a traceback or on a WARNING/ERROR that ``expected`` does not
    allow."""
    assert "Traceback" not in text, f"aisfs logged a traceback:\n{text[-5000:]}"
    extra = unexpected(logged_problems(text), expected)
    assert not extra, (
        "aisfs logged WARNING/ERROR lines the test did not declare (pytest.mark.expect_log or "
        "expect_log=):\n" + "\n".join(extra) + f"\n--- log:\n{text[-5000:]}"
    )


def have_fuse() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


class RecordingObserver:
    """An observer (``aisfs.observer.Observer``) that keeps the kinds it is told of."""

    def __init__(self) -> None:
        self.ops: list[str] = []
        self.requests: list[str] = []
        self.retries: list[str] = []
        self.read: int = 0

    def fuse_op(self, op: str, seconds: float, err: int) -> None:
        self.ops.append(op)

    def request(self, kind: str, status: int, seconds: float, bytes_out: int) -> None:
        self.requests.append(kind)

    def retry(self, kind: str) -> None:
        self.retries.append(kind)

    def read_bytes(self, n: int) -> None:
        self.read += n

"""How the process runs: daemonizing with a readiness pipe, systemd's notify protocol, settings.

``daemonize()`` forks before trio, threads or HTTP sessions exist: the original process waits on
a pipe and exits 0 only once the child reports the mount live, or prints the child's one-line
error and exits 1. ``sd_notify`` is the few lines of the ``NOTIFY_SOCKET`` protocol we need
(``READY=1``, ``STOPPING=1``, ``STATUS=...``), so python-systemd is not a dependency.
``tune_malloc()`` sets glibc's allocator for a process that moves MiB-sized buffers.
Main thread only, before ``trio.run``, except ``Readiness.report`` and ``sd_notify``, which any
one thread may call (the report only once).
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from dataclasses import dataclass

STARTUP_TIMEOUT = 180.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

# glibc mallopt parameters, and the values tune_malloc sets (each unless its environment variable
# already says otherwise).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MALLOC_SETTINGS = (
    (_M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 4 * 1024 * 1024),
    (_M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 32 * 1024 * 1024),
)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the mount process runs, next to MountConfig (which says what it mounts)."""

    systemd: bool = False  # Type=notify service: foreground, READY=1/STOPPING=1, journal prefixes
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT  # SIGTERM/SIGINT: finish uploads, unmount
    metrics_addr: tuple[str, int] | None = None  # Prometheus endpoint, off when None


class Readiness:
    """Tells whoever waits for this mount (a parent process, systemd) how start-up went."""

    def __init__(self, fd: int | None = None, prog: str = "aisfs") -> None:
        self._fd = fd
        self._prog = prog
        self._done = False

    def report(self, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        if error is None:
            sd_notify("READY=1")
        else:
            sd_notify("STATUS=" + error.replace("\n", " ")[:500])
        if self._fd is None:
            if error is not None:  # foreground: nobody else will print it
                print(f"{self._prog}: {error}", file=sys.stderr, flush=True)
            return
        message = ("ERR " + error) if error else "OK"
        try:
            os.write(self._fd, message.encode("utf-8", "replace")[:4000])
            os.close(self._fd)
        except OSError:
            pass
        self._fd = None


def tune_malloc() -> bool:
    """Keep freed MiB-sized buffers in the heap for reuse instead of unmapping them at once.

    Every FUSE write arrives as a fresh 1 MiB bytes object. With glibc's defaults, each one is
    a new mmap (or heap memory trimmed back to the kernel as soon as a part is sent), so written
    pages keep costing page faults: measured 73,000-140,000 per GiB after a first file, ~20% of
    the daemon's CPU. With 1 MiB blocks below the mmap threshold and 32 MiB of free heap kept
    before trimming: ~16,500 per file (the parts' first touch), and the memory still goes back
    to the kernel when the writing ends. Returns False where there is no glibc ``mallopt``.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    for param, env, value in MALLOC_SETTINGS:
        if env not in os.environ:
            mallopt(ctypes.c_int(param), ctypes.c_int(value))
    return True


def sd_notify(state: str) -> bool:
    """Send one state line to systemd when started with Type=notify; False otherwise."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5.0)
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def daemonize(log_file: str | None, prog: str = "aisfs") -> Readiness:
    """Fork into the background; returns only in the daemon. The caller's process exits."""
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        sys.exit(_wait_for_child(read_fd, prog))
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)  # the intermediate child; the grandchild cannot reacquire a terminal
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_file:
        err = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(err, 2)
        os.close(err)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)
    return Readiness(write_fd, prog)


def _wait_for_child(read_fd: int, prog: str) -> int:
    import select

    ready, _, _ = select.select([read_fd], [], [], STARTUP_TIMEOUT)
    if not ready:
        print(f"{prog}: the mount did not come up within {STARTUP_TIMEOUT:.0f} s", file=sys.stderr)
        return 1
    data = b""
    # The child writes at most 4000 bytes, then closes: a few reads, each waited for briefly.
    for _ in range(16):
        chunk = os.read(read_fd, 4096)
        if not chunk or len(data) > 4000:
            break
        data += chunk
        if not select.select([read_fd], [], [], 5.0)[0]:
            break
    text = data.decode("utf-8", "replace")
    if text == "OK":
        return 0
    if text.startswith("ERR "):
        print(f"{prog}: {text[4:]}", file=sys.stderr)
    else:
        print(f"{prog}: the daemon exited during start-up (run with -f --debug to see why)",
              file=sys.stderr)
    return 1

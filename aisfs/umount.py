"""``aisfs umount DIR``, and whether a directory is a mount point (``/proc/self/mountinfo``).

Unmounts with ``fusermount3 -u`` (then lazily, then umount(8)), so that a dead mount of a killed
daemon ("Transport endpoint is not connected") is cleared too. Imports neither pyfuse3 nor trio:
unmounting must work where the FUSE library cannot load, and start fast.

Concurrency: runs in the main thread of its own short process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

from .config import EXIT_FAILED, EXIT_USAGE


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        pass
    return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\"
    )


def umount(args: Sequence[str]) -> int:
    """Unmount, also a dead mount ("Transport endpoint is not connected") of a killed daemon."""
    if len(args) != 1:
        print("usage: aisfs umount MOUNTPOINT", file=sys.stderr)
        return EXIT_USAGE
    path = os.path.abspath(args[0])
    if not is_mounted(path):
        print(f"aisfs: {path} is not mounted", file=sys.stderr)
        return EXIT_FAILED
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    commands = [[tool, "-u", path], [tool, "-uz", path]] if tool else []
    commands += [["umount", path], ["umount", "-l", path]]
    reason = ""
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
            continue
        if done.returncode == 0 and not is_mounted(path):
            return 0
        reason = (done.stderr or done.stdout).strip() or reason
    print(f"aisfs: could not unmount {path}: {reason}", file=sys.stderr)
    return EXIT_FAILED

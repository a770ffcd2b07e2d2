"""pyfuse3's wait for the next FUSE request, without a trip through trio's I/O manager when a
request is already queued (part of the FUSE adapter, with ``mount.py``).

pyfuse3 waits with ``trio.lowlevel.wait_readable`` on the FUSE device before every request it
reads, and reaches trio through its module global ``pyfuse3.trio`` (replaceable on purpose: it
is how pyfuse3 runs on asyncio). That wait always parks the task and registers the device with
epoll, and the next pass of the scheduler unregisters it: a few system calls and a scheduler
round per request, ~10% of the daemon's CPU for small files read by 8 readers (measured). Here,
:func:`install` gives pyfuse3 trio as it is but for one function: a wait that first asks the
kernel, without blocking, whether a request is queued, and returns at once if so; otherwise (and
for any other state of the device: closed, error, hang-up) it is trio's own wait. Every request
still passes one scheduler round, in the read lock pyfuse3 takes before waiting, so the other
tasks keep their turns however many requests are queued.

Concurrency: trio thread only (pyfuse3's request tasks).
"""

from __future__ import annotations

import select
import types
from typing import Any

import pyfuse3
import trio


class _LowLevel:
    """``trio.lowlevel`` with :meth:`wait_readable` checking the device first."""

    def __init__(self) -> None:
        self._polls: dict[int, select.poll] = {}  # fd -> a poll object watching it for input

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)

    async def wait_readable(self, fd: int) -> None:
        poll = self._polls.get(fd)
        if poll is None:
            poll = self._polls[fd] = select.poll()
            poll.register(fd, select.POLLIN)
        ready = poll.poll(0)
        if ready and ready[0][1] == select.POLLIN:
            return
        await trio.lowlevel.wait_readable(fd)


class _Trio(types.SimpleNamespace):
    """The ``trio`` module as pyfuse3 sees it once installed."""

    def __init__(self) -> None:
        super().__init__(lowlevel=_LowLevel())

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Give pyfuse3 the waiting described above (before ``pyfuse3.main``)."""
    pyfuse3.trio = _Trio()  # type: ignore[attr-defined]

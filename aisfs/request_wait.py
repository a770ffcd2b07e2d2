"""pyfuse3's wait for the next FUSE request, without a trip through trio's scheduler and I/O
manager when a request is already queued (part of the FUSE adapter, with ``mount.py``).

pyfuse3 reaches trio through its module global ``pyfuse3.trio`` (replaceable on purpose: it is
how pyfuse3 runs on asyncio). Before every request it reads, it takes a ``trio.Lock`` (one reader
of the device at a time), whose acquire always yields to the scheduler once, and waits with
``trio.lowlevel.wait_readable`` on the device, which always parks the task and registers the
device with epoll (the next pass of the scheduler unregisters it). A scheduler round costs an
epoll call and trio's bookkeeping, ~10-20% of the daemon's CPU for small files read by 8 readers
(measured). Here, :func:`install` gives pyfuse3 trio as it is but for two things:

- a wait that first asks the kernel, without blocking, whether a request is queued, and returns
  at once if so; otherwise (and for any other state of the device: closed, error, hang-up) it is
  trio's own wait;
- a read lock whose acquire, when the lock is free, takes it without a scheduler round, but for
  every ``READS_IN_A_ROW``-th acquire, which is trio's own: so the other tasks (answers from AIS,
  timers) still get their turn at least every so many requests however many are queued, and a
  request task whose handler waits for something yields there anyway.

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


READS_IN_A_ROW = 8


class _ReadLock:
    """``trio.Lock`` for pyfuse3's ``async with``, taken at once when free (see the module
    docstring). Invariant: ``_quick`` counts the acquires since the last one that was trio's."""

    def __init__(self) -> None:
        self._lock = trio.Lock()
        self._quick = 0

    async def __aenter__(self) -> None:
        if self._quick < READS_IN_A_ROW - 1 and not self._lock.locked():
            self._quick += 1
            self._lock.acquire_nowait()
            return
        self._quick = 0
        await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


class _Trio(types.SimpleNamespace):
    """The ``trio`` module as pyfuse3 sees it once installed."""

    def __init__(self) -> None:
        super().__init__(lowlevel=_LowLevel(), Lock=_ReadLock)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Give pyfuse3 the waiting described above (before ``pyfuse3.main``)."""
    pyfuse3.trio = _Trio()  # type: ignore[attr-defined]

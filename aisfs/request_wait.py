"""pyfuse3's wait for the next FUSE request, without a trip through trio's scheduler and I/O
manager when a request is already queued (part of the FUSE adapter, with ``mount.py``).

pyfuse3 reaches trio through its module global ``pyfuse3.trio`` (replaceable on purpose: it is
how pyfuse3 runs on asyncio). Before every request it reads, it takes a ``trio.Lock`` (one reader
of the device at a time), whose acquire always yields to the scheduler once and whose release
hands it to the next task waiting (pyfuse3 keeps one), and waits with
``trio.lowlevel.wait_readable`` on the device, which always parks the task and registers the
device with epoll (the next pass of the scheduler unregisters it). A scheduler round costs an
epoll call and trio's bookkeeping, ~10-20% of the daemon's CPU for small files read by 8 readers
(measured). Here, :func:`install` gives pyfuse3 trio as it is but for two things:

- a wait that first asks the kernel, without blocking, whether a request is queued, and returns
  at once if so; otherwise (and for any other state of the device: closed, error, hang-up) it is
  trio's own wait;
- a read lock whose acquire, when the lock is free, takes it without a scheduler round, but for
  every ``READS_IN_A_ROW``-th acquire, which yields first: so the other tasks (answers from AIS,
  timers) still get their turn at least every so many requests however many are queued, and a
  request task whose handler waits for something yields there anyway. Unlike ``trio.Lock``, it
  does not pass itself on to a waiting task when let go (see ``_ReadLock``).

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
    """A lock for pyfuse3's ``async with`` that the task letting go of it can take again at once
    (see the module docstring). pyfuse3 keeps one more request task waiting for the lock than
    the one reading; ``trio.Lock`` would hand the lock to that waiter on every release, so each
    request would cost a scheduler round even when its handler never waited. Here a release only
    wakes a waiter, which takes the lock if it is still free when it runs (that is, once the
    task that let go of it waits for something) and waits again if not.

    Invariants: ``_held`` while a task holds the lock; ``_woken`` while a waiter was woken and
    has not run yet (at most one is: waking more would only make them wait again); ``_quick``
    counts the acquires since the last one that gave the other tasks their turn."""

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()
        self._woken = False
        self._quick = 0

    async def __aenter__(self) -> None:
        if self._quick < READS_IN_A_ROW - 1 and not self._held:
            self._quick += 1
            self._held = True
            return
        self._quick = 0
        await trio.lowlevel.checkpoint()  # the other tasks' turn
        while self._held:
            await self._waiters.park()  # (a waiter cancelled there leaves by the exception)
            self._woken = False  # this task was the one woken
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        if self._waiters and not self._woken:
            self._woken = True
            self._waiters.unpark()


class _Trio(types.SimpleNamespace):
    """The ``trio`` module as pyfuse3 sees it once installed."""

    def __init__(self) -> None:
        super().__init__(lowlevel=_LowLevel(), Lock=_ReadLock)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install() -> None:
    """Give pyfuse3 the waiting described above (before ``pyfuse3.main``)."""
    pyfuse3.trio = _Trio()  # type: ignore[attr-defined]

"""The kernel's caches, reached from the FUSE adapter's side (part of the adapter: with ``fs.py``,
``fuse_attrs.py`` and ``mount.py`` the only importers of pyfuse3): dropping an inode's cached
attributes or a cached name, and putting file contents in the page cache.

Every notification goes from a helper thread (``AisApi.run_blocking``), in a task of its own:
inside a handler it can deadlock with the kernel, which waits for the request being handled (and
a store waits for the page locks a pending READ holds). Concurrency: called on the trio thread;
never blocks, never raises.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable

import pyfuse3

from .aisapi import AisApi, Spawn

log = logging.getLogger(__name__)


_Store = tuple[int, memoryview, Callable[[bool], None]]


def _store_all(batch: list[_Store]) -> list[bool]:
    """In a helper thread: each file's bytes into the kernel's page cache."""
    stored = []
    for ino, data, _ in batch:
        try:
            pyfuse3.notify_store(pyfuse3.InodeT(ino), 0, data)  # type: ignore[arg-type]  # any buffer
            stored.append(True)
        except OSError as exc:  # the kernel forgot the inode meanwhile, or has no support
            log.debug("notify_store(%d): %s", ino, exc)
            stored.append(False)
    return stored


class KernelAttrs:
    """Drops the kernel's cached attributes of an inode, or a name, and stores file contents
    in its page cache, from a worker thread: inside a handler the notification can deadlock
    (docs/architecture.md, "Threads and the concurrency rules"). Stores queued while one job
    runs go together in the next: one thread hand-off for many files."""

    def __init__(self, aio: AisApi, spawn: Spawn) -> None:
        self.aio = aio
        self.spawn = spawn
        self._stores: list[_Store] = []  # waiting for the next job
        self._storing = False  # a task is storing (it takes what is queued before it ends)

    def store(self, ino: int, data: memoryview, done: Callable[[bool], None]) -> None:
        """Put ``data`` in the kernel's page cache as the content of ``ino`` from offset 0;
        ``done(stored)`` is called on the trio thread after (never blocks, never raises)."""
        self._stores.append((ino, data, done))
        if not self._storing:
            self._storing = True
            self.spawn(self._store_queued)

    async def _store_queued(self) -> None:
        try:
            while self._stores:
                batch, self._stores = self._stores, []
                stored = [False] * len(batch)
                try:
                    stored = await self.aio.run_blocking(functools.partial(_store_all, batch))
                finally:
                    for (_, _, done), ok in zip(batch, stored, strict=True):
                        done(ok)
        finally:
            self._storing = False

    def forget_attrs(self, ino: int) -> None:
        async def invalidate() -> None:
            try:
                await self.aio.run_blocking(
                    lambda: pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=True)
                )
            except OSError as exc:
                log.debug("invalidate_inode(%d): %s", ino, exc)

        self.spawn(invalidate)

    def forget_entry(self, parent_ino: int, name: str) -> None:
        async def invalidate() -> None:
            try:
                await self.aio.run_blocking(lambda: pyfuse3.invalidate_entry(
                    pyfuse3.InodeT(parent_ino), os.fsencode(name)))
            except OSError as exc:
                log.debug("invalidate_entry(%d, %r): %s", parent_ino, name, exc)

        self.spawn(invalidate)

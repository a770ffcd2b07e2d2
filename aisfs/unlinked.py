"""Unlinked files still open for reading (POSIX's nlink 0): their bytes, kept in the spill area.

Before the object of a file that handles read is deleted, the open-files layer (``openfiles``)
has its bytes copied here; those handles read them from here, and the file shows the attributes
it had then, until its last handle closes. No copy when the spill area cannot hold them, or the
object changes while being copied: the handles' reads then fail, as the object is gone (one
log line says so).

Invariants: ``_kept`` maps the inode number of every unlinked file still open for reading whose
bytes were kept to their spill file and its attributes at the unlink; a spill file leaves the
map only when closed (``discard``), and each one is closed exactly once.

Concurrency: trio thread only; spill-file I/O goes through ``AisApi.run_blocking``. ``keep``
adds its entry only after its last ``await``, so a failed or cancelled copy leaves nothing.
"""

from __future__ import annotations

import functools
import logging

from . import errors
from .aisapi import AisApi
from .cache import Stat
from .config import MountConfig
from .inodes import Inode
from .namespace import Namespace
from .spill import SpillArea, SpillFile

log = logging.getLogger(__name__)


class UnlinkedFiles:
    """The kept bytes of unlinked files still open for reading (see the module docstring)."""

    def __init__(self, config: MountConfig, aio: AisApi, ns: Namespace, spill: SpillArea) -> None:
        self.config = config
        self.aio = aio
        self.ns = ns
        self.spill = spill
        self._kept: dict[int, tuple[SpillFile, Stat]] = {}

    def __contains__(self, ino: int) -> bool:
        return ino in self._kept

    def stat(self, ino: int) -> Stat | None:
        """The attributes of the unlinked file ``ino`` (None if its bytes are not kept here)."""
        kept = self._kept.get(ino)
        return kept[1] if kept is not None else None

    def discard(self, ino: int) -> None:
        """Close and drop the kept bytes of ``ino``, if any (never raises)."""
        kept = self._kept.pop(ino, None)
        if kept is not None:
            kept[0].close()

    async def read(self, ino: int, off: int, size: int) -> bytes | None:
        """Up to ``size`` kept bytes of ``ino`` from ``off``; None if none are kept for it."""
        kept = self._kept.get(ino)
        if kept is None:
            return None
        spill, st = kept
        end = min(off + size, st.size)
        if off >= end:
            return b""
        return await self.aio.run_blocking(lambda: spill.pread(off, end - off))

    async def keep(self, node: Inode) -> None:
        """Copy the object of a file open for reading into the spill area, for its handles to
        read once it is unlinked (see the module docstring)."""
        st = await self.ns.fresh_stat(node)
        spill = await self.aio.run_blocking(self.spill.create)
        try:
            spill.resize(st.size)
            part = self.config.read_part_size
            for pos in range(0, st.size, part):
                length = min(part, st.size - pos)
                result = await self.aio.get_range(node.bucket, node.key, pos, length)
                if len(result.data) != length or (st.version and result.version
                                                  and result.version != st.version):
                    raise errors.StaleObject(f"{node} changed while being kept")
                await self.aio.run_blocking(
                    functools.partial(spill.pwrite, pos, bytes(result.data)))
        except (errors.PosixError, errors.StaleObject) as exc:
            spill.close()
            log.warning("%s: unlinked while open; its bytes are not kept (%s): reads of it "
                        "through its open handles fail", node, exc)
            return
        except BaseException:
            spill.close()
            raise
        self._kept[node.ino] = (spill, st)

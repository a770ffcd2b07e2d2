"""Opening a file inside an archive (``--archives expand``): the reader of one member.

Under the open-files layer (``openfiles``), which gives the handle its number and keeps the
kernel's page-cache pin. The rules kept here:
- A member opens read-only: an open for writing or truncating is refused as any change inside
  an archive is (EROFS, through the namespace).
- Its reader is a ``MemberReader``, checked against the version of its archive (the mount's
  metadata cache), and fed by the archive-order streams (``archive_stream``) when its shard is
  being read in order and the mount has them.
- Its pin is (its archive's version, its size): a member's version is its archive's.

Invariants: none of its own; it holds only its collaborators.

Concurrency: trio thread only, in the FUSE handlers' tasks; the reader's fetches are tasks.
"""

from __future__ import annotations

import os

from .aisapi import AisApi, Spawn
from .archive_stream import ArchiveStreams
from .budget import MemoryBudget
from .config import MountConfig
from .inodes import Inode
from .member_reader import MemberReader
from .namespace import Namespace
from .reader import BufferPool


class MemberOpens:
    """Makes the readers of archive members opened through the mount (see the module
    docstring)."""

    def __init__(
        self, config: MountConfig, aio: AisApi, spawn: Spawn, ns: Namespace, *,
        read_budget: MemoryBudget, pool: BufferPool, archive_streams: ArchiveStreams | None,
    ) -> None:
        self.config = config
        self.aio = aio
        self.spawn = spawn
        self.ns = ns
        self.read_budget = read_budget
        self.pool = pool
        self.archive_streams = archive_streams  # with --archives expand

    async def reader(self, node: Inode, flags: int, kept: tuple[str, int] | None
                     ) -> tuple[MemberReader, tuple[str, int]]:
        """The reader of the member ``node`` opened with ``flags``, and its page-cache pin
        (``kept``: the pin of the pages the kernel holds, if any; when it is this one, no read
        will come, and the archive-order stream hears of the open)."""
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC):
            self.ns.refuse_in_archive(node, "open for writing")
        tree, member = await self.ns.member(node)
        bucket, archive, streams = node.bucket, tree.key, self.archive_streams

        async def archive_version() -> str:
            return (await self.ns.object_stat(bucket, archive)).version

        async def from_stream() -> bytearray | None:
            assert streams is not None
            return await streams.take(bucket, tree, member)

        reader = MemberReader(
            self.aio, bucket, archive, member.path, member.size, tree.version, self.config,
            self.read_budget, self.spawn, self.pool, archive_version,
            from_stream if streams is not None else None,
        )
        pin = (tree.version, member.size)
        if streams is not None and kept == pin:
            streams.opened(bucket, tree, member)
        return reader, pin

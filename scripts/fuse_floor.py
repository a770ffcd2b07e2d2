"""The floor of a pyfuse3 file system on this machine: a mount that serves a benchmark's data set
(``bench-small``'s objects, the same names and bytes) from its own memory, with no other work
behind a request, and answers the kernel with the FUSE settings aisfs uses (pyfuse3's default
options, 5 s attribute and entry timeouts). What a workload costs through it is what the kernel's
FUSE round trips and pyfuse3's request loop cost by themselves, which no file system built on
pyfuse3 can go below.

Usage: fuse_floor.py [--no-flush] BUCKET FILES SIZE MOUNTPOINT (foreground; unmount to stop).
``--no-flush``: its first FLUSH answers ENOSYS, after which the kernel sends none (what
``FOPEN_NOFLUSH`` gives the read-only opens of aisfs, whose flush matters for its writes): what
a file read costs without that round trip. Concurrency: one trio thread, as in aisfs; every
handler returns without awaiting anything.
"""

from __future__ import annotations

import errno
import stat
import sys
from typing import Any

import pyfuse3
import trio
from benchlib import content

TTL = 5.0  # aisfs's default --metadata-ttl


class FloorFS(pyfuse3.Operations):
    """``files`` files named f00000, f00001, ... of ``size`` bytes each, read-only, in the
    root directory (inode 1; file i is inode i + 2)."""

    def __init__(self, bucket: str, files: int, size: int, flush: bool = True) -> None:
        super().__init__()
        self.flush_supported = flush
        self.names = [f"f{i:05d}" for i in range(files)]
        self.index = {name.encode(): i for i, name in enumerate(self.names)}
        self.data = [content(bucket, name, size) for name in self.names]
        self.size = size

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(ino)
        if ino == pyfuse3.ROOT_INODE:
            attr.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o755)
            attr.st_nlink = 2
        else:
            attr.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
            attr.st_nlink = 1
            attr.st_size = self.size
            attr.st_blocks = (self.size + 511) // 512
        attr.entry_timeout = attr.attr_timeout = TTL
        return attr

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode != pyfuse3.ROOT_INODE and not 2 <= inode < len(self.names) + 2:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: Any = None) -> pyfuse3.EntryAttributes:
        i = self.index.get(name)
        if parent_inode != pyfuse3.ROOT_INODE or i is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(i + 2)

    async def opendir(self, inode: int, ctx: Any) -> pyfuse3.FileHandleT:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        for i in range(start_id, len(self.names)):
            if not pyfuse3.readdir_reply(token, self.names[i].encode(), self._attr(i + 2),
                                         i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        pass

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode))

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.data[fh - 2][off:off + size]

    async def flush(self, fh: int) -> None:
        if not self.flush_supported:
            raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        pass


def main() -> None:
    args = sys.argv[1:]
    flush = "--no-flush" not in args
    bucket, files, size, mountpoint = [a for a in args if a != "--no-flush"]
    options = set(pyfuse3.default_options)
    options.update({"fsname=fuse-floor", "ro"})
    pyfuse3.init(FloorFS(bucket, int(files), int(size), flush), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


if __name__ == "__main__":
    main()

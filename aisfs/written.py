"""What the namespace may ask about files being written through this mount.

The open-files layer answers (``handles.OpenWriters`` meets :class:`FilesBeingWritten`); the
namespace imports this module and never the open-files layer, so the dependency stays
one-directional: the open-files layer calls the namespace, the namespace only asks.

Pure and synchronous: trio thread only, no ``await``.
"""

from __future__ import annotations

from typing import Protocol

from .cache import Stat
from .inodes import Inode, InodeTable


class FilesBeingWritten(Protocol):
    """Files open for writing through this mount, as the open-files layer knows them."""

    def stat_of(self, inode: Inode) -> Stat | None:
        """The attributes the file's writers give it while one of them holds bytes AIS does not
        have yet (whether or not AIS has the object at all), else None."""
        ...

    def showing(self) -> list[Inode]:
        """The inodes whose writers hold such bytes."""
        ...


class NothingWritten:
    """No file is being written (a namespace used without the open-files layer)."""

    def stat_of(self, inode: Inode) -> Stat | None:
        return None

    def showing(self) -> list[Inode]:
        return []


def written_under(
    written: FilesBeingWritten, table: InodeTable, bucket: str, prefix: str
) -> list[tuple[Inode, Stat]]:
    """Files under ``prefix`` being written whose name still leads to them (an unlinked or
    replaced file's writers may still hold bytes), with the attributes their writers give them."""
    found = []
    for inode in written.showing():
        if (inode.bucket == bucket and inode.key.startswith(prefix)
                and table.find(bucket, inode.key) is inode):
            st = written.stat_of(inode)
            if st is not None:
                found.append((inode, st))
    return found

"""Open handles, and the writers of every inode open for writing with what they make it look like.

:class:`OpenWriters` is what the namespace asks about files being written here (it is typed
against ``written.FilesBeingWritten`` there, and imports nothing from the open-files layer):
such a file shows its writers' size and mtime in lookups, getattr and listings while one of them
holds bytes AIS does not have yet, whether or not AIS has the object at all.

Concurrency: trio thread only, changed by the open-files layer between awaits. The metrics
snapshot counts handles from its own thread (see ``mount.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .cache import Stat
from .inodes import Inode
from .listing import ListingStream
from .reader import ObjectReader
from .writer import ObjectWriter


@dataclass(slots=True)
class DirHandle:
    inode: Inode
    entries: ListingStream | None = None  # the listing snapshot readdir hands out


@dataclass(slots=True, eq=False)
class FileHandle:
    """``reader`` unless opened write-only, ``writer`` when opened for writing; a reader is
    replaced (by the open-files layer) when its handle's upload replaced the object."""

    inode: Inode
    reader: ObjectReader | None = None
    writer: ObjectWriter | None = None


class OpenWriters:
    """The handles open for writing, by inode.

    Invariants: every list in ``_by_ino`` is non-empty, in the order the handles were opened,
    and holds only handles with a writer, of that inode. An inode is *showing* while one of its
    writers is dirty. (An unlinked or replaced inode may still be showing: whoever asks by name
    checks that the name still leads to it.) ``_given`` holds the inodes open for writing whose
    attributes the kernel may hold from before their last write through a write-only handle:
    given out by ``stat_of`` (every lookup, getattr, listing, create and setattr of a file being
    written asks it), or from before the file was opened for writing.
    """

    def __init__(self) -> None:
        self._by_ino: dict[int, list[FileHandle]] = {}
        self._given: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self._by_ino)

    def add(self, handle: FileHandle) -> None:
        assert handle.writer is not None
        self._by_ino.setdefault(handle.inode.ino, []).append(handle)
        self._given.add(handle.inode.ino)

    def remove(self, handle: FileHandle) -> None:
        handles = self._by_ino.get(handle.inode.ino, [])
        if handle in handles:
            handles.remove(handle)
        if not handles:
            self._by_ino.pop(handle.inode.ino, None)
            self._given.discard(handle.inode.ino)

    def wrote(self, handle: FileHandle) -> None:
        """``handle`` wrote: through a write-only handle (direct I/O, no mmap), the kernel drops
        the file's cached size and mtime by itself once the write is answered."""
        if handle.reader is None:
            self._given.discard(handle.inode.ino)

    def take_given(self, inode: Inode) -> bool:
        """After an upload of ``inode``: whether the kernel may hold attributes of it it has not
        dropped by itself since their last change (it drops a file's size and mtime when a
        write through a write-only handle is answered; it cannot follow writes through mmap):
        given out after the last such write, held from before it was opened for writing, or
        shown while other handles write it too. The caller tells the kernel to drop them: they
        count as dropped."""
        given = inode.ino in self._given or len(self._by_ino.get(inode.ino, ())) > 1
        self._given.discard(inode.ino)
        return given

    def of(self, inode: Inode) -> list[FileHandle]:
        """The inode's write handles (a copy: the caller may await while going through it)."""
        return list(self._by_ino.get(inode.ino, ()))

    def stat_of(self, inode: Inode) -> Stat | None:
        """The attributes the inode's writers give it while one of them is showing, else None:
        the largest size among them; the mtime the last of them was given (utimens), else when
        one of them last changed it: what their uploads store."""
        handles = self._by_ino.get(inode.ino)
        if handles is None:
            return None
        writers = [h.writer for h in handles if h.writer is not None]
        dirty = [w for w in writers if w.dirty]
        if not dirty:
            return None
        mtimes = [w.pending_mtime_ns for w in writers if w.pending_mtime_ns is not None]
        size = max(w.size for w in writers)
        self._given.add(inode.ino)
        return Stat(size, mtimes[-1] if mtimes else max(w.modified_ns for w in dirty))

    def showing(self) -> list[Inode]:
        """The inodes whose writers are showing."""
        return [handles[0].inode for handles in self._by_ino.values()
                if any(h.writer is not None and h.writer.dirty for h in handles)]

"""Inode table: stable inode numbers for (bucket, key) paths, with exact kernel lookup counts.

Pure and synchronous: no I/O, no trio, no pyfuse3. Called only from the trio thread, with no
``await`` between a check and the mutation that depends on it.

Invariants:
- inode numbers are never reused within a mount (monotonic counter), so generation 0 is fine;
- ``lookups`` is exactly the number of references the kernel holds (lookup/create/mkdir and
  every readdirplus entry it accepted, minus forgets); an inode leaves the table when it has no
  kernel references and no open handles;
- ``by_path`` maps a path to the newest inode for it; an unlinked or replaced inode stays in
  ``by_ino`` until forgotten, but is no longer reachable by path.
- what is inside an archive shown as a directory (``Kind.ARCHIVE``) is keyed
  ``<archive key>\0<path in the archive>``: no object can have such a key (AIS names hold no
  NUL), so members never share an inode or a cache entry with an object.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

ROOT_INODE = 1


# Between an archive's key and a path inside it, in the keys of the inodes inside archives.
MEMBER_SEP = "\0"


class Kind(enum.Enum):
    CLUSTER = "cluster"  # the root of a whole-cluster mount: children are buckets
    DIR = "dir"  # a bucket or a virtual directory (prefix)
    FILE = "file"
    ARCHIVE = "archive"  # an archive object shown as the directory of its members
    MEMBER_DIR = "member-dir"  # a directory inside an archive
    MEMBER = "member"  # a file inside an archive


_FILE_KINDS = (Kind.FILE, Kind.MEMBER)
_INSIDE_ARCHIVE = (Kind.MEMBER_DIR, Kind.MEMBER)


@dataclass(slots=True, eq=False)
class Inode:
    ino: int
    kind: Kind
    bucket: str  # "" only for the CLUSTER root
    # FILE and ARCHIVE: object name; DIR: prefix, "" (bucket root) or ending in "/";
    # MEMBER and MEMBER_DIR: "<archive>\0<path in the archive>" (a directory's ending in "/")
    key: str
    parent: int
    lookups: int = 0
    opens: int = 0

    @property
    def is_dir(self) -> bool:
        return self.kind not in _FILE_KINDS

    @property
    def in_archive(self) -> bool:
        """A member, or a directory inside an archive (read-only)."""
        return self.kind in _INSIDE_ARCHIVE

    @property
    def archive_path(self) -> tuple[str, str]:
        """(the archive's key, the path inside it: "" for the archive itself, a directory's
        ending in "/") of an ARCHIVE, MEMBER_DIR or MEMBER inode."""
        archive, _, inner = self.key.partition(MEMBER_SEP)
        return archive, inner

    @property
    def path(self) -> tuple[str, str]:
        return (self.bucket, self.key)

    def child_key(self, name: str, is_dir: bool) -> str:
        inside = MEMBER_SEP if self.kind is Kind.ARCHIVE else ""
        return self.key + inside + name + ("/" if is_dir else "")

    def __repr__(self) -> str:
        key = self.key.replace(MEMBER_SEP, "/")
        return f"<Inode {self.ino} {self.kind.value} ais://{self.bucket}/{key}>"


class InodeTable:
    def __init__(self, root_kind: Kind, bucket: str = "", prefix: str = "") -> None:
        self._next = ROOT_INODE + 1
        self.root = Inode(ROOT_INODE, root_kind, bucket, prefix, ROOT_INODE, lookups=1)
        self.by_ino: dict[int, Inode] = {ROOT_INODE: self.root}
        self.by_path: dict[tuple[str, str], Inode] = {self.root.path: self.root}

    def __len__(self) -> int:
        return len(self.by_ino)

    def get(self, ino: int) -> Inode:
        return self.by_ino[ino]

    def child(self, parent: Inode, bucket: str, key: str, kind: Kind) -> Inode:
        """The inode for a path, created (with no kernel references yet) if unknown.

        A path whose kind changed (an object replaced by a prefix of the same name) gets a new
        inode; the old one lives on until the kernel forgets it.
        """
        existing = self.by_path.get((bucket, key))
        if existing is not None and existing.kind is kind:
            return existing
        inode = Inode(self._next, kind, bucket, key, parent.ino)
        self._next += 1
        self.by_ino[inode.ino] = inode
        self.by_path[(bucket, key)] = inode
        return inode

    def find(self, bucket: str, key: str) -> Inode | None:
        return self.by_path.get((bucket, key))

    def add_lookup(self, inode: Inode, count: int = 1) -> None:
        inode.lookups += count

    def forget(self, ino: int, count: int) -> None:
        """Drop ``count`` kernel references. Never raises: the kernel may send forgets late."""
        inode = self.by_ino.get(ino)
        if inode is None or ino == ROOT_INODE:
            return
        if count > inode.lookups:
            log.warning("forget(%d, %d) exceeds lookup count %d", ino, count, inode.lookups)
            count = inode.lookups
        inode.lookups -= count
        self.drop_if_unused(inode)

    def drop_if_unused(self, inode: Inode) -> None:
        if inode.lookups == 0 and inode.opens == 0 and inode.ino != ROOT_INODE:
            del self.by_ino[inode.ino]
            if self.by_path.get(inode.path) is inode:
                del self.by_path[inode.path]

    def unlink_path(self, bucket: str, key: str) -> None:
        """The name is gone; its inode stays until forgotten and closed."""
        inode = self.by_path.pop((bucket, key), None)
        if inode is not None:
            self.drop_if_unused(inode)

    def move(self, inode: Inode, parent: Inode, key: str) -> None:
        """Re-key an inode after a rename (the target name's old inode is unlinked)."""
        if self.by_path.get(inode.path) is inode:
            del self.by_path[inode.path]
        self.unlink_path(inode.bucket, key)
        inode.key = key
        inode.parent = parent.ino
        self.by_path[inode.path] = inode

    def move_prefix(
        self, bucket: str, old_prefix: str, new_prefix: str, new_parent: Inode, top: Inode
    ) -> None:
        """A directory was renamed: re-key it and every inode under it."""
        moved = [i for (b, k), i in self.by_path.items()
                 if b == bucket and k.startswith(old_prefix)]
        for inode in moved:
            del self.by_path[inode.path]
        self.unlink_path(bucket, new_prefix)
        for inode in moved:
            inode.key = new_prefix + inode.key[len(old_prefix):]
            old = self.by_path.get(inode.path)
            if old is not None and old is not inode:
                self.unlink_path(bucket, inode.key)
            self.by_path[inode.path] = inode
        top.parent = new_parent.ino

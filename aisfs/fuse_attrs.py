"""The attributes the FUSE adapter hands the kernel: ``pyfuse3.EntryAttributes`` built from an
inode and its ``Stat``.

Part of the FUSE adapter (with ``fs.py`` and ``mount.py`` the only importers of pyfuse3): it
decides nothing about files, only encodes. The rules kept here:
- Every entry has the mount's owner, group and modes (``--uid``, ``--gid``, ``--dir-mode``,
  ``--file-mode``), the metadata TTL as its entry and attribute timeouts, and a 1 MiB
  ``st_blksize`` (cp and Python size their buffers from it).
- A directory has nlink 2, size 0 and the mount's start time; a file nlink 1, its size, and its
  mtime when that is stable for its (version, size) (``metacache.ShownMtimes``), else the
  mount's start time.
- A negative entry (inode 0) is cached by the kernel for the negative metadata TTL.

Invariants: holds only the mount's configuration and the namespace it reads times from; an
attribute object handed to ``fill`` gets every field that differs between entries set, so one
object may be reused for all the entries of a listing.

Concurrency: trio thread only, in the FUSE handlers' tasks; synchronous.
"""

from __future__ import annotations

import stat as statmod

import pyfuse3

from .cache import Stat
from .config import MountConfig
from .inodes import Inode, Kind
from .namespace import Namespace

BLOCK_SIZE = 1024 * 1024  # st_blksize: cp and Python size their buffers from it
# Read once: a ``Kind.X`` read costs ~80 ns in Python 3.11, and ``fill`` runs for every entry.
_MEMBER = Kind.MEMBER


class EntryAttrs:
    """Builds the kernel's attributes of inodes (see the module docstring)."""

    def __init__(self, config: MountConfig, ns: Namespace) -> None:
        self.config = config
        self.ns = ns
        self._mtimes = ns.cache.mtimes
        self._dir_mode = statmod.S_IFDIR | config.dir_mode
        self._file_mode = statmod.S_IFREG | config.file_mode

    def make(self, inode: Inode, st: Stat | None) -> pyfuse3.EntryAttributes:
        """The attributes of ``inode`` (a directory when ``st`` is None)."""
        attr = self.new()
        self.fill(attr, inode, st)
        return attr

    def new(self) -> pyfuse3.EntryAttributes:
        """Attributes with what every entry shares set; the rest comes from ``fill``."""
        config = self.config
        attr = pyfuse3.EntryAttributes()
        attr.entry_timeout = attr.attr_timeout = config.metadata_ttl
        attr.st_uid = config.uid
        attr.st_gid = config.gid
        attr.st_blksize = BLOCK_SIZE
        return attr

    def fill(self, attr: pyfuse3.EntryAttributes, inode: Inode, st: Stat | None) -> None:
        # Called once per entry of every listing: plain ints (no NewType calls) and no reads
        # back from the Cython object keep it cheap. Sets every field that differs between
        # entries, as readdir reuses one object for all.
        attr.st_ino = inode.ino  # type: ignore[assignment]
        if st is None or inode.is_dir:
            attr.st_mode = self._dir_mode  # type: ignore[assignment]
            attr.st_nlink = 2
            attr.st_size = attr.st_blocks = 0
            mtime = self.ns.mount_time_ns
        else:
            attr.st_mode = self._file_mode  # type: ignore[assignment]
            attr.st_nlink = 1
            attr.st_size = st.size
            attr.st_blocks = (st.size + 511) // 512
            if inode.kind is _MEMBER:  # the archive's shown time (archive_view): stable
                mtime = st.mtime_ns or self.ns.mount_time_ns
            else:
                mtime = (self._mtimes.stable(inode.path, st.version, st.size, st.mtime_ns)
                         or self.ns.mount_time_ns)
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime

    def negative(self) -> pyfuse3.EntryAttributes:
        """A negative entry: the kernel caches that the name does not exist."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(0)  # a negative dentry the kernel caches for entry_timeout
        attr.entry_timeout = self.config.negative_metadata_ttl
        return attr

"""Archive objects (AIS shards) as read-only trees of their members: which object names AIS
reads as archives, and how AIS's listing of one archive's members becomes directories and files.

AIS lists an archive's members when asked with its archive-directory flag: the archive's own
entry (flagged ``ENTRY_IS_ARCHIVE`` when AIS could read it), then one entry per member named
``<archive>/<member>`` (flagged ``ENTRY_IN_ARCH``), sorted by name, with its uncompressed size but
no time or version. AIS reports member names cleaned (``./a`` as ``a``, ``x/../a`` as ``a``),
directories not at all, links and devices as empty files, and names that are not UTF-8 as
their raw bytes (decoded with U+FFFD in place of the bad bytes; AIS cannot find those by any
name sent as UTF-8: they are skipped).

Tree rules: every member path component must be a valid file name (as for object names);
a name that is both a member ``a`` and a directory ``a/`` is the directory; a name listed twice
(a tar appended to) is shown once. Skipped names are counted and logged once per archive.

Concurrency: pure functions; an :class:`ArchiveContents` is built once and then only read, so it
may be shared by any number of tasks or threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .listing import valid_name
from .objects import list_entries

log = logging.getLogger(__name__)

# The extensions AIS recognises (cmn/archive/mime.go: FileExtensions), matched as AIS matches
# them: a case-sensitive suffix of the object name.
ARCHIVE_EXTENSIONS = (".tar", ".tgz", ".tar.gz", ".tar.lz4", ".zip")

# Listing entry flags (api/apc/lsmsg.go): a member of an archive; an archive AIS could read.
ENTRY_IN_ARCH = 128
ENTRY_IS_ARCHIVE = 512


def is_archive(key: str) -> bool:
    """Whether AIS reads the object ``key`` as an archive (by its name only, as AIS does)."""
    return key.endswith(ARCHIVE_EXTENSIONS)


@dataclass(slots=True)
class Member:
    """A file inside an archive: its name as AIS takes it in ``archpath``, and its size."""

    path: str
    size: int


@dataclass(slots=True)
class MemberDir:
    """A directory inside an archive ("" for the archive itself, else ending in "/"), with its
    entries in name order."""

    path: str
    children: dict[str, Member | MemberDir] = field(default_factory=dict)


@dataclass(slots=True)
class ArchiveContents:
    """One version of an archive object and the tree of its members.

    Invariants: ``readable`` is False exactly when AIS listed the object without reading it as
    an archive (corrupt, truncated, or not the format its name says); then ``root`` is empty.
    Every ``Member`` is reachable from ``root`` by its ``path``; ``members`` counts them.
    """

    key: str
    size: int
    mtime_ns: int
    version: str
    readable: bool
    root: MemberDir
    members: int = 0
    # Names shown once although AIS listed them more than once: a GET serves the first copy in
    # the archive, whose size the listing cannot tell apart from the others'.
    duplicates: set[str] = field(default_factory=set)
    # Each member's place in the listing (name order; archive order for shards written sorted).
    order: dict[str, int] = field(default_factory=dict)

    def find(self, path: str) -> Member | MemberDir | None:
        """The member or directory at ``path`` ("" is the archive's root; no trailing "/")."""
        node: Member | MemberDir = self.root
        if not path:
            return node
        for part in path.split("/"):
            if not isinstance(node, MemberDir):
                return None
            child = node.children.get(part)
            if child is None:
                return None
            node = child
        return node


def contents_from_listing(
    bucket: str, key: str, raw_entries: Iterable[dict[str, Any]]
) -> ArchiveContents:
    """The archive ``key`` and its member tree from AIS's listing of it: the decoded JSON
    entries of a listing with the archive-directory flag and the archive's name as prefix
    (entries of other objects are ignored). Raises ``NotFound`` when the archive is not listed."""
    where = f"ais://{bucket}/{key}"
    own: dict[str, Any] | None = None
    root = MemberDir("")
    contents = ArchiveContents(key, 0, 0, "", False, root)
    skipped: list[str] = []
    member_prefix = key + "/"
    cut = len(member_prefix)
    top = root.children
    for raw in raw_entries:
        name = raw.get("name", "")
        if not name.startswith(member_prefix) or not raw.get("flags", 0) & ENTRY_IN_ARCH:
            if name == key:
                own = raw
            continue
        path = name[cut:]
        size = int(raw.get("size") or 0)
        # Most shards are flat: a new top-level name needs none of _add_member's tree walk.
        if path not in top and "\ufffd" not in path and valid_name(path):
            _put_member(contents, top, path, path, size)
        else:
            _add_member(contents, path, size, skipped)
    if own is None:
        raise errors.NotFound("archive not listed", 404, where)
    entry = list_entries([own])[0]
    contents.size, contents.mtime_ns, contents.version = entry.size, entry.mtime_ns, entry.version
    contents.readable = bool(own.get("flags", 0) & ENTRY_IS_ARCHIVE)
    if not contents.readable:
        contents.root.children.clear()
        contents.members = 0
        contents.duplicates.clear()
        contents.order.clear()
    if skipped:
        log.warning("%s: skipped %d member name(s) that cannot be a file name or are not UTF-8, "
                    "e.g. %r", where, len(skipped), skipped[0])
    return contents


def _add_member(contents: ArchiveContents, path: str, size: int, skipped: list[str]) -> None:
    """Put one listed member into the tree; names it cannot show go to ``skipped``."""
    parts = path.split("/")
    if "\ufffd" in path or not all(valid_name(part) for part in parts):
        skipped.append(path)
        return
    node = contents.root
    for i, part in enumerate(parts[:-1]):
        child = node.children.get(part)
        if isinstance(child, Member):
            # A member "a" and members under "a/": the directory wins, as for objects.
            skipped.append(child.path)
            contents.members -= 1
            child = None
        if child is None:
            child = node.children[part] = MemberDir("/".join(parts[: i + 1]) + "/")
        node = child
    last = parts[-1]
    existing = node.children.get(last)
    if isinstance(existing, MemberDir):
        skipped.append(path)  # the directory of the same name is shown instead
    elif isinstance(existing, Member):
        contents.duplicates.add(path)
    else:
        _put_member(contents, node.children, last, path, size)


def _put_member(contents: ArchiveContents, children: dict[str, Member | MemberDir], name: str,
                path: str, size: int) -> None:
    """A new member ``path``, under ``name`` in its directory's ``children``."""
    children[name] = Member(path, size)
    contents.order[path] = len(contents.order)
    contents.members += 1

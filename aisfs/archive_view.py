"""Archive objects as read-only directories (``--archives expand``): the member trees behind
them, and the answers to lookups and listings inside them.

Each archive's member tree (:class:`archives.ArchiveContents`) comes from one archive listing
and is kept for the version of the archive it was listed at (its time the one the mount shows for
that version of the archive, ``metacache.ShownMtimes``, so that its members' times hold whenever
the tree is listed again): every use first asks the archive's
current attributes (``archive_stat``: the mount's metadata cache, so at most ``metadata_ttl``
old), and a new version (or size) of the archive drops the tree and lists it again. Trees are
kept in LRU order up to ``TREE_MEMBERS`` members in all; one bigger than that is listed again
each time it is used. Names inside an archive are answered from its tree, with no request.

An archive AIS cannot read (corrupt, truncated, or not the format its name says) is an empty
directory, with one warning per version of the archive.

Concurrency: trio thread only. Concurrent uses of an archive whose tree is missing share one
listing (single-flight); the trees themselves are never changed once built.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from .aisapi import AisApi
from .archives import ArchiveContents, Member, MemberDir
from .cache import Stat, TtlMap
from .listing import Child
from .metacache import ShownMtimes

log = logging.getLogger(__name__)

# Members of all kept trees together (~200 bytes each).
TREE_MEMBERS = 250_000
# Unreadable archives already warned about, by (bucket, key, version); the oldest go first.
_WARNED_MAX = 4096


def member_stat(contents: ArchiveContents, member: Member) -> Stat:
    """A member's attributes: its size, and the archive's time (as shown for this version of
    it: stable) and version (AIS lists members with neither)."""
    return Stat(member.size, contents.mtime_ns, contents.version)


class ArchiveView:
    def __init__(
        self, aio: AisApi, archive_stat: Callable[[str, str], Awaitable[Stat]],
        mtimes: ShownMtimes,
    ) -> None:
        self.aio = aio
        self.archive_stat = archive_stat
        self.mtimes = mtimes
        self.trees: TtlMap[ArchiveContents] = TtlMap(
            TREE_MEMBERS, math.inf, 0, sizeof=lambda contents: contents.members + 1)
        self._warned: dict[tuple[str, str, str], None] = {}

    async def tree(self, bucket: str, key: str) -> ArchiveContents:
        """The member tree of the archive's current version (listed when not kept); NotFound
        when the archive is gone."""
        stat = await self.archive_stat(bucket, key)
        kept = self.trees.get((bucket, key))
        if isinstance(kept, ArchiveContents):
            if kept.version == stat.version and kept.size == stat.size:
                return kept
            self.trees.pop((bucket, key))  # a new version of the archive

        async def fetch() -> ArchiveContents:
            contents = await self.aio.list_archive(bucket, key)
            contents.mtime_ns = self.mtimes.stable((bucket, key), contents.version,
                                                   contents.size, contents.mtime_ns)
            if not contents.readable:
                self._warn_unreadable(bucket, contents)
            self.trees.put((bucket, key), contents)
            return contents

        return await self.trees.get_or_fetch((bucket, key), fetch)

    def forget(self, bucket: str, key: str) -> None:
        """The archive changed or went away through this mount."""
        self.trees.pop((bucket, key))

    def _warn_unreadable(self, bucket: str, contents: ArchiveContents) -> None:
        seen = (bucket, contents.key, contents.version)
        if seen in self._warned:
            return
        self._warned[seen] = None
        if len(self._warned) > _WARNED_MAX:
            del self._warned[next(iter(self._warned))]
        log.warning("ais://%s/%s: AIS cannot read it as an archive (corrupt, truncated, or not "
                    "the format its name says): shown as an empty directory",
                    bucket, contents.key)


def children(contents: ArchiveContents, directory: MemberDir) -> list[Child]:
    """The entries of a directory inside an archive, in name order."""
    out = []
    for name, node in directory.children.items():
        if isinstance(node, Member):
            out.append(Child(name, False, member_stat(contents, node)))
        else:
            out.append(Child(name, True, None))
    return out

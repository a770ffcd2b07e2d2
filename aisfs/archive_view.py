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

Archives used one after the other in their directory's order (``ls`` of each shard, ``cp -r``
or a loader going through the shards): when the archive used before this one in the same
directory is the entry listed just before it (or this is the first archive of a run of them in
the directory's cached listing, and the first one used there), the entry after it, when an
archive, is listed ahead, in a task of its own, while the reader is busy with this one. AIS reads
a whole archive to list it (~0.2 s for a 64 MiB tar read from disk), and leaves it in its page
cache for the reader's next requests.

Concurrency: trio thread only. Concurrent uses of an archive whose tree is missing share one
listing (single-flight); the trees themselves are never changed once built.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
from collections.abc import Awaitable, Callable

from . import errors
from .aisapi import AisApi, Spawn
from .archives import ArchiveContents, Member, MemberDir, is_archive
from .cache import Stat, TtlMap
from .listing import Child, Listing, near
from .listings import parent_of
from .metacache import ShownMtimes

log = logging.getLogger(__name__)

# Members of all kept trees together (~200 bytes each).
TREE_MEMBERS = 250_000
# Unreadable archives already warned about, by (bucket, key, version); the oldest go first.
_WARNED_MAX = 4096
# Directories whose last used archive is remembered (to see archives used in order).
_DIRS_FOLLOWED = 1024


def member_stat(contents: ArchiveContents, member: Member) -> Stat:
    """A member's attributes: its size, and the archive's time (as shown for this version of
    it: stable) and version (AIS lists members with neither)."""
    return Stat(member.size, contents.mtime_ns, contents.version)


class ArchiveView:
    def __init__(
        self, aio: AisApi, archive_stat: Callable[[str, str], Awaitable[Stat]],
        mtimes: ShownMtimes, listed: Callable[[str, str], Listing | None], spawn: Spawn,
    ) -> None:
        self.aio = aio
        self.archive_stat = archive_stat
        self.mtimes = mtimes
        self.listed = listed  # the cached listing of a directory (bucket, prefix), if any
        self.spawn = spawn
        self.trees: TtlMap[ArchiveContents] = TtlMap(
            TREE_MEMBERS, math.inf, 0, sizeof=lambda contents: contents.members + 1)
        self._warned: dict[tuple[str, str, str], None] = {}
        # (bucket, directory prefix) -> the key of the archive last used in that directory
        self._last_used: collections.OrderedDict[tuple[str, str], str] = (
            collections.OrderedDict())
        self.listed_ahead = 0  # archives listed ahead of their use (for tests and metrics)

    async def tree(self, bucket: str, key: str) -> ArchiveContents:
        """The member tree of the archive's current version (listed when not kept); NotFound
        when the archive is gone."""
        self._follow(bucket, key)
        return await self._tree(bucket, key)

    def _follow(self, bucket: str, key: str) -> None:
        """``key`` is used now: list the next archive ahead if this one came in order."""
        prefix, name = parent_of(key)
        where = (bucket, prefix)
        last = self._last_used.get(where)
        if last == key:
            return
        self._last_used[where] = key
        self._last_used.move_to_end(where)
        if len(self._last_used) > _DIRS_FOLLOWED:
            self._last_used.popitem(last=False)
        listing = self.listed(bucket, prefix)
        at = None if listing is None else near(listing.children, name)
        if listing is None or at is None:
            return
        before = _archive_next_to(listing, at, -1)
        first_used_first = last is None and before is None
        after_last_used = last is not None and before is not None and prefix + before == last
        if not (first_used_first or after_last_used):
            return
        following = _archive_next_to(listing, at, +1)
        if following is not None and (bucket, prefix + following) not in self.trees:
            self.listed_ahead += 1
            self.spawn(functools.partial(self._list_ahead, bucket, prefix + following))

    async def _list_ahead(self, bucket: str, key: str) -> None:
        try:
            await self._tree(bucket, key)
        except errors.AisError as exc:  # the reader's own use will list it, and say why not
            log.debug("ais://%s/%s: not listed ahead: %s", bucket, key, exc)

    async def _tree(self, bucket: str, key: str) -> ArchiveContents:
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


def _archive_next_to(listing: Listing, at: int, step: int) -> str | None:
    """The name of the entry next to position ``at`` of a listing (``step``: -1 before, +1
    after) when it is an archive object, else None."""
    i = at + step
    if not 0 <= i < len(listing.children):
        return None
    child = listing.children[i]
    return child.name if not child.is_dir and is_archive(child.name) else None


def children(contents: ArchiveContents, directory: MemberDir) -> list[Child]:
    """The entries of a directory inside an archive, in name order."""
    return [Child(name, False, member_stat(contents, node)) if type(node) is Member
            else Child(name, True, None) for name, node in directory.children.items()]

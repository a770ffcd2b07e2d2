"""Metadata cache in front of the async AIS interface: what is known about single names.

Three facts, each kept for the metadata TTL when positive and for the negative metadata TTL when
negative (``MISSING``): an object's attributes (from a HEAD, a listing, or an upload made here),
whether a prefix is a directory (has objects under it), and the cluster's bucket names. A miss
goes to the cluster once however many tasks ask at the same time (single-flight, see
``cache.TtlMap.get_or_fetch``). What a fetch learned is cached; a failure other than "not found"
is not: the next caller asks again.

Beside them, the mtime each file showed (``ShownMtimes``), so that a file's time does not move
while its object's version stays.

Listings (``listings``) and the namespace seed and drop entries here as they learn of changes.

Concurrency: trio thread only. Every task (FUSE handlers, listing producers) may read and write
the maps; each read-modify-write happens with no ``await`` in between, and a fetch stores its
result only after the awaited remote call returned.

Invariants:
- ``stats`` maps (bucket, object key) to a ``Stat`` or ``MISSING``; ``dirs`` maps (bucket,
  prefix ending in "/") to ``True`` or ``MISSING``; ``buckets`` holds at most the one key
  ``"buckets"``.
- For each key at most one fetch is in flight (the map's single-flight table); its waiters get
  its result, or, when it failed, try once more themselves.
- ``MISSING`` is stored only after AIS answered "not found" (or a change made here removed the
  name), never after a transient or unexpected failure.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable

from . import errors
from .aisapi import AisApi
from .cache import MISSING, Stat, TtlMap
from .config import MountConfig
from .objects import ObjectProps

# Entries of the stat and directory caches.
CACHE_ENTRIES = 200_000
_BUCKETS = "buckets"


def stat_of(props: ObjectProps) -> Stat:
    return Stat(props.size, props.mtime_ns, props.version)


class ShownMtimes:
    """The mtime each file showed, kept while its object's version and size last.

    Why: an object aisfs did not write (no ``aisfs.mtime``) has no stable time in AIS's listings,
    only its access time, which every read moves, while a HEAD gives its Last-Modified. Tools that
    compare a file's times before and after reading it (``tar``: "file changed as we read it";
    ``rsync``, ``make``) must see one time per version.

    Invariant: ``_shown`` maps a (bucket, key) to (version, size, mtime) for at most ``LIMIT``
    files, the least recently shown dropped first; objects without a version (versioning off)
    are not kept. Trio thread only.
    """

    LIMIT = 200_000

    def __init__(self) -> None:
        self._shown: collections.OrderedDict[tuple[str, str], tuple[str, int, int]] = (
            collections.OrderedDict())

    def stable(self, path: tuple[str, str], version: str, size: int, mtime_ns: int) -> int:
        """The mtime to show for ``path`` now that its attributes say ``mtime_ns``."""
        if not version:
            return mtime_ns
        shown = self._shown.get(path)
        if shown is not None and shown[0] == version and shown[1] == size:
            self._shown.move_to_end(path)
            return shown[2]
        self._shown[path] = (version, size, mtime_ns)
        if len(self._shown) > self.LIMIT:
            self._shown.popitem(last=False)
        return mtime_ns

    def forget(self, path: tuple[str, str]) -> None:
        """The object's own time changed without a new version (its ``aisfs.mtime``)."""
        self._shown.pop(path, None)


class MetadataCache:
    def __init__(self, aio: AisApi, config: MountConfig,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.aio = aio
        ttl, neg = config.metadata_ttl, config.negative_metadata_ttl
        self.stats: TtlMap[Stat] = TtlMap(CACHE_ENTRIES, ttl, neg, timer)
        self.dirs: TtlMap[bool] = TtlMap(CACHE_ENTRIES, ttl, neg, timer)
        self.buckets: TtlMap[tuple[str, ...]] = TtlMap(1, ttl, neg, timer)
        self.mtimes = ShownMtimes()

    async def head(self, bucket: str, key: str) -> Stat:
        """The object's attributes: cached, else from one HEAD shared by concurrent callers;
        NotFound (cached as a negative entry) when it does not exist."""

        async def fetch() -> Stat:
            try:
                props = await self.aio.head_object(bucket, key)
            except errors.NotFound:
                self.stats.put_missing((bucket, key))
                raise
            stat = stat_of(props)
            self.stats.put((bucket, key), stat)
            return stat

        stat = await self.stats.get_or_fetch((bucket, key), fetch)
        if stat is MISSING:
            raise errors.NotFound("cached as missing", 404, f"ais://{bucket}/{key}")
        return stat

    async def dir_exists(self, bucket: str, prefix: str,
                         probe: Callable[[], Awaitable[bool]]) -> bool:
        """Whether ``prefix`` is a directory: cached, else what one ``probe`` (shared by
        concurrent callers) found; the answer is cached either way."""

        async def fetch() -> bool:
            found = await probe()
            if found:
                self.dirs.put((bucket, prefix), True)
            else:
                self.dirs.put_missing((bucket, prefix))
            return found

        found = await self.dirs.get_or_fetch((bucket, prefix), fetch)
        return found is True

    async def bucket_names(self) -> tuple[str, ...]:
        async def fetch() -> tuple[str, ...]:
            names = tuple(await self.aio.list_buckets())
            self.buckets.put(_BUCKETS, names)
            return names

        return await self.buckets.get_or_fetch(_BUCKETS, fetch)

    def note_stat(self, bucket: str, key: str, stat: Stat) -> None:
        """``key`` is an object with these attributes (a change made here, a fresh HEAD)."""
        self.stats.put((bucket, key), stat)

    def note_gone(self, bucket: str, key: str) -> None:
        """``key`` no longer exists (removed or renamed away here)."""
        self.stats.put_missing((bucket, key))

    def forget_buckets(self) -> None:
        self.buckets.clear()

    def forget_under(self, bucket: str, prefixes: tuple[str, ...]) -> None:
        """Drop every stat and directory entry of ``bucket`` whose key starts with one of
        ``prefixes`` (a directory renamed here)."""

        def under(key: object) -> bool:
            return isinstance(key, tuple) and key[0] == bucket and str(key[1]).startswith(prefixes)

        self.stats.pop_where(under)
        self.dirs.pop_where(under)

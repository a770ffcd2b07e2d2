"""Per-handle reader of one archive member: the object reader's window, read-ahead and memory
budget, with every part read out of the archive by AIS.

A member that fits in one part (``read_part_size``) is fetched whole by the handle's first
read, in one ``archpath`` GET (or taken from an archive-order stream, see ``archive_stream``),
and served from memory after that. A bigger one is read in parts
through Get-Batch byte ranges (AIS refuses a Range header together with ``archpath``); a range
shorter than ``MIN_BATCH_RANGE`` is widened to it (AIS sends short ones only at its next flush,
~100 ms later) and the extra bytes dropped.

Neither answer says which version of the archive it came from. So after each fetch the
archive's version is asked of ``archive_version`` (the mount's metadata cache: at most
``metadata_ttl`` old) and compared with the version the member was opened at; a whole member of
another size than the listed one is stale too. A stale member fails its reads with ESTALE
(``StaleObject``) instead of mixing versions.

Concurrency: trio thread only, as :class:`ObjectReader`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from . import errors
from .aisapi import AisApi, Spawn
from .budget import MemoryBudget
from .config import MountConfig
from .getbatch import MIN_BATCH_RANGE
from .objects import RecvBuffer
from .reader import BufferPool, ObjectReader


class MemberReader(ObjectReader):
    """Reads the member ``member`` (its name in the archive) of the archive object ``key``.

    Invariant (small members): once a fetch is under way or done, one chunk covers the whole
    member, so no read is a seek and nothing is fetched twice while it is kept."""

    def __init__(
        self, aio: AisApi, bucket: str, key: str, member: str, size: int, version: str,
        config: MountConfig, budget: MemoryBudget, spawn: Spawn, pool: BufferPool,
        archive_version: Callable[[], Awaitable[str]],
        from_stream: Callable[[], Awaitable[bytearray | None]] | None = None,
    ) -> None:
        super().__init__(aio, bucket, key, size, version, config, budget, spawn, pool)
        self.member = member
        self.archive_version = archive_version
        self.from_stream = from_stream
        self.whole = size <= config.read_part_size

    @property
    def what(self) -> str:
        return f"ais://{self.bucket}/{self.key}/{self.member}"

    async def read(self, off: int, size: int) -> bytes | memoryview:
        if self.whole and not self._chunks and off < self.size:
            self._fill(0, self.size, self.size)  # the whole member, whatever the first offset
        return await super().read(off, size)

    async def _fetch(self, start: int, length: int, buf: RecvBuffer) -> memoryview:
        try:
            data = await self._fetch_member(start, length, buf)
        except errors.NotFound:
            if await self.archive_version() != self.version:
                raise self._stale("the member is gone") from None
            # Listed, yet not found by its listed name: AIS lists names cleaned ("./a" as "a")
            # but looks members up by their names as stored.
            raise errors.AisError(
                "AIS lists this member but cannot read it by that name (stored as ./NAME, or "
                "with .. in its path?)", 404, self.what) from None
        version = await self.archive_version()
        if self.version and version != self.version:
            raise self._stale(f"archive version {self.version} -> {version}")
        return data

    async def _fetch_member(self, start: int, length: int, buf: RecvBuffer) -> memoryview:
        if start == 0 and length == self.size:
            streamed = await self.from_stream() if self.from_stream is not None else None
            if streamed is not None:
                data = memoryview(streamed)
            else:
                data = await self.aio.get_member(self.bucket, self.key, self.member, buf)
            if len(data) != self.size:
                raise self._stale(f"{len(data)} bytes, listed with {self.size}")
        elif length >= MIN_BATCH_RANGE or self.size < MIN_BATCH_RANGE:
            data = await self.aio.get_member_range(
                self.bucket, self.key, self.member, start, length, buf)
        else:
            low = max(0, min(start, self.size - MIN_BATCH_RANGE))
            wide = await self.aio.get_member_range(
                self.bucket, self.key, self.member, low, MIN_BATCH_RANGE)
            view = memoryview(buf)[:length]
            view[:] = wide[start - low:start - low + length]
            data = view
        return data

    def _stale(self, detail: str) -> errors.StaleObject:
        return self._report_stale(f"{self.what}: the archive changed while the member was open",
                                  detail)

"""Per-handle object writer: streamed through AIS's append/flush protocol, else staged locally.

One :class:`ObjectWriter` per file handle open for writing. What it holds is one of:
- nothing yet: the existing object's content, untouched; the first write picks what follows;
- a :class:`~aisfs.stream_upload.StreamUpload` while writes arrive at the end of the file;
- a :class:`~aisfs.staged_upload.StagedUpload` after a write anywhere but the end, or a
  truncate to a non-zero size: the content so far moves into a local spill file (the existing
  object is downloaded first) and is PUT whole at flush. If parts were already streamed, the
  partial object is flushed and read back: until close it is visible in AIS with the bytes
  written so far (documented in the README).
``flush()`` makes AIS hold exactly what was written.

Errors are latched (see ``write_target.py``): after a failed append, flush or upload every later
call on the handle raises the same error, and nothing partial is left visible (an abandoned
append session stays an invisible work file on the target until AIS's space clean-up removes it).

Concurrency: trio thread only; one ``trio.Lock`` per handle serializes writes, truncates and
flushes, because each of them awaits network calls. A write that only joins the part being
filled awaits nothing and runs without the lock while nobody holds it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from .aisapi import AisApi, Spawn
from .budget import MemoryBudget
from .config import MountConfig
from .objects import MTIME_KEY
from .spill import SpillArea
from .staged_upload import StagedUpload
from .stream_upload import StreamUpload
from .write_target import WriteTarget


@dataclass(slots=True)
class Uploaded:
    size: int
    mtime_ns: int
    version: str


class ObjectWriter:
    """Invariants: at most one of ``_stream`` and ``_staged`` is set; with neither, nothing was
    written yet, the content is the existing object's (``_base_size`` bytes) and the handle is
    not ``dirty``. ``dirty``: the handle holds bytes (or a truncate, or a creation) that AIS
    does not have yet. ``modified_ns``: when this handle last changed the content (created or
    truncated it, wrote); ``mtime_ns`` is the mtime the next upload stores, and what the file
    shows meanwhile: the one utimens set, else ``modified_ns`` (so attributes the kernel got
    before the upload stay true after it).

    Concurrency: every field changes under ``lock``, except what the lock-free write at the end
    of a stream changes (the stream's buffer and size, ``dirty``, ``modified_ns``);
    ``discarded`` and ``pending_mtime_ns`` are set by the open-files layer between awaits.
    """

    def __init__(
        self, aio: AisApi, bucket: str, key: str, config: MountConfig, spill: SpillArea,
        budget: MemoryBudget, spawn: Spawn, *, exists: bool | None, size: int, truncate: bool,
    ) -> None:
        self.target = WriteTarget(aio, spawn, bucket, key, exists=exists,
                                  empty_in_ais=exists is True and size == 0)
        self.config = config
        self.spill = spill
        self.budget = budget
        self.lock = trio.Lock()
        self.discarded = False  # unlinked while open: nothing is uploaded
        self.pending_mtime_ns: int | None = None  # set by utimens: stored with the upload
        self._base_size = size
        self._stream: StreamUpload | None = None
        self._staged: StagedUpload | None = None
        self.dirty = False
        self.modified_ns = time.time_ns()
        if truncate or not exists:
            self._stream = self._new_stream(0, continues_existing=False)
            self.dirty = True  # creating or truncating makes (an empty) object even without writes

    @property
    def what(self) -> str:
        return self.target.what

    @property
    def size(self) -> int:
        content = self._stream or self._staged
        return self._base_size if content is None else content.size

    @property
    def mtime_ns(self) -> int:
        return self.modified_ns if self.pending_mtime_ns is None else self.pending_mtime_ns

    @property
    def staged(self) -> bool:
        """Whether the content is in a spill file (a read of this handle is answered from it)."""
        return self._staged is not None

    @property
    def part(self) -> int:
        """The size of the parts a stream sends now."""
        return self._stream.part if self._stream is not None else self.config.write_part_size

    @property
    def buffered(self) -> int:
        """Bytes held in memory, not yet sent (also read by the metrics thread: one read of
        ``_stream``, which the trio thread may set to None meanwhile)."""
        stream = self._stream
        return stream.buffered if stream is not None else 0

    @property
    def error(self) -> BaseException | None:
        return self.target.error

    def _new_stream(self, size: int, *, continues_existing: bool) -> StreamUpload:
        return StreamUpload(self.target, self.config, self.budget, size=size,
                            continues_existing=continues_existing)

    # ------------------------------------------------------------------ operations

    async def write(self, off: int, data: bytes) -> int:
        stream = self._stream
        if (stream is not None and off == stream.size and self.target.error is None
                and stream.fits(len(data)) and not self.lock.locked()):
            # Most writes of a stream only join the part being filled. Nothing is awaited
            # here, so nothing can interleave; the lock's two trio checkpoints cost more than
            # such a write itself (py-spy of the FUSE thread in a 1 MiB dd: ~10% of its time).
            stream.join(data)
            self.dirty = True
            self.modified_ns = time.time_ns()
            return len(data)
        async with self.lock:
            self.target.check()
            try:
                await self._write_locked(off, data)
            except Exception as exc:  # noqa: BLE001 - the handle's error from now on
                raise self.target.latch(exc) from None
            self.dirty = True
            self.modified_ns = time.time_ns()
            return len(data)

    async def _write_locked(self, off: int, data: bytes) -> None:
        if self._stream is None and self._staged is None:
            if off == self._base_size:
                self._stream = self._new_stream(off, continues_existing=off > 0)
            else:
                await self._to_staged()
        if self._stream is not None and off != self._stream.size:
            await self._to_staged()
        if self._staged is not None:
            await self._staged.write(off, data)
        else:
            assert self._stream is not None
            await self._stream.write(data)

    async def truncate(self, size: int) -> None:
        async with self.lock:
            self.target.check()
            try:
                await self._truncate_locked(size)
            except Exception as exc:  # noqa: BLE001 - the handle's error from now on
                raise self.target.latch(exc) from None

    async def _truncate_locked(self, size: int) -> None:
        untouched = self._stream is None and self._staged is None
        if size == self.size and not untouched:
            return
        if self._stream is not None:
            await self._stream.settle()
        if size == 0:
            # A new, empty content: a streamed session is abandoned (never flushed, so never
            # visible), a staged file is dropped.
            if self._staged is not None:
                self._staged.close()
                self._staged = None
            if self._stream is not None:
                self._stream.restart(size=0, continues_existing=False)
            else:
                self._stream = self._new_stream(0, continues_existing=False)
        else:
            if self._staged is None:
                await self._to_staged()
            assert self._staged is not None
            await self._staged.truncate(size)
        self.dirty = True
        self.modified_ns = time.time_ns()

    async def read(self, off: int, size: int) -> bytes:
        """Bytes of a staged handle (what this handle wrote, not yet uploaded)."""
        assert self._staged is not None
        return await self._staged.read(off, size)

    async def flush(self) -> Uploaded | None:
        """Make AIS hold exactly what was written. Returns what was uploaded, if anything."""
        async with self.lock:
            self.target.check()
            if self.discarded or not self.dirty:
                return None
            try:
                result = await self._upload()
            except Exception as exc:  # noqa: BLE001 - the handle's error from now on
                raise self.target.latch(exc) from None
            self.dirty = False
            self.target.exists = True
            return result

    @property
    def failed(self) -> bool:
        """Whether an error is latched: nothing more of this handle's will reach AIS."""
        return self.target.error is not None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        if self._staged is not None:
            self._staged.close()
            self._staged = None

    # ------------------------------------------------------------------ internals

    async def _to_staged(self) -> None:
        """Move the content so far into a spill file."""
        target = self.target
        if self._stream is not None:
            await self._stream.settle()
        staged = StagedUpload(target, await target.aio.run_blocking(self.spill.create))
        try:
            if self._stream is None:
                await staged.copy_object(target.key, self._base_size, self.config.write_part_size)
            else:
                await self._stream.move_into(staged)
        except BaseException:
            staged.close()
            raise
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._staged = staged

    async def _upload(self) -> Uploaded:
        if self._stream is not None:
            await self._stream.settle()
        mtime_ns = self.mtime_ns
        custom = {MTIME_KEY: str(mtime_ns).encode()}
        if self._staged is not None:
            version = await self._staged.upload(custom)
        elif self._stream is not None:
            version = await self._stream.upload(custom)
        else:
            raise AssertionError("a writer with nothing written is never dirty")
        self.pending_mtime_ns = None
        self.target.empty_in_ais = self.size == 0
        return Uploaded(self.size, mtime_ns, version)

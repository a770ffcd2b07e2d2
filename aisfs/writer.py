"""Per-handle object writer: streamed through AIS's append/flush protocol, else staged locally.

Modes of one handle:
- STREAM: writes arrive at the end of the file. Bytes collect in a buffer of ``write_part_size``,
  doubling per part up to ``write_part_max`` while the file grows and the shared write budget
  allows; each full buffer is one APPEND with the latest handle (ais-protocol.md §1.e). ``flush()``
  appends the rest and sends FLUSH: only then does the object change in AIS, atomically. A file
  that ends within one part is a single PUT instead. Overwriting an existing object streams into a
  hidden temporary object (``.aisfs-tmp.*``) that is renamed over the target at flush, because an
  append session on an existing name would continue its old content. Memory per handle is bounded
  by two parts (one filling, one being sent).
- STAGED: after a write anywhere but the end, or a truncate to a non-zero size, the content lives
  in a local spill file (the existing object is downloaded first) and is PUT whole at flush.
  If parts were already streamed, the partial object is flushed and read back: until close it is
  visible in AIS with the bytes written so far (documented in the README).

Errors are latched: after a failed append, flush or upload every later call on the handle raises
the same error, and nothing partial is left visible (an abandoned append session stays an invisible
work file on the target until AIS's space clean-up removes it).

Concurrency: trio thread only; one ``trio.Lock`` per handle serializes writes, truncates and
flushes, because each of them awaits network calls. A write that only joins the part being
filled awaits nothing and runs without the lock while nobody holds it. Spill-file I/O runs in
worker threads.
"""

from __future__ import annotations

import enum
import errno
import functools
import logging
import os
import secrets
import time
from dataclasses import dataclass

import trio

from . import errors
from .aisapi import AisApi, Spawn
from .budget import MemoryBudget
from .config import TMP_MARKER, MountConfig
from .objects import MTIME_KEY, Chunks
from .xattrs import CUSTOM_MD_MAX, custom_size

log = logging.getLogger(__name__)

class Mode(enum.Enum):
    LAZY = "lazy"  # existing content, nothing written yet: the first write picks a mode
    STREAM = "stream"
    STAGED = "staged"


class SpillArea:
    """The spill directory and the cap on bytes staged by all handles together."""

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.used = 0

    def create(self) -> SpillFile:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        name = os.path.join(self.path, f"spill-{os.getpid()}-{secrets.token_hex(8)}")
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(name)  # nothing to clean up after a crash; the fd keeps the data
        return SpillFile(self, fd)


class SpillFile:
    def __init__(self, area: SpillArea, fd: int) -> None:
        self.area = area
        self.fd = fd
        self.size = 0

    def _account(self, new_size: int) -> None:
        grow = new_size - self.size
        if grow > 0 and self.area.used + grow > self.area.limit:
            raise errors.PosixError(
                errno.ENOSPC, f"spill area {self.area.path} is full ({self.area.limit} bytes)"
            )
        self.area.used += grow
        self.size = new_size

    def pwrite(self, off: int, data: bytes | memoryview) -> None:
        """Blocking: call from a worker thread (the accounting is done by the caller first)."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, off)
            view = view[n:]
            off += n

    def pread(self, off: int, size: int) -> bytes:
        return os.pread(self.fd, size, off)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            self.area.used -= self.size
            self.size = 0


@dataclass(slots=True)
class Uploaded:
    size: int
    mtime_ns: int
    version: str


class ObjectWriter:
    def __init__(
        self, aio: AisApi, bucket: str, key: str, config: MountConfig, spill: SpillArea,
        budget: MemoryBudget, spawn: Spawn, *, exists: bool | None, size: int, truncate: bool,
        had_custom_mtime: bool = False,
    ) -> None:
        self.aio = aio
        self.spawn = spawn
        # The APPEND in flight: the next part fills while it is sent (at most two parts held).
        self._inflight: trio.Event | None = None
        self.bucket = bucket
        self.key = key
        self.config = config
        self.part = config.write_part_size
        self.budget = budget
        self._grown = 0  # budget bytes this handle holds for parts above write_part_size
        self.spill = spill
        # An object with this name is in AIS (to be replaced at flush); None: not known yet,
        # asked only when a file outgrows one part (a small file is one PUT either way).
        self.exists = exists
        # AIS holds an empty object under this name (opened at size 0, or made so by a flush of
        # this handle, as ``dd`` does when it closes its first descriptor): streamed in place.
        self.empty_in_ais = exists is True and size == 0
        self.had_custom_mtime = had_custom_mtime
        self.lock = trio.Lock()
        self.error: BaseException | None = None
        self.discarded = False  # unlinked while open: nothing is uploaded
        self.pending_mtime_ns: int | None = None
        self._reset_stream(continue_existing=False)
        if truncate or not exists:
            self.mode = Mode.STREAM
            self.size = 0
            self.dirty = True  # creating or truncating makes (an empty) object even without writes
        else:
            self.mode = Mode.LAZY
            self.size = size
            self.dirty = False
        self.staged: SpillFile | None = None

    @property
    def what(self) -> str:
        return f"ais://{self.bucket}/{self.key}"

    def _reset_stream(self, *, continue_existing: bool) -> None:
        # Bytes not yet appended, kept as the objects pyfuse3 handed us: no copy until sent.
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.sent = 0  # bytes appended in the current session
        self.handle = ""
        self.session_key: str | None = None
        self.continues_existing = continue_existing  # the session starts from the object's bytes

    # ------------------------------------------------------------------ public operations

    async def write(self, off: int, data: bytes) -> int:
        if (self.mode is Mode.STREAM and off == self.size and self.error is None
                and self.buffered + len(data) < self.part and not self.lock.locked()):
            # Most writes of a stream only join the part being filled. Nothing is awaited
            # here, so nothing can interleave; the lock's two trio checkpoints cost more than
            # such a write itself (py-spy of the FUSE thread in a 1 MiB dd: ~10% of its time).
            self._join_part(data)
            self.dirty = True
            return len(data)
        async with self.lock:
            self._check()
            try:
                if self.mode is Mode.LAZY:
                    if off == self.size:
                        self.mode = Mode.STREAM
                        self._reset_stream(continue_existing=self.size > 0)
                    else:
                        await self._to_staged()
                if self.mode is Mode.STREAM and off != self.size:
                    await self._to_staged()
                if self.mode is Mode.STAGED:
                    await self._staged_write(off, data)
                else:
                    self._join_part(data)
                    while self.buffered >= self.part:
                        await self._send_part()
                self.dirty = True
                return len(data)
            except BaseException as exc:
                self._latch(exc)
                raise

    async def truncate(self, size: int) -> None:
        async with self.lock:
            self._check()
            try:
                if size == self.size and self.mode is not Mode.LAZY:
                    return
                await self._settle()
                if size == 0:
                    # A new, empty content: any streamed session is abandoned (never flushed,
                    # so never visible), a staged file is dropped.
                    if self.staged is not None:
                        self.staged.close()
                        self.staged = None
                    self.mode = Mode.STREAM
                    self._reset_stream(continue_existing=False)
                    self.size = 0
                else:
                    if self.mode is not Mode.STAGED:
                        await self._to_staged()
                    assert self.staged is not None
                    self.staged._account(max(self.staged.size, size))
                    await self.aio.run_blocking(lambda: os.ftruncate(self.staged.fd, size))  # type: ignore[union-attr]
                    self.staged.size = size
                    self.size = size
                self.dirty = True
            except BaseException as exc:
                self._latch(exc)
                raise

    async def read(self, off: int, size: int) -> bytes:
        """Bytes of a staged handle (what this handle wrote, not yet uploaded)."""
        assert self.staged is not None
        staged = self.staged
        end = min(off + size, self.size)
        if off >= end:
            return b""
        data = await self.aio.run_blocking(lambda: staged.pread(off, end - off))
        return data + b"\0" * (end - off - len(data))

    async def flush(self) -> Uploaded | None:
        """Make AIS hold exactly what was written. Returns what was uploaded, if anything."""
        async with self.lock:
            self._check()
            if self.discarded or not self.dirty:
                return None
            try:
                result = await self._upload()
            except BaseException as exc:
                self._latch(exc)
                raise
            self.dirty = False
            self.exists = True
            return result

    def close(self) -> None:
        self._release_grown()
        if self.staged is not None:
            self.staged.close()
            self.staged = None
        self.buffer = []
        self.buffered = 0

    # ------------------------------------------------------------------ internals

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def _latch(self, exc: BaseException) -> None:
        if self.error is not None or not isinstance(exc, Exception):
            return
        if not isinstance(exc, errors.AisFsError | OSError):
            log.error("%s: unexpected error while writing", self.what, exc_info=exc)
            exc = errors.AisError(f"unexpected {type(exc).__name__}", 0, self.what)
        log.warning("%s: write failed, failing this file handle from now on: %s", self.what, exc)
        self.error = exc

    async def _send_part(self) -> None:
        """Start the APPEND of one part in the background, after the previous one finished."""
        await self._settle()
        if self.session_key is None:
            if self.exists is None:
                self.exists = await self._exists(self.key)
            if self.exists and not self.continues_existing and not self.empty_in_ais:
                head, _, tail = self.key.rpartition("/")
                name = f"{TMP_MARKER}{tail[:80]}.{secrets.token_hex(6)}"
                self.session_key = f"{head}/{name}" if head else name
            else:
                self.session_key = self.key
        chunk = self._take(self.part)
        self._grow_part()
        done = trio.Event()
        self._inflight = done
        key = self.session_key

        async def send() -> None:
            try:
                self.handle = await self.aio.append(self.bucket, key, self.handle, chunk)
                self.sent += len(chunk)
            except Exception as exc:  # noqa: BLE001 - delivered to the next call on the handle
                self._latch(exc)
            except BaseException:
                self._latch(errors.AisError("upload interrupted by shutdown", 0, self.what))
                raise
            finally:
                done.set()

        self.spawn(send)

    def _grow_part(self) -> None:
        """Double the part of a file that keeps growing: each APPEND costs AIS a fixed few ms
        and it copies bodies in 32 KiB pieces, so fewer, larger parts stream faster (measured:
        32 MiB parts write ~25% faster than 8 MiB). All writers together stay in the budget."""
        bigger = min(self.part * 2, self.config.write_part_max)
        extra = 2 * (bigger - self.part)  # one part filling, one in flight
        if extra > 0 and self.budget.try_reserve(extra):
            self._grown += extra
            self.part = bigger

    def _release_grown(self) -> None:
        self.budget.release(self._grown)
        self._grown = 0

    def _join_part(self, data: bytes) -> None:
        """Add a write at the end of the stream to the part being filled (kept, not copied)."""
        self.buffer.append(data)
        self.buffered += len(data)
        self.size += len(data)

    def _take(self, limit: int) -> Chunks:
        """Up to ``limit`` buffered bytes, as a body that is not copied again."""
        parts: list[bytes] = []
        taken = 0
        while self.buffer and taken < limit:
            piece = self.buffer[0]
            if taken + len(piece) > limit:
                cut = limit - taken
                parts.append(piece[:cut])
                self.buffer[0] = piece[cut:]
                taken = limit
                break
            parts.append(self.buffer.pop(0))
            taken += len(piece)
        self.buffered -= taken
        return Chunks(parts)

    async def _settle(self) -> None:
        """Wait for the APPEND in flight; raise its error, if any."""
        if self._inflight is not None:
            await self._inflight.wait()
            self._inflight = None
        self._check()

    async def _to_staged(self) -> None:
        """Move the content so far into a spill file."""
        await self._settle()
        staged = await self.aio.run_blocking(self.spill.create)
        try:
            if self.mode is Mode.LAZY or (self.mode is Mode.STREAM and self.continues_existing
                                          and self.sent == 0):
                base = self.size - self.buffered if self.mode is Mode.STREAM else self.size
                await self._download(staged, self.key, base)
                if self.mode is Mode.STREAM:
                    staged._account(self.size)
                    pending = b"".join(self.buffer)
                    await self.aio.run_blocking(lambda: staged.pwrite(base, pending))
            elif self.sent > 0:
                # Bytes already sit in an append session that cannot be read: flush it (the
                # partial object becomes visible) and read it back.
                assert self.session_key is not None
                if self.buffer:
                    self.handle = await self.aio.append(
                        self.bucket, self.session_key, self.handle, self._take(self.buffered)
                    )
                await self.aio.flush(self.bucket, self.session_key, self.handle)
                log.info("%s: non-sequential write after %d streamed bytes: staging locally",
                         self.what, self.size)
                await self._download(staged, self.session_key, self.size)
                if self.session_key != self.key:
                    await self.aio.delete_object(self.bucket, self.session_key)
            else:
                pending = b"".join(self.buffer)
                staged._account(len(pending))
                await self.aio.run_blocking(lambda: staged.pwrite(0, pending))
        except BaseException:
            staged.close()
            raise
        self.staged = staged
        self.mode = Mode.STAGED
        self._reset_stream(continue_existing=False)
        # No parts to fill any more: the grown part's share of the budget goes back at once.
        self._release_grown()
        self.part = self.config.write_part_size

    async def _download(self, staged: SpillFile, key: str, size: int) -> None:
        staged._account(size)
        pos = 0
        while pos < size:
            length = min(self.part, size - pos)
            result = await self.aio.get_range(self.bucket, key, pos, length)
            if len(result.data) != length:
                raise errors.StaleObject(f"ais://{self.bucket}/{key} changed while staging")
            await self.aio.run_blocking(functools.partial(staged.pwrite, pos, result.data))
            pos += length

    async def _exists(self, key: str) -> bool:
        try:
            await self.aio.head_object(self.bucket, key)
            return True
        except errors.NotFound:
            return False

    async def _delete_if_present(self, key: str) -> None:
        try:
            await self.aio.delete_object(self.bucket, key)
        except errors.NotFound:
            pass

    async def _custom_of(self, key: str) -> dict[str, bytes]:
        try:
            return (await self.aio.head_object(self.bucket, key)).custom
        except errors.NotFound:
            return {}

    async def _staged_write(self, off: int, data: bytes) -> None:
        assert self.staged is not None
        staged = self.staged
        staged._account(max(staged.size, off + len(data)))
        await self.aio.run_blocking(lambda: staged.pwrite(off, data))
        self.size = max(self.size, off + len(data))

    async def _upload(self) -> Uploaded:
        await self._settle()
        mtime_ns = self.pending_mtime_ns or time.time_ns()
        custom = {MTIME_KEY: str(mtime_ns).encode()}
        if self.mode is Mode.STAGED:
            assert self.staged is not None
            if self.empty_in_ais:
                await self._delete_if_present(self.key)  # see below: not replaced, deleted
            props = await self.aio.put_file(self.bucket, self.key, self.staged.fd, self.size,
                                            custom)
            version = props.version
        elif self.mode is Mode.LAZY:
            raise AssertionError("a LAZY writer is never dirty")
        elif self.sent == 0 and not self.continues_existing:
            props = await self.aio.put_object(self.bucket, self.key, b"".join(self.buffer), custom)
            version = props.version
        else:
            if self.session_key is None:
                self.session_key = self.key  # continuing an existing object, one short part
            if self.buffer:
                self.handle = await self.aio.append(
                    self.bucket, self.session_key, self.handle, self._take(self.buffered)
                )
            # An empty object under the name is deleted, not replaced: a FLUSH over an existing
            # object makes the target's filesystem write the whole new file back at once (ext4
            # on a rename over a file: measured 0.6 s per GiB), and there is nothing to keep
            # atomic. This is what ``dd`` meets: closing its first descriptor makes the object.
            replaces_empty = self.empty_in_ais and self.session_key == self.key
            # A new object takes the name: it has no custom metadata, so carry the old xattrs
            # over, as an overwrite in place would keep them.
            new_object = self.session_key != self.key or replaces_empty
            carried = await self._custom_of(self.key) if new_object else {}
            if replaces_empty:
                await self._delete_if_present(self.key)
            await self.aio.flush(self.bucket, self.session_key, self.handle)
            if self.session_key != self.key:
                await self.aio.rename_object(self.bucket, self.session_key, self.key)
            # FLUSH ignores custom-metadata headers: set the mtime (and carried keys) now,
            # unless that would overflow AIS's limit, which would drop every key.
            now_custom = {} if new_object else await self._custom_of(self.key)
            wanted = {**carried, **custom}
            if custom_size({**now_custom, **wanted}) <= CUSTOM_MD_MAX:
                await self.aio.set_custom(self.bucket, self.key, wanted)
            else:
                log.warning("%s: custom metadata is full; mtime not stored", self.what)
            version = ""
        self.had_custom_mtime = True
        self.pending_mtime_ns = None
        self.empty_in_ais = self.size == 0
        if self.mode is Mode.STREAM:
            # Later writes on this handle continue the object now in AIS.
            self._reset_stream(continue_existing=True)
        return Uploaded(self.size, mtime_ns, version)

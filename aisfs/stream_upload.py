"""A streaming upload: writes at the end of the file, sent through AIS's append/flush protocol.

Bytes collect in a buffer of ``write_part_size``, doubling per part up to ``write_part_max`` while
the file grows and the shared write budget allows; each full buffer is one APPEND with the latest
handle (ais-protocol.md §1.e). The upload appends the rest and sends FLUSH: only then does the
object change in AIS, atomically. A file that ends within one part is a single PUT instead.
Overwriting an existing object streams into a hidden temporary object (``.aisfs-tmp.*``) that is
renamed over the target at upload, because an append session on an existing name would continue
its old content. Memory is bounded by two parts (one filling, one being sent).

Concurrency: trio thread only. The handle calls every method under its lock, except ``join`` of a
write that fits the part being filled while nobody holds the lock (it awaits nothing). One APPEND
at a time runs as a task of its own (``spawn``): it sets ``handle`` and ``sent``, or latches its
error on the target; ``settle`` waits for it before anything else touches the session.
"""

from __future__ import annotations

import logging
import secrets

import trio

from . import errors
from .budget import MemoryBudget
from .config import TMP_MARKER, MountConfig
from .objects import Chunks
from .staged_upload import StagedUpload
from .write_target import WriteTarget
from .xattrs import CUSTOM_MD_MAX, custom_size

log = logging.getLogger(__name__)


class StreamUpload:
    """Invariants:
    - ``size`` (the file's size) is the bytes the session starts from (the object's, when
      ``continues_existing``, else 0) plus every byte joined since;
    - ``buffered`` is the length of the bytes in ``buffer``, not yet appended; ``sent`` is the
      bytes appended in this session, under ``session_key`` (None until the first APPEND picks
      it: the name itself, or a temporary name when an existing object is replaced);
    - at most one APPEND is in flight (``_inflight``), so at most two parts are held;
    - ``_grown`` is the write budget this upload holds for parts above ``write_part_size``
      (``part`` is larger by that much / 2); ``close`` gives it back.
    """

    def __init__(
        self, target: WriteTarget, config: MountConfig, budget: MemoryBudget, *, size: int,
        continues_existing: bool,
    ) -> None:
        self.target = target
        self.config = config
        self.budget = budget
        self.part = config.write_part_size
        self._grown = 0
        # The APPEND in flight: the next part fills while it is sent.
        self._inflight: trio.Event | None = None
        self.size = size
        self.restart(size=size, continues_existing=continues_existing)

    def restart(self, *, size: int, continues_existing: bool) -> None:
        """Start a new session: ``continues_existing``, from the object now in AIS (after an
        upload); else from nothing (after a truncate to 0). A session not flushed is abandoned:
        it never becomes visible. The part size and its budget stay."""
        # Bytes not yet appended, kept as the objects pyfuse3 handed us: no copy until sent.
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.sent = 0
        self.handle = ""
        self.session_key: str | None = None
        self.continues_existing = continues_existing
        self.size = size

    def fits(self, n: int) -> bool:
        """Whether ``n`` more bytes only join the part being filled (nothing to send)."""
        return self.buffered + n < self.part

    def join(self, data: bytes) -> None:
        """Add a write at the end of the stream to the part being filled (kept, not copied)."""
        self.buffer.append(data)
        self.buffered += len(data)
        self.size += len(data)

    async def write(self, data: bytes) -> None:
        """A write at the end: joined, and every full part sent."""
        self.join(data)
        while self.buffered >= self.part:
            await self._send_part()

    async def settle(self) -> None:
        """Wait for the APPEND in flight; raise the handle's latched error, if any."""
        if self._inflight is not None:
            await self._inflight.wait()
            self._inflight = None
        self.target.check()

    async def _send_part(self) -> None:
        """Start the APPEND of one part in the background, after the previous one finished."""
        await self.settle()
        target = self.target
        if self.session_key is None:
            if target.exists is None:
                target.exists = await target.object_exists(target.key)
            if target.exists and not self.continues_existing and not target.empty_in_ais:
                head, _, tail = target.key.rpartition("/")
                name = f"{TMP_MARKER}{tail[:80]}.{secrets.token_hex(6)}"
                self.session_key = f"{head}/{name}" if head else name
            else:
                self.session_key = target.key
        chunk = self._take(self.part)
        self._grow_part()
        done = trio.Event()
        self._inflight = done
        key = self.session_key

        async def send() -> None:
            try:
                self.handle = await target.aio.append(target.bucket, key, self.handle, chunk)
                self.sent += len(chunk)
            except Exception as exc:  # noqa: BLE001 - delivered to the next call on the handle
                target.latch(exc)
            except BaseException:
                target.latch(errors.AisError("upload interrupted by shutdown", 0, target.what))
                raise
            finally:
                done.set()

        target.spawn(send)

    def _grow_part(self) -> None:
        """Double the part of a file that keeps growing: each APPEND costs AIS a fixed few ms
        and it copies bodies in 32 KiB pieces, so fewer, larger parts stream faster (measured:
        32 MiB parts write ~25% faster than 8 MiB). All writers together stay in the budget."""
        bigger = min(self.part * 2, self.config.write_part_max)
        extra = 2 * (bigger - self.part)  # one part filling, one in flight
        if extra > 0 and self.budget.try_reserve(extra):
            self._grown += extra
            self.part = bigger

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

    async def _append_rest(self) -> None:
        """APPEND what is buffered (in the foreground), after the part in flight."""
        assert self.session_key is not None
        if self.buffer:
            target = self.target
            self.handle = await target.aio.append(
                target.bucket, self.session_key, self.handle, self._take(self.buffered)
            )

    async def move_into(self, staged: StagedUpload) -> None:
        """Copy the content so far into ``staged`` (the handle stages from now on)."""
        await self.settle()
        target = self.target
        if self.continues_existing and self.sent == 0:
            base = self.size - self.buffered
            await staged.copy_object(target.key, base, self.part)
            await staged.write(base, b"".join(self.buffer))
        elif self.sent > 0:
            # Bytes already sit in an append session that cannot be read: flush it (the
            # partial object becomes visible) and read it back.
            assert self.session_key is not None
            await self._append_rest()
            await target.aio.flush(target.bucket, self.session_key, self.handle)
            log.info("%s: non-sequential write after %d streamed bytes: staging locally",
                     target.what, self.size)
            await staged.copy_object(self.session_key, self.size, self.part)
            if self.session_key != target.key:
                await target.aio.delete_object(target.bucket, self.session_key)
        else:
            await staged.write(0, b"".join(self.buffer))

    async def upload(self, custom: dict[str, bytes]) -> str:
        """Make the object hold the stream (a PUT, or the session's FLUSH), with ``custom``
        metadata; a new session continues it. Returns its version ("" when AIS does not say)."""
        await self.settle()
        target = self.target
        if self.sent == 0 and not self.continues_existing:
            props = await target.aio.put_object(target.bucket, target.key,
                                                b"".join(self.buffer), custom)
            version = props.version
        else:
            await self._flush_session(custom)
            version = ""
        # Later writes on this handle continue the object now in AIS.
        self.restart(size=self.size, continues_existing=True)
        return version

    async def _flush_session(self, custom: dict[str, bytes]) -> None:
        target = self.target
        aio, bucket, key = target.aio, target.bucket, target.key
        if self.session_key is None:
            self.session_key = key  # continuing an existing object, one short part
        await self._append_rest()
        # An empty object under the name is deleted, not replaced: a FLUSH over an existing
        # object makes the target's filesystem write the whole new file back at once (ext4
        # on a rename over a file: measured 0.6 s per GiB), and there is nothing to keep
        # atomic. This is what ``dd`` meets: closing its first descriptor makes the object.
        replaces_empty = target.empty_in_ais and self.session_key == key
        # A new object takes the name: it has no custom metadata, so carry the old xattrs
        # over, as an overwrite in place would keep them.
        new_object = self.session_key != key or replaces_empty
        carried = await target.custom_of(key) if new_object else {}
        if replaces_empty:
            await target.delete_if_present(key)
        await aio.flush(bucket, self.session_key, self.handle)
        if self.session_key != key:
            await aio.rename_object(bucket, self.session_key, key)
        # FLUSH ignores custom-metadata headers: set the mtime (and carried keys) now,
        # unless that would overflow AIS's limit, which would drop every key.
        now_custom = {} if new_object else await target.custom_of(key)
        wanted = {**carried, **custom}
        if custom_size({**now_custom, **wanted}) <= CUSTOM_MD_MAX:
            await aio.set_custom(bucket, key, wanted)
        else:
            log.warning("%s: custom metadata is full; mtime not stored", target.what)

    def close(self) -> None:
        """Drop the buffered bytes and give the grown parts' budget back (at once: a handle
        that stages has no parts to fill any more)."""
        self.budget.release(self._grown)
        self._grown = 0
        self.part = self.config.write_part_size
        self.buffer = []
        self.buffered = 0

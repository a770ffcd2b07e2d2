"""A streaming upload: writes at the end of the file, sent part by part while the file grows.

Bytes collect in a buffer of ``write_part_size``, doubling per part up to ``write_part_max`` while
the file grows and the shared write budget allows. A file that ends within one part is a single
PUT. A bigger one is an AIS multipart upload: each full buffer is one part, and the upload
completes it, which replaces the object atomically (nothing of it is visible before). Every step
of a multipart upload can be retried without duplicating a byte (see ``client.py``): a part is
held until AIS took it, so a reset connection, a timeout or a 5xx costs a retry, not the file.

Continuing an existing object (``O_APPEND``, or writes after an upload of this handle) uses AIS's
append/flush protocol (docs/architecture.md, "The path of a write"), which copies the object into
the session on the server; an APPEND is never repeated (it would duplicate bytes), so a failed one
fails the file.
An object stored in chunks (what a multipart upload makes) cannot be continued so: AIS v1.5.0's
APPEND copies only its first chunk. Such an object is continued by a multipart upload whose first
parts are its own bytes, read back part by part.

Memory is bounded by two parts (one filling, one being sent).

Concurrency: trio thread only. The handle calls every method under its lock, except ``join`` of a
write that fits the part being filled while nobody holds the lock (it awaits nothing). One part
at a time is sent as a task of its own (``spawn``): it sets ``handle``, ``parts`` and ``sent``,
or latches its error on the target; ``settle`` waits for it before anything else touches the
upload.
"""

from __future__ import annotations

import logging

import trio

from . import errors
from .budget import MemoryBudget
from .config import MountConfig
from .objects import Chunks
from .staged_upload import StagedUpload
from .write_target import WriteTarget
from .xattrs import CUSTOM_MD_MAX, custom_size

log = logging.getLogger(__name__)


class StreamUpload:
    """Invariants:
    - ``size`` (the file's size) is ``base`` (the bytes of the object the upload continues, 0
      when it starts from nothing) plus every byte joined since;
    - ``buffered`` is the length of the bytes in ``buffer``, not yet sent; ``sent`` is the bytes
      sent in this upload (the base's bytes copied into parts included);
    - ``upload_id`` is set once the first part of a multipart upload is about to be sent, and
      ``parts`` counts the parts AIS took; ``handle`` is the append session's, set once its
      first APPEND returned; never both;
    - at most one part is in flight (``_inflight``), so at most two parts are held;
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
        # The part in flight: the next one fills while it is sent.
        self._inflight: trio.Event | None = None
        self.size = size
        # Whether the object continued is stored in chunks; None: not known yet.
        self.base_chunked: bool | None = None
        self.upload_id: str | None = None
        self.restart(size=size, continues_existing=continues_existing)

    def restart(self, *, size: int, continues_existing: bool) -> None:
        """Start anew: ``continues_existing``, from the object now in AIS (after an upload);
        else from nothing (after a truncate to 0). An upload not completed is abandoned: it
        never becomes visible (a multipart upload is dropped in the background). The part size
        and its budget stay."""
        self._abandon()
        # Bytes not yet sent, kept as the objects pyfuse3 handed us: no copy until sent.
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.sent = 0
        self.parts = 0
        self.handle = ""
        self.base = size if continues_existing else 0
        self.size = size

    @property
    def continues_existing(self) -> bool:
        return self.base > 0

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
        """Wait for the part in flight; raise the handle's latched error, if any."""
        if self._inflight is not None:
            await self._inflight.wait()
            self._inflight = None
        self.target.check()

    # ------------------------------------------------------------------ sending parts

    async def _appends(self) -> bool:
        """Whether this upload continues the object through an append session (else it is a
        multipart upload, started here when it was not yet)."""
        if self.handle:
            return True
        if self.upload_id is not None:
            return False
        target = self.target
        if self.continues_existing:
            if self.base_chunked is None:
                self.base_chunked = await target.is_chunked()
            if not self.base_chunked:
                return True
        self.upload_id = await target.aio.start_upload(target.bucket, target.key)
        if self.continues_existing:
            await self._copy_base()
        return False

    async def _copy_base(self) -> None:
        """The first parts of a multipart upload that continues a chunked object: its bytes."""
        target = self.target
        assert self.upload_id is not None
        log.info("%s: continuing an object stored in chunks: its %d bytes are read back",
                 target.what, self.base)
        while self.sent < self.base:
            length = min(self.part, self.base - self.sent)
            result = await target.aio.get_range(target.bucket, target.key, self.sent, length)
            if len(result.data) != length:
                raise errors.StaleObject(f"{target.what} changed while continuing it")
            await target.aio.put_part(target.bucket, target.key, self.upload_id, self.parts + 1,
                                      bytes(result.data))
            self.parts += 1
            self.sent += length

    async def _send_part(self) -> None:
        """Start sending one part in the background, after the previous one arrived."""
        await self.settle()
        target = self.target
        appends = await self._appends()
        chunk = self._take(self.part)
        self._grow_part()
        done = trio.Event()
        self._inflight = done
        upload_id = self.upload_id

        async def send() -> None:
            try:
                if appends:
                    self.handle = await target.aio.append(target.bucket, target.key,
                                                          self.handle, chunk)
                else:
                    assert upload_id is not None
                    await target.aio.put_part(target.bucket, target.key, upload_id,
                                              self.parts + 1, chunk)
                    self.parts += 1
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
        """Double the part of a file that keeps growing: each request costs AIS a fixed few ms
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

    async def _send_rest(self, appends: bool) -> None:
        """Send what is buffered (in the foreground), after the part in flight."""
        if not self.buffer:
            return
        target = self.target
        chunk = self._take(self.buffered)
        if appends:
            self.handle = await target.aio.append(target.bucket, target.key, self.handle, chunk)
        else:
            assert self.upload_id is not None
            await target.aio.put_part(target.bucket, target.key, self.upload_id, self.parts + 1,
                                      chunk)
            self.parts += 1
        self.sent += len(chunk)

    # ------------------------------------------------------------------ making it the object

    async def move_into(self, staged: StagedUpload) -> None:
        """Copy the content so far into ``staged`` (the handle stages from now on)."""
        await self.settle()
        target = self.target
        if self.sent == 0 and self.upload_id is None and self.continues_existing:
            await staged.copy_object(target.key, self.base, self.part)
            await staged.write(self.base, b"".join(self.buffer))
        elif self.sent > 0:
            # Bytes already sit in an upload that cannot be read: the object is made of them
            # (the partial content becomes visible) and read back.
            self.base_chunked = await self._commit({})
            log.info("%s: non-sequential write after %d streamed bytes: staging locally",
                     target.what, self.size)
            await staged.copy_object(target.key, self.size, self.part)
        else:
            await staged.write(0, b"".join(self.buffer))

    async def upload(self, custom: dict[str, bytes]) -> str:
        """Make the object hold the stream (a PUT, the multipart upload's completion, or the
        append session's FLUSH), with ``custom`` metadata; a new upload continues it. Returns
        its version ("" when AIS does not say)."""
        await self.settle()
        target = self.target
        if self.sent == 0 and self.upload_id is None and not self.continues_existing:
            data = b"".join(self.buffer)
            props = await target.with_room(
                lambda: target.aio.put_object(target.bucket, target.key, data, custom))
            version, chunked = props.version, False
        else:
            version, chunked = "", await self._commit(custom)
        # Later writes on this handle continue the object now in AIS.
        self.restart(size=self.size, continues_existing=True)
        self.base_chunked = chunked
        return version

    async def _commit(self, custom: dict[str, bytes]) -> bool:
        """Send the rest and make the upload (or append session) the object's content, with
        ``custom`` added to its custom metadata. Returns whether the object is now stored in
        chunks (a multipart upload's)."""
        target = self.target
        aio, bucket, key = target.aio, target.bucket, target.key
        appends = await self._appends()
        await self._send_rest(appends)
        if appends:
            if self.handle:
                await aio.flush(bucket, key, self.handle)
                self.handle = ""
            # FLUSH ignores custom-metadata headers (and keeps the object's): set them now,
            # unless that would overflow AIS's limit, which would drop every key.
            wanted, now_custom = custom, await target.custom_of(key)
        else:
            assert self.upload_id is not None
            # The completed object has no custom metadata: the replaced one's xattrs are
            # carried over, as an overwrite in place would keep them.
            try:
                carried = (await aio.head_object(bucket, key)).custom
            except errors.NotFound:
                carried = {}
                # A name without an object may still be a directory on a target's disk (AIS
                # keeps one after the last object under name/ is gone), where the completion
                # would fail and lose the parts; deleting the name removes it.
                await target.delete_if_present(key)
            await aio.complete_upload(bucket, key, self.upload_id, self.parts, self.sent)
            self.upload_id = None
            wanted, now_custom = {**carried, **custom}, {}
        if wanted and custom_size({**now_custom, **wanted}) <= CUSTOM_MD_MAX:
            await aio.set_custom(bucket, key, wanted)
        elif wanted:
            log.warning("%s: custom metadata is full; mtime not stored", target.what)
        return not appends

    def _abandon(self) -> None:
        """Drop a multipart upload not completed (in the background: nothing waits for it)."""
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        target = self.target

        async def abort() -> None:
            try:
                await target.aio.abort_upload(target.bucket, target.key, upload_id)
            except errors.AisFsError as exc:
                log.info("%s: dropping multipart upload %s: %s", target.what, upload_id, exc)

        target.spawn(abort)

    def close(self) -> None:
        """Drop the buffered bytes (and an upload not completed), and give the grown parts'
        budget back (at once: a handle that stages has no parts to fill any more)."""
        self._abandon()
        self.budget.release(self._grown)
        self._grown = 0
        self.part = self.config.write_part_size
        self.buffer = []
        self.buffered = 0

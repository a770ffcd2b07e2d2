"""A staged upload: the file's whole content in a local spill file, PUT whole at upload.

A handle stages after a write anywhere but the end of the file, or a truncate to a non-zero size
(see ``writer.py``): the content so far (the existing object's, or what was streamed) is copied
into a spill file first, then changed there in place.

Concurrency: trio thread only, called by the handle under its lock; the spill file's I/O runs in
worker threads (``AsyncAis.run_blocking``), one call at a time per file.
"""

from __future__ import annotations

import functools

from . import errors
from .spill import SpillFile
from .write_target import WriteTarget
from .xattrs import CUSTOM_MD_MAX, custom_size


class StagedUpload:
    """Invariants: ``size`` (the file's size) is the spill file's accounted size; the spill file
    holds the content of every byte below it (a hole reads as zeros)."""

    def __init__(self, target: WriteTarget, spill: SpillFile) -> None:
        self.target = target
        self.spill = spill

    @property
    def size(self) -> int:
        return self.spill.size

    async def copy_object(self, key: str, size: int, part: int) -> None:
        """Fill the first ``size`` bytes from the object ``key``, in GETs of ``part`` bytes."""
        target, spill = self.target, self.spill
        spill.resize(max(spill.size, size))
        pos = 0
        while pos < size:
            length = min(part, size - pos)
            result = await target.aio.get_range(target.bucket, key, pos, length)
            if len(result.data) != length:
                raise errors.StaleObject(f"ais://{target.bucket}/{key} changed while staging")
            await target.aio.run_blocking(functools.partial(spill.pwrite, pos, result.data))
            pos += length

    async def write(self, off: int, data: bytes | memoryview) -> None:
        spill = self.spill
        spill.resize(max(spill.size, off + len(data)))
        await self.target.aio.run_blocking(lambda: spill.pwrite(off, data))

    async def truncate(self, size: int) -> None:
        spill = self.spill
        spill.resize(size)
        await self.target.aio.run_blocking(lambda: spill.truncate(size))

    async def read(self, off: int, size: int) -> bytes:
        """Bytes of the staged content (what the handle wrote, not yet uploaded)."""
        spill = self.spill
        end = min(off + size, spill.size)
        if off >= end:
            return b""
        data = await self.target.aio.run_blocking(lambda: spill.pread(off, end - off))
        return data + b"\0" * (end - off - len(data))

    async def upload(self, custom: dict[str, bytes]) -> str:
        """PUT the whole content (a PUT keeps the replaced object's custom metadata, and adds
        ``custom``); returns the new object's version."""
        target = self.target
        carried: dict[str, bytes] = {}
        if target.empty_in_ais:
            # An empty object is deleted, not replaced: AIS replacing a file makes an ext4
            # target write the whole new file back at once (0.6 s per GiB measured), and there
            # is no content to keep atomic. Its xattrs are carried over by hand.
            carried = {k: v for k, v in (await target.custom_of(target.key)).items()
                       if k not in custom}
            await target.delete_if_present(target.key)
        spill = self.spill
        props = await target.with_room(
            lambda: target.aio.put_file(target.bucket, target.key, spill.fd, spill.size, custom))
        if carried and custom_size({**carried, **custom}) <= CUSTOM_MD_MAX:
            await target.aio.set_custom(target.bucket, target.key, carried)
        return props.version

    def close(self) -> None:
        self.spill.close()

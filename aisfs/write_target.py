"""What a write handle and its uploads share: the object's name, what AIS holds under it, and the
handle's latched error.

Errors are latched: after a failed append, flush or upload every later call on the handle raises
the same error (see ``writer.py``), logged once, at WARNING, when it is latched.

Concurrency: trio thread only. The handle's operations (under its lock) and its streaming upload's
APPEND task touch these fields; the APPEND task only latches an error.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from . import errors
from .aisapi import AisApi, Spawn

log = logging.getLogger(__name__)
T = TypeVar("T")


class WriteTarget:
    """The object one handle writes.

    Invariants: ``error``, once set, never changes; ``exists`` is None until asked (only when a
    file outgrows one part: a small file is one PUT either way), then whether an object with
    this name is in AIS (to be replaced at upload), and True after an upload; ``empty_in_ais``:
    AIS holds an empty object under this name (opened at size 0, or made so by an upload of this
    handle), which an upload deletes rather than replaces.
    """

    def __init__(
        self, aio: AisApi, spawn: Spawn, bucket: str, key: str, *, exists: bool | None,
        empty_in_ais: bool,
    ) -> None:
        self.aio = aio
        self.spawn = spawn
        self.bucket = bucket
        self.key = key
        self.exists = exists
        self.empty_in_ais = empty_in_ais
        self.error: BaseException | None = None

    @property
    def what(self) -> str:
        return f"ais://{self.bucket}/{self.key}"

    def check(self) -> None:
        """Raise the latched error, if any."""
        if self.error is not None:
            raise self.error

    def latch(self, exc: BaseException) -> BaseException:
        """Remember the handle's first error and return what the failing call raises: every
        later call on the handle fails with the same error. It is logged here, once, at WARNING
        with the object and the reason; the calls that fail with it log it at DEBUG only (its
        ``log_level``). An unexpected exception becomes EIO (logged with its traceback), an
        OSError (the spill file's) a ``PosixError`` with its errno. A cancellation or other
        BaseException is not latched, nor an error after the first: they are returned as
        they are."""
        if self.error is not None or not isinstance(exc, Exception):
            return exc
        error: errors.AisFsError
        if isinstance(exc, errors.AisFsError):
            error = exc
        elif isinstance(exc, OSError):
            error = errors.PosixError(exc.errno or errno.EIO, f"{self.what}: {exc}")
        else:
            log.error("%s: unexpected error while writing", self.what, exc_info=exc)
            error = errors.AisError(f"unexpected {type(exc).__name__}", 0, self.what)
        log.warning("%s: write failed, failing this file handle from now on: %s", self.what,
                    error)
        error.log_level = logging.DEBUG
        self.error = error
        return error

    async def object_exists(self, key: str) -> bool:
        try:
            await self.aio.head_object(self.bucket, key)
            return True
        except errors.NotFound:
            return False

    async def delete_if_present(self, key: str) -> None:
        try:
            await self.aio.delete_object(self.bucket, key)
        except errors.NotFound:
            pass

    async def is_chunked(self) -> bool:
        """Whether the object is stored in chunks (made by a multipart upload)."""
        try:
            return (await self.aio.head_object(self.bucket, self.key)).chunked
        except errors.NotFound:
            return False

    async def with_room(self, put: Callable[[], Awaitable[T]]) -> T:
        """Run ``put`` (a PUT of the object); when a directory a target's disk still holds
        under the name is in its way (AIS keeps one after the last object under name/ is
        gone), delete the name, which removes that directory, and run it once more."""
        try:
            return await put()
        except errors.DirectoryInTheWay as exc:
            log.info("%s: %s; removing the emptied directory and writing again", self.what, exc)
            await self.delete_if_present(self.key)
            return await put()

    async def custom_of(self, key: str) -> dict[str, bytes]:
        try:
            return (await self.aio.head_object(self.bucket, key)).custom
        except errors.NotFound:
            return {}

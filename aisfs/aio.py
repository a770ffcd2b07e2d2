"""Async facade over :class:`aisfs.client.AisClient` for the trio thread: the mount's
implementation of :class:`aisfs.aisapi.AisApi`.

This is the only module of the package that calls ``trio.to_thread.run_sync``: every blocking
HTTP call runs in a worker thread under one dedicated ``CapacityLimiter`` sized to the client's
connection pool, so the trio thread never blocks and the pool never overflows; every other
blocking call (the writer's spill-file I/O, the kernel notifications of the FUSE adapter, the
mount's readiness check) goes through :meth:`AsyncAis.run_blocking`. Arguments and results are
plain values; worker threads touch no shared state. Cancellation: an HTTP call already in a
thread is abandoned (``abandon_on_cancel``) and finishes on its own within the client's timeouts.
Object bytes received are reported to the mount's observer, when there is one.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import threading
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import trio

from . import errors
from .archives import ArchiveContents, contents_from_listing
from .client import AisClient
from .getbatch import BatchItem, TarFormatError
from .httpreply import Download
from .inline import InlineRequests
from .member_stream import MemberScanner, needs_central_directory
from .objects import Body, ListEntry, ListPage, ObjectProps, RangeResult, RecvBuffer
from .observer import Observer

P = ParamSpec("P")
T = TypeVar("T")


class MemberStream:
    """One archive's members in archive order, from one streamed GET of the archive; each
    :meth:`next` reads one member in a worker thread. One caller at a time.

    Invariant: the body is closed exactly once, by :meth:`close` or, when that came while a
    worker was reading (a cancelled ``next``), by that worker when it is done."""

    def __init__(self, aio: AsyncAis, body: Download, scanner: MemberScanner) -> None:
        self._aio = aio
        self._body = body
        self._scanner = scanner
        self.version = body.headers.get("Ais-Version", "")
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False

    async def next(self, max_size: int, max_bytes: int,
                   max_members: int) -> list[tuple[str, bytearray | None, int]]:
        """The next members, (listed path, bytes or None when over ``max_size``, size) each,
        read in one worker-thread call until ``max_bytes`` or ``max_members`` are read; [] at
        the end.
        ``BadArchive`` when the bytes are not such an archive."""
        with self._lock:
            if self._closed:
                raise errors.Transient("archive stream closed", 0, self._scanner.archive)
            self._busy = True
        return await self._aio._run(self._next_blocking, max_size, max_bytes, max_members)

    def _next_blocking(self, max_size: int, max_bytes: int,
                       max_members: int) -> list[tuple[str, bytearray | None, int]]:
        items: list[tuple[str, bytearray | None, int]] = []
        read = 0
        try:
            while read < max_bytes and len(items) < max_members:
                item = self._scanner.next(max_size)
                if item is None:
                    break
                items.append(item)
                read += item[2]
            return items
        except (TarFormatError, ValueError) as exc:
            raise errors.BadArchive(f"not a readable archive: {exc}", 0,
                                    self._scanner.archive) from None
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    self._body.close(reuse=False)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._busy:
                self._body.close(reuse=False)


class AsyncAis:
    def __init__(self, client: AisClient, observer: Observer | None = None,
                 inline: InlineRequests | None = None) -> None:
        self.client = client
        self.observer = observer
        self.limiter = trio.CapacityLimiter(client.config.max_connections)
        # Small GETs and PUTs made by the trio thread itself, when it can (see inline.py).
        self.inline = inline

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        call = functools.partial(fn, *args, **kwargs) if kwargs else functools.partial(fn, *args)
        return await trio.to_thread.run_sync(call, limiter=self.limiter, abandon_on_cancel=True)

    async def list_buckets(self) -> list[str]:
        return await self._run(self.client.list_buckets)

    async def head_bucket(self, bucket: str) -> None:
        await self._run(self.client.head_bucket, bucket)

    async def create_bucket(self, bucket: str) -> None:
        await self._run(self.client.create_bucket, bucket)

    async def destroy_bucket(self, bucket: str) -> None:
        await self._run(self.client.destroy_bucket, bucket)

    async def list_objects_page(
        self, bucket: str, prefix: str, *, recursive: bool = False, page_size: int = 0,
        uuid: str = "", continuation_token: str = "", start_after: str = "", convert: bool = True,
    ) -> ListPage:
        return await self._run(
            self.client.list_objects_page, bucket, prefix, recursive=recursive,
            page_size=page_size, uuid=uuid, continuation_token=continuation_token,
            start_after=start_after, convert=convert,
        )

    async def list_all(
        self, bucket: str, prefix: str, *, recursive: bool = False, limit: int | None = None
    ) -> list[ListEntry]:
        """Every entry under ``prefix``, all pages (in one worker thread), in the cluster's
        lexicographic order; with ``limit``, paging stops once more than ``limit`` are seen."""

        def collect() -> list[ListEntry]:
            entries: list[ListEntry] = []
            for entry in self.client.iter_objects(bucket, prefix, recursive=recursive):
                entries.append(entry)
                if limit is not None and len(entries) > limit:
                    break
            return entries

        return await self._run(collect)

    async def head_object(self, bucket: str, key: str) -> ObjectProps:
        return await self._run(self.client.head_object, bucket, key)

    async def get_range(
        self, bucket: str, key: str, start: int, length: int, into: RecvBuffer | None = None
    ) -> RangeResult:
        result = None
        if self.inline is not None:
            result = await self.inline.get_range(bucket, key, start, length, into)
        if result is None:
            result = await self._run(self.client.get_range, bucket, key, start, length, into)
        if self.observer is not None:
            self.observer.read_bytes(len(result.data))
        return result

    async def put_object(
        self, bucket: str, key: str, data: bytes | memoryview,
        custom: dict[str, bytes] | None = None,
    ) -> ObjectProps:
        if self.inline is not None:
            props = await self.inline.put_object(bucket, key, data, custom)
            if props is not None:
                return props
        return await self._run(self.client.put_object, bucket, key, data, custom)

    async def put_file(
        self, bucket: str, key: str, fd: int, size: int, custom: dict[str, bytes] | None = None
    ) -> ObjectProps:
        return await self._run(self.client.put_file, bucket, key, fd, size, custom)

    async def append(self, bucket: str, key: str, handle: str, data: Body) -> str:
        return await self._run(self.client.append, bucket, key, handle, data)

    async def flush(self, bucket: str, key: str, handle: str) -> None:
        await self._run(self.client.flush, bucket, key, handle)

    async def start_upload(self, bucket: str, key: str) -> str:
        return await self._run(self.client.start_upload, bucket, key)

    async def put_part(self, bucket: str, key: str, upload_id: str, number: int,
                       data: Body) -> None:
        await self._run(self.client.put_part, bucket, key, upload_id, number, data)

    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: int,
                              size: int) -> None:
        await self._run(self.client.complete_upload, bucket, key, upload_id, parts, size)

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._run(self.client.abort_upload, bucket, key, upload_id)

    async def delete_object(self, bucket: str, key: str) -> None:
        await self._run(self.client.delete_object, bucket, key)

    async def rename_object(self, bucket: str, key: str, new_key: str) -> None:
        await self._run(self.client.rename_object, bucket, key, new_key)

    async def set_custom(
        self, bucket: str, key: str, custom: dict[str, bytes], *, replace: bool = False
    ) -> None:
        await self._run(self.client.set_custom, bucket, key, custom, replace=replace)

    async def list_archive(self, bucket: str, key: str) -> ArchiveContents:
        """The archive ``key`` and its member tree (listed and built in a worker thread)."""

        def fetch() -> ArchiveContents:
            return contents_from_listing(bucket, key, self.client.list_archive(bucket, key))

        return await self._run(fetch)

    async def get_member(
        self, bucket: str, key: str, member: str, into: RecvBuffer | None = None
    ) -> memoryview:
        return await self._run(self.client.get_member, bucket, key, member, into)

    async def get_member_range(
        self, bucket: str, key: str, member: str, start: int, length: int,
        into: RecvBuffer | None = None,
    ) -> memoryview:
        return await self._run(self.client.get_member_range, bucket, key, member, start, length,
                               into)

    async def open_member_stream(self, bucket: str, key: str, size: int) -> MemberStream:
        """The members of the ``size``-byte archive ``key`` (a format
        ``member_stream.streamable`` names) in archive order, from one streamed GET of the
        whole object (a zip's central directory read first)."""
        central, version = None, ""
        if needs_central_directory(key):
            central, version = await self._run(self.client.zip_central_directory, bucket, key,
                                               size)
        body = await self._run(self.client.open_archive, bucket, key)
        stream = MemberStream(self, body, MemberScanner(key, body, central))
        if central is not None and stream.version != version:
            stream.close()
            raise errors.Transient("the archive changed after its central directory was read",
                                   0, f"ais://{bucket}/{key}")
        return stream

    async def get_batch(
        self, bucket: str, names: Sequence[str], *, max_size: int,
        sizes: Sequence[int] | None = None, deliver: Callable[[BatchItem], None],
    ) -> None:
        """See :meth:`aisfs.aisapi.AisApi.get_batch`. The objects are asked of each owning
        target in a request of its own, all at once (``AisClient.by_owner``: the owner then
        assembles its part from its own disks). A worker thread reads each reply and hands its
        items over a channel to this task, which calls ``deliver``: so nothing is delivered once
        this task is cancelled, and the workers stop at their next item. A worker does not wait
        for the trio thread to take an item (``run_sync_soon``, not ``from_thread.run_sync``):
        waiting cost a GIL hand-over both ways per file; and items that arrive while the trio
        thread has not yet taken the ones before go over together, with one wake-up of it
        (its wake-ups, at one per file, slowed the FUSE requests it serves meanwhile). A request
        that fails raises here once the others ended (their items delivered)."""
        if not names:
            return
        owned = self.client.by_owner(bucket, names)
        groups = owned if owned is not None else [list(range(len(names)))]
        token = trio.lowlevel.current_trio_token()
        send, receive = trio.open_memory_channel[BatchItem](math.inf)
        stop = threading.Event()
        running = len(groups)

        arrived: collections.deque[BatchItem] = collections.deque()  # not yet in the channel
        handing_over = threading.Lock()  # held while a hand-over is due on the trio thread

        def hand_over() -> None:  # on the trio thread
            handing_over.release()  # (first: an item appended from now on is handed over anew)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while arrived:
                    send.send_nowait(arrived.popleft())  # (unbounded: never WouldBlock)

        def read_reply(group: list[int]) -> None:
            items = self.client.get_batch(
                bucket, [names[i] for i in group], max_size=max_size,
                sizes=None if sizes is None else [sizes[i] for i in group],
                colocated=owned is not None)
            try:
                for item in items:
                    if stop.is_set():
                        return  # cancelled: the reply's connection is closed
                    item.index = group[item.index]
                    arrived.append(item)
                    if handing_over.acquire(blocking=False):
                        token.run_sync_soon(hand_over)
            finally:
                items.close()

        failure: errors.AisFsError | None = None

        async def worker(group: list[int]) -> None:
            nonlocal failure, running
            try:
                await self._run(read_reply, group)
            except errors.AisFsError as exc:
                # (raised out of the nursery it would come wrapped in a group)
                failure = failure or exc
            finally:
                running -= 1
                if not running:
                    send.close()  # after every item (the items came before the thread's end)

        try:
            async with trio.open_nursery() as nursery:
                for group in groups:
                    nursery.start_soon(worker, group)
                async with receive:
                    async for item in receive:
                        deliver(item)
        finally:
            stop.set()
        if failure is not None:
            raise failure

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run a non-HTTP blocking call (local file I/O of the writer) off the trio thread."""
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=False)

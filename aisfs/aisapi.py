"""The async AIS interface the layers (namespace, reader, writer, fs) are typed against.

:class:`AisApi` is what a layer may ask of the cluster; ``aio.AsyncAis`` implements it over the
HTTP client for a mount, ``tests/fakeais.py`` implements it in memory for unit tests. A layer
imports this module, never ``aio`` or ``client``, so it depends on no HTTP machinery and any
implementation can be passed in (``mount.py`` builds the real one). :data:`Spawn` is the other
thing every layer is handed: how it starts a background task.

Errors: every method raises :mod:`aisfs.errors` exceptions only (``NotFound``,
``BucketNotFound``, ``RangeNotSatisfiable``, ``Transient``, ...), never an HTTP library's.

Concurrency: the methods are called from the trio thread; an implementation must not block it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from .archives import ArchiveContents
from .getbatch import BatchItem
from .objects import Body, ListEntry, ListPage, ObjectProps, RangeResult, RecvBuffer

T = TypeVar("T")

# Starts a background task in the mount's nursery (the tasks catch their own errors).
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], None]


class MemberStream(Protocol):
    """One archive's members in archive order (see ``AisApi.open_member_stream``)."""

    version: str  # the archive version being read

    async def next(self, max_size: int, max_bytes: int,
                   max_members: int) -> list[tuple[str, bytearray | None, int]]:
        """The next members, (path as listed, bytes or None when over ``max_size``, size) each,
        until about ``max_bytes`` or ``max_members``; [] at the end; ``BadArchive`` when the
        bytes are not such an archive."""
        ...

    def close(self) -> None:
        """Stop reading (at once, or when a ``next`` in flight is done)."""
        ...


class AisApi(Protocol):
    """One AIS cluster as the layers see it: buckets, listings, objects (``ais://`` only)."""

    async def list_buckets(self) -> list[str]:
        """The names of the cluster's ais:// buckets, sorted."""
        ...

    async def head_bucket(self, bucket: str) -> None:
        """Raise ``BucketNotFound`` when the bucket does not exist."""
        ...

    async def create_bucket(self, bucket: str) -> None: ...

    async def destroy_bucket(self, bucket: str) -> None: ...

    async def list_objects_page(
        self, bucket: str, prefix: str, *, recursive: bool = False, page_size: int = 0,
        uuid: str = "", continuation_token: str = "", start_after: str = "", convert: bool = True,
    ) -> ListPage:
        """One page of a listing, in the cluster's lexicographic order, of the names after
        ``start_after`` when given. Non-recursive pages hold virtual-directory entries
        (``"prefix/child/"``); ``page_size`` 0 is the cluster's maximum. With ``convert=False``
        the entries are left as AIS's JSON in ``raw`` (for :func:`objects.list_entries`)."""
        ...

    async def list_all(
        self, bucket: str, prefix: str, *, recursive: bool = False, limit: int | None = None
    ) -> list[ListEntry]:
        """Every entry under ``prefix``, all pages, in order; with ``limit``, paging stops once
        more than ``limit`` are seen."""
        ...

    async def head_object(self, bucket: str, key: str) -> ObjectProps:
        """The object's properties; ``NotFound`` when it does not exist."""
        ...

    async def get_range(
        self, bucket: str, key: str, start: int, length: int, into: RecvBuffer | None = None
    ) -> RangeResult:
        """Bytes [start, start+length), shorter at the end; ``RangeNotSatisfiable`` when start
        is at or past the end. With ``into`` (at least ``length`` bytes) the bytes land there
        and the result's ``data`` is a view of it."""
        ...

    async def put_object(
        self, bucket: str, key: str, data: bytes | memoryview,
        custom: dict[str, bytes] | None = None,
    ) -> ObjectProps:
        """Create or replace the object; ``custom`` holds at most one key."""
        ...

    async def put_file(
        self, bucket: str, key: str, fd: int, size: int, custom: dict[str, bytes] | None = None
    ) -> ObjectProps:
        """PUT the first ``size`` bytes of an open file (read with pread, offset untouched)."""
        ...

    async def append(self, bucket: str, key: str, handle: str, data: Body) -> str:
        """Append to the object's pending append session (``handle`` "" starts one); returns
        the handle for the next append or the flush. Nothing is visible until the flush."""
        ...

    async def flush(self, bucket: str, key: str, handle: str) -> None:
        """Make the appended bytes the object's content (atomic replace)."""
        ...

    async def start_upload(self, bucket: str, key: str) -> str:
        """A new multipart upload of ``key``; returns its ID."""
        ...

    async def put_part(self, bucket: str, key: str, upload_id: str, number: int,
                       data: Body) -> None:
        """Part ``number`` (from 1) of an upload; retried after a failure without ever sending
        a part that arrived a second time."""
        ...

    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: int,
                              size: int) -> None:
        """Make parts 1..``parts`` (``size`` bytes) the object's content, atomically (with no
        custom metadata: AIS keeps none of a replaced object's)."""
        ...

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (NotFound when it is gone already)."""
        ...

    async def delete_object(self, bucket: str, key: str) -> None: ...

    async def rename_object(self, bucket: str, key: str, new_key: str) -> None: ...

    async def set_custom(
        self, bucket: str, key: str, custom: dict[str, bytes], *, replace: bool = False
    ) -> None:
        """Merge ``custom`` into the object's custom metadata, or replace it whole."""
        ...

    async def list_archive(self, bucket: str, key: str) -> ArchiveContents:
        """The archive object ``key`` and the tree of its members as AIS lists them (``readable``
        False when AIS cannot read it); ``NotFound`` when the object does not exist."""
        ...

    async def get_member(
        self, bucket: str, key: str, member: str, into: RecvBuffer | None = None
    ) -> memoryview:
        """The whole of one member of the archive ``key`` (in ``into`` when it is big enough);
        ``NotFound`` when the archive or the member is not there, ``BadArchive`` when AIS
        cannot read the archive."""
        ...

    async def get_member_range(
        self, bucket: str, key: str, member: str, start: int, length: int,
        into: RecvBuffer | None = None,
    ) -> memoryview:
        """Bytes [start, start+length) of one member, a range that must lie within it (in
        ``into`` when it is big enough)."""
        ...

    async def open_member_stream(self, bucket: str, key: str, size: int) -> MemberStream:
        """The members of the ``size``-byte archive ``key`` (a format
        ``member_stream.streamable`` names) in archive order, from one read of its stored bytes
        (a zip's members as far as its central directory confirms them)."""
        ...

    async def get_batch(
        self, bucket: str, names: Sequence[str], *, max_size: int,
        sizes: Sequence[int] | None = None, deliver: Callable[[BatchItem], None],
    ) -> None:
        """Whole objects ``names`` of ``bucket`` by Get-Batch: one request per target that owns
        some of them, when the cluster map tells (each served by that owner), else one.

        ``deliver(item)`` runs in the trio thread once per name, as each object arrives (a file
        can be served before the batch ends), in the order of ``names`` within each request
        (``item.index`` says which name); it returns when every name was delivered.
        ``item.data`` is the object's bytes, a buffer the receiver keeps; or ``item.error`` is
        ``NotFound`` (no such object) or ``getbatch.NotFetched`` (the batch did not deliver it:
        the stream broke or ended early, which AIS does after 8 missing objects; or its size is
        not ``sizes[i]``, a change since the listing, or over ``max_size``): fetch that one on
        its own. A failure of a request itself raises (``Transient``, ``BucketNotFound``, ...)
        once the other requests ended, nothing of it delivered. Memory: one object in flight
        per request besides what ``deliver`` keeps; the caller bounds a batch by the names it
        picks (their sizes). Latency: AIS sends a reply's last few KiB ~100 ms after the rest,
        so a scan keeps the next batch in flight. Not checked: the objects' versions (a
        Get-Batch reply carries none). Cancelled: no ``deliver`` runs after the cancel."""
        ...

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Run a non-HTTP blocking call (the writer's local file I/O) off the trio thread."""
        ...

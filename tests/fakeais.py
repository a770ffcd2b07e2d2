"""An in-memory AIS cluster behind :class:`aisfs.aisapi.AisApi`, for fast unit tests of one layer.

It keeps what AIS keeps (buckets; objects with bytes, version, write time and custom metadata;
append sessions invisible until their flush) and answers as AIS does where the layers depend on
it: listings in lexicographic order, paged after a continuation token, non-recursive ones with
virtual directories; unconverted listing pages carry AIS's JSON (the size a string, times in
TIME_FORMAT, custom metadata as ``"[k:v ...]"``) and converted ones go through the real decoder;
the first APPEND to an existing object continues its content; errors are :mod:`aisfs.errors`.

Every call is counted (``calls``) and the object calls logged (``log``); ``ranges`` records each
``get_range``. The knobs below delay or fail calls, so a test can hold the world still at a chosen
point. The end-to-end tests run against the real cluster; this fake is for one module at a time.

Concurrency: trio thread only (the test's); a knob's gate is a ``trio.Event``.
"""

from __future__ import annotations

import io
import itertools
import os
import posixpath
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from aisfs import errors
from aisfs.aisapi import AisApi
from aisfs.archives import (
    ENTRY_IN_ARCH,
    ENTRY_IS_ARCHIVE,
    ArchiveContents,
    contents_from_listing,
    is_archive,
)
from aisfs.getbatch import BatchItem, NotFetched
from aisfs.member_stream import member_path
from aisfs.objects import (
    LS_ENTRY_IS_DIR,
    Body,
    Chunks,
    ListEntry,
    ListPage,
    ObjectProps,
    RangeResult,
    RecvBuffer,
    list_entries,
    mtime_from_custom,
)

T = TypeVar("T")

# The write time of objects a test stores without naming one (2023-11-14T22:13:20Z).
STORED_NS = 1_700_000_000 * 1_000_000_000


@dataclass(slots=True)
class FakeObject:
    """One object. ``data`` None: only the size is kept, the content reads as zero bytes."""

    size: int
    data: bytes | None = None
    version: str = "1"
    atime_ns: int = STORED_NS  # AIS's only time: set by every write
    custom: dict[str, bytes] = field(default_factory=dict)
    chunked: bool = False  # made by a multipart upload

    def content(self) -> bytes:
        return self.data if self.data is not None else bytes(self.size)


def as_json(entry: ListEntry, custom: dict[str, bytes] | None = None) -> dict[str, Any]:
    """A listed entry the way AIS sends it (TIME_FORMAT: nine fraction digits)."""
    if entry.is_dir:
        return {"name": entry.name, "flags": LS_ENTRY_IS_DIR}
    sec, ns = divmod(entry.mtime_ns, 1_000_000_000)
    atime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{ns:09d}Z"
    # AIS sends the size as a JSON string.
    doc: dict[str, Any] = {"name": entry.name, "size": str(entry.size), "version": entry.version,
                           "atime": atime}
    if custom:
        doc["custom-md"] = "[" + " ".join(f"{k}:{v.decode('latin-1')}"
                                          for k, v in sorted(custom.items())) + "]"
    return doc


def archive_members(key: str, data: bytes) -> list[tuple[str, bytes]] | None:
    """What AIS reads out of an archive object: its members (name as stored, bytes) in archive
    order, directories left out; None when AIS cannot read it."""
    try:
        if key.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                return [(i.filename, zf.read(i)) for i in zf.infolist() if not i.is_dir()]
        raw = data
        if key.endswith(".tar.lz4"):
            import lz4.frame

            raw = lz4.frame.decompress(data)
        gz = key.endswith((".tgz", ".tar.gz"))
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz" if gz else "r:") as tf:
            out = []
            for info in tf:
                if info.isdir():
                    continue
                f = tf.extractfile(info) if info.isreg() else None
                out.append((info.name, f.read() if f is not None else b""))
            return out
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return None


def _data_of(body: Body) -> bytes:
    if isinstance(body, Chunks):
        return b"".join(body)
    if callable(body):
        stream = body()
        return bytes(stream.read())
    return bytes(body)


class FakeAis:
    """Buckets of objects; ``FakeAis({"key": size or bytes})`` fills bucket ``b``."""

    def __init__(
        self, objects: dict[str, int | bytes] | None = None, buckets: tuple[str, ...] = ("b",)
    ) -> None:
        self.buckets = set(buckets)
        self.objects: dict[tuple[str, str], FakeObject] = {}
        for key, content in (objects or {}).items():
            self.store(key, content)
        # Append sessions: handle -> (bucket, key, bytes so far). A handle is good once.
        self.sessions: dict[str, tuple[str, str, bytes]] = {}
        self._handles = itertools.count(1)
        # Multipart uploads in progress: ID -> (bucket, key, parts by number).
        self.uploads: dict[str, tuple[str, str, dict[int, bytes]]] = {}
        self.calls: Counter[str] = Counter()  # method name -> calls
        # ("page", bucket, prefix, recursive, page_size) and ("head", bucket, key), in order.
        self.log: list[tuple[str, ...]] = []
        self.ranges: list[tuple[int, int]] = []  # (start, length) of every get_range
        self.in_flight_ranges = 0  # get_range calls waiting on a delay or gate

        # ---- knobs: listings, heads
        # Non-recursive listings answered verbatim instead of derived from the objects.
        self.raw_listings: dict[tuple[str, str], list[ListEntry]] = {}
        self.max_page: int | None = None  # what page size 0 means (AIS: 10,000)
        self.gate: trio.Event | None = None  # holds list_buckets, pages and heads
        self.later_pages_gate: trio.Event | None = None  # holds every page after the first
        self.fail_later_pages: errors.AisFsError | None = None
        self.fail_probes: errors.AisFsError | None = None  # recursive pages
        self.fail_scans: errors.AisFsError | None = None  # pages with start_after
        # Pages of (prefix, recursive) are answered with what the bucket held when asked, once
        # the event is set.
        self.held_pages: dict[tuple[str, bool], trio.Event] = {}
        # Pages of (prefix, recursive) fail with this error (after their hold, if any).
        self.failed_pages: dict[tuple[str, bool], errors.AisFsError] = {}
        # ---- knobs: ranged GETs
        self.range_delay: Callable[[int, int], float] | None = None  # (start, length) -> s
        self.range_gates: dict[int, trio.Event] | None = None  # start -> gate, when gating is on
        # (start, length) -> an exception to raise after the delay or gate, or None.
        self.fail_range: Callable[[int, int], BaseException | None] | None = None
        self.claimed_size: int | None = None  # the total a range answer claims (None: true)
        self.archive_gate: trio.Event | None = None  # holds archive listings
        self.stream_delay = 0.0  # seconds before each member of a member stream
        self.streamed = 0  # members read by member streams
        # A member stream ends cleanly after this many members, as one of a zip ends at a member
        # it cannot read (None: at the archive's end).
        self.stream_ends_after: int | None = None
        # ---- knobs: Get-Batch
        # Names a batch reports missing though they exist (AIS v1.5.0 does so for an object its
        # map's target does not hold yet, e.g. after a target rejoined, while a GET serves it).
        self.batch_says_missing: set[str] = set()
        # A batch delivers this many members, then nothing until cancelled (AIS v1.5.0 waits
        # 20 s per object of a target that did not start sending its part).
        self.batch_stalls_after: int | None = None
        self.batch_member_delay = 0.0  # seconds before each member of a batch
        # ---- knobs: any call
        self.fail_calls: dict[str, errors.AisFsError] = {}  # method name -> raised every call

    # ------------------------------------------------------------------ test helpers

    def store(
        self, key: str, content: int | bytes, *, bucket: str = "b", version: str | None = None,
        atime_ns: int = STORED_NS, custom: dict[str, bytes] | None = None,
    ) -> FakeObject:
        """Put an object as another client would (no call counted): a size, or bytes. The
        version counts up from the previous one unless given."""
        self.buckets.add(bucket)
        old = self.objects.get((bucket, key))
        if version is None:
            version = str(int(old.version) + 1) if old and old.version.isdigit() else "1"
        obj = (FakeObject(content, None, version, atime_ns, dict(custom or {}))
               if isinstance(content, int)
               else FakeObject(len(content), bytes(content), version, atime_ns,
                               dict(custom or {})))
        self.objects[(bucket, key)] = obj
        return obj

    def content(self, key: str, bucket: str = "b") -> bytes:
        return self.objects[(bucket, key)].content()

    def release_range(self, start: int) -> None:
        """Let the ``get_range`` at ``start`` (now or when it comes) answer."""
        assert self.range_gates is not None
        self.range_gates.setdefault(start, trio.Event()).set()

    def entries(self, bucket: str, prefix: str, recursive: bool) -> list[ListEntry]:
        """What a full listing of ``prefix`` holds, in order."""
        return [entry for entry, _ in self._listing(bucket, prefix, recursive)]

    # ------------------------------------------------------------------ internals

    def _enter(self, method: str) -> None:
        """Count the call; raise its ``fail_calls`` error. No checkpoint, as a worker thread's
        call makes none before it is sent."""
        self.calls[method] += 1
        failure = self.fail_calls.get(method)
        if failure is not None:
            raise failure

    async def _maybe_wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    def _check_bucket(self, bucket: str) -> None:
        if bucket not in self.buckets:
            raise errors.BucketNotFound(f"bucket ais://{bucket} does not exist", 404,
                                        f"ais://{bucket}")

    def _object(self, bucket: str, key: str) -> FakeObject:
        self._check_bucket(bucket)
        obj = self.objects.get((bucket, key))
        if obj is None:
            raise errors.NotFound(f"ais://{bucket}/{key} does not exist", 404,
                                  f"ais://{bucket}/{key}")
        return obj

    def _listing(
        self, bucket: str, prefix: str, recursive: bool
    ) -> list[tuple[ListEntry, dict[str, bytes] | None]]:
        if not recursive and (bucket, prefix) in self.raw_listings:
            return [(e, None) for e in self.raw_listings[(bucket, prefix)]]
        out: dict[str, tuple[ListEntry, dict[str, bytes] | None]] = {}
        for (b, key), obj in sorted(self.objects.items()):
            if b != bucket or not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if not recursive and "/" in rest:
                name = prefix + rest.split("/", 1)[0] + "/"
                out[name] = (ListEntry(name, True), None)
            else:
                mtime = mtime_from_custom(obj.custom) or obj.atime_ns
                out[key] = (ListEntry(key, False, obj.size, mtime, obj.version), obj.custom)
        return [out[k] for k in sorted(out)]

    def _write(self, bucket: str, key: str, data: bytes, custom: dict[str, bytes] | None,
               keep_custom: bool) -> FakeObject:
        """A PUT or a flush: a new version, written now (AIS keeps the old custom metadata)."""
        self._check_bucket(bucket)
        old = self.objects.get((bucket, key))
        merged = dict(old.custom) if old is not None and keep_custom else {}
        merged.update(custom or {})
        version = str(int(old.version) + 1) if old and old.version.isdigit() else "1"
        obj = FakeObject(len(data), data, version, time.time_ns(), merged)
        self.objects[(bucket, key)] = obj
        return obj

    # ------------------------------------------------------------------ buckets

    async def list_buckets(self) -> list[str]:
        self._enter("list_buckets")
        await self._maybe_wait()
        return sorted(self.buckets)

    async def head_bucket(self, bucket: str) -> None:
        self._enter("head_bucket")
        self._check_bucket(bucket)

    async def create_bucket(self, bucket: str) -> None:
        self._enter("create_bucket")
        if bucket in self.buckets:
            raise errors.Conflict(f"bucket ais://{bucket} already exists", 409,
                                  f"ais://{bucket}")
        self.buckets.add(bucket)

    async def destroy_bucket(self, bucket: str) -> None:
        self._enter("destroy_bucket")
        self._check_bucket(bucket)
        self.buckets.discard(bucket)  # with every object in it, as AIS does
        for name in [name for name in self.objects if name[0] == bucket]:
            del self.objects[name]

    # ------------------------------------------------------------------ listings

    async def list_objects_page(
        self, bucket: str, prefix: str, *, recursive: bool = False, page_size: int = 0,
        uuid: str = "", continuation_token: str = "", start_after: str = "", convert: bool = True,
    ) -> ListPage:
        """Pages after the token (the last name of the page before). Counted as "probe" when
        recursive, "list" when not."""
        self._enter("probe" if recursive else "list")
        self.log.append(("page", bucket, prefix, str(recursive), str(page_size)))
        await self._maybe_wait()
        if continuation_token and self.later_pages_gate is not None:
            await self.later_pages_gate.wait()
        if continuation_token and self.fail_later_pages is not None:
            raise self.fail_later_pages
        if recursive and self.fail_probes is not None:
            raise self.fail_probes
        if self.fail_scans is not None and start_after:
            raise self.fail_scans
        self._check_bucket(bucket)
        listed = [(e, c) for e, c in self._listing(bucket, prefix, recursive)
                  if e.name > start_after]
        start = next((i for i, (e, _) in enumerate(listed) if e.name > continuation_token),
                     len(listed)) if continuation_token else 0
        end = start + (page_size or self.max_page or len(listed))
        token = listed[end - 1][0].name if end < len(listed) else ""
        if (prefix, recursive) in self.held_pages:
            await self.held_pages[(prefix, recursive)].wait()
        if (prefix, recursive) in self.failed_pages:
            raise self.failed_pages[(prefix, recursive)]
        raw = [as_json(e, c) for e, c in listed[start:end]]
        if not convert:
            return ListPage([], "u", token, raw)
        return ListPage(list_entries(raw), "u", token)

    async def list_all(self, bucket: str, prefix: str, *, recursive: bool = False,
                       limit: int | None = None) -> list[ListEntry]:
        self._enter("list_all")
        self._check_bucket(bucket)
        entries = list_entries(as_json(e, c) for e, c in self._listing(bucket, prefix, recursive))
        return entries[: limit + 1] if limit is not None else entries

    # ------------------------------------------------------------------ objects

    async def head_object(self, bucket: str, key: str) -> ObjectProps:
        self._enter("head_object")
        self.log.append(("head", bucket, key))
        await self._maybe_wait()
        obj = self._object(bucket, key)
        mtime = mtime_from_custom(obj.custom) or obj.atime_ns
        return ObjectProps(key, obj.size, mtime, obj.version, "", obj.atime_ns, dict(obj.custom),
                           chunked=obj.chunked)

    async def get_range(
        self, bucket: str, key: str, start: int, length: int, into: RecvBuffer | None = None
    ) -> RangeResult:
        """The bytes as of the answer (after any delay or gate), written into ``into``."""
        self._enter("get_range")
        assert length > 0
        assert into is None or len(into) >= length
        self.log.append(("get", bucket, key))
        self.ranges.append((start, length))
        self.in_flight_ranges += 1
        try:
            if self.range_delay is not None:
                await trio.sleep(self.range_delay(start, length))
            if self.range_gates is not None:
                await self.range_gates.setdefault(start, trio.Event()).wait()
        finally:
            self.in_flight_ranges -= 1
        # No checkpoint from here on: like a worker thread whose result is already delivered.
        if self.fail_range is not None:
            exc = self.fail_range(start, length)
            if exc is not None:
                raise exc
        obj = self._object(bucket, key)
        if start >= obj.size:
            raise errors.RangeNotSatisfiable("range not satisfiable", 416, f"ais://{bucket}/{key}")
        piece = obj.content()[start : start + length]
        buf = into if into is not None else bytearray(length)
        buf[: len(piece)] = piece
        total = obj.size if self.claimed_size is None else self.claimed_size
        return RangeResult(memoryview(buf)[: len(piece)], total, obj.version)

    async def put_object(
        self, bucket: str, key: str, data: bytes | memoryview,
        custom: dict[str, bytes] | None = None,
    ) -> ObjectProps:
        self._enter("put_object")
        self.log.append(("put", bucket, key))
        if custom is not None and len(custom) > 1:
            raise ValueError("a PUT carries at most one custom-metadata key")
        obj = self._write(bucket, key, bytes(data), custom, keep_custom=True)
        return ObjectProps(key, obj.size, version=obj.version)

    async def put_file(
        self, bucket: str, key: str, fd: int, size: int, custom: dict[str, bytes] | None = None
    ) -> ObjectProps:
        self._enter("put_file")
        self.log.append(("put", bucket, key))
        if custom is not None and len(custom) > 1:
            raise ValueError("a PUT carries at most one custom-metadata key")
        data = os.pread(fd, size, 0)
        obj = self._write(bucket, key, data + bytes(size - len(data)), custom, keep_custom=True)
        return ObjectProps(key, size, version=obj.version)

    async def append(self, bucket: str, key: str, handle: str, data: Body) -> str:
        """A session's first APPEND (handle "") starts from the object's content, if any."""
        self._enter("append")
        self.log.append(("append", bucket, key))
        self._check_bucket(bucket)
        if handle:
            session = self.sessions.pop(handle, None)
            if session is None or session[:2] != (bucket, key):
                raise errors.InvalidRequest("invalid APPEND handle", 400, f"ais://{bucket}/{key}")
            so_far = session[2]
        else:
            old = self.objects.get((bucket, key))
            # AIS v1.5.0 would start the session from the first chunk alone: never asked.
            assert old is None or not old.chunked, f"APPEND to the chunked ais://{bucket}/{key}"
            so_far = old.content() if old is not None else b""
        new_handle = f"h{next(self._handles)}"
        self.sessions[new_handle] = (bucket, key, so_far + _data_of(data))
        return new_handle

    async def flush(self, bucket: str, key: str, handle: str) -> None:
        self._enter("flush")
        self.log.append(("flush", bucket, key))
        session = self.sessions.pop(handle, None) if handle else None
        if session is None or session[:2] != (bucket, key):
            raise errors.InvalidRequest("invalid APPEND handle", 400, f"ais://{bucket}/{key}")
        self._write(bucket, key, session[2], None, keep_custom=True)

    async def start_upload(self, bucket: str, key: str) -> str:
        self._enter("start_upload")
        self._check_bucket(bucket)
        upload_id = f"u{next(self._handles)}"
        self.uploads[upload_id] = (bucket, key, {})
        return upload_id

    async def put_part(self, bucket: str, key: str, upload_id: str, number: int,
                       data: Body) -> None:
        self._enter("put_part")
        self.log.append(("part", bucket, key, str(number)))
        upload = self.uploads.get(upload_id)
        if upload is None or upload[:2] != (bucket, key):
            raise errors.NotFound(f"{upload_id} does not exist", 404, f"ais://{bucket}/{key}")
        upload[2][number] = _data_of(data)

    async def complete_upload(self, bucket: str, key: str, upload_id: str, parts: int,
                              size: int) -> None:
        self._enter("complete_upload")
        self.log.append(("complete", bucket, key))
        upload = self.uploads.pop(upload_id, None)
        if upload is None or upload[:2] != (bucket, key):
            raise errors.NotFound(f"{upload_id} does not exist", 404, f"ais://{bucket}/{key}")
        if sorted(upload[2]) != list(range(1, parts + 1)):
            raise errors.InvalidRequest("parts must be exactly 1..n", 400, f"ais://{bucket}/{key}")
        self._write(bucket, key, b"".join(upload[2][n] for n in range(1, parts + 1)), None,
                    keep_custom=False).chunked = True

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self._enter("abort_upload")
        if self.uploads.pop(upload_id, None) is None:
            raise errors.NotFound(f"{upload_id} does not exist", 404, f"ais://{bucket}/{key}")

    async def delete_object(self, bucket: str, key: str) -> None:
        self._enter("delete_object")
        self.log.append(("delete", bucket, key))
        self._object(bucket, key)
        del self.objects[(bucket, key)]

    async def rename_object(self, bucket: str, key: str, new_key: str) -> None:
        self._enter("rename_object")
        self.log.append(("rename", bucket, key, new_key))
        self.objects[(bucket, new_key)] = self._object(bucket, key)
        del self.objects[(bucket, key)]

    async def set_custom(
        self, bucket: str, key: str, custom: dict[str, bytes], *, replace: bool = False
    ) -> None:
        self._enter("set_custom")
        self.log.append(("set_custom", bucket, key))
        obj = self._object(bucket, key)
        obj.custom = dict(custom) if replace else {**obj.custom, **custom}

    # ------------------------------------------------------------------ archives

    def _members(self, bucket: str, key: str) -> list[tuple[str, bytes]]:
        obj = self._object(bucket, key)
        members = archive_members(key, obj.content()) if is_archive(key) else None
        if members is None:
            raise errors.BadArchive("cannot read the archive", 400, f"ais://{bucket}/{key}")
        return members

    async def list_archive(self, bucket: str, key: str) -> ArchiveContents:
        """As AIS lists it: member names cleaned (``./a`` is ``a``), sorted, sizes only."""
        self._enter("list_archive")
        self.log.append(("list_archive", bucket, key))
        await self._maybe_wait()
        if self.archive_gate is not None:
            await self.archive_gate.wait()
        obj = self._object(bucket, key)
        entry = as_json(ListEntry(key, False, obj.size, obj.atime_ns, obj.version), obj.custom)
        try:
            members = self._members(bucket, key)
        except errors.BadArchive:
            members = []
        else:
            entry["flags"] = ENTRY_IS_ARCHIVE
        listed = sorted((posixpath.join(key, posixpath.normpath(name)), len(data))
                        for name, data in members)
        raw = [entry] + [{"name": n, "size": str(size), "flags": ENTRY_IN_ARCH}
                         for n, size in listed]
        return contents_from_listing(bucket, key, raw)

    async def get_member(
        self, bucket: str, key: str, member: str, into: RecvBuffer | None = None
    ) -> memoryview:
        """The first member stored under exactly this name (as AIS finds it)."""
        self._enter("get_member")
        self.log.append(("get_member", bucket, key, member))
        for name, data in self._members(bucket, key):
            if name.lstrip("/") == member:
                buf = into if into is not None and len(into) >= len(data) else bytearray(
                    len(data))
                buf[: len(data)] = data
                return memoryview(buf)[: len(data)]
        raise errors.NotFound("no such member", 404, f"ais://{bucket}/{key}/{member}")

    async def get_member_range(
        self, bucket: str, key: str, member: str, start: int, length: int,
        into: RecvBuffer | None = None,
    ) -> memoryview:
        self._enter("get_member_range")
        self.log.append(("get_member_range", bucket, key, member))
        self.ranges.append((start, length))
        whole = bytes(await self.get_member(bucket, key, member))
        assert 0 <= start and 0 < length and start + length <= len(whole), "out of bounds"
        buf = into if into is not None and len(into) >= length else bytearray(length)
        buf[:length] = whole[start:start + length]
        return memoryview(buf)[:length]

    async def open_member_stream(self, bucket: str, key: str, size: int) -> FakeMemberStream:
        """The archive's members in archive order, as of now (later changes are not seen)."""
        self._enter("open_member_stream")
        self.log.append(("open_member_stream", bucket, key))
        obj = self._object(bucket, key)
        members = archive_members(key, obj.content())
        return FakeMemberStream(self, key, obj.version, members)

    async def get_batch(
        self, bucket: str, names: Sequence[str], *, max_size: int,
        sizes: Sequence[int] | None = None, deliver: Callable[[BatchItem], None],
    ) -> None:
        """Delivers each object as AIS's Get-Batch would, with a checkpoint between items."""
        self._enter("get_batch")
        self.log.append(("get_batch", bucket, *names))
        await self._maybe_wait()
        if bucket not in self.buckets:
            raise errors.BucketNotFound("no such bucket", 404, f"ais://{bucket}")
        for i, name in enumerate(names):
            if i == self.batch_stalls_after:
                await trio.sleep_forever()
            if self.batch_member_delay:
                await trio.sleep(self.batch_member_delay)
            what = f"ais://{bucket}/{name}"
            try:
                if name in self.batch_says_missing:
                    raise KeyError(name)
                data = self.content(name, bucket)
            except (KeyError, errors.NotFound):
                item = BatchItem(i, name, error=errors.NotFound("no such object", 404, what))
            else:
                if len(data) > max_size or (sizes is not None and len(data) != sizes[i]):
                    item = BatchItem(i, name, error=NotFetched("size", 0, what))
                else:
                    item = BatchItem(i, name, data=memoryview(bytearray(data)))
            deliver(item)
            await trio.lowlevel.checkpoint()

    async def run_blocking(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` in a worker thread, as the mount does."""
        self._enter("run_blocking")
        return await trio.to_thread.run_sync(fn)


class FakeMemberStream:
    """What ``open_member_stream`` gives: each ``next`` passes ``stream_gate`` when set (one
    member per release), then counts in ``streamed``."""

    def __init__(self, fake: FakeAis, key: str, version: str,
                 members: list[tuple[str, bytes]] | None) -> None:
        self.fake = fake
        self.key = key
        self.version = version
        self.members = members
        self.pos = 0
        self.closed = False

    async def next(self, max_size: int, max_bytes: int,
                   max_members: int) -> list[tuple[str, bytearray | None, int]]:
        if self.members is None:
            raise errors.BadArchive("not a readable archive", 0, self.key)
        items: list[tuple[str, bytearray | None, int]] = []
        read = 0
        while read < max_bytes and len(items) < max_members:
            if self.fake.stream_delay:
                await trio.sleep(self.fake.stream_delay)
            if (self.closed or self.pos >= len(self.members)
                    or self.pos == self.fake.stream_ends_after):
                break
            name, data = self.members[self.pos]
            self.pos += 1
            self.fake.streamed += 1
            path = member_path(self.key, name)
            if path is None:
                continue
            items.append((path, bytearray(data) if len(data) <= max_size else None, len(data)))
            read += len(data)
        return items

    def close(self) -> None:
        self.closed = True


def _conforms(fake: FakeAis) -> AisApi:
    """Makes mypy hold the fake to the interface the layers are typed against."""
    return fake

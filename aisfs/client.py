"""The AIS REST API: buckets, listings, HEAD, ranged GET, PUT, append/flush, delete, rename and
custom metadata, as blocking calls that take and return :mod:`aisfs.objects` values; archives
and Get-Batch through its :class:`~aisfs.archive_calls.ArchiveCalls`, whose methods it offers as
its own.

One :class:`AisClient` per mount. It knows AIS's endpoints, query parameters, headers and JSON;
how a request travels (timeouts, retries, routing to a target, error mapping, receiving bodies)
is the :class:`~aisfs.transport.Transport`'s. Each call says which kind of object request it is
(:class:`~aisfs.routing.Via`) and whether it may be repeated (``idempotent``): a request that
carries object data is never sent twice, because a repeated APPEND would duplicate bytes.

Concurrency: methods are called from trio worker threads (see ``aio.py``), several at once; the
client keeps no per-call state (the transport's is thread-safe). Nothing here touches trio or the
inode/metadata tables.
"""

from __future__ import annotations

import email.utils
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator

import orjson

from . import errors
from .archive_calls import ArchiveCalls
from .config import ClientConfig
from .httpreply import Download, Reply
from .objects import (
    LIST_PROPS,
    TIME_FORMAT,
    Body,
    ListEntry,
    ListPage,
    ObjectProps,
    RangeResult,
    RecvBuffer,
    list_entries,
    mtime_from_custom,
    range_total,
)
from .routing import Via
from .transport import Transport

LS_NO_RECURSION = 2048
HEAD_PROPS = "name,size,version,checksum,atime,custom,last-modified,chunked"


_PART_NUMBER = re.compile(r"<PartNumber>(\d+)</PartNumber>")


def _quote_key(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


def _decode_header(value: str) -> bytes:
    # http.client decodes header bytes as Latin-1; this recovers the bytes the server sent.
    return value.encode("latin-1", "replace")


def _custom_from_headers(reply: Reply) -> dict[str, bytes]:
    custom: dict[str, bytes] = {}
    for item in reply.header_values("Ais-Custom-Md"):
        key, sep, value = _decode_header(item).partition(b"=")
        if sep:
            custom[key.decode("utf-8", "surrogateescape")] = value
    return custom


class _FdBody:
    """A file descriptor's first ``size`` bytes as a request body (read with pread)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.pos = 0

    def __len__(self) -> int:
        return self.size - self.pos

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.size - self.pos:
            n = self.size - self.pos
        n = min(n, 4 * 1024 * 1024)
        data = os.pread(self.fd, n, self.pos) if n > 0 else b""
        self.pos += len(data)
        return data


class AisClient:
    """Blocking REST calls against one AIS cluster."""

    def __init__(self, config: ClientConfig, token: Callable[[], str | None] | None = None) -> None:
        self.config = config
        self.transport = Transport(config, token)
        self._base = config.endpoint.rstrip("/") + "/v1"
        self._s3 = config.endpoint.rstrip("/") + "/s3"  # AIS's S3 API: only to list parts
        # Archives' members and Get-Batch: their own module, the same transport and URLs.
        self.archives = ArchiveCalls(self.transport, self._base, self._bucket_url,
                                     self.object_url, self.get_range)
        self.list_archive = self.archives.list_archive
        self.get_member = self.archives.get_member
        self.get_member_range = self.archives.get_member_range
        self.get_batch = self.archives.get_batch
        self.by_owner = self.archives.by_owner
        self.open_archive = self.archives.open_archive
        self.zip_central_directory = self.archives.zip_central_directory

    def close(self) -> None:
        self.transport.close()

    def _bucket_url(self, bucket: str = "") -> str:
        return f"{self._base}/buckets/{bucket}" if bucket else f"{self._base}/buckets"

    def object_url(self, bucket: str, key: str) -> str:
        return f"{self._base}/objects/{bucket}/{_quote_key(key)}"

    # ------------------------------------------------------------------ cluster and buckets

    def list_buckets(self) -> list[str]:
        reply = self.transport.call(
            "GET", self._bucket_url(), "ais://", kind="list_buckets",
            params={"provider": "ais"}, json_body={"action": "list", "name": ""},
        )
        return sorted(b["name"] for b in reply.json() or [] if b.get("provider", "ais") == "ais")

    def head_bucket(self, bucket: str) -> None:
        """Raise BucketNotFound when the bucket does not exist."""
        try:
            self.transport.call(
                "HEAD", self._bucket_url(bucket), f"ais://{bucket}", kind="head_bucket",
                params={"provider": "ais"},
            )
        except errors.NotFound as exc:
            raise errors.BucketNotFound(str(exc.args[0]), 404, f"ais://{bucket}") from None

    def create_bucket(self, bucket: str) -> None:
        self.transport.call(
            "POST", self._bucket_url(bucket), f"ais://{bucket}", kind="create_bucket",
            idempotent=False, params={"provider": "ais"}, json_body={"action": "create-bck"},
        )

    def destroy_bucket(self, bucket: str) -> None:
        self.transport.call(
            "DELETE", self._bucket_url(bucket), f"ais://{bucket}", kind="destroy_bucket",
            params={"provider": "ais"}, json_body={"action": "destroy-bck"},
        )

    # ------------------------------------------------------------------ listing

    def list_objects_page(
        self,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = False,
        page_size: int = 0,
        uuid: str = "",
        continuation_token: str = "",
        start_after: str = "",
        convert: bool = True,
    ) -> ListPage:
        """One page of a listing (of names after ``start_after``, when given: ais buckets only).
        Non-recursive pages include virtual-directory entries. With ``convert=False`` the entries
        are left in ``raw``, for :func:`list_entries`."""
        value = {
            "prefix": prefix,
            "props": LIST_PROPS,
            "time_format": TIME_FORMAT,
            "flags": "0" if recursive else str(LS_NO_RECURSION),
            "pagesize": page_size,
            "uuid": uuid,
            "continuation_token": continuation_token,
        }
        if start_after:
            value["start_after"] = start_after
        reply = self.transport.call(
            "GET", self._bucket_url(bucket), f"ais://{bucket}/{prefix}", kind="list_objects",
            params={"provider": "ais"},
            json_body={"action": "list", "name": bucket, "value": value},
        )
        doc = orjson.loads(reply.body) or {}
        raw = doc.get("entries") or []
        uuid, token = doc.get("uuid") or "", doc.get("continuation_token") or ""
        if not convert:
            return ListPage([], uuid, token, raw)
        return ListPage(list_entries(raw), uuid, token)

    def iter_objects(
        self, bucket: str, prefix: str, *, recursive: bool = False, page_size: int = 0
    ) -> Iterator[ListEntry]:
        uuid = token = ""
        while True:
            page = self.list_objects_page(
                bucket, prefix, recursive=recursive, page_size=page_size,
                uuid=uuid, continuation_token=token,
            )
            yield from page.entries
            if not page.continuation_token:
                return
            uuid, token = page.uuid, page.continuation_token

    # ------------------------------------------------------------------ objects

    def head_object(self, bucket: str, key: str) -> ObjectProps:
        url = self.object_url(bucket, key)
        # A lookup: the target that answers serves the GETs that usually follow (open, then
        # read), straight, one round trip to the proxy less for the first byte.
        reply = self.transport.call(
            "HEAD", url, f"ais://{bucket}/{key}", kind="head_object", via=Via.LOOKUP,
            params={"provider": "ais", "props": HEAD_PROPS},
        )
        h = reply.headers
        custom = _custom_from_headers(reply)
        atime = int(h.get("Ais-Atime") or 0)
        mtime = mtime_from_custom(custom)
        if not mtime and h.get("Last-Modified"):
            parsed = email.utils.parsedate_to_datetime(h["Last-Modified"])
            mtime = int(parsed.timestamp()) * 1_000_000_000
        return ObjectProps(
            key, int(h.get("Content-Length") or 0), mtime or atime, h.get("Ais-Version", ""),
            h.get("Ais-Checksum-Value", ""), atime, custom,
            chunked=bool(h.get("Ais-Chunks-Count")),
        )

    def get_range(
        self, bucket: str, key: str, start: int, length: int, into: RecvBuffer | None = None
    ) -> RangeResult:
        """Bytes [start, start+length) of an object; shorter at EOF. 416 means start >= size.
        A body cut short is received again (``Transport.fetch``), a bounded number of times.

        With ``into`` (at least ``length`` bytes) the body lands in that buffer, so a caller can
        reuse buffers instead of faulting in fresh pages for every part.
        """
        def receive(body: Download) -> RangeResult:
            if body.status == 200 and start > 0:
                # A server that ignored the Range header sent the whole object.
                data = memoryview(bytearray(body.read_all()[start:start + length]))
            else:
                buf = into if into is not None else bytearray(length)
                data = memoryview(buf)[: body.read_into(buf, length)]
            return RangeResult(data, range_total(body.headers.get("Content-Range", "")),
                               body.headers.get("Ais-Version", ""))

        # A body cut short is asked for again, the whole range: the bytes of one answer are
        # one version of the object, which the caller checks.
        return self.transport.fetch(
            self.object_url(bucket, key), f"ais://{bucket}/{key}", receive, kind="get_range",
            params={"provider": "ais"},
            headers={"Range": f"bytes={start}-{start + length - 1}"},
        )

    def put_object(
        self, bucket: str, key: str, data: bytes | memoryview,
        custom: dict[str, bytes] | None = None,
    ) -> ObjectProps:
        headers = custom_headers(custom)
        reply = self.transport.call(
            "PUT", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="put_object",
            via=Via.WRITE, params={"provider": "ais"}, data=data, headers=headers,
        )
        return ObjectProps(key, len(data), version=reply.headers.get("Ais-Version", ""))

    def put_file(
        self, bucket: str, key: str, fd: int, size: int, custom: dict[str, bytes] | None = None
    ) -> ObjectProps:
        """PUT the first ``size`` bytes of an open file (read with pread: the fd's offset is
        not used, so a retry sends the same bytes again)."""
        reply = self.transport.call(
            "PUT", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="put_object",
            via=Via.WRITE, params={"provider": "ais"}, data=lambda: _FdBody(fd, size),
            headers={**custom_headers(custom), "Content-Length": str(size)},
        )
        return ObjectProps(key, size, version=reply.headers.get("Ais-Version", ""))

    def append(self, bucket: str, key: str, handle: str, data: Body) -> str:
        """Append bytes to the object's pending append session; returns the new handle."""
        reply = self.transport.call(
            "PUT", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="append",
            via=Via.SESSION, idempotent=False, data=data,
            params={"provider": "ais", "append_type": "append", "append_handle": handle},
        )
        new_handle = reply.headers.get("Ais-Append-Handle", "")
        if not new_handle:
            raise errors.AisError("append returned no handle", reply.status, f"ais://{bucket}/{key}")
        return new_handle

    def flush(self, bucket: str, key: str, handle: str) -> None:
        """Make the appended bytes the object's content (atomic replace)."""
        self.transport.call(
            "PUT", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="flush",
            via=Via.SESSION_END, idempotent=False, data=b"",
            params={"provider": "ais", "append_type": "flush", "append_handle": handle},
        )

    # ------------------------------------------------------------------ multipart uploads
    # AIS's native multipart upload (api/mpt.go): parts are PUT by number, in any order, and
    # the object changes only at completion, atomically; nothing of an upload is visible before.
    # Every step can be retried without duplicating a byte: see each method.

    def start_upload(self, bucket: str, key: str) -> str:
        """A new multipart upload of ``key``; returns its ID. (A retried start may leave an
        unused upload behind: invisible, and without parts.)"""
        reply = self.transport.call(
            "POST", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="start_upload",
            params={"provider": "ais"}, json_body={"action": "mpt-upload"},
        )
        upload_id = reply.body.decode("utf-8", "replace").strip().strip('"')
        if not upload_id:
            raise errors.AisError("multipart upload got no ID", reply.status,
                                  f"ais://{bucket}/{key}")
        return upload_id

    def put_part(self, bucket: str, key: str, upload_id: str, number: int, data: Body) -> None:
        """Part ``number`` (from 1) of an upload. A part whose request failed after it was sent
        (a reset connection, a timeout, a 5xx) is looked for in AIS's list of the upload's
        parts before it is sent again, up to ``retries`` times: AIS v1.5.0 loses a part that
        arrives twice (the second copy is written over the first's file, which is then removed
        as the replaced one), so a part that arrived is never sent again."""
        url, what = self.object_url(bucket, key), f"ais://{bucket}/{key}"
        params = {"provider": "ais", "uploadId": upload_id, "partNumber": str(number)}
        attempt = 0
        while True:
            try:
                self.transport.call("PUT", url, what, kind="put_part", via=Via.SESSION,
                                    idempotent=False, data=data, params=params)
                return
            except errors.Transient as exc:
                if attempt >= self.config.retries:
                    raise
                attempt = self.transport.backoff(attempt, "put_part", what, exc)
                if number in self.upload_parts(bucket, key, upload_id):
                    return  # it arrived; its answer was lost

    def upload_parts(self, bucket: str, key: str, upload_id: str) -> set[int]:
        """The numbers of the parts AIS holds for an upload (through AIS's S3 API, the one
        that lists them). NotFound when the upload is gone (completed, aborted, or lost with
        a target that restarted)."""
        reply = self.transport.call(
            "GET", f"{self._s3}/{bucket}/{_quote_key(key)}", f"ais://{bucket}/{key}",
            kind="list_parts", params={"uploadId": upload_id},
        )
        return {int(n) for n in _PART_NUMBER.findall(reply.body.decode("utf-8", "replace"))}

    def complete_upload(self, bucket: str, key: str, upload_id: str, parts: int,
                        size: int) -> None:
        """Make parts 1..``parts`` (``size`` bytes in all) the object's content, atomically.
        Retried after a failure; a retry that finds the upload gone after an attempt whose
        answer was lost checks that the object has ``size`` bytes (it completed then)."""
        url, what = self.object_url(bucket, key), f"ais://{bucket}/{key}"
        body = {"action": "mpt-complete",
                "value": [{"part-number": n} for n in range(1, parts + 1)]}
        attempt = 0
        while True:
            try:
                self.transport.call("POST", url, what, kind="complete_upload",
                                    via=Via.SESSION_END, idempotent=False,
                                    params={"provider": "ais", "uploadId": upload_id},
                                    json_body=body)
                return
            except errors.Transient as exc:
                if attempt >= self.config.retries:
                    raise
                attempt = self.transport.backoff(attempt, "complete_upload", what, exc)
            except errors.NotFound:
                if attempt == 0:
                    raise
                if self.head_object(bucket, key).size != size:
                    raise errors.AisError("multipart upload lost before it completed", 404,
                                          what) from None
                return

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop an upload and its parts (NotFound when it is gone already)."""
        self.transport.call(
            "DELETE", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="abort_upload",
            via=Via.SESSION_END, params={"provider": "ais", "uploadId": upload_id},
            json_body={"action": "mpt-abort"},
        )

    def delete_object(self, bucket: str, key: str) -> None:
        self.transport.call(
            "DELETE", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="delete_object",
            params={"provider": "ais"},
        )

    def rename_object(self, bucket: str, key: str, new_key: str) -> None:
        self.transport.call(
            "POST", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="rename_object",
            idempotent=False, params={"provider": "ais"},
            json_body={"action": "rename-obj", "name": new_key},
        )

    def set_custom(
        self, bucket: str, key: str, custom: dict[str, bytes], *, replace: bool = False
    ) -> None:
        """Merge ``custom`` into the object's custom metadata, or replace it whole."""
        params = {"provider": "ais"}
        if replace:
            params["set-new-custom"] = "true"
        value = {k: v.decode("utf-8", "surrogateescape") for k, v in custom.items()}
        self.transport.call(
            "PATCH", self.object_url(bucket, key), f"ais://{bucket}/{key}", kind="set_custom",
            params=params, json_body={"action": "", "name": "", "value": value},
        )


def custom_headers(custom: dict[str, bytes] | None) -> dict[str, str]:
    """One ``Ais-Custom-Md: k=v`` header: AIS reads one key per header line, and requests
    cannot repeat a header, so only a single key can ride on a PUT (more go by PATCH)."""
    if not custom:
        return {}
    if len(custom) != 1:
        raise ValueError("a PUT carries at most one custom-metadata key")
    (key, value), = custom.items()
    return {"Ais-Custom-Md": f"{key}={value.decode('latin-1')}"}  # requests sends Latin-1

"""The AIS REST API's calls for archives and Get-Batch: an archive's listing with its members,
one member whole (``archpath``) or a range of it, whole objects in one Get-Batch request
(``/v1/ml/moss``), and an archive's stored bytes as a stream (with a zip's central directory);
blocking calls, as in ``client.py``.

:class:`ArchiveCalls` is part of the :class:`~aisfs.client.AisClient`, which makes it with its
transport and URLs and offers its methods as its own. It knows these endpoints' parameters and
JSON and turns AIS's answers for an unreadable archive into ``BadArchive``; the Get-Batch wire
format is ``getbatch.py``'s, how a request travels the transport's.

Concurrency: methods are called from trio worker threads (see ``aio.py``), several at once; no
per-call state is kept here (the transport's is thread-safe). Nothing here touches trio.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

import orjson

from . import errors, getbatch, zip_members
from .httpreply import Download
from .objects import LIST_PROPS, TIME_FORMAT, RangeResult, RecvBuffer
from .routing import Via
from .transport import Transport

LS_ARCH_DIR = 8  # list archives' members too (api/apc/lsmsg.go: LsArchDir)


class ArchiveCalls:
    """Blocking archive and Get-Batch calls against one AIS cluster."""

    def __init__(
        self, transport: Transport, base: str, bucket_url: Callable[[str], str],
        object_url: Callable[[str, str], str], get_range: Callable[[str, str, int, int],
                                                                   RangeResult],
    ) -> None:
        self.transport = transport
        self._get_range = get_range  # an object's bytes [start, start+length): the client's
        self._base = base  # the cluster's REST API: <endpoint>/v1
        self._bucket_url = bucket_url
        self._object_url = object_url

    def list_archive(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """AIS's listing of the archive ``key`` with its members (decoded JSON entries: the
        archive's own, then ``<key>/<member>`` ones in name order), all pages.

        Listed with the archive's own name as prefix: AIS's archive listing of a whole directory
        silently ends at the first archive it cannot read (v1.5.0), so one archive is listed at
        a time. Paging stops at the first name past the members.
        """
        entries: list[dict[str, Any]] = []
        member_prefix, cut = key + "/", len(key)
        uuid = token = ""
        while True:
            value = {
                "prefix": key, "props": LIST_PROPS, "time_format": TIME_FORMAT,
                "flags": str(LS_ARCH_DIR), "pagesize": 0, "uuid": uuid,
                "continuation_token": token,
            }
            reply = self.transport.call(
                "GET", self._bucket_url(bucket), f"ais://{bucket}/{key}", kind="list_archive",
                params={"provider": "ais"},
                json_body={"action": "list", "name": bucket, "value": value},
            )
            try:
                doc = orjson.loads(reply.body) or {}
            except orjson.JSONDecodeError:
                # AIS puts member names in its JSON as the archive stores them: a name that is
                # not UTF-8 makes the whole answer invalid UTF-8. Such names (U+FFFD now) are
                # skipped as names that cannot be fetched.
                doc = orjson.loads(reply.body.decode("utf-8", "replace")) or {}
            for raw in doc.get("entries") or []:
                name = raw.get("name", "")
                if name == key or name.startswith(member_prefix):
                    entries.append(raw)
                elif name[cut:cut + 1] > "/":
                    return entries  # names sort after "<key>/...": no member can follow
            uuid, token = doc.get("uuid") or "", doc.get("continuation_token") or ""
            if not token:
                return entries

    def get_member(
        self, bucket: str, key: str, member: str, into: RecvBuffer | None = None
    ) -> memoryview:
        """The whole of one member of the archive ``key`` (AIS extracts it: ``archpath``).

        The body lands in ``into`` when it is big enough, else in a new buffer. Raises
        ``BadArchive`` when AIS cannot read the archive (it answers 400, or, for a truncated one,
        ends the body early), ``NotFound`` when the archive or the member is not there.
        """
        what = f"ais://{bucket}/{key}/{member}"
        try:
            body = self.transport.download(
                "GET", self._object_url(bucket, key), what, kind="get_member", via=Via.READ,
                params={"provider": "ais", "archpath": member},
            )
        except errors.InvalidRequest as exc:
            raise errors.BadArchive(str(exc.args[0]), exc.status, what) from None
        with body:
            length = int(body.headers.get("Content-Length") or -1)
            if length < 0:
                raise errors.Transient("member sent without a length", body.status, what)
            buf = into if into is not None and len(into) >= length else bytearray(length)
            try:
                got = body.read_into(buf, length)
            except errors.Transient as exc:
                raise errors.BadArchive(
                    f"the member's bytes ended early (a truncated archive?): {exc.args[0]}", 0,
                    what,
                ) from None
        if got < length:
            raise errors.BadArchive(f"the member's bytes ended after {got} of {length}", 0, what)
        return memoryview(buf)[:length]

    def by_owner(self, bucket: str, names: Sequence[str]) -> list[list[int]] | None:
        """The positions of ``names`` grouped by the target that owns each object (the cluster
        map's HRW), in order within each group; None when the transport has no fresh map."""
        cluster = self.transport.router.fresh_map()
        if cluster is None:
            return None
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            owner = cluster.owner_of(bucket, name)
            if owner is None:
                return None
            groups.setdefault(owner.id, []).append(i)
        return list(groups.values())

    def get_batch(
        self, bucket: str, names: Sequence[str], *, max_size: int,
        sizes: Sequence[int] | None = None, colocated: bool = False,
    ) -> Generator[getbatch.BatchItem, None, None]:
        """Whole objects ``names`` of ``bucket`` in one Get-Batch request (sent to the proxy,
        which redirects it, body and all, to the target that assembles the batch): one item per
        name, in order, as each arrives (see :func:`aisfs.getbatch.read_batch`). A failure of
        the request itself raises; once the reply streams, failures are per item (NotFetched).
        The reply's connection is closed at the end, not reused (see the getbatch docstring).

        ``colocated``: the objects have one owner (:meth:`by_owner`); the proxy then picks it to
        assemble the batch (``coloc=1``), which reads them from its own disks instead of
        receiving them from other targets (measured: ~35% less CPU in AIS for the same objects).
        """
        params = {"provider": "ais", "coloc": "1"} if colocated else {"provider": "ais"}
        body = self.transport.download(
            "GET", f"{self._base}/ml/moss/{bucket}", f"ais://{bucket}", kind="get_batch",
            via=Via.PROXY, params=params, json_body=getbatch.objects_request(names),
        )
        items = getbatch.read_batch(body, bucket, names, max_size=max_size, sizes=sizes)
        try:
            yield from items
        finally:
            items.close()
            body.close(reuse=False)

    def get_member_range(
        self, bucket: str, key: str, member: str, start: int, length: int,
        into: RecvBuffer | None = None,
    ) -> memoryview:
        """Bytes [start, start+length) of one member of the archive ``key``, through Get-Batch
        (``/v1/ml/moss``: AIS refuses a Range header together with ``archpath``).

        The range must lie within the member: AIS v1.5.0 answers one past its end after 20 s,
        with the whole member. A range under ``getbatch.MIN_BATCH_RANGE`` arrives only at AIS's
        next periodic flush (~100 ms later), and so does the end of every stream: the reply is
        read up to the range's last byte and its connection closed, not given back to the pool.
        """
        what = f"ais://{bucket}/{key}/{member}"
        request = getbatch.member_range_request(key, member, start, length)
        try:
            body = self.transport.download(
                "GET", f"{self._base}/ml/moss/{bucket}", what, kind="get_batch", via=Via.PROXY,
                params={"provider": "ais"}, json_body=request,
            )
        except errors.InvalidRequest as exc:
            raise errors.BadArchive(str(exc.args[0]), exc.status, what) from None
        buf = into if into is not None and len(into) >= length else bytearray(length)
        items = getbatch.read_batch(
            body, bucket, [f"{key}/{member}"], max_size=length, sizes=[length],
            buffer_for=lambda _index, _size: memoryview(buf),
        )
        try:
            item = next(items)
        finally:
            items.close()  # not read on to the stream's end: AIS sends it ~100 ms later
            body.close(reuse=False)
        if item.error is not None:
            raise item.error  # NotFound (a __404__ entry), or getbatch.NotFetched
        assert item.data is not None
        return item.data

    def zip_central_directory(
        self, bucket: str, key: str, size: int
    ) -> tuple[dict[int, zip_members.CentralEntry], str]:
        """The central directory of the ``size``-byte zip archive ``key`` (one ranged GET of
        its end, mostly) and the version it is of. ``BadArchive`` when it has none that
        ``zip_members`` can use; ``Transient`` when the archive changed between two reads."""
        versions: set[str] = set()

        def read(start: int, length: int) -> bytes:
            got = self._get_range(bucket, key, start, length)
            versions.add(got.version)
            return bytes(got.data)

        try:
            central = zip_members.central_directory(read, size)
        except zip_members.ZipFormatError as exc:
            raise errors.BadArchive(f"no usable central directory: {exc}", 0,
                                    f"ais://{bucket}/{key}") from None
        if len(versions) != 1:
            raise errors.Transient("the archive changed while its central directory was read",
                                   0, f"ais://{bucket}/{key}")
        return central, versions.pop()

    def open_archive(self, bucket: str, key: str) -> Download:
        """The archive object's stored bytes as a stream (one GET of the whole object, read by
        the caller piece by piece; ``headers["Ais-Version"]`` says which version it is). The
        caller closes it, without reuse when it stops before the end."""
        return self.transport.download(
            "GET", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="get_archive",
            params={"provider": "ais"},
        )

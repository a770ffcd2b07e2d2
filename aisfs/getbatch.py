"""Get-Batch (AIS's multi-object GET): the request body, and the streamed TAR reply read member
by member as it arrives. No I/O of its own: the reply is any object with ``readinto``.

The wire format, as AIS v1.5.0 serves it (``api/apc/ml.go``, ``ais/ml.go``, ``xact/xs/moss.go``;
each point checked on a local cluster):

- ``GET /v1/ml/moss/<bucket>?provider=ais`` with a JSON ``MossReq`` body. The proxy answers 307
  to a designated target (picked at random) and the client sends the same body there.
- We always ask for ``{"mime": ".tar", "strm": true, "onob": true, "coer": true}``: a plain TAR
  written as the target assembles it (nothing buffered on either side), members named by the
  object name alone, and missing objects reported instead of failing the request.
- Members come in exactly the request's order, one per requested object. A missing object is a
  zero-size member named ``__404__/<name>``. Names that do not fit USTAR come in PAX headers.
- The stream can end *early and cleanly*: a well-formed but shorter TAR under HTTP 200. AIS does
  that when more objects are missing than its ``get_batch.max_soft_errs`` (8 by default), and
  when the designated target itself lacks an object and ``coer`` is off. The objects after the
  last member are therefore "not fetched", never "missing".
- The other shape (``strm: false``) is ``multipart/mixed`` with a JSON ``metadata`` part and the
  TAR as an ``archive`` part; the target builds the whole TAR in memory first, and without
  ``coer`` one missing object fails the request (404). Not used here.
- AIS sends the last part of a reply (what its writers still buffer, up to ~100 KiB: a small
  batch whole) only when it finishes, ~100 ms after the rest (its quiesce window), the TAR's
  end-of-archive marker included. So a reader stops after the last requested member and does
  not wait for the marker: the reply's connection is then closed, not reused.

:func:`read_batch` yields exactly one :class:`BatchItem` per requested name, in request order:
the object's bytes, :class:`~aisfs.errors.NotFound` (missing), or :class:`NotFetched` (the batch
did not deliver it: the stream broke or ended early, the member exceeded ``max_size`` or was
not of its expected size, or the reply was not the TAR we asked for) so that the caller fetches
that object on its own. Memory: one member's bytes at a time (in the caller's buffer when
``buffer_for`` gives one), plus a header; a member that is not kept is read through a small
scratch buffer and dropped.

Concurrency: pure functions over the caller's stream; one stream is read by one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from . import errors

MISSING_PREFIX = "__404__/"
# Ranges at least this long reach the client as soon as AIS has read them; AIS sends shorter
# members only at its periodic flush (measured on v1.5.0: 16 KiB and up in 1-5 ms, 1 KiB ~100 ms).
MIN_BATCH_RANGE = 64 * 1024
BLOCK = 512
# PAX/GNU long-name records longer than this are not a name AIS would send.
_MAX_EXTENDED_HEADER = 1024 * 1024
_SCRATCH = 256 * 1024


class Readable(Protocol):
    """A reply body. ``readinto`` returns 0 at the end; its failures are
    :class:`~aisfs.errors.AisError` (the transport maps its own exceptions)."""

    def readinto(self, buf: memoryview, /) -> int: ...


# (index of the item in the request, member size) -> a writable buffer of at least ``size``
# bytes for it, or None for a fresh one.
BufferFor = Callable[[int, int], "bytearray | memoryview | None"]


class NotFetched(errors.Transient):
    """The batch did not deliver this object (not a statement about the object itself)."""


@dataclass(slots=True)
class BatchItem:
    """One requested object. Exactly one of ``data`` and ``error`` is set."""

    index: int
    name: str
    data: memoryview | None = None
    error: errors.AisError | None = None


def objects_request(names: Sequence[str]) -> dict[str, Any]:
    """The ``MossReq`` (as JSON-ready values) for whole objects ``names`` of the request's
    bucket."""
    if not names:
        raise ValueError("a Get-Batch needs at least one object")
    return {"mime": ".tar", "in": [{"objname": n} for n in names],
            "coer": True, "onob": True, "strm": True}


def request_body(names: Sequence[str]) -> bytes:
    """:func:`objects_request` as JSON bytes."""
    return orjson.dumps(objects_request(names))


def member_range_request(key: str, member: str, start: int, length: int) -> dict[str, Any]:
    """The ``MossReq`` (as JSON-ready values) for bytes [start, start+length) of the member
    ``member`` of the archive object ``key``: one reply member named ``<key>/<member>``.

    The range must lie within the member: AIS v1.5.0 answers one past its end after 20 s, with
    the whole member. ``length`` must be positive (AIS reads 0 as "all of it")."""
    if start < 0 or length <= 0:
        raise ValueError(f"bad member range: start {start}, length {length}")
    return {"mime": ".tar", "coer": True, "onob": True, "strm": True,
            "in": [{"objname": key, "archpath": member, "start": start, "length": length}]}


class TarFormatError(Exception):
    """The bytes are not the TAR expected (checksum, numbers, order, sizes)."""


def read_batch(
    stream: Readable,
    bucket: str,
    names: Sequence[str],
    *,
    max_size: int,
    sizes: Sequence[int] | None = None,
    buffer_for: BufferFor | None = None,
) -> Generator[BatchItem, None, None]:
    """Read a Get-Batch reply; yield one item per name of ``names``, in order, as each member
    arrives (so the caller can serve a file before the batch ends). The stream is not read
    past the last requested member (see the module docstring): close its connection after.

    ``sizes``, when given, are the sizes the caller expects (from a listing): a member of
    another size changed since, and is NotFetched rather than served.

    A member's ``data`` stays valid until the caller reuses the buffer it gave for it.
    """
    reader = TarReader(stream)
    index = 0
    try:
        while index < len(names):
            member = reader.next_header()
            if member is None:
                break  # the stream ended early: the rest was not fetched
            name, size = member
            expected = names[index]
            what = f"ais://{bucket}/{expected}"
            if name == MISSING_PREFIX + expected:
                reader.skip(size)
                yield BatchItem(index, expected, error=errors.NotFound(
                    "no such object (Get-Batch)", 404, what))
            elif name != expected:
                raise TarFormatError(f"member {index} is {name!r}, expected {expected!r}")
            elif size > max_size:
                reader.skip(size)
                yield BatchItem(index, expected, error=NotFetched(
                    f"{size} bytes, over the batch's {max_size}-byte limit per object", 0, what))
            elif sizes is not None and size != sizes[index]:
                reader.skip(size)
                yield BatchItem(index, expected, error=NotFetched(
                    f"{size} bytes, not the {sizes[index]} expected: changed", 0, what))
            else:
                buf = buffer_for(index, size) if buffer_for is not None else None
                view = memoryview(buf if buf is not None else bytearray(size))[:size]
                if len(view) < size:
                    raise ValueError(f"buffer_for gave {len(view)} bytes for {size}")
                reader.read_data(view)
                yield BatchItem(index, expected, data=view)
            index += 1
    except errors.AisError as exc:
        reason = f"Get-Batch stream broke: {exc.args[0] if exc.args else exc}"
    except TarFormatError as exc:
        reason = f"Get-Batch reply is not the expected TAR: {exc}"
    else:
        reason = "Get-Batch ended before this object (AIS stops after too many missing objects)"
    for i in range(index, len(names)):
        yield BatchItem(i, names[i], error=NotFetched(reason, 0, f"ais://{bucket}/{names[i]}"))


class TarReader:
    """Sequential TAR member reader over ``readinto`` (USTAR with prefix, PAX and GNU long
    names, octal or base-256 sizes), for Get-Batch replies and for whole archives read in
    order. Raises ``TarFormatError`` for what is not TAR, ``Transient`` for an early end.
    Invariant: ``_pad`` is the padding still unread after the last member's data; it is read
    together with the next header."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._pad = 0
        self._hdr = bytearray(BLOCK * 2)

    def _fill(self, view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = self._stream.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def _exact(self, view: memoryview) -> None:
        if self._fill(view) != len(view):
            raise errors.Transient("the reply ended in the middle of a member")

    def next_header(self) -> tuple[str, int] | None:
        """The next regular member's (name, size), or None at the end of the archive. (The
        header's mtime is not used: AIS sends 0 for objects that another target sent it.)"""
        long_name: str | None = None
        pax_size: int | None = None
        while True:
            view = memoryview(self._hdr)[: self._pad + BLOCK]
            got = self._fill(view)
            if got == 0 and self._pad == 0:
                return None  # no end-of-archive marker: an end all the same
            if got != len(view):
                raise errors.Transient("the reply ended in the middle of a header")
            header = view[self._pad:]
            self._pad = 0
            if not any(header):
                return None
            _check_sum(header)
            size = _number(header[124:136])
            kind = bytes(header[156:157])
            if kind in (b"x", b"g", b"L", b"K"):
                if size > _MAX_EXTENDED_HEADER:
                    raise TarFormatError(f"{size}-byte extended header")
                data = bytearray(size)
                self._exact(memoryview(data))
                self._pad = -size % BLOCK
                if kind == b"x":
                    records = _pax_records(bytes(data))
                    long_name = records.get("path", long_name)
                    if "size" in records:
                        pax_size = int(records["size"])
                elif kind == b"L":
                    long_name = bytes(data).rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue  # global PAX headers and GNU long link names change nothing here
            if pax_size is not None:
                size = pax_size
            if kind not in (b"0", b"\0", b"7"):  # not a file: directories, links
                self.skip(size)
                long_name = pax_size = None
                continue
            name = long_name if long_name is not None else _ustar_name(header)
            return name, size

    def read_data(self, view: memoryview) -> None:
        self._exact(view)
        self._pad = -len(view) % BLOCK

    def skip(self, size: int) -> None:
        scratch = memoryview(bytearray(min(_SCRATCH, max(size, 1))))
        left = size
        while left:
            n = min(left, len(scratch))
            self._exact(scratch[:n])
            left -= n
        self._pad = -size % BLOCK

def _check_sum(header: memoryview) -> None:
    stored = _number(header[148:156])
    computed = sum(header) - sum(header[148:156]) + 8 * 0x20
    if stored != computed:
        raise TarFormatError("TAR header checksum mismatch")


def _number(field: memoryview) -> int:
    raw = bytes(field)
    if raw and raw[0] & 0x80:  # base-256 (GNU): big-endian, first byte's top bit is the flag
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad TAR number {raw!r}") from None


def _ustar_name(header: memoryview) -> str:
    name = bytes(header[0:100]).split(b"\0", 1)[0]
    if bytes(header[257:262]) == b"ustar":
        prefix = bytes(header[345:500]).split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """PAX extended header records: ``"<len> <key>=<value>\\n"``, ``len`` counting the whole
    record."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            if not data[pos:].strip(b"\0"):
                break
            raise TarFormatError("malformed PAX record")
        length = int(data[pos:space])
        record = data[space + 1: pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("malformed PAX record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records

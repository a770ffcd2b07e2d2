"""The members of a ``.zip`` archive in archive order, read from its stored bytes front to back:
one local file header after the other, up to the central directory. No I/O of its own: the
bytes come from any object with ``readinto``, the central directory through a callback.

AIS serves a member by the name, and from the place, that the central directory gives it; a
local header can say otherwise (a zip patched or built to mislead). So the reader holds each
local header against the central directory's entry for the same offset (:func:`central_directory`
reads it from the archive's end): a member whose name, size or CRC-32 differs there ends the
stream, as a member it cannot read does, and is not served under the local header's word.

A zip's authoritative sizes are in its central directory, at the end, but the local header in
front of each member carries them too, as nearly every writer leaves it (a writer to a seekable
file goes back and fills them in). What is read:

- stored (method 0) and deflated (method 8, raw deflate through zlib) members, sizes from the
  local header or its ZIP64 extra field (sizes of 0xFFFFFFFF), the CRC-32 checked;
- a deflated member whose header says its sizes follow its data (flag bit 3, a data descriptor,
  as a writer to a pipe writes): it ends where its deflate stream ends, and its descriptor (with
  or without its signature, 32- or 64-bit sizes) is checked against what was read and passed;
- directory entries (names ending in ``/``) are passed, as AIS lists no directories (an entry
  that only its mode in the central directory marks as one is read as a member, under a name
  the listing does not show). Names are the stored bytes taken as UTF-8, as AIS (Go's
  ``archive/zip``) takes them.

The end is the central directory (or an end record, in a zip without members). A member this
reader cannot read (stored with a data descriptor: nothing tells where its data ends; encrypted;
another compression method) also ends it, cleanly: :meth:`ZipReader.next_header` returns None
and ``stopped`` says why; the members after it are for the caller to fetch another way.
Bytes that are not such a zip raise :class:`ZipFormatError` (a ``ValueError``), an early end
:class:`~aisfs.errors.Transient`.

Memory: one input chunk and one output piece at a time, besides the member being kept.

Concurrency: a :class:`ZipReader` is used by one thread at a time; no global state.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import NamedTuple

from . import errors
from .getbatch import Readable

_CHUNK = 256 * 1024
# Compressed bytes fed to zlib at once, and decompressed bytes asked of it at once for a member
# whose size is unknown: bounds what one call makes (deflate expands up to ~1000 times).
_IN_PIECE = 64 * 1024
_OUT_PIECE = 1024 * 1024

_LOCAL = b"PK\x03\x04"
# Records that come after the last member: a central directory header, the end records (an
# archive without members has only those), the archive extra data record and the digital
# signature of the central directory.
_AFTER_MEMBERS = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x06\x08",
                  b"PK\x05\x05")
# What a writer of split archives may put before the first header of a single-part archive.
_SPAN_MARKERS = (b"PK\x07\x08", b"PK00")
_DESCRIPTOR = b"PK\x07\x08"
_NEXT_RECORDS = (_LOCAL, *_AFTER_MEMBERS)
# signature, version needed, flags, method, time, date, CRC-32, compressed size,
# uncompressed size, name length, extra field length
_HEADER = struct.Struct("<4sHHHHHIIIHH")
_ZIP64_EXTRA = 0x0001
_SIZE_IN_ZIP64 = 0xFFFFFFFF
_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008
_FLAG_PATCHED = 0x0020
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_MASKED_HEADER = 0x2000  # central directory encryption: the local header's values masked
_UNREADABLE_FLAGS = (_FLAG_ENCRYPTED | _FLAG_PATCHED | _FLAG_STRONG_ENCRYPTION
                     | _FLAG_MASKED_HEADER)
STORED = 0
DEFLATED = 8

# signature, disk, disk of the central directory, entries on this disk, entries, central
# directory size, its offset, comment length
_END = struct.Struct("<4sHHHHIIH")
_END_SIGNATURE = b"PK\x05\x06"
# signature, disk of the ZIP64 end record, its offset, disks
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
# signature, record size, made by, needed, disk, disk of the central directory, entries on this
# disk, entries, central directory size, its offset
_ZIP64_END = struct.Struct("<4sQHHIIQQQQ")
# signature, made by, needed, flags, method, time, date, CRC-32, compressed size, uncompressed
# size, name length, extra length, comment length, disk, internal and external attributes,
# local header offset
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_CENTRAL_SIGNATURE = b"PK\x01\x02"
_MAX_COMMENT = 0xFFFF
# A central directory bigger than this is not read (~1 million members): its archive is read
# member by member instead.
MAX_CENTRAL_DIRECTORY = 64 * 1024 * 1024
_TAIL = 256 * 1024  # the end of the archive read first: its central directory, mostly


class ZipFormatError(ValueError):
    """The bytes are not the zip expected (signatures, sizes, checksums, deflate data)."""


class CentralEntry(NamedTuple):
    """What the central directory says of the member whose local header is at an offset."""

    name: str  # the stored bytes taken as UTF-8 (undecodable bytes kept as surrogates)
    size: int
    crc: int


ReadRange = Callable[[int, int], bytes]  # (start, length) -> the archive's bytes there


def central_directory(read: ReadRange, size: int) -> dict[int, CentralEntry]:
    """The central directory of the ``size``-byte zip that ``read`` reads: local header offset
    -> entry. ``ZipFormatError`` when there is none this reader can use (none found, spanning
    disks, bigger than ``MAX_CENTRAL_DIRECTORY``)."""
    tail_start = max(0, size - _TAIL)
    tail = read(tail_start, size - tail_start)
    end = _find_end(tail)
    _, disk, cd_disk, _, entries, cd_size, cd_offset, _ = _END.unpack_from(tail, end)
    end += tail_start
    locator = end - tail_start - _ZIP64_LOCATOR.size
    if locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        _, _, end, _ = _ZIP64_LOCATOR.unpack_from(tail, locator)
        record = _bytes_at(read, tail, tail_start, end, _ZIP64_END.size)
        (signature, _, _, _, disk, cd_disk, _, entries, cd_size,
         cd_offset) = _ZIP64_END.unpack(record)
        if signature != b"PK\x06\x06":
            raise ZipFormatError("no ZIP64 end of central directory record where its locator says")
    if disk or cd_disk:
        raise ZipFormatError("an archive spanning disks")
    if cd_size > MAX_CENTRAL_DIRECTORY:
        raise ZipFormatError(f"a {cd_size}-byte central directory")
    # Bytes before the archive proper (a zip appended to something else): its offsets count
    # from its own start, which the central directory's place tells, unless a central directory
    # header is found where the offset says all the same (as Go's archive/zip decides).
    base = end - cd_size - cd_offset
    if base < 0:
        raise ZipFormatError("the central directory is not where the end record says")
    if base and _bytes_at(read, tail, tail_start, cd_offset, 4) == _CENTRAL_SIGNATURE:
        base = 0
    directory = _bytes_at(read, tail, tail_start, base + cd_offset, cd_size)
    found: dict[int, CentralEntry] = {}
    pos = 0
    for _ in range(entries):
        if directory[pos:pos + 4] != _CENTRAL_SIGNATURE or pos + _CENTRAL.size > len(directory):
            raise ZipFormatError(f"no central directory header at its byte {pos}")
        (_, _, _, _, _, _, _, crc, csize, usize, name_len, extra_len, comment_len, _, _, _,
         offset) = _CENTRAL.unpack_from(directory, pos)
        pos += _CENTRAL.size
        name = bytes(directory[pos:pos + name_len]).decode("utf-8", "surrogateescape")
        extra = bytes(directory[pos + name_len:pos + name_len + extra_len])
        pos += name_len + extra_len + comment_len
        usize, _, offset = _zip64_central(extra, usize, csize, offset)
        found[base + offset] = CentralEntry(name, usize, crc)
    return found


def _find_end(tail: bytes) -> int:
    """Where the end of central directory record starts in ``tail``: at the last signature, whose
    comment must fit in what follows (as Go's ``archive/zip`` finds it)."""
    pos = tail.rfind(_END_SIGNATURE, max(0, len(tail) - _END.size - _MAX_COMMENT),
                     max(0, len(tail) - _END.size + 4))
    if pos < 0:
        raise ZipFormatError("no end of central directory record")
    comment_len = struct.unpack_from("<H", tail, pos + 20)[0]
    if pos + _END.size + comment_len > len(tail):
        raise ZipFormatError("the end of central directory record's comment is cut short")
    return pos


def _bytes_at(read: ReadRange, tail: bytes, tail_start: int, start: int, length: int) -> bytes:
    """The archive's ``length`` bytes at ``start``: from the tail already read where it holds
    them, else read."""
    if start >= tail_start:
        got = tail[start - tail_start:start - tail_start + length]
    else:
        got = read(start, length)
    if len(got) != length:
        raise ZipFormatError(f"{length} bytes at {start} are past the archive's end")
    return got


class _Input:
    """Buffered reads over a ``Readable``, with a look-ahead of up to a chunk (a header, a data
    descriptor). Invariant: ``_buf[_pos:_end]`` are the bytes read and not consumed yet."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._buf = bytearray(_CHUNK)
        self._pos = 0
        self._end = 0
        self._base = 0  # the stream's offset of ``_buf[0]``

    @property
    def offset(self) -> int:
        """The stream's offset of the next byte not consumed."""
        return self._base + self._pos

    def _fill(self, n: int) -> None:
        """At least ``n`` (<= ``_CHUNK``) bytes buffered, fewer only at the stream's end."""
        if self._end - self._pos >= n:
            return
        if self._pos:
            left = self._end - self._pos
            self._buf[:left] = self._buf[self._pos:self._end]
            self._base += self._pos
            self._pos, self._end = 0, left
        while self._end < n:
            got = self._raw.readinto(memoryview(self._buf)[self._end:])
            if not got:
                return
            self._end += got

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes, not consumed (fewer only at the stream's end)."""
        self._fill(n)
        return bytes(self._buf[self._pos:min(self._end, self._pos + n)])

    def read(self, n: int) -> bytes:
        data = self.peek(n)
        if len(data) < n:
            raise errors.Transient("the archive ended in the middle of a member")
        self._pos += n
        return data

    def available(self, limit: int) -> memoryview:
        """Up to ``limit`` of the next bytes (at least one), not consumed (see ``advance``)."""
        if self._pos == self._end:
            self._fill(1)
            if self._pos == self._end:
                raise errors.Transient("the archive ended in the middle of a member")
        return memoryview(self._buf)[self._pos:min(self._end, self._pos + limit)]

    def advance(self, n: int) -> None:
        self._pos += n

    def read_into(self, view: memoryview) -> None:
        """Exactly ``len(view)`` bytes into ``view`` (past the buffer: straight from the
        stream)."""
        got = min(len(view), self._end - self._pos)
        view[:got] = self._buf[self._pos:self._pos + got]
        self._pos += got
        while got < len(view):
            n = self._raw.readinto(view[got:])
            if not n:
                raise errors.Transient("the archive ended in the middle of a member")
            got += n
            self._base += n  # (consumed, never in the buffer: which is empty)

    def skip(self, n: int) -> None:
        while n:
            piece = self.available(n)
            self._pos += len(piece)
            n -= len(piece)


class ZipReader:
    """Sequential reader of a zip's members: :meth:`next_header`, then :meth:`read_data` or
    :meth:`skip` for that member. ``central`` is the archive's :func:`central_directory`.
    Invariants: the input stands at the start of the current member's data while ``_current``
    is set, else at the next record's signature; ``_entry`` is the central directory's entry of
    the current member; ``stopped`` is set once the end, or a member this reader cannot read or
    that the central directory does not confirm, was reached."""

    def __init__(self, raw: Readable, central: dict[int, CentralEntry]) -> None:
        self._in = _Input(raw)
        self._central = central
        self._entry = CentralEntry("", 0, 0)
        self._first = True
        self._current = False
        self._method = STORED
        self._crc = 0
        self._csize: int | None = None  # None: a data descriptor after the data
        self._usize: int | None = None
        self.stopped: str | None = None

    def next_header(self) -> tuple[str, int | None] | None:
        """The next member's (name, uncompressed size or None when only its data's end tells),
        None at the end (see the module docstring)."""
        if self._current:
            self.skip()
        while self.stopped is None:
            signature = self._in.peek(4)
            if len(signature) < 4:
                raise errors.Transient("the archive ended before its central directory")
            if signature in _AFTER_MEMBERS:
                self.stopped = "the central directory"
                break
            if self._first and signature in _SPAN_MARKERS:
                self._in.advance(4)
                self._first = False
                continue
            self._first = False
            if signature != _LOCAL:
                raise ZipFormatError(f"no zip record signature: {signature!r}")
            header = self._local_header()
            if header is None:
                break
            if header[0].endswith("/"):
                self.skip()  # a directory entry
                continue
            return header
        return None

    def _local_header(self) -> tuple[str, int | None] | None:
        offset = self._in.offset
        (_, _, flags, method, _, _, crc, csize, usize, name_len,
         extra_len) = _HEADER.unpack(self._in.read(_HEADER.size))
        name = self._in.read(name_len).decode("utf-8", "surrogateescape")
        extra = self._in.read(extra_len)
        entry = self._central.get(offset)
        if entry is None or entry.name != name:
            self.stopped = (f"{name!r} at byte {offset}: the central directory has "
                            f"{entry.name if entry else None!r} there")
            return None
        self._entry = entry
        if flags & _UNREADABLE_FLAGS:
            self.stopped = f"{name!r} is encrypted or patched (flags {flags:#x})"
            return None
        if method not in (STORED, DEFLATED):
            self.stopped = f"{name!r} is compressed with method {method}"
            return None
        if flags & _FLAG_DESCRIPTOR:
            if method == STORED:
                self.stopped = f"{name!r} is stored with its sizes after its data"
                return None
            self._csize = self._usize = None
        else:
            self._csize, self._usize = _zip64_sizes(extra, csize, usize)
            if method == STORED and self._csize != self._usize:
                raise ZipFormatError(f"{name!r}: stored, {self._csize} bytes for {self._usize}")
            if (self._usize, crc) != (entry.size, entry.crc):
                self.stopped = f"{name!r}: the central directory gives another size or CRC-32"
                return None
        self._method = method
        self._crc = crc
        self._current = True
        return name, self._usize

    def read_data(self, max_size: int) -> tuple[bytearray | None, int]:
        """The current member's (bytes, size); the bytes are None when it is over
        ``max_size``, or not what the central directory says (passed, not kept)."""
        self._current = False
        size = self._usize
        if size is None:
            return self._inflate_to_end(max_size)
        if size > max_size:
            self._pass_known()
            return None, size
        data = bytearray(size)
        if self._method == STORED:
            self._in.read_into(memoryview(data))
        else:
            self._inflate_known(memoryview(data))
        if zlib.crc32(data) != self._crc:
            raise ZipFormatError("member CRC-32 mismatch")
        return data, size

    def skip(self) -> None:
        """Pass the current member's data."""
        self._current = False
        if self._usize is None:
            self._inflate_to_end(-1)
        else:
            self._pass_known()

    def _pass_known(self) -> None:
        assert self._csize is not None
        self._in.skip(self._csize)

    def _inflate_known(self, out: memoryview) -> None:
        """Inflate the member's ``_csize`` bytes into ``out``, which they must fill exactly."""
        assert self._csize is not None
        z = zlib.decompressobj(-15)
        left = self._csize
        got = 0
        while not z.eof:
            if not left:
                raise ZipFormatError("the member's deflate data ends before its stream")
            piece = self._in.available(min(left, _IN_PIECE))
            try:
                chunk = z.decompress(piece, len(out) - got + 1)
            except zlib.error as exc:
                raise ZipFormatError(f"not deflate data: {exc}") from None
            used = len(piece) - len(z.unconsumed_tail) - len(z.unused_data)
            self._in.advance(used)
            left -= used
            if got + len(chunk) > len(out):
                raise ZipFormatError("the member inflates to more than its size")
            out[got:got + len(chunk)] = chunk
            got += len(chunk)
        if got != len(out):
            raise ZipFormatError(f"the member inflates to {got} bytes, not {len(out)}")
        self._in.skip(left)  # compressed bytes past the deflate stream's end (Go ignores them)

    def _inflate_to_end(self, max_size: int) -> tuple[bytearray | None, int]:
        """Inflate a member up to the end of its deflate stream, then read its data descriptor;
        (bytes, or None once over ``max_size``; size)."""
        z = zlib.decompressobj(-15)
        kept: bytearray | None = bytearray()
        size = consumed = crc = 0
        while not z.eof:
            piece = self._in.available(_IN_PIECE)
            try:
                chunk = z.decompress(piece, _OUT_PIECE)
            except zlib.error as exc:
                raise ZipFormatError(f"not deflate data: {exc}") from None
            used = len(piece) - len(z.unconsumed_tail) - len(z.unused_data)
            self._in.advance(used)
            consumed += used
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
            if kept is not None:
                if size <= max_size:
                    kept += chunk
                else:
                    kept = None
        self._pass_descriptor(crc, consumed, size)
        if (size, crc) != (self._entry.size, self._entry.crc):
            self.stopped = "a member that the central directory gives another size or CRC-32"
            return None, size  # not served from here: fetched on its own
        return kept, size

    def _pass_descriptor(self, crc: int, csize: int, usize: int) -> None:
        """Read past the data descriptor that tells (crc, csize, usize), in whichever of its
        four layouts it comes: the one that matches and is followed by a record's signature
        (an empty member's 64-bit descriptor also matches as a 32-bit one)."""
        raw = self._in.peek(28)
        matching = []  # where each matching layout ends
        for start in (4, 0) if raw.startswith(_DESCRIPTOR) else (0,):
            for layout in ("<III", "<IQQ"):
                end = start + struct.calcsize(layout)
                if len(raw) >= end and struct.unpack_from(layout, raw, start) == (
                        crc, csize, usize):
                    matching.append(end)
        followed = [end for end in matching if raw[end:end + 4] in _NEXT_RECORDS]
        if followed:
            self._in.advance(followed[0])
        elif len(raw) < 28:
            raise errors.Transient("the archive ended at a member's data descriptor")
        elif matching:
            self._in.advance(matching[0])
        else:
            raise ZipFormatError("the data descriptor does not match the member's data")


def _zip64_sizes(extra: bytes, csize: int, usize: int) -> tuple[int, int]:
    """(compressed, uncompressed) size of a local header, from the ZIP64 extra field where the
    header's field is 0xFFFFFFFF (the field holds the uncompressed size first; a local header's
    holds both)."""
    if _SIZE_IN_ZIP64 not in (csize, usize):
        return csize, usize
    values = _zip64_values(extra)
    if len(values) >= 2:
        return values[1], values[0]
    usize, csize = _filled((usize, csize), values)
    return csize, usize


def _zip64_central(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """(uncompressed size, compressed size, local header offset) of a central directory entry:
    those of 0xFFFFFFFF come from its ZIP64 extra field, in this order."""
    if _SIZE_IN_ZIP64 not in (usize, csize, offset):
        return usize, csize, offset
    usize, csize, offset = _filled((usize, csize, offset), _zip64_values(extra))
    return usize, csize, offset


def _zip64_values(extra: bytes) -> list[int]:
    """The 8-byte values of the ZIP64 extra field in ``extra``."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4:pos + 4 + length]
        pos += 4 + length
        if kind == _ZIP64_EXTRA:
            return list(struct.unpack_from(f"<{len(body) // 8}Q", body))
    raise ZipFormatError("values of 0xFFFFFFFF without a ZIP64 extra field")


def _filled(fields: tuple[int, ...], values: list[int]) -> list[int]:
    """``fields`` with each of 0xFFFFFFFF replaced by the next of the ZIP64 ``values``."""
    out = list(fields)
    left = iter(values)
    for i, value in enumerate(out):
        if value == _SIZE_IN_ZIP64:
            try:
                out[i] = next(left)
            except StopIteration:
                raise ZipFormatError("a ZIP64 extra field too short for its header") from None
    return out

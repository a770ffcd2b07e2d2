"""An archive's members in archive order, read out of the archive's stored bytes (one streamed
GET of the whole object) instead of one request per member: the framing of ``.tar``, of
``.tgz``/``.tar.gz`` through zlib, of ``.tar.lz4`` through the ``lz4`` package's frame
decoder (a C binding: an LZ4 decoder in Python would cost more than the requests it saves),
and of ``.zip`` through its local file headers, each held against the central directory
(``zip_members``: the members a zip stream cannot read, or that the central directory does not
confirm, end it early, and those from there on are fetched one by one).

Member names are cleaned as AIS cleans them in its listings (``path.Join(archive, name)``:
``./a`` is ``a``; a name that climbs out of the archive is dropped), so a streamed member is
found under the name the mount shows.

Concurrency: a :class:`MemberScanner` is used by one thread at a time (the worker thread of the
request that reads it); it keeps no global state.
"""

from __future__ import annotations

import logging
import posixpath
import zlib
from typing import Protocol

import lz4.frame

from . import errors
from .getbatch import Readable, TarReader
from .zip_members import CentralEntry, ZipReader

log = logging.getLogger(__name__)

STREAMED_FORMATS = (".tar", ".tgz", ".tar.gz", ".tar.lz4", ".zip")
_CHUNK = 256 * 1024


def streamable(key: str) -> bool:
    """Whether the archive ``key`` can be read in archive order from its stored bytes."""
    return key.endswith(STREAMED_FORMATS)


def needs_central_directory(key: str) -> bool:
    """Whether :class:`MemberScanner` reads the archive ``key`` against its central directory
    (``zip_members.central_directory``)."""
    return key.endswith(".zip")


def member_path(archive: str, name: str) -> str | None:
    """The path under which AIS lists the member stored as ``name`` (None: not listed)."""
    joined = posixpath.normpath(f"{archive}/{name}")
    if not joined.startswith(archive + "/") or joined == archive + "/":
        return None
    return joined[len(archive) + 1:]


class Gunzip:
    """The decompressed bytes of a gzip stream, as a ``Readable`` (bounded memory: at most one
    input chunk and one output request at a time)."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(wbits=31)
        self._chunk = bytearray(_CHUNK)
        self._tail = b""

    def readinto(self, buf: memoryview, /) -> int:
        while not self._z.eof:
            if not self._tail:
                n = self._raw.readinto(memoryview(self._chunk))
                if not n:
                    raise errors.Transient("the archive ended inside its gzip stream")
                self._tail = bytes(self._chunk[:n])
            try:
                out = self._z.decompress(self._tail, len(buf))
            except zlib.error as exc:
                raise ValueError(f"not gzip data: {exc}") from None
            self._tail = self._z.unconsumed_tail
            if out:
                buf[:len(out)] = out
                return len(out)
        return 0


class Unlz4:
    """The decompressed bytes of an LZ4 frame, as a ``Readable`` (bounded memory, as
    :class:`Gunzip`)."""

    def __init__(self, raw: Readable) -> None:
        self._raw = raw
        self._lz4 = lz4.frame.LZ4FrameDecompressor()
        self._chunk = bytearray(_CHUNK)

    def readinto(self, buf: memoryview, /) -> int:
        while not self._lz4.eof:
            data = b""
            if self._lz4.needs_input:
                n = self._raw.readinto(memoryview(self._chunk))
                if not n:
                    raise errors.Transient("the archive ended inside its LZ4 frame")
                data = bytes(self._chunk[:n])
            try:
                out = self._lz4.decompress(data, max_length=len(buf))
            except RuntimeError as exc:  # (what the binding raises for a bad frame)
                raise ValueError(f"not LZ4 data: {exc}") from None
            if out:
                buf[:len(out)] = out
                return len(out)
        return 0


class _Members(Protocol):
    """One archive format's members, one at a time: the next one's (name as stored, size or None
    when only its data's end tells) or None at the end, then its data read or skipped."""

    def next_header(self) -> tuple[str, int | None] | None: ...

    def read_data(self, max_size: int) -> tuple[bytearray | None, int]: ...

    def skip(self) -> None: ...


class _TarMembers:
    """A TAR's regular members (``getbatch.TarReader``) as :class:`_Members`."""

    def __init__(self, raw: Readable) -> None:
        self._tar = TarReader(raw)
        self._size = 0

    def next_header(self) -> tuple[str, int | None] | None:
        header = self._tar.next_header()
        if header is not None:
            self._size = header[1]
        return header

    def read_data(self, max_size: int) -> tuple[bytearray | None, int]:
        if self._size > max_size:
            self._tar.skip(self._size)
            return None, self._size
        data = bytearray(self._size)
        self._tar.read_data(memoryview(data))
        return data, self._size

    def skip(self) -> None:
        self._tar.skip(self._size)


class MemberScanner:
    """The members of one archive, one at a time, in archive order."""

    def __init__(self, archive: str, raw: Readable,
                 central: dict[int, CentralEntry] | None = None) -> None:
        self.archive = archive
        self._zip: ZipReader | None = None
        self._members: _Members
        if needs_central_directory(archive):
            if central is None:
                raise ValueError(f"{archive}: a zip is read against its central directory")
            self._members = self._zip = ZipReader(raw, central)
            return
        if archive.endswith((".tgz", ".tar.gz")):
            raw = Gunzip(raw)
        elif archive.endswith(".tar.lz4"):
            raw = Unlz4(raw)
        self._members = _TarMembers(raw)

    def next(self, max_size: int) -> tuple[str, bytearray | None, int] | None:
        """(listed path, bytes, size) of the next member, None at the end; the bytes are None
        for a member over ``max_size`` (skipped). Raises ``getbatch.TarFormatError`` or
        ``ValueError`` for what is not such an archive, ``Transient`` for an early end."""
        while True:
            header = self._members.next_header()
            if header is None:
                if self._zip is not None and self._zip.stopped is not None:
                    log.debug("%s: read in order up to %s", self.archive, self._zip.stopped)
                return None
            path = member_path(self.archive, header[0])
            if path is None:
                self._members.skip()
                continue
            data, size = self._members.read_data(max_size)
            return path, data, size

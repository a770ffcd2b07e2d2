"""An archive's members in archive order, read out of the archive's stored bytes (one streamed
GET of the whole object) instead of one request per member: the framing of ``.tar``, of
``.tgz``/``.tar.gz`` through zlib and of ``.tar.lz4`` through the ``lz4`` package's frame
decoder (a C binding: an LZ4 decoder in Python would cost more than the requests it saves).
``.zip`` is not streamed (its members are fetched one by one: a zip's sizes are in its central
directory, at the end).

Member names are cleaned as AIS cleans them in its listings (``path.Join(archive, name)``:
``./a`` is ``a``; a name that climbs out of the archive is dropped), so a streamed member is
found under the name the mount shows.

Concurrency: a :class:`MemberScanner` is used by one thread at a time (the worker thread of the
request that reads it); it keeps no global state.
"""

from __future__ import annotations

import posixpath
import zlib

import lz4.frame

from . import errors
from .getbatch import Readable, TarReader

STREAMED_FORMATS = (".tar", ".tgz", ".tar.gz", ".tar.lz4")
_CHUNK = 256 * 1024


def streamable(key: str) -> bool:
    """Whether the archive ``key`` can be read in archive order from its stored bytes."""
    return key.endswith(STREAMED_FORMATS)


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


class MemberScanner:
    """The members of one archive, one at a time, in archive order."""

    def __init__(self, archive: str, raw: Readable) -> None:
        self.archive = archive
        if archive.endswith((".tgz", ".tar.gz")):
            raw = Gunzip(raw)
        elif archive.endswith(".tar.lz4"):
            raw = Unlz4(raw)
        self._tar = TarReader(raw)

    def next(self, max_size: int) -> tuple[str, bytearray | None, int] | None:
        """(listed path, bytes, size) of the next member, None at the end; the bytes are None
        for a member over ``max_size`` (skipped). Raises ``getbatch.TarFormatError`` or
        ``ValueError`` for what is not such an archive, ``Transient`` for an early end."""
        while True:
            header = self._tar.next_header()
            if header is None:
                return None
            name, size = header
            path = member_path(self.archive, name)
            if path is None:
                self._tar.skip(size)
                continue
            if size > max_size:
                self._tar.skip(size)
                return path, None, size
            data = bytearray(size)
            self._tar.read_data(memoryview(data))
            return path, data, size

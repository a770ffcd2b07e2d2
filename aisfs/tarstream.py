"""The framing of a TAR stream as AIS's Get-Batch sends it: 512-byte headers, extended-header
records, data padded to whole blocks. Only what a reader of the stream needs to find each
entry's name and size and where its data starts; the data itself is not touched here.

Get-Batch (``GET /v1/ml/moss``, streaming) answers with one TAR entry per requested item, in the
request's order; an item AIS could not read comes back as an empty entry named
``__404__/<bucket>/<object>[/<archpath>]`` (even when the request did not ask to go on after
errors), and an error after the first byte simply ends the stream early.

Concurrency: pure functions and immutable values; safe from any thread.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

BLOCK = 512
# Get-Batch's name prefix for an item it could not read (api/apc/ml.go: MossMissingDir).
MISSING_PREFIX = "__404__/"

# Entry types that describe the next entry instead of being one.
_PAX = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_GLOBAL = (tarfile.XGLTYPE,)
_GNU_LONG = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class TarFormatError(ValueError):
    """The stream is not the TAR that Get-Batch sends (bad checksum, bad record)."""


@dataclass(frozen=True, slots=True)
class Header:
    """One 512-byte header: the entry's type, name (as in the header) and data size."""

    type: bytes
    name: str
    size: int

    @property
    def describes_next(self) -> bool:
        """An extended header (PAX, GNU long name): its data is about the entry after it."""
        return self.type in _PAX or self.type in _GLOBAL or self.type in _GNU_LONG

    @property
    def pax(self) -> bool:
        """A PAX extended header for the next entry (its records may hold the entry's path)."""
        return self.type in _PAX

    @property
    def long_name(self) -> bool:
        """A GNU long-name entry: its data is the next entry's name."""
        return self.type == tarfile.GNUTYPE_LONGNAME


def padded(size: int) -> int:
    """The bytes an entry's data takes in the stream: ``size`` rounded up to whole blocks."""
    return -(-size // BLOCK) * BLOCK


def parse_header(block: bytes) -> Header | None:
    """The header in one 512-byte block; None for an all-zero block (the end of the archive)."""
    if len(block) != BLOCK:
        raise TarFormatError(f"a header block of {len(block)} bytes")
    if not block.strip(b"\0"):
        return None
    try:
        info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise TarFormatError(f"bad TAR header: {exc}") from None
    return Header(info.type, info.name, info.size)


def pax_path(data: bytes) -> str | None:
    """The ``path`` record of a PAX extended header's data ("<len> <key>=<value>\\n" records)."""
    pos = 0
    found: str | None = None
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos)
        if space < 0 or not data[pos:space].isdigit():
            raise TarFormatError("bad PAX record length")
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise TarFormatError("bad PAX record")
        key, _, value = record[:-1].partition(b"=")
        if key == b"path":
            found = value.decode("utf-8", "surrogateescape")
        pos += length
    return found


def gnu_long_name(data: bytes) -> str:
    """The name in a GNU long-name entry's data (NUL-terminated)."""
    return data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

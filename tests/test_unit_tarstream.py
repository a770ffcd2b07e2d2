"""aisfs/tarstream.py: the TAR framing of Get-Batch replies, against streams made by tarfile."""

from __future__ import annotations

import io
import tarfile

import pytest

from aisfs import tarstream
from aisfs.tarstream import BLOCK, Header, padded, parse_header


def tar_of(entries: list[tuple[str, bytes]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def walk(stream: bytes) -> list[tuple[str, bytes]]:
    """Every entry of a stream as a Get-Batch reader sees it: (name, data)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    name: str | None = None
    while True:
        header = parse_header(stream[pos:pos + BLOCK])
        pos += BLOCK
        if header is None:
            return out
        data = stream[pos:pos + header.size]
        pos += padded(header.size)
        if header.long_name:
            name = tarstream.gnu_long_name(data)
        elif header.pax:
            name = tarstream.pax_path(data) or name
        elif not header.describes_next:
            out.append((name or header.name, data))
            name = None


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_entries_and_sizes(fmt: int) -> None:
    entries = [("b/s.tar/a.txt", b"hello"), ("b/s.tar/empty", b""), ("b/x", bytes(range(256)) * 3),
               ("b/s.tar/block", b"z" * BLOCK)]
    assert walk(tar_of(entries, fmt)) == entries


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_and_non_ascii_names(fmt: int) -> None:
    entries = [("s.tar/" + "d" * 150 + "/long.txt", b"long"), ("s.tar/ü/é.txt", b"accents")]
    assert walk(tar_of(entries, fmt)) == entries


def test_header_fields() -> None:
    stream = tar_of([("__404__/b/s.tar/a", b"")], tarfile.USTAR_FORMAT)
    header = parse_header(stream[:BLOCK])
    assert header == Header(tarfile.REGTYPE, "__404__/b/s.tar/a", 0)
    assert header is not None and not header.describes_next
    assert header.name.startswith(tarstream.MISSING_PREFIX)


def test_end_of_archive_and_bad_blocks() -> None:
    assert parse_header(bytes(BLOCK)) is None
    block = bytearray(tar_of([("a", b"1")], tarfile.USTAR_FORMAT)[:BLOCK])
    block[0] ^= 0xFF  # the checksum no longer matches
    with pytest.raises(tarstream.TarFormatError):
        parse_header(bytes(block))
    with pytest.raises(tarstream.TarFormatError):
        parse_header(b"short")
    with pytest.raises(tarstream.TarFormatError):
        parse_header(b"not a header at all".ljust(BLOCK, b"!"))


def test_pax_records() -> None:
    assert tarstream.pax_path(b"16 path=a/b/c.d\n20 mtime=1700000000\n") == "a/b/c.d"
    assert tarstream.pax_path(b"20 mtime=1700000000\n\0\0") is None
    for bad in (b"x path=a\n", b"8 path=a\n", b"3 p\n", b"12 pathabcd\n"):
        with pytest.raises(tarstream.TarFormatError):
            tarstream.pax_path(bad)


def test_padding() -> None:
    assert [padded(n) for n in (0, 1, 511, 512, 513, 1024)] == [0, 512, 512, 512, 1024, 1024]

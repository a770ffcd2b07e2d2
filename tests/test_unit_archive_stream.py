"""aisfs/member_stream.py and aisfs/zip_members.py (an archive's members from its stored bytes)
and aisfs/archive_stream.py (archive-order read-ahead across members), on real tar, tgz, lz4 and
zip bytes and the in-memory AIS."""

from __future__ import annotations

import gzip
import io
import random
import struct
import tarfile
import zipfile

import lz4.frame
import pytest
import trio
import trio.testing

from aisfs import errors, getbatch
from aisfs.archive_stream import IDLE_SECONDS, ArchiveStreams
from aisfs.archives import ArchiveContents, Member
from aisfs.budget import MemoryBudget
from aisfs.member_stream import Gunzip, MemberScanner, Unlz4, member_path
from aisfs.zip_members import CentralEntry, ZipFormatError, central_directory

from .fakeais import FakeAis
from .shards import rename_local, zip_of

KIB = 1024


class BytesReadable:
    """A Readable over bytes, handing out at most ``step`` bytes per call."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self.data = data
        self.pos = 0
        self.step = step

    def readinto(self, buf: memoryview, /) -> int:
        n = min(len(buf), self.step, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def scanner_of(key: str, data: bytes, step: int = 1000, whole: bytes | None = None,
               ) -> MemberScanner:
    """A scanner of ``data``; a zip's against the central directory of ``whole`` (default:
    ``data``)."""
    central = None
    if key.endswith(".zip"):
        source = data if whole is None else whole
        central = central_directory(lambda start, length: source[start:start + length],
                                    len(source))
    return MemberScanner(key, BytesReadable(data, step), central)


def tar_of(members: list[tuple[str, bytes]], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "a"
        tf.addfile(link)
    return buf.getvalue()


MEMBERS = [(f"{i:04d}.bin", random.Random(i).randbytes(1000 + i)) for i in range(40)]


@pytest.mark.parametrize(("name", "path"), [
    ("a", "a"), ("./a", "a"), ("d/./e//f", "d/e/f"), ("x/../a", "a"), ("/abs", "abs"),
    ("../out", None), ("", None), ("d/", "d"),
])
def test_member_path_as_ais_lists_it(name: str, path: str | None) -> None:
    assert member_path("dir/s.tar", name) == path


@pytest.mark.parametrize("key", ["s.tar", "s.tgz", "s.tar.gz", "s.tar.lz4"])
def test_scanner_reads_members_in_archive_order(key: str) -> None:
    members = [("./dot", b"d"), *MEMBERS[:5], ("big", b"x" * 5000)]
    data = tar_of(members, gz=key in ("s.tgz", "s.tar.gz"))
    if key.endswith(".lz4"):
        data = lz4.frame.compress(data)
    scanner = MemberScanner(key, BytesReadable(data, 777))
    got = []
    while (item := scanner.next(max_size=4096)) is not None:
        got.append(item)
    assert [(p, bytes(d) if d is not None else None, n) for p, d, n in got] == (
        [("dot", b"d", 1)] + [(n, d, len(d)) for n, d in MEMBERS[:5]] + [("big", None, 5000)])


def test_scanner_errors() -> None:
    with pytest.raises(getbatch.TarFormatError):
        MemberScanner("s.tar", BytesReadable(b"not a tar" * 100)).next(100)
    with pytest.raises(ValueError):
        MemberScanner("s.tgz", BytesReadable(b"not gzip" * 100)).next(100)
    with pytest.raises(ValueError):
        MemberScanner("s.tar.lz4", BytesReadable(b"not lz4" * 100)).next(100)
    with pytest.raises(errors.Transient):  # a frame cut short: the TAR inside ends early
        MemberScanner("s.tar.lz4", BytesReadable(
            lz4.frame.compress(tar_of(MEMBERS[:3]))[:300])).next(100_000)
    truncated = tar_of(MEMBERS[:3])[:1500]
    with pytest.raises(errors.Transient):
        MemberScanner("s.tar", BytesReadable(truncated)).next(100_000)


def scan_all(key: str, data: bytes, max_size: int = 1 << 30, step: int = 777,
             ) -> list[tuple[str, bytes | None, int]]:
    scanner = scanner_of(key, data, step)
    got = []
    while (item := scanner.next(max_size)) is not None:
        got.append((item[0], bytes(item[1]) if item[1] is not None else None, item[2]))
    assert scanner.next(max_size) is None  # the end stays the end
    return got


# In archive order: cleaned and dropped names, nested paths, empty members, directory entries
# (not members), a member over the scan's limit of 4096 bytes.
ZIP_MEMBERS = [
    ("./dot", b"d"), ("empty", b""), ("top/", b""), ("top/mid/", b""),
    ("top/mid/leaf.txt", b"leaf"), ("../out", b"climbs out"), *MEMBERS[:5],
    ("big", b"x" * 5000), ("a/empty", b""), ("zz/last.bin", random.Random(9).randbytes(2000)),
]
ZIP_EXPECTED = [("dot", b"d", 1), ("empty", b"", 0), ("top/mid/leaf.txt", b"leaf", 4),
                *[(n, d, len(d)) for n, d in MEMBERS[:5]], ("big", None, 5000),
                ("a/empty", b"", 0), ("zz/last.bin", ZIP_MEMBERS[-1][1], 2000)]


# (method, written to a file that can seek): sizes in the local headers, or in data descriptors
# after deflated data (stored members with data descriptors end a stream: tested below).
ZIP_KINDS = [(zipfile.ZIP_STORED, True), (zipfile.ZIP_DEFLATED, True),
             (zipfile.ZIP_DEFLATED, False)]


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize(("method", "seekable"), ZIP_KINDS)
def test_zip_members_in_archive_order(method: int, seekable: bool, zip64: bool) -> None:
    """32-bit or ZIP64 sizes; members handed over in small reads too."""
    data = zip_of(ZIP_MEMBERS, method=method, seekable=seekable, zip64=zip64)
    assert scan_all("d/s.zip", data, max_size=4096) == ZIP_EXPECTED
    assert scan_all("d/s.zip", data, max_size=4096, step=1) == ZIP_EXPECTED


@pytest.mark.parametrize(("method", "seekable"), ZIP_KINDS)
def test_zip_members_bigger_than_the_buffers(method: int, seekable: bool) -> None:
    """Members of several read chunks and several inflated pieces, kept and passed."""
    rng = random.Random(5)
    big = [(f"{i}", rng.randbytes(300 * KIB) + bytes(1500 * KIB)) for i in range(3)]
    data = zip_of(big, method=method, seekable=seekable)
    assert scan_all("s.zip", data) == [(n, d, len(d)) for n, d in big]
    assert scan_all("s.zip", data, max_size=1000) == [(n, None, len(d)) for n, d in big]


def set_flags(data: bytes, name: str, flags: int) -> bytes:
    """``data`` with the general-purpose flags of the local header of ``name`` or'ed."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        at = zf.getinfo(name).header_offset
    old, = struct.unpack_from("<H", data, at + 6)
    return data[:at + 6] + struct.pack("<H", old | flags) + data[at + 8:]


@pytest.mark.parametrize("case", ["stored with a data descriptor", "bzip2", "encrypted"])
def test_zip_stream_ends_cleanly_at_a_member_it_cannot_read(case: str) -> None:
    """What comes before is read; then the end, not an error: the caller fetches the rest
    another way."""
    members = [("a", b"a" * 300), ("b", b"bb"), ("c", b"c" * 1000), ("d", b"d")]
    if case == "stored with a data descriptor":
        data = zip_of(members, seekable=False, stored=frozenset({"c"}))
    elif case == "bzip2":
        mixed = io.BytesIO()
        with zipfile.ZipFile(mixed, "w") as zf:
            for name, content in members:
                zf.writestr(name, content,
                            zipfile.ZIP_BZIP2 if name == "c" else zipfile.ZIP_DEFLATED)
        data = mixed.getvalue()
    else:
        data = set_flags(zip_of(members), "c", 0x1)
    scanner = scanner_of("s.zip", data)
    assert [scanner.next(1 << 20) for _ in range(2)] == [
        ("a", bytearray(b"a" * 300), 300), ("b", bytearray(b"bb"), 2)]
    assert scanner.next(1 << 20) is None
    assert scanner.next(1 << 20) is None


def central_directory_at(data: bytes) -> int:
    return data.index(b"PK\x01\x02")


@pytest.mark.parametrize("zip64", [False, True])
@pytest.mark.parametrize("seekable", [True, False])
def test_a_zip_cut_short_is_an_early_end(seekable: bool, zip64: bool) -> None:
    """Cut anywhere before its central directory: the members before the cut, then
    ``Transient`` (never an end, never other bytes)."""
    data = zip_of(ZIP_MEMBERS, seekable=seekable, zip64=zip64)
    whole = scan_all("s.zip", data, max_size=4096)
    for cut in range(0, central_directory_at(data), 7):
        scanner = scanner_of("s.zip", data[:cut], whole=data)
        got = []
        with pytest.raises(errors.Transient):
            while (item := scanner.next(4096)) is not None:
                got.append((item[0], bytes(item[1]) if item[1] is not None else None, item[2]))
        assert got == whole[:len(got)], cut


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def test_zip_corruption_is_a_format_error() -> None:
    members = [("a", b"a" * 300), ("b", random.Random(4).randbytes(500))]
    stored = zip_of(members, method=zipfile.ZIP_STORED)
    deflated = zip_of(members)
    piped = zip_of(members, seekable=False)
    descriptor = piped.index(b"PK\x07\x08")
    second = stored.index(b"PK\x03\x04", 4)
    for bad in [
        b"not a zip" * 100,
        flip(stored, stored.index(b"a" * 300) + 10),  # stored data: CRC-32 mismatch
        flip(deflated, deflated.index(b"PK\x03\x04", 4) - 3),  # deflate data
        flip(piped, descriptor + 5),  # a data descriptor's CRC-32
        flip(piped, descriptor + 9),  # a data descriptor's size
        stored[:second] + b"XY" + stored[second + 2:],  # a record's signature
    ]:
        with pytest.raises(ValueError):
            scan_all("s.zip", bad)


def test_a_single_part_zip_marked_as_split() -> None:
    data = zip_of(MEMBERS[:3])
    for marker in (b"PK\x07\x08", b"PK00"):
        assert scan_all("s.zip", marker + data) == [(n, d, len(d)) for n, d in MEMBERS[:3]]


def test_a_zip_without_members() -> None:
    empty = io.BytesIO()
    zipfile.ZipFile(empty, "w").close()
    assert scan_all("s.zip", empty.getvalue()) == []
    assert scan_all("s.zip", zip_of([("d/", b"")])) == []  # a directory entry only


def set_central_crc(data: bytes, name: str, crc: int) -> bytes:
    at = data.index(b"PK\x01\x02")
    while True:
        name_len, = struct.unpack_from("<H", data, at + 28)
        if data[at + 46:at + 46 + name_len] == name.encode():
            return data[:at + 16] + struct.pack("<I", crc) + data[at + 20:]
        at = data.index(b"PK\x01\x02", at + 4)


@pytest.mark.parametrize("seekable", [True, False])
def test_a_local_header_the_central_directory_does_not_confirm_ends_the_stream(
        seekable: bool) -> None:
    """AIS serves a member by its central directory entry: a local header naming another
    member (of the same size, so only the name tells), or a member whose size or CRC-32 the
    central directory gives otherwise, is never served from the stream: it ends there."""
    members = [("aaaa", b"1" * 7), ("bbbb", b"2" * 7), ("cccc", b"3" * 7)]
    data = zip_of(members, seekable=seekable)
    assert scan_all("s.zip", rename_local(data, "aaaa", "bbbb")) == []
    assert scan_all("s.zip", rename_local(data, "bbbb", "cccc")) == [("aaaa", b"1" * 7, 7)]
    bad_crc = set_central_crc(data, "bbbb", 12345)
    # (a member whose sizes follow its data is known only once read: not kept, then the end)
    assert scan_all("s.zip", bad_crc) == [("aaaa", b"1" * 7, 7)] + (
        [] if seekable else [("bbbb", None, 7)])


def test_central_directory_of_zips_as_go_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """ZIP64 end records, an archive comment, bytes before the archive, and a central
    directory bigger than the end read first (a second read)."""
    members = [(f"{i:05d}-" + "n" * 60, bytes([i % 256]) * (i % 5)) for i in range(5000)]
    reads: list[tuple[int, int]] = []

    def central(data: bytes) -> dict[int, CentralEntry]:
        reads.clear()

        def read(start: int, length: int) -> bytes:
            reads.append((start, length))
            return data[start:start + length]

        return central_directory(read, len(data))

    def expected(data: bytes, base: int = 0) -> dict[int, CentralEntry]:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return {base + i.header_offset: CentralEntry(i.filename, i.file_size, i.CRC)
                    for i in zf.infolist()}

    big = zip_of(members, method=zipfile.ZIP_STORED)
    assert central(big) == expected(big) and len(reads) == 2  # the end, then the rest
    small = zip_of(members[:50], zip64=True)
    assert central(small) == expected(small) and len(reads) == 1
    assert central(b"prefix" + small) == expected(small, base=6)
    commented = io.BytesIO()
    with zipfile.ZipFile(commented, "w") as zf:
        zf.comment = b"a comment " * 6000
        zf.writestr("x", b"x")
    assert central(commented.getvalue()) == expected(commented.getvalue())
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 2)  # ZIP64 end records from 3 members
    end64 = zip_of(members[:50])
    assert b"PK\x06\x06" in end64 and central(end64) == expected(end64)
    for bad in (b"", b"not a zip" * 100, small[:-5], big[:len(big) // 2], end64[:-30]):
        with pytest.raises(ZipFormatError):
            central(bad)


@pytest.mark.parametrize("unpack", [Gunzip, Unlz4])
def test_decompression_in_small_pieces(unpack: type[Gunzip | Unlz4]) -> None:
    raw = random.Random(7).randbytes(300_000)
    packed = gzip.compress(raw) if unpack is Gunzip else lz4.frame.compress(raw)
    stream = unpack(BytesReadable(packed, 100))
    out = bytearray()
    buf = bytearray(4096)
    while n := stream.readinto(memoryview(buf)):
        out += buf[:n]
    assert bytes(out) == raw


# Members enough for a stream's window to matter.
MANY = [(f"{i:04d}", bytes([i % 256]) * 10) for i in range(400)]


class Shard:
    def __init__(self, key: str = "s.tar", members: list[tuple[str, bytes]] = MEMBERS) -> None:
        self.fake = FakeAis()
        self.key = key
        self.members = dict(members)
        self.fake.store(key, tar_of(members, gz=key != "s.tar"))
        self.budget = MemoryBudget(64 * 1024 * KIB)

    async def tree(self) -> ArchiveContents:
        return await self.fake.list_archive("b", self.key)

    def streams(self, nursery: trio.Nursery) -> ArchiveStreams:
        return ArchiveStreams(self.fake, self.budget, lambda fn: nursery.start_soon(fn),
                              max_member=1 << 20)

    async def read(self, streams: ArchiveStreams, tree: ArchiveContents, name: str) -> bool:
        """Take a member as a member reader does; True when the stream had it."""
        member = tree.find(name)
        assert isinstance(member, Member)
        data = await streams.take("b", tree, member)
        if data is None:
            return False
        assert bytes(data) == self.members[name]
        return True


@pytest.mark.parametrize("key", ["s.tar", "s.tgz"])
async def test_members_read_in_order_come_from_one_stream(nursery: trio.Nursery,
                                                           key: str) -> None:
    shard = Shard(key)
    tree = await shard.tree()
    streams = shard.streams(nursery)
    served = [await shard.read(streams, tree, name) for name, _ in MEMBERS]
    assert served[:2] == [False, False] and all(served[2:])
    assert streams.started == 1
    assert shard.fake.calls["open_member_stream"] == 1
    await trio.sleep(0.01)
    assert shard.budget.used == 0  # nothing held once everything was taken


async def test_random_order_does_not_stream(nursery: trio.Nursery) -> None:
    shard = Shard()
    tree = await shard.tree()
    streams = shard.streams(nursery)
    order = [name for name, _ in MEMBERS]
    random.Random(3).shuffle(order)
    assert not any([await shard.read(streams, tree, name) for name in order])
    assert streams.started == 0


async def test_zip_is_streamed(nursery: trio.Nursery) -> None:
    shard = Shard()
    shard.fake.store("s.zip", zip_of(MEMBERS))
    tree = await shard.fake.list_archive("b", "s.zip")
    streams = shard.streams(nursery)
    served = [await shard.read(streams, tree, name) for name, _ in MEMBERS]
    assert served[:2] == [False, False] and all(served[2:])
    assert shard.fake.calls["open_member_stream"] == 1


async def test_after_an_archive_read_through_the_next_one_streams_from_its_first_member(
        nursery: trio.Nursery) -> None:
    """A reader going through a directory's shards: once a stream read one to its end, the
    first member of a later shard of that directory starts its stream at once; a shard of
    another directory, or a later member first, still needs a run."""
    shard = Shard()
    for key in ("d/s0.tar", "d/s1.tar", "d/s2.tar", "e/s3.tar"):
        shard.fake.store(key, tar_of(MEMBERS))
    streams = shard.streams(nursery)

    async def served(key: str, names: list[str]) -> list[bool]:
        shard.key = key
        tree = await shard.tree()
        return [await shard.read(streams, tree, name) for name in names]

    names = [name for name, _ in MEMBERS]
    assert await served("d/s1.tar", names[:3]) == [False, False, True]  # nothing read through
    assert await served("d/s0.tar", names) == [False, False] + [True] * (len(names) - 2)
    await trio.testing.wait_all_tasks_blocked()
    assert await served("d/s2.tar", names) == [True] * len(names)
    assert await served("e/s3.tar", names[:3]) == [False, False, True]
    assert streams.started == 4


async def test_a_stream_that_ends_early_is_not_started_again(
        nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    """A stream that ends before the archive (a zip member it cannot read): the members after
    its end are fetched one by one, without a new stream for each run of them (it would read
    up to the same place again)."""
    shard = Shard()
    shard.fake.stream_ends_after = 10
    tree = await shard.tree()
    streams = shard.streams(nursery)
    served = [await shard.read(streams, tree, name) for name, _ in MEMBERS[:10]]
    assert served == [False] * 2 + [True] * 8
    await trio.sleep(IDLE_SECONDS * 3)
    assert not streams._streams  # the ended stream let go of what the reader passed
    assert not any([await shard.read(streams, tree, name) for name, _ in MEMBERS[10:]])
    assert streams.started == 1 and shard.fake.calls["open_member_stream"] == 1
    # Another version of the archive is streamed again.
    shard.fake.store("s.tar", tar_of(MEMBERS))
    tree = await shard.tree()
    served = [await shard.read(streams, tree, name) for name, _ in MEMBERS[:5]]
    assert served == [False] * 2 + [True] * 3 and streams.started == 2


@pytest.mark.parametrize("failure", [
    errors.BadArchive("no usable central directory", 0, "ais://b/s.tar"),
    errors.Transient("connection refused", 0, "ais://b/s.tar"),
])
async def test_an_archive_that_cannot_be_streamed_is_not_tried_again(
        nursery: trio.Nursery, failure: errors.AisFsError) -> None:
    """A stream that failed is not started again for that version of the archive, run after run
    of members (the members are fetched one by one)."""
    shard = Shard()
    shard.fake.fail_calls["open_member_stream"] = failure
    tree = await shard.tree()
    streams = shard.streams(nursery)
    for name, _ in MEMBERS:
        assert not await shard.read(streams, tree, name)
        await trio.testing.wait_all_tasks_blocked()
    tried = shard.fake.calls["open_member_stream"]
    assert tried == 1, tried


async def test_a_stream_let_go_idle_is_no_end(nursery: trio.Nursery,
                                             autojump_clock: trio.abc.Clock) -> None:
    """A stream that stopped because nobody took from it read only part of the archive: the
    members past it start a new stream."""
    members = MANY
    shard = Shard("s.tar", members)
    tree = await shard.tree()
    streams = shard.streams(nursery)
    for name, _ in members[:4]:
        await shard.read(streams, tree, name)
    await trio.sleep(IDLE_SECONDS * 3)
    assert not streams._streams
    served = [await shard.read(streams, tree, name) for name, _ in members[350:360]]
    assert served == [False] * 2 + [True] * 8 and streams.started == 2


async def test_another_version_is_not_streamed(nursery: trio.Nursery) -> None:
    shard = Shard()
    tree = await shard.tree()
    shard.fake.store("s.tar", tar_of(MEMBERS))  # version 2, same bytes; the tree is of 1
    streams = shard.streams(nursery)
    assert not any([await shard.read(streams, tree, name) for name, _ in MEMBERS])
    assert streams.started >= 1 and shard.budget.used == 0


async def test_a_reader_that_stops_lets_the_stream_go(nursery: trio.Nursery,
                                                      autojump_clock: trio.abc.Clock) -> None:
    shard = Shard()
    tree = await shard.tree()
    streams = shard.streams(nursery)
    for name, _ in MEMBERS[:4]:
        await shard.read(streams, tree, name)
    await trio.sleep(1)
    assert shard.budget.used > 0  # members read ahead, held for the reader
    await trio.sleep(IDLE_SECONDS * 3)
    assert shard.budget.used == 0 and not streams._streams
    # Reading on: a new run starts a new stream.
    served = [await shard.read(streams, tree, name) for name, _ in MEMBERS[4:]]
    assert all(served[2:]) and streams.started == 2


async def test_a_member_far_ahead_is_fetched_on_its_own(nursery: trio.Nursery) -> None:
    members = MANY
    shard = Shard("s.tar", members)
    tree = await shard.tree()
    streams = shard.streams(nursery)
    for name, _ in members[:3]:
        await shard.read(streams, tree, name)
    assert not await shard.read(streams, tree, "0399")  # beyond the window: not waited for
    assert await shard.read(streams, tree, "0003")

"""aisfs/member_stream.py (an archive's members from its stored bytes) and aisfs/archive_stream.py
(archive-order read-ahead across members), on real tar/tgz bytes and the in-memory AIS."""

from __future__ import annotations

import gzip
import io
import random
import tarfile

import lz4.frame
import pytest
import trio

from aisfs import errors, getbatch
from aisfs.archive_stream import IDLE_SECONDS, ArchiveStreams
from aisfs.archives import ArchiveContents, Member
from aisfs.budget import MemoryBudget
from aisfs.member_stream import Gunzip, MemberScanner, Unlz4, member_path

from .fakeais import FakeAis

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


async def test_zip_is_not_streamed(nursery: trio.Nursery) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in MEMBERS:
            zf.writestr(name, data)
    shard = Shard()
    shard.fake.store("s.zip", buf.getvalue())
    tree = await shard.fake.list_archive("b", "s.zip")
    streams = shard.streams(nursery)
    assert not any([await shard.read(streams, tree, name) for name, _ in MEMBERS])


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
    members = [(f"{i:04d}", bytes([i % 256]) * 10) for i in range(400)]
    shard = Shard("s.tar", members)
    tree = await shard.tree()
    streams = shard.streams(nursery)
    for name, _ in members[:3]:
        await shard.read(streams, tree, name)
    assert not await shard.read(streams, tree, "0399")  # beyond the window: not waited for
    assert await shard.read(streams, tree, "0003")

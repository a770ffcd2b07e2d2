"""aisfs/member_reader.py against the in-memory AIS of tests/fakeais.py, which reads real shards."""

from __future__ import annotations

import errno
import random

import pytest
import trio

from aisfs import errors
from aisfs.budget import MemoryBudget
from aisfs.config import MountConfig, parse_source
from aisfs.getbatch import MIN_BATCH_RANGE
from aisfs.member_reader import MemberReader
from aisfs.reader import BufferPool

from .fakeais import FakeAis
from .shards import tar_of

KIB = 1024
MIB = 1024 * KIB
SMALL = random.Random(1).randbytes(300 * KIB)
LARGE = random.Random(2).randbytes(5 * MIB + 12345)



class Archive:
    """The shard s.tar in a fake AIS, and the version the mount believes it has."""

    def __init__(self) -> None:
        self.fake = FakeAis()
        self.fake.store("s.tar", tar_of({"small": SMALL, "d/large": LARGE, "empty": b"",
                                         "./dot": b"listed as dot"}))
        self.version = "1"

    async def current_version(self) -> str:
        return self.version

    def reader(self, nursery: trio.Nursery, member: str, size: int,
               part: int = 1 * MIB) -> MemberReader:
        config = MountConfig(source=parse_source("ais://b"), mountpoint="/x",
                             read_part_size=part, read_ahead_initial=256 * KIB,
                             read_ahead_max=2 * MIB)
        return MemberReader(
            self.fake, "b", "s.tar", member, size, "1", config,
            MemoryBudget(config.read_ahead_budget), lambda fn: nursery.start_soon(fn),
            BufferPool(config.read_part_size, keep=8), self.current_version,
        )


async def read(reader: MemberReader, off: int, size: int) -> bytes:
    return bytes(await reader.read(off, size))


async def test_small_member_is_one_whole_get(nursery: trio.Nursery) -> None:
    a = Archive()
    reader = a.reader(nursery, "small", len(SMALL))
    rng = random.Random(3)
    # The first read is not at 0: the whole member comes all the same.
    for off in [200 * KIB] + [rng.randrange(len(SMALL)) for _ in range(20)] + [0]:
        assert await read(reader, off, 64 * KIB) == SMALL[off:off + 64 * KIB]
    assert await read(reader, len(SMALL), 10) == b""
    assert a.fake.calls["get_member"] == 1 and a.fake.calls["get_member_range"] == 0
    reader.close()


async def test_large_member_sequential_and_random(nursery: trio.Nursery) -> None:
    a = Archive()
    reader = a.reader(nursery, "d/large", len(LARGE))
    got = bytearray()
    while len(got) < len(LARGE):
        got += await read(reader, len(got), 128 * KIB)
    assert bytes(got) == LARGE
    rng = random.Random(4)
    for _ in range(30):
        off = rng.randrange(len(LARGE))
        size = rng.choice([1, 4 * KIB, 128 * KIB, 1 * MIB])
        assert await read(reader, off, size) == LARGE[off:off + size]
    assert await read(reader, len(LARGE) - 7, 100) == LARGE[-7:]
    assert a.fake.calls["get_member_range"] > 0
    # Every range lay within the member and was long enough to come without AIS's flush wait.
    assert all(0 <= s and s + n <= len(LARGE) and n >= MIN_BATCH_RANGE
               for s, n in a.fake.ranges)
    reader.close()


async def test_a_new_archive_version_is_stale(nursery: trio.Nursery) -> None:
    a = Archive()
    large = a.reader(nursery, "d/large", len(LARGE))
    assert await read(large, 0, 4 * KIB) == LARGE[:4 * KIB]
    small = a.reader(nursery, "small", len(SMALL))
    a.version = "2"
    with pytest.raises(errors.StaleObject):
        await read(large, 3 * MIB, 4 * KIB)
    with pytest.raises(errors.StaleObject):
        await read(small, 0, 4 * KIB)
    large.close()
    small.close()


async def test_a_member_of_another_size_is_stale(nursery: trio.Nursery) -> None:
    a = Archive()
    reader = a.reader(nursery, "small", len(SMALL) + 1)  # as listed before the archive changed
    with pytest.raises(errors.StaleObject):
        await read(reader, 0, 10)
    reader.close()


async def test_empty_member_and_errors(nursery: trio.Nursery) -> None:
    a = Archive()
    empty = a.reader(nursery, "empty", 0)
    assert await read(empty, 0, 4096) == b""
    assert a.fake.calls["get_member"] == 0
    a.fake.store("s.tar", b"no longer a tar" * 100, version="1")
    broken = a.reader(nursery, "small", len(SMALL))
    with pytest.raises(errors.BadArchive):
        await read(broken, 0, 10)
    with pytest.raises(errors.BadArchive):  # the next read tries again, and fails again
        await read(broken, 0, 10)
    assert a.fake.calls["get_member"] == 2
    empty.close()
    broken.close()


async def test_a_member_listed_but_not_served_is_eio(nursery: trio.Nursery) -> None:
    # AIS lists "./dot" as "dot", then cannot find "dot": EIO (not ENOENT, not ESTALE).
    a = Archive()
    reader = a.reader(nursery, "dot", len(b"listed as dot"))
    with pytest.raises(errors.AisError) as info:
        await read(reader, 0, 10)
    assert info.value.errno == errno.EIO and "cannot read it by that name" in str(info.value)
    a.version = "2"  # the archive changed: now the missing member is stale
    with pytest.raises(errors.StaleObject):
        await read(reader, 0, 10)
    reader.close()

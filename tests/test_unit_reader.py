"""aisfs/reader.py against the in-memory AIS of tests/fakeais.py (no HTTP, no kernel).

The fake writes each response into the ``into`` buffer it is given, as the real client does, so
buffer recycling bugs show up as wrong bytes.
"""

from __future__ import annotations

import ctypes
import mmap
import random

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.budget import MemoryBudget
from aisfs.config import MountConfig, parse_source
from aisfs.reader import RANDOM_BLOCK, BufferPool, ObjectReader

from .fakeais import FakeAis

KIB = 1024
MIB = 1024 * KIB


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def fake_of(data: bytes, version: str = "1") -> FakeAis:
    """An AIS holding ``data`` as object b/k."""
    fake = FakeAis()
    fake.store("k", data, version=version)
    return fake


def make_config(**kw: int) -> MountConfig:
    return MountConfig(source=parse_source("ais://b"), mountpoint="/x", **kw)  # type: ignore[arg-type]


def make_reader(
    fake: FakeAis, nursery: trio.Nursery, budget: MemoryBudget | None = None,
    version: str | None = None, **kw: int,
) -> ObjectReader:
    config = make_config(**kw)
    obj = fake.objects[("b", "k")]
    return ObjectReader(
        fake, "b", "k", obj.size, obj.version if version is None else version,
        config, budget or MemoryBudget(config.read_ahead_budget),
        lambda fn: nursery.start_soon(fn), BufferPool(config.read_part_size, keep=8),
    )


async def read(reader: ObjectReader, off: int, size: int) -> bytes:
    # Copy at once, as pyfuse3 does before its next await.
    return bytes(await reader.read(off, size))


# ---------------------------------------------------------------------- sizes and EOF


def test_part_buffers_start_on_a_page_and_are_reused() -> None:
    pool = BufferPool(4 * MIB, keep=2)
    parts = [pool.take(4 * MIB), pool.take(3 * MIB)]  # a part, and the last one of a file
    for buf in parts:
        # Page-aligned: each page of a FUSE reply then comes from one page of the buffer.
        assert ctypes.addressof(ctypes.c_char.from_buffer(buf)) % mmap.PAGESIZE == 0
        assert len(buf) == 4 * MIB
    pool.give(parts[0])
    assert pool.take(4 * MIB) is parts[0]
    assert len(pool.take(64 * 1024)) == 64 * 1024  # a small random read gets what it asked


async def test_a_read_of_fetched_bytes_does_not_yield() -> None:
    """Bytes already here are returned without a trip through trio's scheduler (a set
    Event's wait() still makes one), once per FUSE read of a streamed file."""
    data = pattern(4 * MIB)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        reader = make_reader(fake, nursery)
        assert await read(reader, 0, 128 * KIB) == data[: 128 * KIB]
        await trio.testing.wait_all_tasks_blocked()  # the read-ahead has landed
        with trio.testing.assert_no_checkpoints():
            piece = bytes(await reader.read(128 * KIB, 128 * KIB))
        assert piece == data[128 * KIB : 256 * KIB]
        nursery.cancel_scope.cancel()


async def test_read_sizes_and_eof() -> None:
    data = pattern(300 * KIB + 7)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        assert await read(r, 0, 4096) == data[:4096]
        assert await read(r, 1000, 70_000) == data[1000:71_000]
        assert await read(r, len(data) - 10, 4096) == data[-10:]
        assert await read(r, len(data), 4096) == b""
        assert await read(r, len(data) + 12345, 4096) == b""
        assert await read(r, 5, 0) == b""
        assert await read(r, 0, 10 * MIB) == data  # whole object, larger request
        r.close()
    assert all(start + length <= len(data) for start, length in fake.ranges)


async def test_zero_byte_object_sends_no_request() -> None:
    fake = fake_of(b"")
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        assert await read(r, 0, 128 * KIB) == b""
        assert await read(r, 4096, 4096) == b""
        r.close()
    assert fake.ranges == []
    assert r.requests == 0


async def test_small_object_one_request() -> None:
    data = pattern(5000)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        assert await read(r, 0, 128 * KIB) == data
        assert await read(r, 4096, 128 * KIB) == data[4096:]
        r.close()
    assert fake.ranges == [(0, 5000)]


# ---------------------------------------------------------------------- sequential reads


async def test_sequential_reads_grow_the_window() -> None:
    size = 64 * MIB
    data = pattern(size, seed=2)
    fake = fake_of(data)
    step = 128 * KIB
    config = make_config()
    budget = MemoryBudget(config.read_ahead_budget)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget)
        reads = 0
        for off in range(0, size, step):
            got = await read(r, off, step)
            assert got == data[off : off + step], off
            reads += 1
            assert budget.used <= budget.limit + step
        assert await read(r, size, step) == b""
        r.close()
        assert budget.used == 0
    assert reads == 512
    lengths = [length for _, length in fake.ranges]
    assert len(fake.ranges) < reads // 10, fake.ranges
    assert max(lengths) == config.read_part_size
    # Every byte fetched exactly once: sorted ranges tile [0, size).
    pos = 0
    for start, length in sorted(fake.ranges):
        assert start == pos, (start, pos)
        pos += length
    assert pos == size
    assert budget.peak <= budget.limit + step
    assert r.requests == len(fake.ranges)


async def test_budget_bounds_read_ahead() -> None:
    size = 32 * MIB
    data = pattern(size, seed=3)
    fake = fake_of(data)
    step = 128 * KIB
    budget = MemoryBudget(4 * MIB)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget, read_part_size=1 * MIB)
        for off in range(0, size, step):
            assert await read(r, off, step) == data[off : off + step]
            assert budget.used <= budget.limit + step, (off, budget.used)
            await trio.testing.wait_all_tasks_blocked()  # let prefetches land
            assert budget.used <= budget.limit + step, (off, budget.used)
        r.close()
        assert budget.used == 0
    assert budget.peak <= budget.limit + step
    assert len(fake.ranges) < size // step  # still far fewer GETs than reads


async def test_two_handles_share_the_budget() -> None:
    size = 16 * MIB
    data = pattern(size, seed=4)
    fake = fake_of(data)
    step = 128 * KIB
    budget = MemoryBudget(3 * MIB)
    async with trio.open_nursery() as nursery:
        r1 = make_reader(fake, nursery, budget, read_part_size=1 * MIB)
        r2 = make_reader(fake, nursery, budget, read_part_size=1 * MIB)
        for off in range(0, size, step):
            assert await read(r1, off, step) == data[off : off + step]
            assert await read(r2, off, step) == data[off : off + step]
            await trio.testing.wait_all_tasks_blocked()
            # At most one read's demand over the limit per handle (no read is running now).
            assert budget.used <= budget.limit + 2 * step, (off, budget.used)
        r1.close()
        assert budget.used > 0
        r2.close()
        assert budget.used == 0
    assert budget.peak <= budget.limit + 2 * step


# ---------------------------------------------------------------------- random reads


async def test_random_reads_fetch_small_blocks() -> None:
    size = 64 * MIB
    data = pattern(size, seed=5)
    fake = fake_of(data)
    rng = random.Random(7)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        offsets = [rng.randrange(1, size - 4096) for _ in range(100)]
        for off in offsets:
            assert await read(r, off, 4096) == data[off : off + 4096]
        r.close()
    assert 0 < len(fake.ranges) <= len(offsets)
    for start, length in fake.ranges:
        assert length == min(RANDOM_BLOCK, size - start), (start, length)
    assert sum(length for _, length in fake.ranges) <= len(offsets) * RANDOM_BLOCK


async def test_large_random_read_uses_random_blocks() -> None:
    size = 8 * MIB
    data = pattern(size, seed=6)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        off = 3 * MIB + 17
        assert await read(r, off, 1 * MIB) == data[off : off + MIB]
        r.close()
    assert all(length <= RANDOM_BLOCK for _, length in fake.ranges)
    assert sum(length for _, length in fake.ranges) == MIB
    assert min(start for start, _ in fake.ranges) == off


async def test_random_read_near_eof_is_clamped() -> None:
    size = 1 * MIB + 100
    data = pattern(size, seed=8)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        assert await read(r, size - 50, 4096) == data[-50:]
        r.close()
    assert fake.ranges == [(size - 50, 50)]


async def test_seek_then_sequential_again() -> None:
    size = 8 * MIB
    data = pattern(size, seed=9)
    fake = fake_of(data)
    step = 128 * KIB
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        for off in range(0, 2 * MIB, step):
            assert await read(r, off, step) == data[off : off + step]
        base = 5 * MIB + 4096
        for off in range(base, size, step):
            assert await read(r, off, step) == data[off : off + step]
        r.close()
    # The reads after the seek became sequential again: far fewer GETs than reads.
    after_seek = [c for c in fake.ranges if c[0] >= base]
    assert len(after_seek) < ((size - base) // step) // 2


# ---------------------------------------------------------------------- changed objects


@pytest.mark.parametrize("change", ["version", "total", "short", "shrank"])
async def test_changed_object_is_stale(change: str) -> None:
    size = 2 * MIB
    old = pattern(size, seed=10)
    new = pattern(size, seed=11)
    fake = fake_of(old)
    step = 64 * KIB
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, read_part_size=256 * KIB, read_ahead_initial=256 * KIB,
                        read_ahead_max=256 * KIB)
        assert await read(r, 0, step) == old[:step]
        await trio.testing.wait_all_tasks_blocked()
        fetched_end = max(s + n for s, n in fake.ranges)
        assert fetched_end < size
        if change == "version":
            fake.store("k", new, version="2")
        elif change == "total":
            fake.store("k", new, version="1")
            fake.claimed_size = size + 1
        elif change == "short":
            fake.store("k", old[: fetched_end + 10], version="1")
            fake.claimed_size = size  # claims the old size, sends fewer bytes
        else:
            fake.store("k", old[:fetched_end], version="1")  # 416 for anything past it
        calls_before = len(fake.ranges)
        # A read across the boundary of what was fetched before the change: never a mix.
        off = fetched_end - step // 2
        with pytest.raises(errors.StaleObject):
            await read(r, off, step)
        assert len(fake.ranges) > calls_before
        # Still stale on a retry, and anywhere else, with no request: the object really changed.
        calls_before = len(fake.ranges)
        for retry_at in (off, 0):
            with pytest.raises(errors.StaleObject):
                await read(r, retry_at, step)
        assert len(fake.ranges) == calls_before
        r.close()


async def test_an_object_deleted_while_open_fails_every_read_after_one_request() -> None:
    data = pattern(300 * KIB, seed=15)
    fake = fake_of(data)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        await fake.delete_object("b", "k")
        with pytest.raises(errors.NotFound):
            await read(r, 0, 128 * KIB)
        # The kernel's retry of a failed read-ahead as a single page, then a read elsewhere.
        for off in (0, 200 * KIB):
            with pytest.raises(errors.NotFound):
                await read(r, off, 4096)
        r.close()
    assert len(fake.ranges) == 1


async def test_unchanged_version_is_not_stale_and_empty_version_is_ignored() -> None:
    data = pattern(MIB, seed=12)
    fake = fake_of(data, version="")
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, version="7")  # server sends no version: no check
        assert await read(r, 0, MIB) == data
        r.close()


# ---------------------------------------------------------------------- errors


async def test_error_surfaces_on_the_read_that_needs_it_and_next_read_retries() -> None:
    size = 4 * MIB
    data = pattern(size, seed=13)
    fake = fake_of(data)
    failed: list[tuple[int, int]] = []
    bad_pos = 1 * MIB + 5000

    def fail(start: int, length: int) -> BaseException | None:
        if start <= bad_pos < start + length and not failed:
            failed.append((start, length))
            return errors.Transient("boom", 503, "ais://b/k")
        return None

    fake.fail_range = fail
    step = 128 * KIB
    raised_at = []
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, read_part_size=512 * KIB, read_ahead_initial=512 * KIB)
        for off in range(0, size, step):
            await trio.testing.wait_all_tasks_blocked()  # let every prefetch finish (or fail)
            try:
                got = await read(r, off, step)
            except errors.Transient as exc:
                assert "boom" in str(exc)
                raised_at.append(off)
                calls = len(fake.ranges)
                got = await read(r, off, step)  # the next read retries
                assert any(s <= off < s + n for s, n in fake.ranges[calls:])
            assert got == data[off : off + step], off
        r.close()
    assert len(failed) == 1
    bad_start, bad_len = failed[0]
    # The error surfaced on the first read that needed the failed range, and only there.
    first_needing = next(off for off in range(0, size, step) if off + step > bad_start)
    assert raised_at == [first_needing]
    assert r.budget.used == 0


async def test_error_on_first_read_then_retry() -> None:
    data = pattern(300 * KIB, seed=14)
    fake = fake_of(data)
    failed: list[int] = []

    def fail(start: int, length: int) -> BaseException | None:
        if start == 0 and not failed:
            failed.append(start)
            return OSError("connection reset")
        return None

    fake.fail_range = fail
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery)
        with pytest.raises(OSError, match="connection reset"):
            await read(r, 0, 4096)
        assert await read(r, 0, 4096) == data[:4096]
        r.close()


# ---------------------------------------------------------------------- close and budget


async def test_close_returns_budget_with_fetches_in_flight() -> None:
    data = pattern(16 * MIB, seed=15)
    fake = fake_of(data)
    fake.range_gates = {}
    budget = MemoryBudget(64 * MIB)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget, read_part_size=1 * MIB)
        fake.release_range(0)
        fake.release_range(128 * KIB)
        assert await read(r, 0, 128 * KIB) == data[: 128 * KIB]
        assert await read(r, 128 * KIB, 128 * KIB) == data[128 * KIB : 256 * KIB]
        await trio.testing.wait_all_tasks_blocked()
        assert fake.in_flight_ranges > 0  # prefetches are waiting
        assert budget.used > 0
        r.close()
        assert budget.used == 0
        await trio.testing.wait_all_tasks_blocked()
        assert fake.in_flight_ranges == 0  # the fetches were cancelled
    assert budget.used == 0


async def test_close_after_complete_reads_returns_budget() -> None:
    data = pattern(3 * MIB, seed=16)
    fake = fake_of(data)
    budget = MemoryBudget(128 * MIB)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget)
        for off in range(0, 3 * MIB, 256 * KIB):
            await read(r, off, 256 * KIB)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used > 0
        r.close()
        assert budget.used == 0
        r.close()  # twice is harmless
        assert budget.used == 0


# ---------------------------------------------------------------------- concurrency


async def test_seek_does_not_corrupt_a_pending_multi_chunk_read() -> None:
    """Task A waits on the 2nd chunk of its read while task B seeks elsewhere.

    The seek drops A's finished 1st chunk and recycles its buffer for B's fetch; A must still
    return the right bytes (regression: A held a view into the recycled buffer).
    """
    size = 4 * MIB
    data = pattern(size, seed=17)
    fake = fake_of(data)
    fake.range_gates = {}
    part = 256 * KIB
    results: dict[str, bytes] = {}
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, read_part_size=part, read_ahead_initial=part)

        async def task_a() -> None:
            results["a"] = await read(r, 0, 2 * part)

        nursery.start_soon(task_a)
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(fake.ranges) == [(0, part), (part, part)]
        fake.release_range(0)  # the 1st chunk arrives, the 2nd does not
        await trio.testing.wait_all_tasks_blocked()
        assert "a" not in results
        # B seeks: A's chunks are dropped; B's block lands in the recycled buffer.
        seek = 2 * MIB
        fake.release_range(seek)
        results["b"] = await read(r, seek, 4096)
        assert results["b"] == data[seek : seek + 4096]
        await trio.testing.wait_all_tasks_blocked()
        fake.release_range(part)  # now every later request is answered
        fake.range_gates = None
        await trio.testing.wait_all_tasks_blocked()
        r.close()
    assert results["a"] == data[: 2 * part]


async def test_removed_chunk_completing_anyway_is_not_misused() -> None:
    """A seek removes a chunk whose response was already delivered but not yet processed.

    The fetch still stores its data; the task waiting on it then continues its read past that
    chunk and must not take bytes from whatever chunk the seek created.
    """
    size = 4 * MIB
    data = pattern(size, seed=18)
    fake = fake_of(data)
    fake.range_gates = {}
    part = 256 * KIB
    results: dict[str, bytes | BaseException] = {}
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, read_part_size=part, read_ahead_initial=part)

        async def task_a() -> None:
            try:
                results["a"] = await read(r, 0, 2 * part)
            except Exception as exc:  # noqa: BLE001 - checked below
                results["a"] = exc

        nursery.start_soon(task_a)
        await trio.testing.wait_all_tasks_blocked()
        seek = 2 * MIB
        fake.release_range(0)  # delivered: the fetch task is scheduled but has not run yet
        fake.release_range(seek)
        b = await read(r, seek, 4096)  # synchronously drops A's chunks before yielding
        assert b == data[seek : seek + 4096]
        fake.range_gates = None  # from now on every request is answered at once
        await trio.testing.wait_all_tasks_blocked()
        r.close()
    a = results["a"]
    assert not isinstance(a, BaseException), repr(a)
    assert len(a) == 2 * part, f"short read: {len(a)} bytes"
    assert a == data[: 2 * part]


async def _stress(seed: int, fake: FakeAis, data: bytes, tasks: int, reads: int) -> ObjectReader:
    size = len(data)
    budget = MemoryBudget(2 * MIB)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget, read_part_size=256 * KIB,
                        read_ahead_initial=128 * KIB, read_ahead_max=1 * MIB)

        async def worker(n: int) -> None:
            rng = random.Random(seed * 100 + n)
            off = rng.randrange(size)
            for _ in range(reads):
                if rng.random() < 0.3:
                    off = rng.randrange(size)  # seek
                length = rng.choice([1, 4096, 100_000, 128 * KIB, 300 * KIB, 700 * KIB])
                got = await read(r, off, length)
                assert got == data[off : off + length], (n, off, length)
                off = min(size, off + length)
                if off >= size:
                    off = 0

        async with trio.open_nursery() as workers:
            for n in range(tasks):
                workers.start_soon(worker, n)
        r.close()
        assert budget.used == 0
    return r


@pytest.mark.parametrize("seed", range(6))
async def test_concurrent_reads_out_of_order_responses(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    data = pattern(3 * MIB + 1234, seed=seed)
    fake = fake_of(data)
    delays = random.Random(seed)
    # Later requests often answer first: out-of-order completion.
    fake.range_delay = lambda start, length: delays.choice([0.0, 0.001, 0.005, 0.02, 0.05])
    r = await _stress(seed, fake, data, tasks=6, reads=40)
    assert r.requests == len(fake.ranges) > 0


async def test_concurrent_overlapping_and_disjoint_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    size = 2 * MIB
    data = pattern(size, seed=30)
    fake = fake_of(data)
    fake.range_delay = lambda start, length: 0.01 if (start // (64 * KIB)) % 2 else 0.001
    ranges = [(0, 512 * KIB), (100_000, 300_000), (0, 4096), (MIB, 256 * KIB),
              (MIB - 10, 20), (1_500_000, 600_000), (64 * KIB, 64 * KIB), (0, size)]
    results: dict[int, bytes] = {}
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, read_part_size=128 * KIB, read_ahead_initial=128 * KIB)

        async def one(i: int, off: int, length: int) -> None:
            results[i] = await read(r, off, length)

        async with trio.open_nursery() as readers:
            for i, (off, length) in enumerate(ranges):
                readers.start_soon(one, i, off, length)
        r.close()
    for i, (off, length) in enumerate(ranges):
        assert results[i] == data[off : off + length], (off, length)


async def test_a_reader_started_from_fetched_bytes_serves_them_and_gives_them_back() -> None:
    """A directory scan's batch fetched the whole object: no GET, and its budget goes back at
    close."""
    data = pattern(200 * KIB)
    fake = fake_of(data)
    config = make_config()
    budget = MemoryBudget(config.read_ahead_budget)
    async with trio.open_nursery() as nursery:
        r = make_reader(fake, nursery, budget)
        budget.force_reserve(len(data))  # what the scan reserved for it
        r.hold(memoryview(bytearray(data)))
        assert await read(r, 0, 128 * KIB) == data[: 128 * KIB]
        assert await read(r, 128 * KIB, 128 * KIB) == data[128 * KIB:]
        assert await read(r, 4096, 10) == data[4096:4106]
        assert await read(r, len(data), 4096) == b""
        with pytest.raises(ValueError):
            r.hold(memoryview(bytearray(data)))
        r.close()
        assert budget.used == 0
    assert fake.ranges == [] and r.requests == 0

"""aisfs/writer.py (with its stream and staged uploads) against the in-memory AIS of fakeais.py.

Small parts (4 KiB, growing to 16 KiB) so that a few KiB of writes exercise every path: one PUT,
a multipart upload, APPENDs with a FLUSH, the switch to a staged upload, truncates, and the
failures that latch.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.budget import MemoryBudget
from aisfs.config import MountConfig, parse_source
from aisfs.objects import MTIME_KEY
from aisfs.spill import SpillArea
from aisfs.writer import ObjectWriter

from .fakeais import FakeAis

KIB = 1024
PART = 4 * KIB
PART_MAX = 16 * KIB


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


class Rig:
    """A fake cluster, the shared write budget and spill area, and writers made on them."""

    def __init__(self, ais: FakeAis, nursery: trio.Nursery, tmp: Path, *, budget: int,
                 spill_limit: int) -> None:
        self.ais = ais
        self.nursery = nursery
        self.config = MountConfig(source=parse_source("ais://b"), mountpoint="/x",
                                  write_part_size=PART, write_part_max=PART_MAX,
                                  write_buffer_budget=budget, spill_dir=str(tmp / "spill"),
                                  spill_max_bytes=spill_limit)
        self.budget = MemoryBudget(budget)
        self.spill = SpillArea(self.config.spill_dir, spill_limit)

    def writer(self, key: str = "k", *, exists: bool | None, size: int = 0,
               truncate: bool = False) -> ObjectWriter:
        return ObjectWriter(self.ais, "b", key, self.config, self.spill, self.budget,
                            lambda fn: self.nursery.start_soon(fn), exists=exists, size=size,
                            truncate=truncate)


@pytest.fixture
def rig(tmp_path: Path) -> Callable[..., object]:
    @asynccontextmanager
    async def make(objects: dict[str, int | bytes] | None = None, *, budget: int = 64 * KIB,
                   spill_limit: int = 1 << 30) -> AsyncIterator[Rig]:
        async with trio.open_nursery() as nursery:
            yield Rig(FakeAis(objects), nursery, tmp_path, budget=budget,
                      spill_limit=spill_limit)
            nursery.cancel_scope.cancel()

    return make


async def write_all(w: ObjectWriter, data: bytes, start: int = 0, step: int = 1000) -> None:
    for off in range(0, len(data), step):
        assert await w.write(start + off, data[off:off + step]) == len(data[off:off + step])


def appended_keys(ais: FakeAis) -> list[str]:
    return [entry[2] for entry in ais.log if entry[0] == "append"]


def part_keys(ais: FakeAis) -> list[str]:
    return [entry[2] for entry in ais.log if entry[0] == "part"]


# ---------------------------------------------------------------------- streaming


async def test_a_file_within_one_part_is_one_put_with_its_mtime(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig() as r:
        w = r.writer(exists=False)
        assert w.dirty and w.size == 0  # creating makes an object even without writes
        await write_all(w, b"x" * 3000)
        assert ("b", "k") not in r.ais.objects  # nothing before the flush
        w.pending_mtime_ns = 1_234_000_000_000
        done = await w.flush()
        assert done is not None and (done.size, done.mtime_ns) == (3000, 1_234_000_000_000)
        assert done.version == r.ais.objects[("b", "k")].version
        assert r.ais.content("k") == b"x" * 3000
        assert r.ais.objects[("b", "k")].custom[MTIME_KEY] == b"1234000000000"
        assert r.ais.calls["put_object"] == 1 and r.ais.calls["append"] == 0
        assert not w.dirty and await w.flush() is None  # nothing new: nothing sent
        w.close()


async def test_a_growing_file_streams_in_parts_that_grow_within_the_budget(rig) -> None:  # type: ignore[no-untyped-def]
    data = pattern(100 * KIB)
    async with rig(budget=20 * KIB) as r:
        w = r.writer(exists=False)
        parts: list[int] = []
        for off in range(0, len(data), KIB):
            if not parts or parts[-1] != w.part:
                parts.append(w.part)
            await w.write(off, data[off:off + KIB])
            assert w.buffered < w.part
        # 4 -> 8 KiB costs 8 KiB of budget (a part filling, one in flight), 8 -> 16 KiB 16 more:
        # only the first fits in 20 KiB.
        assert parts == [PART, 2 * PART]
        assert r.budget.used == 8 * KIB
        assert ("b", "k") not in r.ais.objects  # parts sent, not completed: invisible
        await w.flush()
        assert r.ais.content("k") == data
        assert set(part_keys(r.ais)) == {"k"} and r.ais.calls["complete_upload"] == 1
        assert r.ais.calls["append"] == 0
        assert r.ais.objects[("b", "k")].custom.keys() == {MTIME_KEY}
        w.close()
        assert r.budget.used == 0


async def test_writes_after_a_flush_continue_the_object(rig) -> None:  # type: ignore[no-untyped-def]
    first, second = pattern(10 * KIB, 1), pattern(3 * KIB, 2)
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, first)
        await w.flush()
        await write_all(w, second, start=len(first))
        done = await w.flush()
        assert done is not None and done.size == len(first) + len(second)
        assert r.ais.content("k") == first + second
        w.close()


async def test_overwriting_replaces_the_object_at_flush_and_keeps_its_xattrs(rig) -> None:  # type: ignore[no-untyped-def]
    old, new = pattern(5 * KIB, 1), pattern(20 * KIB, 2)
    async with rig({"d/k": old}) as r:
        r.ais.objects[("b", "d/k")].custom["user"] = b"kept"
        w = r.writer("d/k", exists=True, size=len(old), truncate=True)
        await write_all(w, new)
        assert r.ais.content("d/k") == old  # the old content until the flush
        await w.flush()
        assert r.ais.content("d/k") == new
        assert set(part_keys(r.ais)) == {"d/k"} and r.ais.calls["rename_object"] == 0
        assert r.ais.objects[("b", "d/k")].custom["user"] == b"kept"  # xattrs carried over
        assert r.ais.calls["delete_object"] == 0
        w.close()


async def test_a_new_name_is_deleted_before_its_upload_completes(rig) -> None:  # type: ignore[no-untyped-def]
    # (which removes a directory a target's disk may still hold under the name)
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, pattern(20 * KIB))
        await w.flush()
        deleted = r.ais.log.index(("delete", "b", "k"))
        assert deleted < r.ais.log.index(("complete", "b", "k"))
        assert r.ais.content("k") == pattern(20 * KIB)
        w.close()


async def test_appending_to_an_object_stored_in_chunks_rewrites_it(rig) -> None:  # type: ignore[no-untyped-def]
    first, more = pattern(20 * KIB, 1), pattern(6 * KIB, 2)
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, first)
        await w.flush()
        w.close()
        assert r.ais.objects[("b", "k")].chunked
        w = r.writer(exists=True, size=len(first))  # O_APPEND: a write at the end
        await write_all(w, more, start=len(first))
        await w.flush()
        # AIS's APPEND would keep the first chunk alone: a new multipart upload instead,
        # its first parts read back from the object.
        assert r.ais.content("k") == first + more
        assert r.ais.calls["append"] == 0 and r.ais.calls["get_range"] > 0
        w.close()


async def test_a_short_append_to_an_object_stored_in_chunks_rewrites_it(rig) -> None:  # type: ignore[no-untyped-def]
    first = pattern(20 * KIB, 1)
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, first)
        await w.flush()
        await w.write(len(first), b"tail")  # the same handle goes on: one short part
        await w.flush()
        assert r.ais.content("k") == first + b"tail"
        assert r.ais.calls["append"] == 0
        w.close()


async def test_a_write_at_the_end_of_an_existing_object_appends_to_it(rig) -> None:  # type: ignore[no-untyped-def]
    old, more = pattern(6 * KIB, 1), pattern(9 * KIB, 2)
    async with rig({"k": old}) as r:
        w = r.writer(exists=True, size=len(old))
        assert not w.dirty and w.size == len(old)  # opened: nothing to upload yet
        assert await w.flush() is None
        await write_all(w, more, start=len(old))
        await w.flush()
        assert r.ais.content("k") == old + more
        assert set(appended_keys(r.ais)) == {"k"} and r.ais.calls["get_range"] == 0
        w.close()


async def test_a_stream_over_an_empty_object_replaces_it_and_keeps_its_xattrs(rig) -> None:  # type: ignore[no-untyped-def]
    data = pattern(20 * KIB)
    async with rig({"k": b""}) as r:
        r.ais.objects[("b", "k")].custom["user"] = b"kept"
        w = r.writer(exists=True, size=0)
        await write_all(w, data)
        await w.flush()
        assert r.ais.content("k") == data
        assert r.ais.objects[("b", "k")].custom["user"] == b"kept"
        assert r.ais.calls["append"] == 0 and r.ais.calls["rename_object"] == 0
        w.close()


# ---------------------------------------------------------------------- staging


async def test_a_write_before_the_end_stages_what_was_streamed(rig) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(pattern(30 * KIB))
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, bytes(data))
        assert r.budget.used > 0 and r.ais.calls["put_part"] > 0
        await w.write(100, b"patched")
        data[100:107] = b"patched"
        # The streamed parts were completed to be read back; the grown parts' budget is back.
        assert w.staged and r.budget.used == 0 and r.ais.calls["complete_upload"] == 1
        assert r.spill.used == len(data)
        assert await w.read(95, 20) == bytes(data[95:115])
        await w.write(len(data) + 10, b"past the end")  # a hole reads as zeros
        data += bytes(10) + b"past the end"
        await w.flush()
        assert r.ais.content("k") == bytes(data)
        assert r.ais.calls["put_file"] == 1
        w.close()
        assert r.spill.used == 0


async def test_a_stream_of_a_replaced_object_stages_from_what_was_streamed(rig) -> None:  # type: ignore[no-untyped-def]
    new = bytearray(pattern(30 * KIB, 2))
    async with rig({"k": pattern(4 * KIB, 1)}) as r:
        w = r.writer(exists=True, size=4 * KIB, truncate=True)
        await write_all(w, bytes(new))
        await w.write(0, b"head")
        new[0:4] = b"head"
        await w.flush()
        assert r.ais.content("k") == bytes(new)
        w.close()


async def test_a_write_within_the_first_part_stages_without_a_request(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig() as r:
        w = r.writer(exists=False)
        await w.write(0, b"hello world")
        await w.write(0, b"J")
        assert w.staged and sum(r.ais.calls.values()) == r.ais.calls["run_blocking"]
        await w.flush()
        assert r.ais.content("k") == b"Jello world"
        w.close()


@pytest.mark.parametrize("off", [0, 3 * KIB])
async def test_a_write_into_an_existing_object_downloads_it_first(rig, off: int) -> None:  # type: ignore[no-untyped-def]
    old = bytearray(pattern(10 * KIB))
    async with rig({"k": bytes(old)}) as r:
        w = r.writer(exists=True, size=len(old))
        await w.write(off, b"new bytes")
        old[off:off + 9] = b"new bytes"
        assert w.staged and r.ais.ranges == [(0, PART), (PART, PART), (2 * PART, 2 * KIB)]
        await w.flush()
        assert r.ais.content("k") == bytes(old)
        w.close()


async def test_a_stream_continuing_an_object_stages_its_bytes_and_the_buffer(rig) -> None:  # type: ignore[no-untyped-def]
    old, more = pattern(6 * KIB, 1), pattern(KIB, 2)
    async with rig({"k": old}) as r:
        w = r.writer(exists=True, size=len(old))
        await w.write(len(old), more)  # joins the part: nothing sent yet
        await w.write(1, b"!")
        await w.flush()
        assert r.ais.content("k") == old[:1] + b"!" + old[2:] + more
        w.close()


# ---------------------------------------------------------------------- truncate


async def test_truncate_to_zero_abandons_a_stream_and_drops_a_staged_file(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig({"k": pattern(8 * KIB)}) as r:
        w = r.writer(exists=True, size=8 * KIB)
        await w.write(KIB, b"staged")
        assert w.staged and r.spill.used == 8 * KIB
        await w.truncate(0)
        assert not w.staged and w.size == 0 and r.spill.used == 0
        await write_all(w, pattern(20 * KIB, 3))  # streamed into a hidden object...
        await w.truncate(0)  # ...abandoned: never flushed, never visible
        await w.write(0, b"short")
        await w.flush()
        assert r.ais.content("k") == b"short"
        assert r.ais.calls["flush"] == 0 and r.ais.calls["rename_object"] == 0
        w.close()


async def test_truncate_shrinks_and_grows_staged_content_and_its_spill_count(rig) -> None:  # type: ignore[no-untyped-def]
    old = pattern(10 * KIB)
    async with rig({"k": old}) as r:
        w = r.writer(exists=True, size=len(old))
        await w.truncate(4 * KIB)
        assert (w.size, r.spill.used) == (4 * KIB, 4 * KIB)  # a shrink gives spill room back
        await w.truncate(6 * KIB)
        assert (w.size, r.spill.used) == (6 * KIB, 6 * KIB)
        await w.truncate(6 * KIB)  # the same size: nothing to do
        await w.flush()
        assert r.ais.content("k") == old[:4 * KIB] + bytes(2 * KIB)
        w.close()
        assert r.spill.used == 0


async def test_a_full_spill_area_is_enospc_and_fails_the_handle(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig({"k": pattern(8 * KIB)}, spill_limit=8 * KIB) as r:
        w = r.writer(exists=True, size=8 * KIB)
        await w.write(0, b"fits")
        with pytest.raises(errors.PosixError) as info:
            await w.write(8 * KIB, b"one byte too many")
        assert info.value.errno == errno.ENOSPC
        with pytest.raises(errors.PosixError):
            await w.flush()  # latched: nothing is uploaded
        assert r.ais.content("k") == pattern(8 * KIB) and r.ais.calls["put_file"] == 0
        w.close()
        assert r.spill.used == 0


# ---------------------------------------------------------------------- failures


async def test_a_failed_part_fails_the_next_write_and_every_call_after(rig) -> None:  # type: ignore[no-untyped-def]
    refused = errors.AisError("refused", 500, "ais://b/k")
    async with rig() as r:
        w = r.writer(exists=False)
        r.ais.fail_calls["put_part"] = refused
        await write_all(w, pattern(5 * KIB))  # the first part goes out in the background
        await trio.testing.wait_all_tasks_blocked()
        assert w.error is refused
        with pytest.raises(errors.AisError) as info:
            await w.write(5 * KIB, b"x")  # at the end, within the part: still refused
        assert info.value is refused
        for call in (w.flush(), w.truncate(0), w.write(0, b"y")):
            with pytest.raises(errors.AisError) as info:
                await call
            assert info.value is refused
        assert ("b", "k") not in r.ais.objects
        w.close()
        assert r.budget.used == 0
        await trio.testing.wait_all_tasks_blocked()
        assert r.ais.uploads == {}  # the upload was dropped


async def test_a_failed_upload_is_latched_and_nothing_is_stored(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig() as r:
        w = r.writer(exists=False)
        await w.write(0, b"data")
        r.ais.fail_calls["put_object"] = errors.Transient("timed out", 0, "ais://b/k")
        with pytest.raises(errors.Transient):
            await w.flush()
        del r.ais.fail_calls["put_object"]
        with pytest.raises(errors.Transient):
            await w.flush()  # still the first error: the bytes are not sent again
        assert w.dirty and ("b", "k") not in r.ais.objects
        w.close()


async def test_a_latched_error_is_logged_once(  # type: ignore[no-untyped-def]
    rig, caplog: pytest.LogCaptureFixture
) -> None:
    # One WARNING names the object and the reason; every call that fails with the error (the
    # first one too) leaves it to the FUSE adapter to log at its level: DEBUG.
    async with rig() as r:
        w = r.writer(exists=False)
        await w.write(0, b"data")
        r.ais.fail_calls["put_object"] = errors.Transient("timed out", 0, "ais://b/k")
        for _ in range(3):
            with pytest.raises(errors.Transient) as info:
                await w.flush()
            assert info.value.log_level == logging.DEBUG
        with pytest.raises(errors.Transient):
            await w.write(4, b"more")
        warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
        assert warnings == ["ais://b/k: write failed, failing this file handle from now on: "
                            "ais://b/k: timed out"]
        w.close()
        # An OSError (the spill file's) is latched with its errno.
        w = r.writer(exists=False)
        error = w.target.latch(OSError(errno.ENOSPC, "No space left on device"))
        assert isinstance(error, errors.PosixError) and errors.to_errno(error) == errno.ENOSPC
        assert error.log_level == logging.DEBUG and w.target.error is error
        w.close()


async def test_an_unexpected_error_is_latched_as_an_ais_error(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig({"k": pattern(8 * KIB)}) as r:
        w = r.writer(exists=True, size=8 * KIB)

        async def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("bug")

        r.ais.get_range = broken  # type: ignore[assignment, method-assign]
        with pytest.raises(errors.AisError) as first:  # EIO; the traceback is in the log
            await w.write(0, b"x")
        with pytest.raises(errors.AisError) as info:
            await w.write(0, b"x")
        assert "unexpected RuntimeError" in str(info.value) and info.value is first.value
        w.close()
        assert r.spill.used == 0  # the spill file of the failed switch was closed


async def test_a_discarded_handle_uploads_nothing(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig() as r:
        w = r.writer(exists=False)
        await write_all(w, pattern(10 * KIB))
        w.discarded = True
        assert await w.flush() is None
        assert ("b", "k") not in r.ais.objects and r.ais.calls["complete_upload"] == 0
        w.close()


async def test_a_big_file_asks_whether_the_name_exists_once_before_it_completes(rig) -> None:  # type: ignore[no-untyped-def]
    async with rig({"k": b"old"}) as r:
        w = r.writer(exists=None, truncate=True)  # create() with nothing cached
        await write_all(w, pattern(3 * KIB))
        await write_all(w, pattern(20 * KIB), start=3 * KIB)
        assert r.ais.calls["head_object"] == 0  # parts go out without asking
        await w.flush()
        assert r.ais.calls["head_object"] == 1 and r.ais.calls["delete_object"] == 0
        assert r.ais.content("k") == pattern(3 * KIB) + pattern(20 * KIB)
        w.close()


def test_spill_files_count_against_their_area(tmp_path: Path) -> None:
    area = SpillArea(str(tmp_path / "spill"), 100)
    f = area.create()
    assert os.listdir(area.path) == []  # unlinked at once: nothing left after a crash
    f.resize(60)
    f.pwrite(0, b"a" * 60)
    g = area.create()
    with pytest.raises(errors.PosixError):
        g.resize(41)
    g.close()
    f.resize(10)
    f.truncate(10)
    assert (area.used, f.pread(0, 100)) == (10, b"a" * 10)
    f.close()
    f.close()
    assert area.used == 0

"""aisfs/scans.py against the in-memory AIS of tests/fakeais.py: when batches start and stop,
what an open gets from them, and that every byte they reserve goes back to the budget."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from aisfs import errors, scan_state
from aisfs import scans as scans_module
from aisfs.budget import MemoryBudget
from aisfs.cache import Stat
from aisfs.listing import Child, Listing
from aisfs.scan_state import next_file, position
from aisfs.scans import DEPTH, DirectoryScans

from .fakeais import FakeAis

KIB = 1024


class Listings:
    """The cached listings a scan reads its order from."""

    def __init__(self) -> None:
        self.by_dir: dict[tuple[str, str], Listing] = {}

    def cached(self, bucket: str, prefix: str) -> Listing | None:
        return self.by_dir.get((bucket, prefix))

    def list(self, fake: FakeAis, prefix: str) -> Listing:
        """What a listing of ``prefix`` shows of the fake's objects now (files only)."""
        children = [Child(key[len(prefix):], False, Stat(obj.size, 0, obj.version))
                    for (bucket, key), obj in sorted(fake.objects.items())
                    if bucket == "b" and key.startswith(prefix) and "/" not in key[len(prefix):]]
        listing = Listing(children, {c.name: c for c in children})
        self.by_dir[("b", prefix)] = listing
        return listing


def files(n: int, size: int = KIB, prefix: str = "d/") -> FakeAis:
    fake = FakeAis()
    for i in range(n):
        fake.store(f"{prefix}f{i:04}", random.Random(i).randbytes(size))
    return fake


@asynccontextmanager
async def scans_of(fake: FakeAis, listings: Listings, *, batch: int = 8 * KIB,
                   budget: MemoryBudget | None = None, hold: float = 5.0
                   ) -> AsyncIterator[DirectoryScans]:
    async with trio.open_nursery() as nursery:
        def spawn(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
            nursery.start_soon(fn)

        scans = DirectoryScans(fake, spawn, listings, budget or MemoryBudget(64 * 1024 * KIB),
                               batch_bytes=batch, hold=hold)
        yield scans
        scans.close()
        nursery.cancel_scope.cancel()


async def open_file(scans: DirectoryScans, fake: FakeAis, key: str,
                    stat: Stat | None = None) -> bytes | None:
    """An open as the open-files layer makes it: the bytes it got (given back to the budget at
    once, as its reader would at close), or None."""
    obj = fake.objects[("b", key)]
    got = await scans.opened("b", key, stat or Stat(obj.size, 0, obj.version))
    if got is None:
        return None
    data = bytes(got)
    scans.give_back(got)
    return data


async def test_the_third_open_in_listing_order_starts_batches_that_serve_the_rest() -> None:
    fake = files(100)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        served = []
        for i in range(100):
            key = f"d/f{i:04}"
            got = await open_file(scans, fake, key)
            if got is not None:
                assert got == fake.content(key)
                served.append(i)
            if i < 2:
                assert fake.calls["get_batch"] == 0
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0
    assert served == list(range(3, 100))
    # 8 KiB per batch: 8 files each.
    assert fake.calls["get_batch"] == 13
    assert scans.files_served == 97 and scans.batches_sent == 13


async def test_files_stored_in_the_kernel_are_let_go_and_their_opens_still_count() -> None:
    """Files that went to the kernel's page cache as they came (``arrived``, then ``stored``)
    hold nothing of the budget; their opens, which keep those pages, are served and keep the
    scan going."""
    fake = files(100)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        stored: list[str] = []

        def arrived(bucket: str, key: str, size: int, version: str, data: memoryview) -> None:
            stored.append(key)
            scans.stored(bucket, key)  # (the kernel took them at once)

        scans.arrived = arrived
        for i in range(3):
            await open_file(scans, fake, f"d/f{i:04}")
        await trio.testing.wait_all_tasks_blocked()
        assert stored and budget.used == 0
        for i in range(3, 100):
            key = f"d/f{i:04}"
            obj = fake.objects[("b", key)]
            assert await scans.opened("b", key, Stat(obj.size, 0, obj.version),
                                      need_bytes=False) is None
            await trio.testing.wait_all_tasks_blocked()
            assert budget.used == 0
    assert sorted(stored) == [f"d/f{i:04}" for i in range(3, 100)]
    assert scans.files_served == 97


async def test_random_order_sends_no_batch() -> None:
    fake = files(300)
    listings = Listings()
    listings.list(fake, "d/")
    order = random.Random(7).sample(range(300), 300)
    async with scans_of(fake, listings) as scans:
        for i in order:
            assert await open_file(scans, fake, f"d/f{i:04}") is None
    assert fake.calls["get_batch"] == 0


async def test_an_open_out_of_order_stops_the_scan_and_frees_what_was_fetched() -> None:
    fake = files(200)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        for i in range(10):
            await open_file(scans, fake, f"d/f{i:04}")
        await trio.testing.wait_all_tasks_blocked()
        sent = fake.calls["get_batch"]
        assert sent == DEPTH and budget.used == (DEPTH * 8 - 7) * KIB  # 7 files taken
        assert await open_file(scans, fake, "d/f0150") is None  # far away: the order broke
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0
        # Detection starts again from there: two more in order, and batches follow.
        assert await open_file(scans, fake, "d/f0151") is None
        assert await open_file(scans, fake, "d/f0152") is None
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls["get_batch"] > sent
        assert await open_file(scans, fake, "d/f0153") == fake.content("d/f0153")


async def test_opens_near_the_last_one_keep_a_scan_going() -> None:
    """Two readers of one directory a little apart, or a reader skipping a file."""
    fake = files(120)
    listings = Listings()
    listings.list(fake, "d/")
    order = [0, 1, 2] + [i for j in range(3, 118, 2) for i in (j + 1, j)]  # pairs swapped
    async with scans_of(fake, listings) as scans:
        served = [i for i in order
                  if await open_file(scans, fake, f"d/f{i:04}") == fake.content(f"d/f{i:04}")]
    assert len(served) == len(order) - 3


async def test_a_deleted_object_is_left_to_the_usual_reader_and_the_rest_are_served() -> None:
    """Its GET is the answer (ENOENT at the first read): a batch's "missing" is not final."""
    fake = files(40)
    listings = Listings()
    listings.list(fake, "d/")
    gone = fake.objects.pop(("b", "d/f0020"))
    async with scans_of(fake, listings) as scans:
        for i in range(40):
            key = f"d/f{i:04}"
            if i == 20:
                assert await scans.opened("b", key, Stat(gone.size, 0, gone.version)) is None
                continue
            got = await open_file(scans, fake, key)
            assert got is None if i < 3 else got == fake.content(key)


async def test_an_object_a_batch_reports_missing_is_read_the_usual_way() -> None:
    """AIS v1.5.0's Get-Batch reports an object missing while the target its cluster map names
    does not hold it yet (after a target rejoined, until the rebalance moved it back), and a
    GET serves it meanwhile: its open must not fail."""
    fake = files(40)
    listings = Listings()
    listings.list(fake, "d/")
    fake.batch_says_missing = {"d/f0020", "d/f0021"}
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        for i in range(40):
            key = f"d/f{i:04}"
            got = await open_file(scans, fake, key)
            if i < 3 or key in fake.batch_says_missing:
                assert got is None, key
            else:
                assert got == fake.content(key), key
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0


async def test_an_open_gives_up_a_batch_that_delivers_nothing_for_a_while(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    """Every batch delivers its first member, then nothing (AIS v1.5.0: a target that had just
    rejoined did not send its part, and the designated target waited 20 s per object of it).
    An open waits ``STALLED`` seconds at most and gets the usual reader; the scan stops, so the
    next opens do not wait for its other batches."""
    fake = files(40)
    listings = Listings()
    listings.list(fake, "d/")
    fake.batch_stalls_after = 1
    budget = MemoryBudget(64 * 1024 * KIB)
    caplog.set_level(logging.INFO, logger="aisfs.scans")
    got = {}
    waited = {}
    async with scans_of(fake, listings, budget=budget) as scans:
        with trio.fail_after(100):
            for i in range(12):
                started = trio.current_time()
                got[i] = await open_file(scans, fake, f"d/f{i:04}")
                waited[i] = trio.current_time() - started
    assert budget.used == 0
    # f0000-f0002 start the scan; its batches are of two files: f0003 comes, f0004 does not.
    assert got[3] == fake.content("d/f0003")
    assert got[4] is None and abs(waited[4] - scans_module.STALLED) < 0.5
    # Stopped: f0005-f0007 are opened the usual way at once and start a scan again, whose
    # first batch serves f0008 and stalls on f0009.
    assert all(got[i] is None and waited[i] < 0.1 for i in (5, 6, 7))
    assert got[8] == fake.content("d/f0008")
    assert got[9] is None and abs(waited[9] - scans_module.STALLED) < 0.5
    assert all(got[i] is None and waited[i] < 0.1 for i in (10, 11))
    gave_up = [r.getMessage() for r in caplog.records if "delivered nothing" in r.getMessage()]
    assert gave_up == [
        f"ais://b/d/f{i:04}: Get-Batch delivered nothing for 5 s; reading its files one by one"
        for i in (4, 9)], gave_up


async def test_a_batch_that_keeps_delivering_slowly_is_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Members ``0.7 * STALLED`` apart: an open of a batch's second member waits longer than
    ``STALLED`` in all, and gets its bytes."""
    fake = files(20)
    listings = Listings()
    listings.list(fake, "d/")
    fake.batch_member_delay = 0.7 * scans_module.STALLED
    async with scans_of(fake, listings, hold=60.0) as scans:
        for i in range(3):
            await open_file(scans, fake, f"d/f{i:04}")
        started = trio.current_time()
        with trio.fail_after(100):
            got = await open_file(scans, fake, "d/f0004")  # the first batch: f0003, f0004
        assert trio.current_time() - started > scans_module.STALLED
    assert got == fake.content("d/f0004")


async def test_an_object_of_another_size_than_listed_is_read_the_usual_way() -> None:
    fake = files(40)
    listings = Listings()
    listings.list(fake, "d/")
    async with scans_of(fake, listings) as scans:
        for i in range(5):
            await open_file(scans, fake, f"d/f{i:04}")
        fake.store("d/f0030", b"other size")  # replaced before its batch is sent
        for i in range(5, 40):
            key = f"d/f{i:04}"
            listed = listings.by_dir[("b", "d/")].by_name[key[2:]].stat
            got = await open_file(scans, fake, key, listed)
            assert got is None if i == 30 else got == fake.content(key)


async def test_a_failed_batch_leaves_its_files_to_the_usual_reader(
    in_process_log_rule: None,
) -> None:
    fake = files(40)
    listings = Listings()
    listings.list(fake, "d/")
    fake.fail_calls["get_batch"] = errors.Transient("no target", 503, "ais://b")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        for i in range(40):
            assert await open_file(scans, fake, f"d/f{i:04}") is None
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0
    assert fake.calls["get_batch"] > 0


async def test_an_open_that_shows_other_attributes_than_the_batch_asked_for_is_not_served(
) -> None:
    fake = files(20)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        for i in range(5):
            await open_file(scans, fake, f"d/f{i:04}")
        # The open's attributes (a newer listing or a HEAD) name another version.
        assert await open_file(scans, fake, "d/f0005", Stat(KIB, 0, "2")) is None
        assert await open_file(scans, fake, "d/f0006", Stat(KIB + 1, 0, "1")) is None
        assert await open_file(scans, fake, "d/f0007") == fake.content("d/f0007")
        scans.close()
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0


async def test_a_change_made_through_the_mount_drops_what_is_held_of_the_name() -> None:
    fake = files(20)
    listings = Listings()
    listings.list(fake, "d/")
    async with scans_of(fake, listings) as scans:
        for i in range(4):
            await open_file(scans, fake, f"d/f{i:04}")
        await trio.testing.wait_all_tasks_blocked()
        scans.changed("b", "d/f0005")
        assert await open_file(scans, fake, "d/f0004") == fake.content("d/f0004")
        assert await open_file(scans, fake, "d/f0005") is None
        assert await open_file(scans, fake, "d/f0006") == fake.content("d/f0006")
        scans.changed_under("b", "d/")
        assert await open_file(scans, fake, "d/f0007") is None


async def test_an_open_waiting_for_its_batch_gets_it_as_it_comes() -> None:
    fake = files(20)
    listings = Listings()
    listings.list(fake, "d/")
    async with scans_of(fake, listings) as scans:
        for i in range(3):
            await open_file(scans, fake, f"d/f{i:04}")
        fake.gate = trio.Event()  # the batches are sent, their replies held
        got: list[bytes | None] = []

        async def open_next() -> None:
            got.append(await open_file(scans, fake, "d/f0003"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_next)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []
            fake.gate.set()
        assert got == [fake.content("d/f0003")]


async def test_bytes_not_opened_in_time_go_back_to_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = files(100)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget, hold=2.0) as scans:
        for i in range(6):
            await open_file(scans, fake, f"d/f{i:04}")
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used > 0
        await trio.sleep(2.5)
        assert budget.used == 0
        # The reader comes back: that file is read the usual way, the next ones are fetched
        # again.
        assert await open_file(scans, fake, "d/f0006") is None
        assert await open_file(scans, fake, "d/f0007") == fake.content("d/f0007")


async def test_a_slow_reader_is_not_fetched_further_ahead_than_it_reads_in_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten opens a second: what is fetched ahead is opened long before it expires (a deeper
    look-ahead would hold files until their time is up, and they would be read one by one)."""
    fake = files(400, size=100)
    listings = Listings()
    listings.list(fake, "d/")
    async with scans_of(fake, listings, batch=1024 * KIB, hold=5.0) as scans:
        served = 0
        for i in range(400):
            served += await open_file(scans, fake, f"d/f{i:04}") is not None
            await trio.sleep(0.1)
    assert served == 397
    assert fake.calls["get_batch"] >= 400 // 64


async def test_a_fast_reader_is_fetched_further_ahead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = files(3000, size=100)
    listings = Listings()
    listings.list(fake, "d/")
    async with scans_of(fake, listings, batch=1024 * KIB) as scans:
        for i in range(3000):
            await open_file(scans, fake, f"d/f{i:04}")
            await trio.sleep(0.0005)  # 2,000 opens a second
    # About a second of reading ahead in DEPTH batches: ~500 files each, not MIN_AHEAD's 16.
    assert fake.calls["get_batch"] <= 20


@pytest.mark.parametrize(("budget_kib", "batch_kib"), [(40, 16), (12, 64)],
                         ids=["two batches fit", "budget below one batch"])
async def test_batches_stay_within_the_read_ahead_budget(budget_kib: int, batch_kib: int) -> None:
    """A batch asks for at most a DEPTH-th of the budget, so that a budget below --scan-batch
    (a small --read-ahead-budget) still lets the scan fetch."""
    fake = files(300, size=4 * KIB)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(budget_kib * KIB)
    async with scans_of(fake, listings, batch=batch_kib * KIB, budget=budget) as scans:
        served = 0
        for i in range(300):
            obj = fake.objects[("b", f"d/f{i:04}")]
            got = await scans.opened("b", f"d/f{i:04}", Stat(obj.size, 0, obj.version))
            if got is not None:
                served += 1
                assert budget.used <= budget.limit
                scans.give_back(got)
            await trio.testing.wait_all_tasks_blocked()
    assert budget.peak <= budget.limit
    assert served > 250  # batches that fit were sent, and kept coming


async def test_only_small_files_are_fetched_and_the_others_do_not_break_the_order() -> None:
    fake = FakeAis()
    sizes = {f"d/f{i:02}": 100 for i in range(30)}
    sizes |= {"d/f05": 0, "d/f10": 3 * 1024 * KIB, "d/f20": 0}
    for key, size in sizes.items():
        fake.store(key, random.Random(key).randbytes(size))
    fake.store("d/f12/sub", b"a subdirectory's")
    listings = Listings()
    children = [Child(k[2:], False, Stat(s, 0, "1")) for k, s in sorted(sizes.items())]
    children.insert(13, Child("f12", True, None))  # "f12/" sorts after "f12"
    listings.by_dir[("b", "d/")] = Listing(children, {c.name: c for c in children})
    async with scans_of(fake, listings) as scans:
        for key in sorted(sizes):
            got = await open_file(scans, fake, key)
            if key in ("d/f05", "d/f10", "d/f20") or key < "d/f03":
                assert got is None, key
            else:
                assert got == fake.content(key), key
    asked = [name for call in fake.log if call[0] == "get_batch" for name in call[2:]]
    assert "d/f05" not in asked and "d/f10" not in asked and "d/f12/sub" not in asked


async def test_nothing_is_fetched_while_the_kernel_holds_the_files() -> None:
    """A directory read again through the same mount: its pages are still cached, so the
    opens need no bytes; fetching resumes with the first open that does."""
    fake = files(200)
    listings = Listings()
    listings.list(fake, "d/")
    budget = MemoryBudget(64 * 1024 * KIB)
    async with scans_of(fake, listings, budget=budget) as scans:
        for i in range(150):
            obj = fake.objects[("b", f"d/f{i:04}")]
            got = await scans.opened("b", f"d/f{i:04}", Stat(obj.size, 0, obj.version),
                                     need_bytes=i < 3)
            assert got is None
            await trio.testing.wait_all_tasks_blocked()
        sent = fake.calls["get_batch"]
        assert sent <= 4 and budget.used == 0
        assert await open_file(scans, fake, "d/f0150") is None  # needs bytes: fetching again
        assert await open_file(scans, fake, "d/f0151") == fake.content("d/f0151")
        assert fake.calls["get_batch"] > sent


async def test_a_directory_of_big_files_read_in_order_is_looked_through_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing to fetch: each open must not walk the rest of the listing again."""
    n = 5000
    children = [Child(f"f{i:05}", False, Stat(2 * 1024 * KIB, 0, "1")) for i in range(n)]
    listings = Listings()
    listings.by_dir[("b", "d/")] = Listing(children, {c.name: c for c in children})
    looked = 0
    is_file = scan_state.is_file

    def counting(child: Child) -> bool:
        nonlocal looked
        looked += 1
        return is_file(child)

    monkeypatch.setattr(scans_module, "is_file", counting)  # where the scan picks files
    monkeypatch.setattr(scan_state, "is_file", counting)  # where the order is followed
    fake = FakeAis()
    async with scans_of(fake, listings) as scans:
        for i in range(n):
            assert await scans.opened("b", f"d/f{i:05}", Stat(2 * 1024 * KIB, 0, "1")) is None
    assert fake.calls["get_batch"] == 0
    assert looked < 10 * n


def test_positions_in_a_listing_with_names_out_of_order() -> None:
    """AIS lists in name order; the stream hands out an object "a" after "a-b" and "a.c",
    and directories made here first."""
    names = [("made", True), ("a-b", False), ("a.c", False), ("a", False), ("b", True),
             ("c", False), ("d", False)]
    children = [Child(n, d, None if d else Stat(1, 0)) for n, d in names]
    assert [position(children, n) for n in ("a-b", "a.c", "a", "c", "d")] == [1, 2, 3, 5, 6]
    assert position(children, "b") is None and position(children, "zz") is None
    assert next_file(children, 3) == 5 and next_file(children, 6) is None

"""aisfs/archive_view.py against the in-memory AIS of tests/fakeais.py (real tar shards)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.aisapi import Spawn
from aisfs.archive_view import ArchiveView, children
from aisfs.archives import MemberDir
from aisfs.cache import Stat
from aisfs.listing import Child, Listing
from aisfs.metacache import ShownMtimes

from .fakeais import FakeAis
from .shards import tar_of


def view_of(fake: FakeAis, listings: dict[tuple[str, str], Listing] | None = None,
            spawn: Spawn | None = None) -> ArchiveView:
    async def archive_stat(bucket: str, key: str) -> Stat:
        props = await fake.head_object(bucket, key)
        return Stat(props.size, props.mtime_ns, props.version)

    def no_spawn(fn: Callable[[], Awaitable[None]]) -> None:
        raise AssertionError("nothing is to be listed ahead here")

    known = listings or {}
    return ArchiveView(fake, archive_stat, ShownMtimes(),
                       lambda bucket, prefix: known.get((bucket, prefix)), spawn or no_spawn)


def listing_of(*names: str) -> Listing:
    """A directory's cached listing: ``names`` (a name ending in "/" is a directory)."""
    children = [Child(n.rstrip("/"), n.endswith("/"), None if n.endswith("/") else Stat(1, 0))
                for n in names]
    return Listing(children, {c.name: c for c in children})


async def test_archives_used_in_order_have_the_next_one_listed_ahead() -> None:
    shards = {f"d/s{i}.tar": tar_of({"a": bytes([i])}) for i in range(4)}
    fake = FakeAis({**shards, "d/t.txt": b"text"})
    listings = {("b", "d/"): listing_of("s0.tar", "s1.tar", "s2.tar", "s3.tar", "t.txt", "z/")}
    async with trio.open_nursery() as nursery:
        view = view_of(fake, listings, nursery.start_soon)
        await view.tree("b", "d/s0.tar")  # the first archive, used first: s1 is listed ahead
        await view.tree("b", "d/s0.tar")
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls["list_archive"] == 2 and view.listed_ahead == 1
        for i in (1, 2):  # s0 then s1 (then s2): each kept, the next one listed ahead
            await view.tree("b", f"d/s{i}.tar")
            await trio.testing.wait_all_tasks_blocked()
            assert fake.calls["list_archive"] == 3 + i - 1 and view.listed_ahead == 1 + i
        await view.tree("b", "d/s3.tar")  # the next entry is no archive
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls["list_archive"] == 4 and view.listed_ahead == 3


async def test_archives_used_out_of_order_list_nothing_ahead() -> None:
    shards = {f"d/s{i}.tar": tar_of({"a": bytes([i])}) for i in range(4)}
    fake = FakeAis(dict(shards))
    listings = {("b", "d/"): listing_of("s0.tar", "s1.tar", "s2.tar", "s3.tar")}
    async with trio.open_nursery() as nursery:
        view = view_of(fake, listings, nursery.start_soon)
        for key in ("d/s2.tar", "d/s0.tar", "d/s3.tar", "d/s1.tar"):  # s0 second: not first
            await view.tree("b", key)
        await trio.testing.wait_all_tasks_blocked()
    assert fake.calls["list_archive"] == 4 and view.listed_ahead == 0


async def test_an_archive_listed_ahead_that_fails_is_left_to_its_use() -> None:
    fake = FakeAis({"d/s0.tar": tar_of({"a": b"0"}), "d/s1.tar": tar_of({"a": b"1"})})
    listings = {("b", "d/"): listing_of("s0.tar", "s1.tar", "s2.tar")}  # s2 gone meanwhile
    async with trio.open_nursery() as nursery:
        view = view_of(fake, listings, nursery.start_soon)
        await view.tree("b", "d/s0.tar")  # s1 ahead
        await view.tree("b", "d/s1.tar")  # s2 ahead: gone
        await trio.testing.wait_all_tasks_blocked()
    assert view.listed_ahead == 2
    with pytest.raises(errors.NotFound):
        await view.tree("b", "d/s2.tar")


async def test_tree_is_listed_once_per_version() -> None:
    fake = FakeAis({"s.tar": tar_of({"a": b"1", "d/b": b"22"})})
    view = view_of(fake)
    first = await view.tree("b", "s.tar")
    assert await view.tree("b", "s.tar") is first
    assert fake.calls["list_archive"] == 1
    fake.store("s.tar", tar_of({"a": b"1", "d/b": b"22", "c": b"333"}))  # version 2
    second = await view.tree("b", "s.tar")
    assert second.version == "2" and second.members == 3
    assert fake.calls["list_archive"] == 2
    view.forget("b", "s.tar")
    await view.tree("b", "s.tar")
    assert fake.calls["list_archive"] == 3


async def test_concurrent_uses_share_one_listing() -> None:
    fake = FakeAis({"s.tar": tar_of({"a": b"1"})})
    view = view_of(fake)
    fake.archive_gate = trio.Event()
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lambda: _collect(view, got))
        await trio.sleep(0.01)
        assert fake.calls["list_archive"] == 1  # the others wait for that one
        fake.archive_gate.set()
    assert len(got) == 5 and all(g is got[0] for g in got)
    assert fake.calls["list_archive"] == 1


async def _collect(view: ArchiveView, got: list[object]) -> None:
    got.append(await view.tree("b", "s.tar"))


async def test_unreadable_archive_is_empty_with_one_warning_per_version(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeAis({"bad.tar": b"not a tar" * 100})
    view = view_of(fake)
    with caplog.at_level(logging.WARNING, logger="aisfs.archive_view"):
        for _ in range(3):
            tree = await view.tree("b", "bad.tar")
            assert not tree.readable and not tree.root.children
            view.forget("b", "bad.tar")
        fake.store("bad.tar", b"still not a tar" * 100)
        await view.tree("b", "bad.tar")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("ais://b/bad.tar" in w for w in warnings)


async def test_missing_archive() -> None:
    view = view_of(FakeAis())
    with pytest.raises(errors.NotFound):
        await view.tree("b", "gone.tar")


async def test_children_carry_the_archive_time_and_version() -> None:
    fake = FakeAis()
    fake.store("s.tar", tar_of({"z": b"1", "d/b": b"22", "a": b""}), version="7", atime_ns=5)
    tree = await view_of(fake).tree("b", "s.tar")
    assert children(tree, tree.root) == [
        Child("a", False, Stat(0, 5, "7")), Child("d", True, None), Child("z", False,
                                                                          Stat(1, 5, "7"))]
    d = tree.find("d")
    assert isinstance(d, MemberDir)
    assert children(tree, d) == [Child("b", False, Stat(2, 5, "7"))]


async def test_a_tree_listed_again_keeps_the_time_shown_for_its_version() -> None:
    """AIS lists an archive it did not get from aisfs with its access time, which reads move: a
    tree listed again for the same version (after it left the LRU) must not move its members'
    times (``tar c`` would say "file changed as we read it")."""
    fake = FakeAis()
    fake.store("s.tar", tar_of({"m": b"1"}), version="3", atime_ns=5)
    view = view_of(fake)
    first = await view.tree("b", "s.tar")
    fake.objects[("b", "s.tar")].atime_ns = 99  # read since: the listing's time moved
    view.trees.pop(("b", "s.tar"))  # (as the LRU drops it)
    again = await view.tree("b", "s.tar")
    assert again is not first and fake.calls["list_archive"] == 2
    assert again.mtime_ns == first.mtime_ns == 5
    fake.store("s.tar", tar_of({"m": b"2"}), version="4", atime_ns=99)  # a new version
    assert (await view.tree("b", "s.tar")).mtime_ns == 99

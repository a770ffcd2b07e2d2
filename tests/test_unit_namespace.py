"""aisfs/namespace.py against the in-memory AIS of tests/fakeais.py: lookups, the metadata cache
as lookups use it, directories made here, invalidation."""

from __future__ import annotations

import errno
from collections import Counter

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.cache import Stat
from aisfs.inodes import Kind
from aisfs.listing import Listing, valid_name
from aisfs.objects import ListEntry

from .fakeais import STORED_NS, FakeAis
from .namespace_util import list_dir, listing, make_ns, names

# ---------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "ok"),
    [("a", True), ("", False), (".", False), ("..", False), ("...", True), ("a/b", False),
     ("x" * 255, True), ("x" * 256, False), ("é" * 127, True), ("é" * 128, False),
     ("nul\0", False)],
)
def test_valid_name(name: str, ok: bool) -> None:
    assert valid_name(name) is ok


# ---------------------------------------------------------------------- lookups


async def test_lookup_uses_fresh_listing() -> None:
    fake = FakeAis({"a": 1, "d/x": 2})
    ns, _ = make_ns(fake)
    await list_dir(ns)
    before = dict(fake.calls)
    inode, st = await ns.lookup(ns.root, "a")
    assert inode.kind is Kind.FILE and st == Stat(1, STORED_NS, "1")
    d, st_d = await ns.lookup(ns.root, "d")
    assert d.kind is Kind.DIR and st_d is None
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "nope")
    assert dict(fake.calls) == before  # everything answered from the listing


async def test_a_name_missing_from_a_listing_is_believed_missing_for_the_negative_ttl() -> None:
    fake = FakeAis({"a": 1})
    ns, timer = make_ns(fake, ttl=5.0, neg=1.0)
    await list_dir(ns)
    fake.store("new", 3)  # made by another client
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "new")
    assert fake.calls["head_object"] == 0
    timer.now += 1.5  # past the negative TTL, within the listing's
    _, st = await ns.lookup(ns.root, "new")
    assert st is not None and st.size == 3
    await ns.lookup(ns.root, "a")  # names in the listing are still answered by it
    # AIS was asked by listing the directory again: it answers the next names too.
    assert fake.calls == Counter({"list": 2})
    fake.store("newer", 4)
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "newer")
    timer.now += 1.5
    _, st = await ns.lookup(ns.root, "newer")
    assert st is not None and st.size == 4
    assert fake.calls == Counter({"list": 3})


async def test_lookup_without_listing_heads_and_lists_a_first_page() -> None:
    fake = FakeAis({"d/x": 2})
    fake.store("a", 1, version="3", atime_ns=7_000_000_000)
    ns, timer = make_ns(fake)
    inode, st = await ns.lookup(ns.root, "a")
    assert inode.kind is Kind.FILE and inode.key == "a"
    assert st == Stat(1, 7_000_000_000, "3")  # from the HEAD
    assert fake.calls == Counter({"head_object": 1, "list": 1})
    assert ("head", "b", "a") in fake.log
    assert ("page", "b", "a/", "False", "1000") in fake.log  # the listing's first page
    d, _ = await ns.lookup(ns.root, "d")
    assert d.kind is Kind.DIR and d.key == "d/"
    assert ("page", "b", "d/", "False", "1000") in fake.log
    # Within the TTL nothing is asked again.
    calls = sum(fake.calls.values())
    await ns.lookup(ns.root, "a")
    await ns.lookup(ns.root, "d")
    assert sum(fake.calls.values()) == calls


async def test_opendir_after_a_lookup_starts_from_its_first_page() -> None:
    fake = FakeAis({"d/x": 1, "d/y": 2})
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    calls = fake.calls.copy()
    # A small directory: the lookup's page was all of it, so listing it asks nothing more.
    assert names(await list_dir(ns, d)) == [("x", False), ("y", False)]
    assert fake.calls == calls
    assert isinstance(ns.listings.get(("b", "d/")), Listing)


async def test_opendir_after_a_lookup_of_a_big_directory_resumes_after_its_first_page() -> None:
    fake = FakeAis({f"d/{i:05}": 1 for i in range(2500)})
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    fake.log.clear()
    assert [c.name for c in await list_dir(ns, d)] == [f"{i:05}" for i in range(2500)]
    assert fake.log == [("page", "b", "d/", "False", "0")]  # only the rest


async def test_a_first_page_of_directories_alone_is_checked_recursively() -> None:
    fake = FakeAis({"d/sub/x": 1})
    fake.raw_listings[("b", "e/")] = [ListEntry("e/gone/", True)]  # emptied on disk
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    assert d.kind is Kind.DIR
    assert fake.calls == Counter({"list": 1, "probe": 1, "head_object": 1})
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "e")


async def test_a_lookup_of_a_small_directory_caches_its_listing() -> None:
    fake = FakeAis({"d/x": 1, "d/y": 2, "d/sub/z": 3})
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    calls = fake.calls.copy()
    x, st = await ns.lookup(d, "x")
    assert x.kind is Kind.FILE and st == Stat(1, STORED_NS, "1")
    sub, _ = await ns.lookup(d, "sub")
    assert sub.kind is Kind.DIR
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "nope")
    assert fake.calls == calls  # all from the listing


async def test_a_lookup_caches_a_listing_made_during_a_change_with_the_change() -> None:
    fake = FakeAis({"d/x": 1})
    fake.held_pages[("d/", False)] = gate = trio.Event()
    ns, _ = make_ns(fake)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ns.lookup, ns.root, "d")
        await trio.testing.wait_all_tasks_blocked()
        ns.note_written("b", "d/new", 5, 1, "1")  # written here while the page was on its way
        gate.set()
    cached = ns.listings.get(("b", "d/"))
    assert isinstance(cached, Listing) and names(cached.children) == [("x", False), ("new", False)]
    calls = fake.calls.copy()
    _, st = await ns.lookup(ns.table.child(ns.root, "b", "d/", Kind.DIR), "new")
    assert st is not None and st.size == 5
    assert fake.calls == calls


async def test_a_lookup_does_not_cache_a_listing_dropped_meanwhile() -> None:
    fake = FakeAis({"d/x": 1})
    fake.held_pages[("d/", False)] = gate = trio.Event()
    ns, _ = make_ns(fake)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ns.lookup, ns.root, "d")
        await trio.testing.wait_all_tasks_blocked()
        fake.store("d/new", 5)
        ns.invalidate("b", "d/new")  # changed elsewhere while the page was on its way
        gate.set()
    assert ns.listings.get(("b", "d/")) is None
    _, st = await ns.lookup(ns.table.child(ns.root, "b", "d/", Kind.DIR), "new")
    assert st is not None and st.size == 5


async def test_a_listing_after_a_lookup_misses_no_change_made_here_meanwhile() -> None:
    fake = FakeAis({f"d/{i:04}": 1 for i in range(1500)})
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    assert ns.dir_listings.first_pages.get(("b", "d/")) is not None  # kept for the opendir
    fake.store("d/0000a", 5)
    ns.note_written("b", "d/0000a", 5, 1, "1")  # written through this mount after the lookup
    assert "0000a" in {c.name for c in await list_dir(ns, d)}


async def test_a_lookups_first_page_expires_with_the_metadata_ttl() -> None:
    fake = FakeAis({"d/x": 1})
    ns, timer = make_ns(fake, ttl=5.0)
    d, _ = await ns.lookup(ns.root, "d")
    fake.store("d/late", 1)  # changed remotely
    timer.now += 6
    assert names(await list_dir(ns, d)) == [("late", False), ("x", False)]


async def test_lookup_after_listing_expired_goes_remote() -> None:
    fake = FakeAis({"a": 1})
    ns, timer = make_ns(fake, ttl=5.0, neg=1.0)
    await list_dir(ns)
    timer.now += 6
    fake.store("a", 99)  # changed remotely
    _, st = await ns.lookup(ns.root, "a")
    assert st is not None and st.size == 99
    assert fake.calls == Counter({"list": 2, "head_object": 1})  # the listing, then the lookup


async def test_negative_entries_cached_for_negative_ttl() -> None:
    fake = FakeAis({"a": 1})
    ns, timer = make_ns(fake, ttl=5.0, neg=1.0)
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "nope")
    assert fake.calls == Counter({"head_object": 1, "list": 1})
    timer.now += 0.5
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "nope")
    assert fake.calls == Counter({"head_object": 1, "list": 1})
    fake.store("nope", 5)  # appears remotely
    timer.now += 0.7  # 1.2 s: the negative entries expired
    inode, st = await ns.lookup(ns.root, "nope")
    assert inode.kind is Kind.FILE and st is not None and st.size == 5
    assert fake.calls == Counter({"head_object": 2, "list": 2})


async def test_no_negative_caching_when_ttl_zero() -> None:
    fake = FakeAis({"a": 1})
    ns, _ = make_ns(fake, neg=0.0)
    for _ in range(3):
        with pytest.raises(errors.NotFound):
            await ns.lookup(ns.root, "nope")
    assert fake.calls["head_object"] == 3
    assert fake.calls["list"] == 3 + 1  # each name's own; the directory's, from the third


async def test_concurrent_lookups_share_one_head() -> None:
    fake = FakeAis({"a": 1})
    fake.gate = trio.Event()
    ns, _ = make_ns(fake)
    found = []

    async def one() -> None:
        found.append(await ns.lookup(ns.root, "a"))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
    assert fake.calls["head_object"] == 1
    # The name's own listing, and (three lookups in the directory) the directory's.
    assert fake.calls["list"] == 2
    assert len({id(i) for i, _ in found}) == 1


async def test_lookup_bad_names() -> None:
    fake = FakeAis({"a": 1})
    ns, _ = make_ns(fake)
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "")
    with pytest.raises(errors.PosixError) as info:
        await ns.lookup(ns.root, "n" * 256)
    assert info.value.errno == errno.ENAMETOOLONG
    assert sum(fake.calls.values()) == 0


async def test_fresh_stat_bypasses_cache() -> None:
    fake = FakeAis({"a": 1})
    ns, _ = make_ns(fake)
    inode, _ = await ns.lookup(ns.root, "a")
    fake.store("a", 2)
    assert (await ns.getattr(inode)).size == 1  # type: ignore[union-attr]
    assert (await ns.fresh_stat(inode)).size == 2
    assert fake.calls["head_object"] == 2


async def test_getattr_of_dir_is_none() -> None:
    fake = FakeAis({"d/x": 1})
    ns, _ = make_ns(fake)
    d, _ = await ns.lookup(ns.root, "d")
    assert await ns.getattr(d) is None
    assert await ns.getattr(ns.root) is None


async def test_cluster_root_lists_and_looks_up_buckets() -> None:
    fake = FakeAis(buckets=("b2", "b1"))
    ns, _ = make_ns(fake, source="ais://")
    assert ns.root.kind is Kind.CLUSTER
    children = await list_dir(ns)
    assert [(c.name, c.is_dir) for c in children] == [("b1", True), ("b2", True)]
    inode, st = await ns.lookup(ns.root, "b2")
    assert inode.bucket == "b2" and inode.key == "" and inode.kind is Kind.DIR and st is None
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "nob")
    assert fake.calls["list_buckets"] == 1


# ---------------------------------------------------------------------- local dirs


async def test_local_dirs_show_in_listings_and_lookups() -> None:
    fake = FakeAis({"a": 1, "d/x": 2})
    ns, _ = make_ns(fake)
    ns.local.made.add(("b", "new/"))
    ns.local.made.add(("b", "d/"))  # also exists remotely: still one entry
    ns.local.made.add(("b", "new/sub/"))
    ns.local.made.add(("other", "zzz/"))  # another bucket: not here
    root = await listing(ns, "")
    assert names(root.children) == [("d", True), ("new", True), ("a", False)]  # made here: first
    sub = await listing(ns, "new/")
    assert names(sub.children) == [("sub", True)]
    inode, st = await ns.lookup(ns.root, "new")
    assert inode.kind is Kind.DIR and inode.key == "new/" and st is None
    assert await ns.dir_exists("b", "new/sub/") is True


async def test_local_dir_lookup_needs_no_remote_call() -> None:
    fake = FakeAis()
    ns, _ = make_ns(fake)
    ns.local.made.add(("b", "made/"))
    inode, _ = await ns.lookup(ns.root, "made")
    assert inode.kind is Kind.DIR
    assert sum(fake.calls.values()) == 0


# ---------------------------------------------------------------------- invalidation


async def test_invalidate_drops_parent_listing_and_stats() -> None:
    fake = FakeAis({"top": 1, "a/x": 2, "a/b/y": 3})
    ns, _ = make_ns(fake)
    await listing(ns, "")
    await listing(ns, "a/")
    await listing(ns, "a/b/")
    assert fake.calls["list"] == 3
    ns.invalidate("b", "a/x")
    assert ns.listings.get(("b", "a/")) is None
    assert ns.listings.get(("b", "")) is not None
    assert ns.listings.get(("b", "a/b/")) is not None
    assert ns.stats.get(("b", "a/x")) is None
    heads = fake.calls["head_object"]
    assert (await ns.object_stat("b", "top")).size == 1  # still answered by the cached listing
    assert fake.calls["head_object"] == heads
    assert ns.dirs.get(("b", "a/")) is None  # the ancestor may have gone away
    fake.store("a/new", 4)
    cached = await listing(ns, "a/")
    assert "new" in cached.by_name
    assert fake.calls["list"] == 4
    ns.invalidate("b", "top")
    assert ns.listings.get(("b", "")) is None
    ns.invalidate("b", "a/b/")  # a directory key: its parent is a/
    assert ns.listings.get(("b", "a/")) is None
    assert ns.listings.get(("b", "a/b/")) is not None

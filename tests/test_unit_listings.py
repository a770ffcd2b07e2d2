"""aisfs/listings.py and the tree walks of aisfs/subtree.py, through the namespace, against the
in-memory AIS of tests/fakeais.py: listing streams, their cache, tree-walk scans, listings for
lookups."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.cache import Stat
from aisfs.inodes import Inode, Kind
from aisfs.listing import Listing, ListingStream
from aisfs.namespace import Namespace
from aisfs.objects import ListEntry
from aisfs.subtree import SubtreeSplitter

from .fakeais import STORED_NS, FakeAis
from .namespace_util import FakeTimer, drain, list_dir, listing, make_ns, names

# ---------------------------------------------------------------------- listings


async def test_listing_gives_child_names() -> None:
    fake = FakeAis({"d/a": 1, "d/b/c": 2, "d/b/x/y": 3, "d/e": 4, "top": 5, "dd": 6})
    ns, _ = make_ns(fake)
    root = await list_dir(ns)
    assert [(c.name, c.is_dir) for c in root] == [("d", True), ("dd", False), ("top", False)]
    assert ns.table.find("b", "d/") is None  # listing registers no inodes
    d_inode, _ = await ns.lookup(ns.root, "d")
    assert d_inode.kind is Kind.DIR and d_inode.key == "d/"
    children = await list_dir(ns, d_inode)
    assert [(c.name, c.is_dir) for c in children] == [("a", False), ("b", True), ("e", False)]
    assert ns.table.find("b", "d/a") is None
    stat_a = next(c.stat for c in children if c.name == "a")
    assert stat_a == Stat(1, STORED_NS, "1")
    assert ("page", "b", "d/", "False", "1000") in fake.log


async def test_listing_seeds_the_stat_cache() -> None:
    fake = FakeAis({"f1": 10, "f2": 20})
    ns, _ = make_ns(fake)
    await list_dir(ns)
    inode, st = await ns.lookup(ns.root, "f2")
    assert st == Stat(20, STORED_NS, "1")
    assert await ns.getattr(inode) == st
    assert fake.calls["head_object"] == 0


@pytest.mark.parametrize("order", ["file-first", "dir-first"])
async def test_dir_and_object_with_one_name_are_one_dir(order: str) -> None:
    fake = FakeAis({"x/z": 1})
    entries = [ListEntry("x", False, 3, 0, "1"), ListEntry("x/", True), ListEntry("y", False, 1)]
    if order == "dir-first":
        entries[0], entries[1] = entries[1], entries[0]
    fake.raw_listings[("b", "")] = entries
    ns, _ = make_ns(fake)
    cached = await listing(ns, "")
    assert names(cached.children) == [("x", True), ("y", False)]
    inode, st = await ns.lookup(ns.root, "x")
    assert inode.kind is Kind.DIR and inode.key == "x/" and st is None


async def test_dir_wins_in_lookup_without_listing(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAis({"x": 3, "x/y": 4})
    ns, _ = make_ns(fake)
    with caplog.at_level(logging.INFO, logger="aisfs.namespace"):
        inode, st = await ns.lookup(ns.root, "x")
    assert inode.kind is Kind.DIR and inode.key == "x/" and st is None
    assert any("both an object and a prefix" in r.getMessage() for r in caplog.records)


async def test_invalid_names_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAis()
    long = "y" * 300
    fake.raw_listings[("b", "p/")] = [
        ListEntry("p/", False, 1),  # the prefix itself: empty name
        ListEntry("p//", True),  # from a//b: an empty component
        ListEntry("p/.", False, 1),
        ListEntry("p/..", False, 1),
        ListEntry("p/../", True),
        ListEntry("p/" + long, False, 1),
        ListEntry("p/x/y", False, 1),  # a slash in a file name
        ListEntry("other/z", False, 1),  # not under the prefix at all
        ListEntry("p/ok", False, 2),
        ListEntry("p/sub/", True),
    ]
    ns, _ = make_ns(fake)
    with caplog.at_level(logging.WARNING, logger="aisfs.listing"):
        cached = await listing(ns, "p/")
    assert names(cached.children) == [("ok", False), ("sub", True)]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "skipped 8" in warnings[0].getMessage()


async def test_no_warning_for_a_clean_listing(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeAis({"a": 1, "b/c": 2})
    ns, _ = make_ns(fake)
    with caplog.at_level(logging.WARNING, logger="aisfs.listing"):
        await listing(ns, "")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_listing_keeps_the_cluster_order_and_holds_objects_back() -> None:
    fake = FakeAis({"a/z": 1})
    # AIS's order (by key, a directory's key ends with "/"): the object "a" may still turn out
    # to be the directory "a/" until a key at or after "a/" comes.
    fake.raw_listings[("b", "")] = [
        ListEntry("B", False, 1), ListEntry("a", False, 9), ListEntry("a-b", False, 1),
        ListEntry("a.txt", False, 1), ListEntry("a/", True), ListEntry("c", False, 2),
        ListEntry("c-d", False, 1), ListEntry("d/", True), ListEntry("é", False, 1),
    ]
    ns, _ = make_ns(fake)
    cached = await listing(ns, "")
    assert names(cached.children) == [
        ("B", False), ("a-b", False), ("a.txt", False), ("a", True), ("c-d", False),
        ("c", False), ("d", True), ("é", False),
    ]
    assert cached.by_name["a"].is_dir and cached.by_name["c"].stat == Stat(2, 0, "")


async def test_a_directory_listed_beside_an_object_holding_no_object_is_the_object() -> None:
    # An object a//b makes AIS list a directory a/ (and under it, at times, the name a/b,
    # which no request finds): beside an object a, the object shows.
    fake = FakeAis()
    fake.raw_listings[("b", "")] = [ListEntry("a", False, 4), ListEntry("a/", True),
                                    ListEntry("c/", True)]
    fake.raw_listings[("b", "a/")] = [ListEntry("a/b", False, 1)]
    ns, _ = make_ns(fake)
    cached = await listing(ns, "")
    assert names(cached.children) == [("a", False), ("c", True)]
    assert fake.calls["probe"] == 1  # c/ has no object of its name beside it: believed


async def first_page_of(count: int) -> tuple[FakeAis, Namespace, ListingStream, trio.Event]:
    """The root of a bucket of ``count`` objects opened, its first page arrived, the later
    pages held until the returned event is set."""
    fake = FakeAis({f"o{i:05d}": i for i in range(count)})
    gate = fake.later_pages_gate = trio.Event()
    ns, _ = make_ns(fake)
    stream = await ns.open_dir(ns.root)
    await stream.wait_beyond(0)
    return fake, ns, stream, gate


async def test_first_page_is_handed_out_before_the_rest_arrives() -> None:
    fake, ns, stream, gate = await first_page_of(2500)
    # The first page's 1000 names, but for the last: a directory of its name may follow.
    assert len(stream.children) == 999 and not stream.done
    assert ns.listings.get(("b", "")) is None  # not cached while incomplete
    gate.set()
    await drain(stream)
    assert [c.name for c in stream.children] == [f"o{i:05d}" for i in range(2500)]
    assert [e[4] for e in fake.log if e[0] == "page"] == ["1000", "0"]  # then AIS's maximum
    assert isinstance(ns.listings.get(("b", "")), Listing)


async def test_a_big_page_is_handed_out_a_piece_at_a_time() -> None:
    # A page of 4,000 after the first: readers get its first piece while the rest is made,
    # so the kernel and `ls` take in one piece while the daemon makes the next.
    fake, ns, stream, gate = await first_page_of(5000)
    gate.set()
    await stream.wait_beyond(999)
    assert 1999 <= len(stream.children) < 4999 and not stream.done
    await drain(stream)
    assert [c.name for c in stream.children] == [f"o{i:05d}" for i in range(5000)]
    assert isinstance(ns.listings.get(("b", "")), Listing)


async def test_a_listing_that_fails_midway_reports_after_what_arrived() -> None:
    fake = FakeAis({f"o{i:05d}": i for i in range(1500)})
    fake.fail_later_pages = errors.AisError("target down", 503, "ais://b/")
    ns, _ = make_ns(fake)
    stream = await ns.open_dir(ns.root)
    await stream.wait_beyond(998)  # the first page is there
    with pytest.raises(errors.AisError):
        await stream.wait_beyond(999)
    assert ns.listings.get(("b", "")) is None and ("b", "") not in ns.dir_listings.streams


async def test_a_failed_check_of_a_removed_directory_fails_the_listing() -> None:
    fake = FakeAis({"a": 1, "gone/x": 2})
    fake.fail_probes = errors.AisError("target down", 503, "ais://b/gone/")
    ns, _ = make_ns(fake)
    ns.local.removed.add(("b", "gone/"))  # rmdir'd here: AIS's listing must be checked
    with pytest.raises(errors.AisError, match="target down"):
        await list_dir(ns)
    assert ns.listings.get(("b", "")) is None and not ns.dir_listings.streams


async def test_a_listing_nobody_reads_any_more_stops() -> None:
    fake, ns, stream, gate = await first_page_of(1500)
    again = await ns.open_dir(ns.root)  # a second open joins the same fetch
    assert again is stream and stream.readers == 2
    ns.close_dir(ns.root, stream)
    await trio.testing.wait_all_tasks_blocked()
    assert not stream.done  # one reader is left: the fetch goes on
    ns.close_dir(ns.root, again)  # `ls | head` exits
    await trio.testing.wait_all_tasks_blocked()
    assert stream.done and not ns.dir_listings.streams and ns.listings.get(("b", "")) is None
    gate.set()
    assert len(await list_dir(ns)) == 1500  # the next open lists anew
    assert fake.calls["list"] == 4


async def test_a_change_during_the_listing_keeps_it_out_of_the_cache() -> None:
    fake, ns, stream, gate = await first_page_of(1500)
    ns.invalidate("b", "o01400")  # e.g. deleted through the mount meanwhile
    gate.set()
    await drain(stream)
    assert len(stream.children) == 1500  # this open still sees its snapshot
    assert ns.listings.get(("b", "")) is None  # but the next one lists again
    await list_dir(ns)
    assert fake.calls["list"] == 4


async def test_listing_is_cached_until_ttl() -> None:
    fake = FakeAis({"a": 1})
    ns, timer = make_ns(fake, ttl=5.0)
    await list_dir(ns)
    await list_dir(ns)
    assert fake.calls["list"] == 1
    timer.now += 6
    await list_dir(ns)
    assert fake.calls["list"] == 2


async def test_concurrent_listings_share_one_fetch() -> None:
    fake = FakeAis({"a": 1})
    fake.gate = trio.Event()
    ns, _ = make_ns(fake)
    streams = [await ns.open_dir(ns.root) for _ in range(4)]
    assert all(s is streams[0] for s in streams)
    await trio.testing.wait_all_tasks_blocked()
    fake.gate.set()
    await drain(streams[0])
    assert [c.name for c in streams[0].children] == ["a"]
    assert fake.calls["list"] == 1


async def test_prefix_mount_lists_under_the_prefix() -> None:
    fake = FakeAis({"p/q/a": 1, "p/q/s/t": 2, "p/other": 3})
    ns, _ = make_ns(fake, source="ais://b/p/q")
    assert ns.root.key == "p/q/"
    children = await list_dir(ns)
    assert [(c.name, c.is_dir) for c in children] == [("a", False), ("s", True)]
    inode, st = await ns.lookup(ns.root, "a")
    assert inode.key == "p/q/a" and st is not None and st.size == 1


# ---------------------------------------------------------------------- tree walks


def objects(*keys: str) -> list[ListEntry]:
    return [ListEntry(k, False, 1) for k in keys]


def split(splitter: SubtreeSplitter, pages: list[list[str]]) -> dict[str, list[tuple[str, bool]]]:
    out: dict[str, list[tuple[str, bool]]] = {}
    for i, page in enumerate(pages):
        done = splitter.feed(objects(*page))
        if i == len(pages) - 1:
            done += splitter.finish()
        for directory, entries in done:
            assert directory not in out
            out[directory] = [(e.name, e.is_dir) for e in entries]
    return out


def test_the_splitter_hands_out_each_directory_once_the_listing_passed_it() -> None:
    splitter = SubtreeSplitter("p/")
    assert splitter.feed(objects("p/a/1", "p/a/b/2")) == []
    done = splitter.feed(objects("p/a/b/3", "p/a/b0", "p/c/4"))
    assert [d for d, _ in done] == ["p/a/b/", "p/a/"]  # p/c/ may still grow
    assert [d for d, _ in splitter.feed(objects("p/top"))] == ["p/c/"]  # p/ itself: never
    assert splitter.finish() == []


def test_the_splitter_agrees_with_non_recursive_listings() -> None:
    keys = ["t/a", "t/a-b/x", "t/a.txt", "t/a/x", "t/a/y/z", "t/b//c", "t/b/d", "t/é/f",
            "t/z/1/2/3/4", "t/z/1/2/5", "t/z/10", "t/z/1a"]
    fake = FakeAis({k: 1 for k in keys})
    for cut in range(len(keys) + 1):  # every split into two pages
        got = split(SubtreeSplitter("t/"), [keys[:cut], keys[cut:]])
        want = {d: [(e.name, e.is_dir) for e in fake.entries("b", d, recursive=False)]
                for d in got}
        assert got == want
        every_dir = {k[:i + 1] for k in keys for i in range(2, len(k)) if k[i] == "/"}
        assert set(got) == every_dir


TREE = {f"t/d{i}/s{j}/f{k}": 1 for i in range(5) for j in range(3) for k in range(4)} | {
    f"t/d{i}/top": 2 for i in range(5)}


async def walk(ns: Namespace, inode: Inode) -> dict[str, list[tuple[str, bool]]]:
    """What `find` sees: every directory's entries, depth first."""
    children = await list_dir(ns, inode)
    seen = {inode.key: names(children)}
    for child in children:
        if child.is_dir:
            sub = ns.table.child(inode, "b", inode.key + child.name + "/", Kind.DIR)
            seen.update(await walk(ns, sub))
    return seen


async def walk_one_by_one(fake: FakeAis) -> dict[str, list[tuple[str, bool]]]:
    ns, _ = make_ns(fake)
    ns.dir_listings.walks.refused.add("b")
    return await walk(ns, ns.root)


async def test_a_tree_walk_lists_the_rest_of_the_tree_recursively() -> None:
    fake = FakeAis(dict(TREE))
    want = await walk_one_by_one(fake)
    assert len(want) == 1 + 1 + 5 + 15
    fake.calls.clear()
    ns, _ = make_ns(fake)
    assert await walk(ns, ns.root) == want
    # One by one: the root, t/, t/d0/, t/d0/s0/; then t/d0/ from s1 and t/ from d1 recursively.
    assert fake.calls == Counter({"list": 4, "probe": 2})
    assert not ns.dir_listings.walks.scans


async def test_a_tree_walk_replays_a_change_made_here_during_its_scan() -> None:
    fake = FakeAis(dict(TREE))
    ns, _ = make_ns(fake)
    fake.held_pages[("t/", True)] = gate = trio.Event()
    result: dict[str, list[tuple[str, bool]]] = {}

    async def run() -> None:
        result.update(await walk(ns, ns.root))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        # The walk waits for the scan.
        assert [scan.prefix for scan in ns.dir_listings.walks.scans] == ["t/"]
        fake.store("t/d3/s1/new", 1)
        ns.note_written("b", "t/d3/s1/new", 1, 1, "1")  # written here meanwhile
        gate.set()
    assert ("new", False) in result["t/d3/s1/"]
    # The scan went on, with the change replayed: as many requests as a walk with no change.
    assert fake.calls == Counter({"list": 4, "probe": 2})
    assert result == await walk_one_by_one(fake)


async def test_a_tree_walk_stops_believing_its_scan_when_a_listing_below_is_dropped() -> None:
    fake = FakeAis(dict(TREE))
    ns, _ = make_ns(fake)
    fake.held_pages[("t/", True)] = gate = trio.Event()
    result: dict[str, list[tuple[str, bool]]] = {}

    async def run() -> None:
        result.update(await walk(ns, ns.root))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await trio.testing.wait_all_tasks_blocked()
        fake.store("t/d3/s1/new", 1)
        ns.invalidate("b", "t/d3/s1/new")  # found changed by another client meanwhile
        gate.set()
    assert ("new", False) in result["t/d3/s1/"]
    assert result == await walk_one_by_one(fake)


async def test_a_failed_recursive_listing_falls_back_to_one_by_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeAis(dict(TREE))
    fake.fail_scans = errors.InvalidRequest("start_after: not for remote buckets", 400, "x")
    ns, _ = make_ns(fake)
    with caplog.at_level(logging.WARNING):
        assert await walk(ns, ns.root) == await walk_one_by_one(fake)
    assert ns.dir_listings.walks.refused == {"b"}
    assert sum("recursive listing failed" in r.getMessage() for r in caplog.records) == 1


async def test_a_tree_walk_goes_on_after_a_recursive_listing_stopped_at_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aisfs.listings.FIRST_PAGE_SIZE", 5)
    monkeypatch.setattr("aisfs.subtree.SCAN_FIRST_PAGE", 5)
    monkeypatch.setattr("aisfs.subtree.SCAN_LIMIT", 5)
    want = await walk_one_by_one(FakeAis(dict(TREE)))
    fake = FakeAis(dict(TREE))
    ns, _ = make_ns(fake)
    assert await walk(ns, ns.root) == want
    assert fake.calls["probe"] > 2  # several, each from where the last one stopped
    one_by_one = {entry[2] for entry in fake.log if entry[:1] == ("page",) and entry[3] == "False"}
    assert len(one_by_one) < 1 + 1 + 5 + 15


async def test_a_recursive_listing_stops_inside_a_big_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aisfs.listings.FIRST_PAGE_SIZE", 10)
    monkeypatch.setattr("aisfs.subtree.SCAN_FIRST_PAGE", 10)
    tree = {"t/d0/s0/f": 1, "t/d0/s1/f": 1, "t/d1/s0/f": 1, "t/d1/s1/f": 1, "t/d3/s0/f": 1}
    tree |= {f"t/d2/big/{i:02}": 1 for i in range(50)}
    want = await walk_one_by_one(FakeAis(dict(tree)))
    fake = FakeAis(dict(tree))
    fake.max_page = 10
    ns, _ = make_ns(fake)
    assert await walk(ns, ns.root) == want
    # From d0/s1 (1 page), from d1 (2 pages: the second one all inside d2/big/), from d2 (1 page,
    # inside d2/big/ again: then d2 is listed by pages of its own), from d3 (1). Without
    # stopping, the one from d1 would have read all of d2/big/ (7 pages in all).
    assert fake.calls["probe"] == 5


# ---------------------------------------------------------------------- lookups by name


BIG = {f"d/{i:04}": 1 for i in range(1500)}  # bigger than a lookup's first page


async def cold_lookups(ns: Namespace, names: list[str]) -> Inode:
    d, _ = await ns.lookup(ns.root, "d")
    for name in names:
        await ns.lookup(d, name)
    await trio.testing.wait_all_tasks_blocked()  # the background listing, if any
    return d


async def test_lookups_by_name_in_a_big_directory_get_it_listed() -> None:
    fake = FakeAis(dict(BIG))
    fake.later_pages_gate = gate = trio.Event()
    ns, _ = make_ns(fake)
    d = await cold_lookups(ns, ["0001", "0002", "0003"])
    assert fake.calls["head_object"] == 1 + 3  # d itself, then each name
    # From the third one on, d/ is listed: its first page is not all of it, so the third name
    # was asked by name meanwhile; the rest comes in the background.
    assert ("page", "b", "d/", "False", "1000") in fake.log[-4:]
    assert ns.listings.get(("b", "d/")) is None and ns.lookup_listings.background
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert isinstance(ns.listings.get(("b", "d/")), Listing)
    calls = fake.calls.copy()
    for name in ("0004", "1499"):
        _, st = await ns.lookup(d, name)
        assert st is not None and st.size == 1
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "nope")
    assert fake.calls == calls  # from the listing


async def test_lookups_by_name_in_a_small_directory_wait_for_its_listing() -> None:
    objects: dict[str, int | bytes] = {f"d/{i:04}": 1 for i in range(100)}
    fake = FakeAis(objects | {"d/sub/x": 1})
    ns, _ = make_ns(fake, neg=1.0)
    ns.dir_listings.first_pages.clear()
    d = ns.table.child(ns.root, "b", "d/", Kind.DIR)  # known, not looked up: d/ not listed
    for name in ("n1", "n2"):
        with pytest.raises(errors.NotFound):
            await ns.lookup(d, name)
    assert fake.calls == Counter({"head_object": 2, "list": 2})  # each asked by name
    fake.calls.clear()
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "n3")  # lists d/ (one page) and waits for it
    _, st = await ns.lookup(d, "0042")
    assert st is not None and st.size == 1
    sub, _ = await ns.lookup(d, "sub")
    assert sub.is_dir
    for i in range(4, 50):
        with pytest.raises(errors.NotFound):
            await ns.lookup(d, f"n{i}")
    assert fake.calls == Counter({"list": 1})


async def test_two_lookups_by_name_do_not_list_and_a_huge_directory_is_not_listed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeAis(dict(BIG))
    ns, _ = make_ns(fake)
    await cold_lookups(ns, ["0001", "0002"])
    assert ns.listings.get(("b", "d/")) is None
    monkeypatch.setattr("aisfs.lookup_listings.LOOKUP_LISTING_LIMIT", 1000)
    await cold_lookups(ns, ["0003"])
    assert ns.listings.get(("b", "d/")) is None  # 1,500 names: more than the limit
    assert not ns.lookup_listings.background
    # It is not listed again for the next lookups (a loader opening files by path in a huge
    # directory): each is asked by name, within the metadata TTL.
    fake.log.clear()
    await cold_lookups(ns, [f"{i:04}" for i in range(4, 40)])
    assert ("page", "b", "d/", "False", "1000") not in fake.log
    assert fake.calls["list_all"] == 0


async def test_a_listing_for_lookups_made_during_changes_is_cached_with_them() -> None:
    fake = FakeAis(dict(BIG))
    fake.later_pages_gate = gate = trio.Event()
    ns, _ = make_ns(fake)
    d = await cold_lookups(ns, ["0001", "0002", "0003"])
    assert set(ns.lookup_listings.background) == {("b", "d/")}
    # Meanwhile, through the mount: one file written (the listing may or may not have it),
    # one removed, and a file written in another directory.
    ns.note_written("b", "d/new", 5, 1, "7")
    await ns.remove_file(d, "0004", pending=False)
    ns.note_written("b", "elsewhere", 1, 1, "1")
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not ns.lookup_listings.background  # done
    cached = ns.listings.get(("b", "d/"))
    assert isinstance(cached, Listing)
    assert cached.by_name["new"].stat == Stat(5, 1, "7") and "0004" not in cached.by_name
    assert len(cached.children) == 1500
    calls = fake.calls.copy()
    _, st = await ns.lookup(d, "new")
    assert st == Stat(5, 1, "7")
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "0004")
    assert fake.calls == calls  # from the listing


async def test_a_listing_for_lookups_is_not_cached_when_the_directory_was_dropped_meanwhile(
) -> None:
    fake = FakeAis(dict(BIG))
    fake.later_pages_gate = gate = trio.Event()
    ns, _ = make_ns(fake)
    await cold_lookups(ns, ["0001", "0002", "0003"])
    assert ns.lookup_listings.background
    ns.invalidate("b", "d/0001")  # e.g. found changed by another client meanwhile
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert not ns.lookup_listings.background and not ns.dir_listings.watches
    assert ns.listings.get(("b", "d/")) is None


async def test_a_failed_listing_for_lookups_leaves_lookups_going_to_ais() -> None:
    fake = FakeAis(dict(BIG))
    fake.fail_later_pages = errors.Transient("connection reset", 0, "ais://b/d/")
    ns, _ = make_ns(fake)
    d = await cold_lookups(ns, ["0001", "0002", "0003"])
    assert not ns.lookup_listings.background and ns.listings.get(("b", "d/")) is None
    heads = fake.calls["head_object"]
    _, st = await ns.lookup(d, "0004")
    assert st is not None and fake.calls["head_object"] == heads + 1


# ---------------------------------------------------------------------- a directory being filled


async def filled_dir(fake: FakeAis, neg: float = 1.0) -> tuple[Namespace, Inode, FakeTimer]:
    """A namespace whose listing of d/ is cached and older than the negative TTL."""
    ns, timer = make_ns(fake, ttl=5.0, neg=neg)
    d, _ = await ns.lookup(ns.root, "d")
    assert isinstance(ns.listings.get(("b", "d/")), Listing)
    timer.now += 1.5
    fake.calls.clear()
    return ns, d, timer


async def test_names_missing_from_an_old_listing_are_answered_by_one_new_listing() -> None:
    fake = FakeAis({"d/a": 1})
    ns, d, timer = await filled_dir(fake)
    fake.held_pages[("d/", False)] = gate = trio.Event()
    missing: list[str] = []

    async def look(name: str) -> None:
        with pytest.raises(errors.NotFound):
            await ns.lookup(d, name)
        missing.append(name)

    async with trio.open_nursery() as nursery:
        for i in range(5):  # e.g. five writers
            nursery.start_soon(look, f"n{i}")
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls == Counter({"list": 1}) and not missing
        gate.set()
    assert len(missing) == 5 and fake.calls == Counter({"list": 1})
    for i in range(5, 50):  # within the negative TTL of the new listing: nothing asked
        with pytest.raises(errors.NotFound):
            await ns.lookup(d, f"n{i}")
    fake.store("d/elsewhere", 3)  # made by another client
    timer.now += 1.5
    _, st = await ns.lookup(d, "elsewhere")  # the next listing has it
    assert st is not None and st.size == 3
    assert fake.calls == Counter({"list": 2})


async def test_a_name_made_here_while_its_directory_is_listed_again_is_found() -> None:
    fake = FakeAis({"d/a": 1})
    ns, d, _ = await filled_dir(fake)
    fake.held_pages[("d/", False)] = gate = trio.Event()
    found: list[Stat | None] = []

    async def look() -> None:
        found.append((await ns.lookup(d, "new"))[1])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        await trio.testing.wait_all_tasks_blocked()
        fake.store("d/new", 5)
        ns.note_written("b", "d/new", 5, 1, "1")  # uploaded here while the listing ran
        gate.set()
    assert found == [Stat(5, 1, "1")]
    assert fake.calls == Counter({"list": 1})


async def test_a_bigger_directory_is_listed_again_in_the_background(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeAis({f"d/{i}": 1 for i in range(5)})
    ns, d, _ = await filled_dir(fake)
    monkeypatch.setattr("aisfs.listings.FIRST_PAGE_SIZE", 2)  # d/ is more than one page now
    fake.held_pages[("d/", False)] = gate = trio.Event()
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "new")  # not waiting for the listing: asked by name meanwhile
    assert fake.calls == Counter({"head_object": 1, "list": 2})  # new, new/ and d/'s first page
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    calls = fake.calls.copy()
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "newer")
    assert fake.calls == calls  # from the new listing


async def test_a_directory_too_big_to_list_for_lookups_is_not_listed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("aisfs.lookup_listings.LOOKUP_LISTING_LIMIT", 4)
    fake = FakeAis({f"d/{i}": 1 for i in range(5)})
    ns, d, _ = await filled_dir(fake)
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "new")
    await trio.testing.wait_all_tasks_blocked()
    assert fake.calls == Counter({"head_object": 1, "list": 1})


async def test_without_negative_ttl_a_directory_is_not_listed_again_for_lookups() -> None:
    fake = FakeAis({"d/a": 1})
    ns, d, _ = await filled_dir(fake, neg=0.0)
    for _ in range(2):
        with pytest.raises(errors.NotFound):
            await ns.lookup(d, "new")
    await trio.testing.wait_all_tasks_blocked()
    assert fake.calls == Counter({"head_object": 2, "list": 2})


async def test_a_failed_new_listing_leaves_the_lookup_asking_by_name() -> None:
    fake = FakeAis({"d/a": 1})
    ns, d, _ = await filled_dir(fake)
    fake.failed_pages[("d/", False)] = errors.Transient("connection reset", 0, "ais://b/d/")
    fake.store("d/new", 2)
    _, st = await ns.lookup(d, "new")
    assert st is not None and st.size == 2
    assert fake.calls == Counter({"head_object": 1, "list": 2})  # d/ (failed), then new/
    assert not ns.lookup_listings.background and not ns.dir_listings.watches


async def test_a_directory_being_filled_is_listed_again_before_its_listing_goes_stale() -> None:
    """From half the negative TTL on, a name missing from the listing is still answered by it,
    and the directory is listed again in the background: the lookups of a directory being
    filled never wait for a listing."""
    fake = FakeAis({"d/a": 1})
    ns, timer = make_ns(fake, ttl=5.0, neg=1.0)
    d, _ = await ns.lookup(ns.root, "d")
    fake.calls.clear()
    fake.held_pages[("d/", False)] = gate = trio.Event()
    for step in range(4):
        timer.now += 0.6  # past half the negative TTL of the newest listing
        with trio.move_on_after(5) as waited:
            with pytest.raises(errors.NotFound):
                await ns.lookup(d, f"n{step}")  # answered at once: the page is held
        assert not waited.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls == Counter({"list": step + 1})  # the next listing is on its way
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        cached = ns.listings.get(("b", "d/"))
        assert isinstance(cached, Listing) and cached.fetched_at == timer.now
        fake.held_pages[("d/", False)] = gate = trio.Event()
    with pytest.raises(errors.NotFound):
        await ns.lookup(d, "younger")  # less than half the negative TTL old: nothing asked
    assert fake.calls == Counter({"list": 4})

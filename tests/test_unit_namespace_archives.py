"""The namespace with ``--archives expand``, over the in-memory AIS (real tar shards): archives as
directories, names inside them, read-only rules, rename and rmdir of the archive itself."""

from __future__ import annotations

import errno

import pytest

from aisfs import errors
from aisfs.cache import Stat
from aisfs.inodes import Inode, Kind
from aisfs.namespace import Namespace

from .fakeais import STORED_NS, FakeAis
from .namespace_util import FakeTimer, list_dir, make_ns, names
from .shards import tar_of

SHARD = tar_of({"a.jpg": b"aaaa", "d/e/f.txt": b"ff", "d/g": b""})


def make_expanding(fake: FakeAis) -> tuple[Namespace, FakeTimer]:
    return make_ns(fake, expand_archives=True)


async def test_archive_is_a_directory_of_its_members() -> None:
    fake = FakeAis({"dir/s.tar": SHARD, "dir/x.txt": b"x", "dir/s.tar.md5": b"m"})
    ns, _ = make_expanding(fake)
    d, _ = await ns.lookup(ns.root, "dir")
    listed = await list_dir(ns, d)
    kinds = {c.name: ns.child_inodes(d)(c).kind for c in listed}
    assert kinds == {"s.tar": Kind.ARCHIVE, "x.txt": Kind.FILE, "s.tar.md5": Kind.FILE}
    archive, _ = await ns.lookup(d, "s.tar")
    assert archive.kind is Kind.ARCHIVE and archive.is_dir and archive.key == "dir/s.tar"
    assert names(await list_dir(ns, archive)) == [("a.jpg", False), ("d", True)]
    inner, st = await ns.lookup(archive, "d")
    assert inner.kind is Kind.MEMBER_DIR and st is None
    assert names(await list_dir(ns, inner)) == [("e", True), ("g", False)]
    e, _ = await ns.lookup(inner, "e")
    f, st = await ns.lookup(e, "f.txt")
    assert f.kind is Kind.MEMBER and not f.is_dir and f.in_archive
    assert st == Stat(2, STORED_NS, "1")
    assert f.archive_path == ("dir/s.tar", "d/e/f.txt")
    assert await ns.getattr(f) == st
    with pytest.raises(errors.NotFound):
        await ns.lookup(inner, "nope")
    # One archive listing served all of that.
    assert fake.calls["list_archive"] == 1


async def test_children_listed_are_the_looked_up_inodes() -> None:
    fake = FakeAis({"s.zip.tar": SHARD})
    ns, _ = make_expanding(fake)
    archive, _ = await ns.lookup(ns.root, "s.zip.tar")
    for child in await list_dir(ns, archive):
        looked_up, _ = await ns.lookup(archive, child.name)
        assert ns.child_inodes(archive)(child) is looked_up


async def test_without_the_option_an_archive_is_a_file() -> None:
    ns, _ = make_ns(FakeAis({"s.tar": SHARD}))
    inode, st = await ns.lookup(ns.root, "s.tar")
    assert inode.kind is Kind.FILE and st is not None and st.size == len(SHARD)


class OneFileWritten:
    """The open-files layer as the namespace sees it, with one file being written."""

    def __init__(self, inode: Inode) -> None:
        self.inode = inode

    def stat_of(self, inode: Inode) -> Stat | None:
        return Stat(10, 1) if inode is self.inode else None

    def showing(self) -> list[Inode]:
        return [self.inode]


async def test_a_file_being_written_is_not_expanded() -> None:
    ns, _ = make_expanding(FakeAis())
    being_written = ns.table.child(ns.root, "b", "new.tar", Kind.FILE)
    ns.written = OneFileWritten(being_written)
    inode, st = await ns.lookup(ns.root, "new.tar")
    assert inode is being_written and st == Stat(10, 1)


async def test_a_new_version_of_the_archive_is_listed_again() -> None:
    fake = FakeAis({"s.tar": SHARD})
    ns, timer = make_expanding(fake)
    archive, _ = await ns.lookup(ns.root, "s.tar")
    assert names(await list_dir(ns, archive)) == [("a.jpg", False), ("d", True)]
    fake.store("s.tar", tar_of({"only": b"1"}))
    assert names(await list_dir(ns, archive)) == [("a.jpg", False), ("d", True)]  # within TTL
    timer.now += 6
    assert names(await list_dir(ns, archive)) == [("only", False)]
    assert fake.calls["list_archive"] == 2


async def test_changes_inside_are_erofs() -> None:
    fake = FakeAis({"s.tar": SHARD})
    ns, _ = make_expanding(fake)
    archive, _ = await ns.lookup(ns.root, "s.tar")
    d, _ = await ns.lookup(archive, "d")
    member, _ = await ns.lookup(archive, "a.jpg")
    attempts = [
        ns.make_dir(archive, "x"), ns.make_dir(d, "x"), ns.remove_dir(archive, "d"),
        ns.remove_file(archive, "a.jpg", pending=False),
        ns.rename(archive, "a.jpg", archive, "b.jpg", 0),
        ns.rename(archive, "a.jpg", ns.root, "b.jpg", 0),
        ns.rename(ns.root, "s.tar", archive, "t.tar", 0),
        ns.set_custom(member, {"k": b"v"}), ns.remove_custom(member, "k"),
    ]
    for attempt in attempts:
        with pytest.raises(errors.PosixError) as info:
            await attempt
        assert info.value.errno == errno.EROFS
    assert fake.calls["delete_object"] == fake.calls["rename_object"] == 0
    assert fake.content("s.tar") == SHARD


async def test_rename_moves_the_archive_and_what_is_inside() -> None:
    fake = FakeAis({"s.tar": SHARD, "prefix.tar/x": b"o"})
    ns, _ = make_expanding(fake)
    archive, _ = await ns.lookup(ns.root, "s.tar")
    d, _ = await ns.lookup(archive, "d")
    await ns.rename(ns.root, "s.tar", ns.root, "t.tar", 0)
    assert ("b", "t.tar") in fake.objects and ("b", "s.tar") not in fake.objects
    assert archive.key == "t.tar" and d.archive_path == ("t.tar", "d/")
    assert names(await list_dir(ns, d)) == [("e", True), ("g", False)]
    with pytest.raises(errors.PosixError) as info:
        await ns.rename(ns.root, "t.tar", ns.root, "t.txt", 0)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(errors.PosixError) as info:
        await ns.rename(ns.root, "t.tar", ns.root, "prefix.tar", 0)  # a directory, not archive
    assert info.value.errno == errno.EISDIR


async def test_rmdir_of_the_archive_deletes_it() -> None:
    fake = FakeAis({"s.tar": SHARD})
    ns, _ = make_expanding(fake)
    await ns.remove_dir(ns.root, "s.tar")
    assert ("b", "s.tar") not in fake.objects
    with pytest.raises(errors.NotFound):
        await ns.lookup(ns.root, "s.tar")


"""aisfs/inodes.py: inode numbers, kernel lookup counts, forget, open handles, unlink, rename."""

from __future__ import annotations

import logging

import pytest

from aisfs.inodes import ROOT_INODE, InodeTable, Kind


@pytest.fixture
def table() -> InodeTable:
    return InodeTable(Kind.DIR, "b", "")


def test_root(table: InodeTable) -> None:
    root = table.get(ROOT_INODE)
    assert root is table.root
    assert root.ino == 1 and root.kind is Kind.DIR and root.is_dir
    assert root.path == ("b", "")
    assert root.lookups == 1
    assert len(table) == 1
    assert table.find("b", "") is root


def test_cluster_root_and_prefix_root() -> None:
    t = InodeTable(Kind.CLUSTER)
    assert t.root.kind is Kind.CLUSTER and t.root.path == ("", "")
    t2 = InodeTable(Kind.DIR, "b", "p/q/")
    assert t2.root.path == ("b", "p/q/")
    f = t2.child(t2.root, "b", t2.root.child_key("x", False), Kind.FILE)
    assert f.key == "p/q/x"
    d = t2.child(t2.root, "b", t2.root.child_key("d", True), Kind.DIR)
    assert d.key == "p/q/d/"


def test_child_is_stable_per_path(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    again = table.child(table.root, "b", "a", Kind.FILE)
    assert again is a
    assert a.ino == 2 and a.parent == ROOT_INODE and a.lookups == 0 and a.opens == 0
    assert not a.is_dir
    d = table.child(table.root, "b", "d/", Kind.DIR)
    assert d.ino == 3 and d.is_dir
    assert table.find("b", "a") is a and table.find("b", "d/") is d
    assert table.find("b", "zz") is None


def test_numbers_never_reused(table: InodeTable) -> None:
    seen = set()
    for round_ in range(5):
        node = table.child(table.root, "b", "same", Kind.FILE)
        assert node.ino not in seen, f"round {round_} reused {node.ino}"
        seen.add(node.ino)
        table.add_lookup(node)
        table.forget(node.ino, 1)
        assert node.ino not in table.by_ino
        assert table.find("b", "same") is None
    assert len(seen) == 5
    assert ROOT_INODE not in seen


def test_lookup_counting_and_forget_to_zero(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a)
    table.add_lookup(a, 3)
    assert a.lookups == 4
    table.forget(a.ino, 1)
    assert a.lookups == 3 and table.get(a.ino) is a
    table.forget(a.ino, 2)
    assert a.lookups == 1 and table.find("b", "a") is a
    table.forget(a.ino, 1)
    assert a.lookups == 0
    with pytest.raises(KeyError):
        table.get(a.ino)
    assert table.find("b", "a") is None
    assert len(table) == 1


def test_forget_more_than_held_is_clamped_and_logged(
    table: InodeTable, caplog: pytest.LogCaptureFixture
) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a, 2)
    with caplog.at_level(logging.WARNING, logger="aisfs.inodes"):
        table.forget(a.ino, 5)
    assert a.lookups == 0
    assert a.ino not in table.by_ino
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "exceeds lookup count" in warnings[0].getMessage()
    assert str(a.ino) in warnings[0].getMessage()


def test_forget_more_than_held_keeps_open_inode(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a, 1)
    a.opens = 1
    table.forget(a.ino, 3)
    assert a.lookups == 0  # clamped, never negative
    assert table.get(a.ino) is a


def test_forget_unknown_and_root_never_raise(table: InodeTable) -> None:
    table.forget(12345, 1)
    table.forget(ROOT_INODE, 10)
    assert table.root.lookups == 1
    assert table.get(ROOT_INODE) is table.root
    table.drop_if_unused(table.root)
    assert table.get(ROOT_INODE) is table.root


def test_open_inode_survives_forget_until_closed(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a)
    a.opens += 1
    table.forget(a.ino, 1)
    assert a.lookups == 0
    assert table.get(a.ino) is a
    assert table.find("b", "a") is a
    a.opens -= 1
    table.drop_if_unused(a)
    assert a.ino not in table.by_ino
    assert table.find("b", "a") is None


def test_drop_if_unused_keeps_looked_up_inode(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a)
    table.drop_if_unused(a)
    assert table.get(a.ino) is a
    b = table.child(table.root, "b", "bb", Kind.FILE)  # never looked up
    table.drop_if_unused(b)
    assert b.ino not in table.by_ino


def test_unlink_path_keeps_inode_until_forgotten(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.add_lookup(a)
    table.unlink_path("b", "a")
    assert table.find("b", "a") is None
    assert table.get(a.ino) is a  # the kernel still holds it
    new = table.child(table.root, "b", "a", Kind.FILE)
    assert new is not a and new.ino > a.ino
    table.add_lookup(new)
    table.forget(a.ino, 1)
    assert a.ino not in table.by_ino
    assert table.find("b", "a") is new  # forgetting the old one does not unmap the new path


def test_unlink_path_of_unreferenced_inode_drops_it(table: InodeTable) -> None:
    a = table.child(table.root, "b", "a", Kind.FILE)
    table.unlink_path("b", "a")
    assert a.ino not in table.by_ino
    table.unlink_path("b", "never-there")  # no error


def test_kind_change_creates_new_inode(table: InodeTable) -> None:
    f = table.child(table.root, "b", "x", Kind.FILE)
    table.add_lookup(f)
    d = table.child(table.root, "b", "x", Kind.DIR)
    assert d is not f and d.ino != f.ino and d.kind is Kind.DIR
    assert table.find("b", "x") is d
    assert table.get(f.ino) is f  # the old one lives on until forgotten
    table.forget(f.ino, 1)
    assert f.ino not in table.by_ino
    assert table.find("b", "x") is d


def test_move(table: InodeTable) -> None:
    d = table.child(table.root, "b", "d/", Kind.DIR)
    table.add_lookup(d)
    src = table.child(table.root, "b", "src", Kind.FILE)
    table.add_lookup(src)
    victim = table.child(d, "b", "d/dst", Kind.FILE)
    table.add_lookup(victim)
    table.move(src, d, "d/dst")
    assert src.key == "d/dst" and src.parent == d.ino
    assert table.find("b", "d/dst") is src
    assert table.find("b", "src") is None
    assert table.get(victim.ino) is victim  # unlinked, but still referenced by the kernel
    table.forget(victim.ino, 1)
    assert victim.ino not in table.by_ino
    assert table.find("b", "d/dst") is src
    table.forget(src.ino, 1)
    assert table.find("b", "d/dst") is None


def test_move_onto_unreferenced_target_drops_it(table: InodeTable) -> None:
    src = table.child(table.root, "b", "s", Kind.FILE)
    table.add_lookup(src)
    old = table.child(table.root, "b", "t", Kind.FILE)
    table.move(src, table.root, "t")
    assert old.ino not in table.by_ino
    assert table.find("b", "t") is src
    assert src.ino in table.by_ino


def test_inode_repr_and_child_key(table: InodeTable) -> None:
    d = table.child(table.root, "b", "dir/", Kind.DIR)
    assert d.child_key("f", False) == "dir/f"
    assert d.child_key("sub", True) == "dir/sub/"
    assert repr(d) == f"<Inode {d.ino} dir ais://b/dir/>"

"""aisfs/archives.py: archive names, and AIS's member listing turned into a tree (no cluster)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from aisfs import errors
from aisfs.archives import ArchiveContents, Member, MemberDir, contents_from_listing, is_archive

ATIME = "2026-12-06T07:19:35.911735349Z"
ATIME_NS = 1796541575_911735349


def listing(key: str, members: list[tuple[str, int]], *, readable: bool = True,
            extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Entries as AIS v1.5.0 sends them for a listing with the archive-directory flag (seen on
    the cluster: sizes as strings, no size key for 0, members without time or version)."""
    own: dict[str, Any] = {"name": key, "atime": ATIME, "version": "3", "size": "10240",
                           "flags": 576 if readable else 64}
    entries = [own]
    for name, size in members:
        entry: dict[str, Any] = {"name": f"{key}/{name}", "flags": 192}
        if size:
            entry["size"] = str(size)
        entries.append(entry)
    return entries + (extra or [])


def names(node: MemberDir) -> list[str]:
    return list(node.children)


@pytest.mark.parametrize("key", [
    "s.tar", "d/s.tgz", "s.tar.gz", "s.tar.lz4", "s.zip", "a.b/c.tar", ".tar",
])
def test_archive_names(key: str) -> None:
    assert is_archive(key)


@pytest.mark.parametrize("key", [
    "s.TAR", "s.Zip", "s.tar.bak", "s.gz", "s.lz4", "s.tar/", "star", "s.tarx", "s.7z", "",
])
def test_not_archive_names(key: str) -> None:
    assert not is_archive(key)


def test_members_become_a_tree_with_the_archive_times() -> None:
    c = contents_from_listing("b", "d/s.tar", listing("d/s.tar", [
        ("a.txt", 5), ("d/b.bin", 1024), ("d/e/empty", 0), ("z", 7),
    ]))
    assert (c.key, c.size, c.version, c.mtime_ns, c.readable) == (
        "d/s.tar", 10240, "3", ATIME_NS, True)
    assert c.members == 4
    assert names(c.root) == ["a.txt", "d", "z"]
    d = c.find("d")
    assert isinstance(d, MemberDir) and d.path == "d/" and names(d) == ["b.bin", "e"]
    assert c.find("d/e/empty") == Member("d/e/empty", 0)
    assert c.find("d/b.bin") == Member("d/b.bin", 1024)
    assert c.find("") is c.root
    assert c.find("nope") is None and c.find("a.txt/x") is None and c.find("d/x") is None


def test_entries_of_other_objects_are_ignored() -> None:
    # The prefix "s.tar" also lists "s.tar.gz" (and its members) and, on a cluster where both
    # exist, a plain object "s.tar/x" (no member flag).
    extra = [
        {"name": "s.tar.gz", "size": "9", "flags": 576},
        {"name": "s.tar.gz/in-gz", "size": "1", "flags": 192},
        {"name": "s.tar/plain", "size": "3", "flags": 64},
        {"name": "s.tar0", "size": "3", "flags": 64},
    ]
    c = contents_from_listing("b", "s.tar", listing("s.tar", [("m", 1)], extra=extra))
    assert names(c.root) == ["m"] and c.members == 1


def test_unreadable_archive_is_empty() -> None:
    c = contents_from_listing("b", "bad.tar", listing("bad.tar", [], readable=False))
    assert not c.readable and c.members == 0 and not c.root.children
    assert c.size == 10240 and c.version == "3"


def test_archive_not_listed_is_not_found() -> None:
    with pytest.raises(errors.NotFound) as info:
        contents_from_listing("b", "gone.tar", [{"name": "gone.tar.gz", "flags": 576}])
    assert "ais://b/gone.tar" in str(info.value)


def test_bad_names_skipped_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    long = "x" * 256
    members = [("caf\ufffd.txt", 6), ("ok", 1), (f"d/{long}", 2), ("sp ace/\ufffd.txt", 3),
               ("tab\tok", 4)]
    with caplog.at_level(logging.WARNING, logger="aisfs.archives"):
        c = contents_from_listing("b", "n.tar", listing("n.tar", members))
    assert names(c.root) == ["ok", "tab\tok"] and c.members == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "ais://b/n.tar" in text and "skipped 3 member name(s)" in text


def test_a_directory_wins_over_a_member_of_the_same_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="aisfs.archives"):
        c = contents_from_listing("b", "s.zip", listing("s.zip", [
            ("a", 1), ("a/b", 2), ("c/d", 3), ("c", 4),
        ]))
    assert isinstance(c.find("a"), MemberDir) and isinstance(c.find("c"), MemberDir)
    assert c.find("a/b") == Member("a/b", 2) and c.find("c/d") == Member("c/d", 3)
    assert c.members == 2
    assert "skipped 2 member name(s)" in caplog.text


def test_a_name_listed_twice_is_shown_once() -> None:
    c = contents_from_listing("b", "s.tar", listing("s.tar", [("dup", 5), ("dup", 6), ("x", 1)]))
    assert names(c.root) == ["dup", "x"] and c.members == 2
    assert c.find("dup") == Member("dup", 5)
    assert c.duplicates == {"dup"}


def test_ten_thousand_members() -> None:
    members = [(f"m/{i:06d}.bin", i) for i in range(10_001)]
    c = contents_from_listing("b", "many.tar", listing("many.tar", members))
    assert isinstance(c, ArchiveContents) and c.members == 10_001
    m = c.find("m")
    assert isinstance(m, MemberDir) and len(m.children) == 10_001
    assert c.find("m/010000.bin") == Member("m/010000.bin", 10_000)


async def test_fake_cluster_reads_archives_as_ais_does() -> None:
    # The in-memory AIS that unit tests of the layers use: same listing rules as the cluster.
    import io
    import tarfile

    from .fakeais import FakeAis

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("./dot", b"d"), ("a/b", b"bb"), ("z", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    fake = FakeAis({"s.tar": buf.getvalue(), "bad.tar": b"junk" * 200})
    c = await fake.list_archive("b", "s.tar")
    assert c.readable and c.members == 3 and c.find("dot") == Member("dot", 1)
    assert bytes(await fake.get_member("b", "s.tar", "a/b")) == b"bb"
    assert bytes(await fake.get_member_range("b", "s.tar", "a/b", 1, 1)) == b"b"
    with pytest.raises(errors.NotFound):
        await fake.get_member("b", "s.tar", "dot")  # listed cleaned, stored as "./dot"
    assert not (await fake.list_archive("b", "bad.tar")).readable
    with pytest.raises(errors.BadArchive):
        await fake.get_member("b", "bad.tar", "x")

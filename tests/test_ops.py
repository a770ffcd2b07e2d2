"""aisfs.fs.Operations called directly (no kernel) against the real local AIS cluster."""

from __future__ import annotations

import errno
import logging
import os
import stat
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from aisfs.aio import AsyncAis
from aisfs.client import AisClient
from aisfs.config import ClientConfig, MountConfig, parse_source
from aisfs.fs import Operations
from aisfs.inodes import ROOT_INODE
from aisfs.mount import build_operations, make_spawn

from .faultproxy import FaultProxy
from .util import RecordingObserver

# What aisfs logs at WARNING or above fails a test that did not declare it (tests/util.py).
pytestmark = pytest.mark.usefixtures("in_process_log_rule")

CTX = pyfuse3.RequestContext()
MIB = 1024 * 1024


class Collector:
    """Stands in for pyfuse3.readdir_reply: accepts ``limit`` entries, then refuses."""

    def __init__(self) -> None:
        self.limit = 1 << 30
        # name, st_ino, st_mode, next_id, st_size
        self.entries: list[tuple[str, int, int, int, int]] = []
        self.refused: list[str] = []

    def __call__(self, token: object, name: bytes, attr: pyfuse3.EntryAttributes,
                 next_id: int) -> bool:
        assert token == "TOKEN"
        if len(self.entries) >= self.limit:
            self.refused.append(os.fsdecode(name))
            return False
        self.entries.append((os.fsdecode(name), attr.st_ino, attr.st_mode, next_id, attr.st_size))
        return True

    def take(self) -> list[tuple[str, int, int, int, int]]:
        out, self.entries, self.refused = self.entries, [], []
        return out


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Collector:
    c = Collector()
    monkeypatch.setattr(pyfuse3, "readdir_reply", c)
    return c


@pytest.fixture
def opsf(ais_endpoint: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def make(source: str, endpoint: str = ais_endpoint, **kw: Any
                   ) -> AsyncIterator[Operations]:
        config = MountConfig(
            source=parse_source(source), mountpoint=str(tmp_path / "mnt"),
            client=ClientConfig(endpoint=endpoint, retries=1, retry_backoff=0.05),
            spill_dir=str(tmp_path / "spill"), **kw,
        )
        client = AisClient(config.client)
        try:
            async with trio.open_nursery() as nursery:
                ops = build_operations(config, AsyncAis(client), make_spawn(nursery))
                try:
                    yield ops
                finally:
                    await ops.shutdown()
                    nursery.cancel_scope.cancel()
        finally:
            client.close()

    return make


TREE = {
    "a.txt": b"hello a\n",
    "b/c.bin": os.urandom(3 * MIB + 17),
    "b/d.txt": b"d" * 1000,
    "e/f/g": b"g",
    "empty": b"",
    "m1": b"1", "m2": b"22", "m3": b"333", "m4": b"4444",
}
ROOT_NAMES = ["a.txt", "b", "e", "empty", "m1", "m2", "m3", "m4"]


async def lookup(ops: Operations, parent: int, name: str) -> pyfuse3.EntryAttributes:
    return await ops.lookup(parent, os.fsencode(name), CTX)


# ---------------------------------------------------------------------- lookup / getattr


async def test_lookup_and_getattr(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket(TREE)
    async with opsf(f"ais://{bucket.name}", metadata_ttl=3.0, file_mode=0o640,
                    dir_mode=0o750, uid=1234, gid=4321) as ops:
        a = await lookup(ops, ROOT_INODE, "a.txt")
        assert a.st_ino > ROOT_INODE
        assert a.st_size == len(TREE["a.txt"])
        assert stat.S_ISREG(a.st_mode) and a.st_mode & 0o7777 == 0o640
        assert (a.st_uid, a.st_gid) == (1234, 4321)
        assert a.entry_timeout == 3.0 and a.attr_timeout == 3.0
        assert a.st_blocks == 1
        assert ops.table.get(a.st_ino).lookups == 1
        again = await lookup(ops, ROOT_INODE, "a.txt")
        assert again.st_ino == a.st_ino
        assert ops.table.get(a.st_ino).lookups == 2
        b = await lookup(ops, ROOT_INODE, "b")
        assert stat.S_ISDIR(b.st_mode) and b.st_mode & 0o7777 == 0o750
        c = await lookup(ops, b.st_ino, "c.bin")
        assert c.st_size == len(TREE["b/c.bin"])
        assert c.st_blocks == (len(TREE["b/c.bin"]) + 511) // 512
        empty = await lookup(ops, ROOT_INODE, "empty")
        assert empty.st_size == 0 and stat.S_ISREG(empty.st_mode)
        g = await ops.getattr(c.st_ino, CTX)
        assert g.st_ino == c.st_ino and g.st_size == c.st_size
        assert stat.S_ISDIR((await ops.getattr(ROOT_INODE, CTX)).st_mode)
        assert ops.table.get(c.st_ino).lookups == 1  # getattr takes no reference
        dot = await lookup(ops, b.st_ino, ".")
        assert dot.st_ino == b.st_ino
        dotdot = await lookup(ops, b.st_ino, "..")
        assert dotdot.st_ino == ROOT_INODE


async def test_lookup_missing_negative_entry(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}", negative_metadata_ttl=2.0) as ops:
        before = len(ops.table)
        neg = await lookup(ops, ROOT_INODE, "nope")
        assert neg.st_ino == 0
        assert neg.entry_timeout == 2.0
        assert len(ops.table) == before


async def test_lookup_missing_enoent_without_negative_ttl(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}", negative_metadata_ttl=0.0) as ops:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await lookup(ops, ROOT_INODE, "nope")
        assert info.value.errno == errno.ENOENT
        with pytest.raises(pyfuse3.FUSEError) as info:
            await lookup(ops, ROOT_INODE, "n" * 300)
        assert info.value.errno == errno.ENAMETOOLONG


async def test_unknown_inode(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}") as ops:
        for call in (ops.getattr(999_999, CTX), lookup(ops, 999_999, "x"),
                     ops.opendir(999_999, CTX), ops.open(999_999, os.O_RDONLY, CTX)):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await call
            assert info.value.errno == errno.ENOENT


@pytest.mark.expect_log(r"WARNING aisfs\.inodes: forget\(\d+, 7\) exceeds lookup count 1")
async def test_forget(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}") as ops:
        x = await lookup(ops, ROOT_INODE, "x")
        await lookup(ops, ROOT_INODE, "x")
        await ops.forget([(x.st_ino, 1)])
        assert ops.table.get(x.st_ino).lookups == 1
        # Unknown inodes, the root, and counts above what is held: never an exception.
        await ops.forget([(987_654, 3), (ROOT_INODE, 5), (x.st_ino, 7)])
        assert x.st_ino not in ops.table.by_ino
        assert ops.table.get(ROOT_INODE) is ops.table.root
        x2 = await lookup(ops, ROOT_INODE, "x")
        assert x2.st_ino != x.st_ino  # inode numbers are never reused


@pytest.mark.expect_log(r"ERROR aisfs\.fs: unexpected error in lookup\(1, b'x'\); returning EIO")
async def test_unexpected_exception_becomes_eio(  # type: ignore[no-untyped-def]
    opsf, make_bucket, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}") as ops:

        async def broken(*args: object) -> None:
            raise RuntimeError("kaboom")

        monkeypatch.setattr(ops.ns, "lookup", broken)
        with caplog.at_level(logging.ERROR, logger="aisfs.fs"):
            with pytest.raises(pyfuse3.FUSEError) as info:
                await lookup(ops, ROOT_INODE, "x")
        assert info.value.errno == errno.EIO
        records = [r for r in caplog.records if r.name == "aisfs.fs" and r.exc_info]
        assert len(records) == 1
        assert "lookup" in records[0].getMessage()
        assert isinstance(records[0].exc_info[1], RuntimeError)  # type: ignore[index]
        assert "kaboom" in caplog.text and "Traceback" in caplog.text


async def test_statfs(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    async with opsf(f"ais://{bucket.name}") as ops:
        st = await ops.statfs(CTX)
        assert st.f_namemax == 255 and st.f_bavail > 0 and st.f_bsize > 0


# ---------------------------------------------------------------------- readdir


async def test_readdir_offsets_and_lookup_counts(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector: Collector
) -> None:
    bucket = make_bucket(TREE)
    async with opsf(f"ais://{bucket.name}", metadata_ttl=0.0) as ops:
        fh = await ops.opendir(ROOT_INODE, CTX)
        assert ops.table.root.opens == 1
        collector.limit = 3
        await ops.readdir(fh, 0, "TOKEN")
        first = collector.take()
        assert [e[0] for e in first] == ROOT_NAMES[:3]
        assert [e[3] for e in first] == [1, 2, 3]
        for name, ino, *_ in first:
            assert ops.table.get(ino).lookups == 1, name
        assert stat.S_ISDIR(first[1][2]) and stat.S_ISREG(first[0][2])
        # The refused 4th entry took no reference.
        refused = ops.table.find(bucket.name, "empty")
        assert refused is None or refused.lookups == 0
        # Resume where the kernel stopped.
        collector.limit = 1 << 30
        await ops.readdir(fh, 3, "TOKEN")
        rest = collector.take()
        assert [e[0] for e in rest] == ROOT_NAMES[3:]
        assert [e[3] for e in rest] == list(range(4, len(ROOT_NAMES) + 1))
        names = [e[0] for e in first + rest]
        assert names == ROOT_NAMES and len(set(names)) == len(names)
        inos = [e[1] for e in first + rest]
        assert len(set(inos)) == len(inos)
        for ino in inos:
            assert ops.table.get(ino).lookups == 1
        # A repeat of the last offset gives the same entries again.
        await ops.readdir(fh, 3, "TOKEN")
        assert [e[0] for e in collector.take()] == ROOT_NAMES[3:]
        # Past the end: nothing.
        await ops.readdir(fh, len(ROOT_NAMES), "TOKEN")
        assert collector.take() == []
        # Entries attributes match lookups.
        a = await lookup(ops, ROOT_INODE, "a.txt")
        assert a.st_ino == first[0][1]
        assert ops.table.get(a.st_ino).lookups == 2
        await ops.releasedir(fh)
        assert ops.table.root.opens == 0
        # Each entry's attributes are its own (readdir fills one object for all of them).
        for name, _ino, mode, _, size in first + rest:
            attr = await lookup(ops, ROOT_INODE, name)
            assert (attr.st_mode, attr.st_size) == (mode, size), name


async def test_readdir_snapshot_and_rewind(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector: Collector
) -> None:
    bucket = make_bucket({"k1": b"1", "k3": b"3", "k5": b"5"})
    async with opsf(f"ais://{bucket.name}", metadata_ttl=0.0) as ops:
        fh = await ops.opendir(ROOT_INODE, CTX)
        collector.limit = 1
        await ops.readdir(fh, 0, "TOKEN")
        assert [e[0] for e in collector.take()] == ["k1"]
        bucket.object("k2").get_writer().put_content(b"2")  # appears meanwhile
        collector.limit = 1 << 30
        await ops.readdir(fh, 1, "TOKEN")
        assert [e[0] for e in collector.take()] == ["k3", "k5"]  # offsets index the snapshot
        await ops.readdir(fh, 0, "TOKEN")  # rewinddir: a new listing
        again = collector.take()
        assert [e[0] for e in again] == ["k1", "k2", "k3", "k5"]
        assert [e[3] for e in again] == [1, 2, 3, 4]
        k1 = ops.table.find(bucket.name, "k1")
        assert k1 is not None and k1.lookups == 2
        await ops.releasedir(fh)


async def test_readdir_offsets_survive_deletes_made_meanwhile(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector: Collector
) -> None:
    names = [f"k{i}" for i in range(6)]
    bucket = make_bucket({n: b"x" for n in names})
    async with opsf(f"ais://{bucket.name}") as ops:
        fh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(fh, 0, "TOKEN")  # the listing is now cached
        collector.take()
        await ops.releasedir(fh)
        # `for e in scandir(d): unlink(e)` over several getdents calls: the deletes change the
        # cached listing, not the offsets of the open handle.
        fh = await ops.opendir(ROOT_INODE, CTX)
        collector.limit = 2
        await ops.readdir(fh, 0, "TOKEN")
        seen = [e[0] for e in collector.take()]
        for name in seen:
            await ops.unlink(ROOT_INODE, name.encode(), CTX)
        collector.limit = 1 << 30
        await ops.readdir(fh, 2, "TOKEN")
        seen += [e[0] for e in collector.take()]
        await ops.releasedir(fh)
        assert seen == names
        fh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(fh, 0, "TOKEN")
        assert [e[0] for e in collector.take()] == names[2:]
        await ops.releasedir(fh)


async def test_readdir_nested_and_prefix_mount(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector: Collector
) -> None:
    bucket = make_bucket(TREE)
    async with opsf(f"ais://{bucket.name}/b") as ops:
        fh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(fh, 0, "TOKEN")
        entries = collector.take()
        assert [e[0] for e in entries] == ["c.bin", "d.txt"]
        node = ops.table.get(entries[0][1])
        assert node.key == "b/c.bin"
        await ops.releasedir(fh)
        attr = await lookup(ops, ROOT_INODE, "d.txt")
        assert attr.st_size == 1000


async def test_readdir_cluster_root(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector: Collector
) -> None:
    b1 = make_bucket({"x": b"1"})
    b2 = make_bucket()
    async with opsf("ais://") as ops:
        fh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(fh, 0, "TOKEN")
        entries = {e[0]: e for e in collector.take()}
        assert b1.name in entries and b2.name in entries
        assert all(stat.S_ISDIR(e[2]) for e in entries.values())
        ino = entries[b1.name][1]
        assert ops.table.get(ino).lookups == 1
        attr = await lookup(ops, ROOT_INODE, b1.name)
        assert attr.st_ino == ino
        x = await lookup(ops, ino, "x")
        assert x.st_size == 1
        await ops.releasedir(fh)


async def test_opendir_on_file_and_bad_handles(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"x": b"1"})
    async with opsf(f"ais://{bucket.name}") as ops:
        x = await lookup(ops, ROOT_INODE, "x")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.opendir(x.st_ino, CTX)
        assert info.value.errno == errno.ENOTDIR
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.readdir(12345, 0, "TOKEN")
        assert info.value.errno == errno.EBADF
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.read(12345, 0, 10)
        assert info.value.errno == errno.EBADF


# ---------------------------------------------------------------------- open / read / release


async def test_write_only_handles_bypass_the_page_cache(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"a.txt": b"hello"})
    async with opsf(f"ais://{bucket.name}") as ops:
        a = await lookup(ops, ROOT_INODE, "a.txt")
        for flags, direct in ((os.O_WRONLY, True), (os.O_RDWR, False), (os.O_RDONLY, False)):
            fi = await ops.open(a.st_ino, flags, CTX)
            assert fi.direct_io is direct, flags
            await ops.release(fi.fh)
        for flags, direct in ((os.O_WRONLY, True), (os.O_RDWR, False)):
            fi, _ = await ops.create(ROOT_INODE, f"new{flags}".encode(), 0o644, flags, CTX)
            assert fi.direct_io is direct, flags
            await ops.release(fi.fh)


async def test_a_file_created_read_write_is_one_put_and_reads_back_without_a_head(  # type: ignore[no-untyped-def]
    opsf, make_bucket
) -> None:
    """open("wb+"): the upload at flush is one PUT, whose answer (size, version) is what the
    handle's reader and the file's attributes need: no HEAD after it, even in a directory whose
    listing is not cached."""
    bucket = make_bucket()
    async with opsf(f"ais://{bucket.name}") as ops:
        assert isinstance(ops.files.aio, AsyncAis)
        ops.files.aio.client.transport.observer = seen = RecordingObserver()
        fi, attr = await ops.create(ROOT_INODE, b"r.out", 0o644, os.O_RDWR, CTX)
        await ops.write(fi.fh, 0, b"result")
        await ops.flush(fi.fh)
        assert seen.requests == ["put_object"]
        assert await ops.read(fi.fh, 0, 100) == b"result"
        assert (await ops.getattr(attr.st_ino, CTX)).st_size == 6
        await ops.release(fi.fh)
        assert "head_object" not in seen.requests
        assert bucket.object("r.out").get_reader().read_all() == b"result"


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/doomed: write failed")
async def test_a_handle_whose_upload_failed_does_not_fail_the_next_open(  # type: ignore[no-untyped-def]
    opsf, make_bucket, ais_endpoint,
) -> None:
    """The kernel may send a handle's release after the next open of its name (or the daemon
    handle both at once): a handle whose upload failed, its close told so, fails neither that
    open nor its upload."""
    bucket = make_bucket()
    fault = FaultProxy(ais_endpoint)
    try:
        async with opsf(f"ais://{bucket.name}", endpoint=fault.url) as ops:
            first, attr = await ops.create(ROOT_INODE, b"doomed", 0o644, os.O_WRONLY, CTX)
            await ops.write(first.fh, 0, b"first")
            fault.fail("PUT", "/doomed", "status", times=100, status=500)
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.flush(first.fh)
            assert info.value.errno == errno.EIO
            fault.clear()
            second = await ops.open(attr.st_ino, os.O_WRONLY | os.O_TRUNC, CTX)
            await ops.write(second.fh, 0, b"second")
            await ops.flush(second.fh)
            await ops.release(second.fh)
            with pytest.raises(pyfuse3.FUSEError):
                await ops.release(first.fh)  # (the kernel ignores what a release answers)
    finally:
        fault.close()
    assert bucket.object("doomed").get_reader().read_all() == b"second"


class RecordingKernel:
    """Stands in for the kernel's attribute cache: which inodes were told to drop theirs."""

    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def forget_attrs(self, ino: int) -> None:
        self.forgotten.append(ino)


async def test_the_kernel_drops_a_files_attributes_after_its_upload_only_when_it_got_them_since_the_last_write(  # type: ignore[no-untyped-def]  # noqa: E501
    opsf, make_bucket, collector
) -> None:
    """A write through a write-only handle makes the kernel drop the file's cached size and
    mtime by itself; only attributes given out after the last write (or with no write at all)
    can be stale once the upload stored its mtime: cp, tar and a job's results need no kernel
    notification (a round trip through a worker thread per file)."""
    bucket = make_bucket()
    async with opsf(f"ais://{bucket.name}") as ops:
        ops.files.kernel = kernel = RecordingKernel()

        async def new_file(name: bytes, flags: int = os.O_WRONLY) -> tuple[int, int]:
            fi, attr = await ops.create(ROOT_INODE, name, 0o644, flags, CTX)
            return fi.fh, attr.st_ino

        fh, ino = await new_file(b"cp")  # created, written, closed
        await ops.write(fh, 0, b"x" * 4096)
        await ops.flush(fh)
        await ops.release(fh)
        assert kernel.forgotten == []
        shown = []
        fh, ino = await new_file(b"fstat")  # stat after the last write: shown before upload
        await ops.write(fh, 0, b"y")
        await ops.getattr(ino, CTX)
        await ops.flush(fh)
        await ops.release(fh)
        shown.append(ino)
        fh, ino = await new_file(b"touch")  # no write: the kernel keeps what create gave it
        await ops.flush(fh)
        await ops.release(fh)
        shown.append(ino)
        fh, ino = await new_file(b"rw", os.O_RDWR)  # its writes may come from mmap
        await ops.write(fh, 0, b"z")
        await ops.flush(fh)
        await ops.release(fh)
        shown.append(ino)
        fh, ino = await new_file(b"listed")  # a listing shows it after the last write
        await ops.write(fh, 0, b"w")
        dh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(dh, 0, "TOKEN")
        await ops.releasedir(dh)
        await ops.flush(fh)
        await ops.release(fh)
        shown.append(ino)
        assert kernel.forgotten == shown


async def test_a_write_during_a_flush_waits_for_it(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    """A small write at the end skips the writer's lock (and so trio's scheduler), but not
    while a flush holds it: the flush's upload would otherwise drop bytes that arrive during it."""
    bucket = make_bucket()
    async with opsf(f"ais://{bucket.name}") as ops:
        fi, _ = await ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY, CTX)
        with trio.testing.assert_no_checkpoints():
            await ops.write(fi.fh, 0, b"a" * 100)
        writer = ops.files.file(fi.fh).writer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ops.flush, fi.fh)
            await trio.testing.wait_all_tasks_blocked()
            assert writer.lock.locked()  # the flush is waiting for AIS
            await ops.write(fi.fh, 100, b"b" * 50)
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
    assert bucket.object("f").get_reader().read_all() == b"a" * 100 + b"b" * 50


@pytest.mark.parametrize("budget,parts", [(64 * MIB, [1, 2, 4]), (2 * MIB, [1, 2]), (0, [1])])
async def test_write_parts_grow_within_the_budget(  # type: ignore[no-untyped-def]
    opsf, make_bucket, budget: int, parts: list[int]
) -> None:
    bucket = make_bucket()
    data = os.urandom(12 * MIB + 5)
    async with opsf(f"ais://{bucket.name}", write_part_size=MIB, write_part_max=4 * MIB,
                    write_buffer_budget=budget) as ops:
        fi, _ = await ops.create(ROOT_INODE, b"big", 0o644, os.O_WRONLY, CTX)
        writer = ops.files.file(fi.fh).writer
        seen: list[int] = []
        for off in range(0, len(data), MIB):
            if not seen or writer.part != seen[-1] * MIB:
                seen.append(writer.part // MIB)
            await ops.write(fi.fh, off, data[off:off + MIB])
        assert seen == parts
        assert ops.files.write_budget.used <= budget
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        assert ops.files.write_budget.used == 0  # released with the handle
    assert bucket.object("big").get_reader().read_all() == data


async def test_a_writer_that_turns_staged_gives_its_grown_parts_back(  # type: ignore[no-untyped-def]
    opsf, make_bucket
) -> None:
    bucket = make_bucket()
    data = bytearray(os.urandom(6 * MIB))
    async with opsf(f"ais://{bucket.name}", write_part_size=MIB, write_part_max=4 * MIB,
                    write_buffer_budget=64 * MIB) as ops:
        fi, _ = await ops.create(ROOT_INODE, b"f", 0o644, os.O_RDWR, CTX)
        for off in range(0, len(data), MIB):
            await ops.write(fi.fh, off, bytes(data[off:off + MIB]))
        assert ops.files.write_budget.used > 0  # parts grew
        await ops.write(fi.fh, 10, b"patched")  # not at the end: staged from now on
        data[10:17] = b"patched"
        assert ops.files.write_budget.used == 0
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
    assert bucket.object("f").get_reader().read_all() == bytes(data)


@pytest.mark.parametrize("made_here", [True, False])
async def test_stream_over_an_empty_object_replaces_it_in_one_upload(  # type: ignore[no-untyped-def]
    opsf, make_bucket, made_here: bool
) -> None:
    """dd's pattern (its first close() makes the empty object, then it writes) and a write to
    an existing empty object: one multipart upload of the name itself (no temporary object, no
    rename, no append), its xattrs kept."""
    bucket = make_bucket({} if made_here else {"dd.bin": b""})
    data = os.urandom(3 * MIB + 7)
    async with opsf(f"ais://{bucket.name}", write_part_size=MIB, write_part_max=MIB) as ops:
        assert isinstance(ops.files.aio, AsyncAis)
        ops.files.aio.client.transport.observer = seen = RecordingObserver()
        kinds = seen.requests
        if made_here:
            fi, attr = await ops.create(ROOT_INODE, b"dd.bin", 0o644, os.O_WRONLY, CTX)
            await ops.flush(fi.fh)  # close() of the first descriptor: the object exists now
            assert bucket.object("dd.bin").head().size == 0
            ino = attr.st_ino
        else:
            ino = (await lookup(ops, ROOT_INODE, "dd.bin")).st_ino
            fi = await ops.open(ino, os.O_WRONLY | os.O_APPEND, CTX)
        await ops.setxattr(ino, b"user.k", b"v", CTX)
        for off in range(0, len(data), MIB):
            await ops.write(fi.fh, off, data[off:off + MIB])
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        assert kinds.count("complete_upload") == 1 and kinds.count("put_part") == 4, kinds
        assert not {"rename_object", "append", "flush"} & set(kinds), kinds
    obj = bucket.object("dd.bin")
    assert obj.get_reader().read_all() == data
    assert obj.props.custom_metadata.get("k") == "v"
    assert [e.name for e in bucket.list_all_objects()] == ["dd.bin"]


async def test_open_read_release(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket(TREE)
    data = TREE["b/c.bin"]
    async with opsf(f"ais://{bucket.name}") as ops:
        b = await lookup(ops, ROOT_INODE, "b")
        c = await lookup(ops, b.st_ino, "c.bin")
        fi = await ops.open(c.st_ino, os.O_RDONLY, CTX)
        node = ops.table.get(c.st_ino)
        assert node.opens == 1
        got = bytearray()
        off = 0
        while True:
            chunk = bytes(await ops.read(fi.fh, off, 128 * 1024))
            if not chunk:
                break
            got += chunk
            off += len(chunk)
        assert bytes(got) == data
        assert bytes(await ops.read(fi.fh, len(data), 4096)) == b""
        assert bytes(await ops.read(fi.fh, 1_000_000, 10)) == data[1_000_000:1_000_010]
        await ops.forget([(c.st_ino, 1)])
        assert ops.table.get(c.st_ino) is node  # still open
        await ops.release(fi.fh)
        assert c.st_ino not in ops.table.by_ino
        assert ops.files.read_budget.used == 0
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.read(fi.fh, 0, 10)
        assert info.value.errno == errno.EBADF


async def test_a_small_file_is_fetched_whole_at_open(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    """An open for reading of a file that fits in the first read's fetch starts that GET: the
    first READ finds its bytes on their way. A bigger file, a file whose pages the kernel keeps
    and a write-only open fetch nothing at open; an open closed unread leaves nothing held."""
    small, big = os.urandom(200_000), os.urandom(3 * MIB)
    bucket = make_bucket({"small": small, "big": big, "unread": b"u" * 1000})
    async with opsf(f"ais://{bucket.name}", read_ahead_initial=1 * MIB) as ops:
        assert isinstance(ops.files.aio, AsyncAis)
        ops.files.aio.client.transport.observer = seen = RecordingObserver()
        s = await lookup(ops, ROOT_INODE, "small")
        b = await lookup(ops, ROOT_INODE, "big")
        u = await lookup(ops, ROOT_INODE, "unread")
        seen.requests.clear()

        fi = await ops.open(s.st_ino, os.O_RDONLY, CTX)
        with trio.fail_after(10):
            while seen.requests != ["get_range"]:
                await trio.sleep(0.01)
        assert bytes(await ops.read(fi.fh, 0, 128 * 1024)) == small[: 128 * 1024]
        assert bytes(await ops.read(fi.fh, 128 * 1024, 128 * 1024)) == small[128 * 1024 :]
        assert seen.requests == ["get_range"]
        await ops.release(fi.fh)

        kept = await ops.open(s.st_ino, os.O_RDONLY, CTX)  # the same version: pages kept
        assert kept.keep_cache is True
        wo = await ops.open(u.st_ino, os.O_WRONLY, CTX)
        fb = await ops.open(b.st_ino, os.O_RDONLY, CTX)
        await trio.sleep(0.2)
        assert seen.requests == ["get_range"]
        for h in (kept, wo, fb):
            await ops.release(h.fh)

        fu = await ops.open(u.st_ino, os.O_RDONLY, CTX)
        await ops.release(fu.fh)
        assert ops.files.read_budget.used == 0
        assert bucket.object("unread").get_reader().read_all() == b"u" * 1000


async def test_open_empty_and_directory(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket(TREE)
    async with opsf(f"ais://{bucket.name}") as ops:
        e = await lookup(ops, ROOT_INODE, "empty")
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 4096)) == b""
        await ops.release(fi.fh)
        b = await lookup(ops, ROOT_INODE, "b")
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(b.st_ino, os.O_RDONLY, CTX)
        assert info.value.errno == errno.EISDIR


async def test_keep_cache_only_for_same_version(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"v": b"version one"})
    async with opsf(f"ais://{bucket.name}", metadata_ttl=0.0) as ops:
        v = await lookup(ops, ROOT_INODE, "v")
        fi1 = await ops.open(v.st_ino, os.O_RDONLY, CTX)
        assert fi1.keep_cache is False
        await ops.release(fi1.fh)
        fi2 = await ops.open(v.st_ino, os.O_RDONLY, CTX)
        assert fi2.keep_cache is True
        await ops.release(fi2.fh)
        bucket.object("v").get_writer().put_content(b"version two!")
        fi3 = await ops.open(v.st_ino, os.O_RDONLY, CTX)
        assert fi3.keep_cache is False
        assert bytes(await ops.read(fi3.fh, 0, 100)) == b"version two!"
        await ops.release(fi3.fh)
        await ops.forget([(v.st_ino, 1)])


@pytest.mark.expect_log(r"WARNING aisfs\.reader: ais://[^ ]+/s changed while open \(version ")
async def test_object_replaced_while_open_is_estale(  # type: ignore[no-untyped-def]
    opsf, make_bucket, caplog
) -> None:
    old = os.urandom(4 * MIB)
    bucket = make_bucket({"s": old})
    async with opsf(f"ais://{bucket.name}") as ops:
        s = await lookup(ops, ROOT_INODE, "s")
        fi = await ops.open(s.st_ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 4096)) == old[:4096]
        bucket.object("s").get_writer().put_content(os.urandom(4 * MIB))
        for off in (3 * MIB, 2 * MIB, 3 * MIB):  # not fetched yet: a new GET sees version 2
            with pytest.raises(pyfuse3.FUSEError) as info:
                await ops.read(fi.fh, off, 4096)
            assert info.value.errno == errno.ESTALE
        # One warning for the handle, whatever the number of reads that fail.
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "/s changed while open" in warnings[0], warnings
        await ops.release(fi.fh)
        assert ops.files.read_budget.used == 0


async def test_concurrent_reads_through_ops(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(5 * MIB + 3)
    bucket = make_bucket({"big": data})
    async with opsf(f"ais://{bucket.name}", read_part_size=256 * 1024,
                    read_ahead_initial=256 * 1024) as ops:
        big = await lookup(ops, ROOT_INODE, "big")
        fi = await ops.open(big.st_ino, os.O_RDONLY, CTX)
        ranges = [(0, 700_000), (100_000, 300_000), (4 * MIB, 2 * MIB), (2 * MIB + 5, 1),
                  (3 * MIB, 600_000), (0, 4096), (1 * MIB, 1 * MIB)]
        results: dict[int, bytes] = {}

        async def one(i: int, off: int, size: int) -> None:
            results[i] = bytes(await ops.read(fi.fh, off, size))

        async with trio.open_nursery() as nursery:
            for i, (off, size) in enumerate(ranges):
                nursery.start_soon(one, i, off, size)
        for i, (off, size) in enumerate(ranges):
            assert results[i] == data[off : off + size], (off, size)
        await ops.release(fi.fh)
        assert ops.files.read_budget.used == 0


async def test_open_missing_object(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"gone": b"1"})
    async with opsf(f"ais://{bucket.name}", metadata_ttl=0.0) as ops:
        g = await lookup(ops, ROOT_INODE, "gone")
        bucket.object("gone").delete()
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(g.st_ino, os.O_RDONLY, CTX)
        assert info.value.errno == errno.ENOENT
        assert ops.table.get(g.st_ino).opens == 0


# ---------------------------------------------------------------------- files being written


def fields(*, size: bool = False, mtime: bool = False) -> pyfuse3.SetattrFields:
    """What setattr reads of pyfuse3's SetattrFields (whose flags cannot be set from Python)."""
    return types.SimpleNamespace(update_size=size, update_mtime=mtime)  # type: ignore[return-value]


async def test_a_truncate_through_a_handle_shows_at_once(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    """ftruncate of a file opened for writing without O_TRUNC: its size is the writer's from
    then on, not AIS's, until the upload (fstat after ftruncate showed the old size)."""
    bucket = make_bucket({"t": b"0123456789"})
    async with opsf(f"ais://{bucket.name}") as ops:
        t = await lookup(ops, ROOT_INODE, "t")
        fi = await ops.open(t.st_ino, os.O_WRONLY, CTX)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 4
        assert (await ops.setattr(t.st_ino, attr, fields(size=True), fi.fh, CTX)).st_size == 4
        assert (await ops.getattr(t.st_ino, CTX)).st_size == 4
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
        assert (await ops.getattr(t.st_ino, CTX)).st_size == 4
    assert bucket.object("t").get_reader().read_all() == b"0123"


async def test_an_unlinked_file_stays_gone_while_its_handle_writes(  # type: ignore[no-untyped-def]
    opsf, make_bucket, collector
) -> None:
    bucket = make_bucket({"u": b"old"})
    async with opsf(f"ais://{bucket.name}") as ops:
        u = await lookup(ops, ROOT_INODE, "u")
        fi = await ops.open(u.st_ino, os.O_WRONLY, CTX)
        await ops.unlink(ROOT_INODE, b"u", CTX)
        await ops.write(fi.fh, 3, b"more")  # goes nowhere
        assert (await lookup(ops, ROOT_INODE, "u")).st_ino == 0  # a negative entry
        assert (await ops.getattr(u.st_ino, CTX)).st_size == 7  # the open file lives on
        fh = await ops.opendir(ROOT_INODE, CTX)
        await ops.readdir(fh, 0, "TOKEN")
        await ops.releasedir(fh)
        assert collector.take() == []
        await ops.flush(fi.fh)
        await ops.release(fi.fh)
    assert [e.name for e in bucket.list_all_objects()] == []


async def test_a_new_file_under_an_unlinked_name_shows_after_the_old_handle_closes(  # type: ignore[no-untyped-def]
    opsf, make_bucket
) -> None:
    bucket = make_bucket()
    async with opsf(f"ais://{bucket.name}") as ops:
        old, _ = await ops.create(ROOT_INODE, b"r", 0o644, os.O_WRONLY, CTX)
        await ops.unlink(ROOT_INODE, b"r", CTX)
        new, _ = await ops.create(ROOT_INODE, b"r", 0o644, os.O_WRONLY, CTX)
        await ops.write(new.fh, 0, b"new")
        await ops.release(old.fh)  # the unlinked file's handle: it uploads nothing
        assert (await lookup(ops, ROOT_INODE, "r")).st_size == 3
        await ops.flush(new.fh)
        await ops.release(new.fh)
    assert bucket.object("r").get_reader().read_all() == b"new"


async def test_forgotten_inodes_take_their_page_cache_pins_along(opsf, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({f"p{i}": b"x" for i in range(5)})
    async with opsf(f"ais://{bucket.name}") as ops:
        for i in range(5):
            p = await lookup(ops, ROOT_INODE, f"p{i}")
            fi = await ops.open(p.st_ino, os.O_RDONLY, CTX)
            await ops.release(fi.fh)
            await ops.forget([(p.st_ino, 1)])
            assert p.st_ino not in ops.table.by_ino
        assert ops.files.pages._pins == {}

"""Directory scans on real mounts of the real cluster: a directory read in listing order is served
by Get-Batch requests (counted by the mount's metrics), every byte checked against what the
aistore SDK reads; objects deleted or replaced in the middle of a scan; random order; memory."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aistore.sdk.bucket import Bucket

from .service_util import free_port, metric, scrape

KIB = 1024


def fill(bucket: Bucket, objects: dict[str, bytes]) -> None:
    """PUT many objects through the SDK, a few at a time."""
    def put(item: tuple[str, bytes]) -> None:
        bucket.object(item[0]).get_writer().put_content(item[1])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, objects.items()))


def held_by_ais(bucket: Bucket, keys: list[str]) -> dict[str, bytes]:
    """What AIS holds under each name, read with the SDK."""
    def get(key: str) -> tuple[str, bytes]:
        return key, bucket.object(key).get_reader().read_all()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return dict(pool.map(get, keys))


def requests_of(port: int) -> dict[str, float]:
    samples = scrape(port)
    return {
        "get_batch": metric(samples, "aisfs_backend_requests_total", kind="get_batch"),
        "get_range": metric(samples, "aisfs_backend_requests_total", kind="get_range"),
        "scan_files": metric(samples, "aisfs_scan_files_total"),
        "scan_batches": metric(samples, "aisfs_scan_batches_total"),
        "peak": metric(samples, "aisfs_read_ahead_peak_bytes"),
        "fuse_reads": metric(samples, "aisfs_fuse_op_duration_seconds_count", op="read"),
        "stored": metric(samples, "aisfs_page_cache_stored_files_total"),
    }


def small_files(n: int, prefix: str, seed: int, low: int = 1, high: int = 24 * KIB
                ) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"{prefix}f{i:04}": rng.randbytes(rng.randint(low, high)) for i in range(n)}


@pytest.mark.parametrize("tool", ["cp", "tar"])
def test_a_directory_copied_in_listing_order_is_served_by_get_batch(  # type: ignore[no-untyped-def]
    tool: str, make_bucket: Callable[..., Bucket], mount, tmp_path: Path
) -> None:
    objects = small_files(400, "d/", seed=1)
    objects |= {"d/empty": b"", "d/big": os.urandom(3 * 1024 * KIB)}
    objects |= {f"d/sub/s{i}": os.urandom(5000) for i in range(6)}
    bucket = make_bucket()
    fill(bucket, objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metrics-addr", f"127.0.0.1:{port}")
    dest = tmp_path / "copy"
    if tool == "cp":
        subprocess.run(["cp", "-r", str(m.path / "d"), str(dest)], check=True, timeout=300)
    else:
        dest.mkdir()
        subprocess.run(f"tar -c -f - -C {m.path / 'd'} . | tar -x -f - -C {dest}", shell=True,
                       check=True, timeout=300)
    counts = requests_of(port)
    want = held_by_ais(bucket, list(objects))
    for key, data in want.items():
        assert (dest / key[2:]).read_bytes() == data, key
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(
        k[2:] for k in objects)
    # 401 small files; the first 3 of d/ and of d/sub are read one by one, as is the big one.
    assert counts["scan_files"] >= 395, counts
    assert 1 <= counts["get_batch"] <= 40, counts  # ten files a request or more
    assert counts["get_range"] <= 12, counts
    # A file's bytes go to the kernel's page cache as they arrive (how many before their open is
    # the machine's speed; the test of files changed after their batch came waits for the
    # stores and counts the READs they save).
    assert counts["stored"] > 0, counts


def scanning(make_bucket: Callable[..., Bucket], mount: Any, n: int, rng: random.Random
             ) -> tuple[Bucket, Any, int, list[str], dict[str, bytes]]:
    """``n`` files of 8 KiB in d/, a mount fetching 8 a batch (64 KiB), and the first 10 read in
    listing order: a scan is running. Returns (bucket, mount, metrics port, keys, contents)."""
    keys = [f"d/f{i:04}" for i in range(n)]
    old = {k: rng.randbytes(8 * KIB) for k in keys}
    bucket = make_bucket()
    fill(bucket, old)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "60", "--scan-batch", "64K",
              "--metrics-addr", f"127.0.0.1:{port}")
    assert sorted(os.listdir(m.path / "d")) == [k[2:] for k in keys]
    for key in keys[:10]:
        assert (m.path / key).read_bytes() == old[key]
    return bucket, m, port, keys, old


@pytest.mark.expect_log("changed while open")
def test_objects_deleted_or_replaced_in_the_middle_of_a_scan(  # type: ignore[no-untyped-def]
    make_bucket: Callable[..., Bucket], mount
) -> None:
    """8 KiB files, 8 per batch, 2 batches ahead (``DEPTH``): after 10 opens the files up to
    f0018 are fetched. Then some of those are changed (their bytes are already here) and some
    further on (their batch is sent after the change); the reader goes on in listing order.

    Guaranteed: a file's bytes are one whole version of it; those of a file whose batch was
    sent after the change are what AIS holds after it (new bytes, or ENOENT for that file
    only); a file whose size changed is never served from a batch (the usual reader: ESTALE,
    as for any file replaced while the listing is trusted). A file fetched before the change
    may show its bytes from then, for at most the metadata TTL (a Get-Batch reply carries no
    version to check)."""
    rng = random.Random(2)
    bucket, m, port, keys, old = scanning(make_bucket, mount, 200, rng)
    time.sleep(1)  # the batches arrive (AIS sends each one's tail ~100 ms late)
    new = {"d/f0014": rng.randbytes(8 * KIB), "d/f0100": rng.randbytes(8 * KIB),
           "d/f0101": rng.randbytes(3 * KIB)}
    for key, data in new.items():
        bucket.object(key).get_writer().put_content(data)
    for key in ("d/f0016", "d/f0102"):
        bucket.object(key).delete()
    for key in keys[10:]:
        try:
            got: bytes | OSError = (m.path / key).read_bytes()
        except OSError as exc:
            got = exc
        if key == "d/f0014":  # fetched before the change
            assert got in (old[key], new[key]), key
        elif key == "d/f0016":  # fetched before its deletion
            assert got == old[key] or (isinstance(got, OSError) and got.errno == errno.ENOENT)
        elif key == "d/f0100":  # same size, batch sent after the change
            assert got == new[key], key
        elif key == "d/f0101":  # another size: never the old bytes
            assert got == new[key] or (isinstance(got, OSError) and got.errno == errno.ESTALE), (
                key, got)
        elif key == "d/f0102":  # deleted before its batch: that file only
            assert isinstance(got, OSError) and got.errno == errno.ENOENT, (key, got)
        else:
            assert got == old[key], key
    unchanged = [k for k in keys if k not in new and k not in ("d/f0016", "d/f0102")]
    assert held_by_ais(bucket, unchanged) == {k: old[k] for k in unchanged}
    counts = requests_of(port)
    assert counts["scan_files"] >= 180, counts
    assert counts["get_range"] <= 6, counts  # the first 3, d/f0101, and little else


def test_random_order_makes_no_batches_and_listing_order_does(  # type: ignore[no-untyped-def]
    make_bucket: Callable[..., Bucket], mount
) -> None:
    objects = small_files(200, "shuffled/", seed=3) | small_files(200, "ordered/", seed=4)
    bucket = make_bucket()
    fill(bucket, objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metrics-addr", f"127.0.0.1:{port}")
    want = held_by_ais(bucket, list(objects))
    shuffled = random.Random(5).sample([k for k in objects if k.startswith("shuffled/")], 200)
    assert sorted(os.listdir(m.path / "shuffled")) == sorted(k[9:] for k in shuffled)
    for key in shuffled:
        assert (m.path / key).read_bytes() == want[key], key
    counts = requests_of(port)
    assert counts["get_batch"] == 0 and counts["get_range"] == 200, counts
    for name in sorted(os.listdir(m.path / "ordered")):
        assert (m.path / "ordered" / name).read_bytes() == want["ordered/" + name], name
    counts = requests_of(port)
    assert counts["get_batch"] >= 1 and counts["scan_files"] >= 195, counts


def test_a_scan_stays_within_the_read_ahead_budget(  # type: ignore[no-untyped-def]
    make_bucket: Callable[..., Bucket], mount, tmp_path: Path
) -> None:
    objects = {f"d/f{i:04}": os.urandom(16 * KIB) for i in range(300)}
    bucket = make_bucket()
    fill(bucket, objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--read-ahead-budget", "256K", "--scan-batch", "96K",
              "--metrics-addr", f"127.0.0.1:{port}")
    subprocess.run(["cp", "-r", str(m.path / "d"), str(tmp_path / "copy")], check=True,
                   timeout=300)
    counts = requests_of(port)
    for key, data in held_by_ais(bucket, list(objects)).items():
        assert (tmp_path / "copy" / key[2:]).read_bytes() == data, key
    # 4.8 MB in batches of 6 files, at most 256 KiB held at once (two batches, not the four
    # a scan keeps ahead when they fit; plus the file a read needs now, which is fetched
    # whatever the budget: the first ones, read one by one).
    assert counts["scan_files"] >= 290 and counts["scan_batches"] >= 45, counts
    assert counts["peak"] <= 256 * KIB + 16 * KIB, counts


def test_a_directory_copied_again_from_the_page_cache_is_not_fetched_again(  # type: ignore[no-untyped-def]
    make_bucket: Callable[..., Bucket], mount, tmp_path: Path
) -> None:
    objects = small_files(300, "d/", seed=6)
    bucket = make_bucket()
    fill(bucket, objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "60", "--metrics-addr",
              f"127.0.0.1:{port}")
    want = held_by_ais(bucket, list(objects))
    for copy in ("first", "second"):
        subprocess.run(["cp", "-r", str(m.path / "d"), str(tmp_path / copy)], check=True,
                       timeout=300)
        for key, data in want.items():
            assert (tmp_path / copy / key[2:]).read_bytes() == data, (copy, key)
        if copy == "first":
            first = requests_of(port)
            assert first["get_batch"] >= 1, first
    # The kernel still holds every file's pages (the objects did not change): no batch.
    again = requests_of(port)
    assert again["get_batch"] == first["get_batch"], (first, again)


def test_files_changed_through_the_mount_after_their_batch_came_read_as_changed(  # type: ignore[no-untyped-def]
    make_bucket: Callable[..., Bucket], mount
) -> None:
    """A batch's files are in the kernel's page cache before their open; a file rewritten,
    truncated or deleted through the mount after that is read as it is now, never from those
    pages (the mount unpins what it changed, and the kernel drops the pages a write-only handle
    writes over)."""
    rng = random.Random(3)
    bucket, m, port, keys, old = scanning(make_bucket, mount, 120, rng)
    # The two batches ahead (f0003 to f0018, see above) arrive and go into the page cache: wait
    # until at least the nine not opened yet (f0010 to f0018) were stored and no more come.
    deadline, seen, since = time.monotonic() + 30, -1.0, time.monotonic()
    while time.monotonic() < deadline:
        stored = requests_of(port)["stored"]
        if stored != seen:
            seen, since = stored, time.monotonic()
        elif stored >= 9 and time.monotonic() - since > 0.5:
            break
        time.sleep(0.05)
    # The same size, written in place through a write-only handle (which bypasses the page
    # cache): the size does not tell the kernel's pages from the new content.
    rewritten = rng.randbytes(8 * KIB)
    fd = os.open(m.path / "d/f0015", os.O_WRONLY)
    try:
        assert os.pwrite(fd, rewritten, 0) == len(rewritten)
    finally:
        os.close(fd)
    os.truncate(m.path / "d/f0017", 100)
    os.unlink(m.path / "d/f0013")
    for key in keys[10:40]:
        path = m.path / key
        if key == "d/f0015":
            assert path.read_bytes() == rewritten
        elif key == "d/f0017":
            assert path.read_bytes() == old[key][:100]
        elif key == "d/f0013":
            assert not path.exists()
        else:
            assert path.read_bytes() == old[key], key
    assert requests_of(port)["fuse_reads"] < 30  # the others came from the page cache
    # What AIS holds, through the SDK: the changes were made there, not only shown.
    assert held_by_ais(bucket, ["d/f0015", "d/f0017"]) == {
        "d/f0015": rewritten, "d/f0017": old["d/f0017"][:100]}
    assert "d/f0013" not in {e.name for e in bucket.list_all_objects(prefix="d/")}

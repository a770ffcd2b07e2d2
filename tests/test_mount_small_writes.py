"""Real mounts, many small files written: what each file costs AIS (from the mount's metrics), and
what AIS holds afterwards (through the aistore SDK).

A new file costs one PUT. The names a writer looks up before creating them (``cp`` stats each
destination, the kernel looks an O_EXCL name up again) are answered from the directory's listing,
fetched again at most twice per negative metadata TTL, not by a HEAD and a LIST each.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aistore.sdk.bucket import Bucket

from .service_util import free_port, metric, scrape
from .util import Mount

NEGATIVE_TTL = 0.5  # seconds a listing vouches for absent names (shorter than a copy)
REQUESTS = "aisfs_backend_requests_total"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=600)


def small_files(n: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"f{i:04}": rng.randbytes(rng.choice([0, 1, 100, 4096, 6000])) for i in range(n)}


class Requests:
    """HTTP requests the mount sent to AIS since it was made, by kind."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.start = scrape(port)

    def since(self) -> dict[str, float]:
        now = scrape(self.port)
        kinds = {labels for (name, labels) in now if name == REQUESTS}
        out: dict[str, float] = {}
        for labels in kinds:
            kind = dict(labels)["kind"]
            out[kind] = (metric(now, REQUESTS, kind=kind)
                         - metric(self.start, REQUESTS, kind=kind))
        return {k: v for k, v in out.items() if v}

    def settled(self) -> dict[str, float]:
        """``since()`` once no request has completed for 0.3 s (at most 10 s): a request is
        counted when its answer came, so one sent earlier (a background listing) may otherwise
        count after the caller's next step."""
        last = self.since()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.since()
            if now == last:
                break
            last = now
        return last


def counted_mount(mount: Callable[..., Mount], bucket: Bucket, *args: str
                  ) -> tuple[Mount, Requests]:
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metrics-addr", f"127.0.0.1:{port}",
              "--metadata-ttl", "60", "--negative-metadata-ttl", str(NEGATIVE_TTL), *args)
    return m, Requests(port)


def relists(elapsed: float) -> int:
    """The most listings a directory being filled gets in ``elapsed`` seconds: each vouches for
    absent names for the negative TTL, and the next one starts once it is half that old."""
    return int(elapsed / (NEGATIVE_TTL / 2)) + 1


def check_in_ais(bucket: Bucket, files: dict[str, bytes]) -> None:
    listed = {e.name for e in bucket.list_all_objects()}
    assert set(files) <= listed
    for key, data in files.items():
        assert bucket.object(key).get_reader().read_all() == data, key


@pytest.mark.parametrize("into", ["root", "new directory"])
def test_cp_r_of_small_files_costs_one_put_each(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path, into: str
) -> None:
    """cp -r of 300 small files into the bucket's root (an existing directory whose listing is
    not cached) or into a new directory: one PUT per file, no HEAD or LIST per new name; stat
    and ls afterwards are answered without asking AIS."""
    files = small_files(300, seed=len(into))
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    bucket = make_bucket({"old": b"was here"})
    m, requests = counted_mount(mount, bucket)
    started = time.monotonic()
    if into == "root":
        sh("cp", "-r", f"{src}/.", str(m.path))
        where, prefix = m.path, ""
    else:
        sh("cp", "-r", str(src), str(m.path / "newdir"))
        where, prefix = m.path / "newdir", "newdir/"
    elapsed = time.monotonic() - started
    copied = requests.settled()
    sent = dict(copied)
    # At most: the first two names asked by name (a HEAD and a LIST each), then one listing of
    # the directory for the rest, and a new one per negative TTL.
    assert sent.pop("put_object") == len(files), sent
    assert sent.pop("head_object", 0) <= 2, sent
    assert sent.pop("list_objects", 0) <= 2 + relists(elapsed), (sent, elapsed)
    assert not sent, f"unexpected requests: {sent}"
    # The copy's result, as this mount shows it: from what it wrote, not from AIS.
    for name, data in files.items():
        assert os.stat(where / name).st_size == len(data)
    assert set(os.listdir(where)) == set(files) | ({"old"} if into == "root" else set())
    assert requests.since() == copied
    check_in_ais(bucket, {prefix + name: data for name, data in files.items()})


def test_tar_x_of_small_files_costs_one_put_each(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path
) -> None:
    """tar x of 200 small files into 4 directories made a while before (their listings no longer
    vouch for absent names): one PUT per file."""
    files = {f"out/d{i % 4}/{name}": data
             for i, (name, data) in enumerate(small_files(200, seed=7).items())}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bucket = make_bucket()
    m, requests = counted_mount(mount, bucket)
    for i in range(4):
        (m.path / "out" / f"d{i}").mkdir(parents=True)
    time.sleep(NEGATIVE_TTL * 1.2)
    made = requests.settled()
    started = time.monotonic()
    sh("tar", "xf", str(archive), "-C", str(m.path))
    elapsed = time.monotonic() - started
    sent = requests.since()
    for kind, count in made.items():
        sent[kind] -= count
    assert sent.pop("put_object") == len(files), sent
    # Each directory listed again at most once per negative TTL; nothing asked by name.
    assert sent.pop("head_object", 0) == 0, sent
    assert sent.pop("list_objects", 0) <= 4 * relists(elapsed), (sent, elapsed)
    assert not {k: v for k, v in sent.items() if v}, f"unexpected requests: {sent}"
    check_in_ais(bucket, files)


def test_result_files_written_by_a_job_cost_one_put_each(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    """A job writing result files from 4 threads, some opened for reading too ("w+", "wb+"):
    one PUT per file and no HEAD after it (the PUT's answer gives what the file's reader and
    attributes need); each file reads back what was written, and stat shows its size."""
    files = {f"results/r{i:03}.out": f"result {i}\n".encode() * (i % 7) for i in range(120)}
    bucket = make_bucket()
    # (Reading the files back in name order may start a directory scan, whose Get-Batch is not
    # what this test counts: scans are tested in test_mount_scans.)
    m, requests = counted_mount(mount, bucket, "--scan-batch", "0")
    (m.path / "results").mkdir()
    time.sleep(NEGATIVE_TTL * 1.2)
    made = requests.settled()

    def write(key: str) -> None:
        mode = "wb+" if int(key[-7:-4]) % 2 else "wb"
        with open(m.path / key, mode) as f:
            f.write(files[key])
        assert os.stat(m.path / key).st_size == len(files[key])
        assert (m.path / key).read_bytes() == files[key]

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(write, files))
    elapsed = time.monotonic() - started
    sent = requests.since()
    for kind, count in made.items():
        sent[kind] -= count
    assert sent.pop("put_object") == len(files), sent
    assert sent.pop("head_object", 0) == 0, sent
    assert sent.pop("list_objects", 0) <= relists(elapsed), (sent, elapsed)
    # Reading a file back fetches it (empty files need no GET).
    assert sent.pop("get_range", 0) <= len(files), sent
    assert not {k: v for k, v in sent.items() if v}, f"unexpected requests: {sent}"
    check_in_ais(bucket, files)


def test_stat_after_close_shows_the_stored_mtime(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    """Right after close, a file's mtime is the one its upload stored, however the kernel got
    the file's attributes while it was written (the kernel is told to drop them only when it
    may hold some from after the last write)."""
    bucket = make_bucket()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "60")

    def cp_like(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"data")

    def fstat_after_write(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"data")
        f.flush()
        os.fstat(f.fileno())

    def no_write(f) -> None:  # type: ignore[no-untyped-def]
        pass

    def listed_after_write(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"data")
        f.flush()
        os.listdir(m.path)

    def truncated(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"data")
        f.flush()
        os.ftruncate(f.fileno(), 2)

    def utime(f) -> None:  # type: ignore[no-untyped-def]
        f.write(b"data")
        f.flush()
        os.utime(f.fileno(), ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))

    cases: list[tuple[Callable[..., None], str]] = [
        (cp_like, "wb"), (fstat_after_write, "wb"), (no_write, "wb"), (listed_after_write, "wb"),
        (truncated, "wb"), (utime, "wb"), (cp_like, "wb+"), (fstat_after_write, "wb+")]
    for n, (case, mode) in enumerate(cases):
        name = f"{case.__name__}-{n}"
        with open(m.path / name, mode) as f:
            case(f)
        stored = int(bucket.object(name).head("custom").custom_metadata["aisfs.mtime"])
        assert os.stat(m.path / name).st_mtime_ns == stored, (name, mode)
    assert int(bucket.object("utime-5").head("custom").custom_metadata["aisfs.mtime"]) == (
        1_600_000_000_123_456_789)

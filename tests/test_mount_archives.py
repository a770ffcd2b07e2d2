"""Real mounts with ``--archives expand``: shards (built here with tarfile, zipfile and lz4) shown
as read-only directories of their members; every check is against the bytes put into AIS."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import random
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .service_util import free_port, metric, scrape
from .shards import FORMATS, rename_local, shard, zip_of

KIB = 1024
MIB = 1024 * KIB
MEMBERS = {
    "000001.jpg": random.Random(1).randbytes(70 * KIB),
    "000001.cls": b"7\n",
    "sub/dir/deep.txt": b"deep" * 100,
    "sub/empty": b"",
    "sub/other.bin": random.Random(2).randbytes(3 * KIB + 5),
}
# With --read-part-size 1M: a member of several read-ahead parts.
LARGE = random.Random(3).randbytes(5 * MIB + 4321)



def tree_of(root: Path) -> tuple[set[str], set[str]]:
    """(directories, files) under ``root``, relative."""
    dirs, files = set(), set()
    for top, dnames, fnames in os.walk(root):
        rel = os.path.relpath(top, root)
        for d in dnames:
            dirs.add(os.path.normpath(os.path.join(rel, d)))
        for f in fnames:
            files.add(os.path.normpath(os.path.join(rel, f)))
    return dirs, files


@pytest.fixture
def shards(make_bucket):  # type: ignore[no-untyped-def]
    objects = {f"train/shard{ext}": shard(ext, MEMBERS) for ext in FORMATS}
    objects["train/big.tar"] = shard(".tar", {"large.bin": LARGE, "small": b"s"})
    objects["plain.txt"] = b"not an archive"
    return make_bucket(objects)


def expanded(mount, bucket, *args: str, name: str = "mnt"):  # type: ignore[no-untyped-def]
    return mount(f"ais://{bucket.name}", "--archives", "expand", "--metadata-ttl", "1", *args,
                 name=name)


@pytest.mark.parametrize("ext", FORMATS)
def test_members_byte_exact(shards, mount, ext: str) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards)
    root = m.path / "train" / f"shard{ext}"
    assert root.is_dir()
    dirs, files = tree_of(root)
    assert files == set(MEMBERS)
    assert dirs == {"sub", "sub/dir"}
    for name, data in MEMBERS.items():
        path = root / name
        assert path.stat().st_size == len(data), name
        assert path.read_bytes() == data, name
    assert sorted(os.listdir(root)) == ["000001.cls", "000001.jpg", "sub"]
    with open(root / "000001.jpg", "rb") as f:  # seek and read, as Python readers do
        f.seek(1000)
        assert f.read(5000) == MEMBERS["000001.jpg"][1000:6000]


def test_ls_l_and_the_bucket_view(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards)
    train = m.path / "train"
    entries = {e.name: e for e in os.scandir(train)}
    assert set(entries) == {f"shard{ext}" for ext in FORMATS} | {"big.tar"}
    assert all(e.is_dir() for e in entries.values())
    assert (m.path / "plain.txt").read_bytes() == b"not an archive"
    st = (train / "shard.tar" / "000001.jpg").stat()
    assert abs(st.st_mtime - time.time()) < 600  # the archive's time (AIS lists no member time)


def test_large_member_random_offsets(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards, "--read-part-size", "1M", "--read-ahead-max", "2M")
    path = m.path / "train" / "big.tar" / "large.bin"
    rng = random.Random(5)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(40):
            off = rng.randrange(len(LARGE))
            size = rng.choice([1, 4096, 100 * KIB, MIB + 17])
            assert os.pread(fd, size, off) == LARGE[off:off + size], (off, size)
    finally:
        os.close(fd)
    assert path.read_bytes() == LARGE


@pytest.mark.expect_log(r"WARNING aisfs\.archive_view: .*/bad/\S+: AIS cannot read it")
def test_unreadable_archives_are_empty_with_one_log_line(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    good = shard(".tar", {"a": random.Random(4).randbytes(20 * KIB), "b": b"b"})
    bucket = make_bucket({"bad/trunc.tar": good[:3000], "bad/garbage.tgz": b"no" * 500,
                          "bad/zip.tar": shard(".zip", {"a": b"a"}), "bad/ok.tar": good})
    m = expanded(mount, bucket)
    started = time.monotonic()
    for name in ("trunc.tar", "garbage.tgz", "zip.tar"):
        path = m.path / "bad" / name
        assert path.is_dir() and os.listdir(path) == [], name
        assert os.listdir(path) == []
        with pytest.raises(FileNotFoundError):
            (path / "a").read_bytes()
    assert sorted(os.listdir(m.path / "bad" / "ok.tar")) == ["a", "b"]
    assert time.monotonic() - started < 10
    log = m.log()
    for name in ("trunc.tar", "garbage.tgz", "zip.tar"):
        lines = [line for line in log.splitlines() if f"bad/{name}: AIS cannot read" in line]
        assert len(lines) == 1, (name, lines)


@pytest.mark.expect_log(r"WARNING aisfs\.\w+: .*/big\.tar/large\.bin: the archive changed while")
def test_archive_replaced_while_a_member_is_open(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards, "--read-part-size", "1M", "--read-ahead-max", "1M")
    path = m.path / "train" / "big.tar" / "large.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == LARGE[:4096]
        newer = random.Random(9).randbytes(len(LARGE))
        shards.object("train/big.tar").get_writer().put_content(
            shard(".tar", {"large.bin": newer, "small": b"s"}))
        time.sleep(1.5)  # past --metadata-ttl: the mount sees the new version
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 4 * MIB)
        assert info.value.errno == errno.ESTALE
    finally:
        os.close(fd)
    assert path.read_bytes() == newer  # a new open reads the new version
    assert "changed while the member was open" in m.log()


def test_ten_thousand_members_listed(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    names = {f"{i:05d}.cls": str(i).encode() for i in range(10_000)}
    bucket = make_bucket({"many.tar": shard(".tar", names)})
    m = expanded(mount, bucket)
    listed = os.listdir(m.path / "many.tar")
    assert sorted(listed) == sorted(names)
    assert (m.path / "many.tar" / "09999.cls").read_bytes() == b"9999"


def test_changes_inside_are_refused(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards)
    root = m.path / "train" / "shard.tar"
    member = root / "000001.cls"
    attempts: dict[str, Callable[[], object]] = {
        "create": lambda: (root / "new").write_bytes(b"x"),
        "mkdir": lambda: (root / "newdir").mkdir(),
        "unlink": lambda: member.unlink(),
        "rmdir": lambda: (root / "sub" / "dir").rmdir(),
        "rename": lambda: member.rename(root / "moved"),
        "rename out": lambda: member.rename(m.path / "moved"),
        "open for writing": lambda: open(member, "r+b").close(),
        "truncate": lambda: os.truncate(member, 0),
        "utime": lambda: os.utime(member, (0, 0)),
        "setxattr": lambda: os.setxattr(member, "user.k", b"v"),
    }
    held = open(root / "sub" / "other.bin", "rb")  # noqa: SIM115 - open across the attempts
    attempts["unlink while open"] = lambda: (root / "sub" / "other.bin").unlink()
    try:
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS, what
        assert held.read() == MEMBERS["sub/other.bin"]
    finally:
        held.close()
    assert member.read_bytes() == MEMBERS["000001.cls"]
    assert shards.object("train/shard.tar").get_reader().read_all() == shard(".tar", MEMBERS)
    assert "archives are read-only" in m.log()


def test_rename_and_delete_the_archive(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = expanded(mount, shards)
    train = m.path / "train"
    inside = (train / "shard.tgz" / "sub" / "other.bin")
    assert inside.read_bytes() == MEMBERS["sub/other.bin"]
    os.rename(train / "shard.tgz", train / "renamed.tgz")
    assert (train / "renamed.tgz" / "sub" / "other.bin").read_bytes() == MEMBERS["sub/other.bin"]
    assert not (train / "shard.tgz").exists()
    names = [o.name for o in shards.list_all_objects(prefix="train/")]
    assert "train/renamed.tgz" in names and "train/shard.tgz" not in names
    with pytest.raises(OSError) as info:
        os.rename(train / "renamed.tgz", train / "renamed.bin")
    assert info.value.errno == errno.EINVAL
    os.rmdir(train / "renamed.tgz")
    assert not (train / "renamed.tgz").exists()
    names = [o.name for o in shards.list_all_objects(prefix="train/")]
    assert "train/renamed.tgz" not in names


def test_default_mode_is_unchanged(shards, mount) -> None:  # type: ignore[no-untyped-def]
    m = mount(f"ais://{shards.name}")
    for ext in FORMATS:
        path = m.path / "train" / f"shard{ext}"
        assert path.is_file()
        assert path.read_bytes() == shards.object(f"train/shard{ext}").get_reader().read_all()


def test_both_views_at_once(shards, mount) -> None:  # type: ignore[no-untyped-def]
    files = mount(f"ais://{shards.name}", name="files")
    dirs = expanded(mount, shards, name="dirs")
    raw = (files.path / "train" / "shard.tar").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        for info in tf.getmembers():
            member = tf.extractfile(info)
            assert member is not None
            assert (dirs.path / "train" / "shard.tar" / info.name).read_bytes() == member.read()



SAMPLES = {f"{i:05d}.{kind}": random.Random(i).randbytes(size)
           for i in range(300) for kind, size in (("jpg", 20 * KIB), ("cls", 3))}


def cp_r_counts(make_bucket, mount, tmp_path: Path, name: str,  # type: ignore[no-untyped-def]
                data: bytes) -> tuple[float, float, float]:
    """``cp -r`` of the archive ``name`` (``data``, of ``SAMPLES``) out of a fresh mount, every
    member checked; (streamed GETs, member GETs, members put in the page cache before their
    open) the mount counted."""
    bucket = make_bucket({name: data})
    port = free_port()
    m = expanded(mount, bucket, "--metrics-addr", f"127.0.0.1:{port}")
    out = tmp_path / "out"
    subprocess.run(["cp", "-r", str(m.path / name), str(out)], check=True, timeout=120)
    assert sorted(os.listdir(out)) == sorted(SAMPLES)
    for member, content in SAMPLES.items():
        assert (out / member).read_bytes() == content, member
    counts = scrape(port)
    return (metric(counts, "aisfs_backend_requests_total", kind="get_archive"),
            metric(counts, "aisfs_backend_requests_total", kind="get_member"),
            metric(counts, "aisfs_page_cache_stored_files_total"))


def assert_one_stream_ending_at(counts: tuple[float, float, float], stop: int) -> None:
    """``cp_r_counts`` of ``SAMPLES`` saw one stream, ending at member ``stop``: the members
    from there on came one GET each (no new stream for them), besides the first few."""
    streamed, one_by_one, _ = counts
    after = len(SAMPLES) - stop
    assert streamed == 1 and after <= one_by_one <= after + 10, (streamed, one_by_one)


@pytest.mark.parametrize("ext", [".tar", ".tgz", ".tar.lz4", ".zip"])
def test_cp_r_in_archive_order_streams_the_archive(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path, ext: str,
) -> None:
    streamed, one_by_one, stored = cp_r_counts(make_bucket, mount, tmp_path, f"shard{ext}",
                                               shard(ext, SAMPLES))
    # The first members come one request each, until the run is seen; then one streamed GET.
    assert streamed == 1 and one_by_one <= 10, (streamed, one_by_one)
    # Members go to the kernel's page cache as the stream reads them (how many before their
    # open is the machine's speed); an open that comes first reads the stream's bytes.
    assert stored > 0, stored


def test_cp_r_of_a_zip_written_to_a_pipe(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path,
) -> None:
    """Sizes after each member's data (data descriptors): the deflated members stream, up to
    the first stored one (nothing tells where its data ends); the members from there on are
    fetched one by one, and byte-exact all the same."""
    names = sorted(SAMPLES)
    stop = 400
    data = zip_of([(n, SAMPLES[n]) for n in names], seekable=False,
                  stored=frozenset({names[stop]}))
    counts = cp_r_counts(make_bucket, mount, tmp_path, "piped.zip", data)
    assert_one_stream_ending_at(counts, stop)


def test_a_zip_whose_local_header_names_another_member(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path,
) -> None:
    """AIS serves members by the central directory; a local header (of member 200) naming the
    next member of the same size does not make the stream serve its bytes under that name: the
    stream ends there, and the members from there on are fetched one by one, each byte-exact."""
    names = sorted(SAMPLES)
    at = 200
    assert len(SAMPLES[names[at]]) == len(SAMPLES[names[at + 2]]) and len(names[at]) == len(
        names[at + 2])
    data = rename_local(zip_of([(n, SAMPLES[n]) for n in names]), names[at], names[at + 2])
    counts = cp_r_counts(make_bucket, mount, tmp_path, "misnamed.zip", data)
    assert_one_stream_ending_at(counts, at)


def test_a_name_stored_twice_is_the_first_copy_even_when_streamed(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path,
) -> None:
    """A tar holding a member twice (the second copy right after the first, bigger): AIS serves
    the first; so does the mount, during and after a streamed ``cp -r``."""
    names = sorted(SAMPLES)
    twice = names[100]
    copies = [(n, SAMPLES[n]) for n in names[:101]] + [(twice, b"second copy " * 100)] + [
        (n, SAMPLES[n]) for n in names[101:]]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in copies:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    bucket = make_bucket({"twice.tar": buf.getvalue()})
    m = expanded(mount, bucket)
    subprocess.run(["cp", "-r", str(m.path / "twice.tar"), str(tmp_path / "out")], check=True,
                   timeout=120)
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == SAMPLES[name], name
    assert (m.path / "twice.tar" / twice).read_bytes() == SAMPLES[twice]


@pytest.mark.expect_log(r"WARNING aisfs\.archives: .*/latin\.zip: skipped 1 member name")
def test_a_zip_member_name_that_is_not_utf8(  # type: ignore[no-untyped-def]
    make_bucket, mount, tmp_path: Path,
) -> None:
    """Skipped with one warning, and the stream goes on past it."""
    names = sorted(SAMPLES)
    members = [(n, SAMPLES[n]) for n in names[:300]] + [("caf\xe9.jpg", b"latin-1 name")] + [
        (n, SAMPLES[n]) for n in names[300:]]
    data = zip_of(members).replace("caf\xe9".encode(), b"caf\xe9_")  # the same length
    assert data.count(b"caf\xe9_") == 2  # local header and central directory
    streamed, one_by_one, _ = cp_r_counts(make_bucket, mount, tmp_path, "latin.zip", data)
    assert streamed == 1 and one_by_one <= 10, (streamed, one_by_one)


@pytest.mark.expect_log(
    r"WARNING aisfs\.archives: .*/names\.tar: skipped 1 member name",
    r"WARNING aisfs\.fs: read\(.*/names\.tar/dot: AIS lists this member but cannot read it",
)
def test_names_ais_cannot_serve(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="latin-1") as tf:
        for name, data in (("caf\xe9.txt", b"latin-1 name"), ("ok.txt", b"ok"),
                           ("./dot", b"stored as ./dot")):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            tf.addfile(entry, io.BytesIO(data))
    bucket = make_bucket({"names.tar": buf.getvalue()})
    m = expanded(mount, bucket)
    root = m.path / "names.tar"
    assert sorted(os.listdir(root)) == ["dot", "ok.txt"]  # the non-UTF-8 name is skipped
    assert (root / "ok.txt").read_bytes() == b"ok"
    with pytest.raises(OSError) as info:
        (root / "dot").read_bytes()  # AIS lists "./dot" as "dot", then cannot find "dot"
    assert info.value.errno == errno.EIO
    assert m.log().count("skipped 1 member name") == 1


def test_shards_used_in_order_have_the_next_one_listed_ahead(  # type: ignore[no-untyped-def]
    make_bucket, mount,
) -> None:
    """``ls`` of one shard after the other: each shard's member listing is asked of AIS once,
    the next one's while the reader is still at this one (AIS reads a whole shard to list it)."""
    members = {f"d/{n}": SAMPLES[n] for n in sorted(SAMPLES)[:20]}
    shards = {f"train/s{i}.tar": shard(".tar", members) for i in range(4)}
    bucket = make_bucket({**shards, "train/z.txt": b"not an archive"})
    port = free_port()
    m = expanded(mount, bucket, "--metrics-addr", f"127.0.0.1:{port}")

    def listed() -> float:
        return metric(scrape(port), "aisfs_backend_requests_total", kind="list_archive")

    def listed_becomes(count: int) -> None:
        deadline = time.monotonic() + 10
        while listed() != count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert listed() == count

    assert sorted(os.listdir(m.path / "train")) == ["s0.tar", "s1.tar", "s2.tar", "s3.tar",
                                                    "z.txt"]
    for i in range(4):
        assert os.listdir(m.path / "train" / f"s{i}.tar" / "d") == sorted(
            n.removeprefix("d/") for n in members)
        listed_becomes(min(i + 2, 4))  # this one, and the next one already
    assert (m.path / "train" / "s3.tar" / "d" / sorted(SAMPLES)[0]).read_bytes() == \
        SAMPLES[sorted(SAMPLES)[0]]
    assert listed() == 4


# What torchvision's ImageFolder finds under a root and reads (torchvision.datasets.folder:
# find_classes, make_dataset with IMG_EXTENSIONS, a loader that opens and reads each sample):
# torch itself is not installed here (PyPI's Linux build needs the CUDA packages).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    samples = []
    for index, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(folder, file), index))
    return classes, samples


def sample_digest(item: tuple[str, int]) -> tuple[str, int, str]:
    path, label = item
    with open(path, "rb") as f:
        return path, label, hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("ext", [".tar", ".zip"])
def test_an_image_folder_dataset_over_a_shard(  # type: ignore[no-untyped-def]
    make_bucket, mount, ext: str,
) -> None:
    """A shard's member directories as an ImageFolder's classes: the classes and samples it
    finds, and every sample read back in a shuffled order by 4 worker processes (as a
    DataLoader's workers read them), byte-exact."""
    rng = random.Random(11)
    members = {f"{cls}/{i:04d}.jpg": rng.randbytes(rng.randrange(1, 9000))
               for cls in ("cat", "dog", "owl") for i in range(40)}
    members["dog/more/0999.JPG"] = b"nested, upper-case extension"
    members["owl/notes.txt"] = b"not an image"
    members["README"] = b"at the root: no class"
    bucket = make_bucket({f"train/shard{ext}": shard(ext, members)})
    m = expanded(mount, bucket)
    root = str(m.path / "train" / f"shard{ext}")
    classes, samples = image_folder(root)
    assert classes == ["cat", "dog", "owl"]
    expected = sorted((os.path.join(root, name), classes.index(name.split("/")[0]))
                      for name in members if name.lower().endswith(IMG_EXTENSIONS))
    assert sorted(samples) == expected
    order = samples[:]
    random.Random(5).shuffle(order)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        got = pool.map(sample_digest, order, chunksize=8)
    for path, label, digest in got:
        name = os.path.relpath(path, root)
        assert digest == hashlib.sha256(members[name]).hexdigest(), name
        assert label == classes.index(name.split("/")[0])
    assert len(got) == len(expected)

"""Real mounts of the real local cluster, read path: every check is against what AIS holds."""

from __future__ import annotations

import concurrent.futures
import errno
import filecmp
import hashlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest

from .service_util import free_port, metric, scrape
from .util import aisfs_cmd, env_without, is_mounted, paths_of, unique

MIB = 1024 * 1024
TREE = {
    "top.txt": b"top level\n",
    "empty": b"",
    "one": b"x",
    "a/b/c.bin": os.urandom(MIB + 1),
    "a/b/d.txt": b"d" * 1000,
    "a/e.txt": b"e" * 10,
    "a/b/deep/er/f.txt": b"f" * 77,
    "z/last": b"last",
}


def sh(*args: str, **kw: object) -> str:
    out: str = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300,
                              **kw).stdout  # type: ignore[call-overload]
    return out


@pytest.fixture
def tree_mount(make_bucket, mount):  # type: ignore[no-untyped-def]
    bucket = make_bucket(TREE)
    return bucket, mount(f"ais://{bucket.name}", "--metadata-ttl", "1")


def test_ls_l_nested(tree_mount) -> None:  # type: ignore[no-untyped-def]
    _, m = tree_mount
    top = sh("ls", "-l", str(m.path)).splitlines()
    names = [line.split()[-1] for line in top[1:]]
    assert names == ["a", "empty", "one", "top.txt", "z"]
    assert top[1].startswith("d") and top[2].startswith("-")
    assert sorted(os.listdir(m.path / "a" / "b")) == ["c.bin", "d.txt", "deep"]
    sizes = {e.name: e.stat().st_size for e in os.scandir(m.path / "a" / "b") if e.is_file()}
    assert sizes == {"c.bin": MIB + 1, "d.txt": 1000}


def test_find_and_du(tree_mount) -> None:  # type: ignore[no-untyped-def]
    _, m = tree_mount
    files = sh("find", str(m.path), "-type", "f").split()
    assert sorted(os.path.relpath(f, m.path) for f in files) == sorted(TREE)
    dirs = sh("find", str(m.path), "-mindepth", "1", "-type", "d").split()
    assert sorted(os.path.relpath(d, m.path) for d in dirs) == sorted(
        ["a", "a/b", "a/b/deep", "a/b/deep/er", "z"]
    )
    du = int(sh("du", "-sb", "--apparent-size", str(m.path)).split()[0])
    assert du == sum(len(v) for v in TREE.values())


def test_find_over_a_wide_tree_sees_what_ais_holds_with_few_listings(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    """`find` walks 124 directories; after the second subdirectory of one it lists the rest of
    the tree recursively (instead of a LIST per directory). Names that sort around "/" come out
    as a per-directory listing shows them."""
    objects = {f"w/d{i:02}/s{j}/f{k}": b"x" * k for i in range(40) for j in range(2)
               for k in range(2)}
    objects |= {"w/d05/s0-x/f": b"1", "w/d05/s0.txt": b"2", "w/d07/only/deeper/f": b"3",
                "w/top": b"4"}
    bucket = make_bucket(objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "2", "--metrics-addr", f"127.0.0.1:{port}")

    def found() -> set[str]:
        out = sh("find", str(m.path / "w"), "-mindepth", "1").split("\n")
        return {os.path.relpath(p, m.path) for p in out if p}

    def expected(keys: set[str]) -> set[str]:
        return paths_of(keys) - {"w"}

    assert found() == expected(set(objects))
    lists = metric(scrape(port), "aisfs_backend_requests_total", kind="list_objects")
    assert lists < 20, f"{lists} LIST requests for 124 directories"
    (m.path / "w" / "d33" / "s1" / "new").write_bytes(b"here")  # through the mount
    assert found() == expected(set(objects) | {"w/d33/s1/new"})
    bucket.object("w/d20/s0/sdk").get_writer().put_content(b"sdk")  # around the mount
    time.sleep(2.5)  # the metadata TTL
    assert found() == expected(set(objects) | {"w/d33/s1/new", "w/d20/s0/sdk"})


def test_an_object_made_elsewhere_after_a_listing_opens_after_the_negative_ttl(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    bucket = make_bucket({"d/a": b"a"})
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "60", "--negative-metadata-ttl", "1")
    assert os.listdir(m.path / "d") == ["a"]  # the listing is cached for a minute...
    bucket.object("d/new").get_writer().put_content(b"new")
    time.sleep(1.5)  # ...but it vouches for the absence of a name for the negative TTL only
    assert (m.path / "d" / "new").read_bytes() == b"new"


def test_files_opened_by_name_in_a_big_directory_get_it_listed(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    """A loader opening files by path in a directory bigger than a lookup's first page: after a
    few lookups (HEAD each) the directory is listed and the rest need no HEAD."""
    objects = {f"big/{i:04}": str(i).encode() for i in range(1100)}
    bucket = make_bucket(objects)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "60", "--metrics-addr",
              f"127.0.0.1:{port}")
    names = [f"{i:04}" for i in range(0, 1100, 11)]  # 100 files, in and beyond the first page
    for name in names[:3]:
        assert (m.path / "big" / name).read_bytes() == objects[f"big/{name}"]
    deadline = time.monotonic() + 30  # the listing is fetched in the background
    while metric(scrape(port), "aisfs_metadata_cache_entries", cache="listings") < 1:
        assert time.monotonic() < deadline, "big/ was not listed"
        time.sleep(0.05)
    heads = metric(scrape(port), "aisfs_backend_requests_total", kind="head_object")
    for name in names[3:]:
        assert (m.path / "big" / name).read_bytes() == objects[f"big/{name}"]
    assert metric(scrape(port), "aisfs_backend_requests_total", kind="head_object") == heads


def test_stat_sizes_and_mtimes(tree_mount) -> None:  # type: ignore[no-untyped-def]
    bucket, m = tree_mount
    for key, data in TREE.items():
        st = os.stat(m.path / key)
        assert st.st_size == len(data), key
        assert st.st_blocks == (len(data) + 511) // 512
        props = bucket.object(key).head()
        assert props.size == len(data)
        # AIS wrote these moments ago: the mtime is the write time, to the second.
        assert abs(st.st_mtime - time.time()) < 600, key
    assert os.stat(m.path / "a").st_mode & 0o170000 == 0o040000
    assert os.stat(m.path / "top.txt").st_mode & 0o777 == 0o644
    assert os.stat(m.path / "a").st_mode & 0o777 == 0o755
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "nope")
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "a" / "nope" / "deeper")


def test_contents_match_sdk(make_bucket, mount, sdk) -> None:  # type: ignore[no-untyped-def]
    big = os.urandom(MIB) * 300
    objects = {"zero": b"", "one": b"\x01", "mib1": os.urandom(MIB + 1), "big": big}
    bucket = make_bucket(objects)
    m = mount(f"ais://{bucket.name}")
    for key, data in objects.items():
        remote = bucket.object(key).get_reader().read_all()
        assert remote == data
        path = m.path / key
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == hashlib.sha256(data).hexdigest(), key
    # Real tools, too.
    out = sh("sha256sum", str(m.path / "big")).split()[0]
    assert out == hashlib.sha256(big).hexdigest()
    head = subprocess.run(["head", "-c", "1000", str(m.path / "mib1")], capture_output=True,
                          check=True).stdout
    assert head == objects["mib1"][:1000]
    dd = subprocess.run(["dd", f"if={m.path / 'big'}", "bs=1M", "skip=299", "status=none"],
                        capture_output=True, check=True).stdout
    assert dd == big[299 * MIB:]


def test_random_offset_reads(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(40 * MIB + 12345)
    bucket = make_bucket({"r.bin": data})
    m = mount(f"ais://{bucket.name}")
    rng = random.Random(7)
    with open(m.path / "r.bin", "rb", buffering=0) as f:
        for _ in range(300):
            off = rng.randrange(0, len(data) + 100)
            size = rng.choice([1, 7, 4096, 65536, 131072, 1_000_000, 3 * MIB])
            f.seek(off)
            assert f.read(size) == data[off:off + size], (off, size)
        # Sequential after random: read the rest in one go.
        f.seek(123)
        assert f.read() == data[123:]
        assert f.read(10) == b""


def test_cp_r_out_of_the_mount(tree_mount, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, m = tree_mount
    out = tmp_path / "copy"
    sh("cp", "-r", str(m.path), str(out))
    for key, data in TREE.items():
        assert (out / key).read_bytes() == data
    cmp = filecmp.dircmp(m.path, out)
    assert not cmp.left_only and not cmp.right_only


def test_large_directory_lists_completely_in_order(make_bucket, mount, sdk) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    names = [f"big/f{i:05d}" for i in range(20_000)]

    def put(key: str) -> None:
        bucket.object(key).get_writer().put_content(key.encode())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    m = mount(f"ais://{bucket.name}")
    listed = sh("ls", "-f", str(m.path / "big")).split()
    listed = [n for n in listed if n not in (".", "..")]
    assert listed == [n.split("/")[1] for n in names]  # complete, no duplicates, in order
    with os.scandir(m.path / "big") as it:
        entries = {e.name: e.stat().st_size for e in it}
    assert len(entries) == 20_000 and entries["f12345"] == len("big/f12345")
    assert (m.path / "big" / "f19999").read_bytes() == b"big/f19999"


def test_remote_changes_show_after_ttl(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"c.txt": b"first", "gone.txt": b"bye"})
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "0.5", "--negative-metadata-ttl", "0.5")
    assert (m.path / "c.txt").read_bytes() == b"first"
    assert sorted(os.listdir(m.path)) == ["c.txt", "gone.txt"]
    bucket.object("c.txt").get_writer().put_content(b"second version, longer")
    bucket.object("gone.txt").delete()
    bucket.object("new.txt").get_writer().put_content(b"new")
    time.sleep(1.2)
    assert (m.path / "c.txt").read_bytes() == b"second version, longer"
    assert os.stat(m.path / "c.txt").st_size == len(b"second version, longer")
    assert sorted(os.listdir(m.path)) == ["c.txt", "new.txt"]
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "gone.txt")


@pytest.mark.expect_log(r"WARNING aisfs\.\w+: .*ais://[^ ]+/v\.bin changed while open")
def test_object_replaced_while_open_is_not_mixed(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    old = b"A" * (20 * MIB)
    bucket = make_bucket({"v.bin": old})
    m = mount(f"ais://{bucket.name}", "--read-ahead-max", "1M", "--read-part-size", "1M",
              "--kernel-read-ahead-kb", "128")
    with open(m.path / "v.bin", "rb", buffering=0) as f:
        assert f.read(MIB) == old[:MIB]
        bucket.object("v.bin").get_writer().put_content(b"B" * (20 * MIB))
        with pytest.raises(OSError) as info:
            f.seek(10 * MIB)
            while f.read(MIB):
                pass
        assert info.value.errno == 116  # ESTALE: never a mix of A and B
    time.sleep(5.5)  # the default metadata TTL: a new open sees the new version
    assert (m.path / "v.bin").read_bytes() == b"B" * (20 * MIB)


def test_a_small_file_reads_as_it_was_at_its_open(make_bucket, mount, sdk) -> None:  # type: ignore[no-untyped-def]
    """A small file is fetched whole at its open: replaced in AIS after that, it still reads
    whole as the version it was opened at (no ESTALE, never a mix); a new open, once the
    metadata TTL is over, reads the new version."""
    old, new = os.urandom(300_000), os.urandom(300_000)
    bucket = make_bucket({"s.bin": old})
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "1", "--metrics-addr",
              f"127.0.0.1:{port}")
    os.listdir(m.path)
    with open(m.path / "s.bin", "rb", buffering=0) as f:
        deadline = time.monotonic() + 10
        while metric(scrape(port), "aisfs_backend_requests_total", kind="get_range") < 1:
            assert time.monotonic() < deadline, "no GET at the open"
            time.sleep(0.02)
        bucket.object("s.bin").get_writer().put_content(new)
        assert sdk.bucket(bucket.name).object("s.bin").get_reader().read_all() == new
        assert f.read(100_000) + f.read() == old
    time.sleep(1.5)
    assert (m.path / "s.bin").read_bytes() == new


def test_whole_cluster_and_prefix_mounts(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    b1 = make_bucket({"x/y/z.txt": b"zzz", "x/w": b"w"})
    b2 = make_bucket({"k": b"k"})
    root = mount("ais://", name="root")
    buckets = os.listdir(root.path)
    assert b1.name in buckets and b2.name in buckets
    assert (root.path / b1.name / "x" / "y" / "z.txt").read_bytes() == b"zzz"
    assert (root.path / b2.name / "k").read_bytes() == b"k"
    with pytest.raises(FileNotFoundError):
        os.stat(root.path / unique("nobucket"))
    sub = mount(f"ais://{b1.name}/x/", name="prefix")
    assert sorted(os.listdir(sub.path)) == ["w", "y"]
    assert (sub.path / "y" / "z.txt").read_bytes() == b"zzz"


def test_object_and_prefix_with_one_name(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    # AIS refuses "n" beside "n/inner" when both land on the same target (on-disk clash);
    # with two targets some names land apart: try names until one pair coexists.
    for i in range(40):
        name = f"same{i}"
        bucket.object(f"{name}/inner").get_writer().put_content(b"inner")
        try:
            bucket.object(name).get_writer().put_content(b"file")
            break
        except Exception:  # noqa: BLE001 - the clash answer: try the next name
            bucket.object(f"{name}/inner").delete()
    else:
        pytest.fail("no object/prefix pair could coexist on a two-target cluster")
    m = mount(f"ais://{bucket.name}")
    assert name in os.listdir(m.path)
    assert os.listdir(m.path).count(name) == 1  # shown once: as the directory
    assert (m.path / name).is_dir()
    assert (m.path / name / "inner").read_bytes() == b"inner"


def test_daemon_mode_and_umount(  # type: ignore[no-untyped-def]
    make_bucket, tmp_path: Path, ais_endpoint: str
) -> None:
    bucket = make_bucket({"d.txt": b"daemon"})
    mp = tmp_path / "bg"
    mp.mkdir()
    env = {**os.environ, "AIS_ENDPOINT": ais_endpoint}
    done = subprocess.run([*aisfs_cmd(), f"ais://{bucket.name}", str(mp),
                           "--log-file", str(tmp_path / "bg.log")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    try:
        assert is_mounted(mp)  # live when the command returned
        assert (mp / "d.txt").read_bytes() == b"daemon"
    finally:
        # Unmounting needs neither the FUSE library nor trio: it works where they cannot load.
        umount = subprocess.run([*aisfs_cmd(), "umount", str(mp)], capture_output=True,
                                text=True, timeout=60,
                                env=env_without(("pyfuse3", "trio"), tmp_path / "blocked"))
    assert umount.returncode == 0, umount.stderr
    assert not is_mounted(mp)


@pytest.mark.parametrize(
    "case",
    ["no-bucket", "unreachable", "no-mountpoint", "busy", "bad-option", "bad-source"],
)
def test_mount_errors_are_one_line(case: str, make_bucket, mount, tmp_path: Path,  # type: ignore[no-untyped-def]
                                   ais_endpoint: str) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    source, extra = "ais://" + unique("missing"), ["--retries", "0"]
    endpoint = ais_endpoint
    if case == "unreachable":
        # Retried: the pre-flight check's retry log lines show only with --debug.
        source, endpoint, extra = "ais://", "http://127.0.0.1:9", ["--retries", "2"]
    elif case == "no-mountpoint":
        source, mp = f"ais://{make_bucket().name}", tmp_path / "absent"
    elif case == "busy":
        b = make_bucket()
        other = mount(f"ais://{b.name}", name="busy")
        source, mp = f"ais://{b.name}", other.path
    elif case == "bad-option":
        source, extra = f"ais://{make_bucket().name}", ["-o", "frobnicate=1", *extra]
    elif case == "bad-source":
        source = "s3://x"
    env = {**os.environ, "AIS_ENDPOINT": endpoint}
    done = subprocess.run([*aisfs_cmd(), source, str(mp), *extra], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aisfs: "), done.stderr
    assert "Traceback" not in done.stderr
    expected = {"no-bucket": "no such bucket", "unreachable": "cannot reach",
                "no-mountpoint": "does not exist", "busy": "busy",
                "bad-option": "unknown mount option", "bad-source": "source must"}[case]
    assert expected in lines[0]


def test_a_file_opened_for_reading_is_closed_without_a_flush(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    # Its open is answered with FOPEN_NOFLUSH (open_reply.py): closing it costs no round trip.
    # A file opened for writing still gets its FLUSH: close(2) reports its upload.
    files = {f"d/f{i:02d}": os.urandom(1000 + i) for i in range(30)}
    bucket = make_bucket(files)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--metrics-addr", f"127.0.0.1:{port}")
    for key, data in files.items():
        with open(m.path / key, "rb", buffering=0) as f:
            assert f.read() == data
    samples = scrape(port)
    assert metric(samples, "aisfs_fuse_op_duration_seconds_count", op="open") >= 30
    assert metric(samples, "aisfs_fuse_op_duration_seconds_count", op="flush") == 0
    (m.path / "d" / "new").write_bytes(b"written")
    with open(m.path / "d" / "f00", "r+b", buffering=0) as f:
        f.write(b"x")
    assert metric(scrape(port), "aisfs_fuse_op_duration_seconds_count", op="flush") >= 2
    assert bucket.object("d/new").get_reader().read_all() == b"written"
    assert bucket.object("d/f00").get_reader().read_all() == b"x" + files["d/f00"][1:]


def test_a_read_only_mount_reads_refuses_writes_and_gets_no_flush_per_close(  # type: ignore[no-untyped-def]
    make_bucket, mount
) -> None:
    # Nothing is uploaded on a read-only mount, so its first FLUSH answers ENOSYS and the kernel
    # sends none after: closing a file read costs one round trip less.
    files = {f"d/f{i:02d}": os.urandom(1000 + i) for i in range(30)}
    bucket = make_bucket(files)
    port = free_port()
    m = mount(f"ais://{bucket.name}", "--read-only", "--metrics-addr", f"127.0.0.1:{port}")
    for key, data in files.items():
        assert (m.path / key).read_bytes() == data
    with pytest.raises(OSError) as info:
        (m.path / "d" / "new").write_bytes(b"x")
    assert info.value.errno == errno.EROFS
    samples = scrape(port)
    assert metric(samples, "aisfs_fuse_op_duration_seconds_count", op="open") >= 30
    assert metric(samples, "aisfs_fuse_op_duration_seconds_count", op="flush") <= 1

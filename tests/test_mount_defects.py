"""Real mounts: behaviour a user meets with ordinary tools, each case a way it once went wrong.

Every test mounts aisfs in the kernel against the real cluster and checks what AIS holds with the
aistore SDK (content and custom metadata). Faults come from the relay in ``faultproxy``.
"""

from __future__ import annotations

import errno
import os
import signal
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import requests

from .faultproxy import FaultProxy
from .service_util import local_cluster
from .util import Mount

pytestmark = pytest.mark.mount
MIB = 1024 * 1024


def remote(bucket, key: str) -> bytes:  # type: ignore[no-untyped-def]
    data: bytes = bucket.object(key).get_reader().read_all()
    return data


def custom(bucket, key: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The object's custom metadata in AIS, without the mtime aisfs keeps there."""
    md = bucket.object(key).head("custom").custom_metadata or {}
    return {k: v for k, v in md.items() if k != "aisfs.mtime"}


def names(bucket) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(e.name for e in bucket.list_all_objects())


@pytest.fixture
def fault(ais_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(ais_endpoint)
    yield proxy
    proxy.close()


def mount_rw(mount, bucket, *args: str, **kwargs) -> Mount:  # type: ignore[no-untyped-def]
    m: Mount = mount(f"ais://{bucket.name}", "--write-part-size", "1M", "--write-part-max", "2M",
                     "--spill-dir", "/var/tmp/aisfs-test-spill", *args, **kwargs)
    return m


def test_a_rewrite_of_an_empty_object_keeps_its_xattrs(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    mp = mount_rw(mount, bucket).path
    for name in ("truncated", "pwritten"):
        (mp / name).write_bytes(b"")
        os.setxattr(mp / name, "user.k", b"v")
    os.truncate(mp / "truncated", 5)
    fd = os.open(mp / "pwritten", os.O_RDWR)
    try:
        os.pwrite(fd, b"xy", 3)
    finally:
        os.close(fd)
    assert remote(bucket, "truncated") == b"\0" * 5
    assert remote(bucket, "pwritten") == b"\0\0\0xy"
    for name in ("truncated", "pwritten"):
        assert custom(bucket, name) == {"k": "v"}, name
        assert os.getxattr(mp / name, "user.k") == b"v"


def test_rename_over_a_file_takes_exactly_the_sources_xattrs(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    mp = mount_rw(mount, bucket).path
    (mp / "a").write_bytes(b"from a")
    (mp / "b").write_bytes(b"from b")
    os.setxattr(mp / "a", "user.src", b"1")
    os.setxattr(mp / "b", "user.dst", b"1")
    os.rename(mp / "a", mp / "b")
    assert remote(bucket, "b") == b"from a"
    assert custom(bucket, "b") == {"src": "1"}
    assert os.listxattr(mp / "b") == ["user.src"]
    assert names(bucket) == ["b"]


def test_a_name_that_is_not_utf8_is_a_clean_error(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"d/f": b"f"})
    m = mount_rw(mount, bucket)
    with pytest.raises(OSError) as info:
        os.stat(os.fsencode(str(m.path)) + b"/\xffname")  # asks AIS: no listing of / yet
    assert info.value.errno == errno.ENOENT
    bad = os.fsencode(str(m.path)) + b"/d/\xffname"
    with pytest.raises(OSError) as info:
        os.stat(bad)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.unlink(bad)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OSError) as info:
        os.rename(bad, m.path / "d" / "g")
    assert info.value.errno == errno.ENOENT
    f = m.path / "d" / "f"
    with pytest.raises(OSError) as info:
        os.setxattr(f, b"user.\xff", b"v")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.getxattr(f, b"user.\xff")
    assert info.value.errno == errno.ENODATA
    assert f.read_bytes() == b"f"  # the mount goes on
    log = m.log()
    assert "Traceback" not in log  # (the mount fixture checks it again at the end)
    assert "\\xffname' is not UTF-8" in log


def test_a_file_can_be_made_where_a_directory_was(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    # AIS keeps an emptied directory on the disk of the target that held its last object; an
    # object of the same name placed on that target collides with it (about half of the names
    # on a two-target cluster).
    bucket = make_bucket()
    mp = mount_rw(mount, bucket).path
    failed = []
    for i in range(10):
        d = mp / f"d{i}"
        d.mkdir()
        (d / "x").write_bytes(b"inside")
        (d / "x").unlink()
        d.rmdir()
        try:
            d.write_bytes(b"data %d" % i)
        except OSError as exc:
            failed.append((i, exc.errno))
    assert not failed
    for i in range(10):
        assert remote(bucket, f"d{i}") == b"data %d" % i
        assert (mp / f"d{i}").read_bytes() == b"data %d" % i


def test_ftruncate_then_close_shows_the_new_size_at_once(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    sizes = [(10, 20), (20, 10)] * 5
    bucket = make_bucket({f"f{i}": b"x" * old for i, (old, _) in enumerate(sizes)})
    mp = mount_rw(mount, bucket, "--metadata-ttl", "60").path
    wrong = []
    for i, (old, new) in enumerate(sizes):
        path = mp / f"f{i}"
        assert os.stat(path).st_size == old
        fd = os.open(path, os.O_RDWR)
        os.ftruncate(fd, new)
        os.close(fd)
        expected = b"x" * min(old, new) + b"\0" * max(0, new - old)
        seen = (os.stat(path).st_size, path.read_bytes())
        if seen != (new, expected):
            wrong.append((i, old, new, seen[0], len(seen[1])))
        assert remote(bucket, f"f{i}") == expected
    assert not wrong


def test_rename_onto_a_directory_holding_empty_directories_is_enotempty(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    mp = mount_rw(mount, bucket).path
    (mp / "a").mkdir()
    (mp / "a" / "f").write_bytes(b"f")
    (mp / "b").mkdir()
    (mp / "b" / "c").mkdir()
    with pytest.raises(OSError) as info:
        os.rename(mp / "a", mp / "b")
    assert info.value.errno == errno.ENOTEMPTY
    assert sorted(os.listdir(mp)) == ["a", "b"]
    assert os.listdir(mp / "b") == ["c"]
    assert names(bucket) == ["a/f"]


def test_an_unlinked_file_stays_readable_through_open_descriptors(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * MIB + 7)
    bucket = make_bucket({"x": data})
    mp = mount_rw(mount, bucket, "--read-part-size", "1M", "--read-ahead-max", "1M").path
    with open(mp / "x", "rb", buffering=0) as f:
        head = f.read(100)
        os.unlink(mp / "x")
        assert not (mp / "x").exists()
        assert "x" not in names(bucket)  # gone for every other client at once
        st = os.fstat(f.fileno())
        assert (st.st_size, st.st_nlink) == (len(data), 0)
        rest = f.read()
        assert os.pread(f.fileno(), 10, 5) == data[5:15]
    assert head + rest == data
    assert names(bucket) == []
    (mp / "x").write_bytes(b"new")  # the name is free
    assert remote(bucket, "x") == b"new"


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/doomed: write failed")
def test_a_name_can_be_created_right_after_a_failed_close(  # type: ignore[no-untyped-def]
    make_bucket, mount, fault
) -> None:
    bucket = make_bucket()
    m = mount(f"ais://{bucket.name}", "--endpoint", fault.url, "--retries", "1",
              "--metadata-ttl", "60")
    refused = fault.fail("PUT", "/doomed", "status", times=100, status=500)
    with pytest.raises(OSError) as info:
        (m.path / "doomed").write_bytes(b"first")
    assert info.value.errno == errno.EIO
    assert refused.hits >= 1
    fault.clear()
    (m.path / "doomed").write_bytes(b"second")
    assert remote(bucket, "doomed") == b"second"
    assert (m.path / "doomed").read_bytes() == b"second"


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/f: write failed")
def test_a_failed_overwrite_leaves_the_old_content_and_nothing_else(  # type: ignore[no-untyped-def]
    make_bucket, mount, fault
) -> None:
    old = os.urandom(100)
    bucket = make_bucket({"f": old})
    m = mount(f"ais://{bucket.name}", "--endpoint", fault.url, "--retries", "1",
              "--write-part-size", "1M")
    # What makes the streamed bytes the object's content is refused (the last step of it).
    for marker in (b'"rename-obj"', b'"mpt-complete"'):
        fault.fail("POST", "/v1/objects/", "status", times=100, status=500, body_contains=marker)
    with pytest.raises(OSError) as info:
        (m.path / "f").write_bytes(os.urandom(3 * MIB))
    assert info.value.errno == errno.EIO
    fault.clear()
    assert names(bucket) == ["f"]
    assert remote(bucket, "f") == old


@pytest.mark.expect_log(r"WARNING aisfs\.fs: lookup\(1, b'(r\d+|nothing-here)'\): ais://b/")
def test_lookups_while_a_target_is_down_are_never_einval(mount) -> None:  # type: ignore[no-untyped-def]
    # A cluster of this test's own: one of its targets is killed. Until the proxy drops it from
    # the cluster map (~15 s), AIS answers every listing with HTTP 400 ("failed to call t[...]").
    # (a first port that differs between test runs: clusters started at once do not collide)
    with local_cluster("targetdown", [], 23480 + os.getpid() % 40 * 83) as cluster:
        cluster.create_bucket("b")
        port_of = {}
        for i in range(12):
            cluster.put("b", f"r{i}", b"r%d" % i)
            where = requests.head(f"{cluster.endpoint}/v1/objects/b/r{i}", allow_redirects=False,
                                  timeout=10).headers["Location"]
            port_of[f"r{i}"] = urllib.parse.urlsplit(where).port
        doomed = int((cluster.state / "run" / "target2.pid").read_text())
        doomed_port = int(cluster.endpoint.rsplit(":", 1)[1]) + 2
        survivors = [k for k, port in port_of.items() if port != doomed_port]
        assert survivors and len(survivors) < 12
        m = mount("ais://b", "--endpoint", cluster.endpoint, "--retries", "1",
                  "--metadata-ttl", "0", "--negative-metadata-ttl", "0")
        os.kill(doomed, signal.SIGKILL)
        time.sleep(0.5)
        seen = {}
        for key in port_of:
            try:
                seen[key] = (m.path / key).read_bytes()
            except OSError as exc:
                seen[key] = exc.errno
        assert errno.EINVAL not in seen.values(), seen
        assert {k: seen[k] for k in survivors} == {k: b"r" + k[1:].encode() for k in survivors}
        with pytest.raises(OSError) as info:
            os.stat(m.path / "nothing-here")
        assert info.value.errno in (errno.EIO, errno.ENOENT)


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/secret\.bin: write failed")
def test_a_failed_write_logs_where_not_what(make_bucket, mount, fault) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket()
    m = mount(f"ais://{bucket.name}", "--endpoint", fault.url, "--retries", "1",
              "--write-part-size", "1M")
    fault.fail("PUT", "/secret.bin", "status", times=100, status=500)
    marker = b"SECRET-" + os.urandom(8).hex().encode()
    fd = os.open(m.path / "secret.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    failed = None
    try:
        for _ in range(8):  # the first parts fail in the background; a later write hears of it
            try:
                os.write(fd, os.urandom(MIB))
                os.write(fd, marker * 10)
            except OSError as exc:
                failed = exc
                break
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert failed is not None and failed.errno == errno.EIO
    log = m.log()
    assert "secret.bin" in log
    assert "SECRET-" not in log
    assert "\\x" not in log  # no bytes of the data, printable or not


def test_an_object_beside_a_double_slash_name_stays_a_file(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    # AIS stores a//b as the file a/b on its disk: beside an object a only on another target
    # than a's; and on some, AIS then serves that file as an object a/b, so that a/ is a real
    # directory. A bucket where neither happens:
    for _ in range(30):
        bucket = make_bucket()
        bucket.object("a//b").get_writer().put_content(b"x")
        try:
            bucket.object("a").get_writer().put_content(b"file")
            bucket.object("a/b").head()
        except Exception:  # noqa: BLE001 - a collision, or a/b is served: another bucket
            if "a" in names(bucket):
                break
    a = "a"
    mp = mount_rw(mount, bucket).path
    assert os.listdir(mp) == [a]
    assert (mp / a).is_file()
    assert (mp / a).read_bytes() == b"file"


# (a write may fail: one in 20 is allowed; a part may need a third try)
@pytest.mark.expect_log(r"WARNING aisfs\.transport: \w+ ais://[^ ]+/f\d\d: .*retry",
                        r"WARNING aisfs\.\w+: ais://[^ ]+/f\d\d: write failed",
                        r"WARNING aisfs\.fs: \w+\(.*ais://[^ ]+/f\d\d: ")
def test_streamed_writes_survive_connection_resets(make_bucket, mount, fault) -> None:  # type: ignore[no-untyped-def]
    """With the relay resetting ~0.1% of the traffic to the targets (per 64 KiB), at least 19
    of 20 streamed writes of 1-64 MiB close successfully; every close that returned 0 left
    exactly the written bytes, every failure left the previous content (or nothing)."""
    import random

    rng = random.Random(15)
    sizes = [rng.randrange(MIB, 64 * MIB) for _ in range(20)]
    old = {f"f{i:02}": b"old %d" % i for i in range(0, 20, 2)}  # half are overwrites
    bucket = make_bucket(old)
    m = mount(f"ais://{bucket.name}", "--endpoint", fault.url)
    fault.flaky(0.001, seed=15)
    ok, failed = [], []
    started = time.monotonic()
    for i, size in enumerate(sizes):
        key = f"f{i:02}"
        data = rng.randbytes(size)
        try:
            with open(m.path / key, "wb") as f:
                for pos in range(0, size, MIB):
                    f.write(data[pos:pos + MIB])
        except OSError as exc:
            assert exc.errno == errno.EIO
            failed.append(key)
            got = bucket.object(key).get_reader().read_all() if key in names(bucket) else None
            assert got == old.get(key), key
        else:
            ok.append(key)
            assert remote(bucket, key) == data, key
        assert time.monotonic() - started < 900
    fault.flaky(0)
    print(f"{len(ok)} of 20 closed successfully; resets: {fault.resets}")
    assert sum(fault.resets.values()) >= 5  # the relay did reset connections
    assert len(ok) >= 19, (failed, fault.resets)

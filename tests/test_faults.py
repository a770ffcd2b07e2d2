"""Failures between aisfs and the real cluster, injected by a relay in front of it (faultproxy).

Each test mounts aisfs against the relay and checks what a user sees: retried transient errors
are invisible, what cannot be retried is EIO (never wrong bytes, never a hang), a failed upload
reaches the writer and leaves nothing visible, and the mount stays up for what follows. The
``mount`` fixture also fails a test whose daemon logged a traceback or exited uncleanly.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from .faultproxy import FaultProxy
from .util import Mount, paths_of

pytestmark = pytest.mark.mount
MIB = 1024 * 1024


@pytest.fixture
def fault(ais_endpoint: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(ais_endpoint)
    yield proxy
    proxy.close()


@pytest.fixture
def through(mount, fault):  # type: ignore[no-untyped-def]
    """``through(bucket, *args)``: mount the bucket with the relay as the endpoint."""

    def mount_through(bucket, *args: str) -> Mount:  # type: ignore[no-untyped-def]
        return mount(f"ais://{bucket.name}", "--endpoint", fault.url, *args)  # type: ignore[no-any-return]

    return mount_through


def test_transient_errors_are_retried_unseen(make_bucket, through, fault) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(3 * MIB + 1)
    bucket = make_bucket({"d/a.bin": data, "d/b": b"b"})
    m = through(bucket)
    lists = fault.fail("GET", f"/v1/buckets/{bucket.name}", "status", times=2, status=503)
    assert sorted(os.listdir(m.path / "d")) == ["a.bin", "b"]
    assert lists.hits == 2
    gets = fault.fail("GET", "/v1/objects/", "status", times=2, status=503)
    assert (m.path / "d" / "a.bin").read_bytes() == data
    assert gets.hits == 2
    resets = fault.fail("GET", "/v1/objects/", "reset", times=2)
    assert (m.path / "d" / "b").read_bytes() == b"b"
    assert resets.hits == 2


def test_a_lookup_and_its_reads_go_straight_to_the_target(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    # The cluster map (relayed, its target URLs pointing at the relay) names the object's
    # target: the lookup's HEAD and the GETs go there, none to the proxy.
    data = os.urandom(MIB + 5)
    bucket = make_bucket({"x": data})
    m = through(bucket)
    os.stat(m.path / "x")
    assert (m.path / "x").read_bytes() == data
    assert any("what=smap" in p for _, _, p in fault.routed)
    to_x = [(o, method) for o, method, p in fault.routed if f"/{bucket.name}/x?" in p]
    assert {method for _, method in to_x} == {"HEAD", "GET"}, to_x
    assert all(o != fault.upstream for o, _ in to_x), to_x


@pytest.mark.expect_log(r"WARNING aisfs\.fs: read\(.*ais://[^ ]+/x: ReadTimeout")
def test_a_stalled_read_is_eio_in_bounded_time_and_the_mount_stays_up(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    data = os.urandom(MIB)
    bucket = make_bucket({"x": data})
    m = through(bucket, "--read-timeout", "1", "--retries", "1")
    os.stat(m.path / "x")
    stall = fault.fail("GET", "/v1/objects/", "stall", times=100)
    started = time.monotonic()
    with pytest.raises(OSError) as info:
        (m.path / "x").read_bytes()
    assert info.value.errno == errno.EIO
    assert time.monotonic() - started < 20
    assert stall.hits >= 2  # the first try and its retry
    assert f"ais://{bucket.name}/x" in m.log()
    fault.clear()
    assert (m.path / "x").read_bytes() == data


def test_a_body_cut_short_is_received_again(make_bucket, through, fault) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(2 * MIB + 3)
    bucket = make_bucket({"y": data})
    m = through(bucket, "--log-level", "debug")
    os.stat(m.path / "y")
    cut = fault.fail("GET", "/v1/objects/", "cut", times=2)
    assert (m.path / "y").read_bytes() == data  # and nothing logged at WARNING (the log rule)
    assert cut.hits == 2
    assert re.search(r"DEBUG aisfs\.transport: get_range ais://[^ ]+/y: reading body failed: .*; "
                     r"retry 1", m.log())


def test_get_batch_replies_cut_short_leave_their_files_to_the_usual_reads(  # type: ignore[no-untyped-def]
    make_bucket, through, fault, tmp_path
) -> None:
    # A directory copied in listing order is fetched by Get-Batch; every reply breaks off
    # half-way. The files it did not deliver are read one by one: every byte right, no error.
    files = {f"d/f{i:03d}": os.urandom(64 * 1024 + i) for i in range(120)}
    bucket = make_bucket(files)
    m = through(bucket)
    cut = fault.fail("GET", "/v1/ml/moss/", "cut", times=1000)
    subprocess.run(["cp", "-r", str(m.path / "d"), str(tmp_path / "out")], check=True,
                   timeout=120)
    for key, data in files.items():
        assert (tmp_path / "out" / key[2:]).read_bytes() == data, key
    assert cut.hits >= 1
    one_by_one = {p.split("?")[0] for method, p in fault.log
                  if method == "GET" and p.startswith(f"/v1/objects/{bucket.name}/d/f")}
    assert one_by_one, "no file was read on its own after a cut reply"


@pytest.mark.expect_log(
    r"WARNING aisfs\.fs: read\(\d+, \d+, \d+\): ais://[^ ]+/z: reading body failed")
def test_a_body_cut_short_every_time_is_eio_after_the_retries(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    data = os.urandom(100 * 1024)  # one GET for each FUSE read
    bucket = make_bucket({"z": data})
    m = through(bucket, "--retries", "2")
    os.stat(m.path / "z")
    cut = fault.fail("GET", "/v1/objects/", "cut", times=100)
    with pytest.raises(OSError) as info:
        (m.path / "z").read_bytes()
    assert info.value.errno == errno.EIO
    # Each read: one try on the trio thread (inline), then the transport's try and two more.
    assert cut.hits % 4 == 0 and cut.hits >= 4
    warnings = [line for line in m.log().splitlines() if " WARNING " in line]
    assert len(warnings) == cut.hits // 4, warnings  # one line for each failed read
    fault.clear()
    assert (m.path / "z").read_bytes() == data


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/doomed\.bin: write failed, "
                        r"failing this file handle from now on: .*/doomed\.bin: injected "
                        r".*\(HTTP 500\)")
def test_a_part_that_keeps_failing_reaches_the_writer_and_leaves_nothing(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    bucket = make_bucket()
    m = through(bucket, "--write-part-size", "1M", "--retries", "1")
    fault.fail("PUT", "partNumber=", "status", times=100, status=500)
    with pytest.raises(OSError) as info:
        with open(m.path / "doomed.bin", "wb") as f:
            for _ in range(4):
                f.write(os.urandom(MIB))
    assert info.value.errno == errno.EIO
    # One line: the write, flush and release that failed with it later log it at DEBUG only.
    warnings = [line for line in m.log().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and "doomed.bin: write failed" in warnings[0], warnings
    assert not [e.name for e in bucket.list_all_objects()]  # nothing visible in AIS
    fault.clear()
    (m.path / "after.bin").write_bytes(b"fine")  # the mount goes on
    assert bucket.object("after.bin").get_reader().read_all() == b"fine"


@pytest.mark.expect_log(r"WARNING aisfs\.\w+: ais://[^ ]+/t/d00/: recursive listing failed")
def test_a_tree_walk_lists_one_by_one_when_recursive_listings_fail(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    objects = {f"t/d{i:02}/s{j}/f": b"x" for i in range(12) for j in range(2)}
    bucket = make_bucket(objects)
    m = through(bucket)
    refused = fault.fail("GET", f"/v1/buckets/{bucket.name}", "status", status=400,
                         times=1000, body_contains=b'"start_after"')
    found = {os.path.relpath(os.path.join(d, n), m.path)
             for d, dirs, files in os.walk(m.path) for n in dirs + files}
    assert found == paths_of(objects)
    assert refused.hits == 1  # then the bucket is listed directory by directory
    assert "recursive listing failed" in m.log()


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/lost\.bin: write failed")
def test_a_refused_part_is_sent_again_a_failed_completion_fails_close_and_leaves_nothing(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    bucket = make_bucket()
    m = through(bucket, "--write-part-size", "1M", "--retries", "1")
    data = os.urandom(3 * MIB + 5)
    once = fault.fail("PUT", "partNumber=2", "status", times=1, status=500)
    (m.path / "kept.bin").write_bytes(data)  # the refused part was sent again
    assert once.hits == 1
    assert bucket.object("kept.bin").get_reader().read_all() == data
    fault.fail("POST", "/v1/objects/", "reset", times=100, body_contains=b'"mpt-complete"')
    with pytest.raises(OSError) as info:
        (m.path / "lost.bin").write_bytes(data)
    assert info.value.errno == errno.EIO
    assert [e.name for e in bucket.list_all_objects()] == ["kept.bin"]


@pytest.mark.expect_log(r"WARNING aisfs\.fs: lookup\(.*ais://[^ ]+/d/?: .*\(HTTP 500\)")
def test_an_error_is_never_remembered_as_no_such_file(make_bucket, through, fault) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket({"d/f": b"f"})
    m = through(bucket, "--retries", "1")
    fault.fail("", f"/v1/buckets/{bucket.name}", "status", times=100, status=500)
    fault.fail("HEAD", "/v1/objects/", "status", times=100, status=500)
    with pytest.raises(OSError) as info:
        os.stat(m.path / "d" / "f")
    assert info.value.errno == errno.EIO
    fault.clear()
    assert (m.path / "d" / "f").read_bytes() == b"f"  # at once: no negative entry was kept


@pytest.mark.expect_log(r"WARNING aisfs\.fs: readdir\(\d+, \d+\): ais://[^ ]+/big/: .*\(HTTP 500\)")
def test_a_listing_that_fails_midway_is_eio_and_not_cached(make_bucket, through, fault) -> None:  # type: ignore[no-untyped-def]
    objects = {f"big/{i:04}": b"" for i in range(1200)}  # two pages: 1,000, then the rest
    bucket = make_bucket(objects)
    m = through(bucket, "--retries", "1")
    os.stat(m.path / "big")  # the first page comes with the lookup
    fault.fail("GET", f"/v1/buckets/{bucket.name}", "status", times=100, status=500,
               body_contains=b'"continuation_token": "big/')
    with pytest.raises(OSError) as info:
        os.listdir(m.path / "big")
    assert info.value.errno == errno.EIO
    assert "readdir(" in m.log() and "Token" not in m.log()  # the handle and offset, no repr
    fault.clear()
    assert sorted(os.listdir(m.path / "big")) == sorted(k[4:] for k in objects)


@pytest.mark.expect_log(r"WARNING aisfs\.write_target: ais://[^ ]+/log: write failed")
def test_an_append_whose_answer_is_lost_is_not_sent_twice(make_bucket, through, fault) -> None:  # type: ignore[no-untyped-def]
    old = os.urandom(1000)
    bucket = make_bucket({"log": old})
    m = through(bucket, "--write-part-size", "1M")
    lost = fault.fail("PUT", "append_type=append", "lose", times=1)
    with pytest.raises(OSError) as info:
        with open(m.path / "log", "ab") as f:  # O_APPEND continues the object: AIS's append
            f.write(os.urandom(3 * MIB))
    # AIS appended the part (its answer was lost): sending it again would double it, so the
    # writer hears of it instead, and the object keeps its old content.
    assert info.value.errno == errno.EIO
    assert lost.hits == 1
    assert bucket.object("log").get_reader().read_all() == old


def test_a_part_or_a_completion_whose_answer_is_lost_is_not_sent_twice(  # type: ignore[no-untyped-def]
    make_bucket, through, fault
) -> None:
    # AIS took the part (or completed the upload), the relay lost its answer: the part is
    # found in AIS's list of the upload's parts (a second copy would destroy it), the
    # completion is found done.
    bucket = make_bucket()
    m = through(bucket, "--write-part-size", "1M", "--write-part-max", "1M")
    data = os.urandom(5 * MIB + 3)
    part = fault.fail("PUT", "partNumber=2", "lose", times=1)
    done = fault.fail("POST", "/v1/objects/", "lose", times=1, body_contains=b'"mpt-complete"')
    (m.path / "sure.bin").write_bytes(data)
    assert (part.hits, done.hits) == (1, 1)
    assert bucket.object("sure.bin").get_reader().read_all() == data
    assert sum(1 for method, path in fault.log if "partNumber=2" in path) == 1

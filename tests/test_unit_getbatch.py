"""aisfs/getbatch.py on canned replies: TARs written by Python's tarfile (an independent writer)
in USTAR, PAX and GNU formats, and the ways AIS's reply can end or break."""

from __future__ import annotations

import io
import json
import random
import tarfile

import pytest

from aisfs import errors
from aisfs.getbatch import (
    MISSING_PREFIX,
    BatchItem,
    NotFetched,
    member_range_request,
    read_batch,
    request_body,
)


def make_tar(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT,
             end: bool = True) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    raw = out.getvalue()
    if not end:  # cut the end-of-archive marker and tarfile's record padding
        raw = raw.rstrip(b"\0")
        raw += b"\0" * (-len(raw) % 512)
    return raw


class Trickle:
    """A stream that hands out at most ``step`` bytes per readinto (as sockets do)."""

    def __init__(self, data: bytes, step: int = 1 << 20, fail_at: int = -1) -> None:
        self.data = data
        self.pos = 0
        self.step = step
        self.fail_at = fail_at
        self.calls = 0

    def readinto(self, buf: memoryview) -> int:
        self.calls += 1
        if 0 <= self.fail_at <= self.pos:
            raise errors.Transient("connection reset", 0, "test")
        n = min(len(buf), self.step, len(self.data) - self.pos)
        if 0 <= self.fail_at < self.pos + n:
            n = self.fail_at - self.pos
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def collect(data: bytes, names: list[str], *, step: int = 1 << 20, max_size: int = 1 << 30,
            fail_at: int = -1) -> list[BatchItem]:
    return list(read_batch(Trickle(data, step, fail_at), "bk", names, max_size=max_size))


def test_request_body() -> None:
    doc = json.loads(request_body(["a", "b/c", "\u00fc x"]))
    assert doc == {"mime": ".tar", "in": [{"objname": "a"}, {"objname": "b/c"},
                                         {"objname": "\u00fc x"}],
                   "coer": True, "onob": True, "strm": True}
    with pytest.raises(ValueError):
        request_body([])


NAMES = ["a", "dir/b c%20?#", "\u00fcn\u00efc\u00f8d\u00e9/\u65e5\u672c.txt",
         "x" * 150 + "/" + "y" * 80, "z" * 250, "d/" * 70 + "leaf", "empty"]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("step", [1, 7, 512, 1 << 20])
def test_members_in_order_every_format(fmt: int, step: int) -> None:
    names = NAMES if fmt != tarfile.USTAR_FORMAT else [n for n in NAMES if n.isascii()
                                                       and len(n) < 100]
    rng = random.Random(len(names) + step)
    members = [(n, rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000]))) for n in names]
    members[-1] = ("empty", b"")
    items = collect(make_tar(members, fmt), names, step=step)
    assert [i.index for i in items] == list(range(len(names)))
    for item, (name, data) in zip(items, members, strict=True):
        assert item.name == name and item.error is None
        assert item.data is not None and bytes(item.data) == data


def test_missing_members_are_not_found_and_others_still_served() -> None:
    names = ["a", "gone", "b", "also/gone"]
    raw = make_tar([("a", b"1" * 600), (MISSING_PREFIX + "gone", b""), ("b", b"22"),
                    (MISSING_PREFIX + "also/gone", b"")])
    items = collect(raw, names, step=100)
    assert [bytes(i.data) if i.data is not None else None for i in items] == [
        b"1" * 600, None, b"22", None]
    for i in (1, 3):
        err = items[i].error
        assert isinstance(err, errors.NotFound) and not isinstance(err, NotFetched)
        assert err.what == f"ais://bk/{names[i]}"


def test_early_clean_end_leaves_the_rest_not_fetched() -> None:
    # AIS ends a streamed batch cleanly (end marker, HTTP 200) after too many missing objects.
    names = [f"m{i}" for i in range(12)] + ["real"]
    raw = make_tar([(MISSING_PREFIX + f"m{i}", b"") for i in range(9)])
    items = collect(raw, names)
    assert len(items) == len(names)
    assert all(isinstance(i.error, errors.NotFound) for i in items[:9])
    for item in items[9:]:
        assert isinstance(item.error, NotFetched) and not isinstance(item.error, errors.NotFound)
        assert "ended before" in str(item.error)


def test_end_without_marker_is_an_end() -> None:
    raw = make_tar([("a", b"abc")], end=False)
    items = collect(raw, ["a", "b"])
    assert bytes(items[0].data or b"") == b"abc"
    assert isinstance(items[1].error, NotFetched)


def test_stream_cut_in_a_member_or_a_header() -> None:
    # Layout: a's header at 0, its data at 512..1512, padding to 1536; b at 1536, c at 3072.
    raw = make_tar([("a", b"A" * 1000), ("b", b"B" * 1000), ("c", b"C")])
    for cut, served in ((700, 0), (1520, 1), (1536 + 100, 1), (2048 + 300, 1), (3072 + 10, 2),
                        (3584, 2)):
        items = collect(raw[:cut], ["a", "b", "c"])
        assert [i.error is None for i in items] == [True] * served + [False] * (3 - served)
        assert all(isinstance(i.error, NotFetched) for i in items[served:])


def test_stream_error_becomes_not_fetched_for_the_rest() -> None:
    raw = make_tar([("a", b"A" * 100), ("b", b"B" * 5000), ("c", b"C")])
    items = collect(raw, ["a", "b", "c"], step=64, fail_at=2000)
    assert bytes(items[0].data or b"") == b"A" * 100
    assert all(isinstance(i.error, NotFetched) for i in items[1:])
    assert "connection reset" in str(items[1].error)


def test_reply_out_of_order_or_corrupt() -> None:
    raw = make_tar([("a", b"1"), ("c", b"3"), ("b", b"2")])
    items = collect(raw, ["a", "b", "c"])
    assert items[0].error is None
    assert all(isinstance(i.error, NotFetched) and "expected 'b'" in str(i.error)
               for i in items[1:])
    corrupt = bytearray(make_tar([("a", b"1"), ("b", b"2")]))
    corrupt[1024 + 5] ^= 0x01  # second header's name: checksum no longer matches
    items = collect(bytes(corrupt), ["a", "b"])
    assert items[0].error is None and "checksum" in str(items[1].error)


def test_member_over_max_size_is_skipped_not_held() -> None:
    raw = make_tar([("small", b"s" * 10), ("big", b"B" * 300_000), ("after", b"z")])
    items = collect(raw, ["small", "big", "after"], max_size=1000, step=4096)
    assert bytes(items[0].data or b"") == b"s" * 10
    assert items[1].data is None and isinstance(items[1].error, NotFetched)
    assert "300000 bytes" in str(items[1].error)
    assert bytes(items[2].data or b"") == b"z"


def test_member_of_another_size_than_expected_is_not_served() -> None:
    raw = make_tar([("same", b"s" * 10), ("grew", b"g" * 5000), ("shrank", b""), ("z", b"z")])
    items = list(read_batch(Trickle(raw, 300), "bk", ["same", "grew", "shrank", "z"],
                            max_size=1 << 20, sizes=[10, 100, 7, 1]))
    assert bytes(items[0].data or b"") == b"s" * 10 and bytes(items[3].data or b"") == b"z"
    for item in items[1:3]:
        assert item.data is None and isinstance(item.error, NotFetched)
        assert "changed" in str(item.error)


def test_buffer_for_fills_caller_buffers() -> None:
    raw = make_tar([("a", b"A" * 700), ("b", b""), ("c", b"C" * 3)])
    pool = [bytearray(1024) for _ in range(3)]
    asked: list[tuple[int, int]] = []

    def buffer_for(index: int, size: int) -> bytearray:
        asked.append((index, size))
        return pool[index]

    items = list(read_batch(Trickle(raw, 100), "bk", ["a", "b", "c"], max_size=4096,
                            buffer_for=buffer_for))
    assert asked == [(0, 700), (1, 0), (2, 3)]
    assert items[0].data is not None and items[0].data.obj is pool[0]
    assert bytes(pool[0][:700]) == b"A" * 700 and bytes(items[2].data or b"") == b"CCC"
    with pytest.raises(ValueError, match="buffer_for gave"):
        list(read_batch(Trickle(raw), "bk", ["a"], max_size=4096,
                        buffer_for=lambda i, n: bytearray(10)))


def test_items_arrive_before_the_stream_ends() -> None:
    """Each item is yielded once its member is read, not after the whole reply."""
    raw = make_tar([(f"o{i}", bytes([i]) * 2000) for i in range(5)])
    stream = Trickle(raw, 512)
    gen = read_batch(stream, "bk", [f"o{i}" for i in range(5)], max_size=1 << 20)
    first = next(gen)
    assert first.name == "o0" and stream.pos < 3 * 2560
    assert len(list(gen)) == 4


def test_not_read_past_the_last_member() -> None:
    # AIS sends the end-of-archive marker ~100 ms after the last member: no waiting for it.
    raw = make_tar([("a", b"1" * 700)])
    stream = Trickle(raw + b"\0" * 4096)
    items = list(read_batch(stream, "bk", ["a"], max_size=1000))
    assert bytes(items[0].data or b"") == b"1" * 700 and stream.pos == 512 + 700


def test_base256_size_and_gnu_long_names() -> None:
    from aisfs.getbatch import _number
    assert _number(memoryview(b"\x80" + (5 << 40).to_bytes(11, "big"))) == 5 << 40
    assert _number(memoryview(b"0000000001751\0")) == 0o1751
    raw = make_tar([("n" * 300, b"long")], fmt=tarfile.GNU_FORMAT)
    assert bytes(collect(raw, ["n" * 300])[0].data or b"") == b"long"


def test_member_range_request() -> None:
    body = member_range_request("d/s.tar", "m/x.bin", 4096, 65536)
    assert body["in"] == [{"objname": "d/s.tar", "archpath": "m/x.bin", "start": 4096,
                           "length": 65536}]
    assert body["strm"] and body["onob"] and body["mime"] == ".tar"
    for start, length in ((0, 0), (-1, 10), (5, -1)):
        with pytest.raises(ValueError):
            member_range_request("s.tar", "m", start, length)

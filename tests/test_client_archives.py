"""Archive calls of aisfs/client.py (member listing, archpath GET, Get-Batch member ranges) against
the real local AIS cluster, with shards built here by tarfile, zipfile and lz4."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

import pytest

from aisfs import errors, getbatch
from aisfs.archives import contents_from_listing
from aisfs.client import AisClient
from aisfs.config import ClientConfig
from aisfs.getbatch import MIN_BATCH_RANGE
from aisfs.routing import Via

from .shards import FORMATS, shard

BIG = bytes((i * 7 + i // 251) % 256 for i in range(3_000_001))
MEMBERS = {"a.txt": b"hello", "d/b.bin": bytes(range(256)) * 4, "d/e/empty": b"",
           "big.bin": BIG}



READ_TIMEOUT = 3.0


@pytest.fixture
def client(ais_endpoint: str) -> Iterator[AisClient]:
    c = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, retry_backoff=0.05,
                               read_timeout=READ_TIMEOUT))
    yield c
    c.close()


@pytest.fixture(scope="module")
def shards(sdk) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """One bucket with a shard of MEMBERS in every format, plus broken ones."""
    bucket = sdk.bucket(f"arch-{random.getrandbits(40):010x}")
    bucket.create(exist_ok=True)
    good = shard(".tar", {"a.txt": b"a" * 5000, "b.txt": b"b" * 5000})
    objects = {f"s{ext}": shard(ext, MEMBERS) for ext in FORMATS}
    objects.update({
        "s.tar.idx": b"a sibling that is not an archive",
        "bad/trunc.tar": good[:1500],
        "bad/garbage.tar": b"not a tar" * 300,
        "bad/garbage.tgz": b"not gzip" * 300,
        "bad/trunc.zip": shard(".zip", {"a.txt": random.randbytes(5000)})[:2000],
        "bad/tar-named.zip": good,
        "bad/garbage.tar.lz4": b"not lz4" * 10,
    })
    for key, data in objects.items():
        bucket.object(key).get_writer().put_content(data)
    yield bucket.name
    bucket.delete(missing_ok=True)


@pytest.mark.parametrize("ext", FORMATS)
def test_list_archive_members(client: AisClient, shards: str, ext: str) -> None:
    raw = client.list_archive(shards, f"s{ext}")
    assert [e["name"] for e in raw] == [f"s{ext}"] + [f"s{ext}/{m}" for m in sorted(MEMBERS)]
    c = contents_from_listing(shards, f"s{ext}", raw)
    assert c.readable and c.members == len(MEMBERS)
    for name, data in MEMBERS.items():
        member = c.find(name)
        assert member is not None and getattr(member, "size", None) == len(data), name


@pytest.mark.parametrize("ext", FORMATS)
def test_get_member_whole(client: AisClient, shards: str, ext: str) -> None:
    for name, data in MEMBERS.items():
        assert bytes(client.get_member(shards, f"s{ext}", name)) == data, name
    into = bytearray(len(BIG) + 10)
    view = client.get_member(shards, f"s{ext}", "big.bin", into)
    assert view.obj is into and bytes(view) == BIG
    with pytest.raises(errors.NotFound):
        client.get_member(shards, f"s{ext}", "nope")


@pytest.mark.parametrize("ext", FORMATS)
def test_get_member_range(client: AisClient, shards: str, ext: str) -> None:
    rng = random.Random(ext)
    spans = [(0, MIN_BATCH_RANGE), (len(BIG) - MIN_BATCH_RANGE, MIN_BATCH_RANGE),
             (1_000_000, 1_048_576), (len(BIG) - 1, 1)]
    spans += [(s, MIN_BATCH_RANGE) for s in rng.sample(range(len(BIG) - MIN_BATCH_RANGE), 3)]
    for start, length in spans:
        into = bytearray(length)
        view = client.get_member_range(shards, f"s{ext}", "big.bin", start, length, into)
        assert view.obj is into and bytes(view) == BIG[start:start + length], (start, length)


def test_get_member_range_of_missing_member(client: AisClient, shards: str) -> None:
    # AIS answers with a __404__ entry or (about as often) with an empty stream.
    for key, member in (("s.tar", "nope"), ("no-such.tar", "a.txt")):
        started = time.monotonic()
        with pytest.raises((errors.NotFound, getbatch.NotFetched)):
            client.get_member_range(shards, key, member, 0, MIN_BATCH_RANGE)
        assert time.monotonic() - started < 2


def test_range_header_refused_with_archpath(client: AisClient, shards: str) -> None:
    # Why member ranges go through Get-Batch: AIS refuses a Range header with archpath.
    resp = client.transport.session.get(f"{client.config.endpoint}/v1/objects/{shards}/s.tar",
                              params={"provider": "ais", "archpath": "a.txt"},
                              headers={"Range": "bytes=1-2"}, timeout=10)
    assert resp.status_code == 400 and "range" in resp.text


@pytest.mark.parametrize("key", [
    "bad/trunc.tar", "bad/garbage.tar", "bad/garbage.tgz", "bad/trunc.zip", "bad/tar-named.zip",
    "bad/garbage.tar.lz4",
])
def test_unreadable_archives(client: AisClient, shards: str, key: str) -> None:
    started = time.monotonic()
    c = contents_from_listing(shards, key, client.list_archive(shards, key))
    assert not c.readable and c.members == 0 and c.size > 0
    with pytest.raises(errors.BadArchive) as info:
        client.get_member(shards, key, "a.txt")
    assert info.value.errno == 5 and key in str(info.value)
    assert time.monotonic() - started < 2
    # Get-Batch: an error entry, an early end, or (a truncated tar, now and then) a reply that
    # stops without ending: the read timeout ends that one.
    started = time.monotonic()
    with pytest.raises((errors.BadArchive, errors.NotFound, errors.Transient)):
        client.get_member_range(shards, key, "a.txt", 0, MIN_BATCH_RANGE)
    assert time.monotonic() - started < READ_TIMEOUT + 2


def test_list_archive_stops_at_the_members_end(
    client: AisClient, shards: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two pages of the bucket: the listing stops after the first name past "s.tar/".
    sent: list[dict[str, object]] = []
    request: Callable[..., object] = client.transport.call

    def spy(*args: object, **kwargs: object) -> object:
        sent.append(kwargs["json_body"])  # type: ignore[arg-type]
        return request(*args, **kwargs)

    monkeypatch.setattr(client.transport, "call", spy)
    raw = client.list_archive(shards, "s.tar")
    assert [e["name"] for e in raw][-1] == "s.tar/d/e/empty"
    assert len(sent) == 1


def test_list_archive_of_ten_thousand_members(client: AisClient, sdk) -> None:  # type: ignore[no-untyped-def]
    bucket = sdk.bucket(f"arch-{random.getrandbits(40):010x}")
    bucket.create(exist_ok=True)
    try:
        members = {f"m/{i:06d}.bin": str(i).encode() for i in range(10_001)}
        bucket.object("many.tar").get_writer().put_content(shard(".tar", members))
        raw = client.list_archive(bucket.name, "many.tar")  # AIS's pages hold 10,000 entries
        c = contents_from_listing(bucket.name, "many.tar", raw)
        assert c.members == 10_001
        assert c.find("m/010000.bin") is not None and c.find("m/000000.bin") is not None
    finally:
        bucket.delete(missing_ok=True)


def test_members_after_the_first_go_straight_to_the_target(ais_endpoint: str,
                                                           shards: str) -> None:
    # Routed through the proxy (--via-proxy), the proxy's redirect for the first member is
    # remembered for the archive: the next members skip the proxy (measured on the shared
    # cluster: median per member 11.5 -> 5.4 ms). Routed directly, members go to the archive's
    # computed target from the first.
    client = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, via_proxy=True))
    url = client.object_url(shards, "s.tgz")
    assert client.transport.router.target(Via.READ, url) is None
    assert bytes(client.get_member(shards, "s.tgz", "a.txt")) == MEMBERS["a.txt"]
    target = client.transport.router.target(Via.READ, url)
    assert target is not None and "archpath" not in target
    assert bytes(client.get_member(shards, "s.tgz", "d/b.bin")) == MEMBERS["d/b.bin"]
    client.close()

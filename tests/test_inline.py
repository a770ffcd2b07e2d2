"""aisfs/inline.py against the real cluster: small ranges read by the trio thread, straight
from the object's target, give exactly what the threaded client gives; every case it must not
answer (no usable target, a 404 or 416, a target gone, a token file due for its check) is handed
back as None, quickly, for the threaded path."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from aisfs.auth import TokenSource, TokenSpec
from aisfs.client import AisClient
from aisfs.config import ClientConfig
from aisfs.inline import INLINE_MAX, InlineRequests
from aisfs.objects import ObjectProps, RangeResult
from aisfs.routing import Via
from aisfs.trioconn import TrioConnections


@pytest.fixture
def client(ais_endpoint: str) -> Iterator[AisClient]:
    c = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, retry_backoff=0.05))
    yield c
    c.close()


def reads_of(client: AisClient) -> InlineRequests:
    return InlineRequests(client, TrioConnections(2.0, 5.0, 4))


def inline(reads: InlineRequests, bucket: str, key: str, start: int, length: int
           ) -> RangeResult | None:
    async def run() -> RangeResult | None:
        return await reads.get_range(bucket, key, start, length, bytearray(length))
    return trio.run(run)


def test_small_ranges_match_the_threaded_client(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    sizes = [1, 4096, 65536, 300_001]
    data = {f"d/é {n}": os.urandom(n) for n in sizes}
    b = make_bucket(data)
    client.head_object(b.name, "d/é 1")  # fetches the cluster map
    reads = reads_of(client)
    for key, content in data.items():
        for start, length in [(0, len(content)), (0, len(content) + 1000),
                              (len(content) // 2, 7)]:
            got = inline(reads, b.name, key, start, length)
            assert got is not None, (key, start, length)
            want = client.get_range(b.name, key, start, length)
            assert bytes(got.data) == content[start:start + length] == bytes(want.data)
            assert (got.total_size, got.version) == (want.total_size, want.version)
    reads.conns.close()


def test_what_it_cannot_answer_is_handed_back(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"x": b"0123456789"})
    client.head_object(b.name, "x")
    reads = reads_of(client)
    assert inline(reads, b.name, "missing", 0, 10) is None  # 404 from the computed target
    assert inline(reads, b.name, "x", 10, 5) is None  # 416: the threaded path answers it
    assert inline(reads, b.name, "x", 0, INLINE_MAX + 1) is None  # a big file's part
    assert inline(reads, b.name, "x", 0, 10) is not None
    reads.conns.close()


def test_without_a_usable_target_nothing_is_sent(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"x": b"0123456789"})
    via_proxy = AisClient(ClientConfig(endpoint=ais_endpoint, via_proxy=True))
    via_proxy.list_buckets()  # (a request, but no object's target learnt from the proxy)
    assert inline(reads_of(via_proxy), b.name, "x", 0, 10) is None
    via_proxy.head_object(b.name, "x")  # the proxy's redirect names the target: used inline
    assert inline(reads_of(via_proxy), b.name, "x", 0, 10) is not None
    via_proxy.close()
    fresh = AisClient(ClientConfig(endpoint=ais_endpoint))  # no cluster map fetched yet
    assert inline(reads_of(fresh), b.name, "x", 0, 10) is None
    fresh.close()


def test_a_target_that_is_gone_is_handed_back_at_once(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"x": b"0123456789"})
    client.head_object(b.name, "x")
    with socket.create_server(("127.0.0.1", 0)) as s:
        dead = s.getsockname()[1]
    url = client.object_url(b.name, "x")
    client.transport.router.learned(Via.READ, url, f"http://127.0.0.1:{dead}"
                                    f"{url[url.find('/v1/'):]}", ())
    started = time.monotonic()
    assert inline(reads_of(client), b.name, "x", 0, 10) is None
    assert time.monotonic() - started < 2
    assert bytes(client.get_range(b.name, "x", 0, 10).data) == b"0123456789"


def test_a_token_file_due_for_its_check_is_not_read_on_the_trio_thread(  # type: ignore[no-untyped-def]
    ais_endpoint: str, make_bucket, tmp_path: Path
) -> None:
    b = make_bucket({"x": b"0123456789"})
    token_file = tmp_path / "token"
    token_file.write_text("tok-xyz")
    now = [100.0]
    source = TokenSource(TokenSpec("file", str(token_file)), {}, clock=lambda: now[0],
                         interval=1.0)
    source.load()
    c = AisClient(ClientConfig(endpoint=ais_endpoint), source)
    c.head_object(b.name, "x")
    assert c.transport.headers_without_io() == {"Authorization": "Bearer tok-xyz"}
    now[0] += 5  # the file's check is due: only the threaded path may do it
    assert c.transport.headers_without_io() is None
    assert inline(reads_of(c), b.name, "x", 0, 10) is None
    c.close()


def test_tls_and_environment_proxies_stay_on_the_threaded_path(
    ais_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = AisClient(ClientConfig(endpoint=ais_endpoint))
    assert c.transport.plain_http("http://127.0.0.1:1")
    assert not c.transport.plain_http("https://127.0.0.1:1")
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    c2 = AisClient(dataclasses.replace(ClientConfig(endpoint=ais_endpoint)))
    assert not c2.transport.plain_http("http://10.1.2.3:8081")
    c.close()
    c2.close()


def put(reads: InlineRequests, bucket: str, key: str, data: bytes,
        custom: dict[str, bytes] | None = None) -> ObjectProps | None:
    async def run() -> ObjectProps | None:
        return await reads.put_object(bucket, key, data, custom)
    return trio.run(run)


def test_small_puts_go_straight_to_the_target(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"seed": b"s"})
    client.head_object(b.name, "seed")
    reads = reads_of(client)
    data = {f"w/ü {n}": os.urandom(n) for n in (0, 1, 4096, 200_000)}
    for key, content in data.items():
        props = put(reads, b.name, key, content, {"aisfs-mtime": b"1234"})
        assert props is not None and props.size == len(content) and props.version, key
    for key, content in data.items():
        obj = b.object(key)
        assert obj.get_reader().read_all() == content
        assert client.head_object(b.name, key).custom == {"aisfs-mtime": b"1234"}
    # What HTTP cannot carry, and what is too big, go the threaded way.
    assert put(reads, b.name, "bad", b"x", {"k": b"a\r\nb"}) is None
    assert put(reads, b.name, "big", b"x" * (INLINE_MAX + 1)) is None
    reads.conns.close()

"""aisfs/getbatch.py against the real local cluster: the request it builds and its reading of the
TAR AIS streams back, contents checked against what the aistore SDK wrote."""

from __future__ import annotations

import http.client
import random
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from aisfs import errors
from aisfs.getbatch import NotFetched, read_batch, request_body


class _Body:
    """An http.client reply as getbatch's stream: its failures become AisError."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.resp = resp

    def readinto(self, buf: memoryview) -> int:
        try:
            return self.resp.readinto(buf)
        except (OSError, http.client.HTTPException) as exc:
            raise errors.Transient(str(exc), 0, "get-batch") from None


def _conn(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)


@contextmanager
def get_batch(endpoint: str, bucket: str, names: list[str]) -> Iterator[_Body]:
    """Send a Get-Batch the way AIS wants it: to the proxy, then the same body to the target it
    redirects to."""
    body = request_body(names)
    headers = {"Content-Type": "application/json"}
    proxy = _conn(endpoint)
    proxy.request("GET", f"/v1/ml/moss/{urllib.parse.quote(bucket)}?provider=ais", body=body,
                  headers=headers)
    resp = proxy.getresponse()
    resp.read()
    assert resp.status == 307, resp.status
    location = urllib.parse.urlsplit(resp.getheader("Location") or "")
    proxy.close()
    target = _conn(location.geturl())
    target.request("GET", f"{location.path}?{location.query}", body=body, headers=headers)
    reply = target.getresponse()
    assert reply.status == 200 and reply.getheader("Content-Type") == "application/x-tar"
    try:
        yield _Body(reply)
    finally:
        target.close()


def test_batch_of_odd_names_with_missing_ones(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(5)
    objects = {
        "plain": rng.randbytes(70_000),
        "dir/with space/100% ?q=#f": rng.randbytes(513),
        "\u00fcn\u00efc\u00f8d\u00e9/\u65e5\u672c\u8a9e \U0001f600.bin": rng.randbytes(1),
        "long/" + "n" * 200 + "/" + "m" * 150: rng.randbytes(4096),
        "d/" * 60 + "deep": rng.randbytes(100),
        "empty": b"",
    }
    b = make_bucket(objects)
    names = list(objects)
    names.insert(2, "missing-1")
    names.append("missing/2")
    with get_batch(ais_endpoint, b.name, names) as body:
        items = list(read_batch(body, b.name, names, max_size=1 << 20))
    assert [i.name for i in items] == names
    for item in items:
        if item.name.startswith("missing"):
            assert isinstance(item.error, errors.NotFound), item
            assert not isinstance(item.error, NotFetched)
        else:
            assert item.error is None, item.error
            assert item.data is not None and bytes(item.data) == objects[item.name]


def test_too_many_missing_ends_the_batch_early(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    """AIS stops a batch cleanly after get_batch.max_soft_errs (default 8) missing objects:
    what follows is "not fetched", never "missing"."""
    b = make_bucket({"real": b"data"})
    names = [f"gone{i}" for i in range(20)] + ["real"]
    with get_batch(ais_endpoint, b.name, names) as body:
        items = list(read_batch(body, b.name, names, max_size=1 << 20))
    assert len(items) == len(names)
    missing = [i for i in items if isinstance(i.error, errors.NotFound)]
    not_fetched = [i for i in items if isinstance(i.error, NotFetched)]
    assert len(missing) + len(not_fetched) == len(names) and missing and not_fetched
    assert items[-1].name == "real" and isinstance(items[-1].error, NotFetched)
    assert all(i.index < not_fetched[0].index for i in missing)  # a prefix, in order


@pytest.mark.slow
def test_large_batch_in_order(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(11)
    objects = {f"set/{i:05d}-{rng.randrange(10**6)}": rng.randbytes(rng.randrange(0, 20_000))
               for i in range(600)}
    b = make_bucket(objects)
    names = list(objects)
    rng.shuffle(names)  # any order: the reply follows the request's
    pool = [bytearray(20_000) for _ in range(2)]
    with get_batch(ais_endpoint, b.name, names) as body:
        for item in read_batch(body, b.name, names, max_size=20_000,
                               buffer_for=lambda i, n: pool[i % 2]):
            assert item.name == names[item.index]
            assert item.data is not None and bytes(item.data) == objects[item.name]


# ---------------------------------------------------------------------- the AIS API and aio


def test_client_get_batch(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    from aisfs.client import AisClient
    from aisfs.config import ClientConfig

    rng = random.Random(3)
    objects = {f"d/{i:03d} x%": rng.randbytes(rng.randrange(0, 70_000)) for i in range(40)}
    b = make_bucket(objects)
    names = list(objects)
    names.insert(5, "d/gone")
    sizes = [len(objects.get(n, b"")) for n in names]
    sizes[7] += 1  # as if the listing were older than the object
    client = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1))
    items = list(client.get_batch(b.name, names, max_size=70_000, sizes=sizes))
    assert [i.name for i in items] == names
    for i, item in enumerate(items):
        if i == 5:
            assert isinstance(item.error, errors.NotFound)
        elif i == 7:
            assert isinstance(item.error, NotFetched) and "changed" in str(item.error)
        else:
            assert item.data is not None and bytes(item.data) == objects[item.name]
    with pytest.raises(errors.BucketNotFound):
        list(client.get_batch(b.name + "-none", ["x"], max_size=10))
    client.close()


async def test_async_get_batch_delivers_in_the_trio_thread(  # type: ignore[no-untyped-def]
    ais_endpoint: str, make_bucket
) -> None:
    import threading

    import trio

    from aisfs.aio import AsyncAis
    from aisfs.client import AisClient
    from aisfs.config import ClientConfig

    objects = {f"o{i:02d}": bytes([i]) * (1000 * i) for i in range(30)}
    b = make_bucket(objects)
    ais = AsyncAis(AisClient(ClientConfig(endpoint=ais_endpoint, retries=1)))
    got: list[tuple[str, bytes]] = []
    trio_thread = threading.current_thread()

    def deliver(item) -> None:  # type: ignore[no-untyped-def]
        assert threading.current_thread() is trio_thread
        assert item.data is not None
        got.append((item.name, bytes(item.data)))

    await ais.get_batch(b.name, list(objects), max_size=1 << 20, deliver=deliver)
    assert got == list(objects.items())

    # A failure of the request itself is the AIS error (not wrapped in an exception group).
    with pytest.raises(errors.BucketNotFound):
        await ais.get_batch(b.name + "-none", ["x"], max_size=10, deliver=deliver)

    # Cancelled after the first item: nothing is delivered after the cancel.
    seen: list[str] = []
    with trio.CancelScope() as scope:
        def first_then_cancel(item) -> None:  # type: ignore[no-untyped-def]
            seen.append(item.name)
            scope.cancel()

        await ais.get_batch(b.name, list(objects), max_size=1 << 20, deliver=first_then_cancel)
    await trio.sleep(0.3)  # the worker thread would deliver the rest by now
    assert seen == ["o00"]
    ais.client.close()

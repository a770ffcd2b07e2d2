"""Direct-to-target routing in the transport, against the real cluster: object requests go to
the target computed from the cluster map (counted with a spy on the transport's HTTP sends), and
every sign of a stale map sends the request to the proxy."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from aisfs import errors
from aisfs.client import AisClient
from aisfs.clustermap import ClusterMap
from aisfs.config import ClientConfig


@pytest.fixture
def client(ais_endpoint: str) -> Iterator[AisClient]:
    c = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, retry_backoff=0.05))
    yield c
    c.close()


class Spy:
    """Records each HTTP exchange the transport sends as (method, origin, path)."""

    def __init__(self, client: AisClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[str, str, str]] = []
        real = client.transport._http

        def spy(method: str, url: str, **kw: Any) -> Any:
            origin_end = url.find("/", url.find("//") + 2)
            self.sent.append((method, url[:origin_end], url[origin_end:].split("?")[0]))
            return real(method, url, **kw)

        monkeypatch.setattr(client.transport, "_http", spy)

    def origins(self) -> list[str]:
        return [o for _, o, _ in self.sent]


def _cluster(client: AisClient) -> ClusterMap:
    cluster = client.transport.router.cluster
    assert cluster is not None
    return cluster


def test_object_requests_go_to_the_computed_target(  # type: ignore[no-untyped-def]
    client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch, ais_endpoint: str
) -> None:
    b = make_bucket({f"r/{i}": bytes([i]) * (i + 1) for i in range(20)})
    spy = Spy(client, monkeypatch)
    client.head_object(b.name, "r/0")  # the first object request fetches the map
    assert spy.sent[0] == ("GET", ais_endpoint, "/v1/daemon")
    cluster = _cluster(client)
    spy.sent.clear()
    for i in range(20):
        key = f"r/{i}"
        assert client.head_object(b.name, key).size == i + 1
        assert bytes(client.get_range(b.name, key, 0, 100).data) == bytes([i]) * (i + 1)
        client.put_object(b.name, f"w/{i}", b"x" * i)
        h = client.append(b.name, f"a/{i}", "", b"ab")
        client.flush(b.name, f"a/{i}", h)
    # No object request touched the proxy: one exchange each, with the owner computed by HRW.
    assert ais_endpoint not in spy.origins(), spy.sent
    assert len(spy.sent) == 20 * 5
    for method, origin, path in spy.sent:
        key = path.split(f"/{b.name}/", 1)[1]
        owner = cluster.owner_of(b.name, key)
        assert owner is not None and owner.url == origin, (method, path)
    for i in range(20):  # what the direct writes stored is where AIS finds it
        assert b.object(f"w/{i}").get_reader().read_all() == b"x" * i
        assert b.object(f"a/{i}").get_reader().read_all() == b"ab"


def _other_target(cluster: ClusterMap, bucket: str, key: str) -> str:
    owner = cluster.owner_of(bucket, key)
    others = [t.url for t in cluster.active if owner is None or t.id != owner.id]
    return others[0]


def test_a_404_from_a_computed_target_is_asked_of_the_proxy(  # type: ignore[no-untyped-def]
    client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch, ais_endpoint: str
) -> None:
    """A map that names the wrong target (stale) costs a detour, never a wrong ENOENT; and the
    proxy's disagreement marks the map outdated."""
    b = make_bucket({"obj": b"0123456789"})
    client.head_object(b.name, "obj")
    router = client.transport.router
    cluster = _cluster(client)
    wrong = _other_target(cluster, b.name, "obj")
    monkeypatch.setattr(router, "computed",
                        lambda via, url: wrong + url[len(ais_endpoint):]
                        if "/v1/objects/" in url else None)
    spy = Spy(client, monkeypatch)
    assert client.head_object(b.name, "obj").size == 10
    assert bytes(client.get_range(b.name, "obj", 2, 3).data) == b"234"
    assert spy.origins()[:2] == [wrong, ais_endpoint]  # the stale target, then the proxy
    assert router._outdated  # the proxy's redirect disagreed with the map
    with pytest.raises(errors.NotFound):  # a missing object: the proxy's 404 is final
        client.head_object(b.name, "missing")


def test_unreachable_target_falls_back_and_refetches_the_map(  # type: ignore[no-untyped-def]
    client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch, ais_endpoint: str
) -> None:
    b = make_bucket({f"o{i}": b"v" * i for i in range(10)})
    client.head_object(b.name, "o1")
    router = client.transport.router
    cluster = _cluster(client)
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    gone = dataclasses.replace(
        cluster, active=tuple(dataclasses.replace(t, url=dead) for t in cluster.active))
    router.set_map(gone)
    spy = Spy(client, monkeypatch)
    assert client.head_object(b.name, "o3").size == 3  # refused, then through the proxy
    assert spy.origins()[0] == dead and spy.origins()[1] == ais_endpoint
    client.put_object(b.name, "new", b"data")  # the map is outdated: the proxy until refetched
    assert b.object("new").get_reader().read_all() == b"data"
    assert dead not in spy.origins()[2:]
    router._map_at -= 10  # as if MAP_RETRY had passed
    spy.sent.clear()
    assert client.head_object(b.name, "o4").size == 4
    assert spy.sent[0] == ("GET", ais_endpoint, "/v1/daemon")  # the map, fetched again
    assert spy.origins()[1] == cluster.owner_of(b.name, "o4").url  # type: ignore[union-attr]


def test_old_map_is_not_used(  # type: ignore[no-untyped-def]
    client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch, ais_endpoint: str
) -> None:
    """A map older than MAP_MAX_AGE is fetched again before it routes anything."""
    b = make_bucket({"o": b"1"})
    client.head_object(b.name, "o")
    client.transport.router._map_at -= 60
    spy = Spy(client, monkeypatch)
    client.head_object(b.name, "o")
    assert spy.sent[0] == ("GET", ais_endpoint, "/v1/daemon") and len(spy.sent) == 2


def test_via_proxy_option_sends_nothing_straight(  # type: ignore[no-untyped-def]
    ais_endpoint: str, make_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = AisClient(ClientConfig(endpoint=ais_endpoint, via_proxy=True))
    b = make_bucket({"o": b"1"})
    spy = Spy(c, monkeypatch)
    c.put_object(b.name, "p", b"22")
    assert spy.origins()[0] == ais_endpoint and "/v1/daemon" not in [p for _, _, p in spy.sent]
    c.close()


async def test_get_batch_goes_to_each_owner_with_its_objects(  # type: ignore[no-untyped-def]
    client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch, ais_endpoint: str
) -> None:
    """A Get-Batch is one request per owning target (``coloc=1``: the proxy has that owner
    assemble it); every object is delivered once, with its bytes; with no map, one request."""
    from aisfs.aio import AsyncAis

    objects = {f"g/{i:03d}": bytes([i]) * (100 + i) for i in range(60)}
    b = make_bucket(objects)
    names = list(objects)
    client.head_object(b.name, names[0])  # the first object request fetches the map
    cluster = _cluster(client)
    groups = client.by_owner(b.name, names)
    assert groups is not None and len(groups) == len(cluster.active) == 2
    for group in groups:
        owners = {cluster.owner_of(b.name, names[i]) for i in group}
        assert len(owners) == 1
        assert group == sorted(group)
    assert sorted(i for group in groups for i in group) == list(range(len(names)))

    sent: list[dict[str, Any]] = []
    real = client.transport._http

    def spy(method: str, url: str, **kw: Any) -> Any:
        if "/ml/moss/" in url:
            sent.append(dict(kw.get("params") or {}))
        return real(method, url, **kw)

    monkeypatch.setattr(client.transport, "_http", spy)
    got: dict[int, bytes] = {}

    def deliver(item) -> None:  # type: ignore[no-untyped-def]
        assert item.index not in got and item.data is not None
        assert item.name == names[item.index]
        got[item.index] = bytes(item.data)

    await AsyncAis(client).get_batch(b.name, names, max_size=1 << 20, deliver=deliver)
    assert [got[i] for i in range(len(names))] == list(objects.values())
    # One request per owner, each asking the proxy to have the target holding its objects
    # assemble it (checked on the cluster: the redirect then names that owner).
    assert len(sent) == 2 and all(p.get("coloc") == "1" for p in sent), sent

    client.transport.router.require_proxy()  # no computed owners: one request, as before
    assert client.by_owner(b.name, names) is None

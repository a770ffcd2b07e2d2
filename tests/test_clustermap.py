"""aisfs/clustermap.py: the cluster map's parsing (canned maps) and the HRW choice of a target,
checked against the real cluster's proxy for thousands of random names."""

from __future__ import annotations

import copy
import http.client
import json
import random
import urllib.parse
from typing import Any

import pytest
from aistore.sdk.utils import get_digest, xoshiro256_hash

from aisfs.clustermap import (
    FLAG_DECOMMISSION,
    FLAG_MAINTENANCE,
    ClusterMap,
    ClusterMapError,
    make_uname,
    name_digest,
    scramble,
)


def _net(port: int) -> dict[str, str]:
    return {"node_ip_addr": "127.0.0.1", "daemon_port": str(port),
            "direct_url": f"http://127.0.0.1:{port}"}


def _node(node_id: str, kind: str, port: int, digest: int, flags: int = 0) -> dict[str, Any]:
    return {"public_net": _net(port), "intra_data_net": _net(port + 2000),
            "intra_control_net": _net(port + 1000), "daemon_type": kind, "daemon_id": node_id,
            "flags": flags, "id_digest": digest}


# The shape `GET /v1/daemon?what=smap` has on AIS v1.5.0 (digests as a real cluster sent them).
SMAP: dict[str, Any] = {
    "pmap": {"SMZOyuDt": {**_node("SMZOyuDt", "proxy", 28080, 11302086351903903487, 2),
                          "verifying_key": "AMNtwgoVC5Y+9j/NVncNZnvyzHXW07BIT0m5ER7eESY="}},
    "proxy_si": _node("SMZOyuDt", "proxy", 28080, 11302086351903903487, 2),
    "tmap": {
        "Iflt28082": _node("Iflt28082", "target", 28082, 11314729359989196479),
        "fzBt28081": _node("fzBt28081", "target", 28081, 11462872045314264560),
    },
    "uuid": "F6iA2sbOYc",
    "creation_time": "2026-12-06 07:15:57",
    "version": "6",
}


def test_parse_smap() -> None:
    m = ClusterMap.from_json(json.dumps(SMAP).encode())
    assert m.version == 6 and m.uuid == "F6iA2sbOYc"
    assert m.primary.id == "SMZOyuDt" and m.primary.url == "http://127.0.0.1:28080"
    assert [t.id for t in m.targets] == ["Iflt28082", "fzBt28081"]
    assert [t.url for t in m.active] == ["http://127.0.0.1:28082", "http://127.0.0.1:28081"]
    assert m.targets[0].digest == 11314729359989196479  # above 2**63: kept exact
    # A redirect may name a target's intra-cluster URL: it still identifies the node.
    assert m.node_at("http://127.0.0.1:30081/v1/objects/b/o?pid=x") is m.targets[1]
    assert m.node_at("http://127.0.0.1:28080/v1/daemon") == m.primary
    assert m.node_at("http://127.0.0.1:9/") is None
    assert m.node_at("http://LOCALHOST:28081") is None  # another host name is another node


def test_node_digest_is_xxhash_of_its_id_with_ais_seed() -> None:
    # AIS sets id_digest = xxhash64(daemon_id, MLCG32): the real cluster's values check both
    # the hash library and the seed.
    for node_id, doc in SMAP["tmap"].items():
        assert name_digest(node_id.encode()) == doc["id_digest"]
    assert name_digest(b"SMZOyuDt") == SMAP["pmap"]["SMZOyuDt"]["id_digest"]


def test_missing_digest_is_computed_from_the_id() -> None:
    doc = copy.deepcopy(SMAP)
    digest = doc["tmap"]["Iflt28082"].pop("id_digest")
    assert ClusterMap.from_json(doc).targets[0].digest == digest


def test_scramble_matches_the_sdk() -> None:
    rng = random.Random(7)
    for seed in [0, 1, (1 << 64) - 1, 1 << 63] + [rng.getrandbits(64) for _ in range(2000)]:
        assert scramble(seed) == xoshiro256_hash(seed) & ((1 << 64) - 1)


def test_uname_layout() -> None:
    assert make_uname("bkt", "a/b c") == b"ais/@#/bkt/a/b c"
    assert make_uname("bkt", "\u00fc") == b"ais/@#/bkt/\xc3\xbc"
    assert make_uname("bkt", "o", provider="aws", namespace="@uuid#ns") == b"aws/@uuid#ns/bkt/o"
    # The SDK's digest of the same bytes agrees.
    assert name_digest(make_uname("bkt", "x/y")) == get_digest("ais/@#/bkt/x/y")


def test_maintenance_and_decommission_are_skipped() -> None:
    m = ClusterMap.from_json(SMAP)
    keys = [f"k{i}" for i in range(200)]
    owners = {m.owner_of("b", k).id for k in keys}  # type: ignore[union-attr]
    assert owners == {"Iflt28082", "fzBt28081"}
    for flag in (FLAG_MAINTENANCE, FLAG_DECOMMISSION):
        doc = copy.deepcopy(SMAP)
        doc["tmap"]["fzBt28081"]["flags"] = flag
        m2 = ClusterMap.from_json(doc)
        assert [t.id for t in m2.active] == ["Iflt28082"]
        assert all(m2.owner_of("b", k).id == "Iflt28082" for k in keys)  # type: ignore[union-attr]
    doc = copy.deepcopy(SMAP)
    for t in doc["tmap"].values():
        t["flags"] = FLAG_MAINTENANCE
    assert ClusterMap.from_json(doc).owner_of("b", "k") is None


def test_owner_is_stable_when_another_target_leaves() -> None:
    # HRW's point: removing a target moves only the objects it owned.
    doc = copy.deepcopy(SMAP)
    doc["tmap"]["t3"] = _node("t3", "target", 28083, name_digest(b"t3"))
    three = ClusterMap.from_json(doc)
    two = ClusterMap.from_json(SMAP)
    for i in range(500):
        owner = three.owner_of("b", f"obj{i}")
        assert owner is not None
        if owner.id != "t3":
            assert two.owner_of("b", f"obj{i}").id == owner.id  # type: ignore[union-attr]


@pytest.mark.parametrize("doc,why", [
    (b"not json", "not JSON"),
    (b"[]", "not a JSON object"),
    ({**SMAP, "version": "x"}, "version"),
    ({**SMAP, "proxy_si": None}, "primary"),
    ({**SMAP, "tmap": {"t": {"daemon_id": "t"}}}, "public_net"),
    ({**SMAP, "tmap": []}, "tmap"),
])
def test_malformed_maps(doc: Any, why: str) -> None:
    with pytest.raises(ClusterMapError, match=why):
        ClusterMap.from_json(doc)


# ---------------------------------------------------------------------- the real cluster


def _random_name(rng: random.Random) -> str:
    alphabet = ("abcXYZ019 -_.%?#&+=~!$'()*,;:@[]" "\u00fc\u00e9\u00df\u0416\u05d0\u4e2d\u6587"
                "\u65e5\u672c\U0001f600\U0001f4a9\u0301\u200b")
    segments = []
    for _ in range(rng.randint(1, 6)):
        n = rng.choice([1, 3, 8, 20, 60, 120])
        seg = "".join(rng.choice(alphabet) for _ in range(n))
        if seg in (".", ".."):
            seg += "x"
        segments.append(seg)
    name = "/".join(segments)
    if name.startswith("~/"):
        name = "x" + name
    return name


def _conn(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)


def _redirected_to(conn: http.client.HTTPConnection, method: str, bucket: str, key: str) -> str:
    path = f"/v1/objects/{bucket}/{urllib.parse.quote(key, safe='/')}?provider=ais"
    conn.request(method, path)
    resp = conn.getresponse()
    resp.read()
    assert resp.status in (301, 307), (resp.status, key)
    return resp.getheader("Location") or ""


def test_computed_target_equals_proxy_redirect(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket().name
    conn = _conn(ais_endpoint)
    conn.request("GET", "/v1/daemon?what=smap")
    cmap = ClusterMap.from_json(conn.getresponse().read())
    assert len(cmap.active) >= 2, "the check needs a cluster of two targets or more"
    rng = random.Random(20261206)
    names = [_random_name(rng) for _ in range(3000)]
    names += ["a", "a/b", "with space", "100%", "q?x=1", "frag#ment", "x" * 1000,
              "/".join(["deep"] * 100), "dou//ble", "\u00e9t\u00e9/\u00fc.txt"]
    seen: dict[str, int] = {}
    for i, key in enumerate(names):
        method = "GET" if i % 2 else "HEAD"  # GET answers 301, HEAD 307: both name the target
        location = _redirected_to(conn, method, bucket, key)
        node = cmap.node_at(location)
        owner = cmap.owner_of(bucket, key)
        assert node is not None and owner is not None
        assert owner.id == node.id, f"{key!r}: computed {owner.id}, proxy chose {node.id}"
        seen[node.id] = seen.get(node.id, 0) + 1
    conn.close()
    assert len(seen) == len(cmap.active), seen  # every target owned some names


def test_objects_live_on_the_computed_target(ais_endpoint: str, make_bucket) -> None:  # type: ignore[no-untyped-def]
    """Stored objects are found by a HEAD straight to the computed target, and not on another."""
    rng = random.Random(99)
    objects = {_random_name(rng)[:200].rstrip("/") or "x": bytes([i % 251]) * i
               for i in range(150)}
    b = make_bucket(objects)
    conn = _conn(ais_endpoint)
    conn.request("GET", "/v1/daemon?what=smap")
    cmap = ClusterMap.from_json(conn.getresponse().read())
    conn.close()
    conns = {t.id: _conn(t.url) for t in cmap.active}
    for key, data in objects.items():
        owner = cmap.owner_of(b.name, key)
        assert owner is not None
        for target in cmap.active:
            c = conns[target.id]
            c.request("HEAD", f"/v1/objects/{b.name}/{urllib.parse.quote(key, safe='/')}"
                              "?provider=ais")
            resp = c.getresponse()
            resp.read()
            expected = 200 if target.id == owner.id else 404
            assert resp.status == expected, (key, target.id, owner.id, resp.status)
            if expected == 200:
                # (a HEAD of an empty object carries no Content-Length)
                assert int(resp.getheader("Content-Length") or 0) == len(data)
    for c in conns.values():
        c.close()

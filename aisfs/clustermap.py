"""The AIS cluster map and the choice of an object's target, computed as AIS computes it.

AIS places each object on one target by rendezvous hashing (highest random weight, "HRW"): the
object's *uname* is hashed with xxhash64 (seed ``MLCG32``), the digest is XORed with each
target's ``id_digest`` and scrambled by the splitmix64/xoshiro256** finaliser, and the target with
the highest result owns the object; targets in maintenance or being decommissioned are skipped.
The proxy redirects every object request to that target, so a client that holds the same map
computes the same answer and can send GET/HEAD/PUT straight there.

The map comes from ``GET /v1/daemon?what=smap`` (the proxy's copy); :meth:`ClusterMap.from_json`
parses it. Everything here is pure: no I/O, no clock, no locks.

Concurrency: a :class:`ClusterMap` is immutable once built, so any thread may read it; callers
replace the whole map when the cluster changes.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import xxhash

# Seed of every xxhash64 AIS computes for placement (cmn/cos: the multiplier of the classic
# 32-bit linear congruential generator).
HASH_SEED = 1103515245
# Snode flags (core/meta/smap.go): a target with either is not given objects.
FLAG_MAINTENANCE = 1 << 2
FLAG_DECOMMISSION = 1 << 3
_MAINT_OR_DECOMM = FLAG_MAINTENANCE | FLAG_DECOMMISSION
# The global namespace's part of a uname (cmn/bck.go ``NsGlobalUname``).
GLOBAL_NAMESPACE = "@#"

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


class ClusterMapError(ValueError):
    """The cluster map document is not what AIS sends."""


def make_uname(bucket: str, key: str, provider: str = "ais", namespace: str = "") -> bytes:
    """An object's unique name as AIS hashes it: ``provider/namespace/bucket/key``.

    ``namespace`` is ``""`` for the global namespace, or ``"@uuid#name"`` for another (either
    part may be empty, as AIS writes it). The key's bytes are its UTF-8 encoding, the bytes a
    request's URL carries.
    """
    ns = namespace or GLOBAL_NAMESPACE
    return f"{provider}/{ns}/{bucket}/".encode() + key.encode("utf-8", "surrogateescape")


def name_digest(uname: bytes) -> int:
    """xxhash64 of a uname with AIS's seed (the C library does the hashing)."""
    return xxhash.xxh64_intdigest(uname, HASH_SEED)


def scramble(seed: int) -> int:
    """AIS's ``xoshiro256.Hash``: two splitmix64 rounds, then xoshiro256**'s output function,
    all modulo 2**64."""
    z = (seed + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    z = ((z ^ (z >> 31)) + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    z = ((z ^ (z >> 31)) * 5) & _MASK64
    return ((((z << 7) | (z >> 57)) & _MASK64) * 9) & _MASK64


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the map: its ID, the URL clients use (public network), its placement digest,
    and the other URLs it answers on (a redirect may name any of them)."""

    id: str
    url: str
    digest: int
    flags: int = 0
    other_urls: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return not self.flags & _MAINT_OR_DECOMM

    def answers_at(self, origin: str) -> bool:
        """Whether ``origin`` (``scheme://host:port``) is one of this node's URLs."""
        return origin == _origin(self.url) or any(origin == _origin(u) for u in self.other_urls)


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """One version of the cluster map, reduced to what routing needs.

    Invariants: ``targets`` holds every target of the map sorted by ID; ``active`` the subset
    that can own objects (HRW runs over it); ``version`` only grows across a cluster's maps.
    """

    version: int
    uuid: str
    primary: Node
    proxies: tuple[Node, ...]
    targets: tuple[Node, ...]
    active: tuple[Node, ...]

    @classmethod
    def from_json(cls, doc: bytes | str | Mapping[str, Any]) -> ClusterMap:
        """Parse AIS's Smap JSON (``GET /v1/daemon?what=smap``)."""
        if isinstance(doc, bytes | str):
            try:
                doc = orjson.loads(doc)
            except orjson.JSONDecodeError as exc:
                raise ClusterMapError(f"cluster map is not JSON: {exc}") from None
        if not isinstance(doc, Mapping):
            raise ClusterMapError("cluster map is not a JSON object")
        try:
            version = int(doc.get("version") or 0)  # AIS sends it as a string
        except (TypeError, ValueError):
            raise ClusterMapError(f"bad cluster map version {doc.get('version')!r}") from None
        tmap = doc.get("tmap", {})
        pmap = doc.get("pmap", {})
        if not isinstance(tmap, Mapping) or not isinstance(pmap, Mapping):
            raise ClusterMapError("cluster map: tmap/pmap are not objects")
        targets = tuple(sorted((_node(k, v) for k, v in tmap.items()), key=lambda n: n.id))
        proxies = tuple(sorted((_node(k, v) for k, v in pmap.items()), key=lambda n: n.id))
        primary_doc = doc.get("proxy_si")
        if not isinstance(primary_doc, Mapping):
            raise ClusterMapError("cluster map has no primary proxy (proxy_si)")
        primary = _node(str(primary_doc.get("daemon_id") or ""), primary_doc)
        return cls(version, str(doc.get("uuid") or ""), primary, proxies, targets,
                   tuple(t for t in targets if t.active))

    def owner(self, uname: bytes) -> Node | None:
        """The target that owns the object (HRW over the active targets); None when the map has
        no active target."""
        digest = xxhash.xxh64_intdigest(uname, HASH_SEED)
        best: Node | None = None
        best_weight = -1
        for node in self.active:
            weight = scramble(node.digest ^ digest)
            if weight > best_weight:
                best, best_weight = node, weight
        return best

    def owner_of(self, bucket: str, key: str) -> Node | None:
        return self.owner(make_uname(bucket, key))

    def node_at(self, url: str) -> Node | None:
        """The node (target or proxy) one of whose URLs ``url`` points at."""
        origin = _origin(url)
        for node in self.targets + self.proxies:
            if node.answers_at(origin):
                return node
        return None


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _node(node_id: str, doc: Any) -> Node:
    if not isinstance(doc, Mapping):
        raise ClusterMapError(f"cluster map: node {node_id!r} is not an object")
    try:
        url = str(doc["public_net"]["direct_url"])
        digest = int(doc.get("id_digest") or 0)
        flags = int(doc.get("flags") or 0)
    except (KeyError, TypeError, ValueError):
        raise ClusterMapError(f"cluster map: node {node_id!r}: no public_net.direct_url") from None
    if not url or not 0 <= digest <= _MASK64:
        raise ClusterMapError(f"cluster map: node {node_id!r} has no URL or a bad digest")
    node_id = str(doc.get("daemon_id") or node_id)
    if digest == 0:  # what AIS computes for a node that came without one (Snode.setDigest)
        digest = xxhash.xxh64_intdigest(node_id.encode(), HASH_SEED)
    others = []
    for net in ("intra_data_net", "intra_control_net"):
        sub = doc.get(net)
        other = sub.get("direct_url") if isinstance(sub, Mapping) else None
        if other and other != url:
            others.append(str(other))
    for extra in doc.get("pub_extra") or ():
        if isinstance(extra, Mapping) and extra.get("direct_url"):
            others.append(str(extra["direct_url"]))
    return Node(node_id, url, digest, flags, tuple(others))

"""Helpers for the namespace and listings unit tests: a Namespace over tests/fakeais.py with a
clock the test moves, and what an opendir + readdir shows."""

from __future__ import annotations

import trio

from aisfs.config import MountConfig, parse_source
from aisfs.inodes import Inode, Kind
from aisfs.listing import Child, Listing, ListingStream
from aisfs.namespace import Namespace

from .fakeais import FakeAis


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_ns(fake: FakeAis, source: str = "ais://b", ttl: float = 5.0,
            neg: float = 1.0, expand_archives: bool = False) -> tuple[Namespace, FakeTimer]:
    config = MountConfig(source=parse_source(source), mountpoint="/x", metadata_ttl=ttl,
                         negative_metadata_ttl=neg,
                         archives="expand" if expand_archives else "file")
    timer = FakeTimer()
    spawn = trio.lowlevel.spawn_system_task
    return Namespace(fake, config, spawn, timer), timer  # type: ignore[arg-type]


def names(children: list) -> list[tuple[str, bool]]:  # type: ignore[type-arg]
    return [(c.name, c.is_dir) for c in children]


async def list_dir(ns: Namespace, inode: Inode | None = None) -> list[Child]:
    """What one opendir + readdir to the end shows."""
    return await drain(await ns.open_dir(inode or ns.root))


async def drain(stream: ListingStream) -> list[Child]:
    """Every entry, as readdir gets them until the end (raises the listing's error)."""
    while not stream.done:
        await stream.wait_beyond(len(stream.children))
    return stream.children


async def listing(ns: Namespace, prefix: str) -> Listing:
    """The cached listing of ``prefix`` in bucket b, fetched when there is none."""
    await list_dir(ns, ns.table.child(ns.root, "b", prefix, Kind.DIR))
    cached = ns.listings.get(("b", prefix))
    assert isinstance(cached, Listing)
    return cached

"""aisfs/metacache.py against the in-memory AIS of tests/fakeais.py: TTLs, negative entries,
single-flight, failures not cached."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from aisfs import errors
from aisfs.cache import MISSING, Stat
from aisfs.config import MountConfig, parse_source
from aisfs.metacache import MetadataCache
from aisfs.objects import ObjectProps

from .fakeais import STORED_NS, FakeAis


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fail_once(fake: FakeAis, error: errors.AisFsError) -> None:
    """The next HEAD fails with ``error`` once it has been answered (after the fake's gate)."""
    head = fake.head_object

    async def failing(bucket: str, key: str) -> ObjectProps:
        props = await head(bucket, key)
        if fake.head_object is failing:
            del fake.head_object  # back to the fake's own method
            raise error
        return props

    fake.head_object = failing  # type: ignore[method-assign]


def make_cache(fake: FakeAis, ttl: float = 5.0, neg: float = 1.0
               ) -> tuple[MetadataCache, FakeTimer]:
    config = MountConfig(source=parse_source("ais://b"), mountpoint="/x", metadata_ttl=ttl,
                         negative_metadata_ttl=neg)
    timer = FakeTimer()
    return MetadataCache(fake, config, timer), timer


async def test_a_stat_is_cached_for_the_ttl() -> None:
    fake = FakeAis({"a": 1})
    cache, timer = make_cache(fake, ttl=5.0)
    assert await cache.head("b", "a") == Stat(1, STORED_NS, "1")
    fake.store("a", 2)  # changed remotely
    timer.now += 4.9
    assert (await cache.head("b", "a")).size == 1
    assert fake.calls["head_object"] == 1
    timer.now += 0.2
    assert (await cache.head("b", "a")).size == 2
    assert fake.calls["head_object"] == 2


async def test_a_missing_object_is_cached_for_the_negative_ttl_only() -> None:
    fake = FakeAis()
    cache, timer = make_cache(fake, ttl=5.0, neg=1.0)
    for _ in range(2):
        with pytest.raises(errors.NotFound):
            await cache.head("b", "new")
    assert fake.calls["head_object"] == 1
    assert cache.stats.get(("b", "new")) is MISSING
    fake.store("new", 3)  # made by another client
    timer.now += 1.1  # past the negative TTL, well within the positive one
    assert (await cache.head("b", "new")).size == 3
    assert fake.calls["head_object"] == 2


async def test_no_negative_entries_with_a_zero_negative_ttl() -> None:
    fake = FakeAis()
    cache, _ = make_cache(fake, neg=0.0)
    for _ in range(3):
        with pytest.raises(errors.NotFound):
            await cache.head("b", "nope")
    assert fake.calls["head_object"] == 3


async def test_concurrent_lookups_of_one_name_make_one_head() -> None:
    fake = FakeAis({"a": 1})
    fake.gate = trio.Event()
    cache, _ = make_cache(fake)
    got: list[Stat] = []
    missing: list[bool] = []

    async def stat(key: str) -> None:
        try:
            got.append(await cache.head("b", key))
        except errors.NotFound:
            missing.append(True)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(stat, "a")
            nursery.start_soon(stat, "nope")
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls["head_object"] == 2  # one per name, however many ask
        fake.gate.set()
    assert fake.calls["head_object"] == 2
    assert len(got) == 5 and all(s is got[0] for s in got)
    assert missing == [True] * 5


async def test_a_failed_head_is_not_cached() -> None:
    fake = FakeAis({"a": 1})
    fail_once(fake, errors.Transient("connection reset", 0, "ais://b/a"))
    cache, _ = make_cache(fake)
    with pytest.raises(errors.Transient):
        await cache.head("b", "a")
    assert ("b", "a") not in cache.stats  # neither the error nor "missing"
    assert (await cache.head("b", "a")).size == 1
    assert fake.calls["head_object"] == 2


async def test_waiters_on_a_failed_head_ask_again_once() -> None:
    fake = FakeAis({"a": 1})
    fake.gate = trio.Event()
    fail_once(fake, errors.AisError("target down", 503, "ais://b/a"))
    cache, _ = make_cache(fake)
    outcomes: list[object] = []

    async def stat() -> None:
        try:
            outcomes.append(await cache.head("b", "a"))
        except errors.AisError as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(stat)
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
    # The caller that ran the failed HEAD sees its error; the waiters share one more HEAD.
    assert sum(isinstance(o, errors.AisError) for o in outcomes) == 1
    assert sum(isinstance(o, Stat) for o in outcomes) == 3
    assert fake.calls["head_object"] == 2


async def test_directory_probes_are_shared_and_cached_both_ways() -> None:
    fake = FakeAis()
    cache, timer = make_cache(fake, ttl=5.0, neg=1.0)
    probes: Counter[str] = Counter()
    gate = trio.Event()

    def probe(prefix: str, answer: bool) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            probes[prefix] += 1
            await gate.wait()
            return answer
        return run

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(cache.dir_exists, "b", "d/", probe("d/", True))
            nursery.start_soon(cache.dir_exists, "b", "e/", probe("e/", False))
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert probes == Counter({"d/": 1, "e/": 1})
    assert await cache.dir_exists("b", "d/", probe("d/", False)) is True
    assert await cache.dir_exists("b", "e/", probe("e/", True)) is False
    assert probes == Counter({"d/": 1, "e/": 1})
    timer.now += 1.1  # the negative answer expired, the positive one not
    assert await cache.dir_exists("b", "e/", probe("e/", True)) is True
    assert await cache.dir_exists("b", "d/", probe("d/", False)) is True
    assert probes == Counter({"d/": 1, "e/": 2})


async def test_a_failed_directory_probe_is_not_cached() -> None:
    fake = FakeAis()
    cache, _ = make_cache(fake)
    calls = 0

    async def probe() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise errors.Transient("connection reset", 0, "ais://b/d/")
        return True

    with pytest.raises(errors.Transient):
        await cache.dir_exists("b", "d/", probe)
    assert ("b", "d/") not in cache.dirs
    assert await cache.dir_exists("b", "d/", probe) is True
    assert calls == 2


async def test_bucket_names_are_fetched_once_per_ttl() -> None:
    fake = FakeAis()
    fake.gate = trio.Event()
    cache, timer = make_cache(fake, ttl=5.0)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(cache.bucket_names)
        await trio.testing.wait_all_tasks_blocked()
        fake.gate.set()
    assert fake.calls["list_buckets"] == 1
    fake.buckets.add("c")
    assert await cache.bucket_names() == ("b",)
    timer.now += 5.1
    assert await cache.bucket_names() == ("b", "c")
    assert fake.calls["list_buckets"] == 2

"""aisfs/cache.py: TtlMap expiry (positive and negative TTLs, injected timer) and single-flight."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from aisfs.cache import MISSING, Stat, TtlMap


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    ttl: float = 5.0, negative_ttl: float = 1.0, maxsize: int = 100
) -> tuple[TtlMap[Any], FakeTimer]:
    timer = FakeTimer()
    return TtlMap(maxsize, ttl, negative_ttl, timer), timer


# ---------------------------------------------------------------------- TTLs


def test_positive_entry_lives_for_ttl() -> None:
    m, timer = make(ttl=5.0, negative_ttl=1.0)
    st = Stat(3, 42, "1")
    m.put("k", st)
    assert m.get("k") is st
    timer.advance(4.9)
    assert m.get("k") is st
    timer.advance(0.2)
    assert m.get("k") is None
    assert m.get("k", "dflt") == "dflt"
    assert len(m) == 0


def test_negative_entry_expires_sooner() -> None:
    m, timer = make(ttl=5.0, negative_ttl=1.0)
    m.put_missing("gone")
    m.put("here", 1)
    assert m.get("gone") is MISSING
    timer.advance(0.9)
    assert m.get("gone") is MISSING
    timer.advance(0.2)
    assert m.get("gone") is None
    assert m.get("here") == 1  # the positive entry outlives it


def test_put_of_missing_uses_negative_ttl() -> None:
    m, timer = make(ttl=5.0, negative_ttl=2.0)
    m.put("x", MISSING)
    timer.advance(1.5)
    assert m.get("x") is MISSING
    timer.advance(1.0)
    assert m.get("x") is None


def test_zero_ttls_store_nothing() -> None:
    m, _ = make(ttl=0.0, negative_ttl=0.0)
    m.put("a", 1)
    m.put_missing("b")
    m.put("c", MISSING)
    assert m.get("a") is None and m.get("b") is None and m.get("c") is None
    assert len(m) == 0


def test_zero_positive_ttl_still_keeps_negative_entries() -> None:
    m, timer = make(ttl=0.0, negative_ttl=1.0)
    m.put("a", 1)
    m.put_missing("b")
    assert m.get("a") is None
    assert m.get("b") is MISSING
    timer.advance(1.5)
    assert m.get("b") is None


def test_overwrite_resets_ttl_and_kind() -> None:
    m, timer = make(ttl=5.0, negative_ttl=1.0)
    m.put_missing("k")
    timer.advance(0.5)
    m.put("k", "v")
    timer.advance(3.0)  # past the negative TTL, inside the positive one
    assert m.get("k") == "v"
    m.put_missing("k")
    timer.advance(1.5)
    assert m.get("k") is None


def test_maxsize_evicts() -> None:
    m, _ = make(maxsize=2)
    m.put("a", 1)
    m.put("b", 2)
    m.put("c", 3)
    assert len(m) == 2
    assert m.get("c") == 3
    assert m.get("a") is None  # the least recently used one went


def test_pop_and_pop_where_and_clear() -> None:
    m, _ = make()
    for key in [("b1", "x"), ("b1", "y/"), ("b2", "x"), ("b1", "z")]:
        m.put(key, key[1])
    m.pop(("b1", "z"))
    m.pop(("nope", "nope"))  # absent: no error
    assert m.get(("b1", "z")) is None
    m.pop_where(lambda k: k[0] == "b1")  # type: ignore[index]  # keys here are tuples
    assert m.get(("b1", "x")) is None and m.get(("b1", "y/")) is None
    assert m.get(("b2", "x")) == "x"
    assert len(m) == 1
    m.clear()
    assert len(m) == 0


def test_pop_where_nothing_matches() -> None:
    m, _ = make()
    m.put("a", 1)
    m.put("b", 2)
    m.pop_where(lambda k: False)
    assert (m.get("a"), m.get("b")) == (1, 2)


# ---------------------------------------------------------------------- get_or_fetch


async def test_get_or_fetch_hit_does_not_fetch() -> None:
    m, _ = make()
    m.put("k", "cached")

    async def fetch() -> str:
        raise AssertionError("must not fetch")

    assert await m.get_or_fetch("k", fetch) == "cached"


async def test_get_or_fetch_refetches_after_expiry() -> None:
    m, timer = make(ttl=5.0)
    calls = []

    async def fetch() -> str:
        calls.append(1)
        m.put("k", f"v{len(calls)}")
        return f"v{len(calls)}"

    assert await m.get_or_fetch("k", fetch) == "v1"
    assert await m.get_or_fetch("k", fetch) == "v1"
    timer.advance(6)
    assert await m.get_or_fetch("k", fetch) == "v2"
    assert len(calls) == 2


async def fetch_concurrently(m: TtlMap[str], callers: int) -> tuple[int, list[object]]:
    """``callers`` tasks ask for "k" at once while the one fetch waits: (fetches, results)."""
    calls = 0
    release = trio.Event()
    results: list[object] = []

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        m.put("k", "value")
        return "value"

    async def caller() -> None:
        results.append(await m.get_or_fetch("k", fetch))

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        assert calls == 1
        release.set()
    return calls, results


async def test_single_flight_two_callers_one_fetch() -> None:
    m, _ = make()
    assert await fetch_concurrently(m, 3) == (1, ["value", "value", "value"])


async def test_single_flight_waiters_get_result_even_when_not_cached() -> None:
    # With ttl 0 nothing is stored, yet waiters must receive the shared fetch's result.
    m, _ = make(ttl=0.0, negative_ttl=0.0)
    assert await fetch_concurrently(m, 2) == (1, ["value", "value"])
    assert len(m) == 0


async def test_single_flight_failure_raises_in_fetcher_and_waiters_retry() -> None:
    m, _ = make()
    calls = 0
    release = trio.Event()
    outcome: dict[str, object] = {}

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise OSError("boom")
        m.put("k", "second")
        return "second"

    async def first() -> None:
        try:
            await m.get_or_fetch("k", fetch)
        except OSError as exc:
            outcome["first"] = exc

    async def waiter(name: str) -> None:
        outcome[name] = await m.get_or_fetch("k", fetch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "w1")
        nursery.start_soon(waiter, "w2")
        await trio.testing.wait_all_tasks_blocked()
        assert calls == 1
        release.set()
    assert isinstance(outcome["first"], OSError) and str(outcome["first"]) == "boom"
    assert outcome["w1"] == "second" and outcome["w2"] == "second"
    assert calls == 2  # one retry shared by both waiters
    assert m.get("k") == "second"


async def test_failed_fetch_leaves_no_inflight_entry() -> None:
    m, _ = make()

    async def bad() -> str:
        raise ValueError("nope")

    with pytest.raises(ValueError):
        await m.get_or_fetch("k", bad)

    async def good() -> str:
        m.put("k", "ok")
        return "ok"

    with trio.fail_after(1):
        assert await m.get_or_fetch("k", good) == "ok"


async def test_missing_entry_is_returned_as_missing() -> None:
    m, timer = make(ttl=5.0, negative_ttl=1.0)
    m.put_missing("k")

    async def fetch() -> str:
        raise AssertionError("must not fetch while the negative entry is fresh")

    assert await m.get_or_fetch("k", fetch) is MISSING
    timer.advance(1.5)

    async def fetch2() -> str:
        m.put("k", "now")
        return "now"

    assert await m.get_or_fetch("k", fetch2) == "now"


async def test_fetch_storing_missing_returns_missing_to_waiters() -> None:
    m, _ = make()
    release = trio.Event()
    results: list[object] = []

    async def fetch() -> object:
        await release.wait()
        m.put_missing("k")
        return MISSING

    async def caller() -> None:
        results.append(await m.get_or_fetch("k", fetch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert results == [MISSING, MISSING]


async def test_different_keys_fetch_independently() -> None:
    m, _ = make()
    started: list[str] = []
    release = trio.Event()

    def fetcher(key: str) -> Callable[[], Awaitable[str]]:
        async def fetch() -> str:
            started.append(key)
            await release.wait()
            m.put(key, key.upper())
            return key.upper()
        return fetch

    results: dict[str, object] = {}

    async def caller(key: str) -> None:
        results[key] = await m.get_or_fetch(key, fetcher(key))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller, "a")
        nursery.start_soon(caller, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(started) == ["a", "b"]
        release.set()
    assert results == {"a": "A", "b": "B"}


def test_sizeof_weighs_values_and_one_too_heavy_is_not_kept() -> None:
    m: TtlMap[list[int]] = TtlMap(10, ttl=5.0, negative_ttl=1.0, sizeof=len)
    m.put("a", [1] * 4)
    m.put("b", [1] * 4)
    m.put_missing("c")
    assert len(m) == 3
    m.put("d", [1] * 4)  # 13 > 10: the least recently used goes
    assert "a" not in m and "d" in m
    m.put("d", [1] * 11)  # heavier than the whole cache: not kept, and the old value dropped
    assert "d" not in m
    assert m.get("b") == [1] * 4

"""Metadata cache: object stats (positive and negative), directory existence, listings, buckets.

Built on cachetools' TLRU/TTL caches with an injectable timer. Concurrent misses for the same key
share one fetch (single-flight through ``trio.Event``). Trio thread only: cachetools is not
thread-safe, so worker threads never see these objects.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cachetools
import trio

T = TypeVar("T")


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to create
class Stat:
    """Attributes of one object as last seen (from a listing or a HEAD)."""

    size: int
    mtime_ns: int
    version: str = ""


class _Missing:
    """Marker stored for a name known not to exist (a negative entry)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class TtlMap(Generic[T]):
    """A TLRU cache whose negative entries (``MISSING``) expire sooner than positive ones."""

    def __init__(
        self, maxsize: int, ttl: float, negative_ttl: float,
        timer: Callable[[], float] = time.monotonic,
        sizeof: Callable[[T], int] | None = None,
    ) -> None:
        """``maxsize`` counts entries, or what ``sizeof`` says each value weighs (a value heavier
        than that is not kept)."""
        self.ttl = ttl
        self.negative_ttl = negative_ttl

        def ttu(_key: Hashable, value: Any, now: float) -> float:
            return now + (self.negative_ttl if value is MISSING else self.ttl)

        getsizeof: Callable[[Any], int] | None = None
        if sizeof is not None:
            weigh = sizeof

            def getsizeof(value: Any) -> int:
                return 1 if value is MISSING else weigh(value)

        self._weighed = getsizeof is not None
        self._data: cachetools.TLRUCache[Hashable, Any] = cachetools.TLRUCache(
            maxsize, ttu, timer=timer, getsizeof=getsizeof
        )
        self._inflight: dict[Hashable, _Flight] = {}
        self.hits = 0  # lookups answered from the cache (a value or MISSING)
        self.misses = 0  # lookups that went to the cluster

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable, default: Any = None) -> Any:
        return self._data.get(key, default)

    def put(self, key: Hashable, value: T) -> None:
        if self.ttl > 0 or (value is MISSING and self.negative_ttl > 0):
            if self._weighed and self._data.getsizeof(value) > self._data.maxsize:
                self._data.pop(key, None)  # too big to keep (an older value would be stale)
                return
            self._data[key] = value

    def put_missing(self, key: Hashable) -> None:
        if self.negative_ttl > 0:
            self._data[key] = MISSING

    def pop(self, key: Hashable) -> Any:
        """Remove ``key``; its value (or MISSING), None when there was none."""
        return self._data.pop(key, None)

    def pop_where(self, predicate: Callable[[Hashable], bool]) -> None:
        for key in [k for k in list(self._data.keys()) if predicate(k)]:
            self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    async def get_or_fetch(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """The cached value, or the result of one fetch shared by every concurrent caller.

        ``fetch`` stores what it learned itself (with :meth:`put`/:meth:`put_missing`) and
        returns the value; when it raises, the caller that ran it sees the exception and each
        waiter tries again on its own.
        """
        while True:
            value = self._data.get(key, None)
            if value is not None:  # a value or MISSING
                self.hits += 1
                return value  # type: ignore[no-any-return]
            flight = self._inflight.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.ok:
                return flight.result  # type: ignore[no-any-return]
        self.misses += 1
        flight = _Flight()
        self._inflight[key] = flight
        try:
            flight.result = await fetch()
            flight.ok = True
            return flight.result  # type: ignore[no-any-return]
        finally:
            del self._inflight[key]
            flight.done.set()


class _Flight:
    __slots__ = ("done", "ok", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.ok = False
        self.result: Any = None

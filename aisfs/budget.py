"""A count of bytes that many handles hold together, under one limit (read-ahead, write parts).

Concurrency: trio thread only (plain integers, changed between awaits).
"""

from __future__ import annotations


class MemoryBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def try_reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.force_reserve(n)
        return True

    def force_reserve(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n

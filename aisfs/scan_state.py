"""The state of directory scans (``scans.py``): one directory's order as a scan follows it, the
Get-Batch requests it sent and the files each holds, and where a name stands in a listing.

Plain data and pure functions; ``DirectoryScans`` keeps the invariants (see ``scans.py``).
Concurrency: trio thread only.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

from .cache import Stat
from .listing import Child, Listing, near

# Seconds of reading fetched ahead (the reader's rate of opens times this), at least
# ``MIN_AHEAD`` files: several times AIS's latency to a batch's last file, and far below the
# metadata TTL that fetched bytes may wait (a deeper look-ahead outruns a slow reader: its bytes
# expire unread).
LOOKAHEAD = 1.0
MIN_AHEAD = 8
# How often the rate of opens is measured (seconds).
RATE_WINDOW = 0.5
def is_file(child: Child) -> bool:
    return not child.is_dir and child.stat is not None


def position(children: list[Child], name: str) -> int | None:
    """Where the file ``name`` is in a listing's order, or None."""
    at = near(children, name)
    return at if at is not None and is_file(children[at]) else None


def next_file(children: list[Child], pos: int) -> int | None:
    """The position of the first file after ``pos``."""
    for i in range(pos + 1, len(children)):
        if is_file(children[i]):
            return i
    return None


class Batch:
    __slots__ = ("entries", "scope", "left", "moved_at")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.scope = trio.CancelScope()
        self.left = 0  # entries still held
        self.moved_at = trio.current_time()  # sent, or last delivered a member


class Entry:
    __slots__ = ("name", "pos", "size", "version", "batch", "reserved", "data", "arrived",
                 "offered")

    def __init__(self, name: str, pos: int, stat: Stat, batch: Batch) -> None:
        self.name = name
        self.pos = pos
        self.size = stat.size
        self.version = stat.version
        self.batch = batch
        self.reserved = stat.size
        self.data: memoryview | None = None
        self.arrived = trio.Event()
        self.offered = False  # its bytes went to ``arrived`` (the kernel's page cache)


class Scan:
    """One directory's order and what is fetched ahead in it."""

    __slots__ = ("bucket", "prefix", "listing", "children", "last", "streak", "running",
                 "ahead", "held", "pending", "rate", "since", "opens", "cached")

    def __init__(self, bucket: str, prefix: str, listing: Listing) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.listing = listing  # the cached listing the order is read from
        self.children = listing.children  # that order; a copy of its own while running
        self.last = -1  # position of the latest open
        self.streak = 0  # opens in a row, each of the file after the one before
        self.running = False
        self.ahead = 0  # where the next batch starts picking files
        self.held: OrderedDict[str, Entry] = OrderedDict()
        self.pending: list[Batch] = []
        self.rate = 0.0  # opens per second, as last measured
        self.since = 0.0  # when the opens counted in ``opens`` began
        self.opens = 0
        self.cached = 0  # opens in a row that found their file in the kernel's page cache

    def count_open(self, now: float) -> None:
        """One more open in order; the rate is measured over ``RATE_WINDOW`` (until one has
        passed, over the opens so far)."""
        self.opens += 1
        elapsed = now - self.since
        if elapsed >= RATE_WINDOW or (not self.rate and elapsed > 0):
            self.rate = self.opens / elapsed
        if elapsed >= RATE_WINDOW:
            self.since, self.opens = now, 0

    def ahead_wanted(self) -> int:
        """How many files to have fetched or on their way ahead of the reader."""
        return max(MIN_AHEAD, int(self.rate * LOOKAHEAD))

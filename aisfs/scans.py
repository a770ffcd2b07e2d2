"""Directory scans: a directory's files read in listing order are fetched ahead, many files per
Get-Batch request, and their opens are served from the bytes that came.

A process that reads the files of a directory one after the other in the order readdir gave them
(``cp -r``, ``tar c``, ``rsync``, ``find -exec cat``, an unshuffled loader) would otherwise pay one
HTTP request per file, most of it overhead for a small one. Here, once ``START_AFTER`` opens in a
row were each of the file listed after the one before (the order of the directory's cached
listing, which is readdir's), the files after the last one are requested ahead, up to
``config.scan_batch_bytes`` (and a ``DEPTH``-th of the read-ahead budget, so that ``DEPTH``
batches fit in it) and ``BATCH_FILES`` per Get-Batch, ``DEPTH`` requests ahead of the reader,
within the read-ahead memory budget, and no further ahead than the reader gets through
in ``LOOKAHEAD`` seconds (the rate of its opens, measured). As each file's bytes arrive they
are offered to ``arrived`` (the open-files layer puts them in the kernel's page cache, so that
the open keeps those pages and the reader's READ never comes: one FUSE round trip less per
file); an open of such a file whose bytes are not in the kernel yet takes them (waiting for
them when they are still on their way) and its reader serves every read from them. An open of
a file of the directory that is neither held nor within ``JITTER`` positions of the last one
ends the scan: what was fetched and not opened is dropped, requests
still in flight are cancelled, and detection starts again from that open. Bytes not opened
within ``hold`` seconds of their batch's end are dropped, and fetched again if the reader comes
back to them.

Which files: regular files of the listing with 0 < size <= ``SMALL_FILE``; the others (empty
files, big ones, directories) are left to the usual reader and do not break the order. Nothing
is fetched while the opens find their files in the kernel's page cache (``CACHED_OPENS`` in a
row: a directory read again through the same mount); the first open that needs bytes again
resumes fetching.

What an open gets from a batch (the guarantees):
- Only an open for reading whose attributes (size, version, from the listing or metadata cache
  at open time) are the ones the batch was asked for, whose member in the reply has exactly that
  size, and with no change made through this mount while it waited; any other open gets the
  usual reader (ranged GETs, each checked against the size and version of the open: ESTALE on a
  mismatch).
- Bytes: the object's whole content as AIS held it when the designated target read it for the
  batch (one version, never a mix: AIS reads an object under its lock), at most ``hold`` seconds
  (the metadata TTL) before the open. The version of those bytes is not checked: a Get-Batch
  reply does not carry one (AIS v1.5.0: the TAR headers give name, size, mode and a time; the
  multipart form's ``metadata`` part, ``MossOut``, gives name, bucket, size, error and the
  caller's opaque bytes). So an object replaced by one of the same size is not noticed: replaced
  after the listing and before the batch read, the open gets the new bytes under the listing's
  version; replaced after the batch read, the open gets the bytes a GET at that moment gave, at
  most ``hold`` seconds old: the staleness the mount allows its attributes and listings too.
  Replaced by one of another size: the usual reader, which fails with ESTALE as always.
- A change made through this mount (upload, truncate, unlink, rename: :meth:`changed`) drops
  what is held of that name.
- A member the batch did not deliver (AIS ends a reply after too many missing objects, a broken
  stream, a changed size) or reported missing (AIS's ``__404__`` member): the usual reader, whose
  GET is the answer (an object deleted since the listing fails the open's first read with
  ENOENT). A Get-Batch's "missing" is not final: AIS v1.5.0 reports an object missing when the
  target that the cluster map now names for it does not hold it yet, while a GET is served (that
  target fetches the object from the one that holds it). After a target rejoins, the objects
  written while it was away are in that state until the rebalance has moved them (seconds on
  the local cluster; a listing and a HEAD do not show them meanwhile either).
- An open waits for its bytes while the batch makes progress: a batch that delivered nothing
  for ``STALLED`` seconds is given up (cancelled, the scan stopped, one INFO line) and its files
  are read the usual way. AIS v1.5.0's designated target waits ``get_batch.max_wait`` (20 s) for
  each object of a target that has not started sending its part, then fetches it itself: a
  target that had just rejoined and refused its part ("not ready yet") held a 28-file batch for
  100 s, one file per 20 s.

Memory: every byte a batch asks for is reserved in the read-ahead budget before it is sent (a
batch that does not fit is not sent) and released when dropped, once in the kernel's page cache
(:meth:`stored`: the open then keeps those pages), or, once an open took it, when that handle's
reader lets it go.

The scans' state (a directory's order, its batches and their files) is in ``scan_state``.

Concurrency: trio thread only. The FUSE handlers call :meth:`opened` and :meth:`changed`; each
batch is a task of its own (``spawn``) that fills its entries as the reply arrives. A scan's
state changes only between awaits.

Invariants:
- Every entry of a scan's ``held`` was requested by one of its batches and neither taken by an
  open nor dropped; ``held`` is in listing order (batches are sent in order), but for files
  fetched again after they expired (those are dropped by their own expiry, if not opened).
- An entry's ``reserved`` bytes are in the budget: its size from the request until it is taken,
  dropped, stored in the kernel's page cache, or its member did not come; 0 after (the taker's
  reader then holds them).
- An entry's ``arrived`` is set once its batch delivered it or ended without it (then ``data``
  is None); every entry's is set when its batch task ends, so no open waits for good.
- A batch's ``moved_at`` is when it was sent or last delivered a member; an open waits for an
  entry at most until ``STALLED`` seconds after it.
- ``pending`` holds a scan's batches that still have entries in ``held``, at most ``DEPTH``.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import trio

from . import errors
from .aisapi import AisApi, Spawn
from .budget import MemoryBudget
from .cache import Stat
from .getbatch import BatchItem
from .listing import Child, Listing
from .listings import parent_of
from .scan_state import MIN_AHEAD, Batch, Entry, Scan, is_file, next_file, position

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# Files up to this size are fetched in batches; a bigger one costs little more as a GET of its own.
SMALL_FILE = 1 * MIB
# Files per Get-Batch at most: AIS sends a reply's last few KiB (its last file, when the files
# are tiny) only ~100 ms after the rest, so a batch of tiny files must hold many of them to be
# worth its wait.
BATCH_FILES = 1024
# Batches requested ahead of the reader: each one's late tail is hidden behind the other. Two
# big ones rather than more small ones: AIS spends CPU per request (a cold `cp -r` of 2,000 x
# 64 KiB files: 2 x 16 MiB against 4 x 8 MiB in flight took 3-13% less time and 6-22% less CPU
# in AIS and in the daemon), and the first of fewer side by side arrives sooner.
DEPTH = 2
# Opens in a row of the directory's next file before files are fetched ahead.
START_AFTER = 3
# A running scan goes on through opens this many listing positions around the last one (several
# readers of one directory, or a reader that skips a file).
JITTER = 16
# Directories whose order is followed at once.
MAX_SCANS = 64
# Opens in a row whose file's pages the kernel still holds, after which nothing is fetched.
CACHED_OPENS = 2
# Seconds a batch may go without delivering a member before the opens waiting for it give it up:
# far above AIS's usual gaps (a reply's last few KiB come ~100 ms after the rest), far below its own
# wait for a target that does not send its part (``get_batch.max_wait``, 20 s per object).
STALLED = 5.0


class ListingSource(Protocol):
    """Where the directory's order comes from (``listings.Listings``)."""

    def cached(self, bucket: str, prefix: str) -> Listing | None: ...


class DirectoryScans:
    def __init__(self, aio: AisApi, spawn: Spawn, listings: ListingSource,
                 budget: MemoryBudget, *, batch_bytes: int, hold: float) -> None:
        """``batch_bytes``: bytes per Get-Batch (0: no batches), at most a ``DEPTH``-th of the
        budget; ``hold``: seconds fetched bytes wait for their open."""
        self.aio = aio
        self.spawn = spawn
        self.listings = listings
        self.budget = budget
        self.batch_bytes = min(batch_bytes, budget.limit // DEPTH)
        self.hold = hold
        self._scans: OrderedDict[tuple[str, str], Scan] = OrderedDict()
        self._changes = 0  # changes made through the mount (see _hand_over)
        # Told of each file's bytes as they arrive, before any open (the open-files layer puts
        # them in the kernel's page cache: the open then needs no READ).
        self.arrived: Callable[[str, str, int, str, memoryview], None] | None = None
        self.batches_sent = 0
        self.files_served = 0

    # ------------------------------------------------------------------ for the open files

    async def opened(self, bucket: str, key: str, stat: Stat, *,
                     need_bytes: bool = True) -> memoryview | None:
        """A file opened for reading, with the attributes the open shows: its whole content when
        a batch fetched it for this open (the caller's reader takes over its budget), else None
        (the usual reader: also when the batch reported the object missing or stalled).
        ``need_bytes`` False: the kernel still holds the file's pages; the open only counts for
        the order."""
        if not self.batch_bytes:
            return None
        prefix, name = parent_of(key)
        scan = self._scan_of(bucket, prefix)
        if scan is None:
            return None
        entry = scan.held.pop(name, None)
        if entry is not None:
            self._unhold(scan, entry)
            # Bytes that went to the kernel's page cache as they arrived (``arrived``) were
            # this scan's doing, not an earlier read's: the open is served, fetching goes on.
            stored = not need_bytes and entry.offered
            if stored:
                self.files_served += 1
            self._follow(scan, entry.pos, hit=True, need_bytes=need_bytes or stored)
            return await self._hand_over(scan, entry, stat, need_bytes)
        pos = position(scan.children, name)
        if pos is not None:
            self._follow(scan, pos, hit=False, need_bytes=need_bytes)
        return None

    def stored(self, bucket: str, key: str) -> None:
        """The held file ``key`` is in the kernel's page cache now: its bytes are let go here
        (its open keeps those pages; were they dropped before it, its reads are GETs)."""
        prefix, name = parent_of(key)
        scan = self._scans.get((bucket, prefix))
        entry = scan.held.get(name) if scan is not None else None
        if entry is not None and entry.data is not None:
            self._release(entry)

    def give_back(self, data: memoryview) -> None:
        """Bytes :meth:`opened` returned that the caller does not use after all."""
        self.budget.release(len(data))

    def changed(self, bucket: str, key: str) -> None:
        """The object ``key`` was changed through this mount: nothing held of it is served."""
        self._changes += 1
        prefix, name = parent_of(key)
        scan = self._scans.get((bucket, prefix))
        if scan is not None:
            entry = scan.held.pop(name, None)
            if entry is not None:
                self._unhold(scan, entry)
                self._release(entry)

    def changed_under(self, bucket: str, prefix: str) -> None:
        """Objects under ``prefix`` were changed (a directory renamed): scans there end."""
        self._changes += 1
        for where in [w for w in self._scans if w[0] == bucket and w[1].startswith(prefix)]:
            self._stop(self._scans.pop(where))

    def close(self) -> None:
        """The mount is going away: drop everything."""
        while self._scans:
            self._stop(self._scans.popitem()[1])

    # ------------------------------------------------------------------ following the order

    def _scan_of(self, bucket: str, prefix: str) -> Scan | None:
        where = (bucket, prefix)
        scan = self._scans.get(where)
        listing = self.listings.cached(bucket, prefix)
        if scan is not None and (scan.running or listing is None or listing is scan.listing):
            self._scans.move_to_end(where)
            return scan
        if listing is None:
            return None
        if scan is not None:
            self._stop(scan)  # detecting in a listing that is no longer the cached one
        scan = self._scans[where] = Scan(bucket, prefix, listing)
        while len(self._scans) > MAX_SCANS:
            self._stop(self._scans.popitem(last=False)[1])
        return scan

    def _follow(self, scan: Scan, pos: int, *, hit: bool, need_bytes: bool) -> None:
        """An open at ``pos`` of the scan's order (``need_bytes`` False: the kernel holds the
        file's pages)."""
        now = trio.current_time()
        scan.cached = 0 if need_bytes else scan.cached + 1
        if scan.running:
            if hit or scan.last - JITTER <= pos <= max(scan.ahead, scan.last + JITTER):
                scan.count_open(now)
                scan.last = max(scan.last, pos)
                self._drop_behind(scan)
                self._top_up(scan)
                return
            log.debug("ais://%s/%s: read out of listing order; scan stopped",
                      scan.bucket, scan.prefix)
            self._stop(scan)
        if scan.streak and pos == next_file(scan.children, scan.last):
            scan.streak += 1
        else:
            scan.streak = 1
            scan.since, scan.opens, scan.rate = now, 0, 0.0
        scan.last = pos
        scan.count_open(now)
        if scan.streak >= START_AFTER:
            log.debug("ais://%s/%s: files read in listing order; fetching ahead in batches",
                      scan.bucket, scan.prefix)
            scan.running = True
            scan.children = list(scan.children)  # positions stay put whatever the cache does
            scan.ahead = pos + 1
            self._top_up(scan)

    def _top_up(self, scan: Scan) -> None:
        """Keep what the reader gets through in ``LOOKAHEAD`` fetched ahead, in up to ``DEPTH``
        batches, within the budget."""
        scan.ahead = max(scan.ahead, scan.last + 1)
        if scan.cached >= CACHED_OPENS:
            return  # the reader finds its files in the kernel's page cache
        wanted = scan.ahead_wanted()
        per_batch = min(BATCH_FILES, max(MIN_AHEAD // DEPTH, wanted // DEPTH))
        while len(scan.pending) < DEPTH and len(scan.held) < wanted:
            picked: list[tuple[int, Child]] = []
            total = 0
            pos = scan.ahead
            children = scan.children
            while pos < len(children) and len(picked) < per_batch:
                child = children[pos]
                if is_file(child) and child.name not in scan.held:
                    assert child.stat is not None
                    size = child.stat.size
                    if 0 < size <= SMALL_FILE:
                        if picked and total + size > self.batch_bytes:
                            break
                        picked.append((pos, child))
                        total += size
                pos += 1
            if not picked:
                scan.ahead = pos  # nothing to fetch up to the end: not looked through again
                return
            if not self.budget.try_reserve(total):
                return
            scan.ahead = pos
            batch = Batch()
            for at, child in picked:
                assert child.stat is not None
                entry = Entry(child.name, at, child.stat, batch)
                batch.entries.append(entry)
                scan.held[child.name] = entry
            batch.left = len(batch.entries)
            scan.pending.append(batch)
            self.batches_sent += 1
            self.spawn(functools.partial(self._fetch, scan, batch))

    def _drop_behind(self, scan: Scan) -> None:
        """Entries the reader went past (by more than ``JITTER``) will not be opened in order."""
        while scan.held:
            name, entry = next(iter(scan.held.items()))
            if entry.pos >= scan.last - JITTER:
                return
            del scan.held[name]
            self._unhold(scan, entry)
            self._release(entry)

    def _stop(self, scan: Scan) -> None:
        """Order broken (or the scan forgotten): drop what is held, cancel what is in flight."""
        for entry in scan.held.values():
            self._release(entry)
        scan.held.clear()
        for batch in scan.pending:
            batch.left = 0
            batch.scope.cancel()
        scan.pending.clear()
        scan.running = False
        scan.streak = 0
        scan.children = scan.listing.children

    def _unhold(self, scan: Scan, entry: Entry) -> None:
        """``entry`` left ``held``: its batch is no longer pending once none of its entries is
        held; one still in flight then is not wanted any more."""
        batch = entry.batch
        batch.left -= 1
        if batch.left == 0 and batch in scan.pending:
            scan.pending.remove(batch)
            if any(not e.arrived.is_set() for e in batch.entries) and all(
                    e.reserved == 0 for e in batch.entries):
                batch.scope.cancel()

    async def _arrival(self, scan: Scan, entry: Entry) -> bool:
        """Wait for ``entry``; False when its batch stalled (see ``STALLED``): the batch is
        given up and the scan stopped, so that its files and the next ones are read the usual
        way (the order, if the reader keeps it, starts a scan again)."""
        batch = entry.batch
        while not entry.arrived.is_set():
            left = batch.moved_at + STALLED - trio.current_time()
            if left <= 0:
                if not batch.scope.cancel_called:
                    log.info("ais://%s/%s: Get-Batch delivered nothing for %.0f s; reading "
                             "its files one by one", scan.bucket, scan.prefix + entry.name,
                             STALLED)
                    batch.scope.cancel()  # its task marks what did not come
                    if scan.running:
                        self._stop(scan)
                return False
            with trio.move_on_after(left):
                await entry.arrived.wait()
        return True

    def _release(self, entry: Entry) -> None:
        entry.data = None
        if entry.reserved:
            self.budget.release(entry.reserved)
            entry.reserved = 0

    # ------------------------------------------------------------------ batches

    async def _fetch(self, scan: Scan, batch: Batch) -> None:
        """Send one batch, fill its entries as they come; drop the ones not taken in time."""
        entries = batch.entries

        def deliver(item: BatchItem) -> None:
            batch.moved_at = trio.current_time()
            entry = entries[item.index]
            if item.data is not None and entry.reserved:
                entry.data = item.data
                if self.arrived is not None:
                    entry.offered = True
                    self.arrived(scan.bucket, scan.prefix + entry.name, entry.size,
                                 entry.version, item.data)
            elif item.error is not None:  # missing, or not fetched: the usual reader
                self._release(entry)
            entry.arrived.set()

        what = f"ais://{scan.bucket}/{scan.prefix}"
        batch.moved_at = trio.current_time()
        try:
            with batch.scope:
                await self.aio.get_batch(
                    scan.bucket, [scan.prefix + e.name for e in entries], max_size=SMALL_FILE,
                    sizes=[e.size for e in entries], deliver=deliver,
                )
        except errors.AisError as exc:
            log.info("%s: Get-Batch of %d files failed (read one by one instead): %s",
                     what, len(entries), exc)
        except Exception:
            log.exception("%s: Get-Batch of %d files failed", what, len(entries))
        finally:
            for entry in entries:
                if not entry.arrived.is_set():  # the batch ended before it: the usual reader
                    self._release(entry)
                    entry.arrived.set()
        if batch.left:
            await trio.sleep(self.hold)
            for entry in entries:
                if scan.held.get(entry.name) is entry:
                    del scan.held[entry.name]
                    self._unhold(scan, entry)
                    self._release(entry)
                    # The reader paused: the next batch fetches this file again.
                    scan.ahead = min(scan.ahead, entry.pos)

    async def _hand_over(self, scan: Scan, entry: Entry, stat: Stat, need_bytes: bool
                         ) -> memoryview | None:
        """The bytes of a taken entry, for an open with attributes ``stat``."""
        changes = self._changes
        try:
            if not need_bytes or (entry.size, entry.version) != (stat.size, stat.version):
                return None
            if not await self._arrival(scan, entry):
                return None
            if changes != self._changes:
                return None  # something changed through the mount meanwhile: maybe this file
            if entry.data is None or not entry.reserved:
                return None
            data = entry.data
            entry.data = None
            entry.reserved = 0  # the caller's reader holds them now
            self.files_served += 1
            return data
        finally:
            self._release(entry)

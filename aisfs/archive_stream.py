"""Archive-order read-ahead across members: a reader that goes through an archive's members in
order (``cp -r shard.tar/ out/``, a WebDataset-style loader) gets them from one streamed read of
the whole archive instead of one request each.

When whole-member fetches of one archive come in name order (``SEQUENTIAL_RUN`` in a row, each
the member after the one before; or just its first member, when a stream read an archive before
it in the same directory to its end: a reader going through the shards of a directory), the
archive is read once from its start, member by member
(``AisApi.open_member_stream``: ``.tar``, ``.tgz``, ``.tar.gz``, ``.tar.lz4``, ``.zip``). The
members it reads are held until taken (or passed by ``SLACK`` members), at most ``WINDOW``
members ahead of the furthest one taken and ``HOLD_BYTES`` in all, within the read-ahead budget;
a fetch of a member the stream holds takes its bytes, and a fetch of one the stream is about to
reach waits for it.
Each member held is offered to ``arrived`` (the open-files layer puts it in the kernel's page
cache and then calls :meth:`ArchiveStreams.stored`, which lets it go from here); its open then
needs no fetch and reports the readers' progress instead (:meth:`ArchiveStreams.opened`).
Anything else (a member the stream passed without holding it, one far ahead, a format not
streamed, another version of the archive) is fetched on its own, as is everything once the
stream ends. A stream can end before the archive does (a zip member it cannot read: see
``zip_members``); the members after its end are fetched on their own, and no new stream of that
version of the archive starts for them (it would end at the same place); nor after a stream that
failed (a broken connection, bytes the scanner cannot read). A stream nobody takes from for
``IDLE_SECONDS`` stops, and one whose archive is not the version listed never starts.

Name order stands for archive order: the tools that write shards write them in key order. A
shard written in another order only loses this fast path.

Concurrency: trio thread only. Each stream's producer is a task of its own (``spawn``); takers
wait on its ``arrived`` event and the producer on ``room``; every change happens between awaits.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import TypeVar

import trio

from . import errors
from .aisapi import AisApi, MemberStream, Spawn
from .archives import ArchiveContents, Member
from .budget import MemoryBudget
from .listings import parent_of
from .member_stream import streamable

log = logging.getLogger(__name__)

SEQUENTIAL_RUN = 3
WINDOW = 256
# Members this far behind the furthest one taken are still held (readers that take members
# nearly in order, like several loader workers), not further.
SLACK = 32
HOLD_BYTES = 64 * 1024 * 1024
IDLE_SECONDS = 5.0
# Member bytes read in one worker-thread call (one thread hop per member cost more than the
# parsing of a 64 KiB member).
BATCH_BYTES = 1024 * 1024
BATCH_MEMBERS = 16
_RUNS_KEPT = 1024  # archives whose last fetched member is remembered


class _Stream:
    """One archive being read in order. Invariants: ``held`` holds members read and neither
    taken nor stored in the kernel's page cache, ``held_bytes`` their size (reserved in the
    budget); ``position`` is the highest listing index read, ``taken`` the highest taken (or
    opened with its pages in the kernel); ``ended`` once nothing more will come."""

    def __init__(self, tree: ArchiveContents, first: int, now: float) -> None:
        self.tree = tree
        self.held: dict[str, bytearray] = {}
        self.held_bytes = 0
        self.position = -1
        self.taken = first - 1
        self.ended = False
        self.wanted: collections.Counter[int] = collections.Counter()  # indexes waited for
        self.last_take = now
        self.arrived = trio.Event()
        self.room = trio.Event()
        self.scope = trio.CancelScope()

    def wake_takers(self) -> None:
        self.arrived.set()
        self.arrived = trio.Event()

    def wake_producer(self) -> None:
        self.room.set()
        self.room = trio.Event()


class ArchiveStreams:
    def __init__(
        self, aio: AisApi, budget: MemoryBudget, spawn: Spawn, max_member: int,
        timer: Callable[[], float] = trio.current_time,
    ) -> None:
        self.aio = aio
        self.budget = budget
        self.spawn = spawn
        self.max_member = max_member  # bigger members are read in parts, not held
        self.timer = timer
        self._streams: dict[tuple[str, str], _Stream] = {}
        # (bucket, archive) -> (listing index of the last member fetched, run length so far)
        self._runs: collections.OrderedDict[tuple[str, str], tuple[int, int]] = (
            collections.OrderedDict())
        # (bucket, archive) -> (the version's tree, listing index of the last member read) of
        # streams that read to their end: no stream of that version starts for a member after.
        self._ends: collections.OrderedDict[tuple[str, str], tuple[ArchiveContents, int]] = (
            collections.OrderedDict())
        # (bucket, directory prefix) -> the archive there that a stream last read to its end
        self._read_through: collections.OrderedDict[tuple[str, str], str] = (
            collections.OrderedDict())
        self.started = 0  # streams started (for tests and metrics)
        # Told of each member held as it arrives (the open-files layer puts it in the kernel's
        # page cache, then calls ``stored``; the member's open then needs no READ and reports
        # itself with ``opened``).
        self.arrived: Callable[[str, ArchiveContents, str, bytearray], None] | None = None

    async def take(self, bucket: str, tree: ArchiveContents, member: Member) -> bytearray | None:
        """The member's bytes from an archive-order stream, or None: fetch it on your own."""
        index = tree.order.get(member.path)
        if index is None or member.path in tree.duplicates:
            return None
        key = (bucket, tree.key)
        stream = self._streams.get(key)
        if stream is not None and stream.tree is not tree:
            self._stop(key, stream)  # another version of the archive
            stream = None
        if stream is None:
            in_order = self._in_order(key, index)
            if (not (in_order or (index == 0 and self._after_read_through(bucket, tree.key)))
                    or not streamable(tree.key) or self._past_end(key, tree, index)):
                return None
            stream = self._start(bucket, tree, index)
        while True:
            data = stream.held.pop(member.path, None)
            if data is not None:
                stream.held_bytes -= len(data)
                self.budget.release(len(data))
                stream.taken = max(stream.taken, index)
                stream.last_take = self.timer()
                self._drop_passed(stream)
                stream.wake_producer()
                return data
            if stream.ended or index <= stream.position or index > stream.taken + WINDOW:
                return None
            stream.wanted[index] += 1
            try:
                await stream.arrived.wait()
            finally:
                stream.wanted[index] -= 1
                if not stream.wanted[index]:
                    del stream.wanted[index]

    def stored(self, bucket: str, tree: ArchiveContents, path: str) -> None:
        """The held member ``path`` is in the kernel's page cache now: it is not held here."""
        stream = self._streams.get((bucket, tree.key))
        if stream is not None and stream.tree is tree:
            data = stream.held.pop(path, None)
            if data is not None:
                stream.held_bytes -= len(data)
                self.budget.release(len(data))
                stream.wake_producer()

    def opened(self, bucket: str, tree: ArchiveContents, member: Member) -> None:
        """``member`` was opened with its pages in the kernel (no fetch will come): the readers
        got this far, as :meth:`take` would have told."""
        stream = self._streams.get((bucket, tree.key))
        index = tree.order.get(member.path)
        if stream is not None and stream.tree is tree and index is not None:
            stream.taken = max(stream.taken, index)
            stream.last_take = self.timer()
            self._drop_passed(stream)
            stream.wake_producer()

    def stop_all(self) -> None:
        for key, stream in list(self._streams.items()):
            self._stop(key, stream)

    # ------------------------------------------------------------------ internals

    def _in_order(self, key: tuple[str, str], index: int) -> bool:
        last, run = self._runs.get(key, (-2, 0))
        run = run + 1 if index == last + 1 else 1
        _remember(self._runs, key, (index, run))
        return run >= SEQUENTIAL_RUN

    def _after_read_through(self, bucket: str, archive: str) -> bool:
        """Whether a stream read an archive before this one in its directory to its end: a
        reader going through the directory's archives in order."""
        last = self._read_through.get((bucket, parent_of(archive)[0]))
        return last is not None and last < archive

    def _past_end(self, key: tuple[str, str], tree: ArchiveContents, index: int) -> bool:
        end = self._ends.get(key)
        return end is not None and end[0] is tree and index > end[1]

    def _ended(self, key: tuple[str, str], stream: _Stream) -> None:
        _remember(self._ends, key, (stream.tree, stream.position))

    def _start(self, bucket: str, tree: ArchiveContents, first: int) -> _Stream:
        stream = _Stream(tree, first, self.timer())
        key = (bucket, tree.key)
        self._streams[key] = stream
        self.started += 1
        self.spawn(lambda: self._produce(bucket, key, stream))
        return stream

    def _stop(self, key: tuple[str, str], stream: _Stream) -> None:
        stream.scope.cancel()
        stream.ended = True
        if self._streams.get(key) is stream:
            del self._streams[key]
        self._release(stream)
        stream.wake_takers()

    def _release(self, stream: _Stream) -> None:
        self.budget.release(stream.held_bytes)
        stream.held.clear()
        stream.held_bytes = 0

    def _drop_passed(self, stream: _Stream) -> None:
        """Members the readers went past without taking them will not be asked for."""
        order = stream.tree.order
        for path in [p for p in stream.held if order[p] < stream.taken - SLACK]:
            size = len(stream.held.pop(path))
            stream.held_bytes -= size
            self.budget.release(size)

    def _full(self, stream: _Stream) -> bool:
        return (stream.held_bytes >= HOLD_BYTES or stream.position >= stream.taken + WINDOW)

    def _idle(self, stream: _Stream) -> bool:
        return self.timer() - stream.last_take > IDLE_SECONDS

    async def _produce(self, bucket: str, key: tuple[str, str], stream: _Stream) -> None:
        source: MemberStream | None = None
        what = f"ais://{bucket}/{stream.tree.key}"
        try:
            with stream.scope:
                source = await self.aio.open_member_stream(bucket, stream.tree.key,
                                                            stream.tree.size)
                if source.version != stream.tree.version:
                    log.debug("%s: version %s, listed %s: not streamed", what, source.version,
                              stream.tree.version)
                    return
                while True:
                    if self._idle(stream):
                        return  # nobody takes from it
                    if self._full(stream):
                        if any(i > stream.position for i in stream.wanted):
                            return  # what is waited for is not where name order says
                        with trio.move_on_after(IDLE_SECONDS):
                            await stream.room.wait()
                        continue
                    items = await source.next(self.max_member, BATCH_BYTES, BATCH_MEMBERS)
                    if not items:
                        break
                    for item in items:
                        self._hold(bucket, stream, *item)
                # Read to the end (or as far as the stream can read): what is held stays
                # takeable until taken or idle.
                self._ended(key, stream)
                _remember(self._read_through, (bucket, parent_of(stream.tree.key)[0]),
                          stream.tree.key)
                stream.ended = True
                stream.wake_takers()
                while stream.held and not self._idle(stream):
                    with trio.move_on_after(IDLE_SECONDS):
                        await stream.room.wait()
        except errors.AisFsError as exc:
            log.info("%s: reading the archive in order stopped: %s", what, exc)
            self._ended(key, stream)  # fetched one by one from here, not streamed again
        finally:
            if source is not None:
                source.close()
            self._stop(key, stream)

    def _hold(self, bucket: str, stream: _Stream, path: str, data: bytearray | None,
              size: int) -> None:
        index = stream.tree.order.get(path)
        if index is None or path in stream.tree.duplicates:
            return  # not a member the mount shows, or one that AIS serves another copy of
        stream.position = max(stream.position, index)
        if (data is not None and path not in stream.held and index >= stream.taken - SLACK
                and self.budget.try_reserve(size)):
            stream.held[path] = data
            stream.held_bytes += size
            if self.arrived is not None:
                self.arrived(bucket, stream.tree, path, data)
        stream.wake_takers()


K = TypeVar("K")
V = TypeVar("V")


def _remember(table: collections.OrderedDict[K, V], key: K, value: V) -> None:
    """``table[key] = value`` as its newest entry; the oldest beyond ``_RUNS_KEPT`` dropped."""
    table.pop(key, None)
    table[key] = value
    if len(table) > _RUNS_KEPT:
        table.popitem(last=False)

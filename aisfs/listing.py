"""One directory's entries as its listing arrives from AIS, page by page.

A :class:`ListingStream` turns each page of a non-recursive LIST into directory entries as soon as
it arrives, so readdir hands out the first entries while AIS still produces the next page (an
``ls -l`` of 10,000 objects overlaps AIS's listing with the kernel's and ``ls``'s own work).

Rules for every entry: names that cannot be a POSIX file name (empty, ``.``, ``..``, longer than
255 bytes, containing ``/``) are skipped with one warning per listing; this mount's temporary
upload objects are hidden; a name that is both an object ``x`` and a prefix ``x/`` is shown once,
as the directory. AIS lists in name order, so an object ``x`` is held back only until a key at or
after ``x/`` arrives: then no directory ``x/`` can follow any more.

Entries come out in the cluster's name order, except that an object is handed out after the
entries whose names extend it with a character sorting before ``/`` (``a-b`` before ``a``).

Concurrency: trio thread only. One producer (:meth:`add`, :meth:`finish`, :meth:`fail`) and any
number of readers; ``children`` only grows, so offsets into it stay valid.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from . import errors
from .cache import Stat
from .config import TMP_MARKER
from .objects import ListEntry

log = logging.getLogger(__name__)

NAME_MAX = 255
# Entries looked at around where a name sorts (listings are in name order but for a few names:
# an object ``a`` comes after ``a-b``, directories made here come first).
NEAR = 8


def valid_name(name: str) -> bool:
    # Up to 63 characters cannot exceed 255 bytes of UTF-8: skip the encode for those.
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name and (
        len(name) <= 63 or len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX
    )


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 3x to create
class Child:
    """One directory entry: a file with its stat, or a subdirectory (stat None)."""

    name: str
    is_dir: bool
    stat: Stat | None


@dataclass(slots=True)
class Listing:
    """What the cluster holds in one directory (plus directories made here), by name too."""

    children: list[Child]
    by_name: dict[str, Child]
    # When it was fetched (the namespace's clock): a name missing from it is believed missing
    # for the negative metadata TTL only.
    fetched_at: float = 0.0
    # Subdirectories whose listing was fetched since this one: a tree walk, from two on.
    subdirs_listed: set[str] = field(default_factory=set)


def sort_key(child: Child) -> str:
    """Where an entry sorts in AIS's name order (a directory as its prefix, ``name/``)."""
    return child.name + "/" if child.is_dir else child.name


def near(children: list[Child], name: str) -> int | None:
    """Where the entry ``name`` is in a listing's order, or None (a listing holds a name once)."""
    at = bisect.bisect_left(children, name, key=sort_key)
    for i in range(max(0, at - NEAR), min(len(children), at + NEAR + 1)):
        if children[i].name == name:
            return i
    return None


class ListingStream:
    """The entries one opendir shows: files being written here first, then the listing.

    ``listing`` collects what AIS said (plus ``local_dirs``), to be cached once complete;
    ``children`` is what readdir hands out, the same entries with ``shown`` in front (files open
    for writing here, which hide listed objects of the same name).
    """

    def __init__(self, where: str, local_dirs: Iterable[str] = (),
                 shown: Iterable[Child] = ()) -> None:
        self.where = where  # "ais://bucket/prefix/", for log lines
        self.children: list[Child] = list(shown)
        self.listing = Listing([], {})
        self.done = False
        self.error: errors.AisFsError | None = None
        # Open directories reading this stream; the producer runs in ``fetching``, which is
        # cancelled when the last reader goes before the listing is complete.
        self.readers = 0
        self.fetching = trio.CancelScope()
        self._hidden = {c.name for c in self.children}
        # Objects whose same-named directory may still come: (the key that settles it, entry).
        self._held: list[tuple[str, Child]] = []
        self._skipped: list[str] = []
        self._arrived = trio.Event()
        for name in local_dirs:
            self._emit(Child(name, True, None))

    @classmethod
    def complete(cls, children: list[Child]) -> ListingStream:
        """A stream with nothing left to arrive (the cluster root, a cached listing)."""
        stream = cls("")
        stream.children = children
        stream.done = True
        return stream

    def add(self, prefix: str, entries: list[ListEntry]) -> None:
        """One page of the listing of ``prefix`` (entries in the cluster's name order)."""
        plen = len(prefix)
        held = self._held
        by_name = self.listing.by_name
        for entry in entries:
            full = entry.name
            key = full[plen:] if full.startswith(prefix) else ""  # a directory's ends with "/"
            while held and key >= held[-1][0]:
                settled_by, obj = held.pop()
                if key != settled_by:
                    self._emit(obj)
                # else the directory of the same name arrives next and shows instead.
            name = key[:-1] if entry.is_dir else key
            if not valid_name(name):
                self._skipped.append(full)
                continue
            if TMP_MARKER in name or name in by_name:
                continue  # an old temporary object; or a directory made here already shown
            if entry.is_dir:
                self._emit(Child(name, True, None))
            else:
                stat = Stat(entry.size, entry.mtime_ns, entry.version)
                held.append((key + "/", Child(name, False, stat)))
        self._wake()

    def finish(self) -> None:
        """The last page came: hand out what was held back."""
        while self._held:
            self._emit(self._held.pop()[1])
        if self._skipped:
            log.warning("%s: skipped %d object name(s) that cannot be a file name, e.g. %r",
                        self.where, len(self._skipped), self._skipped[0])
        self.done = True
        self._wake()

    def fail(self, error: errors.AisFsError) -> None:
        """The listing cannot be completed: readers past what arrived get ``error``."""
        self.error = error
        self.done = True
        self._wake()

    async def wait_beyond(self, count: int) -> None:
        """Until more than ``count`` entries arrived or none will; raises the listing's error
        when it ended before that."""
        while len(self.children) <= count and not self.done:
            await self._arrived.wait()
        if len(self.children) <= count and self.error is not None:
            raise self.error

    def _emit(self, child: Child) -> None:
        if child.name in self.listing.by_name:  # an object whose directory came out of order
            return
        self.listing.by_name[child.name] = child
        self.listing.children.append(child)
        if child.name not in self._hidden:
            self.children.append(child)

    def _wake(self) -> None:
        self._arrived.set()
        self._arrived = trio.Event()

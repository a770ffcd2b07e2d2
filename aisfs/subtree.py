"""Many directories' listings from one recursive listing, for tree walks (`find`, `du`, `ls -R`).

AIS answers a LIST in ~10 ms however small the directory, so a walk that lists 300 directories
one by one spends 3 s waiting. When a walk is seen (see ``namespace``), one recursive listing of
the parent directory, starting at the directory being opened, gives every directory below it:
:class:`SubtreeSplitter` turns that listing into the non-recursive listing of each directory,
handed out as soon as the listing has moved past it (AIS lists in name order, so nothing can be
added to a directory afterwards). goofys does the same ("slurp").

:class:`SubtreeScan` is the state of one such listing in flight: which directories it will still
settle, and an event per page for the opens waiting on it.

Concurrency: trio thread only (the splitter is pure and synchronous).
"""

from __future__ import annotations

import trio

from .objects import ListEntry


class SubtreeSplitter:
    """Feed a recursive listing of ``prefix`` (objects in name order); get back each directory
    below ``prefix`` once complete, as its non-recursive entries (objects, and subdirectories as
    ``name/`` entries), in the order a non-recursive listing gives them. ``prefix`` itself is
    not produced: keys directly under it are skipped."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # The directories the listing is inside of, outermost first, with their entries so far.
        self._open: list[tuple[str, list[ListEntry]]] = []

    def feed(self, entries: list[ListEntry]) -> list[tuple[str, list[ListEntry]]]:
        """The directories this page completed."""
        done: list[tuple[str, list[ListEntry]]] = []
        stack = self._open
        for entry in entries:
            key = entry.name
            if entry.is_dir or not key.startswith(self.prefix):
                continue  # a recursive listing has objects only; and all under the prefix
            while stack and not key.startswith(stack[-1][0]):
                done.append(stack.pop())
            cut = key.rfind("/") + 1  # the key's directory is key[:cut]
            pos = len(stack[-1][0]) if stack else len(self.prefix)
            while pos < cut:  # the directories between the innermost open one and the key
                pos = key.index("/", pos) + 1
                if stack:
                    stack[-1][1].append(ListEntry(key[:pos], True))
                stack.append((key[:pos], []))
            if stack:
                stack[-1][1].append(entry)
        return done

    def finish(self) -> list[tuple[str, list[ListEntry]]]:
        """The listing ended: every directory still open is complete."""
        done = self._open[::-1]
        self._open = []
        return done


class SubtreeScan:
    """A recursive listing of ``prefix`` from ``start`` on, in flight."""

    def __init__(self, bucket: str, prefix: str, start: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.start = start  # the listing starts just after this name
        self.position = ""  # the last name listed so far
        self.done = False
        self._progress = trio.Event()

    def will_settle(self, bucket: str, directory: str) -> bool:
        """Whether this listing is still to hand out ``directory`` (a prefix ending in "/"),
        or to pass it (then the directory has no object)."""
        if (self.done or bucket != self.bucket or not directory.startswith(self.prefix)
                or directory < self.start):
            return False
        return self.position <= directory or self.position.startswith(directory)

    def advance(self, position: str | None) -> None:
        if position is not None:
            self.position = position
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    async def progress(self) -> None:
        """Until the next page was handed out, or the listing ended."""
        if not self.done:
            await self._progress.wait()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

"""Directories as this mount changed them, where AIS does not show it (yet).

AIS has no directories of its own: a directory is a prefix with objects under it. So a
directory made with mkdir exists only here until its first object is written, and a directory
removed here may still be listed by AIS for a while (it lists emptied on-disk directories).
:class:`LocalDirs` keeps both kinds, for the namespace's lookups and the listings.

Concurrency: trio thread only; every method is synchronous. The namespace's mutations change
it (after their remote calls returned); listing producers only read it, except that a listing
showing objects under a removed directory again takes it off the removed set.

Invariants:
- ``made`` and ``removed`` hold (bucket, prefix ending in "/"); a prefix is in at most one of
  them: a directory made here again is no longer removed, and one removed is no longer made.
- A prefix leaves ``made`` when an object is written under it (AIS has it then), when it is
  removed, or when it is renamed (it is then made under its new name).
- A prefix leaves ``removed`` when it is made again, when an object is written under it here,
  or when a listing finds objects under it again (written by another client).
"""

from __future__ import annotations


class LocalDirs:
    def __init__(self) -> None:
        # Directories made here that have no object yet.
        self.made: set[tuple[str, str]] = set()
        # Directories removed here that AIS may still list.
        self.removed: set[tuple[str, str]] = set()

    def is_made(self, bucket: str, prefix: str) -> bool:
        return (bucket, prefix) in self.made

    def is_removed(self, bucket: str, prefix: str) -> bool:
        return (bucket, prefix) in self.removed

    def make(self, bucket: str, prefix: str) -> None:
        """mkdir here (or the parent of the last object unlinked here, which lives on until
        rmdir as on a disk)."""
        self.made.add((bucket, prefix))
        self.removed.discard((bucket, prefix))

    def remove(self, bucket: str, prefix: str) -> None:
        """rmdir here, or the old name of a directory renamed here."""
        self.made.discard((bucket, prefix))
        self.removed.add((bucket, prefix))

    def exists_in_ais(self, bucket: str, prefix: str) -> None:
        """An object under ``prefix`` was written here, or a listing shows objects under it."""
        self.made.discard((bucket, prefix))
        self.removed.discard((bucket, prefix))

    def objects_back(self, bucket: str, prefix: str) -> None:
        """A listing found objects under ``prefix`` again: AIS's listing is believed."""
        self.removed.discard((bucket, prefix))

    def made_under(self, bucket: str, prefix: str) -> list[str]:
        """Prefixes made here strictly below ``prefix``."""
        return [p for (b, p) in self.made if b == bucket and p.startswith(prefix) and p != prefix]

    def made_children(self, bucket: str, prefix: str) -> list[str]:
        """Names of the directories made here directly under ``prefix``, sorted."""
        depth = prefix.count("/") + 1
        return sorted(p[len(prefix):-1] for (b, p) in self.made
                      if b == bucket and p.startswith(prefix) and p.count("/") == depth)

    def rename(self, bucket: str, old_prefix: str, new_prefix: str) -> None:
        """A directory was renamed here: what was made below it is made below the new name;
        the old name is removed."""
        for (b, p) in list(self.made):
            if b == bucket and p.startswith(old_prefix):
                self.made.discard((b, p))
                self.make(b, new_prefix + p[len(old_prefix):])
        self.remove(bucket, old_prefix)
        self.removed.discard((bucket, new_prefix))

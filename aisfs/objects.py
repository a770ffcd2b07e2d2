"""The values the layers exchange with AIS: object properties, listing entries, received ranges,
request bodies, and the decoding of AIS's listing JSON and time strings. No I/O.

Concurrency: plain values and pure functions; safe from any thread or task.
"""

from __future__ import annotations

import calendar
import mmap
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

LS_ENTRY_IS_DIR = 256
# What a listing asks AIS for (client.py, archive_calls.py) and the time shape it asks in.
LIST_PROPS = "name,size,version,atime,custom"  # the checksum is read by HEAD, when asked for
# Go layout: RFC 3339 with all nine digits of nanoseconds (".000000000", not ".999999999", which
# drops trailing zeros), so that listed times have one fixed shape, cheap to parse.
TIME_FORMAT = "2006-01-02T15:04:05.000000000Z07:00"
# Custom-metadata key under which aisfs keeps a file's mtime (nanoseconds since the epoch).
MTIME_KEY = "aisfs.mtime"

_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$"
)
_MTIME_IN_LISTING = re.compile(r"(?:^\[|\s)" + re.escape(MTIME_KEY) + r":(\d+)(?=[\s\]])")


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch for AIS's RFC 3339 time strings; 0 when unparsable."""
    m = _RFC3339.match(text)
    if not m:
        return 0
    y, mo, d, h, mi, s, frac, tz = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return secs * 1_000_000_000 + int((frac or "0").ljust(9, "0"))


@dataclass(slots=True)
class ObjectProps:
    """What aisfs needs to know about one object."""

    name: str
    size: int
    mtime_ns: int = 0
    version: str = ""
    checksum: str = ""
    atime_ns: int = 0
    custom: dict[str, bytes] = field(default_factory=dict)
    chunked: bool = False  # stored in chunks (by a multipart upload)


@dataclass(slots=True)
class ListEntry:
    name: str  # full object name, or "prefix/child/" for a virtual directory
    is_dir: bool
    size: int = 0
    mtime_ns: int = 0
    version: str = ""


@dataclass(slots=True)
class ListPage:
    entries: list[ListEntry]
    uuid: str
    continuation_token: str
    # AIS's entries as decoded JSON, when the caller asked to convert them itself (in pieces).
    raw: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class RangeResult:
    data: memoryview
    total_size: int  # from Content-Range, -1 when absent
    version: str


def range_total(content_range: str) -> int:
    """The object's size a ``Content-Range`` header (``bytes a-b/total``) gives; -1 when it
    gives none."""
    tail = content_range.rpartition("/")[2] if "/" in content_range else ""
    return int(tail) if tail.isdigit() else -1


def mtime_from_custom(custom: dict[str, bytes]) -> int:
    raw = custom.get(MTIME_KEY)
    if raw and raw.isdigit():
        return int(raw)
    return 0



class Chunks:
    """A request body made of several byte strings, sent one after the other without joining
    them (a retry iterates again)."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.parts)


# Where a response body can be received: a bytearray, or a page-aligned anonymous mapping.
RecvBuffer = bytearray | mmap.mmap

# Request bodies: bytes, chunks, or a function that makes a fresh body stream for each attempt.
Body = bytes | bytearray | memoryview | Chunks | Callable[[], Any]


def list_entries(raw_entries: Iterable[dict[str, Any]]) -> list[ListEntry]:
    """The entries of a listing page as AIS sent them (decoded JSON), as ListEntry."""
    entries: list[ListEntry] = []
    # Once per listed object (100,000s for a big tree): the one time shape TIME_FORMAT gives
    # is parsed inline, the seconds part once per second of time.
    add = entries.append
    seconds_ns: dict[str, int] = {}
    for raw in raw_entries:
        name = raw.get("name", "")
        if raw.get("flags", 0) & LS_ENTRY_IS_DIR:
            add(ListEntry(name if name.endswith("/") else name + "/", True))
            continue
        custom = raw.get("custom-md")
        m = _MTIME_IN_LISTING.search(custom) if custom and MTIME_KEY in custom else None
        if m is not None:
            mtime = int(m.group(1))
        else:
            atime = raw.get("atime") or ""
            fraction = atime[20:29]
            if len(atime) == 30 and atime[29] == "Z" and fraction.isdigit():
                second = atime[:19]
                base = seconds_ns.get(second)
                if base is None:
                    base = seconds_ns[second] = parse_rfc3339_ns(second + "Z")
                mtime = base + int(fraction)
            else:
                mtime = parse_rfc3339_ns(atime)
        add(ListEntry(name, False, int(raw.get("size") or 0), mtime,
                      str(raw.get("version") or "")))
    return entries

"""Where an object request goes: to AIS's proxy, or straight to the target that holds the object.

:class:`Router` is the one place that decides it. A request names its :class:`Via` (what kind of
object request it is); :meth:`Router.target` answers with a target URL to send it to, or None
for the proxy. Today the targets it knows are the ones the proxy chose before: a lookup's (HEAD)
for the reads that follow, a read's for the next parts, an append's for the rest of its session.
A target that refuses or no longer has the object is reported back (:meth:`Router.failed`) and
the next request asks the proxy again. A target computed from the cluster map (HRW) would be
answered here too, for requests nothing was remembered for.

A remembered target is kept as the target's object URL plus the proxy's redirect marker (``pid``,
``utm``: a target refuses an unredirected write), without the request's own query parameters,
which each request adds afresh.

Concurrency: called from any number of worker threads at once; one lock guards the two tables.
Nothing here does I/O.
"""

from __future__ import annotations

import collections
import enum
import threading
import urllib.parse
from collections.abc import Iterable

# Remembered targets per table; the oldest are dropped beyond this (append sessions abandoned
# on an error never reach their FLUSH).
REMEMBERED = 4096


class Via(enum.Enum):
    """What an object request is, which decides how it is routed."""

    PROXY = "proxy"  # through the proxy, redirects followed (buckets, listings, metadata)
    LOOKUP = "lookup"  # HEAD through the proxy; the target that answered serves later reads
    READ = "read"  # GET: a remembered target, else the proxy (its redirect is remembered)
    WRITE = "write"  # PUT with a body: the proxy names the target, the body goes there once
    SESSION = "session"  # APPEND: like WRITE, and the session's target takes the rest of it
    SESSION_END = "session_end"  # FLUSH: to the session's target, which is then forgotten


class Router:
    """Invariant: ``reads`` and ``sessions`` map an object URL (the proxy's) to a target URL in
    the form described in the module docstring, at most ``REMEMBERED`` each, in the order
    first learned."""

    def __init__(self) -> None:
        self.reads: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()

    def _table(self, via: Via) -> collections.OrderedDict[str, str] | None:
        if via in (Via.LOOKUP, Via.READ):
            return self.reads
        if via in (Via.SESSION, Via.SESSION_END):
            return self.sessions
        return None

    def target(self, via: Via, url: str) -> str | None:
        """Where to send a ``via`` request for the object at ``url``; None: the proxy."""
        if via is Via.LOOKUP:
            return None  # a lookup is how a target gets known
        table = self._table(via)
        if table is None:
            return None
        with self._lock:
            return table.get(url)

    def learned(self, via: Via, url: str, location: str, own_params: Iterable[str]) -> None:
        """The proxy (or a redirect it made) sent a ``via`` request for ``url`` to
        ``location``; ``own_params`` are the request's query parameters (not kept)."""
        table = self._table(via)
        if table is None:
            return
        kept = _without_params(location, set(own_params))
        with self._lock:
            table[url] = kept
            if len(table) > REMEMBERED:
                table.popitem(last=False)

    def failed(self, via: Via, url: str) -> None:
        """The target given for ``url`` refused, did not have the object or did not answer."""
        self.forget(via, url)

    def forget(self, via: Via, url: str) -> None:
        table = self._table(via)
        if table is not None:
            with self._lock:
                table.pop(url, None)


def _without_params(url: str, names: set[str]) -> str:
    """``url`` without the query parameters in ``names``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k not in names]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

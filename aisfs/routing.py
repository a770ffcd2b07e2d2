"""Where an object request goes: to AIS's proxy, or straight to the target that holds the object.

:class:`Router` is the one place that decides it. A request names its :class:`Via` (what kind of
object request it is); :meth:`Router.target` answers with a target URL to send it to, or None
for the proxy. The targets it knows are the ones the proxy chose before (a lookup's for the
reads that follow, a read's for the next parts, an append's for the rest of its session) and,
for everything else, the object's owner computed from the cluster map exactly as AIS computes it
(HRW, :mod:`aisfs.clustermap`): a HEAD, GET, PUT or first APPEND then takes one HTTP exchange
instead of two. A target that refuses or no longer has the object is reported back
(:meth:`Router.failed`) and the next request asks the proxy again.

The cluster map is the transport's to fetch (``GET /v1/daemon?what=smap``) when
:meth:`Router.map_wanted` says so: at first, every ``MAP_MAX_AGE`` seconds (a map older than
that is not used: a PUT sent to a target that no longer owns the name would be stored where AIS
does not look for it), and after any sign that it changed: a computed target that refused the
connection, or a proxy redirect that disagrees with the computed target. Meanwhile object
requests go through the proxy. A cluster that refuses direct access (AuthN or request signing:
the target answers 401/403 where the proxy then serves the request) is routed through the proxy
from then on (:meth:`Router.require_proxy`).

A write sent straight to its computed target carries the redirect marker a proxy would add
(``pid``: the primary's ID, ``utm``: now, in AIS's base-36 nanoseconds): without it a v1.5.0
target refuses a PUT on its public port ("expected to be redirected").

A remembered target is kept as the target's object URL plus the proxy's redirect marker (``pid``,
``utm``: a target refuses an unredirected write), without the request's own query parameters,
which each request adds afresh.

Concurrency: called from any number of worker threads at once; one lock guards the two tables.
Nothing here does I/O.
"""

from __future__ import annotations

import collections
import enum
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable

from .clustermap import ClusterMap

# Remembered targets per table; the oldest are dropped beyond this (append sessions abandoned
# on an error never reach their FLUSH).
REMEMBERED = 4096
# Seconds a cluster map is used for; then it is fetched again before the next object request.
MAP_MAX_AGE = 3.0
# Seconds between attempts to fetch a map when the last one failed or was found outdated.
MAP_RETRY = 1.0
# Object requests that may be sent to the computed target.
_COMPUTED = ("lookup", "read", "write", "session")


class Via(enum.Enum):
    """What an object request is, which decides how it is routed."""

    PROXY = "proxy"  # through the proxy, redirects followed (buckets, listings, metadata)
    LOOKUP = "lookup"  # HEAD through the proxy; the target that answered serves later reads
    READ = "read"  # GET: a remembered target, else the proxy (its redirect is remembered)
    WRITE = "write"  # PUT with a body: the proxy names the target, the body goes there once
    SESSION = "session"  # APPEND: like WRITE, and the session's target takes the rest of it
    SESSION_END = "session_end"  # FLUSH: to the session's target, which is then forgotten


class Router:
    """Invariants: ``reads`` and ``sessions`` map an object URL (the proxy's) to a target URL in
    the form described in the module docstring, at most ``REMEMBERED`` each, in the order
    first learned. A target is computed only from a map that is fresh (younger than
    ``MAP_MAX_AGE``, not marked outdated) and only while ``direct`` holds; ``direct`` never
    turns back on."""

    def __init__(self, endpoint: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.reads: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.sessions: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._clock = clock
        # Object URLs start with this (the proxy's); what follows is "<bucket>/<quoted key>".
        self._base = endpoint.rstrip("/")
        self._objects = self._base + "/v1/objects/"
        self.direct = bool(endpoint)
        self.cluster: ClusterMap | None = None
        self._map_at = -math.inf  # when the map was fetched, or a fetch last failed
        self._outdated = False

    # ------------------------------------------------------------------ the cluster map

    def map_wanted(self) -> bool:
        """Whether the transport should fetch the cluster map before the next object request."""
        with self._lock:
            if not self.direct:
                return False
            age = self._clock() - self._map_at
            if self.cluster is None or self._outdated:
                return age >= MAP_RETRY
            return age >= MAP_MAX_AGE

    def set_map(self, cluster: ClusterMap | None) -> None:
        """A fetched map, or None when the fetch failed (the proxy serves until a retry)."""
        with self._lock:
            self._map_at = self._clock()
            if cluster is not None:
                self.cluster = cluster
                self._outdated = False
            else:
                self._outdated = True

    def map_outdated(self) -> None:
        """Something showed the map no longer matches the cluster."""
        with self._lock:
            self._outdated = True

    def require_proxy(self) -> None:
        """The cluster refuses direct access to targets: no computed targets from now on."""
        with self._lock:
            self.direct = False

    def fresh_map(self) -> ClusterMap | None:
        """The cluster map, when targets may be computed from it (direct routing on, the map
        fresh and not outdated); else None."""
        with self._lock:
            cluster = self.cluster
            if (not self.direct or cluster is None or self._outdated
                    or self._clock() - self._map_at >= MAP_MAX_AGE):
                return None
            return cluster

    def computed(self, via: Via, url: str) -> str | None:
        """The object's owner's URL for this request (the proxy's URL with the target's origin),
        from a fresh map; None when there is none or the request is not an object request."""
        if via.value not in _COMPUTED or not url.startswith(self._objects):
            return None
        cluster = self.fresh_map()
        if cluster is None:
            return None
        bucket, _, quoted = url[len(self._objects):].partition("/")
        owner = cluster.owner_of(bucket, urllib.parse.unquote(quoted, errors="surrogateescape"))
        return None if owner is None else owner.url.rstrip("/") + url[len(self._base):]

    def redirect_marker(self) -> dict[str, str]:
        """The query parameters a proxy adds to the requests it redirects (see the docstring)."""
        with self._lock:
            primary = self.cluster.primary.id if self.cluster is not None else ""
        return {"pid": primary, "utm": _base36(time.time_ns())}

    def check_redirect(self, via: Via, url: str, location: str) -> None:
        """The proxy sent a request for ``url`` to ``location``: a map that computes another
        target is outdated."""
        computed = self.computed(via, url)
        if computed is None:
            return
        with self._lock:
            cluster = self.cluster
        if cluster is None:
            return
        chose = cluster.node_at(location)
        mine = cluster.node_at(computed)
        if chose is None or mine is None or chose.id != mine.id:
            self.map_outdated()

    # ------------------------------------------------------------------ remembered targets

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


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


def _without_params(url: str, names: set[str]) -> str:
    """``url`` without the query parameters in ``names``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k not in names]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

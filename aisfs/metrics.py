"""Prometheus metrics of one mount, served on an opt-in address (``--metrics-addr``).

Counted as they happen (``Metrics`` is the mount's one observer, see ``observer.py``, handed to
the FUSE adapter, the async AIS interface and the transport): FUSE operations by kind with a
latency histogram and errors by errno name; backend requests by kind and HTTP status with a
latency histogram, retries by kind, object bytes received and sent.
Read at scrape time by a custom collector, from a :class:`Snapshot` the mount builds: metadata
cache hits, misses and entries, open handles, inodes, read-ahead memory, write buffers and
staged (spill) bytes. Plus the process collector (memory, CPU, open fds).

Concurrency: ``fuse_op`` and ``read_bytes`` run on the trio thread, ``request``/``retry`` in HTTP
worker threads, ``collect`` in the exposition server's thread; prometheus_client's metric objects
are thread-safe. The snapshot function runs in the server thread and must only read plain ints
and sizes (see ``mount.py``). This module imports neither pyfuse3 nor requests.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_FUSE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                 30.0)
_HTTP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Snapshot:
    """The mount's state at scrape time."""

    cache_hits: dict[str, int] = field(default_factory=dict)  # by cache name
    cache_misses: dict[str, int] = field(default_factory=dict)
    cache_entries: dict[str, int] = field(default_factory=dict)
    open_handles: int = 0
    inodes: int = 0
    read_ahead_bytes: int = 0
    read_ahead_limit: int = 0
    read_ahead_peak: int = 0
    scan_batches: int = 0
    scan_files: int = 0
    page_cache_files: int = 0
    write_buffer_bytes: int = 0
    spill_bytes: int = 0


class Metrics:
    def __init__(self, source: str, endpoint: str, version: str) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.fuse_seconds = Histogram(
            "aisfs_fuse_op_duration_seconds", "FUSE operations served, by kind, and their latency",
            ["op"], buckets=_FUSE_BUCKETS, registry=reg,
        )
        self.fuse_errors = Counter(
            "aisfs_fuse_op_errors", "FUSE operations answered with an error, by kind and errno",
            ["op", "errno"], registry=reg,
        )
        self.requests = Counter(
            "aisfs_backend_requests", "HTTP requests to AIS, by kind and status",
            ["kind", "status"], registry=reg,
        )
        self.request_seconds = Histogram(
            "aisfs_backend_request_duration_seconds", "Latency of HTTP requests to AIS (to the "
            "response headers), by kind", ["kind"], buckets=_HTTP_BUCKETS, registry=reg,
        )
        self.retries = Counter(
            "aisfs_backend_retries", "Retried HTTP requests to AIS, by kind", ["kind"],
            registry=reg,
        )
        self.read_bytes_total = Counter(
            "aisfs_backend_read_bytes", "Object bytes received from AIS", registry=reg,
        )
        self.written_bytes_total = Counter(
            "aisfs_backend_written_bytes", "Object bytes sent to AIS", registry=reg,
        )
        ProcessCollector(registry=reg)
        self._info = {"source": source, "endpoint": endpoint, "version": version}
        self._snapshot: Callable[[], Snapshot] | None = None
        reg.register(_StateCollector(self))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- callbacks

    def fuse_op(self, op: str, seconds: float, err: int) -> None:
        self.fuse_seconds.labels(op).observe(seconds)
        if err:
            self.fuse_errors.labels(op, errno.errorcode.get(err, str(err))).inc()

    def request(self, kind: str, status: int, seconds: float, bytes_out: int) -> None:
        self.requests.labels(kind, str(status)).inc()
        self.request_seconds.labels(kind).observe(seconds)
        if bytes_out > 0 and status < 300:
            self.written_bytes_total.inc(bytes_out)
        # Object reads stream their bodies after the headers, so the client reports them as 0
        # here; the mount counts them with read_bytes() when the body has arrived.

    def retry(self, kind: str) -> None:
        self.retries.labels(kind).inc()

    def read_bytes(self, n: int) -> None:
        if n > 0:
            self.read_bytes_total.inc(n)

    def set_snapshot(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    # -------------------------------------------------------------- exposition

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP exposition thread; raises OSError when the address is unusable."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        log.info("serving Prometheus metrics at http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def collect_state(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("aisfs_info", "What this process mounts",
                                 labels=list(self._info))
        info.add_metric(list(self._info.values()), 1)
        yield info
        if self._snapshot is None:
            return
        snap = self._snapshot()
        hits = CounterMetricFamily("aisfs_metadata_cache_hits", "Metadata lookups answered "
                                   "from the cache, by cache", labels=["cache"])
        misses = CounterMetricFamily("aisfs_metadata_cache_misses", "Metadata lookups that went "
                                     "to AIS, by cache", labels=["cache"])
        entries = GaugeMetricFamily("aisfs_metadata_cache_entries", "Entries in the metadata "
                                    "cache, by cache", labels=["cache"])
        for name in sorted(snap.cache_hits):
            hits.add_metric([name], snap.cache_hits[name])
            misses.add_metric([name], snap.cache_misses.get(name, 0))
            entries.add_metric([name], snap.cache_entries.get(name, 0))
        yield hits
        yield misses
        yield entries
        yield GaugeMetricFamily("aisfs_open_handles", "Open file and directory handles",
                                value=snap.open_handles)
        yield GaugeMetricFamily("aisfs_inodes", "Inodes the kernel knows", value=snap.inodes)
        yield GaugeMetricFamily("aisfs_read_ahead_bytes", "Memory held by read-ahead",
                                value=snap.read_ahead_bytes)
        yield GaugeMetricFamily("aisfs_read_ahead_limit_bytes", "Read-ahead budget "
                                "(--read-ahead-budget)", value=snap.read_ahead_limit)
        yield GaugeMetricFamily("aisfs_read_ahead_peak_bytes", "Most memory read-ahead held at "
                                "once", value=snap.read_ahead_peak)
        yield CounterMetricFamily("aisfs_scan_batches", "Get-Batch requests sent to fetch "
                                  "ahead the files of a directory read in listing order",
                                  value=snap.scan_batches)
        yield CounterMetricFamily("aisfs_scan_files", "Files whose open was served from a "
                                  "Get-Batch of a directory scan", value=snap.scan_files)
        yield CounterMetricFamily("aisfs_page_cache_stored_files", "Files fetched whole and put "
                                  "in the kernel's page cache ahead of their open",
                                  value=snap.page_cache_files)
        yield GaugeMetricFamily("aisfs_write_buffer_bytes", "Memory held by write buffers of "
                                "open files", value=snap.write_buffer_bytes)
        yield GaugeMetricFamily("aisfs_spill_bytes", "Bytes of non-sequential writes staged "
                                "in the spill directory", value=snap.spill_bytes)


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        try:
            yield from self._metrics.collect_state()
        except Exception:  # noqa: BLE001 - a scrape must never take the mount down
            log.exception("collecting the mount's state for metrics failed")

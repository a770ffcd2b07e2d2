"""Mount runtime: pre-flight checks, pyfuse3 session, the trio main loop, kernel tuning, shutdown.

``check_mountpoint``/``check_cluster`` run in the CLI process before forking (plain blocking
calls, no threads yet) and turn every start-up failure into one ConfigError line (no token,
refused token, untrusted certificate, missing bucket, ...). ``serve`` runs in the daemon (or
foreground) process: it calls ``pyfuse3.init`` before ``trio.run``, reports readiness (and
systemd's ``READY=1``) only after the mount answered a ``stat`` from another thread, and on
SIGINT/SIGTERM or when the kernel ends the session sends ``STOPPING=1``, finishes uploads in
flight within ``--shutdown-timeout`` (a second signal gives up at once) and unmounts.
SIGUSR2 cycles the log level; SIGUSR1 dumps every thread's stack to stderr (faulthandler).
``build_operations`` is the one place the mount's parts are made (the async AIS interface, the
namespace, the open files with their budgets, buffer pool and spill area, the FUSE adapter) and
handed to each other; the metrics, when on, are the one observer they all report to.

Concurrency: ``_main`` and its tasks run on the trio thread. The metrics snapshot runs in the
exposition thread and only reads ints and ``len()`` of trio-owned objects (``list()`` of a
dict's values is one C-level copy under the GIL, so it never sees a dict mid-change).
"""

from __future__ import annotations

import errno
import faulthandler
import gc
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import pyfuse3
import trio

from . import __version__, errors, open_reply, request_wait
from .aio import AsyncAis
from .aisapi import AisApi, Spawn
from .archive_stream import ArchiveStreams
from .budget import MemoryBudget
from .cache import TtlMap
from .client import AisClient
from .config import ConfigError, MountConfig
from .daemon import Readiness, ServiceSettings, sd_notify
from .fs import Operations
from .handles import OpenWriters
from .inline import InlineRequests
from .kernelnotify import KernelAttrs
from .logsetup import cycle_level
from .metrics import Metrics, Snapshot
from .namespace import Namespace
from .observer import Observer
from .openfiles import OpenFiles
from .reader import BufferPool
from .scans import DirectoryScans
from .spill import SpillArea
from .trioconn import TrioConnections
from .umount import is_mounted

log = logging.getLogger(__name__)


class TokenInfo(Protocol):
    """What check_cluster needs to know about the token (auth.TokenSource has it)."""

    @property
    def has_token(self) -> bool: ...

    def describe(self) -> str: ...


def check_mountpoint(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"mountpoint {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise ConfigError(
                f"mountpoint {path} holds a dead mount (Transport endpoint is not connected); "
                f"clear it with: aisfs umount {path}"
            ) from None
        raise ConfigError(f"mountpoint {path}: {exc.strerror}") from None
    if is_mounted(path):
        state = _probe_mount(path)
        if state == errno.ENOTCONN:
            raise ConfigError(
                f"mountpoint {path} holds a dead mount (Transport endpoint is not connected); "
                f"clear it with: aisfs umount {path}"
            )
        if state == errno.ETIMEDOUT:
            raise ConfigError(f"mountpoint {path} holds a mount that does not answer; "
                              f"clear it with: aisfs umount {path}")
        raise ConfigError(f"mountpoint {path} is busy: something is already mounted there")
    if not os.path.isdir(path) or not (st.st_mode & 0o170000) == 0o040000:
        raise ConfigError(f"mountpoint {path} is not a directory")


def _probe_mount(path: str) -> int:
    """statfs of a mount point in a child process: 0, its errno, or ETIMEDOUT after 5 s.

    The kernel answers a stat of a dead FUSE mount from its attribute cache, but statfs always
    goes to the daemon. A child, because a hung daemon blocks the caller for good (only
    SIGKILL ends that wait) and no thread may exist before the daemon forks.
    """
    code = "import os, sys\ntry:\n os.statvfs(sys.argv[1])\nexcept OSError as e:\n print(e.errno)"
    try:
        done = subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                              text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return errno.ETIMEDOUT
    out = done.stdout.strip()
    return int(out) if out.isdigit() else 0


def check_cluster(
    client: AisClient, config: MountConfig, token: TokenInfo | None = None
) -> None:
    """Fail early, with one line, when the endpoint, the token, TLS or the bucket is wrong."""
    endpoint = config.client.endpoint
    what = str(config.source)
    try:
        if config.source.bucket is None:
            client.list_buckets()
        else:
            client.head_bucket(config.source.bucket)
    except errors.BucketNotFound:
        raise ConfigError(f"no such bucket: ais://{config.source.bucket} at {endpoint}") from None
    except errors.AccessDenied as exc:
        if exc.status == 401 and (token is None or not token.has_token):
            raise ConfigError(
                f"{endpoint} requires an AuthN token and none was found: set AIS_AUTHN_TOKEN "
                "or AIS_AUTHN_TOKEN_FILE (or --token-file), or log in with 'ais auth login'"
            ) from None
        source = token.describe() if token is not None and token.has_token else "no token"
        raise ConfigError(
            f"access to {what} denied by {endpoint} (HTTP {exc.status}, {source}): {exc.args[0]}"
        ) from None
    except errors.Transient as exc:
        if endpoint.startswith("https://") and "SSL" in str(exc.args[0]):
            reason = tls_problem(config)
            if reason:
                raise ConfigError(reason) from None
        raise ConfigError(f"cannot reach AIS at {endpoint}: {exc.args[0]}") from None
    except errors.AisError as exc:
        raise ConfigError(f"AIS at {endpoint} refused: {exc}") from None


def tls_problem(config: MountConfig) -> str | None:
    """Why a TLS handshake with the endpoint fails, as one line with the fix; None if it works.

    One handshake with the same trust settings as the client (an explicit CA bundle, else
    REQUESTS_CA_BUNDLE or the system store), only to name the reason.
    """
    url = urllib.parse.urlsplit(config.client.endpoint)
    host, port = url.hostname or "", url.port or 443
    tls = config.client.tls
    cafile = tls.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
        "CURL_CA_BUNDLE") or None
    try:
        ctx = ssl.create_default_context(cafile=cafile)
        if tls.client_cert:
            ctx.load_cert_chain(tls.client_cert, tls.client_key)
    except (ssl.SSLError, OSError) as exc:
        return f"TLS set-up failed (CA bundle or client certificate): {exc}"
    if tls.skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=config.client.connect_timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the TLS certificate of {config.client.endpoint} is not trusted "
            f"({exc.verify_message}): give its CA with --ca-bundle FILE or AIS_CLIENT_CA, "
            "or turn verification off with --skip-verify (AIS_SKIP_VERIFY_CRT=true)"
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {config.client.endpoint} failed: {exc.reason or exc}"
    except OSError:
        return None


def tune_kernel(st_dev: int, config: MountConfig) -> None:
    """Raise the kernel's read-ahead and background-request limits for this FUSE connection.

    pyfuse3 cannot negotiate them, and the default 128 KiB read-ahead caps Python at ~450 MB/s
    (docs/benchmarks.md, "Reads"); needs root, and only logs where sysfs is read-only.
    """
    major, minor = os.major(st_dev), os.minor(st_dev)
    writes = []
    if config.kernel_read_ahead_kb > 0:
        bdi = f"/sys/class/bdi/{major}:{minor}/read_ahead_kb"
        writes.append((bdi, config.kernel_read_ahead_kb))
    conn = f"/sys/fs/fuse/connections/{minor}"
    if not os.path.isdir(conn) and os.path.isdir("/sys/fs/fuse/connections"):
        try:
            subprocess.run(["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"],
                           capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.info("could not mount fusectl: %s", exc)
    writes += [(f"{conn}/max_background", 64), (f"{conn}/congestion_threshold", 48)]
    for path, value in writes:
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            log.info("could not set %s to %s: %s", path, value, exc.strerror)


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    # The source as the mount's "device", like fstab's first field: findmnt and df show it,
    # and `mount -a` recognises an fstab line as already mounted.
    options.add(f"fsname={config.source}")
    options.add("subtype=aisfs")
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


def build_operations(
    config: MountConfig, aio: AisApi, spawn: Spawn, observer: Observer | None = None
) -> Operations:
    """The FUSE adapter and every collaborator under it, each built once, here."""
    writers = OpenWriters()
    ns = Namespace(aio, config, spawn, written=writers)
    read_budget = MemoryBudget(config.read_ahead_budget)
    scans = DirectoryScans(aio, spawn, ns.dir_listings, read_budget,
                           batch_bytes=config.scan_batch_bytes, hold=config.metadata_ttl)
    files = OpenFiles(
        config, aio, spawn, ns, writers, KernelAttrs(aio, spawn),
        read_budget=read_budget,
        write_budget=MemoryBudget(config.write_buffer_budget),
        pool=BufferPool(config.read_part_size,
                        keep=max(4, config.read_ahead_budget // config.read_part_size)),
        spill=SpillArea(config.spill_dir, config.spill_max_bytes),
        archive_streams=ArchiveStreams(aio, read_budget, spawn, config.read_part_size)
        if config.expand_archives else None,
        scans=scans,
    )
    return Operations(config, ns, files, observer)


def serve(
    config: MountConfig, client: AisClient, readiness: Readiness,
    service: ServiceSettings | None = None,
) -> int:
    """Mount, serve until unmounted or signalled, unmount. Returns the exit code."""
    service = service or ServiceSettings()
    metrics: Metrics | None = None
    if service.metrics_addr is not None:
        metrics = Metrics(str(config.source), config.client.endpoint, __version__)
        client.transport.observer = metrics
    cfg = config.client
    inline_conns = TrioConnections(cfg.connect_timeout, cfg.read_timeout, cfg.max_connections)
    aio = AsyncAis(client, metrics, InlineRequests(client, inline_conns, metrics))
    spawn_box: list[Callable[..., None]] = []

    def spawn(fn: Callable[..., object]) -> None:
        spawn_box[0](fn)

    ops = build_operations(config, aio, spawn, metrics)
    if metrics is not None and service.metrics_addr is not None:
        host, port = service.metrics_addr
        metrics.set_snapshot(_snapshot_of(ops))
        try:
            metrics.serve(host, port)
        except OSError as exc:
            readiness.report(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}")
            return 1
    try:
        pyfuse3.init(ops, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        readiness.report(f"cannot mount on {config.mountpoint}: {exc}")
        if metrics is not None:
            metrics.stop()
        return 1
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    stopper = _Stopper(service.shutdown_timeout)
    # What exists now (modules, classes, the client: ~100k objects) lives as long as the mount:
    # out of the collector's sight, a full collection no longer walks it (one during a
    # 10,000-entry listing took ~25 ms).
    gc.collect()
    gc.freeze()
    clean = False
    try:
        trio.run(_main, ops, aio, config, readiness, spawn_box, stopper)
        clean = True
    except BaseException:
        log.exception("the FUSE main loop failed")
        readiness.report("the FUSE main loop failed at start (see the log)")
        raise
    finally:
        stopper.notify_stopping()
        pyfuse3.close(unmount=True)
        client.close()
        inline_conns.close()
        if metrics is not None:
            metrics.stop()
        log.info("unmounted %s (%s)", config.mountpoint, "clean" if clean else "after an error")
    return 0


def _snapshot_of(ops: Operations) -> Callable[[], Snapshot]:
    """The mount's state for a metrics scrape (runs in the exposition thread: it only reads
    ints and sizes, see the module docstring)."""
    ns, files = ops.ns, ops.files
    caches: dict[str, TtlMap[Any]] = {"stats": ns.stats, "dirs": ns.dirs, "listings": ns.listings}

    def snapshot() -> Snapshot:
        return Snapshot(
            cache_hits={name: c.hits for name, c in caches.items()},
            cache_misses={name: c.misses for name, c in caches.items()},
            cache_entries={name: len(c) for name, c in caches.items()},
            open_handles=files.open_handles(),
            inodes=len(ns.table),
            read_ahead_bytes=files.read_budget.used,
            read_ahead_limit=files.read_budget.limit,
            read_ahead_peak=files.read_budget.peak,
            scan_batches=files.scans.batches_sent,
            scan_files=files.scans.files_served,
            page_cache_files=files.pages.files_stored,
            write_buffer_bytes=files.buffered_bytes(),
            spill_bytes=files.spill.used,
        )

    return snapshot


def make_spawn(nursery: trio.Nursery) -> Spawn:
    """How the layers start background tasks: in the mount's nursery."""

    def spawn(fn: Callable[[], Awaitable[None]]) -> None:
        nursery.start_soon(fn)

    return spawn  # type: ignore[return-value]


class _Stopper:
    """Shutdown state shared by the signal task and the main task (trio thread only)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.signals = 0
        self.scope: trio.CancelScope | None = None
        self._notified = False

    def notify_stopping(self) -> None:
        if not self._notified:
            self._notified = True
            sd_notify("STOPPING=1")

    async def finish(self, ops: Operations) -> None:
        """Finalize open files (uploads in flight) within the timeout; shielded from cancel."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.timeout) as scope:
                self.scope = scope
                if self.signals > 1:
                    scope.cancel()
                await ops.shutdown()
        if scope.cancelled_caught:
            log.error("gave up finishing uploads after %s: data written to files still open "
                      "may be lost", "a second signal" if self.signals > 1
                      else f"{self.timeout:.0f} s (--shutdown-timeout)")


async def _main(
    ops: Operations, aio: AisApi, config: MountConfig, readiness: Readiness,
    spawn_box: list[Callable[..., None]], stopper: _Stopper,
) -> None:
    async with trio.open_nursery() as nursery:
        spawn_box.append(make_spawn(nursery))
        nursery.start_soon(_signals, stopper)
        nursery.start_soon(_announce_ready, aio, config, readiness)
        try:
            request_wait.install()
            open_reply.install()
            await pyfuse3.main()
        finally:
            stopper.notify_stopping()
            await stopper.finish(ops)
            nursery.cancel_scope.cancel()


async def _signals(stopper: _Stopper) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR2) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR2:
                cycle_level()
                continue
            name = signal.Signals(signum).name
            stopper.signals += 1
            if stopper.signals == 1:
                log.info("received %s: finishing uploads (at most %.0f s), then unmounting",
                         name, stopper.timeout)
                stopper.notify_stopping()
                pyfuse3.terminate()
            else:
                log.warning("received %s again: unmounting without waiting for uploads", name)
                if stopper.scope is not None:
                    stopper.scope.cancel()


async def _announce_ready(aio: AisApi, config: MountConfig, readiness: Readiness) -> None:
    """Report success only once the mount answers a stat from outside the trio thread."""
    try:
        st = await aio.run_blocking(lambda: os.stat(config.mountpoint))
    except OSError as exc:
        readiness.report(f"the mount at {config.mountpoint} does not answer: {exc.strerror}")
        pyfuse3.terminate()
        return
    await aio.run_blocking(lambda: tune_kernel(st.st_dev, config))
    log.info("mounted %s at %s (endpoint %s)", config.source, config.mountpoint,
             config.client.endpoint)
    readiness.report(None)
    sd_notify(f"STATUS=serving {config.source} at {config.mountpoint}")
    sys.stdout.flush()

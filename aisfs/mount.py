"""Mount runtime: pre-flight checks, pyfuse3 session, the trio main loop, kernel tuning, shutdown.

``check_mountable`` runs in the CLI process before forking (plain blocking calls, no threads yet).
``serve`` runs in the daemon (or foreground) process: it calls ``pyfuse3.init`` before
``trio.run``, reports readiness only after the mount answered a ``stat`` from another thread,
and unmounts on SIGINT/SIGTERM or when the kernel ends the session.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import Callable

import pyfuse3
import trio

from . import errors
from .aio import AsyncAis
from .client import AisClient
from .config import ConfigError, MountConfig
from .daemon import Readiness, sd_notify
from .fs import Operations, make_spawn
from .logsetup import cycle_level

log = logging.getLogger(__name__)


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    return True
    except OSError:
        pass
    return False


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace(
        "\\134", "\\"
    )


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
    if not os.path.isdir(path) or not (st.st_mode & 0o170000) == 0o040000:
        raise ConfigError(f"mountpoint {path} is not a directory")
    if is_mounted(path):
        raise ConfigError(f"mountpoint {path} is busy: something is already mounted there")


def check_cluster(client: AisClient, config: MountConfig) -> None:
    """Fail early, with one line, when the endpoint or the bucket is not there."""
    endpoint = config.client.endpoint
    try:
        if config.source.bucket is None:
            client.list_buckets()
        else:
            client.head_bucket(config.source.bucket)
    except errors.BucketNotFound:
        raise ConfigError(f"no such bucket: ais://{config.source.bucket} at {endpoint}") from None
    except errors.AccessDenied as exc:
        raise ConfigError(f"access denied by {endpoint}: {exc.args[0]}") from None
    except errors.Transient as exc:
        raise ConfigError(f"cannot reach AIS at {endpoint}: {exc.args[0]}") from None
    except errors.AisError as exc:
        raise ConfigError(f"AIS at {endpoint} refused: {exc}") from None


def tune_kernel(st_dev: int, config: MountConfig) -> None:
    """Raise the kernel's read-ahead and background-request limits for this FUSE connection.

    pyfuse3 cannot negotiate them, and the default 128 KiB read-ahead caps Python at ~450 MB/s
    (design-notes.md); needs root, and only logs where sysfs is read-only.
    """
    major, minor = os.major(st_dev), os.minor(st_dev)
    writes = []
    if config.kernel_read_ahead_kb > 0:
        writes.append((f"/sys/class/bdi/{major}:{minor}/read_ahead_kb", config.kernel_read_ahead_kb))
    conn = f"/sys/fs/fuse/connections/{minor}"
    if not os.path.isdir(conn) and os.path.isdir("/sys/fs/fuse/connections"):
        try:
            os.system("mount -t fusectl none /sys/fs/fuse/connections >/dev/null 2>&1")
        except OSError:
            pass
    writes += [(f"{conn}/max_background", 64), (f"{conn}/congestion_threshold", 48)]
    for path, value in writes:
        try:
            with open(path, "w") as f:
                f.write(str(value))
        except OSError as exc:
            log.info("could not set %s to %s: %s", path, value, exc.strerror)


def fuse_options(config: MountConfig) -> set[str]:
    options = set(pyfuse3.default_options)
    options.add(f"fsname={config.client.endpoint.split('://', 1)[-1]}")
    options.add("subtype=aisfs")
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


def serve(config: MountConfig, client: AisClient, readiness: Readiness) -> int:
    """Mount, serve until unmounted or signalled, unmount. Returns the exit code."""
    aio = AsyncAis(client)
    spawn_box: list[Callable[..., None]] = []

    def spawn(fn: Callable[..., object]) -> None:
        spawn_box[0](fn)

    ops = Operations(config, aio, spawn)  # type: ignore[arg-type]
    try:
        pyfuse3.init(ops, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        readiness.report(f"cannot mount on {config.mountpoint}: {exc}")
        return 1
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    clean = False
    try:
        trio.run(_main, ops, config, readiness, spawn_box)
        clean = True
    except BaseException:
        log.exception("the FUSE main loop failed")
        readiness.report("the FUSE main loop failed at start (see the log)")
        raise
    finally:
        sd_notify("STOPPING=1")
        pyfuse3.close(unmount=True)
        client.close()
        log.info("unmounted %s (%s)", config.mountpoint, "clean" if clean else "after an error")
    return 0


async def _main(
    ops: Operations, config: MountConfig, readiness: Readiness,
    spawn_box: list[Callable[..., None]],
) -> None:
    async with trio.open_nursery() as nursery:
        spawn_box.append(make_spawn(nursery))
        nursery.start_soon(_signals)
        nursery.start_soon(_announce_ready, config, readiness)
        try:
            await pyfuse3.main()
        finally:
            await ops.shutdown()
            nursery.cancel_scope.cancel()


async def _signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR2) as signals:
        async for signum in signals:
            if signum == signal.SIGUSR2:
                cycle_level()
                continue
            log.info("received %s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()


async def _announce_ready(config: MountConfig, readiness: Readiness) -> None:
    """Report success only once the mount answers a stat from outside the trio thread."""
    try:
        st = await trio.to_thread.run_sync(os.stat, config.mountpoint)
    except OSError as exc:
        readiness.report(f"the mount at {config.mountpoint} does not answer: {exc.strerror}")
        pyfuse3.terminate()
        return
    await trio.to_thread.run_sync(tune_kernel, st.st_dev, config)
    log.info("mounted %s at %s (endpoint %s)", config.source, config.mountpoint,
             config.client.endpoint)
    readiness.report(None)
    sys.stdout.flush()

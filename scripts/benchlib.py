"""Helpers shared by the aisfs benchmarks (scripts/bench-read, bench-write, bench-small).

- :func:`cluster`: the AIS cluster to measure (AIS_ENDPOINT when healthy, else a fresh local
  one from scripts/ais-local on a free port block, stopped afterwards);
- :class:`Direct`: a plain ``requests`` client that goes straight to the target (proxy redirect
  resolved once per object), with parallel ranged GETs into one preallocated buffer, parallel PUTs
  and the raw paged listing aisfs itself issues;
- :class:`Mounts`: real aisfs mounts in subprocesses (tests/util.py ``mounted``) that record each
  daemon's peak RSS (VmHWM) before it exits;
- :func:`fuse_daemon`: any FUSE daemon (aisfs from another checkout, s3fs, rclone mount) run in
  the foreground, its peak RSS taken before unmounting, unmounted on every exit path
  (:func:`unmount_all` and :func:`exit_on_signals` for the paths that skip ``finally``);
- measurement and report helpers: :func:`drop_caches`, :func:`median`, :class:`Row`,
  :func:`markdown_table`, :func:`machine_info`.

Import it from a script already running under the project's .venv (it needs requests and
aisfs): see the re-exec lines at the top of scripts/bench-read.
Benchmarks are not tests: nothing here asserts; the scripts print pass/fail per target.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AIS_LOCAL = REPO / "scripts" / "ais-local"
MIB = 1024 * 1024
GIB = 1024 * MIB

sys.path.insert(0, str(REPO))
# The listing the baseline asks for is the one aisfs asks for, parsed the same way (orjson), and
# both read bodies the same way.
import orjson  # noqa: E402
import requests  # noqa: E402
import requests.adapters  # noqa: E402

from aisfs.client import LS_NO_RECURSION  # noqa: E402
from aisfs.httpreply import read_body_into  # noqa: E402
from aisfs.objects import LIST_PROPS, TIME_FORMAT, RecvBuffer  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- cluster


def endpoint_ready(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/v1/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def free_port_block(start: int = 21080) -> int:
    from tests.util import free_port_block as find  # one implementation, shared with the tests

    return find(start)


@contextlib.contextmanager
def cluster(endpoint: str | None = None, use_env: bool = True) -> Iterator[str]:
    """Yields a healthy endpoint: ``endpoint`` / $AIS_ENDPOINT (``use_env``), else a local cluster
    of our own."""
    given = endpoint or (os.environ.get("AIS_ENDPOINT") if use_env else None)
    if given and endpoint_ready(given):
        log(f"using the AIS cluster at {given}")
        yield given.rstrip("/")
        return
    if given:
        log(f"{given} does not answer: starting a local cluster")
    port = free_port_block()
    env = {**os.environ, "AIS_LOCAL_PORT": str(port),
           "AIS_LOCAL_DIR": f"/var/tmp/aisfs-bench-{os.getpid()}"}
    if shutil.which("go") is None and os.path.exists("/usr/local/go/bin/go"):
        env["PATH"] = env.get("PATH", "") + ":/usr/local/go/bin"
    log(f"starting a local AIS cluster on port {port} (scripts/ais-local)")
    started = subprocess.run([str(AIS_LOCAL), "start"], env=env, stdout=subprocess.DEVNULL)
    try:
        if started.returncode != 0:
            raise SystemExit("could not start the local AIS cluster (see above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        log("stopping the local AIS cluster")
        subprocess.run([str(AIS_LOCAL), "stop"], env=env, stdout=subprocess.DEVNULL)
        with contextlib.suppress(OSError):
            os.unlink(env["AIS_LOCAL_DIR"] + ".lock")


# ---------------------------------------------------------------------------------- direct client


def _session(pool: int) -> requests.Session:
    s = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


class Direct:
    """The fastest plain client: ``requests``, target URLs from the proxy's redirect, pooled."""

    def __init__(self, endpoint: str, pool: int = 32) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.base = self.endpoint + "/v1"
        self.pool = pool
        self._local = threading.local()
        self.session = _session(pool)  # for the calling thread

    def _thread_session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = _session(4)
        return s

    def object_url(self, bucket: str, key: str) -> str:
        return f"{self.base}/objects/{bucket}/{urllib.parse.quote(key, safe='/')}?provider=ais"

    # -- buckets
    def create_bucket(self, bucket: str) -> None:
        r = self.session.post(f"{self.base}/buckets/{bucket}", params={"provider": "ais"},
                              json={"action": "create-bck"}, timeout=60)
        if r.status_code != 200 and "already exists" not in r.text:
            raise RuntimeError(f"create bucket {bucket}: {r.status_code} {r.text[:200]}")

    def destroy_bucket(self, bucket: str) -> None:
        self.session.delete(f"{self.base}/buckets/{bucket}", params={"provider": "ais"},
                            json={"action": "destroy-bck"}, timeout=120)

    def memsys_buf(self) -> str:
        """The cluster's memsys.default_buf: what AIS's APPEND handler copies bodies with."""
        r = self.session.get(f"{self.base}/daemon", params={"what": "config"}, timeout=30)
        return str(r.json().get("memsys", {}).get("default_buf", "?")) if r.ok else "?"

    # -- objects
    def delete(self, bucket: str, key: str) -> None:
        r = self.session.delete(self.object_url(bucket, key), timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"DELETE ais://{bucket}/{key}: {r.status_code} {r.text[:200]}")

    def locate(self, bucket: str, key: str, session: requests.Session | None = None) -> str:
        """The target URL the proxy redirects a GET of this object to."""
        return self._redirect("GET", bucket, key, session or self.session)

    def _redirect(self, method: str, bucket: str, key: str, session: requests.Session,
                  params: dict[str, str] | None = None) -> str:
        """Where the proxy sends this request (asked with an empty body)."""
        r = session.request(method, self.object_url(bucket, key), params=params, data=b"",
                            allow_redirects=False, timeout=60)
        r.close()
        if r.status_code not in (301, 302, 307, 308) or "Location" not in r.headers:
            raise RuntimeError(f"{method} ais://{bucket}/{key}: no redirect ({r.status_code})")
        return r.headers["Location"]

    def head_size(self, bucket: str, key: str) -> int:
        r = self.session.head(self.object_url(bucket, key), timeout=30, allow_redirects=True)
        return int(r.headers.get("Content-Length", -1)) if r.status_code == 200 else -1

    def put(self, bucket: str, key: str, data: bytes | memoryview,
            session: requests.Session | None = None) -> None:
        """PUT with the body sent once, straight to the target the proxy names."""
        s = session or self.session
        r = s.put(self._redirect("PUT", bucket, key, s), data=data,  # type: ignore[arg-type]
                  timeout=600)  # (requests sends any buffer as it is)
        if r.status_code != 200:
            raise RuntimeError(f"PUT ais://{bucket}/{key}: {r.status_code} {r.text[:200]}")

    def append_all(self, bucket: str, key: str, data: memoryview, part: int) -> None:
        """Write ``data`` with AIS's append protocol alone: APPENDs of ``part`` bytes straight
        to the target, then FLUSH (the speed the protocol allows, without a file system)."""
        s = self.session
        location = self._redirect("PUT", bucket, key, s,
                                  {"append_type": "append", "append_handle": ""})
        base, _, query = location.partition("?")
        params = dict(urllib.parse.parse_qsl(query))
        handle = ""
        bodies = [data[off:off + part] for off in range(0, len(data), part)]
        for body in [*bodies, memoryview(b"")]:  # the empty one is the FLUSH
            params.update(append_type="append" if body else "flush", append_handle=handle)
            r = s.put(base, params=params, data=body,  # type: ignore[arg-type]  # any buffer
                      allow_redirects=False, timeout=600)
            if r.status_code != 200:
                raise RuntimeError(f"APPEND ais://{bucket}/{key}: {r.status_code} {r.text[:200]}")
            handle = r.headers.get("Ais-Append-Handle", "")

    def put_many(self, bucket: str, items: Sequence[tuple[str, bytes]], threads: int = 16) -> None:
        def one(item: tuple[str, bytes]) -> None:
            self.put(bucket, item[0], item[1], self._thread_session())

        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            for _ in ex.map(one, items):
                pass

    def get_parallel(self, bucket: str, key: str, size: int, buf: RecvBuffer, threads: int,
                     part: int, pool: concurrent.futures.ThreadPoolExecutor | None = None) -> int:
        """Whole object into ``buf`` with ranged GETs of ``part`` bytes on ``threads`` threads."""
        url = self.locate(bucket, key)
        view = memoryview(buf)

        def one(start: int) -> int:
            end = min(size, start + part)
            r = self._thread_session().get(
                url, headers={"Range": f"bytes={start}-{end - 1}"}, stream=True,
                allow_redirects=False, timeout=60,
            )
            try:
                if r.status_code != 206:
                    raise RuntimeError(f"ranged GET: {r.status_code}")
                return read_body_into(r, view[start:end], end - start)
            finally:
                r.close()

        own = pool is None
        ex = pool or concurrent.futures.ThreadPoolExecutor(threads)
        try:
            return sum(ex.map(one, range(0, size, part)))
        finally:
            if own:
                ex.shutdown()

    def get_first_byte(self, bucket: str, key: str) -> bytes:
        """A 1-byte ranged GET through the proxy (proxy -> redirect -> target)."""
        r = self.session.get(self.object_url(bucket, key), headers={"Range": "bytes=0-0"},
                             timeout=30)
        if r.status_code not in (200, 206):
            raise RuntimeError(f"GET first byte: {r.status_code}")
        return r.content

    # -- listing
    def list_page(self, bucket: str, prefix: str, uuid: str = "", token: str = "",
                  recursive: bool = False) -> dict[str, Any]:
        """One page of the listing aisfs asks for (same props, flags, time format)."""
        value = {
            "prefix": prefix, "props": LIST_PROPS, "time_format": TIME_FORMAT,
            "flags": "0" if recursive else str(LS_NO_RECURSION), "pagesize": 0,
            "uuid": uuid, "continuation_token": token,
        }
        r = self.session.get(f"{self.base}/buckets/{bucket}", params={"provider": "ais"},
                             json={"action": "list", "name": bucket, "value": value}, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"list ais://{bucket}/{prefix}: {r.status_code} {r.text[:200]}")
        doc: dict[str, Any] = orjson.loads(r.content) or {}  # as aisfs parses it
        return doc

    def list_all(self, bucket: str, prefix: str, recursive: bool = False) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        uuid = token = ""
        while True:
            doc = self.list_page(bucket, prefix, uuid, token, recursive)
            entries.extend(doc.get("entries") or [])
            token = doc.get("continuation_token") or ""
            if not token:
                return entries
            uuid = doc.get("uuid") or ""


# ---------------------------------------------------------------------------------- mounts


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB; 0 if unavailable."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Mounts:
    """Real aisfs mounts (``python -m aisfs SOURCE MP -f``) with their peak RSS recorded."""

    def __init__(self, endpoint: str, args: Sequence[str] = ()) -> None:
        self.endpoint = endpoint
        self.args = list(args)
        self.workdir = Path(tempfile.mkdtemp(prefix="aisfs-bench-"))
        self.peak_rss_kib: list[int] = []  # one per mount, taken just before unmounting
        self._n = 0

    @contextlib.contextmanager
    def mount(self, source: str, extra: Sequence[str] = ()) -> Iterator[Any]:
        from tests.util import mounted  # the mount helper the test suite uses

        self._n += 1
        path = self.workdir / f"mnt{self._n}"
        with mounted(source, path, self.endpoint, [*self.args, *extra], self.workdir) as m:
            try:
                yield m
            finally:
                self.peak_rss_kib.append(vm_hwm_kib(m.proc.pid))

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


_LIVE_DAEMONS: dict[int, FuseDaemon] = {}  # pid -> daemon not yet stopped (for unmount_all)


class FuseDaemon:
    """One FUSE daemon of ours serving ``path`` in the foreground.

    Invariant: listed in ``_LIVE_DAEMONS`` from its start until :meth:`stop` has unmounted it and
    reaped the process.
    """

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.path = path
        self.proc = proc
        self.log_path = log_path
        self.peak_rss_kib = 0  # VmHWM, taken just before unmounting
        self.exit_code: int | None = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """Unmount (retrying while the mount is busy) and reap the daemon; one that does not exit
        in ``timeout`` s is killed and its mount detached (``fusermount -uz``)."""
        from tests.util import fusermount_u, is_mounted

        if self.proc.poll() is None:
            self.peak_rss_kib = max(self.peak_rss_kib, vm_hwm_kib(self.proc.pid))
        deadline = time.monotonic() + timeout
        while is_mounted(self.path) and time.monotonic() < deadline:
            fusermount_u(self.path)
            if is_mounted(self.path):
                time.sleep(0.2)
        try:
            self.exit_code = self.proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait(10)
        if is_mounted(self.path):
            fusermount_u(self.path, lazy=True)
        _LIVE_DAEMONS.pop(self.proc.pid, None)


@contextlib.contextmanager
def fuse_daemon(cmd: Sequence[str], path: Path, log_path: Path, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 60) -> Iterator[FuseDaemon]:
    """Run ``cmd`` (a FUSE daemon in the foreground that mounts ``path``) until the mount is up;
    yield it; unmount and reap it on exit, however the block ends."""
    from tests.util import is_mounted

    path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=cwd)
    daemon = _LIVE_DAEMONS[proc.pid] = FuseDaemon(path, proc, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not is_mounted(path):
            if proc.poll() is not None:
                raise RuntimeError(f"{Path(cmd[0]).name} exited with {proc.returncode} before "
                                   f"mounting {path}: {daemon.log()[-1500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{Path(cmd[0]).name} did not mount {path} in {timeout:.0f} s:"
                                   f" {daemon.log()[-1500:]}")
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.stop()


def unmount_all() -> None:
    """Stop every daemon :func:`fuse_daemon` started and has not stopped yet (exit paths)."""
    for daemon in list(_LIVE_DAEMONS.values()):
        with contextlib.suppress(Exception):
            daemon.stop(10)


def exit_on_signals() -> None:
    """Make SIGTERM and SIGHUP raise SystemExit, so that ``finally`` blocks (unmounts, a cluster
    of our own) run as they do on Ctrl-C; :func:`unmount_all` runs at exit as a last resort."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    atexit.register(unmount_all)


# ---------------------------------------------------------------------------------- measuring


def content(bucket: str, key: str, size: int) -> bytes:
    """The bytes of a benchmark's read-set object: random, but the same from one run to the
    next (``bench-small`` writes them, ``fuse_floor.py`` serves them)."""
    return random.Random(f"{bucket}/{key}").randbytes(size)


def drop_caches() -> None:
    """Drop the page cache (FUSE pages and the targets' object files alike); needs root."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else float("nan")


def read_file_dd(path: Path, bs: str = "1M") -> int:
    """Read ``path`` with dd to /dev/null; returns the bytes dd reports copied."""
    out = subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"], check=True,
                         capture_output=True, text=True).stderr
    for line in out.splitlines():
        if "bytes" in line and "copied" in line:
            return int(line.split()[0])
    raise RuntimeError(f"unexpected dd output: {out!r}")


def read_whole(path: Path) -> bytes:
    """The whole file, read unbuffered. (Python's buffered ``open()`` before 3.14 asks
    ``isatty()`` of every file it opens: on a FUSE mount that ioctl is one more round trip to
    the daemon per file, which the kernel never caches; ``Path.read_bytes()`` pays it.)"""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def read_file_readinto(path: Path, block: int = MIB) -> int:
    """Read ``path`` with unbuffered ``readinto`` of ``block``-byte blocks; returns the bytes."""
    buf = bytearray(block)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                return total
            total += n


# ---------------------------------------------------------------------------------- reporting


@dataclass
class Row:
    metric: str
    mount: float  # median, in `unit`
    baseline: float  # median of the direct/baseline measurement (nan: none)
    unit: str
    ratio: float | None = None  # mount/baseline as the target defines it
    target: str = ""  # e.g. ">= 0.7"
    passed: bool | None = None
    note: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)


def check(value: float, op: str, limit: float) -> bool:
    return value >= limit if op == ">=" else value <= limit if op == "<=" else value < limit


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None or v != v:  # None or nan
        return "—"
    text = f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return f"{text} {unit}".strip()


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| metric | mount | direct/baseline | ratio | target | pass/fail |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "—" if r.passed is None else "PASS" if r.passed else "FAIL"
        metric = f"{r.metric} ({r.note})" if r.note else r.metric
        lines.append(f"| {metric} | {_fmt(r.mount, r.unit)} | {_fmt(r.baseline, r.unit)} | "
                     f"{_fmt(r.ratio)} | {r.target or '—'} | {verdict} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    def first(path: str, prefix: str) -> str:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith(prefix):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return ""

    try:
        import pyfuse3  # noqa: PLC0415

        pyfuse3_version = getattr(pyfuse3, "__version__", "?")
    except ImportError:
        pyfuse3_version = "-"
    return {
        "nproc": os.cpu_count(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "mem_total": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyfuse3": pyfuse3_version,
        "loadavg": os.getloadavg(),
    }


def save_json(path: str, doc: dict[str, Any]) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Row):
            return asdict(o)
        raise TypeError(type(o).__name__)

    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=default)
        f.write("\n")

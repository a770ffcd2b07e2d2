"""aisfs as a service on a compute node, with the real pieces: mount(8) and fstab through the
installed helper, the systemd unit's commands and notify handshake, metrics scraped during reads
and writes, log-level and stack-dump signals, SIGTERM finishing uploads, recovery after SIGKILL.

Needs root (mount(8), /sbin/mount.aisfs), /dev/fuse and the local cluster of conftest.py.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from aistore.sdk.bucket import Bucket

from .service_util import (
    NotifySocket,
    base_env,
    free_port,
    have,
    metric,
    one_line,
    readme_blocks,
    run_aisfs,
    scrape,
    start_aisfs,
)
from .util import REPO, aisfs_cmd, check_daemon_log, have_fuse, is_mounted

MIB = 1024 * 1024
UNIT = REPO / "systemd" / "aisfs@.service"
MOUNT_UNIT = REPO / "systemd" / "mnt-ais.mount"
INSTALL = REPO / "scripts" / "install-mount-helper"
LINKS = (Path("/sbin/mount.aisfs"), Path("/usr/local/bin/aisfs"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not have_fuse(),
                                reason="needs root and /dev/fuse (mount(8), /sbin helpers)")


def sh(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
       ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env if env is not None else base_env())


def umount_all(*paths: Path) -> None:
    for path in paths:
        if is_mounted(path):
            if sh("umount", path).returncode != 0:
                sh("umount", "-l", path)


def daemons_of(path: Path) -> list[int]:
    """aisfs processes serving ``path`` (mount(8) started them: we do not know their pids)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(path).encode() in argv and any(b"aisfs" in a for a in argv[:3]):
                pids.append(int(entry.name))
    return pids


def wait_gone(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while daemons_of(path):
        assert time.monotonic() < deadline, f"aisfs for {path} still running after unmount"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def helper_installed() -> Iterator[None]:
    """scripts/install-mount-helper, as a deployer runs it; links it made are removed after."""
    existed = {p: p.is_symlink() or p.exists() for p in LINKS}
    done = sh(INSTALL)
    assert done.returncode == 0, done.stderr
    for link in LINKS:
        assert link.exists() and os.access(link, os.X_OK), link
    yield
    for link in LINKS:
        if not existed[link] and link.is_symlink():
            link.unlink()


@pytest.fixture
def bucket(make_bucket: Callable[..., Bucket]) -> Bucket:
    return make_bucket({"hello.txt": b"hello from ais\n", "d/x": b"x", "d/y": b"yy"})


# ---------------------------------------------------------------------- mount(8) and fstab


@pytest.mark.usefixtures("helper_installed")
@pytest.mark.parametrize("fstype", ["aisfs", "fuse.aisfs"])
def test_mount_command(fstype: str, bucket: Bucket, ais_endpoint: str, tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    opts = f"_netdev,allow_other,uid=1000,endpoint={ais_endpoint}"
    done = sh("mount", "-t", fstype, f"ais://{bucket.name}", mp, "-o", opts)
    try:
        assert done.returncode == 0, done.stderr
        assert is_mounted(mp)  # live when mount(8) returned
        assert (mp / "hello.txt").read_bytes() == b"hello from ais\n"
        assert os.stat(mp / "hello.txt").st_uid == 1000
        found = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", mp).stdout.split()
        assert found[:2] == [f"ais://{bucket.name}", "fuse.aisfs"]
        assert "allow_other" in found[2]
    finally:
        umount_all(mp)
    assert not is_mounted(mp)
    wait_gone(mp)


def fstab_line(source: str, mp: Path, fstype: str, opts: str) -> str:
    return f"{source} {mp} {fstype} {opts} 0 0\n"


@pytest.mark.usefixtures("helper_installed")
def test_fstab_mount_a(bucket: Bucket, ais_endpoint: str, tmp_path: Path) -> None:
    mps = [tmp_path / n for n in ("fuse", "helper", "manual")]
    for mp in mps:
        mp.mkdir()
    conf = tmp_path / "aisfs.toml"  # options mount(8) cannot carry, through config=
    conf.write_text(f'endpoint = "{ais_endpoint}"\nfile-mode = "600"\n')
    src = f"ais://{bucket.name}"
    # The README's fstab lines, pointed at this cluster, bucket and these directories.
    (readme,) = readme_blocks("fstab")
    lines = readme.replace("ais://bucket ", f"{src} ").replace(" /mnt/ais-ro ", f" {mps[1]} ")
    lines = lines.replace(" /mnt/ais ", f" {mps[0]} ").replace("http://ais-proxy:51080",
                                                                ais_endpoint)
    lines = lines.replace("config=/etc/aisfs/mnt-ais-ro.toml", f"config={conf}")
    assert lines.count(src) == 2 and "/mnt/" not in lines and "/etc/" not in lines
    fstab = tmp_path / "fstab"
    fstab.write_text("# a test fstab\n" + lines
                     + fstab_line(src, mps[2], "aisfs", f"noauto,endpoint={ais_endpoint}"))
    try:
        done = sh("mount", "-a", "--fstab", fstab)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mps[0]) and is_mounted(mps[1]) and not is_mounted(mps[2])
        assert (mps[0] / "hello.txt").read_bytes() == b"hello from ais\n"
        assert os.stat(mps[1] / "hello.txt").st_mode & 0o777 == 0o600  # from the config file
        with pytest.raises(OSError) as info:
            (mps[1] / "new.txt").write_bytes(b"x")
        assert info.value.errno == errno.EROFS  # fstab's ro
        # Again: the lines are recognised as mounted (the source is the mount's fsname).
        assert sh("mount", "-a", "--fstab", fstab).returncode == 0
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert [mountinfo.count(f" {mp} ") for mp in mps] == [1, 1, 0]
        # A noauto line mounts by its mount point (-T is --fstab's short form).
        done = sh("mount", "-T", fstab, mps[2])
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(mps[2] / "d")) == ["x", "y"]
    finally:
        umount_all(*mps)
    for mp in mps:
        wait_gone(mp)


@pytest.mark.usefixtures("helper_installed")
@pytest.mark.parametrize(("fstype", "prog"), [("aisfs", "mount.aisfs"), ("fuse.aisfs", "aisfs")])
def test_mount_command_failure_is_one_line(fstype: str, prog: str, ais_endpoint: str,
                                           tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    done = sh("mount", "-t", fstype, "ais://no-such-bucket-x", mp, "-o",
              f"_netdev,endpoint={ais_endpoint}")
    assert done.returncode != 0
    assert one_line(done.stderr) == (
        f"{prog}: no such bucket: ais://no-such-bucket-x at {ais_endpoint}")
    assert not is_mounted(mp)


@pytest.mark.usefixtures("helper_installed")
def test_fake_mount_mounts_nothing(bucket: Bucket, ais_endpoint: str, tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    done = sh("mount", "-f", "-t", "aisfs", f"ais://{bucket.name}", mp, "-o",
              f"endpoint={ais_endpoint}")
    assert done.returncode == 0, done.stderr
    assert not is_mounted(mp)


# ---------------------------------------------------------------------- systemd


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_file_contract() -> None:
    s = unit_settings(UNIT)
    assert s["Type"] == ["notify"]
    assert s["Wants"] == ["network-online.target"] and s["After"] == ["network-online.target"]
    assert s["ExecStartPre"] == ["-/usr/bin/fusermount3 -uz %f"]
    assert s["ExecStopPost"] == ["-/usr/bin/fusermount3 -uz %f"]
    assert s["Restart"] == ["on-failure"]
    assert all(os.path.isabs(p) for p in s["EnvironmentFile"])
    assert "--systemd" in s["ExecStart"][0].split()
    # Stopping must outlast the default --shutdown-timeout (30 s) of uploads in flight.
    assert int(s["TimeoutStopSec"][0]) > 30


@pytest.mark.usefixtures("helper_installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    if not have("systemd-analyze"):
        pytest.skip("systemd-analyze is missing (apt-get install systemd)")
    for unit in (UNIT, MOUNT_UNIT):
        done = sh("systemd-analyze", "verify", "--man=no", unit)
        assert done.returncode == 0 and not done.stderr.strip(), (unit, done.stderr)
    # The check is real: a unit whose program is missing fails it.
    broken = tmp_path / "aisfs@.service"
    broken.write_text(UNIT.read_text().replace("/usr/local/bin/aisfs", "/nonexistent/aisfs"))
    done = sh("systemd-analyze", "verify", "--man=no", broken)
    assert done.returncode != 0 and "/nonexistent/aisfs" in done.stderr


def unit_command(key: str, mp: Path, instance: str, env: dict[str, str]) -> tuple[list[str], bool]:
    """The unit's Exec line as systemd runs it: specifiers and $VARS expanded; ignore-failure."""
    line = unit_settings(UNIT)[key][0]
    ignore = line.startswith("-")
    words = []
    for word in shlex.split(line.lstrip("-")):
        word = word.replace("%f", str(mp)).replace("%i", instance)
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            words.append(env.get(m.group(1), ""))  # one argument
        elif m := re.fullmatch(r"\$(\w+)", word):
            words.extend(env.get(m.group(1), "").split())  # split on whitespace
        else:
            words.append(word)
    return words, ignore


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


@pytest.mark.usefixtures("helper_installed")
def test_unit_commands_stale_mount_and_notify(bucket: Bucket, ais_endpoint: str,
                                              tmp_path: Path) -> None:
    mp = tmp_path / "svc"
    instance = sh("systemd-escape", "--path", mp).stdout.strip() if have("systemd-escape") \
        else str(mp).strip("/").replace("/", "-")
    # A crashed daemon left a dead mount ("Transport endpoint is not connected").
    dead = start_aisfs(f"ais://{bucket.name}", mp, [], base_env(AIS_ENDPOINT=ais_endpoint),
                       tmp_path / "dead.log")
    try:
        dead.wait_mounted()
        dead.proc.kill()
        dead.proc.wait(10)
        check_unit_commands(mp, instance, bucket, ais_endpoint, tmp_path)
    finally:
        dead.kill()
        umount_all(mp)


def check_unit_commands(mp: Path, instance: str, bucket: Bucket, ais_endpoint: str,
                        tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        os.listdir(mp)  # (a stat may still come from the kernel's attribute cache)
    assert info.value.errno == errno.ENOTCONN
    # The unit's settings, written the way systemd/aisfs.env.example shows.
    env_file = tmp_path / f"{instance}.env"
    # The README's env file, pointed at this cluster and bucket and a free metrics port.
    readme_env = next(b for b in readme_blocks("sh") if "AISFS_SOURCE=" in b)
    body = readme_env.split("<<'END'\n", 1)[1].split("\nEND\n", 1)[0]
    port = free_port()
    env_file.write_text(body.replace("ais://bucket", f"ais://{bucket.name}")
                        .replace("http://ais-proxy:51080", ais_endpoint)
                        .replace("127.0.0.1:9109", f"127.0.0.1:{port}") + "\n")
    unit_env = read_env_file(env_file)
    assert set(unit_env) <= set(read_env_file(REPO / "systemd" / "aisfs.env.example"))
    pre, ignore_pre = unit_command("ExecStartPre", mp, instance, unit_env)
    assert ignore_pre
    sh(*pre)
    assert not is_mounted(mp) and os.path.isdir(mp)  # cleared
    start, _ = unit_command("ExecStart", mp, instance, unit_env)
    notify = NotifySocket(tmp_path / "notify.sock")
    log_path = tmp_path / "unit.log"
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(start, stdout=log, stderr=subprocess.STDOUT, env=base_env(
                **unit_env, NOTIFY_SOCKET=str(notify.path)))
        notify.wait_for("READY=1", 60, proc)
        # READY=1 means live: the very next stat is served by the mount.
        assert os.stat(mp).st_dev != os.stat(tmp_path).st_dev
        assert is_mounted(mp)
        assert (mp / "hello.txt").read_bytes() == b"hello from ais\n"
        assert not any("READY=1" in m for m in notify.messages[:-1])
        assert metric(scrape(port), "aisfs_info", source=f"ais://{bucket.name}") == 1
        proc.send_signal(signal.SIGTERM)  # systemctl stop
        notify.wait_for("STOPPING=1", 30, proc)
        assert proc.wait(60) == 0
        assert not is_mounted(mp)
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
        umount_all(mp)
    post, ignore_post = unit_command("ExecStopPost", mp, instance, unit_env)
    assert ignore_post
    sh(*post)  # nothing left to clear: it fails, and the unit ignores that
    text = log_path.read_text()
    assert "<6>aisfs.mount: mounted " in text and "Traceback" not in text
    assert all(line.startswith("<") for line in text.splitlines()), text


# ---------------------------------------------------------------------- lifecycle


def test_sigkill_mid_read_umount_and_remount(make_bucket: Callable[..., Bucket],
                                             ais_endpoint: str, tmp_path: Path) -> None:
    data = os.urandom(16 * MIB)
    b = make_bucket({"big.bin": data})
    mp = tmp_path / "k"
    env = base_env(AIS_ENDPOINT=ais_endpoint)
    m = start_aisfs(f"ais://{b.name}", mp, [], env, tmp_path / "k.log")
    m.wait_mounted()
    f = open(mp / "big.bin", "rb", buffering=0)  # noqa: SIM115 - held across the kill
    try:
        assert f.read(MIB) == data[:MIB]
        m.proc.kill()
        m.proc.wait(10)
        with pytest.raises(OSError) as info:
            f.read(MIB)
        assert info.value.errno in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)
        with pytest.raises(OSError) as info:
            os.listdir(mp)
        assert info.value.errno == errno.ENOTCONN
        refused = run_aisfs([f"ais://{b.name}", str(mp)], env)
        assert refused.returncode != 0
        assert f"aisfs umount {mp}" in one_line(refused.stderr)
        # A file is still open on the dead mount: aisfs umount clears it all the same.
        done = run_aisfs(["umount", str(mp)], env)
        assert done.returncode == 0, done.stderr
        assert not is_mounted(mp)
    finally:
        try:
            f.close()
        except OSError:
            pass
    done = run_aisfs([f"ais://{b.name}", str(mp), "--log-file", str(tmp_path / "k2.log")], env)
    assert done.returncode == 0, done.stderr
    try:
        assert (mp / "big.bin").read_bytes() == data
    finally:
        assert run_aisfs(["umount", str(mp)], env).returncode == 0
    wait_gone(mp)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_uploads_then_unmounts(signum: int, make_bucket: Callable[..., Bucket],
                                               ais_endpoint: str, tmp_path: Path) -> None:
    b = make_bucket()
    payload = os.urandom(3 * MIB + 5)  # less than a part: only in the daemon's buffer
    mp = tmp_path / "u"
    m = start_aisfs(f"ais://{b.name}", mp, ["--shutdown-timeout", "20"],
                    base_env(AIS_ENDPOINT=ais_endpoint), tmp_path / "u.log")
    m.wait_mounted()
    fd = os.open(mp / "up.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert os.write(fd, payload) == len(payload)
        assert [e.name for e in b.list_all_objects()] == []  # nothing uploaded yet
        m.signal(signum)
        assert m.wait(60) == 0, m.log()[-3000:]
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # the mount is gone
        m.kill()
    assert not is_mounted(mp)
    assert b.object("up.bin").get_reader().read_all() == payload
    log = m.log()
    assert f"received {signal.Signals(signum).name}: finishing uploads" in log
    check_daemon_log(log)


def test_shutdown_timeout_bounds_the_wait(make_bucket: Callable[..., Bucket],
                                          ais_endpoint: str, tmp_path: Path) -> None:
    b = make_bucket()
    mp = tmp_path / "t"
    m = start_aisfs(f"ais://{b.name}", mp, ["--shutdown-timeout", "0"],
                    base_env(AIS_ENDPOINT=ais_endpoint), tmp_path / "t.log")
    m.wait_mounted()
    fd = os.open(mp / "lost.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"z" * MIB)
        started = time.monotonic()
        m.signal(signal.SIGTERM)
        assert m.wait(30) == 0
        assert time.monotonic() - started < 10
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
        m.kill()
    assert "gave up finishing uploads after 0 s (--shutdown-timeout)" in m.log()
    check_daemon_log(m.log(), [r"ERROR aisfs\.\w+: gave up finishing uploads after 0 s"])
    assert not is_mounted(mp)
    assert [e.name for e in b.list_all_objects()] == []


# ---------------------------------------------------------------------- observability


def test_metrics_during_read_and_write_and_signals(make_bucket: Callable[..., Bucket],
                                                   ais_endpoint: str, tmp_path: Path) -> None:
    data = os.urandom(24 * MIB)
    b = make_bucket({"big.bin": data, "d/x": b"x", "d/y": b"yy"})
    port = free_port()
    mp = tmp_path / "obs"
    m = start_aisfs(f"ais://{b.name}", mp, ["--metrics-addr", f"127.0.0.1:{port}",
                                            "--negative-metadata-ttl", "0"],
                    base_env(AIS_ENDPOINT=ais_endpoint), tmp_path / "obs.log")
    try:
        m.wait_mounted()
        s0 = scrape(port)
        assert metric(s0, "aisfs_info", source=f"ais://{b.name}", endpoint=ais_endpoint) == 1
        # A read: during it, the handle is open and the reads and GETs are counted.
        with open(mp / "big.bin", "rb", buffering=0) as f:
            assert f.read(4 * MIB) == data[:4 * MIB]
            s1 = scrape(port)
        assert metric(s1, "aisfs_open_handles") == metric(s0, "aisfs_open_handles") + 1
        assert metric(s1, "aisfs_fuse_op_duration_seconds_count", op="open") >= 1
        assert metric(s1, "aisfs_fuse_op_duration_seconds_count", op="read") >= 4
        assert metric(s1, "aisfs_backend_requests_total", kind="get_range", status="206") >= 1
        assert metric(s1, "aisfs_backend_read_bytes_total") >= 4 * MIB
        assert metric(s1, "aisfs_read_ahead_bytes") > 0  # parts fetched ahead of the reader
        assert metric(s1, "aisfs_read_ahead_limit_bytes") == 128 * MIB
        # The kernel sends the handle's release after close(2) returned, and nothing waits for
        # it (a file read has no FLUSH either): the count drops once the daemon has it.
        deadline = time.monotonic() + 10
        while metric(s2 := scrape(port), "aisfs_open_handles") != metric(
                s0, "aisfs_open_handles") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(s2, "aisfs_open_handles") == metric(s0, "aisfs_open_handles")
        # Errors by errno; the metadata cache.
        with pytest.raises(FileNotFoundError):
            os.stat(mp / "nope")
        os.listdir(mp / "d")
        os.listdir(mp / "d")  # within the metadata TTL: from the cache
        s3 = scrape(port)
        errs = "aisfs_fuse_op_errors_total"
        assert metric(s3, errs, op="lookup", errno="ENOENT") == metric(
            s2, errs, op="lookup", errno="ENOENT") + 1
        hits = "aisfs_metadata_cache_hits_total"
        assert metric(s3, hits, cache="listings") >= metric(s2, hits, cache="listings") + 1
        assert metric(s3, "aisfs_metadata_cache_misses_total") > 0
        # A write: buffered while open, sent at close.
        payload = os.urandom(3 * MIB)
        with open(mp / "w.bin", "wb", buffering=0) as f:
            f.write(payload)
            s4 = scrape(port)
        assert metric(s4, "aisfs_write_buffer_bytes") >= len(payload)
        s5 = scrape(port)
        assert metric(s5, "aisfs_write_buffer_bytes") == 0
        sent = "aisfs_backend_written_bytes_total"
        assert metric(s5, sent) - metric(s4, sent) >= len(payload)
        assert metric(s5, "aisfs_fuse_op_duration_seconds_count", op="write") >= 1
        assert b.object("w.bin").get_reader().read_all() == payload
        # SIGUSR2 cycles the level (INFO -> DEBUG -> WARNING); SIGUSR1 dumps every stack.
        # Every metric the README lists is there.
        documented = re.findall(r"^\| `(aisfs_\w+)", (REPO / "README.md").read_text(), re.M)
        assert len(documented) >= 10
        helped = re.findall(r"^# HELP (\w+) ", requests.get(
            f"http://127.0.0.1:{port}/metrics", timeout=10).text, re.M)
        for name in documented:  # (a counter without samples yet: HELP without _total)
            assert name in helped or name.removesuffix("_total") in helped, name
        # (one signal at a time: trio delivers a signal pending twice only once)
        for signum, needle in ((signal.SIGUSR2, "log level is now DEBUG"),
                               (signal.SIGUSR2, "log level is now WARNING"),
                               (signal.SIGUSR1, "most recent call first")):
            m.signal(signum)
            deadline = time.monotonic() + 10
            while needle not in m.log():
                assert time.monotonic() < deadline, (needle, m.log()[-3000:])
                time.sleep(0.05)
    finally:
        code = m.stop()
    assert code == 0, m.log()[-3000:]
    check_daemon_log(m.log(), [r"WARNING root: log level is now (DEBUG|WARNING)$"])


def test_metrics_address_in_use_is_one_line(make_bucket: Callable[..., Bucket],
                                            ais_endpoint: str, tmp_path: Path) -> None:
    import socket

    b = make_bucket()
    mp = tmp_path / "busy"
    mp.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run_aisfs([f"ais://{b.name}", str(mp), "--metrics-addr", f"127.0.0.1:{port}"],
                         base_env(AIS_ENDPOINT=ais_endpoint))
    assert done.returncode != 0
    assert one_line(done.stderr).startswith(f"aisfs: cannot serve metrics on 127.0.0.1:{port}")
    assert not is_mounted(mp)


def test_cli_entry_points_exist() -> None:
    for name in ("aisfs", "mount.aisfs"):
        done = sh(Path(aisfs_cmd()[0]).parent / name, "--version")
        assert done.returncode == 0 and done.stdout.startswith("aisfs "), done.stderr

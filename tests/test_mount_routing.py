"""Direct-to-target routing on a real mount while the cluster changes: a target is killed and
comes back while files are read and written. Runs on a cluster of its own (scripts/ais-local on
a free port block), never the shared one; every wait is bounded.

What AIS v1.5.0 does when the target returns (observed on this cluster, and what the mount has to
live with):

- Objects written while it was away are on the other target; the rebalance that its return starts
  moves those the cluster map now gives it. Until one has moved, the returning target does not
  list it, its HEAD is 404 (through the proxy too), a Get-Batch reports it missing, and only a
  GET finds it (the target fetches it from its neighbour). That lasts seconds here: the mount
  shows such a name as absent meanwhile (its listing and HEAD say so), and reads it once moved.
- A Get-Batch sent as the target rejoins can hang: the target refuses its part ("not ready yet")
  and the designated target waits ``get_batch.max_wait`` (20 s) per object of it, ~100 s for a
  batch. The mount's directory scans give such a batch up after a few seconds (aisfs/scans.py).
- A target whose restart cannot bind its intra-cluster data port ("bind: address already in use")
  keeps running without it: the rebalance aborts ("error when dialing ...: connection refused"),
  and the objects written while it was away stay where they are, out of every listing and HEAD
  (only a GET by name serves one, and puts it in place) until an operator runs a rebalance. The
  mount cannot see them either (ENOENT: not listed): that is how a dozen and more of them stayed
  unreadable for the 90 s this test waits, in the runs where it failed. The cluster's ports were
  in the kernel's range for outgoing connections (``ip_local_port_range``), so that any
  connection on the machine could hold one while the target was down; a client socket holding
  the data port reproduces it every time. The cluster's ports now lie below that range, and the
  test checks that the returning target listens on all of them before going on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aistore.sdk import Client

from aisfs.clustermap import ClusterMap

from .util import (
    AIS_LOCAL,
    ephemeral_ports_start,
    free_port_block,
    have_fuse,
    mounted,
    unique,
)

pytestmark = [pytest.mark.mount, pytest.mark.slow]


class OwnCluster:
    def __init__(self, port: int, state: Path) -> None:
        self.port = port
        self.state = state
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "AIS_LOCAL_PORT": str(port), "AIS_LOCAL_DIR": str(state)}

    def smap(self) -> ClusterMap:
        with urllib.request.urlopen(f"{self.endpoint}/v1/daemon?what=smap", timeout=5) as r:
            return ClusterMap.from_json(r.read())

    def wait_targets(self, count: int, deadline: float) -> ClusterMap:
        while True:
            cmap = self.smap()
            if len(cmap.active) == count:
                return cmap
            assert time.monotonic() < deadline, f"cluster map still has {len(cmap.active)}"
            time.sleep(0.5)

    def kill_target2(self) -> list[str]:
        """SIGKILL the second target; returns its command line (to start it again)."""
        pid = int((self.state / "run" / "target2.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert "target2" in " ".join(cmdline)
        os.kill(pid, signal.SIGKILL)
        return cmdline

    def target2_listening(self, deadline: float) -> None:
        """Wait until the second target accepts connections on its public, intra-control and
        intra-data ports (AIS keeps a target running that could not bind one of them)."""
        ports = [self.port + 2 + offset for offset in (0, 1000, 2000)]
        while True:
            closed = []
            for port in ports:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                except OSError:
                    closed.append(port)
            if not closed:
                return
            assert time.monotonic() < deadline, (
                f"the returning target does not listen on {closed}; its log:\n"
                + self.target2_errors())
            time.sleep(0.5)

    def target2_errors(self) -> str:
        logs = sorted((self.state / "log" / "target2").glob("aistarget.*ERROR*"))
        return "".join(p.read_text(errors="replace")[-2000:] for p in logs[-1:])

    def start_target2(self, cmdline: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIS_")}
        with open(self.state / "log" / "target2.out", "ab") as out:
            proc = subprocess.Popen(cmdline, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        (self.state / "run" / "target2.pid").write_text(f"{proc.pid}\n")  # ais-local stop


@pytest.fixture
def own_cluster() -> Iterator[OwnCluster]:
    # Below the ports the kernel gives outgoing connections: a target restarted on a port that
    # such a connection holds runs without that listener (see the module docstring).
    port = free_port_block(24080, ephemeral_ports_start())
    cluster = OwnCluster(port, Path("/var/tmp") / f"aisfs-routing-{os.getpid()}")
    started = subprocess.run([str(AIS_LOCAL), "start"], env=cluster.env, capture_output=True,
                             text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield cluster
    finally:
        subprocess.run([str(AIS_LOCAL), "stop"], env=cluster.env, capture_output=True,
                       timeout=120)
        Path(f"{cluster.state}.lock").unlink(missing_ok=True)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _write(path: Path, data: bytes) -> bool:
    try:
        path.write_bytes(data)
        return True
    except OSError:
        return False


def test_reads_and_writes_while_a_target_leaves_and_returns(  # type: ignore[no-untyped-def]
    own_cluster: OwnCluster, tmp_path: Path
) -> None:
    if not have_fuse():
        pytest.fail("/dev/fuse or fusermount3 is missing")
    cluster = own_cluster
    sdk = Client(cluster.endpoint)
    bucket = sdk.bucket(unique("kill"))
    bucket.create()
    objects = {f"f/{i:03d}": os.urandom(1000 + i) for i in range(300)}
    for key, data in objects.items():
        bucket.object(key).get_writer().put_content(data)
    two = cluster.smap()
    assert len(two.active) == 2
    victim = next(t for t in two.active if t.url.endswith(f":{cluster.port + 2}"))

    def owner(key: str) -> str:
        node = two.owner_of(bucket.name, key)
        assert node is not None
        return node.id

    survivors = [k for k in objects if owner(k) != victim.id]
    written: dict[str, bytes] = {}
    with mounted(f"ais://{bucket.name}", tmp_path / "mnt", cluster.endpoint, (),
                 tmp_path) as m:
        root = m.path
        for key in survivors[:40]:  # before: reads through the mount, straight to targets
            assert _read(root / key) == objects[key]
        cmdline = cluster.kill_target2()
        deadline = time.monotonic() + 90
        # While the cluster still lists the dead target (~25 s), the survivor's objects stay
        # readable. (New names cannot be created meanwhile, by any client: a lookup lists the
        # name's prefix, and AIS's listing fails while a listed target does not answer.)
        for key in survivors[40:80]:
            assert _read(root / key) == objects[key], key
        one = cluster.wait_targets(1, deadline)
        # Once it has left the map: every write works (its names go to the survivor now).
        for i in range(40):
            name = f"after-leave-{i:03d}"
            data = os.urandom(700 + i)
            assert _write(root / name, data), name
            written[name] = data
        for key in survivors[80:120]:
            assert _read(root / key) == objects[key], key
        assert one.active[0].id != victim.id
        cluster.start_target2(cmdline)
        cluster.wait_targets(2, time.monotonic() + 60)
        cluster.target2_listening(time.monotonic() + 30)
        # Back: every object, old and new, reads back right (the rebalance moves those written
        # meanwhile to the returning target; until one has moved, AIS lists it nowhere and a
        # HEAD finds it nowhere: the mount shows it absent for those seconds); bounded retries.
        expect = {**{k: objects[k] for k in list(objects)[120:]}, **written}
        pending = dict(expect)
        deadline = time.monotonic() + 90
        while pending:
            for key in list(pending):
                if _read(root / key) == pending[key]:
                    del pending[key]
            assert time.monotonic() < deadline, (
                f"{len(pending)} unreadable: {sorted(pending)[:3]}; the returning target's "
                f"log:\n{cluster.target2_errors()}")
            if pending:
                time.sleep(1)
        for i in range(20):  # and writes to both targets again
            name = f"after-return-{i:03d}"
            data = os.urandom(300 + i)
            assert _write(root / name, data), name
            written[name] = data
    for name, data in written.items():  # what AIS holds, read by the SDK
        assert bucket.object(name).get_reader().read_all() == data, name

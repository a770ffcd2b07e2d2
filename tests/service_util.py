"""Helpers of the service tests: extra local clusters (HTTPS, auth), certificates, AuthN, aisfs
processes with an environment of their own, a notify socket, metrics scrapes.

Everything listens on and talks to 127.0.0.1; every wait has a deadline.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from .util import (
    AIS_LOCAL,
    REPO,
    aisfs_cmd,
    check_daemon_log,
    free_port_block,
    fusermount_u,
    is_mounted,
)

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    """A cluster started by scripts/ais-local for one test module."""

    endpoint: str
    env: dict[str, str]
    state: Path
    admin_token: str | None = None
    verify: bool | str = True

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    def api(self, method: str, path: str, **kwargs: object) -> requests.Response:
        resp = requests.request(method, f"{self.endpoint}/v1/{path}", headers=self.headers(),
                                verify=self.verify, timeout=30, **kwargs)  # type: ignore[arg-type]
        resp.raise_for_status()
        return resp

    def create_bucket(self, name: str) -> None:
        self.api("POST", f"buckets/{name}", json={"action": "create-bck"})

    def put(self, bucket: str, key: str, data: bytes) -> None:
        # Two steps (empty body to the proxy, then the body to the target): AIS over TLS drops
        # a body sent through its 307 redirect (scripts/PROTOCOL-CHECKS.md).
        first = requests.put(f"{self.endpoint}/v1/objects/{bucket}/{key}", headers={
            **self.headers(), "Content-Length": "0"}, allow_redirects=False,
            verify=self.verify, timeout=30)
        assert first.status_code in (301, 302, 307, 308), first.text
        done = requests.put(first.headers["Location"], data=data, headers=self.headers(),
                            verify=self.verify, timeout=60)
        done.raise_for_status()

    def get(self, bucket: str, key: str) -> bytes:
        return self.api("GET", f"objects/{bucket}/{key}").content

    def uuid(self) -> str:
        return str(self.api("GET", "daemon", params={"what": "smap"}).json()["uuid"])


@contextmanager
def local_cluster(name: str, start_args: Sequence[str], port_start: int) -> Iterator[Cluster]:
    port = free_port_block(port_start)
    state = Path("/var/tmp") / f"aisfs-test-{os.getpid()}-{name}"
    env = {**os.environ, "AIS_LOCAL_PORT": str(port), "AIS_LOCAL_DIR": str(state)}
    done = subprocess.run([str(AIS_LOCAL), "start", *start_args], env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        # ais-local leaves the nodes of a cluster that did not get ready running: stop them.
        subprocess.run([str(AIS_LOCAL), "stop"], env=env, capture_output=True, timeout=120)
        Path(f"{state}.lock").unlink(missing_ok=True)
        raise RuntimeError(f"could not start the {name} cluster:\n{done.stderr[-3000:]}")
    endpoint = done.stdout.strip().splitlines()[-1].split("=", 1)[1]
    token_file = state / "admin.token"
    token = token_file.read_text().strip() if token_file.exists() else None
    try:
        yield Cluster(endpoint, env, state, token)
    finally:
        subprocess.run([str(AIS_LOCAL), "stop"], env=env, capture_output=True, timeout=120)
        Path(f"{state}.lock").unlink(missing_ok=True)  # ais-local's start/stop lock


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    crt, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(crt), "-days", "2", "-subj", f"/CN=aisfs test {name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        check=True, capture_output=True, timeout=60,
    )
    return crt, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost signed by ``ca``: (certificate, key)."""
    crt, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(csr), "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]),
                    "-CAkey", str(ca[1]), "-CAcreateserial", "-out", str(crt), "-days", "2",
                    "-extfile", str(ext)], check=True, capture_output=True, timeout=60)
    return crt, key


def mint_jwt(secret: str, claims: dict[str, object]) -> str:
    """An HS256 JWT (the way AuthN signs with a shared secret)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


# ---------------------------------------------------------------------- aisfs processes


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without the AIS/aisfs settings a test did not ask for."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIS_", "AISFS_", "NOTIFY_SOCKET"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Aisfs:
    """One foreground aisfs process serving ``path``; its stderr goes to ``log_path``."""

    path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_mounted(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not (is_mounted(self.path) and "mounted ais://" in self.log()):
            if self.proc.poll() is not None:
                raise AssertionError(f"aisfs exited with {self.proc.returncode}:\n"
                                     f"{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"aisfs did not mount within {timeout} s:\n"
                                     f"{self.log()[-3000:]}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"aisfs did not exit within {timeout} s:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if is_mounted(self.path):
            fusermount_u(self.path, lazy=True)

    def stop(self) -> int:
        if self.proc.poll() is None and is_mounted(self.path):
            fusermount_u(self.path)
        return self.wait(60)


def start_aisfs(source: str, path: Path, args: Sequence[str], env: Mapping[str, str],
                log_path: Path, command: Sequence[str] | None = None) -> Aisfs:
    path.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([*(command or [*aisfs_cmd(), "-f"]), source, str(path), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=dict(env),
                                cwd=str(REPO))
    return Aisfs(path, proc, log_path)


@contextmanager
def aisfs_running(source: str, path: Path, args: Sequence[str], env: Mapping[str, str],
                  log_path: Path, expect_log: Sequence[str] = ()) -> Iterator[Aisfs]:
    """A mounted aisfs; unmounted at exit, and it must then exit 0, with no traceback and no
    WARNING/ERROR in its log that ``expect_log`` does not allow (tests/util.py: the log rule)."""
    m = start_aisfs(source, path, args, env, log_path)
    try:
        m.wait_mounted()
        yield m
    finally:
        if m.proc.poll() is None:
            code = m.stop()
            assert code == 0, f"aisfs exited with {code}:\n{m.log()[-3000:]}"
        elif is_mounted(m.path):
            fusermount_u(m.path, lazy=True)
        check_daemon_log(m.log(), expect_log)


def run_aisfs(args: Sequence[str], env: Mapping[str, str], timeout: float = 120
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*aisfs_cmd(), *args], env=dict(env), capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


# ---------------------------------------------------------------------- systemd, metrics


class NotifySocket:
    """The AF_UNIX datagram socket systemd listens on for Type=notify services."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        self.messages.append(data)
        return data

    def wait_for(self, state: str, timeout: float, proc: subprocess.Popen[bytes]) -> float:
        """Seconds until a message with ``state`` arrives; fails when the process exits first."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            message = self.receive(min(0.5, max(0.01, deadline - time.monotonic())))
            if message is not None and state in message.splitlines():
                return time.monotonic() - started
            if message is None and proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode} before {state}; "
                                     f"got {self.messages}")
        raise AssertionError(f"no {state} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the metrics endpoint, keyed by (name, sorted labels)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and all((k, val) in ls for k, val in labels.items()))


def readme_blocks(info: str) -> list[str]:
    """Code blocks tagged ``info`` in the README's "Deploying on compute nodes" section."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Deploying on compute nodes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{re.escape(info)}\n(.*?)^```$", section, flags=re.M | re.S)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None

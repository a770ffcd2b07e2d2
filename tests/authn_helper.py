"""Run the AIS AuthN server (built from the same AIS release) on loopback and get tokens from it.

AuthN v1.5.0 listens on every interface (``":<port>"``, cmd/authn/hserv.go), so the tests run
this script in a private network namespace (``unshare -n``) where loopback is the only
interface: the tokens it prints are HS256 JWTs signed with the cluster's secret, valid outside.

Input on stdin (JSON): ``{"authn": BIN, "secret": S, "workdir": DIR, "roles": [Role...],
"users": [{"id": ..., "pass": ..., "roles": [{"name": ...}]}...]}``. Output on stdout (JSON):
``{"tokens": {user id: token}, "admin": token}``. Every wait has a deadline; AuthN is stopped
before the script exits.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ADMIN_PASS = "aisfs-test-admin-pass"  # only ever inside the private namespace


def loopback_up() -> None:
    """``ip link set lo up`` without iproute2 (a new network namespace starts with lo down)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        if not flags & iff_up:
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(req: dict[str, Any]) -> dict[str, Any]:
    work = Path(req["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (work / "authn.json").write_text(json.dumps({
        "auth": {"secret": req["secret"], "expiration_time": "24h"},
        "log": {"dir": str(work / "log"), "level": "3"},
        "net": {"http": {"port": port, "use_https": False}},
        "timeout": {"default_timeout": "30s"},
    }))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AIS_AUTHN_SU_NAME": "admin",
           "AIS_AUTHN_SU_PASS": ADMIN_PASS}
    with open(work / "authn.out", "wb") as out:
        proc = subprocess.Popen([req["authn"], "-config", str(work)], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                admin = requests.post(f"{base}/users/admin", json={"password": ADMIN_PASS},
                                      timeout=5)
                if admin.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("AuthN did not come up: "
                                   + (work / "authn.out").read_text()[-2000:])
            time.sleep(0.1)
        admin_token = admin.json()["token"]
        auth = {"Authorization": f"Bearer {admin_token}"}
        for role in req["roles"]:
            r = requests.post(f"{base}/roles", json=role, headers=auth, timeout=10)
            r.raise_for_status()
        for user in req["users"]:
            r = requests.post(f"{base}/users", json=user, headers=auth, timeout=10)
            r.raise_for_status()
        tokens = {}
        for user in req["users"]:
            r = requests.post(f"{base}/users/{user['id']}", json={"password": user["pass"]},
                              timeout=10)
            r.raise_for_status()
            tokens[user["id"]] = r.json()["token"]
        return {"tokens": tokens, "admin": admin_token}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    if "--netns" in sys.argv:
        loopback_up()
    json.dump(run(json.load(sys.stdin)), sys.stdout)


if __name__ == "__main__":
    main()

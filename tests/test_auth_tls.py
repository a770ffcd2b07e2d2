"""Authentication and TLS against real clusters.

Auth: a local cluster started with ``--auth SECRET`` (HS256), and the AuthN server of the same
AIS release (``scripts/ais-local build-authn``) issuing tokens for users created through its REST
API: "reader" may list buckets and read bucket A, "reader2" may read A and B, "outsider" may
only list buckets. TLS: a local cluster started with ``--https`` and a certificate signed by a
CA this module generates with openssl.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .service_util import (
    Cluster,
    aisfs_running,
    base_env,
    local_cluster,
    make_ca,
    make_server_cert,
    mint_jwt,
    one_line,
    run_aisfs,
)
from .util import AIS_LOCAL, REPO, have_fuse, unique

SECRET = "aisfs-test-hs256-secret"
RO, CLUSTER_RO = 771, 12288  # apc.AccessRO, apc.ClusterAccessRO (api/apc/access.go)
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

pytestmark = pytest.mark.skipif(not have_fuse(), reason="needs /dev/fuse")


# ---------------------------------------------------------------------- authentication


@pytest.fixture(scope="module")
def auth_cluster() -> Iterator[Cluster]:
    with local_cluster("auth", ["--auth", SECRET], 23100) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def buckets(auth_cluster: Cluster) -> dict[str, str]:
    names = {"A": unique("auth-a"), "B": unique("auth-b")}
    for name in names.values():
        auth_cluster.create_bucket(name)
        auth_cluster.put(name, "f.txt", f"in {name}\n".encode())
    auth_cluster.put(names["A"], "dir/g.txt", b"g" * 1000)
    return names


def _role(name: str, uuid: str, readable: list[str]) -> dict[str, object]:
    return {
        "name": name, "desc": "aisfs test role",
        "clusters": [{"id": uuid, "perm": str(CLUSTER_RO)}],
        "buckets": [{"bck": {"name": b, "provider": "ais", "namespace": {"uuid": uuid, "name": ""}},
                     "perm": str(RO)} for b in readable],
    }


@pytest.fixture(scope="module")
def tokens(auth_cluster: Cluster, buckets: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Tokens issued by a real AuthN server, run in a private network namespace."""
    built = subprocess.run([str(AIS_LOCAL), "build-authn"], capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, f"cannot build AuthN:\n{built.stderr[-3000:]}"
    uuid = auth_cluster.uuid()
    request = {
        "authn": built.stdout.strip().splitlines()[-1], "secret": SECRET,
        "workdir": str(tmp_path_factory.mktemp("authn")),
        "roles": [_role("read-a", uuid, [buckets["A"]]),
                  _role("read-ab", uuid, [buckets["A"], buckets["B"]]),
                  _role("list-only", uuid, [])],
        "users": [{"id": "reader", "pass": "pw-reader-1", "roles": [{"name": "read-a"}]},
                  {"id": "reader2", "pass": "pw-reader-2", "roles": [{"name": "read-ab"}]},
                  {"id": "outsider", "pass": "pw-outsider", "roles": [{"name": "list-only"}]}],
    }
    helper = [sys.executable, str(REPO / "tests" / "authn_helper.py")]
    unshare = shutil.which("unshare")
    command = [unshare, "-n", *helper, "--netns"] if unshare else helper
    done = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0 and unshare and "Operation not permitted" in done.stderr:
        # No CAP_SYS_ADMIN: AuthN in this namespace (it binds every interface for a moment).
        done = subprocess.run(helper, input=json.dumps(request), capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    issued: dict[str, str] = json.loads(done.stdout)["tokens"]
    return issued


def auth_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"  # no ~/.config/ais/cli/auth.token unless a test writes one
    home.mkdir(exist_ok=True)
    return base_env(HOME=str(home), **extra)


def refused(bucket: str, status: int = 403) -> str:
    """The log rule's regex (tests/util.py) for AIS refusing a request about ``bucket``."""
    return rf"WARNING aisfs\.\w+: .*ais://{re.escape(bucket)}/.*\(HTTP {status}\)"


SKIP_VERIFY = r"WARNING aisfs\.\w+: TLS certificate verification is off \(skip-verify\)"


def assert_no_tokens(text: str, tokens: dict[str, str]) -> None:
    for token in tokens.values():
        assert token not in text
        assert token.split(".")[2] not in text  # not even the signature


def test_reads_work_writes_are_refused(auth_cluster: Cluster, buckets: dict[str, str],
                                       tokens: dict[str, str], tmp_path: Path) -> None:
    a = buckets["A"]
    env = auth_env(tmp_path, AIS_AUTHN_TOKEN=tokens["reader"])
    with aisfs_running(f"ais://{a}", tmp_path / "m", ["--endpoint", auth_cluster.endpoint],
                       env, tmp_path / "m.log", expect_log=[refused(a)]) as m:
        assert sorted(os.listdir(m.path)) == ["dir", "f.txt"]
        assert (m.path / "f.txt").read_bytes() == f"in {a}\n".encode()
        assert (m.path / "dir" / "g.txt").read_bytes() == b"g" * 1000
        with pytest.raises(PermissionError) as info:
            with open(m.path / "new.txt", "wb") as f:
                f.write(b"refused")
        assert info.value.errno == errno.EACCES
        with pytest.raises(PermissionError):
            (m.path / "f.txt").write_bytes(b"overwrite")
        with pytest.raises(PermissionError):
            (m.path / "f.txt").unlink()
        assert (m.path / "f.txt").read_bytes() == f"in {a}\n".encode()
        log = m.log()
    assert auth_cluster.get(a, "f.txt") == f"in {a}\n".encode()
    refusals = [line for line in log.splitlines() if f"ais://{a}/new.txt" in line]
    assert any("HTTP 403" in line and "insufficient permissions" in line for line in refusals), log
    assert_no_tokens(log, tokens)


def test_another_bucket_is_refused(auth_cluster: Cluster, buckets: dict[str, str],
                                   tokens: dict[str, str], tmp_path: Path) -> None:
    a, b = buckets["A"], buckets["B"]
    env = auth_env(tmp_path, AIS_AUTHN_TOKEN=tokens["reader"])
    with aisfs_running("ais://", tmp_path / "all", ["--endpoint", auth_cluster.endpoint], env,
                       tmp_path / "all.log", expect_log=[refused(b)]) as m:
        assert {a, b} <= set(os.listdir(m.path))  # may list buckets
        assert (m.path / a / "f.txt").read_bytes() == f"in {a}\n".encode()
        with pytest.raises(PermissionError) as info:
            os.listdir(m.path / b)
        assert info.value.errno == errno.EACCES
        log = m.log()
    assert f"ais://{b}" in log and "HTTP 403" in log
    assert_no_tokens(log, tokens)
    # Mounting that bucket fails at mount time, with the reason.
    mp = tmp_path / "b"
    mp.mkdir()
    done = run_aisfs([f"ais://{b}", str(mp), "--endpoint", auth_cluster.endpoint], env)
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert line.startswith(f"aisfs: access to ais://{b} denied by {auth_cluster.endpoint} "
                           "(HTTP 403, AIS_AUTHN_TOKEN): ")
    assert_no_tokens(done.stderr, tokens)


def test_file_in_a_refused_bucket_is_eacces(auth_cluster: Cluster, buckets: dict[str, str],
                                            tokens: dict[str, str], tmp_path: Path) -> None:
    b = buckets["B"]
    env = auth_env(tmp_path, AIS_AUTHN_TOKEN=tokens["reader"])
    with aisfs_running("ais://", tmp_path / "all", ["--endpoint", auth_cluster.endpoint], env,
                       tmp_path / "all.log", expect_log=[refused(b)]) as m:
        with pytest.raises(PermissionError):
            (m.path / b / "f.txt").read_bytes()


def test_no_token_fails_at_mount_time(auth_cluster: Cluster, buckets: dict[str, str],
                                      tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    done = run_aisfs([f"ais://{buckets['A']}", str(mp), "--endpoint", auth_cluster.endpoint],
                     auth_env(tmp_path))
    assert done.returncode != 0
    assert one_line(done.stderr) == (
        f"aisfs: {auth_cluster.endpoint} requires an AuthN token and none was found: set "
        "AIS_AUTHN_TOKEN or AIS_AUTHN_TOKEN_FILE (or --token-file), or log in with "
        "'ais auth login'")


def test_ais_cli_token_file_is_used(auth_cluster: Cluster, buckets: dict[str, str],
                                    tokens: dict[str, str], tmp_path: Path) -> None:
    env = auth_env(tmp_path)
    cli_file = Path(env["HOME"]) / ".config" / "ais" / "cli" / "auth.token"
    cli_file.parent.mkdir(parents=True)
    cli_file.write_text(json.dumps({"token": tokens["reader"]}))  # what `ais auth login` writes
    a = buckets["A"]
    with aisfs_running(f"ais://{a}", tmp_path / "m", ["--endpoint", auth_cluster.endpoint],
                       env, tmp_path / "m.log") as m:
        assert (m.path / "f.txt").read_bytes() == f"in {a}\n".encode()


def test_rotated_token_file_is_picked_up(auth_cluster: Cluster, buckets: dict[str, str],
                                         tokens: dict[str, str], tmp_path: Path) -> None:
    a, b = buckets["A"], buckets["B"]
    token_file = tmp_path / "ais.token"

    def rotate(user: str) -> None:
        new = tmp_path / "ais.token.new"
        new.write_text(json.dumps({"token": tokens[user]}))
        os.replace(new, token_file)

    def eventually(check: object, what: str) -> None:
        deadline = time.monotonic() + 10  # the file is looked at once a second
        while True:
            try:
                check()  # type: ignore[operator]
                return
            except (OSError, AssertionError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"not picked up within 10 s: {what}") from None
                time.sleep(0.2)

    rotate("reader")
    env = auth_env(tmp_path, AIS_AUTHN_TOKEN_FILE=str(token_file))
    args = ["--endpoint", auth_cluster.endpoint, "--metadata-ttl", "0",
            "--negative-metadata-ttl", "0"]
    with aisfs_running("ais://", tmp_path / "m", args, env, tmp_path / "m.log",
                       expect_log=[refused(b), refused(a)]) as m:
        with pytest.raises(PermissionError):
            os.listdir(m.path / b)
        rotate("reader2")  # a token with more rights: B becomes readable, no remount
        eventually(lambda: os.listdir(m.path / b), "reader2's token")
        assert (m.path / b / "f.txt").read_bytes() == f"in {b}\n".encode()
        rotate("outsider")  # and one with fewer: A is refused from now on

        def a_refused() -> None:
            try:
                os.listdir(m.path / a)
            except PermissionError:
                return
            raise AssertionError("still readable")

        eventually(a_refused, "outsider's token")
        log = m.log()
    assert log.count(f"token file {token_file} changed: using the new token") == 2
    assert_no_tokens(log, tokens)


def test_expired_token_is_refused_and_never_printed(auth_cluster: Cluster,
                                                    buckets: dict[str, str],
                                                    tmp_path: Path) -> None:
    # Minted the way AuthN signs (HS256, the shared secret), to control the expiry: AuthN
    # issues nothing shorter than a minute.
    now = int(time.time())
    expired = mint_jwt(SECRET, {"sub": "admin", "admin": True, "iat": now - 120, "exp": now - 60})
    mp = tmp_path / "m"
    mp.mkdir()
    done = run_aisfs([f"ais://{buckets['A']}", str(mp), "--endpoint", auth_cluster.endpoint],
                     auth_env(tmp_path, AIS_AUTHN_TOKEN=expired))
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert "HTTP 401" in line and "expired" in line, line
    assert expired not in line and expired.split(".")[2] not in line
    # A token that expires while mounted: AIS echoes a token it had accepted before.
    # (Its life starts now, not before the refused mount above, and leaves the mount room to
    # come up on a loaded machine.)
    now = int(time.time())
    short = mint_jwt(SECRET, {"sub": "admin", "admin": True, "iat": now, "exp": now + 10})
    a = buckets["A"]
    args = ["--endpoint", auth_cluster.endpoint, "--metadata-ttl", "0"]
    with aisfs_running(f"ais://{a}", tmp_path / "s", args,
                       auth_env(tmp_path, AIS_AUTHN_TOKEN=short), tmp_path / "s.log",
                       expect_log=[refused(a, 401)]) as m:
        assert (m.path / "f.txt").read_bytes() == f"in {a}\n".encode()
        time.sleep(max(0.0, now + 11.5 - time.time()))
        with pytest.raises(PermissionError):
            os.listdir(m.path)
        log = m.log()
    # AIS echoed the (cached, now expired) token: the log shows it redacted.
    assert "HTTP 401" in log and "token expired]: <token>" in log, log[-3000:]
    assert short not in log and short.split(".")[2] not in log


# ---------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("certs")
    ca = make_ca(d, "ca")
    other = make_ca(d, "other-ca")
    crt, key = make_server_cert(d, ca)
    return {"ca": ca[0], "other": other[0], "crt": crt, "key": key}


@pytest.fixture(scope="module")
def tls_cluster(certs: dict[str, Path]) -> Iterator[Cluster]:
    with local_cluster("tls", ["--https", str(certs["crt"]), str(certs["key"])], 26100) as c:
        assert c.endpoint.startswith("https://127.0.0.1:")
        c.verify = str(certs["ca"])
        c.create_bucket("tls-bucket")
        c.put("tls-bucket", "t.txt", b"over tls\n")
        yield c


def tls_env(bundle: bool, **extra: str) -> dict[str, str]:
    env = base_env(**extra)
    env.pop("REQUESTS_CA_BUNDLE", None)
    env.pop("CURL_CA_BUNDLE", None)
    if bundle and os.path.exists(SYSTEM_BUNDLE):
        env["REQUESTS_CA_BUNDLE"] = SYSTEM_BUNDLE  # as on this project's machines
    return env


@pytest.mark.parametrize("bundle", [True, False], ids=["REQUESTS_CA_BUNDLE", "no-bundle"])
@pytest.mark.parametrize("how", ["option", "env", "config"])
def test_trusted_ca(how: str, bundle: bool, tls_cluster: Cluster, certs: dict[str, Path],
                    tmp_path: Path) -> None:
    args = ["--endpoint", tls_cluster.endpoint]
    env = tls_env(bundle)
    if how == "option":
        args += ["--ca-bundle", str(certs["ca"])]
    elif how == "env":
        env["AIS_CLIENT_CA"] = str(certs["ca"])
    else:
        conf = tmp_path / "aisfs.toml"
        conf.write_text(f'endpoint = "{tls_cluster.endpoint}"\nca-bundle = "{certs["ca"]}"\n')
        args = ["--config", str(conf)]
    with aisfs_running("ais://tls-bucket", tmp_path / "m", args, env, tmp_path / "m.log") as m:
        assert (m.path / "t.txt").read_bytes() == b"over tls\n"
        new = os.urandom(6 * 1024 * 1024)  # through the redirect, in two steps
        (m.path / f"w-{how}-{bundle}.bin").write_bytes(new)
        assert (m.path / f"w-{how}-{bundle}.bin").read_bytes() == new
        log = m.log()
    assert "WARNING" not in log


@pytest.mark.parametrize("bundle", [True, False], ids=["REQUESTS_CA_BUNDLE", "no-bundle"])
@pytest.mark.parametrize("ca", [None, "other"])
def test_untrusted_certificate_fails_at_mount_time(ca: str | None, bundle: bool,
                                                   tls_cluster: Cluster,
                                                   certs: dict[str, Path],
                                                   tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    args = ["ais://tls-bucket", str(mp), "--endpoint", tls_cluster.endpoint]
    if ca:
        args += ["--ca-bundle", str(certs[ca])]
    done = run_aisfs(args, tls_env(bundle))
    assert done.returncode != 0
    line = one_line(done.stderr)
    assert line.startswith(f"aisfs: the TLS certificate of {tls_cluster.endpoint} is not "
                           "trusted (unable to get local issuer certificate): give its CA with "
                           "--ca-bundle FILE or AIS_CLIENT_CA"), line


@pytest.mark.parametrize("how", ["option", "env"])
def test_skip_verify_works_and_warns(how: str, tls_cluster: Cluster, tmp_path: Path) -> None:
    args = ["--endpoint", tls_cluster.endpoint]
    env = tls_env(True)
    if how == "option":
        args.append("--skip-verify")
    else:
        env["AIS_SKIP_VERIFY_CRT"] = "true"
    with aisfs_running("ais://tls-bucket", tmp_path / "m", args, env, tmp_path / "m.log",
                       expect_log=[SKIP_VERIFY]) as m:
        assert (m.path / "t.txt").read_bytes() == b"over tls\n"
        log = m.log()
    assert re.search(SKIP_VERIFY, log), log[-3000:]


def test_plain_http_to_https_cluster_is_one_line(tls_cluster: Cluster, tmp_path: Path) -> None:
    mp = tmp_path / "m"
    mp.mkdir()
    wrong = tls_cluster.endpoint.replace("https://", "http://")
    done = run_aisfs(["ais://tls-bucket", str(mp), "--endpoint", wrong], tls_env(True))
    assert done.returncode != 0
    assert one_line(done.stderr).startswith("aisfs: ")

"""Fixtures: the real local AIS cluster, the aistore SDK as an independent checker, real mounts.

The cluster is the one at ``AIS_ENDPOINT`` when that answers; otherwise the test run starts one
with ``scripts/ais-local`` (state and port of its own) and stops it at the end.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from aistore.sdk import Client
from aistore.sdk.bucket import Bucket

from .util import (
    AIS_LOCAL,
    Mount,
    endpoint_ready,
    free_port_block,
    have_fuse,
    mounted,
    unexpected_records,
    unique,
)


@pytest.fixture(scope="session")
def ais_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("AIS_ENDPOINT")
    if given and endpoint_ready(given):
        yield given.rstrip("/")
        return
    port = free_port_block(18080)
    state = Path("/var/tmp") / f"aisfs-test-{os.getpid()}"
    env = {**os.environ, "AIS_LOCAL_PORT": str(port), "AIS_LOCAL_DIR": str(state)}
    started = subprocess.run([str(AIS_LOCAL), "start"], env=env, capture_output=True, text=True,
                             timeout=900)
    if started.returncode != 0:
        pytest.fail(f"could not start the local AIS cluster:\n{started.stderr[-3000:]}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([str(AIS_LOCAL), "stop"], env=env, capture_output=True, timeout=120)
        Path(f"{state}.lock").unlink(missing_ok=True)  # ais-local's start/stop lock


@pytest.fixture(scope="session")
def sdk(ais_endpoint: str) -> Client:
    return Client(ais_endpoint)


@pytest.fixture
def make_bucket(sdk: Client) -> Iterator[Callable[..., Bucket]]:
    """Creates buckets with unique names, filled from ``{name: bytes}``; destroys them after."""
    made: list[Bucket] = []

    def make(objects: dict[str, bytes] | None = None, name: str | None = None) -> Bucket:
        bucket = sdk.bucket(name or unique("b"))
        bucket.create(exist_ok=True)
        made.append(bucket)
        for key, data in (objects or {}).items():
            bucket.object(key).get_writer().put_content(data)
        return bucket

    yield make
    for bucket in made:
        try:
            bucket.delete(missing_ok=True)
        except Exception:  # noqa: BLE001 - clean-up must not hide the test's own result
            pass


def expected_log(request: pytest.FixtureRequest) -> list[str]:
    """The regexes of the test's ``@pytest.mark.expect_log(...)`` markers (tests/util.py: the log
    rule)."""
    return [p for marker in request.node.iter_markers("expect_log") for p in marker.args]


@pytest.fixture
def in_process_log_rule(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
                        ) -> Iterator[None]:
    """The log rule (tests/util.py) for aisfs code running in the test's own process: a WARNING
    or ERROR it logs, and the test did not declare with ``@pytest.mark.expect_log``, fails the
    test (at teardown)."""
    yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    extra = unexpected_records(records, expected_log(request))
    if extra:
        pytest.fail("aisfs logged WARNING/ERROR lines the test did not declare "
                    "(pytest.mark.expect_log):\n" + "\n".join(extra), pytrace=False)


@pytest.fixture
def mount(
    ais_endpoint: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Mount]]:
    """``mount("ais://b", *args)`` mounts in a subprocess; every mount is undone at the end.

    At the end, each mount's log must hold no traceback and no WARNING/ERROR but those the test
    declared: ``@pytest.mark.expect_log(REGEX, ...)`` for all its mounts, or
    ``mount(..., expect_log=[REGEX, ...])`` for one.
    """
    if not have_fuse():
        pytest.fail("/dev/fuse or fusermount3 is missing: install fuse3 (the mount tests need it)")
    stack: list[object] = []
    marked = expected_log(request)

    def do_mount(source: str, *args: str, name: str = "mnt", check_log: bool = True,
                 expect_log: Sequence[str] = ()) -> Mount:
        ctx = mounted(source, tmp_path / name, ais_endpoint, args, tmp_path, check_log,
                      [*marked, *expect_log])
        m = ctx.__enter__()
        stack.append(ctx)
        return m

    yield do_mount
    errors = []
    for ctx in reversed(stack):
        try:
            ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
        except AssertionError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("\n".join(errors))

"""The log rule (tests/util.py) on a real mount: a WARNING the daemon logs fails the mount's test
unless the test declared it.

The warning provoked here is a real one: an object name with a component longer than 255 bytes
cannot be a file name, and a listing that meets it logs one warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from aistore.sdk.bucket import Bucket

from .util import Mount, is_mounted, mounted

LONG = "L" * 256
SKIPPED = r"WARNING aisfs\.listing: ais://[^ ]+: skipped 1 object name\(s\) that cannot be a file"


def test_undeclared_warning_fails_the_mount(make_bucket: Callable[..., Bucket], ais_endpoint: str,
                                            tmp_path: Path) -> None:
    bucket = make_bucket({"ok.txt": b"1", LONG: b"2"})
    with pytest.raises(AssertionError, match="skipped 1 object name") as info:
        with mounted(f"ais://{bucket.name}", tmp_path / "m", ais_endpoint) as m:
            assert os.listdir(m.path) == ["ok.txt"]
    assert "did not declare" in str(info.value)
    assert not is_mounted(tmp_path / "m")


def test_declared_warning_passes(make_bucket: Callable[..., Bucket], ais_endpoint: str,
                                 tmp_path: Path) -> None:
    bucket = make_bucket({"ok.txt": b"1", LONG: b"2"})
    with mounted(f"ais://{bucket.name}", tmp_path / "m", ais_endpoint,
                 expect_log=[SKIPPED]) as m:
        assert os.listdir(m.path) == ["ok.txt"]
    assert "skipped 1 object name" in m.log()


@pytest.mark.expect_log(SKIPPED)
def test_marker_declares_for_the_mount_fixture(make_bucket: Callable[..., Bucket],
                                               mount: Callable[..., Mount]) -> None:
    bucket = make_bucket({"ok.txt": b"1", LONG: b"2"})
    m = mount(f"ais://{bucket.name}")
    assert os.listdir(m.path) == ["ok.txt"]

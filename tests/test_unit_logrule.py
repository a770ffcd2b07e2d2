"""The log rule of tests/util.py: a WARNING or ERROR aisfs logs fails a test that did not
declare it.

The rule itself is test code; these tests make sure it can fail: the parser finds the records of
both log formats the daemon writes, an undeclared warning fails, a declared one does not, and
the in-process fixture fails a pytest test (run in a pytest of its own).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .util import REPO, check_daemon_log, logged_problems, unexpected, unexpected_records

DAEMON_LOG = (
    "2026-01-02 03:04:05,678 INFO aisfs.mount: mounted ais://b at /mnt (endpoint http://x)\n"
    "2026-01-02 03:04:06,001 DEBUG aisfs.fs: lookup(1, 'a'): not found\n"
    "2026-01-02 03:04:06,100 WARNING aisfs.listing: ais://b/: skipped 1 object name(s) that "
    "cannot be a file name, e.g. 'x'\n"
    "2026-01-02 03:04:07,200 ERROR aisfs.fs: unexpected error in read(5); returning EIO\n"
    "2026-01-02 03:04:08,300 INFO aisfs.mount: unmounted\n"
)
JOURNAL_LOG = """\
<6>aisfs.mount: mounted ais://b at /mnt (endpoint http://x)
<4>aisfs.client: TLS certificate verification is off (skip-verify)
<3>aisfs.writer: ais://b/f: upload failed
<7>aisfs.fs: lookup(1, 'a'): not found
"""
PY_WARNING = "/usr/lib/python3/site-packages/x.py:12: ResourceWarning: unclosed <socket>\n"


def test_parser_finds_warnings_and_errors_of_both_formats() -> None:
    assert logged_problems(DAEMON_LOG) == [
        "WARNING aisfs.listing: ais://b/: skipped 1 object name(s) that cannot be a file name, "
        "e.g. 'x'",
        "ERROR aisfs.fs: unexpected error in read(5); returning EIO",
    ]
    assert logged_problems(JOURNAL_LOG) == [
        "WARNING aisfs.client: TLS certificate verification is off (skip-verify)",
        "ERROR aisfs.writer: ais://b/f: upload failed",
    ]
    assert logged_problems(PY_WARNING) == ["WARNING ResourceWarning: unclosed <socket>"]
    assert logged_problems("2026-01-02 03:04:05,678 INFO aisfs.mount: a WARNING word\n") == []


def test_undeclared_warning_fails_and_declared_one_passes() -> None:
    with pytest.raises(AssertionError) as info:
        check_daemon_log(DAEMON_LOG)
    assert "skipped 1 object name(s)" in str(info.value)
    assert "unexpected error in read(5)" in str(info.value)
    with pytest.raises(AssertionError) as info:  # one declared, the other still fails
        check_daemon_log(DAEMON_LOG, [r"WARNING aisfs\.listing: .*skipped"])
    assert "unexpected error in read(5)" in str(info.value)
    check_daemon_log(DAEMON_LOG, [r"WARNING aisfs\.listing: .*skipped", r"^ERROR .*returning EIO"])
    check_daemon_log("2026-01-02 03:04:05,678 INFO aisfs.mount: mounted\n")
    # A RELEASE answered after the unmount began (the kernel no longer waits for it):
    check_daemon_log("2026-01-02 03:04:05,678 ERROR pyfuse3: fuse_release(): fuse_reply_* "
                     "failed with No such file or directory\n")
    with pytest.raises(AssertionError):  # any other failed reply is not
        check_daemon_log("2026-01-02 03:04:05,678 ERROR pyfuse3: fuse_read(): fuse_reply_* "
                         "failed with No such file or directory\n")


def test_traceback_fails_even_when_its_error_is_declared() -> None:
    text = DAEMON_LOG + "Traceback (most recent call last):\n  File \"x.py\", line 1\nOSError: x\n"
    with pytest.raises(AssertionError, match="traceback"):
        check_daemon_log(text, [".*"])


def test_records_of_in_process_code() -> None:
    def record(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("aisfs.reader", level, __file__, 1, msg, None, None)

    records = [record(logging.INFO, "fine"), record(logging.WARNING, "ais://b/x: changed"),
               record(logging.ERROR, "boom")]
    assert unexpected_records(records, []) == ["WARNING aisfs.reader: ais://b/x: changed",
                                               "ERROR aisfs.reader: boom"]
    assert unexpected_records(records, ["changed"]) == ["ERROR aisfs.reader: boom"]
    assert unexpected(["WARNING a: b"], ["^WARNING a: b$"]) == []


def test_in_process_fixture_fails_an_undeclared_warning(tmp_path: Path) -> None:
    """The ``in_process_log_rule`` fixture of tests/conftest.py, in a pytest run of its own."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent("""\
        import logging

        import pytest

        from tests.conftest import in_process_log_rule  # noqa: F401 (the fixture)

        pytestmark = pytest.mark.usefixtures("in_process_log_rule")
        log = logging.getLogger("aisfs.inner")


        def test_undeclared_warning():
            log.warning("ais://b/x: something went wrong")


        def test_undeclared_error():
            log.error("ais://b/x: worse")


        @pytest.mark.expect_log(r"WARNING aisfs\\.inner: .*went wrong")
        def test_declared_warning():
            log.warning("ais://b/x: something went wrong")


        def test_info_only():
            log.info("all fine")
        """))
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "--junitxml", str(report), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, timeout=120,
    )
    failed = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        problem = case.find("error")
        if problem is None:
            problem = case.find("failure")
        failed[case.get("name")] = None if problem is None else problem.get("message", "")
    assert failed["test_declared_warning"] is None
    assert failed["test_info_only"] is None
    assert "something went wrong" in (failed["test_undeclared_warning"] or "")
    assert "worse" in (failed["test_undeclared_error"] or "")

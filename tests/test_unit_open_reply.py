"""aisfs/open_reply.py: where pyfuse3's calls to libfuse's ``fuse_reply_open`` go through (the
mount tests show what a redirected reply does)."""

from __future__ import annotations

import ctypes
import os

import pyfuse3
import pytest

from aisfs import open_reply


def test_pyfuse3_calls_fuse_reply_open_through_a_writable_slot() -> None:
    path = os.path.realpath(pyfuse3.__file__)
    real = ctypes.cast(ctypes.PyDLL("libfuse3.so.3").fuse_reply_open, ctypes.c_void_p).value
    slot = open_reply._got_slot(path, b"fuse_reply_open", real)
    assert slot is not None
    assert any(low <= slot < high and writable
               for low, high, writable in open_reply._mappings(path))


def test_a_function_pyfuse3_does_not_call_has_no_slot() -> None:
    path = os.path.realpath(pyfuse3.__file__)
    assert open_reply._got_slot(path, b"fuse_no_such_function", None) is None


def test_where_the_slot_cannot_be_found_nothing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(open_reply, "_hook", None)
    monkeypatch.setattr(open_reply, "_got_slot", lambda *args: None)
    assert open_reply.install() is False
    assert open_reply._hook is None
    open_reply.without_flush(5, True)  # (nothing to announce to: no error either)

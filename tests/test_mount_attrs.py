"""Real mounts of the real local cluster: the attributes a file shows over time."""

from __future__ import annotations

import os
import time


def test_an_objects_mtime_holds_while_its_version_does(make_bucket, mount) -> None:  # type: ignore[no-untyped-def]
    """An object aisfs did not write has only its access time in listings (every read moves it)
    and its Last-Modified in a HEAD: a file's mtime must not change because it was read, or
    because its attributes came from the other source (tar: 'file changed as we read it')."""
    bucket = make_bucket({"d/f.bin": b"x" * 5000, "d/g.bin": b"y"})
    m = mount(f"ais://{bucket.name}", "--metadata-ttl", "0.5", "--negative-metadata-ttl", "0.5")
    path = m.path / "d" / "f.bin"
    os.listdir(m.path / "d")  # attributes from the listing
    listed = os.stat(path).st_mtime_ns
    for _ in range(3):
        assert path.read_bytes() == b"x" * 5000  # each GET moves AIS's access time
        time.sleep(1.2)  # every cache expired: the next stat asks AIS again
        assert os.stat(path).st_mtime_ns == listed
    # A time set through the mount is shown at once, version or not.
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(path).st_mtime_ns == 2_000_000_000
    # A new version (written by another client) shows its own time.
    other = m.path / "d" / "g.bin"
    before = os.stat(other).st_mtime_ns
    time.sleep(0.1)
    bucket.object("d/g.bin").get_writer().put_content(b"new")
    time.sleep(1.2)
    st = os.stat(other)
    assert st.st_size == 3 and st.st_mtime_ns != before

"""Archives built in memory for the archive tests, in each format AIS reads."""

from __future__ import annotations

import io
import tarfile
import zipfile

import lz4.frame

FORMATS = [".tar", ".tgz", ".tar.gz", ".tar.lz4", ".zip"]


def shard(ext: str, members: dict[str, bytes]) -> bytes:
    """An archive of ``members`` in the format its extension names."""
    buf = io.BytesIO()
    if ext == ".zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return buf.getvalue()
    gz = ext in (".tgz", ".tar.gz")
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return lz4.frame.compress(raw) if ext == ".tar.lz4" else raw


def tar_of(members: dict[str, bytes]) -> bytes:
    """A plain tar of ``members``."""
    return shard(".tar", members)

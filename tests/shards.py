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


class Pipe(io.RawIOBase):
    """A file that cannot seek: ``zipfile`` writes each member's sizes after its data (a data
    descriptor, flag bit 3), as a writer to a pipe does."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def zip_of(members: list[tuple[str, bytes]], *, method: int = zipfile.ZIP_DEFLATED,
           seekable: bool = True, zip64: bool = False, stored: frozenset[str] = frozenset(),
           ) -> bytes:
    """A zip of ``members`` in this order (names ending in ``/`` are directory entries), each
    compressed with ``method`` (those in ``stored``: not compressed); ``seekable``: written to a
    file that can seek (sizes in the local headers) or to a pipe (sizes after the data);
    ``zip64``: ZIP64 sizes for every member."""
    out: io.BytesIO | Pipe = io.BytesIO() if seekable else Pipe()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members:
            if name.endswith("/"):
                zf.mkdir(name)
                continue
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED if name in stored else method
            with zf.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
    return out.getvalue() if isinstance(out, io.BytesIO) else bytes(out.data)


def rename_local(data: bytes, old: str, new: str) -> bytes:
    """``data`` with the local header of ``old`` naming ``new`` (of the same length) instead;
    the central directory unchanged."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        at = zf.getinfo(old).header_offset + 30
    assert data[at:at + len(old)] == old.encode() and len(new) == len(old)
    return data[:at] + new.encode() + data[at + len(old):]


def tar_of(members: dict[str, bytes]) -> bytes:
    """A plain tar of ``members``."""
    return shard(".tar", members)

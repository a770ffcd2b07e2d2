"""Extended attributes ↔ AIS custom metadata: names, value encoding, limits. Pure, any thread.

- ``user.KEY`` is the object's custom-metadata key ``KEY``. Values are arbitrary bytes: a value
  that is printable UTF-8 is stored as is (so other AIS clients read it as text); anything else
  (binary, control characters, or text that starts with the marker) is stored as
  ``b64:<base64>``, because AIS carries custom metadata in HTTP headers that cannot hold them.
- Keys under ``aisfs.`` are this filesystem's own (the mtime), hidden and not settable.
- ``ais.version``, ``ais.checksum`` and ``ais.atime`` are read-only views of object properties.
- ``security.*``, ``system.*`` and ``trusted.*`` are answered locally, without a network call:
  the kernel asks for ``security.capability`` on every write.
"""

from __future__ import annotations

import base64
import errno

from .errors import PosixError
from .objects import ObjectProps

USER = "user."
INTERNAL_PREFIX = "aisfs."
READ_ONLY = ("ais.version", "ais.checksum", "ais.atime")
LOCAL_NAMESPACES = ("security.", "system.", "trusted.")
B64 = b"b64:"
CUSTOM_MD_MAX = 2048  # AIS: sum(len(key) + len(value)) of all custom keys (cmn/objattrs.go)


def read_only_value(name: str, props: ObjectProps) -> bytes:
    """The value of one of the READ_ONLY names."""
    value = {"ais.version": props.version, "ais.checksum": props.checksum,
             "ais.atime": str(props.atime_ns)}[name]
    return value.encode()


def custom_key(name: str) -> str:
    """The custom-metadata key for a settable xattr name, or a PosixError saying why not."""
    if name.startswith(LOCAL_NAMESPACES):
        raise PosixError(errno.EOPNOTSUPP, f"xattr namespace of {name!r} is not stored in AIS")
    if name in READ_ONLY:
        raise PosixError(errno.EPERM, f"{name} is a read-only object property")
    if not name.startswith(USER):
        raise PosixError(errno.EOPNOTSUPP, f"only user.* xattrs are stored in AIS, not {name!r}")
    key = name[len(USER):]
    if not key:
        raise PosixError(errno.EINVAL, "empty xattr name")
    if key.startswith(INTERNAL_PREFIX):
        raise PosixError(errno.EPERM, f"user.{INTERNAL_PREFIX}* is reserved by aisfs")
    if any(c in key for c in "=\x01,") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        # "=" splits key from value in AIS's header format; "," splits pairs; \x01 is reserved.
        raise PosixError(errno.EINVAL, f"xattr name {name!r} has a character AIS cannot store")
    return key


def encode_value(value: bytes) -> bytes:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return B64 + base64.b64encode(value)
    if value.startswith(B64) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return B64 + base64.b64encode(value)
    return value


def decode_value(stored: bytes) -> bytes:
    if stored.startswith(B64):
        try:
            return base64.b64decode(stored[len(B64):], validate=True)
        except ValueError:
            return stored  # written by another client in a form we did not produce
    return stored


def custom_size(custom: dict[str, bytes]) -> int:
    return sum(len(k.encode("utf-8", "surrogateescape")) + len(v) for k, v in custom.items())


def check_size(custom: dict[str, bytes]) -> None:
    """Refuse what AIS would accept and then lose: a merge over 2 KiB drops ALL custom keys."""
    total = custom_size(custom)
    if total > CUSTOM_MD_MAX:
        raise PosixError(
            errno.E2BIG, f"custom metadata would be {total} bytes; AIS allows {CUSTOM_MD_MAX}"
        )


def visible_names(custom: dict[str, bytes]) -> list[bytes]:
    """The user.* names listxattr shows (internal keys hidden)."""
    return [
        (USER + k).encode("utf-8", "surrogateescape")
        for k in sorted(custom)
        if not k.startswith(INTERNAL_PREFIX)
    ]

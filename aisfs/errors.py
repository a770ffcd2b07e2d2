"""Exception hierarchy for every layer below the FUSE adapter, and its errno mapping.

Lower layers (client, namespace, reader, writer) raise these; only ``fs.py`` turns them into
``pyfuse3.FUSEError`` through :func:`to_errno`. Pure module: no I/O, no trio, no pyfuse3, so it is
safe from any thread.
"""

from __future__ import annotations

import errno
import logging


class AisFsError(Exception):
    """Base class. ``errno`` is what a FUSE caller sees."""

    errno: int = errno.EIO
    log_level: int = logging.WARNING


class AisError(AisFsError):
    """An error answer from the AIS cluster (status >= 400), or a transport failure."""

    def __init__(self, message: str, status: int = 0, what: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.what = what  # the bucket/object the request was about, for log lines

    def __str__(self) -> str:
        prefix = f"{self.what}: " if self.what else ""
        code = f" (HTTP {self.status})" if self.status else ""
        return f"{prefix}{self.args[0]}{code}"


class NotFound(AisError):
    errno = errno.ENOENT
    log_level = logging.DEBUG


class BucketNotFound(NotFound):
    pass


class AccessDenied(AisError):
    """401/403: missing, expired or insufficient token."""

    errno = errno.EACCES


class Conflict(AisError):
    """409: the cluster refused because of a concurrent change or an existing name."""

    errno = errno.EEXIST


class InvalidRequest(AisError):
    """400: AIS refused the request (bad object name, bad metadata, ...)."""

    errno = errno.EINVAL


class DirectoryInTheWay(InvalidRequest):
    """400 ErrMv: a target's disk holds a directory where the object would go (AIS keeps a
    directory there after the last object under ``name/`` was deleted)."""

    errno = errno.EISDIR


class RangeNotSatisfiable(AisError):
    errno = errno.EIO


class InsufficientStorage(AisError):
    errno = errno.ENOSPC


class BadArchive(AisError):
    """AIS could not read an archive object (corrupt, truncated, or not the format its name
    says): its members cannot be read."""

    errno = errno.EIO


class Transient(AisError):
    """Connection errors, timeouts, 429 and 5xx that survived the retry policy."""

    errno = errno.EIO


class BodyCutShort(Transient):
    """An answer's body ended before its length, or its connection failed or timed out while it
    was being received: the request itself was answered, so an idempotent one may be sent
    again (the transport does, for a GET read into a buffer)."""


class StaleObject(AisFsError):
    """The object changed in AIS while a file handle was reading it."""

    errno = errno.ESTALE


class PosixError(AisFsError):
    """A filesystem-level refusal with an explicit errno (ENOTEMPTY, EISDIR, EROFS, ...)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.log_level = logging.DEBUG if err in (errno.ENOENT, errno.ENODATA) else logging.INFO


# AIS answers 400 with these when the request was fine but a node it needed failed: the proxy
# could not reach a target ("failed to call t[...]": a target that is down stays in the cluster
# map for a while, and every listing fails so until it is dropped).
CLUSTER_FAILURE_TCODES = frozenset({"ErrFailedTo"})


def error_for_status(status: int, message: str, what: str, tcode: str = "") -> AisError:
    """Map an HTTP status (plus AIS's ``tcode``) to the exception class for it."""
    if status == 404:
        cls: type[AisError] = BucketNotFound if "Bck" in tcode else NotFound
    elif status in (401, 403):
        cls = AccessDenied
    elif status == 409:
        cls = Conflict
    elif status == 416:
        cls = RangeNotSatisfiable
    elif status == 507:
        cls = InsufficientStorage
    elif status == 429 or status >= 500:
        cls = Transient
    elif status == 400 and tcode in CLUSTER_FAILURE_TCODES:
        cls = Transient
    elif status == 400 and tcode == "ErrMv" and "virtual directory" in message:
        cls = DirectoryInTheWay
    elif status == 400:
        cls = InvalidRequest
    else:
        cls = AisError
    return cls(message, status, what)


def to_errno(exc: BaseException) -> int:
    """The errno for any exception; unknown exceptions are EIO."""
    if isinstance(exc, AisFsError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO

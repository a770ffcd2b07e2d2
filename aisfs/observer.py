"""What the mount reports as it works, to one observer (``metrics.Metrics`` when metrics are on).

The mount builds the observer and hands it to the parts that report: the FUSE adapter (each
operation), the async AIS interface (object bytes received) and the HTTP client (each request
and retry). Without metrics they get None and report nothing.

Concurrency: ``fuse_op`` and ``read_bytes`` are called on the trio thread, ``request`` and
``retry`` in HTTP worker threads: an observer must be thread-safe and must not block.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def fuse_op(self, op: str, seconds: float, err: int) -> None:
        """A FUSE operation finished, after ``seconds``, with errno ``err`` (0: success)."""
        ...

    def request(self, kind: str, status: int, seconds: float, bytes_out: int) -> None:
        """An HTTP request to AIS got its answer's headers (``bytes_out``: body bytes sent)."""
        ...

    def retry(self, kind: str) -> None:
        """An HTTP request to AIS is sent again."""
        ...

    def read_bytes(self, n: int) -> None:
        """``n`` bytes of object content arrived."""
        ...

"""Small object ranges read by the trio thread itself, straight from the object's target: the
read path of small files (the async AIS interface's, under ``aio.py``; HTTP through
``trioconn``).

A GET of up to :data:`INLINE_MAX` bytes, for which the router knows the target (remembered or
computed from a fresh cluster map), goes over a kept-alive connection of ``trioconn`` without a
worker thread; see there why that halves the daemon's CPU per small file. The threaded
transport stays the authority: this path takes only an answer it can complete in one exchange
(200 or 206 whose body fits the caller's buffer) and hands every other case back as None, and
the caller then sends the request the threaded way, which routes it afresh (a 404 from a
computed target is never final there), retries it within the policy and maps its errors. So a
small read costs at most one exchange more than the threaded path alone; the cases that never
come here at all: TLS, an HTTP proxy from the environment, ``--via-proxy``, a token file whose
periodic check is due (reading it is I/O), a cluster map too old to use.

Concurrency: trio thread only; the router and the token source are thread-safe and do no I/O on
the calls made here.
"""

from __future__ import annotations

import time

from .client import AisClient
from .objects import RangeResult, RecvBuffer
from .observer import Observer
from .routing import Via
from .trioconn import ExchangeFailed, TrioConnections

# Ranges up to this size may be read here; larger ones are parts of big files, whose receive
# takes long enough that a worker thread costs nothing that matters.
INLINE_MAX = 1024 * 1024


class TrioReads:
    """Stateless beyond its connections."""

    def __init__(self, client: AisClient, conns: TrioConnections,
                 observer: Observer | None = None) -> None:
        self.client = client
        self.transport = client.transport
        self.router = client.transport.router
        self.conns = conns
        self.observer = observer

    async def get_range(self, bucket: str, key: str, start: int, length: int,
                        into: RecvBuffer | None) -> RangeResult | None:
        """As ``AisClient.get_range``, or None: the caller sends the request the threaded way."""
        if length > INLINE_MAX:
            return None
        url = self.client.object_url(bucket, key)
        target = self.router.target(Via.READ, url) or self.router.computed(Via.READ, url)
        if target is None:
            return None
        host_port, path = _split_http(target)
        if not host_port or not self.transport.plain_http(target[:len("http://") + len(host_port)]):
            return None
        token = self.transport.headers_without_io()
        if token is None:
            return None
        host, _, port = host_port.rpartition(":")
        lines = f"Range: bytes={start}-{start + length - 1}\r\nUser-Agent: aisfs\r\n"
        for name, value in token.items():
            lines += f"{name}: {value}\r\n"
        buf = into if into is not None else bytearray(length)
        started = time.monotonic()
        try:
            answer = await self.conns.get(host.strip("[]"), int(port),
                                          f"{path}{'&' if '?' in path else '?'}provider=ais",
                                          lines, memoryview(buf))
        except ExchangeFailed:
            return None
        if answer.body is not None or answer.status not in (200, 206) or (
                answer.status == 200 and start > 0):
            return None
        if self.observer is not None:
            self.observer.request("get_range", answer.status, time.monotonic() - started, 0)
        total = -1
        content_range = answer.headers.get("content-range", "")
        if "/" in content_range:
            tail = content_range.rsplit("/", 1)[1]
            total = int(tail) if tail.isdigit() else -1
        return RangeResult(memoryview(buf)[:answer.length], total,
                           answer.headers.get("ais-version", ""))


def _split_http(url: str) -> tuple[str, str]:
    """("host:port", "/path?query") of a plain-HTTP URL with an explicit port; ("", "")
    otherwise."""
    if not url.startswith("http://"):
        return "", ""
    slash = url.find("/", len("http://"))
    host_port = url[len("http://"):slash] if slash > 0 else ""
    if not host_port or not host_port.rpartition(":")[2].isdigit():
        return "", ""
    return host_port, url[slash:]

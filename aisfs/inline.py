"""Small object requests made by the trio thread itself, straight to the object's target: a
small file's GET and PUT (the async AIS interface's, under ``aio.py``; HTTP through
``trioconn``, whose docstring says why this halves the daemon's CPU per small file).

A GET of a range or a PUT of a body of up to :data:`INLINE_MAX` bytes, for which the router knows
the target (remembered from the proxy, or computed from a fresh cluster map; a PUT to a computed
target carries the proxy's redirect marker, as the threaded transport sends it), is one exchange
on a kept-alive connection without a worker thread. The threaded transport stays the authority:
this path takes only an answer it can complete in one exchange (a 2xx; for a GET, one whose body
fits the caller's buffer) and hands every other case back as None, and the caller then sends the
request the threaded way, which routes it afresh (a 404 from a computed target is never final
there), retries it within the policy and maps its errors. So a small request costs at most one
exchange more than the threaded path alone (a PUT that failed here is sent whole again: the same
bytes, so at most one more version). Cases that never come here: TLS, an HTTP proxy from the
environment, ``--via-proxy`` before the proxy named the object's target, a token file whose
periodic check is due (reading it is I/O), a cluster map too old to use, a header value that
HTTP cannot carry.

Concurrency: trio thread only; the router and the token source are thread-safe and do no I/O on
the calls made here.
"""

from __future__ import annotations

import time
import urllib.parse

from .client import AisClient, custom_headers
from .objects import ObjectProps, RangeResult, RecvBuffer, range_total
from .observer import Observer
from .routing import Via
from .trioconn import Answer, ExchangeFailed, TrioConnections

# Requests up to this size may be made here; larger ones are parts of big files, whose transfer
# takes long enough that a worker thread costs nothing that matters.
INLINE_MAX = 1024 * 1024


class InlineRequests:
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
        buf = into if into is not None else bytearray(length)
        answer = await self._send("GET", "get_range", bucket, key, Via.READ,
                                  {"Range": f"bytes={start}-{start + length - 1}"}, None,
                                  memoryview(buf))
        if answer is None or answer.body is not None or (answer.status == 200 and start > 0):
            return None  # (200 for a range from the middle: the target ignored the Range)
        return RangeResult(memoryview(buf)[:answer.length],
                           range_total(answer.headers.get("content-range", "")),
                           answer.headers.get("ais-version", ""))

    async def put_object(self, bucket: str, key: str, data: bytes | memoryview,
                         custom: dict[str, bytes] | None) -> ObjectProps | None:
        """As ``AisClient.put_object``, or None: the caller sends the request the threaded way."""
        if len(data) > INLINE_MAX:
            return None
        answer = await self._send("PUT", "put_object", bucket, key, Via.WRITE,
                                  custom_headers(custom), data, None)
        if answer is None:
            return None
        return ObjectProps(key, len(data), version=answer.headers.get("ais-version", ""))

    async def _send(self, method: str, kind: str, bucket: str, key: str, via: Via,
                    headers: dict[str, str], body: bytes | memoryview | None,
                    into: memoryview | None) -> Answer | None:
        """One exchange with the object's target; its 2xx answer, or None."""
        url = self.client.object_url(bucket, key)
        params = "provider=ais"
        target = self.router.target(via, url)
        if target is None:
            target = self.router.computed(via, url)
            if target is not None and via is not Via.READ:
                marker = self.router.redirect_marker()
                params += "&" + urllib.parse.urlencode(marker)
        if target is None or not target.startswith("http://"):
            return None
        slash = target.find("/", len("http://"))
        host, _, port = target[len("http://"):slash].rpartition(":")
        if not port.isdigit() or not self.transport.plain_http(target[:slash]):
            return None
        common = self.transport.headers_without_io()
        if common is None:
            return None
        lines = "User-Agent: aisfs\r\n"
        for name, value in {**headers, **common}.items():
            if "\r" in value or "\n" in value:
                return None  # the threaded path refuses it with its own error
            lines += f"{name}: {value}\r\n"
        path = target[slash:]
        started = time.monotonic()
        try:
            answer = await self.conns.request(
                method, host.strip("[]"), int(port),
                f"{path}{'&' if '?' in path else '?'}{params}", lines, body, into)
        except ExchangeFailed:
            return None
        if not 200 <= answer.status < 300:
            return None
        if self.observer is not None:
            self.observer.request(kind, answer.status, time.monotonic() - started,
                                  0 if body is None else len(body))
        return answer

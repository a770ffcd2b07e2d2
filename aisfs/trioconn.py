"""Kept-alive HTTP/1.1 exchanges on the trio thread, for requests so small that handing them to a
worker thread costs more than the request itself (part of the transport; trio's non-blocking
sockets, no ``requests``/``urllib3``).

Why: a 64 KiB object's GET in a worker thread costs the daemon two thread hand-offs and, worse,
GIL hand-overs between that thread and the trio thread at every socket call: measured with
``perf`` under 8 readers, over a third of the daemon's CPU went to futex waits and wake-ups of
the GIL, and a read waited for the GIL up to a switch interval at each step. Here the request and
its answer are sent and received by the trio thread itself between its other tasks, and the body
lands straight in the caller's buffer.

Scope, deliberately narrow: plain HTTP to a host given as ``host:port``, a GET or a PUT of a body
already in memory, answers with a ``Content-Length`` (AIS's object GETs and PUTs; not HEAD, whose
answer has a length but no body). Both are idempotent, which the one resend below relies on. An
exchange is one attempt:
anything else (a connection refused or reset, a timeout, a chunked or oversized answer) raises
:class:`ExchangeFailed` with the connection closed, and the caller sends the request again on the
threaded transport, which owns the retry policy, TLS, proxies and the error mapping. A kept-alive
connection the server closed while idle is noticed before reuse (it is readable) or, when the
close crosses the request, by an answer that ends before its first byte: the request goes once
more on a new connection.

Concurrency: trio thread only. A connection belongs to one task from :meth:`take` to its return
to the idle list; a task cancelled in the middle of an exchange closes its connection.
"""

from __future__ import annotations

import select
import socket
from dataclasses import dataclass

import trio

# Header block of an answer: AIS's are a few hundred bytes.
HEAD_MAX = 16 * 1024
# An answer body with no buffer to land in (an error's text) is read only up to this size.
SMALL_BODY_MAX = 64 * 1024


class ExchangeFailed(Exception):
    """The exchange did not complete; its connection is closed. Not an answer: the caller
    repeats the request on the transport's threaded path."""


class _ClosedBeforeAnswer(Exception):
    """A kept-alive connection ended before any byte of the answer."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    length: int  # body bytes
    body: bytes | None  # the body, or None when it landed in the caller's buffer


class TrioConnections:
    """Invariant: every socket in ``_idle[origin]`` is connected to ``origin``, has no request
    in flight and no unread answer, and is in no other list; each list holds at most
    ``per_origin`` sockets."""

    def __init__(self, connect_timeout: float, read_timeout: float, per_origin: int) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.per_origin = per_origin
        self._idle: dict[tuple[str, int], list[trio.socket.SocketType]] = {}

    def close(self) -> None:
        """Close the idle connections; also after ``trio.run`` returned (at unmount)."""
        idle, self._idle = self._idle, {}
        for socks in idle.values():
            for sock in socks:
                # (trio's close() needs a running trio; the plain socket's does not)
                socket.socket(fileno=sock.detach()).close()

    async def request(self, method: str, host: str, port: int, target: str, headers: str,
                      body: bytes | memoryview | None, into: memoryview | None) -> Answer:
        """``method target`` (path and query) with ``headers`` (complete ``Name: value\\r\\n``
        lines, Latin-1) and ``body``; a 2xx answer's body lands in ``into`` when it fits there."""
        if body is not None:
            headers += f"Content-Length: {len(body)}\r\n"
        request = (f"{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}\r\n"
                   ).encode("latin-1")
        if body:
            # (one send: a small body leaves with the headers, as httpconn sends it)
            request += body
        origin = (host, port)
        for first in (True, False):
            sock, reused = await self._take(origin)
            try:
                with trio.fail_after(self.read_timeout):
                    answer, keep = await _exchange(sock, request, into)
            except _ClosedBeforeAnswer:
                sock.close()
                if first and reused:
                    continue
                raise ExchangeFailed(f"{host}:{port}: connection closed before the answer"
                                     ) from None
            except (OSError, trio.TooSlowError, ValueError) as exc:
                sock.close()
                raise ExchangeFailed(f"{host}:{port}: {type(exc).__name__}: {exc}") from None
            except BaseException:
                sock.close()  # cancelled mid-exchange: the answer would be left unread
                raise
            if keep:
                self._give(origin, sock)
            else:
                sock.close()
            return answer
        raise AssertionError("unreachable")

    async def _take(self, origin: tuple[str, int]) -> tuple[trio.socket.SocketType, bool]:
        idle = self._idle.get(origin)
        while idle:
            sock = idle.pop()
            if _usable(sock):
                return sock, True
            sock.close()
        sock = trio.socket.socket(socket.AF_INET6 if ":" in origin[0] else socket.AF_INET,
                                  socket.SOCK_STREAM)
        try:
            with trio.fail_after(self.connect_timeout):
                await sock.connect(origin)
        except (OSError, trio.TooSlowError) as exc:
            sock.close()
            raise ExchangeFailed(f"{origin[0]}:{origin[1]}: connect: {exc}") from None
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, False

    def _give(self, origin: tuple[str, int], sock: trio.socket.SocketType) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self.per_origin:
            idle.append(sock)
        else:
            sock.close()


async def _exchange(sock: trio.socket.SocketType, request: bytes, into: memoryview | None
                    ) -> tuple[Answer, bool]:
    """One request and its whole answer; returns the answer and whether the connection may
    serve another request."""
    sent = 0
    out = memoryview(request)
    while sent < len(request):
        sent += await sock.send(out[sent:])
    head = bytearray(HEAD_MAX)
    got = 0
    end = -1
    while end < 0:
        if got == len(head):
            raise ValueError("answer header block too large")
        n = await sock.recv_into(memoryview(head)[got:])
        if n == 0:
            if got == 0:
                raise _ClosedBeforeAnswer()
            raise ValueError("connection closed in the answer's header block")
        got += n
        end = head.find(b"\r\n\r\n", max(0, got - n - 3), got)
    status, headers, keep = _parse_head(bytes(head[:end]))
    length_text = headers.get("content-length")
    if length_text is None or not length_text.isdigit() or "transfer-encoding" in headers:
        raise ValueError("answer without a Content-Length")
    length = int(length_text)
    early = memoryview(head)[end + 4:got]
    if len(early) > length:
        raise ValueError("more bytes than the answer's Content-Length")
    if into is not None and 200 <= status < 300 and length <= len(into):
        sink = into
    elif length <= SMALL_BODY_MAX:
        sink = memoryview(bytearray(length))
    else:
        raise ValueError(f"answer body of {length} bytes with no room for it")
    sink[:len(early)] = early
    pos = len(early)
    while pos < length:
        n = await sock.recv_into(sink[pos:length])
        if n == 0:
            raise ValueError(f"connection closed after {pos} of {length} body bytes")
        pos += n
    body = None if sink is into else bytes(sink)
    return Answer(status, headers, length, body), keep


def _parse_head(block: bytes) -> tuple[int, dict[str, str], bool]:
    lines = block.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:60]!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return int(code), headers, keep


def _usable(sock: trio.socket.SocketType) -> bool:
    """An idle connection is readable only when the server closed it (or broke HTTP)."""
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable

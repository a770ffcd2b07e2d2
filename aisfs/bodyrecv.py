"""Receiving plain-HTTP response bodies with few system calls: a whole body straight into a
caller's buffer in one receive (:func:`recv_whole_body`, the fast path of
:func:`aisfs.httpreply.read_body_into`), and a body read piece by piece, known-length or chunked,
a buffer at a time (:class:`PiecewiseBody`, under :meth:`aisfs.httpreply.Download.readinto`).

Works on ``http.client.HTTPResponse`` internals (the response under urllib3) and the socket under
it; imports no HTTP library. Falls back (receives nothing) whenever the body is not a plain-TCP
one of the kind each handles, so the caller's usual read path stays correct.

Concurrency: one response per call or per :class:`PiecewiseBody`, used by one worker thread at a
time (the one that owns the response); no shared state.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any


def recv_whole_body(fp: Any, view: memoryview) -> int:
    """Fill ``view`` from a plain-HTTP body with blocking ``MSG_WAITALL`` receives.

    Why: a part read the usual way costs a poll() and a recv() per socket buffer, dozens per
    part, and each one gives up and takes back the GIL; with 8 parts in flight the FUSE thread
    waited for the GIL on every request (measured: a 1 GiB read through the mount went from 530
    to 950 MB/s). One receive per part keeps the GIL free. The read timeout still holds, as
    SO_RCVTIMEO. Returns 0 (read nothing) when the body is not a plain-TCP, known-length one
    (TLS, chunked): the caller reads it the usual way.
    """
    sock = _plain_socket(fp)
    if (sock is None or getattr(fp, "chunked", True) or not isinstance(
            getattr(fp, "length", None), int) or fp.length < len(view) or not view):
        return 0
    got = _buffered_into(fp.fp, view)
    timeout = _blocking(sock, sock.gettimeout() or 0.0)
    try:
        while got < len(view):
            got += _recv_all(sock, view[got:])
    finally:
        _back_to_timeout(sock, timeout)
    fp.length -= got
    if fp.length == 0:
        fp._close_conn()  # what http.client does at the end of a body: the connection is reusable
    return got


class PiecewiseBody:
    """A plain-HTTP body read piece by piece (a Get-Batch reply, an archive read member after
    member), received a buffer at a time: the usual read returns what has arrived, a few KiB as
    the server sends (AIS: chunks of 2-64 KiB), and each receive gives up and takes back the
    GIL, a hand-over the FUSE thread waits for (see :func:`recv_whole_body`). Here a receive
    waits (``MSG_WAITALL``) until ``BLOCK`` bytes came, or the stream paused for ``PAUSE``
    seconds (SO_RCVTIMEO), and hands out what it has then: many pieces per receive while the
    server sends steadily, and never more than ``PAUSE`` of delay when it does not (a Get-Batch
    of one range waits that long for AIS's late end of the reply, then goes on). A chunked
    body is decoded here; a known-length one is never read past its end. The read timeout
    still holds: no byte for that long raises ``TimeoutError``.

    The socket stays in blocking mode (SO_RCVTIMEO set) until a known-length body's end, whose
    connection can then be reused as after ``http.client``'s own read; a chunked body's
    connection must be closed after, not reused (its ``http.client`` state no longer matches).

    Invariant: ``_buf[_start:_end]`` holds received bytes not yet handed out; ``_left`` is the
    current chunk's (or the known-length body's) payload not yet handed out; ``_crlf`` is set
    between a chunk's payload and the CRLF that ends it."""

    BLOCK = 256 * 1024
    PAUSE = 0.002

    def __init__(self, fp: Any, sock: socket.socket, chunked: bool) -> None:
        self._fp = fp
        self._sock = sock
        self._chunked = chunked
        self._buf = bytearray(self.BLOCK)  # (never resized: ``_view`` stays valid)
        self._view = memoryview(self._buf)
        self._start = 0
        self._left = 0 if chunked else fp.length
        self._crlf = False
        self._done = False
        self._end = _buffered_into(fp.fp, self._view[:self._left or self.BLOCK])
        self._timeout = _blocking(sock, self.PAUSE)

    @classmethod
    def of(cls, fp: Any) -> PiecewiseBody | None:
        """A reader of ``fp``'s body when it is a plain-TCP one, known-length or chunked, none
        of which was read yet; else None (the caller reads it the usual way)."""
        sock = _plain_socket(fp)
        if sock is None:
            return None
        if getattr(fp, "chunked", False):
            return cls(fp, sock, True) if getattr(fp, "chunk_left", 0) is None else None
        length = getattr(fp, "length", None)
        return cls(fp, sock, False) if isinstance(length, int) and length > 0 else None

    def readinto(self, view: memoryview, /) -> int:
        """Body bytes into ``view``: what is held, across chunks (receiving only when nothing
        is), at least one byte; 0 at the body's end."""
        got = 0
        while got < len(view) and not self._done:
            if not self._left:
                more = self._next_chunk(may_receive=not got)
                if more is None:
                    break  # the next chunk's header is not all here: hand out what is
                if not more:
                    self._done = True
                    break
            if self._end == self._start:
                if got:
                    break
                self._hold(1)
            n = min(len(view) - got, self._left, self._end - self._start)
            view[got:got + n] = self._view[self._start:self._start + n]  # (one copy)
            self._start += n
            self._left -= n
            got += n
            if not self._left and not self._chunked:
                self._end_known_length()
            self._crlf = self._chunked and not self._left
        return got

    def _next_chunk(self, may_receive: bool) -> bool | None:
        """Decode the next chunk's header; False at the last (empty) chunk and at the end of a
        known-length body; None when the header is not all held and ``may_receive`` is
        False."""
        if not self._chunked:
            return False
        need = 2 if self._crlf else 0
        while (at := self._buf.find(b"\r\n", self._start + need, self._end)) < 0:
            if not may_receive:
                return None
            if self._end - self._start > 1024:
                raise ConnectionError("a chunk header without its end")
            self._hold(self._end - self._start + 1)
        if self._crlf:
            if self._buf[self._start:self._start + 2] != b"\r\n":
                raise ConnectionError("a chunk without the CRLF after it")
            self._start += 2
            self._crlf = False
        try:
            size = int(bytes(self._buf[self._start:at]).split(b";", 1)[0], 16)
        except ValueError:
            raise ConnectionError("a chunk header that is not a size") from None
        self._start = at + 2
        self._left = size
        return size > 0

    def _hold(self, least: int) -> None:
        """Receive until at least ``least`` bytes not handed out are held."""
        held = self._end - self._start
        if self._start:
            self._buf[:held] = self._buf[self._start:self._end]
            self._start, self._end = 0, held
        since = time.monotonic()  # the last byte received
        while self._end < least:
            room = len(self._buf) - self._end
            if not self._chunked:  # never past the body: its bytes not yet held
                room = min(room, self._left - self._end)
            if room <= 0:
                raise ConnectionError("the body ended early")
            try:
                n = self._sock.recv_into(self._view[self._end:], room, socket.MSG_WAITALL)
            except BlockingIOError:  # SO_RCVTIMEO: nothing came for PAUSE
                if self._timeout is not None and time.monotonic() - since >= self._timeout:
                    raise TimeoutError("no body bytes within the read timeout") from None
                continue
            if n == 0:
                raise ConnectionError("connection closed before the end of the body")
            since = time.monotonic()
            self._end += n

    def _end_known_length(self) -> None:
        """A known-length body read to its end: the connection can serve the next request,
        as after ``http.client``'s own read of it."""
        _back_to_timeout(self._sock, self._timeout)
        self._fp.length = 0
        self._fp._close_conn()
        self._done = True


def _plain_socket(fp: Any) -> socket.socket | None:
    """The plain TCP socket under an ``http.client`` response, or None (TLS, or not one)."""
    bufr = getattr(fp, "fp", None)
    sock = getattr(getattr(bufr, "raw", None), "_sock", None)
    if bufr is None or type(sock) is not socket.socket or not hasattr(fp, "_close_conn"):
        return None
    return sock


def _buffered_into(bufr: Any, view: memoryview) -> int:
    """Body bytes that arrived with the headers (in the response's buffer) into ``view``; waits
    for the first ones when none did."""
    buffered = len(bufr.peek(1))
    return int(bufr.readinto(view[: min(buffered, len(view))])) if buffered else 0


def _blocking(sock: socket.socket, receive_timeout: float) -> float | None:
    """Put ``sock`` in blocking mode for ``MSG_WAITALL``, with ``receive_timeout`` as
    SO_RCVTIMEO; the timeout it had (for :func:`_back_to_timeout`)."""
    timeout = sock.gettimeout()
    sock.settimeout(None)
    _set_receive_timeout(sock, receive_timeout)
    return timeout


def _back_to_timeout(sock: socket.socket, timeout: float | None) -> None:
    _set_receive_timeout(sock, 0.0)
    sock.settimeout(timeout)


def _recv_all(sock: socket.socket, view: memoryview) -> int:
    """One blocking receive of all of ``view`` (fewer bytes only at the read timeout)."""
    try:
        n = sock.recv_into(view, 0, socket.MSG_WAITALL)
    except BlockingIOError:  # SO_RCVTIMEO expired with nothing received
        raise TimeoutError("no body bytes within the read timeout") from None
    if n == 0:
        raise ConnectionError(f"connection closed with {len(view)} body bytes still to come")
    return n


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))

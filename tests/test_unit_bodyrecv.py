"""Unit tests of a body read piece by piece (``httpreply.Download.readinto`` over
``bodyrecv.PiecewiseBody``): chunked and known-length bodies from a scripted HTTP server on
loopback (a thread of this process), through the transport's lean connections."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from aisfs import errors, httpconn
from aisfs.httpreply import Download

Script = Callable[[socket.socket], None]  # writes one answer (status line on) to the socket


class _ScriptedServer:
    """Answers each request with the next script; counts the connections it accepted."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while self.scripts:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                reader = conn.makefile("rb")
                while self.scripts:
                    while (line := reader.readline()) not in (b"\r\n", b""):
                        pass
                    if not line:
                        break
                    try:
                        self.scripts.pop(0)(conn)
                    except OSError:  # the client went away first
                        break


@contextmanager
def _server(*scripts: Script) -> Iterator[_ScriptedServer]:
    server = _ScriptedServer(list(scripts))
    try:
        yield server
    finally:
        server.sock.close()


def _get(origin: str, read_timeout: float = 5.0) -> Download:
    conns = httpconn.Connections(2.0, read_timeout, 4, None)
    resp = httpconn.LeanHttp(conns).request("GET", origin + "/b", origin, stream=True)
    return Download(resp, "ais://test/b")


def _chunked(pieces: list[bytes], pause_after: int = -1,
             gate: threading.Event | None = None) -> Script:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, piece in enumerate(pieces):
            conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            if i == pause_after and gate is not None:
                gate.wait(10)
        conn.sendall(b"0\r\n\r\n")
    return script


def _known_length(body: bytes, send: int | None = None) -> Script:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.sendall(body[:send])
        if send is not None:
            conn.shutdown(socket.SHUT_RDWR)
    return script


def _read_all(body: Download, piece: int) -> tuple[bytes, int]:
    """The whole body read ``piece`` bytes at a time, and how many reads that took."""
    out = bytearray()
    buf = memoryview(bytearray(piece))
    calls = 0
    while n := body.readinto(buf):
        out += buf[:n]
        calls += 1
    return bytes(out), calls


def test_many_chunks_are_received_a_buffer_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a Get-Batch reply is made of: chunks of a few KiB to 64 KiB. http.client receives
    # each chunk on its own (and each receive gives up and takes back the GIL); here a receive
    # takes whatever has arrived, up to a buffer.
    pieces = [bytes([i]) * 16 * 1024 for i in range(64)]
    receives = 0
    recv_into = socket.socket.recv_into

    def counted(self: socket.socket, *args: object) -> int:
        nonlocal receives
        receives += 1
        return recv_into(self, *args)  # type: ignore[arg-type]

    with _server(_chunked(pieces)) as server:
        body = _get(server.origin)
        time.sleep(0.1)  # sent as far as the sockets' buffers take it
        monkeypatch.setattr(socket.socket, "recv_into", counted)
        data, _ = _read_all(body, 256 * 1024)
        monkeypatch.undo()
        body.close(reuse=False)
    assert data == b"".join(pieces)
    assert receives <= 16


def test_a_read_hands_out_what_came_without_waiting_for_what_did_not() -> None:
    # The server sends a first part, then nothing until the reader has that part: a read that
    # waited for a full buffer would wait until the read timeout and fail.
    gate = threading.Event()
    pieces = [b"a" * 3000, b"b" * 5000]
    with _server(_chunked(pieces, pause_after=0, gate=gate)) as server:
        body = _get(server.origin, read_timeout=3.0)
        buf = memoryview(bytearray(64 * 1024))
        started = time.monotonic()
        first = body.readinto(buf)
        took = time.monotonic() - started
        gate.set()
        rest, _ = _read_all(body, 64 * 1024)
        body.close(reuse=False)
    assert first == 3000 and bytes(buf[:first]) == b"a" * 3000
    assert took < 1.0
    assert rest == b"b" * 5000


def test_a_known_length_body_read_in_pieces_keeps_its_connection() -> None:
    data = bytes(range(256)) * 1000
    with _server(_known_length(data), _known_length(b"second")) as server:
        conns = httpconn.Connections(2.0, 5.0, 4, None)
        lean = httpconn.LeanHttp(conns)
        body = Download(lean.request("GET", server.origin + "/b", server.origin, stream=True),
                        "ais://test/b")
        got, _ = _read_all(body, 7777)
        body.close()
        again = lean.request("GET", server.origin + "/c", server.origin)
    assert got == data
    assert again.content == b"second"
    assert server.connections == 1


def test_a_known_length_body_cut_short_fails() -> None:
    with _server(_known_length(b"z" * 100_000, send=40_000)) as server:
        body = _get(server.origin)
        with pytest.raises(errors.BodyCutShort):
            _read_all(body, 64 * 1024)
        body.close()


@pytest.mark.parametrize("framing", [b"zz\r\nabc\r\n", b"3\r\nabcXY"])
def test_a_chunked_body_with_broken_framing_fails(framing: bytes) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + framing
                     + b"0\r\n\r\n")
    with _server(script) as server:
        body = _get(server.origin)
        with pytest.raises(errors.BodyCutShort):
            _read_all(body, 1024)
        body.close(reuse=False)


def test_a_body_that_stops_coming_fails_at_the_read_timeout() -> None:
    gate = threading.Event()
    with _server(_chunked([b"x" * 100, b"y" * 100], pause_after=0, gate=gate)) as server:
        body = _get(server.origin, read_timeout=0.5)
        buf = memoryview(bytearray(1024))
        assert body.readinto(buf) == 100
        started = time.monotonic()
        with pytest.raises(errors.BodyCutShort):
            body.readinto(buf)
        took = time.monotonic() - started
        gate.set()
        body.close(reuse=False)
    assert 0.4 < took < 3.0

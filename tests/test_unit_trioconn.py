"""aisfs/trioconn.py against a scripted local HTTP server: connections kept alive and reused,
bodies into the caller's buffer, and every way an exchange can fail ending in ExchangeFailed with
the connection closed (never a wrong answer, never a hang)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

from aisfs.trioconn import ExchangeFailed, TrioConnections


def _answer(body: bytes, status: str = "206 Partial Content", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nAis-Version: 3\r\n{extra}"
            "\r\n").encode() + body


class ScriptedServer:
    """Answers the n-th request it receives with ``script[n]``: ("ok", raw answer), ("close",
    raw answer) (answer, then close the connection), ("drop",) (close without an answer),
    ("cut", raw answer, n) (send n bytes of it, close), ("stall",) (never answer)."""

    def __init__(self, script: list[tuple[object, ...]]) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                request, _, pending = pending.partition(b"\r\n\r\n")
                self.requests.append(request)
                step = self.script[len(self.requests) - 1]
                if step[0] == "ok":
                    conn.sendall(step[1])  # type: ignore[arg-type]
                elif step[0] == "close":
                    conn.sendall(step[1])  # type: ignore[arg-type]
                    return
                elif step[0] == "drop":
                    return
                elif step[0] == "cut":
                    conn.sendall(step[1][:step[2]])  # type: ignore[index, misc]
                    return
                elif step[0] == "stall":
                    self.stop.wait(10)
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@contextmanager
def server(script: list[tuple[object, ...]]) -> Iterator[ScriptedServer]:
    srv = ScriptedServer(script)
    try:
        yield srv
    finally:
        srv.close()


def get(conns: TrioConnections, port: int, into: memoryview | None,
        target: str = "/v1/objects/b/o?provider=ais") -> object:
    async def run() -> object:
        return await conns.request("GET", "127.0.0.1", port, target, "Range: bytes=0-9\r\n",
                                   None, into)
    return trio.run(run)


def conns(read_timeout: float = 5.0) -> TrioConnections:
    return TrioConnections(connect_timeout=2.0, read_timeout=read_timeout, per_origin=4)


def test_answers_land_in_the_buffer_and_the_connection_is_reused() -> None:
    body = bytes(range(256)) * 40
    with server([("ok", _answer(body)), ("ok", _answer(body[:10]))]) as srv:
        c = conns()
        buf = bytearray(len(body) + 100)
        first = get(c, srv.port, memoryview(buf))
        second_buf = bytearray(10)
        second = get(c, srv.port, memoryview(second_buf))
        assert first.status == 206 and first.length == len(body)  # type: ignore[attr-defined]
        assert first.body is None and buf[:len(body)] == body  # type: ignore[attr-defined]
        assert first.headers["ais-version"] == "3"  # type: ignore[attr-defined]
        assert second.body is None and second_buf == body[:10]  # type: ignore[attr-defined]
        assert srv.connections == 1
        assert srv.requests[0].startswith(b"GET /v1/objects/b/o?provider=ais HTTP/1.1\r\n")
        assert b"\r\nRange: bytes=0-9" in srv.requests[0]
        c.close()


def test_an_error_answer_is_returned_with_its_text_not_in_the_buffer() -> None:
    text = b'{"message":"object does not exist"}'
    with server([("ok", _answer(text, "404 Not Found"))]) as srv:
        buf = bytearray(100)
        answer = get(conns(), srv.port, memoryview(buf))
        assert answer.status == 404 and answer.body == text  # type: ignore[attr-defined]
        assert buf == bytearray(100)


def test_an_answer_larger_than_the_buffer_goes_elsewhere() -> None:
    body = b"x" * 50
    with server([("ok", _answer(body, "200 OK"))]) as srv:
        answer = get(conns(), srv.port, memoryview(bytearray(10)))
        assert answer.body == body  # type: ignore[attr-defined]


def test_a_connection_closed_by_the_server_is_not_reused() -> None:
    with server([("close", _answer(b"a" * 10)), ("ok", _answer(b"b" * 10))]) as srv:
        c = conns()
        get(c, srv.port, memoryview(bytearray(10)))
        time.sleep(0.1)  # the close has arrived: the idle connection is readable
        buf = bytearray(10)
        get(c, srv.port, memoryview(buf))
        assert buf == b"b" * 10 and srv.connections == 2


def test_connection_close_header_is_honoured() -> None:
    with server([("ok", _answer(b"a" * 10, extra="Connection: close\r\n")),
                 ("ok", _answer(b"b" * 10))]) as srv:
        c = conns()
        get(c, srv.port, memoryview(bytearray(10)))
        get(c, srv.port, memoryview(bytearray(10)))
        assert srv.connections == 2


def test_a_kept_alive_connection_dropped_at_the_request_is_retried_once_on_a_new_one() -> None:
    with server([("ok", _answer(b"a" * 10)), ("drop",), ("ok", _answer(b"c" * 10))]) as srv:
        c = conns()
        get(c, srv.port, memoryview(bytearray(10)))
        buf = bytearray(10)
        get(c, srv.port, memoryview(buf))
        assert buf == b"c" * 10 and len(srv.requests) == 3 and srv.connections == 2


def test_a_new_connection_dropped_at_the_request_fails() -> None:
    with server([("drop",), ("ok", _answer(b"c" * 10))]) as srv:
        with pytest.raises(ExchangeFailed, match="closed before the answer"):
            get(conns(), srv.port, memoryview(bytearray(10)))
        assert len(srv.requests) == 1


@pytest.mark.parametrize("cut", [5, 40, 80])  # in the status line, in the headers, in the body
def test_an_answer_cut_short_fails_and_is_never_served(cut: int) -> None:
    raw = _answer(b"z" * 100)
    with server([("cut", raw, cut)]) as srv:
        c = conns()
        with pytest.raises(ExchangeFailed):
            get(c, srv.port, memoryview(bytearray(100)))
        assert not c._idle.get(("127.0.0.1", srv.port))


def test_an_answer_without_content_length_fails() -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    with server([("ok", raw)]) as srv:
        with pytest.raises(ExchangeFailed, match="Content-Length"):
            get(conns(), srv.port, memoryview(bytearray(100)))


def test_a_stalled_answer_times_out() -> None:
    with server([("stall",)]) as srv:
        started = time.monotonic()
        with pytest.raises(ExchangeFailed, match="TooSlowError"):
            get(conns(read_timeout=0.3), srv.port, memoryview(bytearray(10)))
        assert time.monotonic() - started < 3


def test_a_refused_connection_fails_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(ExchangeFailed, match="connect"):
        get(conns(), port, memoryview(bytearray(10)))


def test_a_cancelled_exchange_closes_its_connection() -> None:
    with server([("stall",)]) as srv:
        c = conns()

        async def run() -> None:
            with trio.move_on_after(0.2):
                await c.request("GET", "127.0.0.1", srv.port, "/x", "", None,
                                memoryview(bytearray(10)))

        trio.run(run)
        assert not c._idle.get(("127.0.0.1", srv.port))

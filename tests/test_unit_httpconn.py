"""Unit tests of aisfs.httpconn: kept-alive connections and requests-compatible answers, against
small HTTP servers on loopback (threads of this process)."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from aisfs import httpconn
from aisfs.transport import _connect_failed


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, close_after_each: bool = False, redirect_to: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.close_after_each = close_after_each
        self.redirect_to = redirect_to
        self.drop = False  # close each connection on its next request, answering nothing

    def get_request(self) -> tuple[socket.socket, object]:
        self.connections += 1
        return super().get_request()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, body: bytes) -> None:
        srv = self.server
        if srv.drop:
            self.close_connection = True
            return
        srv.requests.append((self.command, self.path, self.headers.get("Authorization")))
        if srv.redirect_to:
            self.send_response(307)
            self.send_header("Location", srv.redirect_to + self.path)
            text = b'<a href="elsewhere">Temporary Redirect</a>.\n'
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(text)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Many", "a")
        self.send_header("X-Many", "b")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        # A keep-alive timeout on the server's side: closed without a word to the client.
        self.close_connection = srv.close_after_each

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(b"x" * 100_000)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(b"x" * 100_000)

    def do_PUT(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(n))


@contextmanager
def serving(**kwargs: object) -> Iterator[_Server]:
    srv = _Server(**kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def lean() -> httpconn.LeanHttp:
    return httpconn.LeanHttp(httpconn.Connections(2.0, 5.0, 4, None))


def test_a_connection_read_to_its_end_serves_the_next_requests() -> None:
    http_ = lean()
    with serving() as srv:
        for _ in range(5):
            resp = http_.request("GET", srv.origin + "/o", srv.origin)
            assert resp.status_code == 200 and len(resp.content) == 100_000
        put = http_.request("PUT", srv.origin + "/p", srv.origin, data=b"abc")
        assert put.content == b"abc"
    assert srv.connections == 1


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    http_ = lean()
    with serving(close_after_each=True) as srv:
        for _ in range(3):
            resp = http_.request("PUT", srv.origin + "/p", srv.origin, data=b"body")
            assert resp.content == b"body"
            time.sleep(0.2)  # idle: the server's close arrives
    assert srv.connections == 3  # each request on a fresh connection, none failed


def test_a_download_not_read_to_its_end_closes_its_connection() -> None:
    http_ = lean()
    with serving() as srv:
        resp = http_.request("GET", srv.origin + "/o", srv.origin, stream=True)
        assert resp.raw.read(10) == b"x" * 10
        resp.close()
        resp = http_.request("GET", srv.origin + "/o", srv.origin, stream=True)
        assert len(resp.raw.read()) == 100_000
        resp.close()
        http_.request("GET", srv.origin + "/o", srv.origin)
    assert srv.connections == 2  # the half-read one was closed; the whole-read one came back


def test_answers_look_like_requests_answers() -> None:
    http_ = lean()
    with serving() as srv:
        resp = http_.request("HEAD", srv.origin + "/o", srv.origin, params={"a": "b c"})
        assert resp.status_code == 200 and resp.content == b""
        assert resp.headers["content-length"] == "100000"
        assert resp.headers["X-Many"] == "a, b"
        assert resp.raw.headers.getlist("X-Many") == ["a", "b"]
        assert srv.requests[-1][1] == "/o?a=b+c"
        # The bodiless answer gave its connection back at once.
        http_.request("GET", srv.origin + "/o", srv.origin)
    assert srv.connections == 1


def test_redirects_are_followed_with_the_token_and_recorded() -> None:
    http_ = lean()
    with serving() as target, serving(redirect_to=target.origin) as proxy:
        hdrs = {"Authorization": "Bearer T"}
        resp = http_.request("HEAD", proxy.origin + "/v1/objects/b/k", proxy.origin,
                             headers=hdrs)
        assert resp.status_code == 200
        assert resp.url == target.origin + "/v1/objects/b/k"
        assert [r.status_code for r in resp.history] == [307]
        assert target.requests == [("HEAD", "/v1/objects/b/k", "Bearer T")]
        for _ in range(3):  # as the transport does: Location taken, the answer closed unread
            unfollowed = http_.request("GET", proxy.origin + "/o", proxy.origin,
                                       allow_redirects=False, stream=True)
            assert unfollowed.status_code == 307 and unfollowed.history == []
            unfollowed.close()
    # A redirect's short text is read when its answer is closed: the connection serves again.
    assert proxy.connections == 1 and target.connections == 1


def test_a_refused_connection_is_never_sent() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        origin = f"http://127.0.0.1:{port}"
        with pytest.raises(requests.ConnectionError) as info:
            lean().request("PUT", origin + "/p", origin, data=b"x")
    assert _connect_failed(info.value)


def test_requests_on_kept_connections_that_the_server_drops_fail_as_connection_errors() -> None:
    http_ = lean()
    with serving() as srv:
        held = [http_.request("GET", srv.origin + "/o", srv.origin, stream=True)
                for _ in range(2)]
        for resp in held:
            assert len(resp.raw.read()) == 100_000  # both connections back, idle
        srv.drop = True
        with pytest.raises(requests.ConnectionError):
            http_.request("GET", srv.origin + "/o", srv.origin)

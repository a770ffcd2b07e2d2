"""Kept-alive HTTP/1.1 connections to AIS's nodes, one request at a time each, without a general
HTTP library's per-request machinery: the transport's path for plain requests (part of the
transport: with ``transport.py`` and ``httpreply.py`` the only modules that import ``requests``).

Why: a small object's GET through ``requests`` costs ~0.6-0.9 ms of Python CPU per exchange
(session settings merged, cookies parsed, hooks, urllib3's pool and retry objects), several times
what AIS needs to serve a 64 KiB object, and a small file pays it for every request. A request
here is ``http.client``'s own work only (~0.2 ms). TLS, timeouts and connection reuse hold as in
the ``requests`` path; what needs more (proxies from the environment, streamed or iterated request
bodies) stays on that path (see ``transport.py``).

:class:`Connections` keeps idle connections per origin (``scheme://host:port``), newest first,
at most ``per_origin`` each. A connection is taken for one exchange and given back only when its
answer was read to the end; an idle connection the server has closed meanwhile is noticed before
reuse (it is readable) and dropped.

Concurrency: any number of worker threads at once; one lock guards the idle lists, a connection
belongs to one thread from ``take`` to ``give``/``discard``. No trio, no shared per-request state.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import os
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

import requests
import requests.structures

# http.client's socket reads and writes go through this much at a time.
BLOCK_SIZE = 256 * 1024
REDIRECTS = (301, 302, 307, 308)
MAX_REDIRECTS = 5
# An answer closed with at most this much body unread is read to its end to keep its connection.
DRAIN_MAX = 16 * 1024


class Connections:
    """Invariant: every connection in ``_idle[origin]`` is connected to ``origin``, has no
    request in flight and no unread answer, and is in no other list; each list holds at most
    ``per_origin`` connections."""

    def __init__(self, connect_timeout: float, read_timeout: float, per_origin: int,
                 ssl_context: ssl.SSLContext | None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.per_origin = per_origin
        self.ssl_context = ssl_context
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()

    def take(self, origin: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``origin`` and whether it was used before (a reused one may turn out
        to be closed by the server only when the request is sent)."""
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if _usable(conn):
                    return conn, True
                conn.close()
        return self._new(origin), False

    def give(self, origin: str, conn: http.client.HTTPConnection) -> None:
        """``conn``'s last answer was read to its end: keep it for the next request."""
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self.per_origin:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _new(self, origin: str) -> http.client.HTTPConnection:
        scheme, _, netloc = origin.partition("://")
        host, _, port = netloc.rpartition(":")
        host = host.strip("[]")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(
                host, int(port or 443), timeout=self.connect_timeout, context=self.ssl_context,
                blocksize=BLOCK_SIZE,
            )
        else:
            conn = http.client.HTTPConnection(host, int(port or 80),
                                              timeout=self.connect_timeout, blocksize=BLOCK_SIZE)
        return conn

    def connect(self, conn: http.client.HTTPConnection) -> None:
        """Open ``conn``'s socket (connect timeout), then switch it to the read timeout."""
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(self.read_timeout)


class LeanHttp:
    """Requests on :class:`Connections`, answered as ``requests`` would answer them: the same
    response type, exceptions and redirects, so the transport treats both paths alike.
    Stateless beyond its connections."""

    def __init__(self, conns: Connections) -> None:
        self.conns = conns

    def request(
        self, method: str, url: str, origin: str, *, params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None, data: bytes | bytearray | memoryview | None = None,
        json: Any = None, stream: bool = False, allow_redirects: bool = True,
    ) -> requests.Response:
        """``_http`` on a kept-alive connection of ``httpconn`` (see there why), answered as
        ``requests`` would: the same response type, exceptions and redirects."""
        hdrs = {"User-Agent": "aisfs", **(headers or {})}
        if json is not None:
            # (as requests encodes it: the same bytes on the wire, whichever path sends them)
            data = jsonlib.dumps(json, allow_nan=False).encode()
            hdrs["Content-Type"] = "application/json"
        if params:
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
        history: list[requests.Response] = []
        while True:
            resp = self._once(method, url, origin, hdrs, data)
            location = resp.headers.get("Location")
            if not (allow_redirects and resp.status_code in REDIRECTS and location
                    and len(history) < MAX_REDIRECTS):
                break
            resp.close()  # (reads nothing more: a redirect's body is empty or unread)
            history.append(resp)
            url = urllib.parse.urljoin(url, location)
            origin = url[:url.find("/", url.find("//") + 2)]
        resp.history = history
        if not stream:
            resp.content  # noqa: B018 - read now, as requests does, so the connection is free
        return resp

    def _once(self, method: str, url: str, origin: str, headers: dict[str, str],
                   data: bytes | bytearray | memoryview | None) -> requests.Response:
        target = url[len(origin):] or "/"
        for first in (True, False):
            conn, reused = self.conns.take(origin)
            try:
                if conn.sock is None:
                    self.conns.connect(conn)
            except TimeoutError as exc:
                raise requests.ConnectTimeout(f"{origin}: {exc}") from exc
            except ssl.SSLError as exc:
                raise requests.exceptions.SSLError(f"{origin}: {exc}") from exc
            except OSError as exc:
                raise NotConnected(f"{origin}: {exc}") from exc
            try:
                answer = send(conn, method, target, headers, data)
            except (ConnectionError, http.client.HTTPException) as exc:
                conn.close()
                # A kept-alive connection the server closed just now: the request never got an
                # answer; an idempotent one goes again on a new connection.
                if first and reused and method in ("GET", "HEAD"):
                    continue
                raise requests.ConnectionError(f"{origin}: {exc}") from exc
            except TimeoutError as exc:
                conn.close()
                raise requests.ReadTimeout(f"{origin}: {exc}") from exc
            except OSError as exc:
                conn.close()
                raise requests.ConnectionError(f"{origin}: {exc}") from exc
            break
        return _lean_response(answer, _Raw(answer, conn, origin, self.conns), url)


class NotConnected(requests.ConnectionError):
    """The lean path could not connect: the request was never sent."""


class _Raw:
    """What ``requests.Response.raw`` is to the transport, for an ``httpconn`` answer: the
    connection goes back to the idle list once the body was read to its end, and is closed
    otherwise."""

    def __init__(self, answer: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 origin: str, conns: Connections) -> None:
        self._fp = answer  # read_body_into receives straight from it, as under urllib3
        self.headers = _HeaderList(answer.msg)
        self._conn: http.client.HTTPConnection | None = conn
        self._origin = origin
        self._conns = conns

    def read(self, amt: int | None = None, decode_content: bool = False) -> bytes:
        data = self._fp.read(amt)
        if self._fp.isclosed():
            self.release_conn()
        return data

    def release_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._fp.isclosed():
                self._conns.give(self._origin, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Done with the answer: a short unread rest (a redirect's or an error's text) is read
        so that the connection serves the next request; anything longer closes it."""
        rest = self._fp.length
        if self._conn is not None and rest is not None and rest <= DRAIN_MAX:
            try:
                self._fp.read()
            except (OSError, http.client.HTTPException):
                pass
        if self._fp.isclosed():
            self.release_conn()
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _HeaderList:
    def __init__(self, msg: http.client.HTTPMessage) -> None:
        self._msg = msg

    def getlist(self, name: str) -> list[str]:
        return self._msg.get_all(name) or []


def _lean_response(answer: http.client.HTTPResponse, raw: _Raw, url: str
                   ) -> requests.Response:
    resp = requests.Response()
    resp.status_code = answer.status
    resp.reason = answer.reason
    headers: requests.structures.CaseInsensitiveDict[str] = (
        requests.structures.CaseInsensitiveDict())
    for name, value in answer.getheaders():
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    resp.headers = headers
    resp.raw = raw
    resp.url = url
    resp.encoding = requests.utils.get_encoding_from_headers(headers)
    if answer.isclosed():  # no body (HEAD, 204, a bodiless redirect)
        raw.release_conn()
    return resp


def ssl_context(verify: bool | str, cert: tuple[str, str] | str | None) -> ssl.SSLContext:
    """The TLS settings of the ``requests`` path: ``verify`` False (no check), True (the
    system's CAs) or a CA bundle file or directory; ``cert`` a client certificate (and key)."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        if os.path.isdir(verify):
            context = ssl.create_default_context(capath=verify)
        else:
            context = ssl.create_default_context(cafile=verify)
    else:
        context = ssl.create_default_context()
    if cert:
        certfile, keyfile = cert if isinstance(cert, tuple) else (cert, None)
        context.load_cert_chain(certfile, keyfile)
    return context


def send(conn: http.client.HTTPConnection, method: str, target: str,
         headers: Mapping[str, str], body: bytes | bytearray | memoryview | None
         ) -> http.client.HTTPResponse:
    """One request on ``conn`` (already connected) and its answer's status and headers."""
    conn.putrequest(method, target, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    if body is not None or method in ("PUT", "POST"):
        conn.putheader("Content-Length", str(len(body) if body is not None else 0))
    # Headers and a small body leave in one segment (http.client sends a body over 2 KiB after
    # the headers, in a second write).
    conn.endheaders(body if body else None)
    return conn.getresponse()


def _usable(conn: http.client.HTTPConnection) -> bool:
    """An idle connection is readable only when the server closed it (or broke HTTP)."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable

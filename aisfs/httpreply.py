"""The answers of the HTTP transport (part of it: with ``transport.py`` and ``httpconn.py`` the
only modules that import ``requests`` and ``urllib3``): a whole answer (:class:`Reply`), an answer
whose body is still to be received (:class:`Download`, received straight into the caller's buffer
by :func:`read_body_into`, with ``bodyrecv``'s one-system-call receive), and the mapping of an
error answer (AIS's error JSON in the body, or ``Hdr-Error`` on HEAD) to a typed
:mod:`aisfs.errors` exception (:func:`raise_for`).

Concurrency: a ``Reply`` is a value that is not changed after it is made, safe from any thread;
a ``Download`` holds one connection and is used by one worker thread at a time (an archive
stream's may pass from one worker thread to the next, never to two at once). The functions keep
no state.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import urllib3

from . import errors
from .bodyrecv import PiecewiseBody, recv_whole_body
from .objects import RecvBuffer


class Reply:
    """A whole answer: status, headers (case-insensitive), body."""

    __slots__ = ("status", "headers", "body", "_raw_headers")

    def __init__(self, resp: requests.Response) -> None:
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers
        self.body = resp.content
        self._raw_headers = getattr(resp.raw, "headers", None)

    def header_values(self, name: str) -> list[str]:
        """Every value of a header the server repeated (``headers`` joins them with ", ")."""
        return list(self._raw_headers.getlist(name)) if self._raw_headers is not None else []

    def json(self) -> Any:
        return json.loads(self.body)


class Download:
    """An answer whose body is still to be received; ``close()`` (or the ``with`` block's end)
    gives the connection back to the pool when the body was read to its end. Failures while
    receiving (a body that ends before its length among them) raise ``BodyCutShort``."""

    def __init__(self, resp: requests.Response, what: str) -> None:
        self._resp = resp
        self._what = what
        self._closed = False
        self._piecewise: Any = None  # what readinto reads from, once it was called
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    def __enter__(self) -> Download:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_into(self, buf: RecvBuffer, length: int) -> int:
        """Receive up to ``length`` body bytes into ``buf``; the count received."""
        with self._reading():
            return read_body_into(self._resp, buf, length)

    def read_all(self) -> bytes:
        with self._reading():
            data: bytes = self._resp.raw.read(decode_content=False)
            return data

    def readinto(self, buf: memoryview, /) -> int:
        """Body bytes into ``buf``, at least one (0 at the end): a reply read piece by piece (a
        Get-Batch stream, an archive read in archive order). On plain TCP from a buffer filled
        a 256 KiB receive at a time (``bodyrecv.PiecewiseBody``), else ``http.client``'s read
        (which undoes a chunked encoding)."""
        with self._reading():
            if self._piecewise is None:
                fp = getattr(self._resp.raw, "_fp", None)
                self._piecewise = (PiecewiseBody.of(fp) or fp) if fp is not None else (
                    self._resp.raw)
            n: int = self._piecewise.readinto(buf)
            return n

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except (requests.RequestException, urllib3.exceptions.HTTPError,
                http.client.HTTPException, OSError) as exc:
            self._resp.close()
            self._closed = True
            raise errors.BodyCutShort(f"reading body failed: {brief(exc)}", 0,
                                      self._what) from None

    def close(self, *, reuse: bool = True) -> None:
        """Done with the answer; ``reuse=False`` closes its connection even if the body was
        read to its end."""
        if self._closed:
            return
        self._closed = True
        body = getattr(self._resp.raw, "_fp", None)  # http.client's response
        if reuse and body is not None and body.isclosed():
            # The body was read past urllib3 (straight into our buffer) but to its end: the
            # connection is clean, give it back to the pool instead of closing it.
            self._resp.raw.release_conn()
        else:
            self._resp.close()


def raise_for(resp: requests.Response, what: str) -> None:
    """Raise the :mod:`aisfs.errors` exception for an error answer (status >= 400)."""
    if resp.status_code < 400:
        return
    text = resp.headers.get("Hdr-Error") or ""
    if not text:
        try:
            text = resp.text
        except Exception:  # noqa: BLE001 - a broken error body must not hide the status
            text = ""
    message, tcode = text.strip(), ""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            message = str(doc.get("message") or message)
            tcode = str(doc.get("tcode") or "")
    except ValueError:
        pass
    if not message:
        message = resp.reason or "request failed"
    raise errors.error_for_status(resp.status_code, message, what, tcode)


def read_body_into(resp: requests.Response, buf: RecvBuffer | memoryview, length: int) -> int:
    """Read up to ``length`` body bytes straight from the socket into ``buf`` (one copy); fewer
    only when the body is shorter. A body that ends before its ``Content-Length`` (the
    connection closed early) raises ``ConnectionError``: http.client's ``readinto`` returns
    the short count without an error."""
    view = memoryview(buf)[:length]
    fp = getattr(resp.raw, "_fp", None)  # http.client.HTTPResponse under urllib3
    try:
        got = recv_whole_body(fp, view) if fp is not None else 0
        readinto = fp.readinto if fp is not None else resp.raw.readinto
        while got < length:
            n = readinto(view[got:])
            if not n:
                break
            got += n
        if got < length and fp is not None and fp.length:
            raise ConnectionError(f"connection closed after {got} body bytes, {fp.length} "
                                  "before the end of the body")
        if got == length and fp is not None and not fp.isclosed():
            # A chunked body still has its terminator unread: reading it ends the body, which
            # hands the connection back to the pool (a known-length body did that already).
            fp.readinto(bytearray(1))
    finally:
        view.release()
    return got


def brief(exc: BaseException) -> str:
    """An exception's text for a log line or an error, cut at 200 characters."""
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."

"""aisfs/client.py and the transport under it (transport.py, routing.py) against the real local AIS
cluster (and tiny local servers for failures)."""

from __future__ import annotations

import contextlib
import errno
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aisfs import errors
from aisfs.client import AisClient
from aisfs.config import ClientConfig
from aisfs.objects import MTIME_KEY, parse_rfc3339_ns

from .util import RecordingObserver, unique


@pytest.fixture
def client(ais_endpoint: str) -> Iterator[AisClient]:
    c = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, retry_backoff=0.05))
    yield c
    c.close()


@pytest.fixture
def proxy_client(ais_endpoint: str) -> Iterator[AisClient]:
    """A client that routes object requests through the proxy (--via-proxy): it learns
    targets from the proxy's redirects."""
    c = AisClient(ClientConfig(endpoint=ais_endpoint, retries=1, retry_backoff=0.05,
                               via_proxy=True))
    yield c
    c.close()


def sdk_read(bucket, key: str) -> bytes:  # type: ignore[no-untyped-def]
    data: bytes = bucket.object(key).get_reader().read_all()
    return data


# ---------------------------------------------------------------------- buckets


def test_list_buckets(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b1 = make_bucket()
    b2 = make_bucket()
    names = client.list_buckets()
    assert b1.name in names and b2.name in names
    assert names == sorted(names)


def test_head_bucket(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    client.head_bucket(b.name)  # no exception: the bucket exists
    missing = unique("nob")
    with pytest.raises(errors.BucketNotFound) as info:
        client.head_bucket(missing)
    assert info.value.status == 404
    assert info.value.errno == errno.ENOENT
    assert missing in str(info.value)


def test_create_and_destroy_bucket(client: AisClient, sdk) -> None:  # type: ignore[no-untyped-def]
    name = unique("cb")
    client.create_bucket(name)
    try:
        client.head_bucket(name)
        with pytest.raises(errors.Conflict):
            client.create_bucket(name)
    finally:
        client.destroy_bucket(name)
    with pytest.raises(errors.BucketNotFound):
        client.head_bucket(name)


# ---------------------------------------------------------------------- listing

TREE = {"a": b"1", "b/c": b"22", "b/d": b"333", "e": b"", "f/g/h": b"4444", "i": b"55555"}


def test_list_objects_paging_non_recursive(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket(TREE)
    seen: list[str] = []
    pages = 0
    uuid = token = ""
    while True:
        page = client.list_objects_page(b.name, "", page_size=2, uuid=uuid,
                                        continuation_token=token)
        pages += 1
        assert len(page.entries) <= 2
        seen.extend(e.name for e in page.entries)
        assert pages < 20
        if not page.continuation_token:
            break
        assert page.uuid
        uuid, token = page.uuid, page.continuation_token
    assert seen == ["a", "b/", "e", "f/", "i"]
    assert pages >= 3


def test_list_objects_paging_recursive(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket(TREE)
    names = [e.name for e in client.iter_objects(b.name, "", recursive=True, page_size=2)]
    assert names == sorted(TREE)
    assert len(names) == len(set(names))


def test_list_entries_attributes(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket(TREE)
    page = client.list_objects_page(b.name, "")
    assert page.continuation_token == ""
    by_name = {e.name: e for e in page.entries}
    assert sorted(by_name) == ["a", "b/", "e", "f/", "i"]
    assert by_name["b/"].is_dir and by_name["f/"].is_dir
    assert not by_name["a"].is_dir
    assert by_name["a"].size == 1 and by_name["i"].size == 5
    assert by_name["e"].size == 0
    assert by_name["a"].version == "1"
    now = time.time_ns()
    assert abs(by_name["a"].mtime_ns - now) < 600 * 10**9
    # The listed time (TIME_FORMAT, parsed inline) is exactly the access time HEAD reports.
    assert by_name["a"].mtime_ns == client.head_object(b.name, "a").atime_ns
    sub = client.list_objects_page(b.name, "b/")
    assert [(e.name, e.is_dir, e.size) for e in sub.entries] == [("b/c", False, 2),
                                                                  ("b/d", False, 3)]
    nested = client.list_objects_page(b.name, "f/")
    assert [(e.name, e.is_dir) for e in nested.entries] == [("f/g/", True)]


def test_list_empty_prefix_and_bucket(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    assert client.list_objects_page(b.name, "").entries == []
    b2 = make_bucket({"x": b"1"})
    assert client.list_objects_page(b2.name, "nothing/").entries == []
    with pytest.raises(errors.BucketNotFound):
        client.list_objects_page(unique("nob"), "")


# ---------------------------------------------------------------------- HEAD


def test_head_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"empty": b"", "seven": b"7777777"})
    empty = client.head_object(b.name, "empty")
    assert empty.size == 0 and empty.name == "empty"
    assert empty.version == "1"
    assert abs(empty.mtime_ns - time.time_ns()) < 600 * 10**9
    seven = client.head_object(b.name, "seven")
    assert seven.size == 7 and seven.checksum
    assert seven.custom == {}


def test_head_missing_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"x": b"1"})
    with pytest.raises(errors.NotFound) as info:
        client.head_object(b.name, "nosuch")
    exc = info.value
    assert not isinstance(exc, errors.BucketNotFound)
    assert exc.status == 404
    assert "does not exist" in str(exc)  # AIS's own text from Hdr-Error
    assert f"ais://{b.name}/nosuch" in str(exc)
    with pytest.raises(errors.BucketNotFound):
        client.head_object(unique("nob"), "x")


def test_head_prefix_is_not_found(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"d/x": b"1"})
    with pytest.raises(errors.NotFound):
        client.head_object(b.name, "d/")


def test_odd_names(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    names = ["sp ace", "q?mark", "pct%41", "hash#x", "uni-é✓", "back\\slash"]
    b = make_bucket({n: n.encode() for n in names})
    for n in names:
        assert client.head_object(b.name, n).size == len(n.encode()), n
        assert bytes(client.get_range(b.name, n, 0, 100).data) == n.encode(), n
    listed = sorted(e.name for e in client.list_objects_page(b.name, "").entries)
    assert listed == sorted(names)


# ---------------------------------------------------------------------- GET


def test_get_range(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(100_000)
    b = make_bucket({"obj": data})
    r = client.get_range(b.name, "obj", 0, 100_000)
    assert bytes(r.data) == data
    assert r.total_size == 100_000
    assert r.version == "1"
    r = client.get_range(b.name, "obj", 12_345, 1000)
    assert bytes(r.data) == data[12_345:13_345] and r.total_size == 100_000
    r = client.get_range(b.name, "obj", 99_990, 1000)  # clamped at EOF
    assert bytes(r.data) == data[99_990:]
    r = client.get_range(b.name, "obj", 99_999, 1)
    assert bytes(r.data) == data[-1:]
    for start in (100_000, 200_000):
        with pytest.raises(errors.RangeNotSatisfiable) as info:
            client.get_range(b.name, "obj", start, 10)
        assert info.value.status == 416


def test_get_range_zero_byte_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"empty": b""})
    with pytest.raises(errors.RangeNotSatisfiable):
        client.get_range(b.name, "empty", 0, 10)


def test_get_range_missing(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"x": b"1"})
    with pytest.raises(errors.NotFound):
        client.get_range(b.name, "nosuch", 0, 10)


def test_get_range_into_buffer(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(300_000)
    b = make_bucket({"obj": data})
    buf = bytearray(b"\xee" * 400_000)
    r = client.get_range(b.name, "obj", 1000, 200_000, into=buf)
    assert r.data.obj is buf  # the body landed in the given buffer
    assert len(r.data) == 200_000
    assert bytes(r.data) == data[1000:201_000]
    assert buf[200_000:] == b"\xee" * 200_000  # nothing written past the length
    # Reuse of the same buffer (and of the cached redirect) for another part.
    r2 = client.get_range(b.name, "obj", 250_000, 200_000, into=buf)
    assert bytes(r2.data) == data[250_000:]


def test_get_range_repeated_uses_cached_location(proxy_client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    client = proxy_client
    data = os.urandom(50_000)
    b = make_bucket({"obj": data})
    for start in range(0, 50_000, 10_000):
        assert bytes(client.get_range(b.name, "obj", start, 10_000).data) == (
            data[start : start + 10_000]
        )
    assert len(client.transport.router.reads) >= 1
    # After the object is replaced, the cached target still answers with the new bytes.
    b.object("obj").get_writer().put_content(b"new content")
    r = client.get_range(b.name, "obj", 0, 100)
    assert bytes(r.data) == b"new content" and r.version == "2"


def test_get_after_head_goes_straight_to_the_target(  # type: ignore[no-untyped-def]
    proxy_client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = proxy_client
    b = make_bucket({"obj": b"0123456789"})
    proxy = client._base
    hosts: list[str] = []
    real_http = client.transport._http

    def spy(method: str, url: str, **kw: Any) -> Any:
        hosts.append(f"{method} {'proxy' if url.startswith(proxy) else 'target'}")
        return real_http(method, url, **kw)

    monkeypatch.setattr(client.transport, "_http", spy)
    assert client.head_object(b.name, "obj").size == 10
    assert bytes(client.get_range(b.name, "obj", 2, 3).data) == b"234"
    assert hosts == ["HEAD proxy", "GET target"]  # the HEAD's redirect was followed by requests
    # A remembered target that no longer has the object (moved by a rebalance, say) is not the
    # last word: the proxy is asked where it is now.
    url = client.object_url(b.name, "obj")
    reads = client.transport.router.reads
    reads[url] = reads[url].replace("/obj?", "/obj-elsewhere?")
    hosts.clear()
    assert bytes(client.get_range(b.name, "obj", 0, 2).data) == b"01"
    assert hosts == ["GET target", "GET proxy", "GET target"]


# ---------------------------------------------------------------------- writes


def test_put_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    data = os.urandom(3 * 1024 * 1024 + 5)
    props = client.put_object(b.name, "dir/p", data)
    assert props.size == len(data) and props.name == "dir/p"
    assert sdk_read(b, "dir/p") == data
    client.put_object(b.name, "dir/p", memoryview(b"short"))
    assert sdk_read(b, "dir/p") == b"short"
    assert client.head_object(b.name, "dir/p").version == "2"
    client.put_object(b.name, "empty", b"")
    assert client.head_object(b.name, "empty").size == 0


def test_put_with_custom(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    value = "v,1 x=y é".encode()
    client.put_object(b.name, "c", b"x", custom={"k1": value})
    assert client.head_object(b.name, "c").custom == {"k1": value}
    # An overwriting PUT keeps the custom metadata (and a new key merges in).
    client.put_object(b.name, "c", b"yy", custom={"k2": b"2"})
    props = client.head_object(b.name, "c")
    assert props.size == 2 and props.custom == {"k1": value, "k2": b"2"}


def test_append_and_flush(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    h1 = client.append(b.name, "ap", "", b"hello ")
    assert h1
    h2 = client.append(b.name, "ap", h1, b"world")
    assert h2
    with pytest.raises(errors.NotFound):  # invisible before the flush
        client.head_object(b.name, "ap")
    assert "ap" not in [e.name for e in client.list_objects_page(b.name, "").entries]
    client.flush(b.name, "ap", h2)
    props = client.head_object(b.name, "ap")
    assert props.size == 11
    assert sdk_read(b, "ap") == b"hello world"
    assert bytes(client.get_range(b.name, "ap", 0, 100).data) == b"hello world"


def test_append_session_goes_straight_to_its_target(  # type: ignore[no-untyped-def]
    proxy_client: AisClient, make_bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first APPEND asks the proxy; the rest and the FLUSH go to the session's target.
    A target that refuses the direct request (400: no redirect marker) means: ask the proxy."""
    client = proxy_client
    b = make_bucket()
    proxy = client._base
    hosts: list[str] = []
    real_http = client.transport._http

    def spy(method: str, url: str, **kw: Any) -> Any:
        hosts.append("proxy" if url.startswith(proxy) else "target")
        return real_http(method, url, **kw)

    monkeypatch.setattr(client.transport, "_http", spy)
    h = ""
    for part in (b"one ", b"two ", b"three"):
        h = client.append(b.name, "s", h, part)
    client.flush(b.name, "s", h)
    assert hosts == ["proxy", "target", "target", "target", "target"]
    assert client.transport.router.sessions == {}  # forgotten with the FLUSH
    assert sdk_read(b, "s") == b"one two three"

    hosts.clear()
    h = client.append(b.name, "t", "", b"a")
    url = client.object_url(b.name, "t")
    sessions = client.transport.router.sessions
    sessions[url] = sessions[url].split("?")[0]  # marker lost
    h = client.append(b.name, "t", h, b"b")
    client.flush(b.name, "t", h)
    assert hosts == ["proxy", "target", "target", "proxy", "target", "target"]
    assert sdk_read(b, "t") == b"ab"


def test_flush_with_empty_handle_is_invalid(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket()
    with pytest.raises(errors.InvalidRequest) as info:
        client.flush(b.name, "nothing", "")
    assert info.value.status == 400


def test_delete_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"d": b"1", "keep": b"2"})
    client.delete_object(b.name, "d")
    with pytest.raises(errors.NotFound):
        client.head_object(b.name, "d")
    with pytest.raises(errors.NotFound):
        client.delete_object(b.name, "d")
    assert client.head_object(b.name, "keep").size == 1


def test_rename_object(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"r1": b"content", "other": b"x"})
    client.set_custom(b.name, "r1", {"k": b"v"})
    client.rename_object(b.name, "r1", "sub/r2")
    with pytest.raises(errors.NotFound):
        client.head_object(b.name, "r1")
    props = client.head_object(b.name, "sub/r2")
    assert sdk_read(b, "sub/r2") == b"content"
    assert props.custom.get("k") == b"v"
    with pytest.raises(errors.NotFound):
        client.rename_object(b.name, "r1", "r3")


def test_set_custom_merge_and_replace(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"m": b"data"})
    client.set_custom(b.name, "m", {"a": b"1", "b": b"two words"})
    assert client.head_object(b.name, "m").custom == {"a": b"1", "b": b"two words"}
    client.set_custom(b.name, "m", {"c": b"3", "a": b"one"})
    assert client.head_object(b.name, "m").custom == {"a": b"one", "b": b"two words", "c": b"3"}
    client.set_custom(b.name, "m", {"z": b"9"}, replace=True)
    props = client.head_object(b.name, "m")
    assert props.custom == {"z": b"9"}
    assert props.version == "1"  # PATCH does not bump the version
    assert sdk_read(b, "m") == b"data"
    assert b.object("m").props.custom_metadata == {"z": "9"}


def test_mtime_from_custom_metadata(client: AisClient, make_bucket) -> None:  # type: ignore[no-untyped-def]
    b = make_bucket({"t": b"x"})
    mtime = 1_600_000_000_123_456_789
    client.set_custom(b.name, "t", {MTIME_KEY: str(mtime).encode()})
    assert client.head_object(b.name, "t").mtime_ns == mtime
    (entry,) = client.list_objects_page(b.name, "").entries
    assert entry.mtime_ns == mtime


# ---------------------------------------------------------------------- error mapping


@pytest.mark.parametrize(
    ("status", "tcode", "cls", "err"),
    [
        (400, "", errors.InvalidRequest, errno.EINVAL),
        (400, "ErrFailedTo", errors.Transient, errno.EIO),  # the proxy could not reach a target
        (400, "ErrMv", errors.DirectoryInTheWay, errno.EISDIR),
        (401, "", errors.AccessDenied, errno.EACCES),
        (403, "", errors.AccessDenied, errno.EACCES),
        (404, "ErrNotFound", errors.NotFound, errno.ENOENT),
        (404, "ErrBckNotFound", errors.BucketNotFound, errno.ENOENT),
        (409, "", errors.Conflict, errno.EEXIST),
        (416, "", errors.RangeNotSatisfiable, errno.EIO),
        (429, "", errors.Transient, errno.EIO),
        (500, "", errors.Transient, errno.EIO),
        (503, "", errors.Transient, errno.EIO),
        (507, "", errors.InsufficientStorage, errno.ENOSPC),
        (418, "", errors.AisError, errno.EIO),
    ],
)
def test_error_for_status(status: int, tcode: str, cls: type, err: int) -> None:
    msg = "destination exists and is a virtual directory" if tcode == "ErrMv" else "msg"
    exc = errors.error_for_status(status, msg, "ais://b/k", tcode)
    assert type(exc) is cls
    assert exc.status == status
    assert errors.to_errno(exc) == err
    assert str(exc) == f"ais://b/k: {msg} (HTTP {status})"


def test_to_errno_other_exceptions() -> None:
    assert errors.to_errno(errors.StaleObject("x")) == errno.ESTALE
    assert errors.to_errno(errors.PosixError(errno.ENOTEMPTY, "x")) == errno.ENOTEMPTY
    assert errors.to_errno(FileNotFoundError(errno.ENOENT, "x")) == errno.ENOENT
    assert errors.to_errno(RuntimeError("x")) == errno.EIO


# ---------------------------------------------------------------------- local fake servers


class FakeServer:
    """An HTTP server on 127.0.0.1 that answers with ``respond(method, path, headers)``."""

    def __init__(
        self, respond: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]
    ) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = dict(self.headers.items())
                outer.requests.append((self.command, self.path, headers))
                status, extra, body = respond(self.command, self.path, headers)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    with contextlib.ExitStack() as stack:
        yield lambda respond: stack.enter_context(contextlib.closing(FakeServer(respond)))


def fast_client(url: str, retries: int = 2, **kw: Any) -> AisClient:
    return AisClient(ClientConfig(endpoint=url, retries=retries, retry_backoff=0.01, **kw))


def test_retries_on_closed_port_are_bounded() -> None:
    c = fast_client("http://127.0.0.1:9", retries=2, connect_timeout=1.0, read_timeout=1.0)
    c.transport.observer = seen = RecordingObserver()
    retried = seen.retries
    started = time.monotonic()
    with pytest.raises(errors.Transient) as info:
        c.head_object("b", "k")
    assert time.monotonic() - started < 3.0
    assert retried == ["head_object", "head_object"]
    assert "ais://b/k" in str(info.value)
    # Data requests are retried too when the connection was never made.
    retried.clear()
    with pytest.raises(errors.Transient):
        c.append("b", "k", "", b"data")
    assert retried == ["append", "append"]
    c.close()


@pytest.fixture
def silent_socket() -> Iterator[str]:
    """A listening socket that never accepts nor answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_read_timeout_gives_transient(silent_socket: str) -> None:
    c = fast_client(silent_socket, retries=1, connect_timeout=0.5, read_timeout=0.5)
    c.transport.observer = seen = RecordingObserver()
    retried = seen.retries
    started = time.monotonic()
    with pytest.raises(errors.Transient) as info:
        c.get_range("b", "k", 0, 10)
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 3.0, elapsed  # two attempts of ~0.5 s each
    assert retried == ["get_range"]
    assert "Timeout" in str(info.value)
    c.close()


class RawBodyServer:
    """Answers every ranged GET on one port with ``body`` (headers and body in one send),
    optionally stopping after ``cut`` body bytes and then stalling or closing: every answer,
    or the first ``cuts`` ones."""

    def __init__(self, body: bytes, cut: int | None = None, then: str = "stall",
                 chunked: bool = False, cuts: int | None = None) -> None:
        self.body, self.cut, self.then, self.chunked = body, cut, then, chunked
        self.cuts = cuts
        self.answered = 0  # object GETs answered, cut or not
        self.accepted = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            reader = conn.makefile("rb")
            while not self.stop.is_set():
                line = reader.readline()
                if not line:
                    return
                while reader.readline() not in (b"\r\n", b""):
                    pass
                if b"/v1/objects/" not in line:  # the cluster map: there is none
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                n = len(self.body)
                if self.chunked:
                    pieces = [self.body[i:i + 65536] for i in range(0, n, 65536)]
                    conn.sendall(
                        (f"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
                         f"Content-Range: bytes 0-{n - 1}/{n}\r\nAis-Version: 1\r\n\r\n"
                         ).encode()
                        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
                    continue
                head = (f"HTTP/1.1 206 Partial Content\r\nContent-Length: {n}\r\n"
                        f"Content-Range: bytes 0-{n - 1}/{n}\r\nAis-Version: 1\r\n\r\n").encode()
                self.answered += 1  # (answers on several connections are never concurrent here)
                cut = self.cut if self.cuts is None or self.answered <= self.cuts else None
                conn.sendall(head + self.body[:cut])
                if cut is not None:
                    if self.then == "stall":
                        self.stop.wait(5)
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw_body_server() -> Iterator[Callable[..., RawBodyServer]]:
    with contextlib.ExitStack() as stack:
        yield lambda body, cut=None, then="stall", chunked=False, cuts=None: stack.enter_context(
            contextlib.closing(RawBodyServer(body, cut, then, chunked, cuts)))


@pytest.mark.parametrize("chunked", [False, True])  # chunked: not one receive, the usual read
def test_ranged_bodies_whole_and_connection_reused(
    raw_body_server: Callable[..., RawBodyServer], chunked: bool
) -> None:
    body = os.urandom(3 * 1024 * 1024 + 7)
    server = raw_body_server(body, chunked=chunked)
    c = fast_client(server.url)
    for _ in range(3):
        buf = bytearray(len(body) + 10)
        r = c.get_range("b", "k", 0, len(body), into=buf)
        assert bytes(r.data) == body and r.total_size == len(body)
    assert server.accepted == 1  # the body was read to its end: the connection went back
    c.close()


@pytest.mark.parametrize("then", ["stall", "close"])
def test_ranged_body_cut_short_is_transient(
    raw_body_server: Callable[..., RawBodyServer], then: str
) -> None:
    server = raw_body_server(os.urandom(2 * 1024 * 1024), cut=300_000, then=then)
    c = fast_client(server.url, retries=0, read_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(errors.Transient) as info:
        c.get_range("b", "k", 0, 2 * 1024 * 1024)
    assert time.monotonic() - started < 3.0  # a stalled body times out, never hangs
    assert "reading body failed" in str(info.value)
    c.close()


@pytest.mark.parametrize("then", ["stall", "close"])
def test_a_ranged_body_cut_short_is_received_again(
    raw_body_server: Callable[..., RawBodyServer], then: str
) -> None:
    body = os.urandom(2 * 1024 * 1024)
    server = raw_body_server(body, cut=300_000, then=then, cuts=2)
    c = fast_client(server.url, retries=2, read_timeout=0.5)
    c.transport.observer = seen = RecordingObserver()
    buf = bytearray(len(body))
    r = c.get_range("b", "k", 0, len(body), into=buf)
    assert bytes(r.data) == body and r.total_size == len(body) and r.version == "1"
    assert server.answered == 3  # two cut short, then the whole range again
    assert seen.retries == ["get_range", "get_range"]
    c.close()


def test_a_ranged_body_cut_short_every_time_is_transient_after_the_retries(
    raw_body_server: Callable[..., RawBodyServer]
) -> None:
    server = raw_body_server(os.urandom(1024 * 1024), cut=100_000, then="close")
    c = fast_client(server.url, retries=2)
    with pytest.raises(errors.Transient) as info:
        c.get_range("b", "k", 0, 1024 * 1024)
    assert server.answered == 3  # the first try and two more, no more
    assert "ais://b/k: reading body failed" in str(info.value)
    c.close()


def test_a_body_that_ends_before_its_length_is_never_short_data(
    raw_body_server: Callable[..., RawBodyServer]
) -> None:
    # Asked for more than the object holds, the body is read the usual way (not in one
    # receive): http.client's readinto ends a body cut short with a short count, no error.
    body = os.urandom(1024 * 1024)
    server = raw_body_server(body, cut=100_000, then="close")
    c = fast_client(server.url, retries=0)
    with pytest.raises(errors.Transient) as info:
        c.get_range("b", "k", 0, 2 * len(body))
    assert "reading body failed" in str(info.value)
    c.close()


def test_read_timeout_not_retried_for_non_idempotent(silent_socket: str) -> None:
    c = fast_client(silent_socket, retries=3, connect_timeout=0.5, read_timeout=0.4)
    c.transport.observer = seen = RecordingObserver()
    retried = seen.retries
    started = time.monotonic()
    with pytest.raises(errors.Transient):
        c.rename_object("b", "k", "k2")
    assert time.monotonic() - started < 1.5
    assert retried == []  # the request may have reached the server: no second try
    c.close()


@pytest.mark.parametrize(("status", "retried"), [(503, True), (500, True), (429, True),
                                                 (501, False), (404, False), (400, False)])
def test_status_retry_policy_idempotent(status: int, retried: bool, fake_server) -> None:  # type: ignore[no-untyped-def]
    srv = fake_server(lambda m, p, h: (status, {"Content-Type": "application/json"},
                                       json.dumps({"message": f"status {status}"}).encode()))
    c = fast_client(srv.url, retries=2)
    with pytest.raises(errors.AisError) as info:
        c.list_buckets()
    assert info.value.status == status
    assert f"status {status}" in str(info.value)
    assert len(srv.requests) == (3 if retried else 1)
    c.close()


def test_non_idempotent_500_not_retried_503_retried(fake_server) -> None:  # type: ignore[no-untyped-def]
    codes = {"status": 500}
    srv = fake_server(lambda m, p, h: (codes["status"], {}, b'{"message":"busy"}'))
    c = fast_client(srv.url, retries=2)
    with pytest.raises(errors.Transient):
        c.rename_object("b", "k", "k2")
    assert len(srv.requests) == 1
    codes["status"] = 503
    with pytest.raises(errors.Transient):
        c.rename_object("b", "k", "k2")
    assert len(srv.requests) == 1 + 3
    c.close()


def test_retry_then_success(fake_server) -> None:  # type: ignore[no-untyped-def]
    hits = []

    def respond(m, p, h):  # type: ignore[no-untyped-def]
        hits.append(p)
        if len(hits) < 3:
            return 503, {}, b""
        return 200, {"Content-Type": "application/json"}, b'[{"name":"x","provider":"ais"}]'

    srv = fake_server(respond)
    c = fast_client(srv.url, retries=2)
    assert c.list_buckets() == ["x"]
    assert len(srv.requests) == 3
    c.close()


def test_error_text_from_hdr_error_and_body(fake_server) -> None:  # type: ignore[no-untyped-def]
    def respond(m, p, h):  # type: ignore[no-untyped-def]
        doc = json.dumps({"tcode": "ErrBckNotFound", "message": "bucket ais://q does not exist"})
        if m == "HEAD":
            return 404, {"Hdr-Error": doc}, b""
        return 404, {"Content-Type": "application/json"}, doc.encode() + b"\n"

    srv = fake_server(respond)
    c = fast_client(srv.url)
    with pytest.raises(errors.BucketNotFound, match="does not exist"):
        c.head_object("q", "k")
    with pytest.raises(errors.BucketNotFound, match="does not exist"):
        c.list_objects_page("q", "")
    c.close()


def test_plain_text_error_body(fake_server) -> None:  # type: ignore[no-untyped-def]
    srv = fake_server(lambda m, p, h: (403, {}, b"direct target access denied\n"))
    c = fast_client(srv.url)
    with pytest.raises(errors.AccessDenied) as info:
        c.list_buckets()
    assert "direct target access denied" in str(info.value)
    assert info.value.errno == errno.EACCES
    c.close()


def test_token_is_sent(fake_server) -> None:  # type: ignore[no-untyped-def]
    srv = fake_server(lambda m, p, h: (200, {"Content-Type": "application/json"}, b"[]"))
    c = AisClient(ClientConfig(endpoint=srv.url), token=lambda: "tok123")
    assert c.list_buckets() == []
    assert srv.requests[0][2].get("Authorization") == "Bearer tok123"
    c.close()
    c2 = AisClient(ClientConfig(endpoint=srv.url))
    c2.list_buckets()
    assert "Authorization" not in srv.requests[1][2]
    c2.close()


def test_listed_times_in_every_shape(fake_server) -> None:  # type: ignore[no-untyped-def]
    entries = [
        {"name": "p/fixed", "atime": "2026-11-21T03:58:54.880149515Z", "size": "1"},
        {"name": "p/same-second", "atime": "2026-11-21T03:58:54.000000001Z", "size": "1"},
        {"name": "p/no-fraction", "atime": "2026-11-21T03:58:54Z", "size": "1"},
        {"name": "p/zone", "atime": "2026-11-21T05:58:54.880149515+02:00", "size": "1"},
        {"name": "p/garbage", "atime": "2026-11-21T03:58:54.88014951xZ", "size": "1"},
        {"name": "p/kept", "atime": "2026-11-21T03:58:54.880149515Z", "size": "1",
         "custom-md": f"[{MTIME_KEY}:1234567890123456789 other:x]"},
        {"name": "p/sub", "flags": 256},
    ]
    body = json.dumps({"uuid": "u", "continuation_token": "", "entries": entries}).encode()
    srv = fake_server(lambda m, p, h: (200, {"Content-Type": "application/json"}, body))
    c = fast_client(srv.url)
    got = {e.name: (e.is_dir, e.mtime_ns) for e in c.list_objects_page("b", "p/").entries}
    assert got == {
        "p/fixed": (False, 1795233534880149515),
        "p/same-second": (False, 1795233534000000001),
        "p/no-fraction": (False, 1795233534000000000),
        "p/zone": (False, 1795233534880149515),
        "p/garbage": (False, 0),
        "p/kept": (False, 1234567890123456789),
        "p/sub/": (True, 0),
    }
    c.close()


def test_environment_proxies_and_ca_bundle_are_honoured(  # type: ignore[no-untyped-def]
    fake_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests no longer reads the environment per request: the client applies it itself.
    srv = fake_server(lambda m, p, h: (200, {"Content-Type": "application/json"}, b"[]"))
    monkeypatch.setenv("HTTP_PROXY", srv.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    c = fast_client("http://ais.invalid:8080", retries=0)
    assert c.list_buckets() == []  # through the proxy: ais.invalid itself does not resolve
    assert srv.requests[0][1].startswith("http://ais.invalid:8080/v1/buckets")
    assert c.transport._verify == "/etc/ssl/certs/ca-certificates.crt"
    c.close()
    monkeypatch.setenv("NO_PROXY", "ais.invalid")
    c = fast_client("http://ais.invalid:8080", retries=0)
    with pytest.raises(errors.Transient):
        c.list_buckets()  # straight to a host that does not resolve
    c.close()


# ---------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:01Z", 10**9),
        ("2026-11-21T03:58:54.880149515Z", 1795233534880149515),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1970-01-01T00:00:00.5Z", 500_000_000),
        ("garbage", 0),
        ("", 0),
    ],
)
def test_parse_rfc3339_ns(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns

"""Synchronous AIS REST client (the only module that imports ``requests``).

One :class:`AisClient` per mount. Every call has a (connect, read) timeout; idempotent calls are
retried with capped exponential backoff on connection errors, timeouts, 429 and 5xx; requests that
carry object data are retried only when the connection could not be established, because a
repeated APPEND would duplicate bytes. AIS's error JSON (body, or ``Hdr-Error`` on HEAD) becomes a
typed :mod:`aisfs.errors` exception. Object requests that AIS's proxy redirects remember the
target it chose (a HEAD's for the GETs that follow, a GET's for the next parts, an APPEND's for the
rest of its session), so later requests skip the proxy; a target that refuses or no longer has the
object sends us back to the proxy.

Concurrency: methods are called from trio worker threads (see ``aio.py``), several at once. The
shared ``requests.Session`` holds no per-request state (cookies are refused) and its connection
pool is sized to the worker-thread limit. Nothing here touches trio or the inode/metadata tables.
"""

from __future__ import annotations

import collections
import email.utils
import http.client
import http.cookiejar
import json
import logging
import os
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import requests
import urllib3

from . import errors, getbatch
from .config import ClientConfig
from .objects import (
    Body,
    ListEntry,
    ListPage,
    ObjectProps,
    RangeResult,
    RecvBuffer,
    list_entries,
    mtime_from_custom,
)

log = logging.getLogger(__name__)

LS_NO_RECURSION = 2048
LS_ARCH_DIR = 8  # list archives' members too (api/apc/lsmsg.go: LsArchDir)
LIST_PROPS = "name,size,version,atime,custom"  # the checksum is read by HEAD, when asked for
HEAD_PROPS = "name,size,version,checksum,atime,custom,last-modified"
# Go layout: RFC 3339 with all nine digits of nanoseconds (".000000000", not ".999999999", which
# drops trailing zeros), so that listed times have one fixed shape, cheap to parse.
TIME_FORMAT = "2006-01-02T15:04:05.000000000Z07:00"


def _quote_key(key: str) -> str:
    return urllib.parse.quote(key, safe="/")


def _decode_header(value: str) -> bytes:
    # http.client decodes header bytes as Latin-1; this recovers the bytes the server sent.
    return value.encode("latin-1", "replace")


def _custom_from_headers(resp: requests.Response) -> dict[str, bytes]:
    custom: dict[str, bytes] = {}
    raw = getattr(resp.raw, "headers", None)
    values = raw.getlist("Ais-Custom-Md") if raw is not None else []
    for item in values:
        key, sep, value = _decode_header(item).partition(b"=")
        if sep:
            custom[key.decode("utf-8", "surrogateescape")] = value
    return custom


class _FdBody:
    """A file descriptor's first ``size`` bytes as a request body (read with pread)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.pos = 0

    def __len__(self) -> int:
        return self.size - self.pos

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.size - self.pos:
            n = self.size - self.pos
        n = min(n, 4 * 1024 * 1024)
        data = os.pread(self.fd, n, self.pos) if n > 0 else b""
        self.pos += len(data)
        return data


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class AisClient:
    """Blocking REST calls against one AIS cluster (through its proxy)."""

    def __init__(self, config: ClientConfig, token: Callable[[], str | None] | None = None) -> None:
        self.config = config
        self._token = token or (lambda: None)
        self._base = config.endpoint.rstrip("/") + "/v1"
        self._timeout = (config.connect_timeout, config.read_timeout)
        self.session = requests.Session()
        self.session.cookies.set_policy(_NoCookies())
        # requests reads the environment (proxies, CA bundle, .netrc) on every request, ~0.3 ms
        # each; it is read once here instead: the CA bundle below, proxies once per host.
        self.session.trust_env = False
        self._proxies: dict[str, dict[str, str]] = {}
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=16, pool_maxsize=config.max_connections, max_retries=0
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        tls = config.tls
        # Passed on every request: a Session-level verify loses to REQUESTS_CA_BUNDLE.
        self._verify: bool | str = True
        if tls.skip_verify:
            self._verify = False
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            log.warning("TLS certificate verification is off (skip-verify)")
        elif tls.ca_bundle:
            self._verify = tls.ca_bundle
        else:  # what requests itself would take from the environment
            self._verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                            or os.environ.get("CURL_CA_BUNDLE") or True)
        self._cert: tuple[str, str] | str | None = None
        if tls.client_cert:
            self._cert = (tls.client_cert, tls.client_key) if tls.client_key else tls.client_cert
        self.session.headers["User-Agent"] = "aisfs"
        # Where the proxy last redirected a GET of each object: later ranged GETs of the same
        # object go straight to that target, saving a round trip and half the request cost.
        self._locations: collections.OrderedDict[str, str] = collections.OrderedDict()
        # The target that took an object's last APPEND: the rest of the session (it lives on
        # that target) goes straight there. Kept until the FLUSH.
        self._session_targets: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._locations_lock = threading.Lock()
        # Observability hook: called as on_request(kind, status, seconds, request body bytes).
        self.on_request: Callable[[str, int, float, int], None] | None = None
        self.on_retry: Callable[[str], None] | None = None

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ plumbing

    def _http(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        origin = url[:url.find("/", url.find("//") + 2)]  # scheme://host:port
        proxies = self._proxies.get(origin)
        if proxies is None:  # HTTP(S)_PROXY / NO_PROXY, as requests would apply them
            proxies = self._proxies[origin] = requests.utils.get_environ_proxies(origin)
        return self.session.request(
            method, url, timeout=self._timeout, verify=self._verify, cert=self._cert,
            proxies=proxies, **kwargs
        )

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _raise_for(self, resp: requests.Response, what: str) -> None:
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

    def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        kind: str,
        idempotent: bool = True,
        params: dict[str, str] | None = None,
        json_body: Any = None,
        data: Body | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        ok_statuses: tuple[int, ...] = (),
        cache_location: bool = False,
        session_target: bool = False,
    ) -> requests.Response:
        """Send one logical request, following AIS's proxy→target redirect, with retries."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                if cache_location:
                    resp = self._get_via_cached_location(url, params, headers)
                else:
                    resp = self._send_once(method, url, params, json_body, data, headers, stream,
                                           session_target)
            except requests.exceptions.SSLError as exc:
                # A certificate that does not verify will not verify on a retry either.
                raise errors.Transient(f"TLS: {_short(exc)}", 0, what) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                never_sent = isinstance(exc, requests.ConnectTimeout) or _connect_failed(exc)
                if attempt < self.config.retries and (idempotent or never_sent):
                    attempt = self._backoff(attempt, kind, what, exc)
                    continue
                raise errors.Transient(f"{type(exc).__name__}: {_short(exc)}", 0, what) from None
            status = resp.status_code
            if self.on_request is not None:
                sent = 0 if data is None or callable(data) else len(data)
                self.on_request(kind, status, time.monotonic() - started, sent)
            if status in ok_statuses:
                return resp
            if (status == 429 or status >= 500) and status != 501 and attempt < self.config.retries:
                # 5xx on a non-idempotent request means the target refused it, not half-applied
                # it, except for a timeout in the middle (503 from a proxy is never mid-write).
                if idempotent or status in (429, 503):
                    resp.close()
                    attempt = self._backoff(attempt, kind, what, f"HTTP {status}")
                    continue
            self._raise_for(resp, what)
            return resp

    def _send_once(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None,
        json_body: Any,
        data: Body | None,
        headers: dict[str, str] | None,
        stream: bool,
        session_target: bool = False,
    ) -> requests.Response:
        hdrs = self._headers(headers)
        if data is not None and session_target:
            resp = self._send_to_session_target(method, url, params, data, hdrs)
            if resp is not None:
                return resp
        if data is None:
            return self._http(
                method, url, params=params, json=json_body, headers=hdrs,
                stream=stream, allow_redirects=True,
            )
        # Object data: ask the proxy where to send it with an empty body, then send the body
        # once, straight to the target. Re-sending megabytes through a redirect wastes them
        # and breaks on TLS when the proxy closes early (ais-protocol.md §2).
        resp = self._http(
            method, url, params=params, headers={**hdrs, "Content-Length": "0"},
            allow_redirects=False,
        )
        if resp.status_code in (301, 302, 307, 308) and "Location" in resp.headers:
            location = resp.headers["Location"]
            resp.close()
            if session_target:
                self._remember(self._session_targets, url, location)
            body = data() if callable(data) else data
            return self._http(
                method, location, data=body, headers=hdrs, allow_redirects=False,
            )
        return resp

    def _send_to_session_target(
        self, method: str, url: str, params: dict[str, str] | None, data: Body,
        hdrs: dict[str, str],
    ) -> requests.Response | None:
        """The next request of an append session, straight to its target: one round trip to
        the proxy less per APPEND. None when no target is known, or it wants the proxy."""
        with self._locations_lock:
            location = self._session_targets.get(url)
        if location is None:
            return None
        base, _, query = location.partition("?")
        # The proxy's redirect marker (pid, utm) stays: a target refuses an unredirected PUT.
        merged = {**dict(urllib.parse.parse_qsl(query)), **(params or {})}
        body = data() if callable(data) else data
        try:
            resp = self._http(method, base, params=merged, data=body, headers=hdrs,
                              allow_redirects=False)
        except requests.ConnectionError:
            self._forget(self._session_targets, url)  # the target may be gone: ask the proxy
            raise
        if resp.status_code in (400, 401, 403):
            # Refused, so not applied: a cluster that signs redirects wants a fresh one.
            resp.close()
            self._forget(self._session_targets, url)
            return None
        return resp

    def _remember(self, where: collections.OrderedDict[str, str], url: str, location: str) -> None:
        """Keep a target location, the oldest 4096th dropped (sessions abandoned on an error
        never reach their FLUSH)."""
        with self._locations_lock:
            where[url] = location
            if len(where) > 4096:
                where.popitem(last=False)

    def _forget(self, where: collections.OrderedDict[str, str], url: str) -> None:
        with self._locations_lock:
            where.pop(url, None)

    def _get_via_cached_location(
        self, url: str, params: dict[str, str] | None, headers: dict[str, str] | None
    ) -> requests.Response:
        hdrs = self._headers(headers)
        with self._locations_lock:
            location = self._locations.get(url)
        if location is not None:
            try:
                resp = self._http("GET", location, headers=hdrs, stream=True,
                                  allow_redirects=False)
                if resp.status_code in (200, 206, 416):
                    return resp
                resp.close()  # a 404 too: the object may live on another target by now
            except requests.ConnectionError:
                pass  # the target may have left the cluster: ask the proxy again
            self._forget(self._locations, url)
        resp = self._http("GET", url, params=params, headers=hdrs, stream=True,
                          allow_redirects=False)
        if resp.status_code in (301, 302, 307, 308) and "Location" in resp.headers:
            location = resp.headers["Location"]
            resp.close()
            self._remember(self._locations, url, location)
            resp = self._http("GET", location, headers=hdrs, stream=True, allow_redirects=True)
        return resp

    def _backoff(self, attempt: int, kind: str, what: str, why: object) -> int:
        delay = min(5.0, self.config.retry_backoff * (2**attempt))
        level = logging.DEBUG if attempt == 0 else logging.INFO if attempt == 1 else logging.WARNING
        log.log(level, "%s %s: %s; retry %d in %.1fs", kind, what, why, attempt + 1, delay)
        if self.on_retry is not None:
            self.on_retry(kind)
        time.sleep(delay)
        return attempt + 1

    def _bucket_url(self, bucket: str = "") -> str:
        return f"{self._base}/buckets/{bucket}" if bucket else f"{self._base}/buckets"

    def _object_url(self, bucket: str, key: str) -> str:
        return f"{self._base}/objects/{bucket}/{_quote_key(key)}"

    # ------------------------------------------------------------------ cluster and buckets

    def list_buckets(self) -> list[str]:
        resp = self._request(
            "GET", self._bucket_url(), "ais://", kind="list_buckets",
            params={"provider": "ais"}, json_body={"action": "list", "name": ""},
        )
        return sorted(b["name"] for b in resp.json() or [] if b.get("provider", "ais") == "ais")

    def head_bucket(self, bucket: str) -> None:
        """Raise BucketNotFound when the bucket does not exist."""
        try:
            self._request(
                "HEAD", self._bucket_url(bucket), f"ais://{bucket}", kind="head_bucket",
                params={"provider": "ais"},
            )
        except errors.NotFound as exc:
            raise errors.BucketNotFound(str(exc.args[0]), 404, f"ais://{bucket}") from None

    def create_bucket(self, bucket: str) -> None:
        self._request(
            "POST", self._bucket_url(bucket), f"ais://{bucket}", kind="create_bucket",
            idempotent=False, params={"provider": "ais"}, json_body={"action": "create-bck"},
        )

    def destroy_bucket(self, bucket: str) -> None:
        self._request(
            "DELETE", self._bucket_url(bucket), f"ais://{bucket}", kind="destroy_bucket",
            params={"provider": "ais"}, json_body={"action": "destroy-bck"},
        )

    # ------------------------------------------------------------------ listing

    def list_objects_page(
        self,
        bucket: str,
        prefix: str,
        *,
        recursive: bool = False,
        page_size: int = 0,
        uuid: str = "",
        continuation_token: str = "",
        start_after: str = "",
        convert: bool = True,
    ) -> ListPage:
        """One page of a listing (of names after ``start_after``, when given: ais buckets only).
        Non-recursive pages include virtual-directory entries. With ``convert=False`` the entries
        are left in ``raw``, for :func:`list_entries`."""
        value = {
            "prefix": prefix,
            "props": LIST_PROPS,
            "time_format": TIME_FORMAT,
            "flags": "0" if recursive else str(LS_NO_RECURSION),
            "pagesize": page_size,
            "uuid": uuid,
            "continuation_token": continuation_token,
        }
        if start_after:
            value["start_after"] = start_after
        resp = self._request(
            "GET", self._bucket_url(bucket), f"ais://{bucket}/{prefix}", kind="list_objects",
            params={"provider": "ais"},
            json_body={"action": "list", "name": bucket, "value": value},
        )
        doc = orjson.loads(resp.content) or {}
        raw = doc.get("entries") or []
        uuid, token = doc.get("uuid") or "", doc.get("continuation_token") or ""
        if not convert:
            return ListPage([], uuid, token, raw)
        return ListPage(list_entries(raw), uuid, token)

    def iter_objects(
        self, bucket: str, prefix: str, *, recursive: bool = False, page_size: int = 0
    ) -> Iterator[ListEntry]:
        uuid = token = ""
        while True:
            page = self.list_objects_page(
                bucket, prefix, recursive=recursive, page_size=page_size,
                uuid=uuid, continuation_token=token,
            )
            yield from page.entries
            if not page.continuation_token:
                return
            uuid, token = page.uuid, page.continuation_token

    # ------------------------------------------------------------------ objects

    def head_object(self, bucket: str, key: str) -> ObjectProps:
        url = self._object_url(bucket, key)
        resp = self._request(
            "HEAD", url, f"ais://{bucket}/{key}", kind="head_object",
            params={"provider": "ais", "props": HEAD_PROPS},
        )
        if resp.history:
            # The target that answered serves the GETs that usually follow (open, then read):
            # they go straight to it, one round trip to the proxy less for the first byte.
            self._remember(self._locations, url, _without_param(resp.url, "props"))
        h = resp.headers
        custom = _custom_from_headers(resp)
        atime = int(h.get("Ais-Atime") or 0)
        mtime = mtime_from_custom(custom)
        if not mtime and h.get("Last-Modified"):
            parsed = email.utils.parsedate_to_datetime(h["Last-Modified"])
            mtime = int(parsed.timestamp()) * 1_000_000_000
        return ObjectProps(
            key, int(h.get("Content-Length") or 0), mtime or atime, h.get("Ais-Version", ""),
            h.get("Ais-Checksum-Value", ""), atime, custom,
        )

    def get_range(
        self, bucket: str, key: str, start: int, length: int, into: RecvBuffer | None = None
    ) -> RangeResult:
        """Bytes [start, start+length) of an object; shorter at EOF. 416 means start >= size.

        With ``into`` (at least ``length`` bytes) the body lands in that buffer, so a caller can
        reuse buffers instead of faulting in fresh pages for every part.
        """
        what = f"ais://{bucket}/{key}"
        resp = self._request(
            "GET", self._object_url(bucket, key), what, kind="get_range",
            params={"provider": "ais"}, headers={"Range": f"bytes={start}-{start + length - 1}"},
            stream=True, cache_location=True,
        )
        try:
            if resp.status_code == 200 and start > 0:
                # A server that ignored the Range header sent the whole object.
                whole = resp.raw.read(decode_content=False)[start:start + length]
                data = memoryview(bytearray(whole))
            else:
                buf = into if into is not None else bytearray(length)
                data = memoryview(buf)[: read_body_into(resp, buf, length)]
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as exc:
            resp.close()
            raise errors.Transient(f"reading body failed: {_short(exc)}", 0, what) from None
        body = getattr(resp.raw, "_fp", None)  # http.client's response: closed at the body's end
        if body is not None and body.isclosed():
            # The body was read past urllib3 (straight into our buffer) but to its end: the
            # connection is clean, give it back to the pool instead of closing it.
            resp.raw.release_conn()
        else:
            resp.close()
        total = -1
        content_range = resp.headers.get("Content-Range", "")
        if "/" in content_range:
            tail = content_range.rsplit("/", 1)[1]
            total = int(tail) if tail.isdigit() else -1
        return RangeResult(data, total, resp.headers.get("Ais-Version", ""))

    def put_object(
        self, bucket: str, key: str, data: bytes | memoryview,
        custom: dict[str, bytes] | None = None,
    ) -> ObjectProps:
        headers = _custom_headers(custom)
        resp = self._request(
            "PUT", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="put_object",
            params={"provider": "ais"}, data=data, headers=headers,
        )
        return ObjectProps(key, len(data), version=resp.headers.get("Ais-Version", ""))

    def put_file(
        self, bucket: str, key: str, fd: int, size: int, custom: dict[str, bytes] | None = None
    ) -> ObjectProps:
        """PUT the first ``size`` bytes of an open file (read with pread: the fd's offset is
        not used, so a retry sends the same bytes again)."""
        resp = self._request(
            "PUT", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="put_object",
            params={"provider": "ais"}, data=lambda: _FdBody(fd, size),
            headers={**_custom_headers(custom), "Content-Length": str(size)},
        )
        return ObjectProps(key, size, version=resp.headers.get("Ais-Version", ""))

    def append(self, bucket: str, key: str, handle: str, data: Body) -> str:
        """Append bytes to the object's pending append session; returns the new handle."""
        resp = self._request(
            "PUT", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="append",
            idempotent=False, data=data, session_target=True,
            params={"provider": "ais", "append_type": "append", "append_handle": handle},
        )
        new_handle = resp.headers.get("Ais-Append-Handle", "")
        if not new_handle:
            raise errors.AisError("append returned no handle", resp.status_code, f"ais://{bucket}/{key}")
        return new_handle

    def flush(self, bucket: str, key: str, handle: str) -> None:
        """Make the appended bytes the object's content (atomic replace)."""
        url = self._object_url(bucket, key)
        try:
            self._request(
                "PUT", url, f"ais://{bucket}/{key}", kind="flush", idempotent=False, data=b"",
                session_target=True,
                params={"provider": "ais", "append_type": "flush", "append_handle": handle},
            )
        finally:
            self._forget(self._session_targets, url)

    def delete_object(self, bucket: str, key: str) -> None:
        self._request(
            "DELETE", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="delete_object",
            params={"provider": "ais"},
        )

    def rename_object(self, bucket: str, key: str, new_key: str) -> None:
        self._request(
            "POST", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="rename_object",
            idempotent=False, params={"provider": "ais"},
            json_body={"action": "rename-obj", "name": new_key},
        )

    # ------------------------------------------------------------------ archives

    def list_archive(self, bucket: str, key: str) -> list[dict[str, Any]]:
        """AIS's listing of the archive ``key`` with its members (decoded JSON entries: the
        archive's own, then ``<key>/<member>`` ones in name order), all pages.

        Listed with the archive's own name as prefix: AIS's archive listing of a whole directory
        silently ends at the first archive it cannot read (v1.5.0), so one archive is listed at
        a time. Paging stops at the first name past the members.
        """
        entries: list[dict[str, Any]] = []
        member_prefix, cut = key + "/", len(key)
        uuid = token = ""
        while True:
            value = {
                "prefix": key, "props": LIST_PROPS, "time_format": TIME_FORMAT,
                "flags": str(LS_ARCH_DIR), "pagesize": 0, "uuid": uuid,
                "continuation_token": token,
            }
            resp = self._request(
                "GET", self._bucket_url(bucket), f"ais://{bucket}/{key}", kind="list_archive",
                params={"provider": "ais"},
                json_body={"action": "list", "name": bucket, "value": value},
            )
            doc = orjson.loads(resp.content) or {}
            for raw in doc.get("entries") or []:
                name = raw.get("name", "")
                if name == key or name.startswith(member_prefix):
                    entries.append(raw)
                elif name[cut:cut + 1] > "/":
                    return entries  # names sort after "<key>/...": no member can follow
            uuid, token = doc.get("uuid") or "", doc.get("continuation_token") or ""
            if not token:
                return entries

    def get_member(
        self, bucket: str, key: str, member: str, into: RecvBuffer | None = None
    ) -> memoryview:
        """The whole of one member of the archive ``key`` (AIS extracts it: ``archpath``).

        The body lands in ``into`` when it is big enough, else in a new buffer. Raises
        ``BadArchive`` when AIS cannot read the archive (it answers 400, or, for a truncated one,
        ends the body early), ``NotFound`` when the archive or the member is not there.
        """
        what = f"ais://{bucket}/{key}/{member}"
        try:
            resp = self._request(
                "GET", self._object_url(bucket, key), what, kind="get_member",
                params={"provider": "ais", "archpath": member}, stream=True,
            )
        except errors.InvalidRequest as exc:
            raise errors.BadArchive(str(exc.args[0]), exc.status, what) from None
        try:
            length = int(resp.headers.get("Content-Length") or -1)
            if length < 0:
                raise errors.Transient("member sent without a length", resp.status_code, what)
            buf = into if into is not None and len(into) >= length else bytearray(length)
            got = read_body_into(resp, buf, length)
        except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError) as exc:
            resp.close()
            raise errors.BadArchive(
                f"the member's bytes ended early (a truncated archive?): {_short(exc)}", 0, what
            ) from None
        except errors.AisError:
            resp.close()
            raise
        body = getattr(resp.raw, "_fp", None)
        if body is not None and body.isclosed():
            resp.raw.release_conn()  # read to its end: the connection goes back to the pool
        else:
            resp.close()
        if got < length:
            raise errors.BadArchive(f"the member's bytes ended after {got} of {length}", 0, what)
        return memoryview(buf)[:length]

    def get_member_range(
        self, bucket: str, key: str, member: str, start: int, length: int,
        into: RecvBuffer | None = None,
    ) -> memoryview:
        """Bytes [start, start+length) of one member of the archive ``key``, through Get-Batch
        (``/v1/ml/moss``: AIS refuses a Range header together with ``archpath``).

        The range must lie within the member: AIS v1.5.0 answers one past its end after 20 s,
        with the whole member. A range under ``getbatch.MIN_BATCH_RANGE`` arrives only at AIS's
        next periodic flush (~100 ms later), and so does the end of every stream: the reply is
        read up to the range's last byte and its connection closed, not given back to the pool.
        """
        what = f"ais://{bucket}/{key}/{member}"
        body = getbatch.member_range_request(key, member, start, length)
        try:
            resp = self._request(
                "GET", f"{self._base}/ml/moss/{bucket}", what, kind="get_batch",
                params={"provider": "ais"}, json_body=body, stream=True,
            )
        except errors.InvalidRequest as exc:
            raise errors.BadArchive(str(exc.args[0]), exc.status, what) from None
        buf = into if into is not None and len(into) >= length else bytearray(length)
        items = getbatch.read_batch(
            _ReplyBody(resp), bucket, [f"{key}/{member}"], max_size=length, sizes=[length],
            buffer_for=lambda _index, _size: memoryview(buf),
        )
        try:
            item = next(items)
        finally:
            items.close()  # not read on to the stream's end: AIS sends it ~100 ms later
            resp.close()
        if item.error is not None:
            raise item.error  # NotFound (a __404__ entry), or getbatch.NotFetched
        assert item.data is not None
        return item.data

    def set_custom(
        self, bucket: str, key: str, custom: dict[str, bytes], *, replace: bool = False
    ) -> None:
        """Merge ``custom`` into the object's custom metadata, or replace it whole."""
        params = {"provider": "ais"}
        if replace:
            params["set-new-custom"] = "true"
        value = {k: v.decode("utf-8", "surrogateescape") for k, v in custom.items()}
        self._request(
            "PATCH", self._object_url(bucket, key), f"ais://{bucket}/{key}", kind="set_custom",
            params=params, json_body={"action": "", "name": "", "value": value},
        )


class _ReplyBody:
    """A streamed reply's body for :func:`getbatch.read_batch`: read straight from http.client
    (which undoes the chunked encoding), failures as ``Transient``."""

    def __init__(self, resp: requests.Response) -> None:
        self._fp = getattr(resp.raw, "_fp", None) or resp.raw

    def readinto(self, buf: memoryview, /) -> int:
        try:
            n: int = self._fp.readinto(buf)
            return n
        except (requests.RequestException, urllib3.exceptions.HTTPError,
                http.client.HTTPException, OSError) as exc:
            raise errors.Transient(f"reading the reply failed: {_short(exc)}") from None


def _without_param(url: str, name: str) -> str:
    """``url`` without the query parameter ``name``."""
    parts = urllib.parse.urlsplit(url)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k != name]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _custom_headers(custom: dict[str, bytes] | None) -> dict[str, str]:
    """One ``Ais-Custom-Md: k=v`` header: AIS reads one key per header line, and requests
    cannot repeat a header, so only a single key can ride on a PUT (more go by PATCH)."""
    if not custom:
        return {}
    if len(custom) != 1:
        raise ValueError("a PUT carries at most one custom-metadata key")
    (key, value), = custom.items()
    return {"Ais-Custom-Md": f"{key}={value.decode('latin-1')}"}  # requests sends Latin-1


def read_body_into(resp: requests.Response, buf: RecvBuffer | memoryview, length: int) -> int:
    """Read up to ``length`` body bytes straight from the socket into ``buf`` (one copy)."""
    view = memoryview(buf)[:length]
    fp = getattr(resp.raw, "_fp", None)  # http.client.HTTPResponse under urllib3
    try:
        got = _recv_whole_body(fp, view) if fp is not None else 0
        readinto = fp.readinto if fp is not None else resp.raw.readinto
        while got < length:
            n = readinto(view[got:])
            if not n:
                break
            got += n
        if got == length and fp is not None and not fp.isclosed():
            # A chunked body still has its terminator unread: reading it ends the body, which
            # hands the connection back to the pool (a known-length body did that already).
            fp.readinto(bytearray(1))
    finally:
        view.release()
    return got


def _recv_whole_body(fp: Any, view: memoryview) -> int:
    """Fill ``view`` from a plain-HTTP body with blocking ``MSG_WAITALL`` receives.

    Why: a part read the usual way costs a poll() and a recv() per socket buffer, dozens per
    part, and each one gives up and takes back the GIL; with 8 parts in flight the FUSE thread
    waited for the GIL on every request (measured: a 1 GiB read through the mount went from 530
    to 950 MB/s). One receive per part keeps the GIL free. The read timeout still holds, as
    SO_RCVTIMEO. Returns 0 (read nothing) when the body is not a plain-TCP, known-length one
    (TLS, chunked): the caller reads it the usual way.
    """
    bufr = getattr(fp, "fp", None)
    sock = getattr(getattr(bufr, "raw", None), "_sock", None)
    if (bufr is None or type(sock) is not socket.socket or getattr(fp, "chunked", True)
            or not isinstance(getattr(fp, "length", None), int) or fp.length < len(view)
            or not hasattr(fp, "_close_conn") or not view):
        return 0
    got = 0
    buffered = len(bufr.peek(1))  # body bytes that arrived with the headers
    if buffered:
        got = bufr.readinto(view[: min(buffered, len(view))])
    timeout = sock.gettimeout()
    sock.settimeout(None)  # blocking: MSG_WAITALL waits for the whole rest
    _set_receive_timeout(sock, timeout or 0.0)
    try:
        while got < len(view):
            try:
                n = sock.recv_into(view[got:], 0, socket.MSG_WAITALL)
            except BlockingIOError:  # SO_RCVTIMEO expired with nothing received
                raise TimeoutError(f"no body bytes for {timeout} s") from None
            if n == 0:
                raise ConnectionError(f"connection closed after {got} of {len(view)} bytes")
            got += n
    finally:
        _set_receive_timeout(sock, 0.0)
        sock.settimeout(timeout)
    fp.length -= got
    if fp.length == 0:
        fp._close_conn()  # what http.client does at the end of a body: the connection is reusable
    return got


def _set_receive_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def _connect_failed(exc: BaseException) -> bool:
    """True when the request never reached a server (safe to retry anything)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
            return True
        reason = getattr(cur, "reason", None)  # urllib3 wraps the cause in .reason
        first_arg = cur.args[0] if cur.args else None
        cur = (cur.__cause__ or cur.__context__
               or (reason if isinstance(reason, BaseException) else None)
               or (first_arg if isinstance(first_arg, BaseException) else None))
    return False


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 200 else text[:200] + "..."


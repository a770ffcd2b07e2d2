"""HTTP transport to one AIS cluster (with ``httpreply.py`` and ``httpconn.py``, the only modules
that import ``requests`` and ``urllib3``).

One :class:`Transport` per mount, under the AIS REST API of ``client.py``. Every request has a
(connect, read) timeout; idempotent requests are retried with capped exponential backoff on
connection errors, timeouts, 429 and 5xx, and a GET whose body is cut short while it is received
(:meth:`Transport.fetch`) is sent again; requests that carry object data are retried only when
the connection could not be established, because a repeated APPEND would duplicate bytes. An
error answer becomes a typed :mod:`aisfs.errors` exception (``httpreply.raise_for``).

Where an object request goes is decided by the :class:`~aisfs.routing.Router` (``routing.py``):
each request names its :class:`~aisfs.routing.Via`, the router answers with a target or the proxy,
and learns from the proxy's redirects (a HEAD's target for the GETs that follow, a GET's for the
next parts, an APPEND's for the rest of its session). A target that refuses or no longer has the
object sends the request back to the proxy. Answers are ``httpreply``'s :class:`Reply` (whole)
and :class:`Download` (bodies received straight into the caller's buffer).

Requests without an HTTP proxy from the environment and without a streamed body (every object
GET, HEAD and PUT of a whole small file, listings, metadata) go over ``httpconn``'s kept-alive
connections, which skip ``requests``' per-request machinery; the rest (APPENDs of chunked parts,
staged uploads from a file, proxied clusters) over the ``requests`` session. Both give the same
response type, exceptions, timeouts and retries here.

Concurrency: methods are called from trio worker threads (see ``aio.py``), several at once. The
shared ``requests.Session`` holds no per-request state (cookies are refused) and its connection
pool is sized to the worker-thread limit; the router has its own lock. Nothing here touches trio
or the inode/metadata tables. ``plain_http`` and ``headers_without_io`` are also called on the
trio thread (``inline.py``): they read the environment and the token source, never a file.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import urllib3

from . import errors, httpconn
from .clustermap import ClusterMap, ClusterMapError
from .config import ClientConfig
from .httpreply import Download, Reply, brief, raise_for
from .objects import Body
from .observer import Observer
from .routing import Router, Via

log = logging.getLogger(__name__)

REDIRECTS = httpconn.REDIRECTS
T = TypeVar("T")


class _NoCookies(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> bool:
        return False


class Transport:
    """Blocking HTTP exchanges with one AIS cluster, retried, routed and error-mapped."""

    def __init__(self, config: ClientConfig, token: Callable[[], str | None] | None = None) -> None:
        self.config = config
        self._token = token or (lambda: None)
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
        self.router = Router("" if config.via_proxy else config.endpoint)
        self._map_lock = threading.Lock()
        self._lean = httpconn.LeanHttp(httpconn.Connections(
            config.connect_timeout, config.read_timeout, config.max_connections,
            httpconn.ssl_context(self._verify, self._cert),
        ))
        # The mount's observer (its metrics), told of every answer and every retry; set by the
        # mount before it serves.
        self.observer: Observer | None = None

    def close(self) -> None:
        self.session.close()
        self._lean.conns.close()

    # ------------------------------------------------------------------ for the REST API

    def call(
        self, method: str, url: str, what: str, *, kind: str, via: Via = Via.PROXY,
        idempotent: bool = True, params: dict[str, str] | None = None, json_body: Any = None,
        data: Body | None = None, headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send one logical request (``what`` names its bucket or object for errors and logs;
        ``kind`` names it for the hooks) and return the answer; a status >= 400 raises."""
        try:
            resp = self._exchange(method, url, what, kind, via, idempotent, params, json_body,
                                  data, headers, stream=False)
        finally:
            if via is Via.SESSION_END:
                self.router.forget(via, url)
        if via is Via.LOOKUP and resp.history:
            self.router.learned(via, url, resp.url, (params or {}).keys())
        return Reply(resp)

    def download(
        self, method: str, url: str, what: str, *, kind: str, via: Via = Via.READ,
        params: dict[str, str] | None = None, json_body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Download:
        """Like :meth:`call` for an idempotent request without object data, but the answer's
        body is left to receive (an object's bytes, an archive member, a Get-Batch stream)."""
        resp = self._exchange(method, url, what, kind, via, True, params, json_body, None,
                              headers, stream=True)
        return Download(resp, what)

    def fetch(
        self, url: str, what: str, receive: Callable[[Download], T], *, kind: str,
        via: Via = Via.READ, params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        """A GET whose body ``receive`` reads whole (into a buffer) and turns into the result.
        A body cut short (``BodyCutShort``: the connection closed, reset or timed out while it
        was received, or it ended before its length) is asked for again, whole, up to
        ``retries`` times with the usual backoff; the request itself is retried as
        :meth:`download`'s."""
        attempt = 0
        while True:
            try:
                with self.download("GET", url, what, kind=kind, via=via, params=params,
                                   headers=headers) as body:
                    return receive(body)
            except errors.BodyCutShort as exc:
                if attempt >= self.config.retries:
                    raise
                attempt = self.backoff(attempt, kind, what, exc.args[0])

    # ------------------------------------------------------------------ retries and errors

    def _exchange(
        self, method: str, url: str, what: str, kind: str, via: Via, idempotent: bool,
        params: dict[str, str] | None, json_body: Any, data: Body | None,
        headers: dict[str, str] | None, *, stream: bool,
    ) -> requests.Response:
        """One logical request with its retries; an error answer raises."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                resp = self._send(method, url, via, params, json_body, data, headers, stream)
            except requests.exceptions.SSLError as exc:
                # A certificate that does not verify will not verify on a retry either.
                raise errors.Transient(f"TLS: {brief(exc)}", 0, what) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                never_sent = isinstance(exc, requests.ConnectTimeout) or _connect_failed(exc)
                if attempt < self.config.retries and (idempotent or never_sent):
                    attempt = self.backoff(attempt, kind, what, exc)
                    continue
                raise errors.Transient(f"{type(exc).__name__}: {brief(exc)}", 0, what) from None
            status = resp.status_code
            if self.observer is not None:
                sent = 0 if data is None or callable(data) else len(data)
                self.observer.request(kind, status, time.monotonic() - started, sent)
            if (status == 429 or status >= 500) and status != 501 and attempt < self.config.retries:
                # 5xx on a non-idempotent request means the target refused it, not half-applied
                # it, except for a timeout in the middle (503 from a proxy is never mid-write).
                if idempotent or status in (429, 503):
                    resp.close()
                    attempt = self.backoff(attempt, kind, what, f"HTTP {status}")
                    continue
            raise_for(resp, what)
            return resp

    def backoff(self, attempt: int, kind: str, what: str, why: object) -> int:
        """Log and sleep before retry ``attempt + 1`` (0.2 s, doubling, at most 5 s); returns
        the next attempt's number."""
        delay = min(5.0, self.config.retry_backoff * (2**attempt))
        level = logging.DEBUG if attempt == 0 else logging.INFO if attempt == 1 else logging.WARNING
        log.log(level, "%s %s: %s; retry %d in %.1fs", kind, what, why, attempt + 1, delay)
        if self.observer is not None:
            self.observer.retry(kind)
        time.sleep(delay)
        return attempt + 1

    # ------------------------------------------------------------------ one attempt, routed

    def _send(
        self, method: str, url: str, via: Via, params: dict[str, str] | None, json_body: Any,
        data: Body | None, headers: dict[str, str] | None, stream: bool,
    ) -> requests.Response:
        hdrs = self._headers(headers)
        if via is not Via.PROXY and self.router.map_wanted():
            self._fetch_map()
        if via is Via.READ:
            return self._send_read(url, params, hdrs)
        if via is Via.LOOKUP and data is None:
            return self._send_lookup(method, url, params, hdrs)
        if data is None:
            return self._http(method, url, params=params, json=json_body, headers=hdrs,
                              stream=stream, allow_redirects=True)
        return self._send_body(method, url, via, params, data, hdrs)

    def _fetch_map(self) -> None:
        """Fetch the cluster map from the proxy, once at a time (a thread that finds another
        fetching goes on with what the router has: the proxy, or the previous map)."""
        if not self._map_lock.acquire(blocking=False):
            return
        try:
            resp = self._http("GET", f"{self.config.endpoint.rstrip('/')}/v1/daemon",
                              params={"what": "smap"}, headers=self._headers(),
                              allow_redirects=True)
            try:
                if resp.status_code != 200:
                    raise ClusterMapError(f"HTTP {resp.status_code}")
                cluster = ClusterMap.from_json(resp.content)
            finally:
                resp.close()
        except (requests.RequestException, urllib3.exceptions.HTTPError,
                http.client.HTTPException, OSError, ClusterMapError) as exc:
            log.debug("cluster map: %s; object requests go through the proxy", brief(exc))
            self.router.set_map(None)
        else:
            self.router.set_map(cluster)
        finally:
            self._map_lock.release()

    def _direct(
        self, method: str, target: str, **kwargs: Any
    ) -> tuple[requests.Response | None, int]:
        """One attempt straight at a computed target: its answer, or None and the status it
        gave (0: unreachable) when the proxy must serve instead (the target refused,
        redirected, or did not have the object: a 404 from a computed target is not final)."""
        try:
            resp = self._http(method, target, allow_redirects=False, **kwargs)
        except requests.ConnectionError:
            self.router.map_outdated()  # the target may have left the cluster
            return None, 0
        status = resp.status_code
        if status < 300 or status == 416:
            return resp, status
        if status in REDIRECTS:
            self.router.map_outdated()
        resp.close()
        return None, status

    def _after_proxy(self, resp: requests.Response, refused: int) -> requests.Response:
        """The proxy served a request a computed target had refused with ``refused``: a
        cluster that wants proxy mediation (AuthN, signed redirects) gets it from now on."""
        if refused in (401, 403) and resp.status_code < 400:
            log.info("the cluster refuses direct requests to targets: every object request "
                     "goes through the proxy")
            self.router.require_proxy()
        return resp

    def _send_lookup(
        self, method: str, url: str, params: dict[str, str] | None, hdrs: dict[str, str]
    ) -> requests.Response:
        """A HEAD: straight to the object's computed target, else through the proxy (whose
        redirect is followed; the caller learns the target that answered)."""
        target = self.router.computed(Via.LOOKUP, url)
        refused = 0
        if target is not None:
            resp, refused = self._direct(method, target, params=params, headers=hdrs)
            if resp is not None:
                return resp
        resp = self._http(method, url, params=params, headers=hdrs, allow_redirects=True)
        if resp.history:
            self.router.check_redirect(Via.LOOKUP, url, resp.url)
        return self._after_proxy(resp, refused)

    def _send_read(
        self, url: str, params: dict[str, str] | None, hdrs: dict[str, str]
    ) -> requests.Response:
        """A GET: to the router's target if it has the object, else through the proxy."""
        target = self.router.target(Via.READ, url)
        if target is not None:
            try:
                resp = self._http("GET", target, params=params, headers=hdrs, stream=True,
                                  allow_redirects=False)
                if resp.status_code in (200, 206, 416):
                    return resp
                resp.close()  # a 404 too: the object may live on another target by now
            except requests.ConnectionError:
                pass  # the target may have left the cluster: ask the proxy again
            self.router.failed(Via.READ, url)
        refused = 0
        computed = self.router.computed(Via.READ, url)
        if computed is not None and computed != target:
            direct, refused = self._direct("GET", computed, params=params, headers=hdrs,
                                           stream=True)
            if direct is not None:
                return direct
        resp = self._http("GET", url, params=params, headers=hdrs, stream=True,
                          allow_redirects=False)
        if resp.status_code in REDIRECTS and "Location" in resp.headers:
            location = resp.headers["Location"]
            resp.close()
            self.router.check_redirect(Via.READ, url, location)
            self.router.learned(Via.READ, url, location, (params or {}).keys())
            resp = self._http("GET", location, headers=hdrs, stream=True, allow_redirects=True)
        return self._after_proxy(resp, refused)

    def _send_body(
        self, method: str, url: str, via: Via, params: dict[str, str] | None, data: Body,
        hdrs: dict[str, str],
    ) -> requests.Response:
        """Object data: to the router's target if it has one, else the proxy is asked where to
        send it with an empty body, and the body is sent once, straight to the target.
        Re-sending megabytes through a redirect wastes them and breaks on TLS when the proxy
        closes early."""
        target = self.router.target(via, url)
        if target is not None:
            resp = self._send_to_target(method, url, via, target, params, data, hdrs)
            if resp is not None:
                return resp
        refused = 0
        computed = self.router.computed(via, url) if target is None else None
        if computed is not None:
            marker = self.router.redirect_marker()
            body = data() if callable(data) else data
            try:
                resp = self._http(method, computed, params={**(params or {}), **marker},
                                  data=body, headers=hdrs, allow_redirects=False)
            except requests.ConnectionError as exc:
                self.router.map_outdated()  # the next attempt asks the proxy
                if not _connect_failed(exc):
                    raise  # the body may have been taken: the retry policy decides
                resp = None
            if resp is not None:
                refused = resp.status_code
                if refused not in (400, 401, 403, 404) and refused not in REDIRECTS:
                    if via is Via.SESSION and refused < 300:
                        self.router.learned(via, url, _with_params(computed, marker),
                                            (params or {}).keys())
                    return resp
                # Refused, so not applied (a redirect: our map is outdated; a 404, say of a
                # multipart upload, is not final from a computed target either).
                if refused in REDIRECTS:
                    self.router.map_outdated()
                resp.close()
        resp = self._http(method, url, params=params, headers={**hdrs, "Content-Length": "0"},
                          allow_redirects=False)
        if resp.status_code in REDIRECTS and "Location" in resp.headers:
            location = resp.headers["Location"]
            resp.close()
            self.router.check_redirect(via, url, location)
            self.router.learned(via, url, location, (params or {}).keys())
            body = data() if callable(data) else data
            resp = self._http(method, location, data=body, headers=hdrs, allow_redirects=False)
        return self._after_proxy(resp, refused)

    def _send_to_target(
        self, method: str, url: str, via: Via, target: str, params: dict[str, str] | None,
        data: Body, hdrs: dict[str, str],
    ) -> requests.Response | None:
        """The request straight to ``target``: one round trip to the proxy less. None when the
        target wants the proxy."""
        body = data() if callable(data) else data
        try:
            resp = self._http(method, target, params=params, data=body, headers=hdrs,
                              allow_redirects=False)
        except requests.ConnectionError:
            self.router.failed(via, url)  # the target may be gone: ask the proxy
            raise
        if resp.status_code in (400, 401, 403):
            # Refused, so not applied: a cluster that signs redirects wants a fresh one.
            resp.close()
            self.router.failed(via, url)
            return None
        return resp

    # ------------------------------------------------------------------ HTTP

    def _http(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        origin = url[:url.find("/", url.find("//") + 2)]  # scheme://host:port
        proxies = self._proxies_of(origin)
        data = kwargs.get("data")
        if not proxies and (data is None or isinstance(data, bytes | bytearray | memoryview)):
            return self._lean.request(method, url, origin, **kwargs)
        return self.session.request(
            method, url, timeout=self._timeout, verify=self._verify, cert=self._cert,
            proxies=proxies, **kwargs
        )

    def plain_http(self, origin: str) -> bool:
        """Whether requests to ``origin`` (``scheme://host:port``) go over plain HTTP with no
        proxy from the environment: what ``trioconn`` can carry."""
        return origin.startswith("http://") and not self._proxies_of(origin)

    def headers_without_io(self) -> dict[str, str] | None:
        """The headers :meth:`_headers` adds to every request (the token), when getting them
        needs no I/O; None when it would (a token file whose periodic check is due)."""
        without_io = getattr(self._token, "without_io", None)  # auth.TokenSource's
        if without_io is None:  # a plain callable: the token was given, not read from a file
            return self._headers()
        ready, token = without_io()
        if not ready:
            return None
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _proxies_of(self, origin: str) -> dict[str, str]:
        proxies = self._proxies.get(origin)
        if proxies is None:  # HTTP(S)_PROXY / NO_PROXY, as requests would apply them
            proxies = self._proxies[origin] = requests.utils.get_environ_proxies(origin)
        return proxies

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers


def _with_params(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(params)}"


def _connect_failed(exc: BaseException) -> bool:
    """True when the request never reached a server (safe to retry anything)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, urllib3.exceptions.NewConnectionError | ConnectionRefusedError
                      | httpconn.NotConnected):
            return True
        reason = getattr(cur, "reason", None)  # urllib3 wraps the cause in .reason
        first_arg = cur.args[0] if cur.args else None
        cur = (cur.__cause__ or cur.__context__
               or (reason if isinstance(reason, BaseException) else None)
               or (first_arg if isinstance(first_arg, BaseException) else None))
    return False



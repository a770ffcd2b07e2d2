"""A fault-injecting HTTP relay in front of the real AIS cluster, for failure tests.

aisfs is pointed at ``FaultProxy.url`` instead of the AIS proxy. Every request is relayed to the
cluster unless a rule added with :meth:`FaultProxy.fail` matches it; then the relay answers with
an error status, resets the connection, stalls without answering, relays the answer with its
body cut short, or relays the request and resets the connection instead of answering ("lose":
the cluster did the work, the answer is lost). AIS redirects object requests from its proxy to
a target: the relay rewrites each ``Location``, and each target's public URL in the cluster map
it relays, to a listener of its own for that target, so object traffic passes through it too
(direct to targets or not). :meth:`FaultProxy.flaky` resets random connections to the targets
instead, in proportion to the bytes they carry: before the request reaches the target (nothing
applied) or after its answer came back (applied, answer lost).

Concurrency: one thread per connection (``ThreadingHTTPServer``); rules and the request log are
guarded by one lock. Loopback only; every upstream call has a timeout.
"""

from __future__ import annotations

import http.client
import http.server
import json
import random
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass

ACTIONS = ("status", "reset", "stall", "cut", "lose")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Rule:
    method: str  # "" matches any
    path: str  # a substring of the request path (with its query)
    action: str  # one of ACTIONS
    times: int  # how many more requests it applies to
    status: int = 503
    body_contains: bytes = b""  # and a substring of the request body
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return (self.times > 0 and (not self.method or self.method == method)
                and self.path in path and self.body_contains in body)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str]] = []  # (method, path) of every request relayed or failed
        self.upstream = upstream.rstrip("/")
        # (upstream origin, method, path) of the same requests: which node each was meant for
        self.routed: list[tuple[str, str, str]] = []
        self._servers: dict[str, http.server.ThreadingHTTPServer] = {}  # upstream origin -> ours
        self._upstream = upstream.rstrip("/")
        self.url = self._listener(self._upstream)
        self._reset_rate = 0.0
        self._random = random.Random(0)
        self.resets = {"before": 0, "after": 0}  # flaky resets: request lost / answer lost

    def flaky(self, rate: float, seed: int = 0) -> None:
        """Reset each connection to a target with probability ``rate`` per 64 KiB it carries
        (request and answer body; at least one unit per request), half of them before the
        request is relayed and half after its answer came back."""
        with self._lock:
            self._reset_rate = rate
            self._random = random.Random(seed)

    def fail(self, method: str, path: str, action: str, *, times: int = 1, status: int = 503,
             body_contains: bytes = b"") -> Rule:
        assert action in ACTIONS, action
        rule = Rule(method, path, action, times, status, body_contains)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def close(self) -> None:
        self._stop.set()
        for server in list(self._servers.values()):
            server.shutdown()
            server.server_close()

    # ------------------------------------------------------------------ internals

    def _listener(self, origin: str) -> str:
        """Our URL for an upstream origin ("http://host:port"), listening from the first use."""
        with self._lock:
            server = self._servers.get(origin)
            if server is None:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler(origin))
                server.daemon_threads = True
                threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
                self._servers[origin] = server
        return f"http://127.0.0.1:{server.server_address[1]}"

    def _rule_for(self, method: str, path: str, body: bytes, origin: str = "") -> Rule | None:
        with self._lock:
            self.log.append((method, path))
            self.routed.append((origin, method, path))
            for rule in self.rules:
                if rule.matches(method, path, body):
                    rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def _flaky_reset(self, origin: str, size: int) -> str:
        """Whether to reset a request of ``size`` bytes to ``origin``: "", "before" or "after"."""
        if origin == self._upstream:
            return ""  # the AIS proxy: only target traffic is made flaky
        with self._lock:
            if self._reset_rate <= 0:
                return ""
            units = max(1, size // (64 * 1024))
            if self._random.random() >= 1 - (1 - self._reset_rate) ** units:
                return ""
            when = self._random.choice(("before", "after"))
            self.resets[when] += 1
            return when

    def _give_back(self, rule: Rule | None) -> bool:
        """A "cut" rule matched a response with no body to cut: it applies to a later one."""
        if rule is not None:
            with self._lock:
                rule.times += 1
                rule.hits -= 1
        return False

    def _handler(self, origin: str) -> type[http.server.BaseHTTPRequestHandler]:
        relay = self
        target = urllib.parse.urlsplit(origin)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reset(self) -> None:
                # RST instead of FIN: the client sees "connection reset by peer".
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.close_connection = True

            def _any(self) -> None:
                body = self._body()
                rule = relay._rule_for(self.command, self.path, body, origin)
                if rule is not None and rule.action == "reset":
                    self._reset()
                    return
                flaky = relay._flaky_reset(origin, len(body)) if rule is None else ""
                if rule is not None and rule.action == "lose":
                    flaky = "after"
                if flaky == "before":
                    self._reset()
                    return
                if flaky == "after":
                    self._relay(body, None, reset_after=True)
                    return
                if rule is not None and rule.action == "stall":
                    relay._stop.wait(60)
                    self.close_connection = True
                    return
                if rule is not None and rule.action == "status":
                    text = json.dumps({"message": "injected by the test's fault proxy",
                                       "status": rule.status}).encode()
                    self.send_response(rule.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(text)
                    return
                self._relay(body, rule)

            def _relay(self, body: bytes, rule: Rule | None, reset_after: bool = False) -> None:
                cut = rule is not None
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port,
                                                  timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if reset_after:  # the target did the work; its answer is lost
                        self._reset()
                        return
                    if (self.command == "GET" and self.path.startswith("/v1/daemon?")
                            and "what=smap" in self.path and resp.status == 200):
                        data = relay._rewrite_smap(data)
                    if cut and (resp.status >= 300 or len(data) < 2):
                        cut = relay._give_back(rule)  # a redirect or no body: the next one
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() in _HOP_BY_HOP:
                            continue
                        if k.lower() == "location":
                            v = relay._rewrite(v)
                        self.send_header(k, v)
                    # A HEAD's Content-Length is the object's size, not this (empty) body's.
                    length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", length or str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    if cut:  # half the body, then the connection goes away
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = _any

        return Handler

    def _rewrite_smap(self, data: bytes) -> bytes:
        """The cluster map with each target's public URL one of our listeners: a client that
        sends object requests straight to targets sends them through the relay too."""
        doc = json.loads(data)
        for node in (doc.get("tmap") or {}).values():
            net = node.get("public_net") or {}
            if net.get("direct_url"):
                net["direct_url"] = self._rewrite(net["direct_url"])
        return json.dumps(doc).encode()

    def _rewrite(self, location: str) -> str:
        parts = urllib.parse.urlsplit(location)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            return location
        ours = self._listener(f"{parts.scheme}://{parts.netloc}")
        return urllib.parse.urlunsplit(urllib.parse.urlsplit(ours)[:2] + parts[2:])

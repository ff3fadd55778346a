"""A small real HTTP proxy on 127.0.0.1 in front of the moto S3 server, injecting the faults a real store
and network produce; the client under test is the real s3fs/botocore stack, pointed at the proxy.

    proxy = S3FaultProxy(upstream)           # upstream: the moto endpoint URL
    proxy.inject("PUT", r"/manifest/gen-000002\\.json$", "apply_then_drop")
    Bucket.from_url(url, endpoint_url=proxy.url)

Faults (each rule fires on the next `times` requests whose method and path match, then retires):
- `"500"`, `"503"`: answer with that S3 error, without forwarding (the request never happened);
- `"apply_then_500"`: forward (the store applies the request), then answer 500 instead of its reply;
- `"apply_then_drop"`: forward, then close the connection with no reply at all (a lost reply);
- `"strip_condition"`: forward; if the store answers 412, remove the `<Condition>` element from the error
  (stores that answer a failed `If-None-Match: *` with a bare 412 PreconditionFailed);
- `"forward"` with `before=fn`: call `fn()` (e.g. another writer's request straight to the store), then forward:
  something lands between what the client read and what it writes.
Every request seen is logged in `proxy.log` as (method, path, query, headers) for the tests to check.
"""
from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACTIONS = ("500", "503", "apply_then_500", "apply_then_drop", "strip_condition", "forward")
_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test '
          'proxy</Message><RequestId>proxy</RequestId></Error>')
_CODES = {500: "InternalError", 503: "SlowDown"}
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}


@dataclass
class Rule:
    method: str
    path: re.Pattern
    action: str
    times: int
    fired: int = 0
    before: Callable[[], None] | None = None


class S3FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: list[Rule] = []
        self.log: list[tuple[str, str, str, dict[str, str]]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def inject(self, method: str, path: str, action: str, times: int = 1,
               before: Callable[[], None] | None = None) -> Rule:
        """Apply `action` to the next `times` requests with this method whose path matches the regex `path`
        (`before`: called first, before the request goes anywhere)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}; use one of {ACTIONS}")
        rule = Rule(method.upper(), re.compile(path), action, times, before=before)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def requests(self, method: str, path: str) -> list[tuple[str, str, str, dict[str, str]]]:
        """Logged requests with this method whose path matches the regex `path`."""
        with self._lock:
            return [r for r in self.log if r[0] == method.upper() and re.search(path, r[1])]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _match(self, method: str, path: str, query: str, headers: dict[str, str]) -> str | None:
        rule = None
        with self._lock:
            self.log.append((method, path, query, headers))
            for r in self.rules:
                if r.fired < r.times and r.method == method and r.path.search(path):
                    r.fired += 1
                    rule = r
                    break
        if rule is None:
            return None
        if rule.before is not None:
            rule.before()
        return rule.action


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: S3FaultProxy

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        """The request body exactly as sent (chunked framing kept: it is forwarded with its header)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = bytearray()
            while True:
                line = self.rfile.readline()
                raw += line
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        t = self.rfile.readline()
                        raw += t
                        if t in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        split = urlsplit(self.path)
        body = self._body()
        headers = {k: v for k, v in self.headers.items()}
        action = self.owner._match(self.command, split.path, split.query, headers)
        if action in ("500", "503"):
            return self._reply(int(action), {"Content-Type": "application/xml"},
                               _ERROR.format(code=_CODES[int(action)]).encode())
        conn = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            fwd = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            conn.request(self.command, self.path, body=body if body or self.command in ("PUT", "POST") else None,
                         headers=fwd)
            resp = conn.getresponse()
            status, out_headers, data = resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()
        if action == "apply_then_drop":  # applied upstream; the client never hears back
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return None
        if action == "apply_then_500":
            return self._reply(500, {"Content-Type": "application/xml"}, _ERROR.format(code="InternalError").encode())
        if action == "strip_condition" and status == 412:
            data = re.sub(rb"<Condition>[^<]*</Condition>", b"", data)
        keep = {k: v for k, v in out_headers if k.lower() not in _HOP}
        if self.command == "HEAD":
            keep["Content-Length"] = {k.lower(): v for k, v in out_headers}.get("content-length", "0")
            return self._reply(status, keep, b"", head=True)
        return self._reply(status, keep, data)

    def _reply(self, status: int, headers: dict[str, str], data: bytes, head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("server", "date"):
                self.send_header(k, v)
        if not head:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

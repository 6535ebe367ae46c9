"""A fault proxy in front of the MLflow server: forwards every request, or answers 500 on cue."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

INJECTED_BODY = json.dumps({"error_code": "INTERNAL_ERROR", "message": "injected fault"}).encode()
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


@dataclass
class FaultRules:
    """Which requests fail: (HTTP method, path fragment) pairs; counts what was injected."""

    failing: set[tuple[str, str]] = field(default_factory=set)
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, method: str, path: str) -> bool:
        with self.lock:
            hit = any(method == m and fragment in path for m, fragment in self.failing)
            self.injected += hit
            return hit


def _handler(upstream: str, rules: FaultRules) -> type[BaseHTTPRequestHandler]:
    target = urlparse(upstream)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: the test prints its own summary
            return

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if rules.should_fail(self.command, self.path):
                self._answer(500, INJECTED_BODY, {"Content-Type": "application/json"})
                return
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = {k: v for k, v in response.getheaders() if k.lower() not in HOP_HEADERS}
            conn.close()
            self._answer(response.status, payload, kept)

        def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    return Forward


@contextmanager
def fault_proxy(upstream: str) -> Iterator[tuple[str, FaultRules]]:
    """Serve a proxy to `upstream` on a free local port; yields (its URL, its rules)."""
    rules = FaultRules()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, rules))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", rules
    finally:
        server.shutdown()
        server.server_close()

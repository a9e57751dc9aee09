"""A scripted HTTP server on 127.0.0.1 for injecting LLM-server faults (429, 5xx, pages that are not JSON):
answers a healthy llama.cpp server will not give on demand. The real server is tested in test_llm_server.py."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class FaultServer:
    """Serves ``script``'s (status, headers, body) answers in order, then ``then`` for every later request (a 500
    "script exhausted" if none); records when each request came and its JSON body. A body that is not bytes or
    str is sent as JSON; Content-Type is application/json unless the answer's headers set it."""

    def __init__(self, script: list[tuple[int, dict, object]], then: tuple[int, dict, object] | None = None):
        self.script = list(script)
        self.then = then or (500, {}, "script exhausted")
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("content-length", 0))
                outer.bodies.append(json.loads(self.rfile.read(n)))
                outer.arrivals.append(time.monotonic())
                status, headers, body = outer.script.pop(0) if outer.script else outer.then
                data = (body if isinstance(body, bytes) else body.encode() if isinstance(body, str)
                        else json.dumps(body).encode())
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="session")
def fault_server():
    """The FaultServer class (test modules here take it as a fixture, as tests/serve does its helpers)."""
    return FaultServer

"""The preflight request checks what a 200 answer holds: a real HTTP server on 127.0.0.1 that answers
every POST with 200 and a web page, or with JSON that is no completion, must fail the preflight at
once, naming what came back. The real llama.cpp server passing the same preflight is in
test_llm_server.py (test_preflight_accepts_the_real_server)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.llm.client import preflight
from domain_embed.schema import typed


class Always200:
    """Answers every POST with 200, ``body`` and ``content_type``; counts the requests."""

    def __init__(self, body: bytes, content_type: str):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

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


def _remote(url: str, *more: str):
    return typed(load_config(None, ["llm=nim", f"llm.base_url={url}", "llm.api_key_env=", *more], save=False)).llm


HTML = b"<html>\n<head><title>Welcome to nginx!</title></head>\n<body>Welcome to nginx</body></html>"


@pytest.mark.parametrize("body,ctype,needles", [
    (HTML, "text/html", ["a body that is not JSON", "text/html", "Welcome to nginx"]),
    (b'{"foo": 1}', "application/json", ["no 'choices' list (keys: foo)", "application/json", '{"foo": 1}']),
    (json.dumps({"choices": [{"index": 0, "text": "x"}]}).encode(), "application/json",
     ["no choices[0].message.content"]),
    (b"", "text/plain", ["a body that is not JSON", "an empty body"]),
], ids=["html", "json_without_choices", "completion_not_chat", "empty"])
def test_200_that_is_not_a_chat_completion_fails_at_once(body, ctype, needles):
    with Always200(body, ctype) as srv:
        with pytest.raises(UserError) as ei:
            preflight(_remote(srv.url), srv.url, pause_s=0.01)
    msg = str(ei.value)
    assert f"{srv.url}/chat/completions answered HTTP 200" in msg, msg
    assert all(n in msg for n in needles), msg
    assert f"llm.base_url (now {srv.url}) must be the OpenAI-compatible /v1 root of an LLM server" in msg
    assert "No generation was sent" in msg and "\n" not in msg
    assert srv.requests == 1, "the same URL gives the same page: not retried"


def test_completion_style_needs_choices_text():
    """The local base-model path asks /v1/completions and reads choices[0].text."""
    chat = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    with Always200(json.dumps(chat).encode(), "application/json") as srv:
        llm = typed(load_config(None, [f"llm.base_url={srv.url}", "llm.local.prompt_style=completion"], save=False)).llm
        with pytest.raises(UserError, match=r"/v1/completions answered HTTP 200 .*no choices\[0\].text string"):
            preflight(llm, srv.url, pause_s=0.01)


def test_a_chat_completion_passes():
    ok = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "P"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    with Always200(json.dumps(ok).encode(), "application/json") as srv:
        assert preflight(_remote(srv.url), srv.url) >= 0
    assert srv.requests == 1

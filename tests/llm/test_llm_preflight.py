"""The preflight request checks what a 200 answer holds: a real HTTP server on 127.0.0.1 that answers
every POST with 200 and a web page, or with JSON that is no completion, must fail the preflight at
once, naming what came back. The real llama.cpp server passing the same preflight is in
test_llm_server.py (test_preflight_accepts_the_real_server)."""

from __future__ import annotations

import json

import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.llm.client import preflight
from domain_embed.schema import typed


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
def test_200_that_is_not_a_chat_completion_fails_at_once(body, ctype, needles, fault_server):
    with fault_server([], then=(200, {"Content-Type": ctype}, body)) as srv:
        with pytest.raises(UserError) as ei:
            preflight(_remote(srv.url), srv.url, pause_s=0.01)
    msg = str(ei.value)
    assert f"{srv.url}/chat/completions answered HTTP 200" in msg, msg
    assert all(n in msg for n in needles), msg
    assert f"llm.base_url (now {srv.url}) must be the OpenAI-compatible /v1 root of an LLM server" in msg
    assert "No generation was sent" in msg and "\n" not in msg
    assert len(srv.arrivals) == 1, "the same URL gives the same page: not retried"


def test_completion_style_needs_choices_text(fault_server):
    """The local base-model path asks /v1/completions and reads choices[0].text."""
    chat = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}]}
    with fault_server([], then=(200, {"Content-Type": "application/json"}, json.dumps(chat).encode())) as srv:
        llm = typed(load_config(None, [f"llm.base_url={srv.url}", "llm.local.prompt_style=completion"], save=False)).llm
        with pytest.raises(UserError, match=r"/v1/completions answered HTTP 200 .*no choices\[0\].text string"):
            preflight(llm, srv.url, pause_s=0.01)


def test_a_chat_completion_passes(fault_server):
    ok = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "P"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    with fault_server([], then=(200, {"Content-Type": "application/json"}, json.dumps(ok).encode())) as srv:
        assert preflight(_remote(srv.url), srv.url) >= 0
    assert len(srv.arrivals) == 1

"""The real local LLM server (llama.cpp from the xllamacpp wheel, SmolLM2-135M-Instruct GGUF)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.llm.client import LLMClient
from domain_embed.llm.server import local_llm
from domain_embed.schema import typed


@pytest.fixture(scope="module")
def llm_url():
    cfg = typed(load_config(None, [], save=False))
    with local_llm(cfg.llm) as url:
        yield url


def test_real_server_answers_chat_completion(llm_url):
    assert llm_url.startswith("http://127.0.0.1:") and llm_url.endswith("/v1")
    models = httpx.get(f"{llm_url}/models", timeout=30).json()
    assert any(m["id"] == "SmolLM2-135M-Instruct" for m in models["data"])

    async def go():
        async with LLMClient(llm_url, "SmolLM2-135M-Instruct", timeout_s=300) as c:
            comp = await c.chat([{"role": "user", "content": "Name one SQL command."}], max_tokens=8, temperature=0)
            return comp, c.stats
    comp, stats = asyncio.run(go())
    assert comp.text.strip()
    assert 0 < comp.completion_tokens <= 8 and comp.prompt_tokens > 0
    assert stats.requests == 1 and stats.completion_tokens == comp.completion_tokens


def test_real_server_json_schema_answer(llm_url):
    schema = {"type": "object", "properties": {"question": {"type": "string", "minLength": 2, "maxLength": 80}},
              "required": ["question"]}

    async def go():
        async with LLMClient(llm_url, "SmolLM2-135M-Instruct", timeout_s=300, structured_output=True) as c:
            return await c.chat_json([{"role": "user", "content": "Write a question about database indexes as JSON."}],
                                     schema, max_tokens=40, temperature=0)
    obj, _ = asyncio.run(go())
    assert isinstance(obj["question"], str) and len(obj["question"]) >= 2


def test_real_server_completion_style_few_shot(llm_url):
    """The base-model path (/v1/completions, few-shot text, one line) against the real server."""
    from domain_embed.synth.prompts import completion_prompt

    ex = [{"passages": ["VACUUM reclaims storage occupied by dead tuples."], "question": "What does VACUUM reclaim?"}]
    prompt = completion_prompt("factual", ["A partial index is built over a subset of a table."], ex)

    async def go():
        async with LLMClient(llm_url, "SmolLM2-135M-Instruct", timeout_s=300) as c:
            return await c.complete(prompt, max_tokens=24, temperature=0, stop=["\n"])
    comp = asyncio.run(go())
    assert "\n" not in comp.text and 0 < comp.completion_tokens <= 24


def test_preflight_accepts_the_real_server(llm_url):
    """The preflight's check of the answer's shape (test_llm_preflight.py) passes the real server's
    chat and completion answers."""
    from domain_embed.llm.client import preflight

    for style in ("chat", "completion"):
        llm = typed(load_config(None, [f"llm.local.prompt_style={style}"], save=False)).llm
        assert preflight(llm, llm_url) > 0


def test_local_llm_stops_its_server():
    cfg = typed(load_config(None, [], save=False))
    with local_llm(cfg.llm) as url:
        assert httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=5)


def test_server_child_dies_with_its_parent(tmp_path):
    """A killed pipeline must not leave a llama.cpp server behind (PDEATHSIG + parent watch)."""
    code = ("import time; from domain_embed.config import load_config; from domain_embed.llm.server import "
            "start_local_server as s; from domain_embed.schema import typed; "
            "srv = s(typed(load_config(None, [], save=False)).llm); "
            "print(srv.proc.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        # reap if it became our zombie (it is not our child, so just poll)
        time.sleep(0.2)
    else:
        os.kill(child_pid, 9)
        pytest.fail("the LLM server outlived its parent")


def test_remote_without_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DE_TEST_MISSING_KEY", raising=False)
    cfg = typed(load_config(None, ["llm=nim", "llm.api_key_env=DE_TEST_MISSING_KEY"], save=False))
    with pytest.raises(UserError, match="DE_TEST_MISSING_KEY"):
        with local_llm(cfg.llm):
            pass
    monkeypatch.setenv("DE_TEST_MISSING_KEY", "k")
    with local_llm(cfg.llm) as url:
        assert url == "https://integrate.api.nvidia.com/v1"


def test_missing_weights_is_a_clear_error(tmp_path):
    cfg = typed(load_config(None, [f"llm.local.weights={tmp_path}/nope.gguf"], save=False))
    with pytest.raises(UserError, match="not a file"):
        with local_llm(cfg.llm):
            pass


def test_a_file_that_is_not_gguf_is_named_before_llama_cpp_starts(tmp_path):
    """llama.cpp used to answer a traceback ending in "Failed to init server, please check the input params"."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>not a model</html>" * 100)
    cfg = typed(load_config(None, [f"llm.local.weights={bad}"], save=False))
    with pytest.raises(UserError, match=r"is not a GGUF model .* starts with b'<htm'") as ei:
        with local_llm(cfg.llm):
            pass
    assert "Traceback" not in str(ei.value)


def test_a_truncated_gguf_is_named_with_llama_cpps_reason(tmp_path):
    """The real model cut in half (an interrupted download): the real llama.cpp refuses it, and the error says why
    and what to do instead of a Python traceback."""
    from domain_embed.config import resolve_path

    real = resolve_path(typed(load_config(None, [], save=False)).llm.local.weights)
    half = tmp_path / "half.gguf"
    with open(real, "rb") as src:
        half.write_bytes(src.read(real.stat().st_size // 2))
    cfg = typed(load_config(None, [f"llm.local.weights={half}"], save=False))
    with pytest.raises(UserError) as ei:
        with local_llm(cfg.llm):
            pass
    msg = str(ei.value)
    assert f"llama.cpp could not load llm.local.weights={half}" in msg, msg
    assert "not within the file bounds" in msg and "truncated or corrupt" in msg and "download it again" in msg
    assert "Traceback" not in msg and "check the input params" not in msg


def test_cli_llm_serve_answers_and_stops_on_ctrl_c(port):
    bin_ = os.path.join(os.path.dirname(sys.executable), "domain-embed")
    proc = subprocess.Popen([bin_, "llm", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        ok = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ok = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                ok = False
            if ok:
                break
            time.sleep(0.2)
        assert ok, proc.stderr.read() if proc.poll() is not None else "no /health answer"
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
        assert r.json()["data"][0]["id"] == "SmolLM2-135M-Instruct"
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)

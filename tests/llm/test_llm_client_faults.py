"""Fault injection for the LLM client: a tiny local HTTP server that answers 429 with Retry-After,
5xx, 4xx or malformed JSON, scripted per request. The real-server behaviour is tested beside this in
test_llm_server.py; these cases are ones a healthy server will not produce on demand."""

from __future__ import annotations

import asyncio
import time

import pytest

from domain_embed.llm.client import LLMClient, LLMError, extract_json

SCHEMA = {"type": "object", "properties": {"question": {"type": "string", "minLength": 2}}, "required": ["question"]}


def _chat_body(content: str) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def _client(url: str, **kw) -> LLMClient:
    kw = {"max_retries": 3, "timeout_s": 5, "backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw}
    return LLMClient(url, "m", **kw)


def test_429_honours_retry_after_then_succeeds(fault_server):
    script = [(429, {"Retry-After": "1"}, {"error": "slow down"}), (200, {}, _chat_body("hello"))]
    with fault_server(script) as srv:
        async def go():
            async with _client(srv.url) as c:
                comp = await c.chat([{"role": "user", "content": "hi"}])
                return comp, c.stats
        comp, stats = asyncio.run(go())
    assert comp.text == "hello"
    assert stats.transient["http_429"] == 1 and stats.retries == 1 and not stats.failures
    # The backoff alone is <= 0.05 s here, so the gap comes from Retry-After.
    assert srv.arrivals[1] - srv.arrivals[0] >= 0.9
    assert stats.prompt_tokens == 10 and stats.completion_tokens == 5


def test_5xx_exhausts_retries_and_counts_failure_kind(fault_server):
    with fault_server([(503, {}, "down")] * 4) as srv:
        async def go():
            async with _client(srv.url) as c:
                with pytest.raises(LLMError) as ei:
                    await c.chat([{"role": "user", "content": "hi"}])
                return ei.value, c.stats
        err, stats = asyncio.run(go())
    assert err.kind == "http_5xx"
    assert stats.requests == 4 and stats.failures["http_5xx"] == 1


def test_400_is_not_retried(fault_server):
    with fault_server([(400, {}, {"error": "bad request"}), (200, {}, _chat_body("x"))]) as srv:
        async def go():
            async with _client(srv.url) as c:
                with pytest.raises(LLMError) as ei:
                    await c.chat([{"role": "user", "content": "hi"}])
                return ei.value, c.stats
        err, stats = asyncio.run(go())
    assert err.kind == "http_400" and stats.requests == 1


def test_malformed_json_is_repaired_on_a_second_turn(fault_server):
    script = [(200, {}, _chat_body('Sure! {"question": "What is MVCC?", ')),  # torn JSON
              (200, {}, _chat_body('```json\n{"question": "What is MVCC?"}\n```'))]
    with fault_server(script) as srv:
        async def go():
            async with _client(srv.url) as c:
                obj, _ = await c.chat_json([{"role": "user", "content": "q"}], SCHEMA, repair_attempts=1)
                return obj, c.stats
        obj, stats = asyncio.run(go())
    assert obj == {"question": "What is MVCC?"}
    assert stats.repairs == 1 and stats.repaired == 1
    # The repair turn shows the model its own answer and the error.
    repair_msgs = srv.bodies[1]["messages"]
    assert repair_msgs[-2]["role"] == "assistant" and "not valid" in repair_msgs[-1]["content"]


def test_schema_violation_fails_after_repairs(fault_server):
    script = [(200, {}, _chat_body('{"answer": "no question"}'))] * 2
    with fault_server(script) as srv:
        async def go():
            async with _client(srv.url) as c:
                with pytest.raises(LLMError) as ei:
                    await c.chat_json([{"role": "user", "content": "q"}], SCHEMA, repair_attempts=1)
                return ei.value, c.stats
        err, stats = asyncio.run(go())
    assert err.kind == "schema" and stats.failures["schema"] == 1


def test_200_with_non_json_body_is_retried(fault_server):
    with fault_server([(200, {}, "<html>proxy error</html>"), (200, {}, _chat_body("ok"))]) as srv:
        async def go():
            async with _client(srv.url) as c:
                return (await c.chat([{"role": "user", "content": "hi"}])).text, c.stats
        text, stats = asyncio.run(go())
    assert text == "ok" and stats.transient["bad_response"] == 1


def test_extract_json_variants():
    assert extract_json('{"a": 1}') == {"a": 1}
    assert extract_json('Here you go: {"a": {"b": "}"}} thanks') == {"a": {"b": "}"}}
    assert extract_json('```json\n{"a": [1, 2,],}\n```') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("no json here")
    with pytest.raises(ValueError):
        extract_json('{"a": 1')


def test_rate_limit_spaces_request_starts():
    """requests_per_minute=600: the i-th of several concurrent starts comes >= i * 0.1 s after the first
    call (a loaded machine can only make starts later, never earlier)."""
    from domain_embed.llm.client import RateLimiter

    async def go():
        rl = RateLimiter(600)
        t0 = time.monotonic()

        async def one():
            await rl.wait()
            return time.monotonic() - t0
        return sorted(await asyncio.gather(*(one() for _ in range(4))))
    starts = asyncio.run(go())
    assert all(t >= i * 0.1 - 1e-3 for i, t in enumerate(starts))
    assert RateLimiter(0).interval == 0

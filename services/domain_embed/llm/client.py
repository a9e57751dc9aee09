"""An async client for OpenAI-compatible endpoints (NIM, build.nvidia.com, the local llama.cpp server).

What it adds over a bare HTTP call, because a synthesis run makes thousands of requests:

* a concurrency limit and a requests-per-minute limit shared by all callers;
* a per-request timeout, and retries with exponential backoff and full jitter on 429 (honouring
  ``Retry-After``), 5xx, timeouts and connection errors -- but not on other 4xx, which will not heal;
* JSON answers: extraction from prose or code fences, jsonschema validation, and a repair turn that
  shows the model its error before giving up;
* accounting: requests, retries, prompt/completion tokens, and failures by kind.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema

from ..errors import UserError
from ..schema import LLMConfig, LLMKind, PromptStyle, as_section

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(Exception):
    """A request that failed for good. ``kind`` is the accounting bucket (http_429, timeout, invalid_json, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class Stats:
    requests: int = 0           # HTTP requests sent, retries included
    succeeded: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    repairs: int = 0            # JSON repair turns sent
    repaired: int = 0           # ... that produced a valid answer
    failures: Counter = field(default_factory=Counter)   # final failures by kind
    transient: Counter = field(default_factory=Counter)  # retried errors by kind

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "succeeded": self.succeeded, "retries": self.retries,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "json_repairs": self.repairs, "json_repaired": self.repaired,
            "failures": dict(self.failures), "transient_errors": dict(self.transient),
        }


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (0 = unlimited)."""

    def __init__(self, requests_per_minute: float):
        self.interval = 60.0 / requests_per_minute if requests_per_minute and requests_per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


# ---------------------------------------------------------------- JSON extraction
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _balanced(text: str, start: int) -> str | None:
    """The balanced {...} or [...] starting at ``start``, respecting strings."""
    open_ch = text[start]
    close_ch = "}" if open_ch == "{" else "]"
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
            continue
        if c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return text[start : i + 1] if c == close_ch else None
    return None


def _lenient_loads(s: str) -> Any:
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    # Common small-model slips: trailing commas, smart quotes.
    fixed = re.sub(r",\s*([}\]])", r"\1", s.replace("\u201c", '"').replace("\u201d", '"'))
    return json.loads(fixed)


def extract_json(text: str) -> Any:
    """The first JSON object (or array) in ``text``: bare, fenced, or embedded in prose.

    Raises ``ValueError`` with a short reason when there is none.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_err = "no JSON object found"
    for cand in candidates:
        cand = cand.strip()
        for i, c in enumerate(cand):
            if c not in "{[":
                continue
            block = _balanced(cand, i)
            if block is None:
                last_err = "unterminated JSON"
                continue
            try:
                return _lenient_loads(block)
            except json.JSONDecodeError as exc:
                last_err = f"invalid JSON ({exc.msg} at char {exc.pos})"
    raise ValueError(last_err)


def validate(obj: Any, schema: dict[str, Any]) -> str | None:
    """None if ``obj`` matches ``schema``, else a one-line reason."""
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "root"
        return f"{where}: {exc.message}"[:300]
    return None


# ---------------------------------------------------------------- the client
class LLMClient:
    """Async OpenAI-compatible client. Use as ``async with LLMClient(...) as c:``."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, concurrency: int = 2,
                 requests_per_minute: float = 0, timeout_s: float = 120, max_retries: int = 5,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0, structured_output: bool = False,
                 max_retry_after_s: float = 300.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        # Send the JSON schema as response_format (llama.cpp and NIM constrain decoding with it).
        self.structured_output = structured_output
        self.stats = Stats()
        self.concurrency = max(1, int(concurrency))
        self._sem = asyncio.Semaphore(self.concurrency)
        self._rate = RateLimiter(requests_per_minute)
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, llm: LLMConfig, base_url: str, **overrides: Any) -> "LLMClient":
        """From the ``llm`` section (typed; a DictConfig section is checked against the schema)."""
        llm = as_section(llm, LLMConfig)
        kw = dict(
            base_url=base_url, model=llm.model, api_key=api_key(llm),
            # requests_per_minute and timeout_s are numbers as given (120 or 0.5)
            concurrency=llm.concurrency, requests_per_minute=float(llm.requests_per_minute or 0),
            timeout_s=float(llm.timeout_s), max_retries=llm.max_retries,
            structured_output=llm.structured_output,
        )
        kw.update(overrides)
        return cls(**kw)

    async def __aenter__(self) -> "LLMClient":
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        limits = httpx.Limits(max_connections=self.concurrency + 2)
        self._http = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout_s), limits=limits)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._http is not None:
            await self._http.aclose()

    def _backoff(self, attempt: int) -> float:
        # Full jitter (AWS architecture blog): spreads retries of many concurrent callers.
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt)))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None, "use `async with LLMClient(...)`"
        url = f"{self.base_url}/{path}"
        last: LLMError | None = None
        for attempt in range(self.max_retries + 1):
            wait: float | None = None
            async with self._sem:
                await self._rate.wait()
                self.stats.requests += 1
                try:
                    resp = await self._http.post(url, json=body)
                except httpx.TimeoutException as exc:
                    last = LLMError("timeout", f"no answer within {self.timeout_s}s ({type(exc).__name__})")
                except httpx.TransportError as exc:
                    last = LLMError("connection", f"{type(exc).__name__}: {exc}")
                else:
                    if resp.status_code == 200:
                        try:
                            data = resp.json()
                        except (json.JSONDecodeError, UnicodeDecodeError):
                            head = " ".join(resp.text[:200].split())[:120]
                            last = LLMError("bad_response", f"the endpoint answered 200 with a body that is not JSON "
                                                            f"({resp.headers.get('content-type') or 'no content-type'}"
                                                            f": {head!r})")
                        else:
                            self.stats.succeeded += 1
                            usage = data.get("usage") or {}
                            self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                            self.stats.completion_tokens += int(usage.get("completion_tokens") or 0)
                            return data
                    elif resp.status_code in RETRYABLE_STATUS:
                        kind = "http_429" if resp.status_code == 429 else f"http_{resp.status_code // 100}xx"
                        last = LLMError(kind, f"HTTP {resp.status_code}: {resp.text[:200]}")
                        wait = _retry_after(resp)
                    else:
                        err = LLMError(f"http_{resp.status_code}", resp.text[:300])
                        self.stats.failures[err.kind] += 1
                        raise err
            if attempt == self.max_retries:
                break
            self.stats.transient[last.kind] += 1
            self.stats.retries += 1
            delay = self._backoff(attempt)
            if wait is not None:
                delay = max(delay, min(wait, self.max_retry_after_s))
            await asyncio.sleep(delay)
        assert last is not None
        self.stats.failures[last.kind] += 1
        raise last

    async def chat(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        body = {"model": self.model, "messages": messages, **params}
        data = await self._post("chat/completions", body)
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            self.stats.failures["bad_response"] += 1
            raise LLMError("bad_response", f"no choices[0].message in the answer: {str(data)[:200]}") from None
        usage = data.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          choice.get("finish_reason"))

    async def complete(self, prompt: str, **params: Any) -> Completion:
        body = {"model": self.model, "prompt": prompt, **params}
        data = await self._post("completions", body)
        try:
            choice = data["choices"][0]
            text = choice.get("text") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            self.stats.failures["bad_response"] += 1
            raise LLMError("bad_response", f"no choices[0].text in the answer: {str(data)[:200]}") from None
        usage = data.get("usage") or {}
        return Completion(text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0),
                          choice.get("finish_reason"))

    async def chat_json(self, messages: list[dict[str, str]], schema: dict[str, Any], repair_attempts: int = 1,
                        **params: Any) -> tuple[Any, Completion]:
        """A chat answer parsed as JSON and validated against ``schema``.

        On a malformed or invalid answer the model gets one more turn that quotes its answer and
        the error ("repair"); after ``repair_attempts`` such turns it fails with kind
        ``invalid_json`` or ``schema``.
        """
        if self.structured_output:
            params.setdefault("response_format", {"type": "json_schema",
                                                  "json_schema": {"name": "answer", "schema": schema}})
        msgs = list(messages)
        for turn in range(repair_attempts + 1):
            comp = await self.chat(msgs, **params)
            obj, kind, reason = _parse(comp.text, schema)
            if kind is None:
                if turn:
                    self.stats.repaired += 1
                return obj, comp
            if turn == repair_attempts:
                self.stats.failures[kind] += 1
                raise LLMError(kind, reason)
            self.stats.repairs += 1
            msgs = [*messages, {"role": "assistant", "content": comp.text[:2000]},
                    {"role": "user", "content": f"That answer is not valid: {reason}. Reply with only one JSON object "
                                                f"matching this schema: {json.dumps(schema)}"}]
        raise AssertionError("unreachable")


def _parse(text: str, schema: dict[str, Any]) -> tuple[Any, str | None, str]:
    try:
        obj = extract_json(text)
    except ValueError as exc:
        return None, "invalid_json", str(exc)
    reason = validate(obj, schema)
    if reason is not None:
        return obj, "schema", reason
    return obj, None, ""


# ---------------------------------------------------------------- preflight
def _answer_problem(resp: httpx.Response, completion: bool) -> str | None:
    """None if a 200 answer is an OpenAI (chat) completion object as :meth:`LLMClient.chat` and
    :meth:`LLMClient.complete` read it, else what is wrong with it."""
    want = "choices[0].text" if completion else "choices[0].message.content"
    kind = "completion" if completion else "chat-completion"
    try:
        data = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"with a body that is not JSON, not an OpenAI {kind} object with {want}"
    if not isinstance(data, dict):
        return f"with a JSON {type(data).__name__}, not an OpenAI {kind} object with {want}"
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        keys = ", ".join(sorted(map(str, data))[:8]) or "none"
        return f"with JSON that has no 'choices' list (keys: {keys}), not an OpenAI {kind} object with {want}"
    first = choices[0]
    if completion:
        return None if isinstance(first.get("text"), str) else f"with JSON that has no {want} string"
    msg = first.get("message")
    if not isinstance(msg, dict) or "content" not in msg:
        return f"with JSON that has no {want}"
    return None


def preflight(llm: LLMConfig, base_url: str, attempts: int = 3, pause_s: float = 1.0) -> float:
    """One tiny request before any real one, so that a wrong URL, key or model fails at once.

    Returns the seconds the request took. Raises :class:`~domain_embed.errors.UserError` naming the
    URL, the HTTP status and what to set. Transient answers (429, 5xx, no connection yet) are tried
    ``attempts`` times before giving up; other 4xx are not retried. A 200 must also be an OpenAI
    (chat) completion object: a web page or another API at the URL fails here, with what came back."""

    llm = as_section(llm, LLMConfig)
    completion = llm.kind == LLMKind.local and llm.local.prompt_style == PromptStyle.completion
    url = f"{base_url.rstrip('/')}/{'completions' if completion else 'chat/completions'}"
    body: dict[str, Any] = {"model": llm.model, "max_tokens": 1, "temperature": 0.0}
    body.update({"prompt": "ping"} if completion else {"messages": [{"role": "user", "content": "ping"}]})
    key = api_key(llm)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    env = llm.api_key_env
    key_hint = (f"the API key in ${env} (llm.api_key_env={env})" if env else "llm.api_key_env, the variable that "
                "holds the endpoint's API key")
    status, detail = 0, ""
    for attempt in range(max(1, attempts)):
        t0 = time.perf_counter()
        try:
            resp = httpx.post(url, json=body, headers=headers, timeout=float(llm.timeout_s))  # a number as given
        except httpx.HTTPError as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
        else:
            status, detail = resp.status_code, resp.text[:200].strip()
            if status == 200:
                problem = _answer_problem(resp, completion)
                if problem is None:
                    return time.perf_counter() - t0
                # A web page or another API behind the URL: asking again gets the same answer.
                ctype = resp.headers.get("content-type") or "no content-type"
                head = repr(" ".join(detail.split())) if detail else "an empty body"
                now = f" (now {llm.base_url})" if llm.base_url else ""
                raise UserError(
                    f"the LLM endpoint {url} answered HTTP 200 to a test request {problem} ({ctype}: {head}); "
                    f"llm.base_url{now} must be the OpenAI-compatible /v1 root of an LLM server, not a web page, proxy "
                    f"or other API: check its host, port and path. No generation was sent.")
            if status not in RETRYABLE_STATUS:
                break
        if attempt + 1 < attempts:
            time.sleep(pause_s * (attempt + 1))
    if status == 0:
        what = f"could not reach the LLM endpoint at {url} ({detail})"
        todo = "set llm.base_url to a running OpenAI-compatible server (ending in /v1), or null to start the local one"
    elif status in (401, 403):
        what = f"the LLM endpoint {url} answered HTTP {status} (not authorised: {detail})"
        todo = f"set {key_hint} to a valid key for llm.base_url={llm.base_url}"
    elif status == 404:
        what = f"the LLM endpoint {url} answered HTTP 404 ({detail})"
        todo = (f"set llm.base_url to the OpenAI-compatible base URL (ending in /v1, now {llm.base_url}) "
                f"and llm.model to a model it serves (now {llm.model})")
    else:
        what = f"the LLM endpoint {url} answered HTTP {status} to a test request ({detail})"
        todo = (f"check llm.base_url={llm.base_url}, llm.model={llm.model} and {key_hint}; "
                f"retry later if the endpoint is overloaded")
    raise UserError(f"{what}; {todo}. No generation was sent.")


def api_key(llm: LLMConfig) -> str | None:
    """The key for the configured endpoint: None for local, the env var's value for remote."""
    llm = as_section(llm, LLMConfig)
    if llm.kind == LLMKind.local:
        return None
    env = llm.api_key_env
    if not env:
        return None  # an in-cluster endpoint without auth
    key = os.environ.get(env)
    if not key:
        raise UserError(
            f"llm.kind=remote needs an API key in the environment variable {env}, which is not set; "
            f"export {env}=... (or set llm.api_key_env to the variable that holds it)"
        )
    return key

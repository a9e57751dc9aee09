"""The NIM-compatible API against the real tritonserver and real gateways on 127.0.0.1.

One Triton for the module; several gateways (default, API key, tiny body, tiny queue) share it.
"""

from __future__ import annotations

import asyncio
import base64
import os

import httpx
import numpy as np
import pytest

from domain_embed.serve.app import create_app
from domain_embed.serve.settings import ServeSettings
from domain_embed.serve.triton_process import TritonProcess


MODEL = "domain-embed-minilm"
LONG = " ".join(f"word{i} and more text about vacuum" for i in range(80))  # well over 256 tokens


@pytest.fixture(scope="module", autouse=True)
def _helpers(helpers):
    global GatewayThread, free_port
    GatewayThread, free_port = helpers.GatewayThread, helpers.free_port


@pytest.fixture(scope="module")
def triton(_helpers, exported_run, tmp_path_factory):
    t = TritonProcess(exported_run / "triton", free_port(), free_port(), free_port(),
                      log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log").start()
    try:
        t.wait_ready()
        yield t
    finally:
        t.stop()


def _settings(triton, **kw) -> ServeSettings:
    s = ServeSettings(served_name=MODEL, triton_url=triton.url, **kw)
    return s


@pytest.fixture(scope="module")
def gateway(triton, served_spec):
    with GatewayThread(create_app(_settings(triton), served_spec), free_port()) as g:
        yield g


@pytest.fixture(scope="module")
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def embed(http, **body):
    body.setdefault("model", MODEL)
    return http.post("/v1/embeddings", json=body)


def vecs(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.asarray([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)


def assert_error(resp, status: int, *words: str):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["message"], str) and body["message"]
    for w in words:
        assert w in body["message"], body["message"]


# ------------------------------------------------------------------ clients and vectors
def test_openai_client_model_suffix_and_extra_body(gateway, reference_encoder):
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
    texts = ["How do I create an index concurrently?", "What does VACUUM FULL lock?"]
    r = client.embeddings.create(model=f"{MODEL}-query", input=texts)  # the client asks for base64 by default
    got = np.asarray([d.embedding for d in r.data], dtype=np.float32)
    ref = reference_encoder.encode_queries(texts)
    assert got.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    assert (got * ref).sum(1).min() > 0.999
    assert r.usage.prompt_tokens == sum(len(reference_encoder.tokenize([t], "query")["input_ids"][0]) for t in texts)

    r = client.embeddings.create(model=MODEL, input="VACUUM reclaims storage.", encoding_format="float",
                                 extra_body={"input_type": "passage"})
    ref = reference_encoder.encode_passages(["VACUUM reclaims storage."])[0]
    assert float(np.asarray(r.data[0].embedding) @ ref) > 0.999
    assert r.model == MODEL and r.data[0].index == 0


def test_langchain_nvidia_embeddings_client(gateway, reference_encoder):
    """LangChain's NVIDIAEmbeddings, as the README shows it: documents as passages, questions as queries,
    dimensions, and a 400 whose message reaches the caller."""
    import warnings

    from langchain_nvidia_ai_endpoints import NVIDIAEmbeddings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that it does not know a self-hosted model's name
        emb = NVIDIAEmbeddings(base_url=f"{gateway.url}/v1", model=MODEL, truncate="END")
        small = NVIDIAEmbeddings(base_url=f"{gateway.url}/v1", model=MODEL, dimensions=64)
        strict = NVIDIAEmbeddings(base_url=f"{gateway.url}/v1", model=MODEL, truncate="NONE")
    docs = ["CREATE INDEX builds an index on the named table.", "VACUUM reclaims storage held by dead tuples."]
    got = np.asarray(emb.embed_documents(docs), dtype=np.float32)
    assert (got * reference_encoder.encode_passages(docs)).sum(1).min() > 0.999
    q = np.asarray(emb.embed_query("how do I rebuild an index?"), dtype=np.float32)
    assert float(q @ reference_encoder.encode_queries(["how do I rebuild an index?"])[0]) > 0.999
    assert float(np.asarray(emb.embed_documents([LONG]))[0] @ reference_encoder.encode_passages([LONG])[0]) > 0.999
    v = np.asarray(small.embed_query("how do I rebuild an index?"), dtype=np.float32)
    np.testing.assert_allclose(v, q[:64] / np.linalg.norm(q[:64]), atol=1e-5)
    with pytest.raises(Exception, match=r"^\[400\] input 0 is \d+ tokens long .* maximum of 256"):
        strict.embed_documents([LONG])  # the gateway's message is what the caller reads first


def test_base64_decodes_to_the_float_vectors(http):
    texts = ["alpha", "beta gamma", "x"]
    f = vecs(embed(http, input=texts, input_type="passage"))
    r = embed(http, input=texts, input_type="passage", encoding_format="base64")
    assert r.status_code == 200
    b = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]])
    np.testing.assert_array_equal(b, f)


def test_dimensions_truncate_then_renormalise(http):
    full = vecs(embed(http, input=["checkpoint tuning"], input_type="query"))[0]
    for d in (256, 64):
        small = vecs(embed(http, input=["checkpoint tuning"], input_type="query", dimensions=d))[0]
        assert small.shape == (d,)
        assert abs(float(np.linalg.norm(small)) - 1) < 1e-5
        np.testing.assert_allclose(small, full[:d] / np.linalg.norm(full[:d]), atol=1e-6)
    assert_error(embed(http, input=["x"], input_type="query", dimensions=385), 400, "385", "384")
    # NIM: the size "must be supported by the model"; these are the ones the spec declares (model.matryoshka_dims)
    assert_error(embed(http, input=["x"], input_type="query", dimensions=100), 400, "100", "64, 128, 256, 384")
    for odd in (True, 64.0, "64"):  # JSON's true used to become dimensions=1, a 1-dim vector [-1.0]
        assert_error(embed(http, input=["x"], input_type="query", dimensions=odd), 422, "dimensions")


def test_truncate_none_start_end(http, reference_encoder):
    import torch

    from domain_embed.encoding import pool

    assert_error(embed(http, input=["ok", LONG], input_type="passage", truncate="NONE"), 400, "256", "input 1")
    assert_error(embed(http, input=[LONG], input_type="passage"), 400, "256")  # NONE is the default, as in NIM
    tok = reference_encoder.tokenizer
    pp = reference_encoder.spec.passage_prefix
    n_full = len(tok(pp + LONG)["input_ids"])
    msg = embed(http, input=[LONG], input_type="passage", truncate="NONE").json()["message"]
    assert str(n_full) in msg

    end = embed(http, input=[LONG], input_type="passage", truncate="END")
    assert end.json()["usage"]["prompt_tokens"] == 256
    ref_end = reference_encoder.encode_passages([LONG])[0]  # HF truncation keeps the start
    assert float(vecs(end)[0] @ ref_end) > 0.999

    start = embed(http, input=[LONG], input_type="passage", truncate="START")
    assert start.json()["usage"]["prompt_tokens"] == 256
    prefix = tok(pp, add_special_tokens=False)["input_ids"]
    body = tok(LONG, add_special_tokens=False)["input_ids"]
    ids = [tok.cls_token_id, *prefix, *body[-(256 - 2 - len(prefix)):], tok.sep_token_id]
    t = torch.tensor([ids])
    with torch.inference_mode():
        h = reference_encoder.model(input_ids=t, attention_mask=torch.ones_like(t)).last_hidden_state
        ref_start = pool(h, torch.ones_like(t)).numpy()[0]
    assert float(vecs(start)[0] @ ref_start) > 0.999
    assert float(vecs(start)[0] @ ref_end) < 0.999  # the two ends really differ


def test_usage_counts_tokens_truthfully(http, reference_encoder):
    texts = ["one", "two words", "a longer sentence with several more tokens in it"]
    r = embed(http, input=texts, input_type="query")
    want = sum(len(reference_encoder.tokenize([t], "query")["input_ids"][0]) for t in texts)
    assert r.json()["usage"] == {"prompt_tokens": want, "total_tokens": want}


def test_list_over_tritons_batch_is_split_and_kept_in_order(http, reference_encoder):
    texts = [f"item number {i} about replication slots" for i in range(100)]  # Triton max_batch_size is 64
    got = vecs(embed(http, input=texts, input_type="passage"))
    ref = reference_encoder.encode_passages(texts)
    assert got.shape == (100, 384) and (got * ref).sum(1).min() > 0.999
    # an over-length item past the first Triton batch is named by its index in the request (was "input 6")
    texts[70] = LONG
    msg = embed(http, input=texts, input_type="passage", truncate="NONE").json()["message"]
    assert msg.startswith("input 70 is ") and "256" in msg, msg


# ------------------------------------------------------------------ errors
def test_bad_input_errors_are_json(http):
    assert_error(embed(http, input=[], input_type="query"), 400, "empty")
    assert_error(embed(http, input=["x"]), 400, "input_type")
    assert_error(embed(http, input=["x"], model=f"{MODEL}-query", input_type="passage"), 400, "suffix")
    assert_error(embed(http, input=["x"] * 129, input_type="query"), 400, "128")
    assert_error(embed(http, input=["x"], model="someone-else", input_type="query"), 404, MODEL)
    assert_error(embed(http, input=[1, 2], input_type="query"), 422, "input")
    assert_error(http.post("/v1/embeddings", json={"input": "x"}), 422, "model")
    assert_error(embed(http, input="x", input_type="document"), 422, "input_type")
    assert_error(embed(http, input="x", input_type="query", truncate="MIDDLE"), 422, "truncate")
    assert_error(http.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}), 422,
                 "not valid JSON")


def test_empty_strings_are_refused_by_their_index(http):
    """As the OpenAI API: an empty text has nothing to embed (its vector used to come back with a 200)."""
    assert_error(embed(http, input="", input_type="query"), 400, "input 0 is an empty string")
    r = embed(http, input=["fine", "  ", "also fine", ""], input_type="passage")
    assert_error(r, 400, "input 1, 3 are empty strings", "whitespace")
    assert_error(embed(http, input=[""] * 12, input_type="passage"), 400, "and 2 more")
    assert vecs(embed(http, input=["fine", "also fine"], input_type="passage")).shape == (2, 384)


def test_nim_fields_this_server_does_not_offer_are_refused_not_ignored(http):
    """NIM 2.x's embedding_type (int8, binary, ...) and modality: a client asking for packed vectors or an image
    used to get float text vectors back with a 200."""
    for kind in ("int8", "uint8", "binary", "ubinary"):
        assert_error(embed(http, input=["x"], input_type="query", embedding_type=kind), 400, kind, "float")
    assert_error(embed(http, input=["x"], input_type="passage", modality="image"), 400, "image", "text")
    assert_error(embed(http, input=["x", "y"], input_type="passage", modality=["text", "text_image"]), 400,
                 "text_image")
    ok = vecs(embed(http, input=["x"], input_type="query", embedding_type="float", modality="text"))
    np.testing.assert_allclose(ok, vecs(embed(http, input=["x"], input_type="query")), atol=1e-6)


@pytest.fixture
def keyed(triton, served_spec, monkeypatch):
    monkeypatch.setenv("DE_TEST_GATEWAY_KEY", "s3cret")
    with GatewayThread(create_app(_settings(triton, api_key_env="DE_TEST_GATEWAY_KEY"), served_spec), free_port()) as g:
        yield g


KEY = {"Authorization": "Bearer s3cret"}


def test_api_key_401(keyed):
    g = keyed
    body = {"input": "x", "model": MODEL, "input_type": "query"}
    r = httpx.post(f"{g.url}/v1/embeddings", json=body)
    assert_error(r, 401, "API key")
    assert r.headers["www-authenticate"].startswith("Bearer")  # RFC 6750: the scheme a client must use
    r = httpx.post(f"{g.url}/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong"})
    assert_error(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    ok = httpx.post(f"{g.url}/v1/embeddings", json=body, headers=KEY, timeout=60)
    assert ok.status_code == 200
    assert httpx.get(f"{g.url}/v1/health/live").status_code == 200  # probes need no key
    assert httpx.get(f"{g.url}/v1/health/ready", timeout=30).status_code == 200


def test_api_key_is_checked_before_the_body(keyed):
    """An unauthenticated caller learns nothing about the schema: 401, not 422 field details."""
    g = keyed
    for kw in ({"json": {"input": [1, 2]}}, {"json": {"nothing": True}},
               {"content": b"{not json", "headers": {"content-type": "application/json"}}):
        r = httpx.post(f"{g.url}/v1/embeddings", **kw)
        assert_error(r, 401, "API key")
        assert "input" not in r.json()["message"] and "model" not in r.json()["message"]
    # with the key, the same bodies get their 422
    assert_error(httpx.post(f"{g.url}/v1/embeddings", json={"input": [1, 2]}, headers=KEY), 422, "input")


def test_metrics_and_openapi_need_the_key_unless_opened(keyed, triton, served_spec, monkeypatch):
    g = keyed
    for path in ("/v1/metrics", "/openapi.json", "/docs", "/redoc", "/v1/models", "/v1/metadata", "/v1/version"):
        assert_error(httpx.get(f"{g.url}{path}"), 401, "API key")
        assert httpx.get(f"{g.url}{path}", headers=KEY).status_code == 200, path
    # serve.protect_metrics_docs=false (env twin): metrics and docs open, the API still keyed
    monkeypatch.setenv("DOMAIN_EMBED_SERVE_PROTECT_METRICS_DOCS", "false")
    s = ServeSettings.from_config(None)
    assert s.protect_metrics_docs is False
    s.served_name, s.triton_url, s.api_key_env = MODEL, triton.url, "DE_TEST_GATEWAY_KEY"
    with GatewayThread(create_app(s, served_spec), free_port()) as open_docs:
        for path in ("/v1/metrics", "/openapi.json"):
            assert httpx.get(f"{open_docs.url}{path}").status_code == 200
        assert_error(httpx.get(f"{open_docs.url}/v1/models"), 401)
        assert_error(httpx.post(f"{open_docs.url}/v1/embeddings", json={"x": 1}), 401)


def test_body_too_large_413(triton, served_spec):
    with GatewayThread(create_app(_settings(triton, max_body_bytes=2000), served_spec), free_port()) as g:
        body = {"input": ["y" * 3000], "model": MODEL, "input_type": "query"}
        assert_error(httpx.post(f"{g.url}/v1/embeddings", json=body), 413, "2000")
        # answered before the app routes it, and still counted (the counter's help says every status)
        assert _counter(httpx.get(f"{g.url}/v1/metrics").text, "/v1/embeddings", 413) == 1

        def chunked():  # no Content-Length: the body is counted as it arrives
            yield b'{"input": ["'
            for _ in range(10):
                yield b"z" * 500
            yield b'"], "model": "m"}'

        r = httpx.post(f"{g.url}/v1/embeddings", content=chunked(), headers={"content-type": "application/json"})
        assert_error(r, 413)


def test_queue_full_429_with_retry_after(triton, served_spec):
    with GatewayThread(create_app(_settings(triton, max_queue=1, retry_after_s=2), served_spec), free_port()) as g:
        body = {"input": [LONG[:1000]] * 64, "model": MODEL, "input_type": "passage", "truncate": "END"}

        async def burst():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*[c.post(f"{g.url}/v1/embeddings", json=body) for _ in range(6)])

        rs = asyncio.run(burst())
        codes = sorted(r.status_code for r in rs)
        assert 200 in codes and 429 in codes, codes
        full = next(r for r in rs if r.status_code == 429)
        assert full.headers["retry-after"] == "2"
        assert_error(full, 429, "queue")


def test_triton_unreachable_gives_503_and_not_ready(served_spec, _helpers):
    s = ServeSettings(served_name=MODEL, triton_url=f"127.0.0.1:{free_port()}", request_timeout_s=5)
    with GatewayThread(create_app(s, served_spec), free_port()) as g:
        assert httpx.get(f"{g.url}/v1/health/live").status_code == 200
        assert_error(httpx.get(f"{g.url}/v1/health/ready", timeout=30), 503, "not ready")
        r = httpx.post(f"{g.url}/v1/embeddings", json={"input": "x", "model": MODEL, "input_type": "query"}, timeout=30)
        assert_error(r, 503, "unavailable")
        assert "retry-after" in r.headers


# ------------------------------------------------------------------ other endpoints
def _counter(text: str, route: str, status: int) -> float:
    line = f'embed_requests_total{{route="{route}",status="{status}"}}'
    got = [ln for ln in text.splitlines() if ln.startswith(line + " ")]
    return float(got[0].split()[-1]) if got else 0.0


def test_models_health_metrics(http):
    """Counts what this test itself sent (before/after), so it holds in any order and alone."""
    m = http.get("/v1/models").json()
    assert m["data"][0]["id"] == MODEL and m["data"][0]["dimensions"] == 384
    assert m["data"][0]["supported_dimensions"] == [64, 128, 256, 384]
    assert http.get("/v1/health/live").status_code == 200
    assert http.get("/v1/health/ready").json() == {"object": "health.response", "message": "ready", "ready": True}
    before = http.get("/v1/metrics").text
    assert embed(http, input=["metrics please", "two"], input_type="query").status_code == 200
    assert embed(http, input=[], input_type="query").status_code == 400
    text = http.get("/v1/metrics").text
    for status in (200, 400):
        assert _counter(text, "/v1/embeddings", status) == _counter(before, "/v1/embeddings", status) + 1, status
    for name in ("embed_request_latency_seconds_bucket", "embed_batch_size_bucket", "embed_tokens_total",
                 "embed_queue_depth", "embed_triton_up 1.0"):
        assert name in text
    tokens = [ln for ln in text.splitlines() if ln.startswith("embed_tokens_total")]
    assert float(tokens[0].split()[-1]) > 0


def test_version_metadata_and_manifest_name_the_export(triton, served_spec, exported_run):
    """NIM's /v1/version, /v1/metadata and /v1/manifest (all 404 before): the manifest is the model repository's
    sha256 list, and the metadata's profile id is its digest, so a caller can tell which export answers."""
    import hashlib
    import json

    import domain_embed

    repo = exported_run / "triton"
    with GatewayThread(create_app(_settings(triton), served_spec, repository=repo), free_port()) as g:
        v = httpx.get(f"{g.url}/v1/version").json()
        assert v == {"release": domain_embed.__version__, "api": "1.0.0"}
        manifest = httpx.get(f"{g.url}/v1/manifest").json()
        on_disk = json.loads((repo / "checksums.json").read_text())
        assert manifest == on_disk and "embed/1/model.onnx" in manifest["files"]
        meta = httpx.get(f"{g.url}/v1/metadata").json()
        assert meta["selectedModelProfileId"] == hashlib.sha256(json.dumps(on_disk, sort_keys=True).encode()).hexdigest()
        info = meta["modelInfo"][0]
        assert info["shortName"] == MODEL and info["dimensions"] == served_spec["dim"] == 384
        assert info["supportedDimensions"] == [64, 128, 256, 384]
        assert info["maxInputTokens"] == {"query": served_spec["max_query_length"],
                                          "passage": served_spec["max_passage_length"]}
        assert info["queryPrefix"] == served_spec["query_prefix"] and info["pooling"] == served_spec["pooling"]
    with GatewayThread(create_app(_settings(triton), served_spec), free_port()) as bare:  # no repository given
        assert_error(httpx.get(f"{bare.url}/v1/manifest"), 404, "--model-repository")
        assert httpx.get(f"{bare.url}/v1/metadata").json()["selectedModelProfileId"] == ""


def _fuzz(url: str, headers: dict[str, str] | None = None) -> list[int]:
    """schemathesis generates requests from the gateway's own OpenAPI; none may produce a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    auth = {"headers": headers} if headers else {}
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", **auth)
    seen = []
    for path, method in (("/v1/embeddings", "POST"), ("/v1/models", "GET"), ("/v1/health/ready", "GET")):
        op = schema[path][method]

        @given(case=op.as_strategy())
        @settings(max_examples=40 if method == "POST" else 5, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            r = case.call(base_url=url, timeout=60, **auth)
            seen.append(r.status_code)
            assert r.status_code < 500, (case.body, r.text)
            if r.status_code >= 400:
                assert "message" in r.json()

        check()
    assert len(seen) >= 40
    return seen


def test_fuzz_openapi_finds_no_5xx(gateway):
    _fuzz(gateway.url)


def test_fuzz_keyed_gateway_finds_no_5xx(keyed):
    seen = _fuzz(keyed.url, headers=KEY)
    assert 200 in seen  # the key got through: the fuzz reached the handlers, not only the 401 door


def test_triton_runs_the_generated_batching_config(triton):
    """What Triton actually loaded (not just what the file says): dynamic batching, sizes, instances."""
    cfg = httpx.get(f"http://127.0.0.1:{triton.ports[1]}/v2/models/embed/config", timeout=10).json()
    assert cfg["max_batch_size"] == 64 and cfg["backend"] == "python"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8, 16, 32]
    assert int(cfg["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    policy = cfg["dynamic_batching"]["default_queue_policy"]  # export.triton.queue_timeout_us, REJECT
    assert policy["timeout_action"] == "REJECT" and int(policy["default_timeout_microseconds"]) == 10_000_000
    assert cfg["instance_group"][0]["count"] == 1 and cfg["instance_group"][0]["kind"] == "KIND_CPU"


def test_gateway_only_entry_point_against_running_triton(triton, exported_run, helpers):
    """`python -m domain_embed.serve.gateway`: the gateway container of a pod whose Triton runs apart."""
    import signal
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "domain_embed.serve.gateway", "--encoding",
                             str(exported_run / "triton" / "encoding.json"), "--triton-url", triton.url,
                             "--host", "127.0.0.1", "--port", str(port), "--served-name", "gw-only"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        helpers.wait_gateway_ready(proc, f"http://127.0.0.1:{port}", timeout=60, pause=0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", timeout=30,
                       json={"input": "x", "model": "gw-only-query"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
        # the repository is the encoding's folder: its manifest is served
        m = httpx.get(f"http://127.0.0.1:{port}/v1/manifest", timeout=30)
        assert m.status_code == 200 and "encoding.json" in m.json()["files"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def test_unknown_paths_do_not_grow_the_metrics(gateway, keyed):
    """The request counter is labelled by route template: twenty scanner paths (answered 404, or 401 before
    routing on a keyed gateway) used to add twenty series each, without bound."""
    for url, status in ((gateway.url, 404), (keyed.url, 401)):
        for i in range(20):
            assert httpx.get(f"{url}/junk/{i}").status_code == status
    text = httpx.get(f"{gateway.url}/v1/metrics").text
    assert "/junk/" not in text and _counter(text, "unmatched", 404) >= 20
    text = httpx.get(f"{keyed.url}/v1/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert "/junk/" not in text and _counter(text, "unmatched", 401) == 20
    assert httpx.post(f"{gateway.url}/v1/models").status_code == 405
    assert _counter(httpx.get(f"{gateway.url}/v1/metrics").text, "/v1/models", 405) >= 1

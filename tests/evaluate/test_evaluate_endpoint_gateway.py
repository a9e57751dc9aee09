"""`evaluate --endpoint` against the REAL serving path: tritonserver (nvidia-pytriton's binary) on an
exported run, and the project's gateway in front of it, both on 127.0.0.1.

The held-out split gets a query over model.max_query_length and a passage over max_passage_length.
The gateway's default is truncate=NONE (as in NIM), which rejects them; the evaluate stage must send
what the spec implies (END, as the in-process encoder truncates) so they are scored, and the served
vectors must match the checkpoint's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.rundir import atomic_write_json, run_stage, sha256_path
from domain_embed.stages import STAGES
from split_fixture import write_split

_spec = importlib.util.spec_from_file_location("_serve_fixtures", Path(__file__).resolve().parents[1] / "serve" / "conftest.py")
_serve = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_serve)

LONG_QUERY_TAIL = " ".join(f"and what happens to row version {i} when autovacuum is disabled" for i in range(12))
LONG_PASSAGE_TAIL = " ".join(f"Sentence {i} says more about dead tuples, freezing and the visibility map." for i in range(40))


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, minilm_path) -> Path:
    return _serve.make_exported_run(tmp_path_factory.getbasetemp(), minilm_path)


@pytest.fixture(scope="module")
def gateway_url(exported_run, tmp_path_factory):
    from domain_embed.serve.app import create_app
    from domain_embed.serve.settings import ServeSettings
    from domain_embed.serve.triton_process import TritonProcess

    free = _serve.free_port
    spec = json.loads((exported_run / "triton" / "encoding.json").read_text())
    triton = TritonProcess(exported_run / "triton", free(), free(), free(),
                           log_path=tmp_path_factory.mktemp("triton") / "tritonserver.log").start()
    try:
        triton.wait_ready()
        served = str(load_config(None, [], save=False).model.served_name)
        settings = ServeSettings(served_name=served, triton_url=triton.url)
        with _serve.GatewayThread(create_app(settings, spec), free()) as gw:
            yield gw.url
    finally:
        triton.stop()


@pytest.fixture
def run_with_long_heldout(tmp_path, exported_run, tokenizer_and_spec) -> Path:
    """split/ with one over-length held-out query and passage; train/model is the served model."""
    tok, spec = tokenizer_and_spec
    run = write_split(tmp_path / "run")
    beir = run / "split" / "eval_beir"
    queries = [json.loads(ln) for ln in (beir / "queries.jsonl").read_text().splitlines()]
    queries[0]["text"] += " " + LONG_QUERY_TAIL
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    corpus = [json.loads(ln) for ln in (beir / "corpus.jsonl").read_text().splitlines()]
    corpus[0]["text"] += " " + LONG_PASSAGE_TAIL
    (beir / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    assert len(tok(spec.query_prefix + queries[0]["text"])["input_ids"]) > spec.max_query_length
    assert len(tok(spec.passage_prefix + corpus[0]["text"])["input_ids"]) > spec.max_passage_length
    man = json.loads((run / "split" / "manifest.json").read_text())
    man["outputs"] = {rel: sha256_path(run / rel) for rel in STAGES["split"].outputs}
    atomic_write_json(run / "split" / "manifest.json", man)
    shutil.copytree(exported_run / "train" / "model", run / "train" / "model")
    atomic_write_json(run / "train" / "manifest.json",
                      {"stage": "train", "outputs": {"train/model": sha256_path(run / "train" / "model")}})
    load_config(run, [])
    return run


@pytest.fixture(scope="module")
def tokenizer_and_spec(spec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.model_path), spec


def test_gateway_default_rejects_the_long_query(gateway_url, run_with_long_heldout):
    """What evaluate --endpoint hit before: without truncate the real gateway answers 400."""
    from domain_embed.evaluate.endpoint import EndpointEncoder

    q = json.loads((run_with_long_heldout / "split" / "eval_beir" / "queries.jsonl").read_text().splitlines()[0])
    served = str(load_config(None, [], save=False).model.served_name)
    enc = EndpointEncoder(gateway_url, served, truncate="NONE")
    try:
        with pytest.raises(UserError, match="answered 400"):
            enc.encode([q["text"]], "query")
    finally:
        enc.close()


def test_evaluate_endpoint_scores_over_length_heldout_texts(gateway_url, run_with_long_heldout):
    run = run_with_long_heldout
    cfg = load_config(run, [], save=False)
    m = run_stage(STAGES["evaluate"], run, cfg, STAGES, quiet=True, extra={"endpoint": gateway_url})
    rep = json.loads((run / "evaluate" / "report.json").read_text())
    ep = rep["endpoint"]
    held = rep["datasets"]["heldout"]
    assert ep["passed"] is True and ep["max_drift"] < 1e-3, ep
    assert ep["texts_compared"] == held["info"]["queries"] + held["info"]["corpus"]
    assert m["counts"]["endpoint_max_drift"] == ep["max_drift"]
    # every held-out query (the long one included) was scored through the endpoint, as in-process
    assert held["endpoint"]["ndcg@10"] == pytest.approx(held["tuned"]["ndcg@10"], abs=1e-6)

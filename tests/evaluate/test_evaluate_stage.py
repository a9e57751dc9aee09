"""Evaluation: metrics match pytrec_eval, the report, the gate failing on a worse model (exit 3),
extra BEIR datasets, and drift of a live /v1/embeddings endpoint served on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from domain_embed.config import EncodingSpec, load_config
from domain_embed.errors import QualityGateFailed
from domain_embed.evaluate.metrics import evaluate as beir_evaluate
from domain_embed.rundir import atomic_write_json, run_stage, sha256_path
from domain_embed.stages import STAGES
from split_fixture import write_split

CLI = str(Path(sys.executable).parent / "domain-embed")
SMALL = ["model.max_query_length=32", "model.max_passage_length=64"]


def test_metrics_match_pytrec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: int(rng.integers(1, 3)) for d in rng.choice(docs, size=int(rng.integers(1, 6)), replace=False)}
             for i in range(25)}
    run = {q: {d: float(rng.random()) for d in rng.choice(docs, size=40, replace=False)} for q in qrels}
    ks = [1, 5, 10, 100]
    ours = beir_evaluate(qrels, run, ks)
    measures = {f"ndcg_cut.{','.join(map(str, ks))}", f"recall.{','.join(map(str, ks))}",
                f"map_cut.{','.join(map(str, ks))}", f"P.{','.join(map(str, ks))}"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    for k in ks:
        for ours_key, ref_key in ((f"ndcg@{k}", f"ndcg_cut_{k}"), (f"recall@{k}", f"recall_{k}"),
                                  (f"map@{k}", f"map_cut_{k}"), (f"precision@{k}", f"P_{k}")):
            want = np.mean([ref[q][ref_key] for q in qrels])
            assert ours[ours_key] == pytest.approx(want, abs=1e-9), ours_key
    assert 0 < ours["ndcg@10"] < 1  # not a degenerate case


def test_bootstrap_interval_has_the_width_theory_gives_in_one_block_or_many():
    """The report's 95% interval: a seeded percentile bootstrap over queries; a held-out set of thousands of
    queries is resampled in blocks and must say the same as one block would."""
    from domain_embed.beir import bootstrap

    rng = np.random.default_rng(1)
    for n in (400, 5000):  # 5000 queries: blocks of 800 resamples
        v = rng.normal(0.3, 1.0, size=n)
        mean, lo, hi = bootstrap(v)
        half = 1.96 * v.std() / np.sqrt(n)
        assert mean == pytest.approx(v.mean()) and lo < mean < hi
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.1), n
        assert (lo + hi) / 2 == pytest.approx(mean, abs=0.2 * half)
        assert bootstrap(v) == (mean, lo, hi)  # seeded: a report says the same thing twice
    assert all(np.isnan(bootstrap([])))


def _install_model(run: Path, model, spec: EncodingSpec) -> None:
    """Put ``model`` at train/model with a manifest, as the train stage would."""
    from transformers import AutoTokenizer

    from domain_embed.train.model_dir import save_model_dir

    tok = AutoTokenizer.from_pretrained(spec.model_path)
    save_model_dir(model, tok, spec, run / "train" / "model", {"base_model_name": "test"})
    atomic_write_json(run / "train" / "manifest.json", {"stage": "train", "inputs": {}, "counts": {},
                                                        "outputs": {"train/model": sha256_path(run / "train" / "model")}})


@pytest.fixture(scope="module")
def spec_small():
    return EncodingSpec.from_config(load_config(None, SMALL, save=False))


@pytest.fixture
def run_same_as_base(tmp_path, spec_small) -> Path:
    from transformers import AutoModel

    run = write_split(tmp_path / "run")
    load_config(run, SMALL)
    _install_model(run, AutoModel.from_pretrained(spec_small.model_path), spec_small)
    return run


def test_gate_fails_with_exit_3_on_a_randomly_initialised_model(tmp_path, spec_small):
    import torch
    from transformers import AutoConfig, AutoModel

    run = write_split(tmp_path / "run")
    load_config(run, SMALL)
    torch.manual_seed(0)
    _install_model(run, AutoModel.from_config(AutoConfig.from_pretrained(spec_small.model_path)), spec_small)
    p = subprocess.run([CLI, "evaluate", "--run-dir", str(run), "--quiet"], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "quality gate failed" in p.stderr and "ndcg@10" in p.stderr
    rep = json.loads((run / "evaluate" / "report.json").read_text())
    g = rep["gate"]
    assert g["passed"] is False and g["tuned"] < g["base"] - g["tolerance"] and "below base" in g["reason"]
    paired = rep["datasets"]["heldout"]["tuned_minus_base"]["ndcg@10"]
    assert paired["ci95"][1] < 0 and paired["losses"] > paired["wins"], paired  # a random model loses, surely
    assert f"[{paired['ci95'][0]:+.4f}, {paired['ci95'][1]:+.4f}]" in g["reason"]
    assert "FAILED" in (run / "evaluate" / "report.md").read_text()
    man = json.loads((run / "evaluate" / "manifest.json").read_text())
    assert man["counts"]["gate_passed"] is False

    # Within a tolerance wide enough for any model, the loss the queries agree on still fails the gate...
    p = subprocess.run([CLI, "evaluate", "--run-dir", str(run), "--quiet", "evaluate.gate.tolerance=1"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert p.returncode == 3, p.stderr[-2000:]
    g = json.loads((run / "evaluate" / "report.json").read_text())["gate"]
    assert g["passed"] is False and g["tuned"] >= g["base"] - 1
    assert "worse with 95% confidence" in g["reason"] and "refuse_significant_loss" in p.stderr
    # ... unless the user turns that rule off; then only the tolerance decides
    p = subprocess.run([CLI, "evaluate", "--run-dir", str(run), "--quiet", "evaluate.gate.tolerance=1",
                        "evaluate.gate.refuse_significant_loss=false", "evaluate.gate.min_group_queries=2"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads((run / "evaluate" / "report.json").read_text())
    assert rep["gate"]["passed"] is True and "tolerance 1" in rep["gate"]["reason"]
    # every held-out query source large enough is named as losing, in the report and its markdown
    groups = {n: grp for n, grp in rep["datasets"]["heldout"].get("by_group", {}).items()
              if grp["queries"] >= 2 and grp["tuned_minus_base"]["ndcg@10"]["ci95"][1] < 0}
    assert rep["datasets"]["heldout"]["by_group"] and len(rep["gate"]["warnings"]) == len(groups)
    md = (run / "evaluate" / "report.md").read_text()
    for name in groups:
        assert f"held-out {name} queries" in md


def test_losing_groups_names_only_sources_large_enough_and_surely_worse():
    from types import SimpleNamespace

    from domain_embed.evaluate.stage import gate_verdict, losing_groups

    def grp(n, diff, lo, hi):
        return {"queries": n, "tuned_minus_base": {"ndcg@10": {"diff": diff, "ci95": [lo, hi], "wins": 1, "losses": n - 1}}}

    by_group = {"llm:factual": grp(7, -0.139, -0.312, -0.010),     # the demo of 2026-12-04
                "llm:keyword": grp(7, 0.121, 0.0, 0.305),           # a gain
                "structure:title": grp(4, -0.2, -0.4, -0.05),       # surely worse, but too few queries
                "structure:heading": grp(11, -0.02, -0.09, 0.04)}   # worse on average, interval across 0
    w = losing_groups(by_group, "ndcg@10", 5)
    assert len(w) == 1 and w[0].startswith("held-out llm:factual queries (7)") and "[-0.3120, -0.0100]" in w[0]
    assert len(losing_groups(by_group, "ndcg@10", 4)) == 2
    assert losing_groups(by_group, "ndcg@10", 12) == []
    # the verdict: the tolerance first, then the paired interval (when the rule is on)
    g = SimpleNamespace(enabled=True, tolerance=0.01, refuse_significant_loss=True)
    p = {"diff": -0.004, "ci95": [-0.007, -0.001], "wins": 10, "losses": 90}
    assert gate_verdict(g, "ndcg@10", 0.5, 0.496, p, "here")[0] is False
    assert gate_verdict(g, "ndcg@10", 0.5, 0.496, {**p, "ci95": [-0.007, 0.001]}, "here")[0] is True
    assert gate_verdict(g, "ndcg@10", 0.5, 0.480, {**p, "ci95": [-0.03, 0.01]}, "here")[0] is False
    g.refuse_significant_loss = False
    assert gate_verdict(g, "ndcg@10", 0.5, 0.496, p, "here")[0] is True


def test_report_base_tuned_bm25_and_extra_dataset(run_same_as_base):
    run = run_same_as_base
    p = subprocess.run([CLI, "evaluate", "--run-dir", str(run), "--quiet", "--dataset", str(run / "split" / "val_beir")],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads((run / "evaluate" / "report.json").read_text())
    assert set(rep["datasets"]) == {"heldout", "val_beir"}
    held = rep["datasets"]["heldout"]
    for system in ("base", "tuned", "bm25"):
        assert {f"{m}@{k}" for m in ("ndcg", "recall", "map", "precision") for k in (1, 5, 10, 100)} <= set(held[system])
    # same weights, same spec: identical numbers and intervals, a paired difference of exactly 0; the gate passes
    assert {k: v for k, v in held["tuned"].items() if k != "ci95"} == pytest.approx(
        {k: v for k, v in held["base"].items() if k != "ci95"})
    assert held["tuned"]["ci95"] == held["base"]["ci95"]
    paired = held["tuned_minus_base"]["ndcg@10"]
    assert paired == {"diff": 0.0, "ci95": [0.0, 0.0], "wins": 0, "losses": 0}
    for system in ("base", "tuned", "bm25"):  # every mean sits inside its own interval
        for m, (lo, hi) in held[system]["ci95"].items():
            assert lo - 1e-9 <= held[system][m] <= hi + 1e-9, (system, m)
    assert rep["gate"]["passed"] is True and "paired 95% interval [+0.0000, +0.0000]" in rep["gate"]["reason"]
    assert f"| ndcg@10 | {held['base']['ndcg@10']:.4f} [{held['base']['ci95']['ndcg@10'][0]:.3f}," in \
        (run / "evaluate" / "report.md").read_text()
    assert held["base"]["ndcg@10"] > 0.3, "MiniLM should find these passages"
    png = (run / "evaluate" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| ndcg@10 |" in (run / "evaluate" / "report.md").read_text()
    # per source:type breakdown of the held-out queries, each group scored on its own queries
    groups = held["by_group"]
    assert set(groups) == {"llm:factual", "llm:keyword"}
    assert sum(g["queries"] for g in groups.values()) == held["info"]["queries"]
    for g in groups.values():
        assert g["tuned"]["ndcg@10"] == pytest.approx(g["base"]["ndcg@10"])
    n = held["info"]["queries"]
    mean = sum(g["base"]["ndcg@10"] * g["queries"] for g in groups.values()) / n
    assert mean == pytest.approx(held["base"]["ndcg@10"]), "groups partition the held-out set"
    assert "| llm:factual |" in (run / "evaluate" / "report.md").read_text()
    # the most frequent passage that answers none of its queries, per model: the same weights, the same hub
    hubs = held["hubs"]
    assert set(hubs) == {"base", "tuned", "bm25"}
    corpus = {json.loads(line)["_id"] for line in (run / "split" / "eval_beir" / "corpus.jsonl").read_text().splitlines()}
    assert hubs["base"]["passage"] in corpus and 1 <= hubs["base"]["queries"] <= n
    assert {k: v for k, v in hubs["tuned"].items() if k != "train_queries"} == hubs["base"]
    assert "Most frequent passage in the top 10" in (run / "evaluate" / "report.md").read_text()
    assert "**Hub:**" not in (run / "evaluate" / "report.md").read_text()
    # base and tuned each embedded the held-out corpus once (val_beir's passages are among them)
    e = json.loads((run / "evaluate" / "manifest.json").read_text())["counts"]["embeddings"]
    n_corpus = len((run / "split" / "eval_beir" / "corpus.jsonl").read_text().splitlines())
    assert e["passage"]["misses"] <= 2 * n_corpus and e["passage"]["hits"] > 0
    assert {s["backend"] for s in e["sets"].values()} <= {"onnx", "torch"}
    assert {s["precision"] for s in e["sets"].values()} == {"fp32"}, "evaluation measures fp32, never int8"
    # a forced rerun embeds nothing: every vector comes from the run's store
    p = subprocess.run([CLI, "evaluate", "--run-dir", str(run), "--quiet", "--force", "--dataset",
                        str(run / "split" / "val_beir")],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    e2 = json.loads((run / "evaluate" / "manifest.json").read_text())["counts"]["embeddings"]
    assert e2["passage"]["misses"] == 0 and e2["query"]["misses"] == 0 and e2["passage"]["hits"] > 0
    assert json.loads((run / "evaluate" / "report.json").read_text())["datasets"] == rep["datasets"]


def test_a_hub_counts_only_where_it_answers_nothing_and_the_report_warns_when_tuning_made_it():
    from domain_embed.beir import top_hub
    from domain_embed.evaluate.report import _hub_lines

    run = {"q1": {"a": 0.9, "h": 0.8, "x": 0.1}, "q2": {"b": 0.9, "h": 0.7}, "q3": {"h": 0.9, "c": 0.5},
           "q4": {"d": 0.9, "x": 0.2}}
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"h": 1}, "q4": {"d": 1}}
    # h is in three top 10s but answers q3, so it counts twice; x is in two (a tie)
    assert top_hub(run, 10, lambda q, d: qrels[q].get(d, 0) > 0) in {("h", 2), ("x", 2)}
    assert top_hub(run, 2, lambda q, d: qrels[q].get(d, 0) > 0) == ("h", 2), "x is below the top 2 of q1"
    assert top_hub(run, 1)[1] == 1, "without judgments every query's top 1 is a different passage"
    assert top_hub({}, 10) == (None, 0)

    base = {"passage": "b7", "queries": 2, "share": 0.1, "text": "x"}
    hub = {"passage": "h", "queries": 5, "share": 0.25, "text": "What is Debian\n the universal OS",
           "train_queries": ["debian", "what is debian"]}
    warned = "\n".join(_hub_lines({"base": base, "tuned": hub}, 20))
    assert "**Hub:**" in warned and '"debian"; "what is debian"' in warned and "What is Debian the universal" in warned
    assert "**Hub:**" not in "\n".join(_hub_lines({"base": base, "tuned": {**hub, "queries": 3}}, 20)), "not 2x the base"
    assert "**Hub:**" not in "\n".join(_hub_lines({"base": {**base, "queries": 0}, "tuned": {**hub, "queries": 3}}, 40)), \
        "under a tenth of the queries"
    assert _hub_lines({"base": base}, 20) == []


class _EmbeddingServer:
    """A tiny /v1/embeddings server over a model directory (the real gateway is tested in tests/serve)."""

    def __init__(self, spec: EncodingSpec, model_dir: Path, noise: float = 0.0):
        from domain_embed.encoding import Encoder

        enc = Encoder(spec, model_dir, device="cpu")
        rng = np.random.default_rng(0)

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                emb = enc.encode(texts, body["input_type"])
                if noise:
                    emb = emb + noise * rng.normal(size=emb.shape).astype(np.float32)
                out = json.dumps({"object": "list", "model": body["model"],
                                  "data": [{"object": "embedding", "index": i, "embedding": e.tolist()}
                                           for i, e in enumerate(emb)],
                                  "usage": {"prompt_tokens": 0, "total_tokens": 0}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("noise,ok", [(0.0, True), (0.05, False)])
def test_live_endpoint_drift(run_same_as_base, spec_small, noise, ok):
    run = run_same_as_base
    srv = _EmbeddingServer(spec_small, run / "train" / "model", noise)
    try:
        cfg = load_config(run, [], save=False)
        if ok:
            m = run_stage(STAGES["evaluate"], run, cfg, STAGES, quiet=True, extra={"endpoint": srv.url})
            assert m["counts"]["endpoint_max_drift"] < 1e-4
            rep = json.loads((run / "evaluate" / "report.json").read_text())
            assert rep["endpoint"]["passed"] and rep["datasets"]["heldout"]["endpoint"]["ndcg@10"] == pytest.approx(
                rep["datasets"]["heldout"]["tuned"]["ndcg@10"], abs=1e-6)
        else:
            with pytest.raises(QualityGateFailed, match="drifts from the checkpoint"):
                run_stage(STAGES["evaluate"], run, cfg, STAGES, quiet=True, extra={"endpoint": srv.url})
            rep = json.loads((run / "evaluate" / "report.json").read_text())
            assert rep["endpoint"]["passed"] is False and rep["endpoint"]["max_drift"] > 1e-3
    finally:
        srv.close()

"""`domain-embed evaluate --real-queries FILE [--qrels FILE]` through the real CLI, on a run directory
whose split/ and train/ hold real files (a tiny BEIR set, and the real MiniLM weights standing in
for a tuned checkpoint) with the manifests those stages write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from domain_embed.rundir import atomic_write_json, sha256_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_sets import CORPUS, REAL_KEYWORDS, SYNTH_QUESTIONS  # noqa: E402

BIN = Path(sys.executable).parent / "domain-embed"


def _manifest(run: Path, stage: str, folder: str, outputs: list[str]) -> None:
    atomic_write_json(run / folder / "manifest.json",
                      {"stage": stage, "outputs": {rel: sha256_path(run / rel) for rel in outputs}})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, minilm_path) -> Path:
    run = tmp_path_factory.mktemp("user_queries_cli") / "run"
    beir = run / "split" / "eval_beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"c{i}", "title": "", "text": t}) + "\n"
                                               for i, t in enumerate(CORPUS)))
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": f"s{i}", "text": q}) + "\n"
                                                for i, q in enumerate(SYNTH_QUESTIONS)))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                             "".join(f"s{i}\tc{i}\t1\n" for i in range(len(CORPUS))))
    _manifest(run, "split", "split", ["split/eval_beir"])
    shutil.copytree(minilm_path, run / "train" / "model")
    _manifest(run, "train", "train", ["train/model"])
    # what synthesize and curate wrote, for the drift report
    (run / "synth").mkdir()
    (run / "synth" / "qa.jsonl").write_text("".join(json.dumps(
        {"id": f"s{i}", "question": q, "query_type": "factual", "segment_ids": [f"c{i}"], "doc_ids": [f"d{i}"],
         "source": {"kind": "llm", "model": "test"}, "quality": {}}) + "\n" for i, q in enumerate(SYNTH_QUESTIONS)))
    (run / "curate").mkdir()
    (run / "curate" / "chunks.jsonl").write_text("".join(json.dumps(
        {"id": f"c{i}", "doc_id": f"d{i}", "text": t, "title": "", "section": "", "source": "x", "n_tokens": 30}) + "\n"
        for i, t in enumerate(CORPUS)))
    (run / "real.jsonl").write_text("".join(json.dumps({"_id": f"r{i}", "text": q}) + "\n"
                                            for i, q in enumerate(REAL_KEYWORDS)))
    (run / "real_qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                        "".join(f"r{i}\tc{i}\t1\n" for i in range(len(REAL_KEYWORDS))))
    return run


def evaluate(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "evaluate", "--run-dir", str(run), "--force", "--quiet", "evaluate.bm25=false",
                           "evaluate.gate.enabled=false", *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_real_queries_with_qrels_are_scored_beside_heldout(run_dir):
    p = evaluate(run_dir, "--real-queries", str(run_dir / "real.jsonl"), "--qrels", str(run_dir / "real_qrels.tsv"))
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((run_dir / "evaluate" / "report.json").read_text())
    assert {"heldout", "real"} <= set(rep["datasets"])
    real = rep["datasets"]["real"]
    assert real["info"]["queries"] == len(REAL_KEYWORDS)
    for who in ("base", "tuned"):
        assert 0.0 < real[who]["ndcg@10"] <= 1.0
    # the same weights on both sides: base and "tuned" must agree exactly
    assert real["base"]["ndcg@10"] == pytest.approx(real["tuned"]["ndcg@10"], abs=1e-6)


def _evaluate_wires_drift() -> bool:
    src = Path(__file__).resolve().parents[2] / "services" / "domain_embed" / "evaluate" / "stage.py"
    return src.is_file() and "drift_for_run" in src.read_text()


@pytest.mark.xfail(not _evaluate_wires_drift(), strict=True, run=False,
                   reason="the evaluate stage does not call domain_embed.user_queries.drift_for_run yet (integrator: see issue 7 note)")
def test_real_queries_without_qrels_report_drift(run_dir):
    p = evaluate(run_dir, "--real-queries", str(run_dir / "real.jsonl"))
    assert p.returncode == 0, p.stderr[-3000:]
    drift = json.loads((run_dir / "evaluate" / "drift.json").read_text())
    assert {"style_keyword", "length_longer"} <= {f["code"] for f in drift["flags"]}
    assert (run_dir / "evaluate" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    assert "synth.types.keyword" in (run_dir / "evaluate" / "report.md").read_text()


def test_bad_real_query_file_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "typo"}\n')
    p = evaluate(run_dir, "--real-queries", str(bad), "--qrels", str(run_dir / "real_qrels.tsv"))
    assert p.returncode == 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("domain-embed evaluate: error:") and str(bad) in last


def _qrels(path: Path, ids) -> Path:
    path.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\tc{i % len(CORPUS)}\t1\n" for i, q in enumerate(ids)))
    return path


@pytest.mark.parametrize("ids,more,needles", [
    # the audit's case: two of three qrels ids match no query; it must not gate on the one that does
    (["r0", "zz1", "zz2"], [], ["only 1 of the 10 real queries have a relevant judgment",
                                "2 qrels ids match no query: 'zz1', 'zz2'", '"_id"']),
    (["r0", "r1", "r2"], [], ["only 3 of the 10 real queries have a relevant judgment", "fewer than the 10",
                              "evaluate.gate.min_real_queries"]),
    (["r0", "r1", "r2"], ["evaluate.gate.min_real_queries=5"], ["fewer than the 5"]),
])
def test_qrels_that_do_not_match_the_queries_fail_before_scoring(run_dir, tmp_path, ids, more, needles):
    p = evaluate(run_dir, "evaluate.gate.enabled=true", *more, "--real-queries", str(run_dir / "real.jsonl"),
                 "--qrels", str(_qrels(tmp_path / "q.tsv", ids)))
    assert p.returncode == 2, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("domain-embed evaluate: error:") and all(n in last for n in needles), last


def test_unmatched_qrels_ids_and_unjudged_queries_are_warnings(run_dir, tmp_path):
    queries = tmp_path / "real.jsonl"
    queries.write_text((run_dir / "real.jsonl").read_text() + json.dumps({"_id": "r10", "text": "unjudged"}) + "\n")
    qrels = _qrels(tmp_path / "q.tsv", [f"r{i}" for i in range(len(REAL_KEYWORDS))] + ["zz1"])
    p = subprocess.run([str(BIN), "evaluate", "--run-dir", str(run_dir), "--force", "evaluate.bm25=false",
                        "evaluate.gate.enabled=false", "--real-queries", str(queries), "--qrels", str(qrels)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "warning: 1 of the 11 query ids in the qrels ('zz1') match no query" in p.stderr
    assert "warning: 1 of the 11 real queries ('r10') have no relevant judgment" in p.stderr
    rep = json.loads((run_dir / "evaluate" / "report.json").read_text())
    assert rep["datasets"]["real"]["info"]["queries"] == len(REAL_KEYWORDS)
    warnings = rep["gate"]["warnings"]
    assert any("'zz1'" in w for w in warnings) and any("'r10'" in w for w in warnings)
    assert "'zz1'" in (run_dir / "evaluate" / "report.md").read_text()


def test_bad_real_query_file_without_qrels_fails_before_embedding(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("embeddings", "evaluate"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "pg_dump custom format"}\nnot json here\n')
    p = subprocess.run([str(BIN), "evaluate", "--run-dir", str(run), "--force", "evaluate.bm25=false",
                        "--real-queries", str(bad)],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith(f"domain-embed evaluate: error: {bad}:2 is not valid JSON")
    # nothing was embedded (no ONNX graph built, no vectors stored) before the file was read
    assert "[evaluate: embed" not in p.stderr and "inference graph" not in p.stderr, p.stderr[-3000:]
    assert not (run / "embeddings").exists()


def test_qrels_without_real_queries_is_an_error(run_dir):
    p = evaluate(run_dir, "--qrels", str(run_dir / "real_qrels.tsv"))
    assert p.returncode == 2 and "--qrels" in p.stderr and "needs --real-queries" in p.stderr, p.stderr[-3000:]


def test_real_judged_queries_decide_the_gate_and_lead_the_report(run_dir, tmp_path):
    import torch
    from transformers import AutoConfig, AutoModel

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.rmtree(run / "evaluate", ignore_errors=True)
    args = [str(BIN), "evaluate", "--run-dir", str(run), "--force", "--quiet", "evaluate.bm25=false",
            "evaluate.gate.enabled=true",  # the module run saved gate.enabled=false in its overrides
            "--real-queries", str(run / "real.jsonl"), "--qrels", str(run / "real_qrels.tsv")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads((run / "evaluate" / "report.json").read_text())
    g = rep["gate"]
    assert g["dataset"] == "real" and g["passed"] is True and "real queries" in g["reason"]
    assert g["base"] == rep["datasets"]["real"]["base"][g["metric"]]
    assert list(rep["datasets"])[0] == "real"
    md = (run / "evaluate" / "report.md").read_text()
    assert md.index("## real") < md.index("## heldout")
    # a worse "tuned" model fails the gate on the real queries, with exit 3
    torch.manual_seed(0)
    model_dir = run / "train" / "model"
    AutoModel.from_config(AutoConfig.from_pretrained(model_dir)).save_pretrained(model_dir, safe_serialization=True)
    _manifest(run, "train", "train", ["train/model"])
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 3, p.stderr[-3000:]
    g = json.loads((run / "evaluate" / "report.json").read_text())["gate"]
    assert g["dataset"] == "real" and g["passed"] is False and g["tuned"] < g["base"]
    assert "real queries" in p.stderr

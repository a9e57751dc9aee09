"""Drift between real and synthetic queries: flags fire in both directions, stay quiet on matched sets,
and the embedding distance separates mismatched sets from matched ones. Real MiniLM embeddings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from domain_embed.user_queries import drift_for_run, drift_markdown, drift_report, plot_drift, query_style

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_sets import CORPUS, REAL_KEYWORDS, REAL_QUESTIONS, SYNTH_KEYWORDS, SYNTH_QUESTIONS, rows  # noqa: E402


@pytest.fixture(scope="module")
def encoder(spec):
    from domain_embed.encoding import Encoder

    return Encoder(spec, batch_size=32)


def codes(report):
    return {f["code"] for f in report["flags"]}


def test_query_style():
    assert query_style("How do I vacuum a table?") == "question"
    assert query_style("vacuum full lock") == "keyword"
    assert query_style("does the order of columns matter") == "question"
    assert query_style("configure md5 password authentication for remote users from one subnet") == "phrase"


def test_keyword_real_vs_question_synthetic_flags_style(encoder):
    rep = drift_report(REAL_KEYWORDS, rows(SYNTH_QUESTIONS, "factual"), CORPUS, encoder, n_perm=200)
    assert rep["real"]["style"]["keyword"] == 1.0
    assert rep["synthetic"]["style"]["question"] == 1.0
    assert rep["real"]["length_words"]["median"] < rep["synthetic"]["length_words"]["median"]
    c = codes(rep)
    assert "style_keyword" in c and "length_longer" in c, rep["flags"]
    assert "style_question" not in c and "length_shorter" not in c
    msg = next(f["message"] for f in rep["flags"] if f["code"] == "style_keyword")
    assert "synth.types.keyword" in msg and "100% of synthetic ones are full questions" in msg
    # The report is JSON-ready (it is written to evaluate/drift.json).
    json.dumps(rep)


def test_question_real_vs_keyword_synthetic_flags_the_other_way(encoder):
    rep = drift_report(REAL_QUESTIONS, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, encoder, n_perm=200)
    c = codes(rep)
    assert "style_question" in c and "length_shorter" in c, rep["flags"]
    assert "style_keyword" not in c and "length_longer" not in c
    assert any("synth.types.factual" in f["message"] for f in rep["flags"])


def test_matched_sets_raise_no_flags(encoder):
    rep = drift_report(REAL_KEYWORDS, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, encoder, n_perm=200)
    assert rep["flags"] == [], rep["flags"]
    assert "none: the synthetic queries look like the real ones" in drift_markdown(rep)


def test_embedding_distance_larger_for_mismatched_sets(encoder):
    matched = drift_report(REAL_KEYWORDS, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, encoder, n_perm=100)["embedding"]
    mismatched = drift_report(REAL_KEYWORDS, rows(SYNTH_QUESTIONS, "factual"), CORPUS, encoder, n_perm=100)["embedding"]
    assert mismatched["mmd2_rbf"] > matched["mmd2_rbf"]
    assert mismatched["nn_cosine_real_to_synthetic"] < matched["nn_cosine_real_to_synthetic"]
    assert mismatched["nn_cosine_synthetic_to_real"] < matched["nn_cosine_synthetic_to_real"]
    # Unrelated topics are farther still, and the permutation test calls them different.
    off_topic = ["chocolate cake recipe", "football world cup results", "cheap flights to rome", "learn guitar chords",
                 "weather tomorrow berlin", "best hiking boots", "how to train a puppy", "tomato plant diseases",
                 "used car prices", "yoga for beginners"]
    far = drift_report(off_topic, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, encoder, n_perm=200)
    assert far["embedding"]["mmd2_rbf"] > mismatched["mmd2_rbf"]
    assert far["embedding"]["mmd_p_value"] <= 0.01 and matched["mmd_p_value"] > 0.01
    assert {"coverage", "embedding_distance", "vocabulary"} <= codes(far), far["flags"]


def test_per_type_breakdown_and_nearest_type(encoder):
    synth = rows(SYNTH_QUESTIONS, "factual") + rows(SYNTH_KEYWORDS[:2], "keyword")
    rep = drift_report(REAL_KEYWORDS, synth, CORPUS, encoder, n_perm=50)
    assert set(rep["by_type"]) == {"factual", "keyword"}
    assert rep["by_type"]["keyword"]["share"] == pytest.approx(2 / 12, abs=1e-3)
    assert rep["by_type"]["factual"]["style"]["question"] == 1.0
    near = rep["embedding"]["real_nearest_synthetic_type"]
    assert sum(near.values()) == pytest.approx(1.0, abs=1e-3)


def test_vocabulary_overlap_without_encoder():
    slang = ["postgres forgot superuser pwd", "db backup cron job script", "k8s postgres helm chart", "pgbouncer config",
             "aws rds upgrade", "django migrations slow", "supabase row level", "timescale hypertable", "pgvector hnsw",
             "citus sharding"]
    rep = drift_report(slang, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, None)
    assert rep["embedding"] is None
    assert rep["real"]["vocab_overlap"] < 0.3 < rep["synthetic"]["vocab_overlap"]
    assert "vocabulary" in codes(rep)
    assert "pgbouncer" in rep["real"]["words_not_in_corpus"] or "k8s" in rep["real"]["words_not_in_corpus"]


def test_plot_and_run_files_written(tmp_path, encoder):
    run = tmp_path / "run"
    (run / "synth").mkdir(parents=True)
    (run / "curate").mkdir()
    (run / "synth" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(SYNTH_QUESTIONS, "factual")))
    (run / "curate" / "chunks.jsonl").write_text(
        "".join(json.dumps({"id": f"c{i}", "doc_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(CORPUS)))
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"query": q}) + "\n" for q in REAL_KEYWORDS))
    rep = drift_for_run(run, real, encoder, n_perm=50)
    for name in ("drift.json", "drift.md", "drift.png"):
        assert (run / "evaluate" / name).stat().st_size > 0
    assert (run / "evaluate" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "evaluate" / "drift.json").read_text())["flags"] == rep["flags"]
    assert "synth.types.keyword" in (run / "evaluate" / "drift.md").read_text()
    # without embeddings the figure still renders
    out = plot_drift(drift_report(REAL_KEYWORDS, rows(SYNTH_QUESTIONS, "factual"), CORPUS, None), tmp_path / "x.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_structure_dominated_synthetic_set_is_flagged():
    heads = ["routine vacuuming", "table partitioning", "the pg_hba.conf file", "json types", "numeric types",
             "foreign keys", "continuous archiving", "multicolumn indexes", "check constraints"]
    synth = rows(heads, "heading") + rows(SYNTH_KEYWORDS[:1], "keyword")
    rep = drift_report(REAL_KEYWORDS, synth, CORPUS, None)
    msg = next(f["message"] for f in rep["flags"] if f["code"] == "structure_dominated")
    assert msg.startswith("90% of synthetic queries are heading/title") and "only 1 came from the LLM" in msg
    assert "structure_dominated" not in codes(drift_report(REAL_KEYWORDS, rows(SYNTH_KEYWORDS, "keyword"), CORPUS, None))

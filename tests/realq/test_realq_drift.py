"""Drift between real and synthetic queries: flags fire in both directions, stay quiet on matched sets,
and the embedding distance separates mismatched sets from matched ones. Real MiniLM embeddings."""

from __future__ import annotations

import json

import pytest

from domain_embed.realq import drift_for_run, drift_markdown, drift_report, plot_drift, query_style

# What a user of the PostgreSQL manual types into a search box...
REAL_KEYWORDS = [
    "pg_hba.conf md5", "vacuum full lock", "jsonb gin index", "pg_dump custom format", "range partitioning",
    "timestamp time zone", "numeric precision scale", "foreign key cascade", "wal archive_command", "multicolumn btree index",
]
# ...what a question generator tends to write about the same pages...
SYNTH_QUESTIONS = [
    "How do I configure md5 password authentication for a database user in the pg_hba.conf file?",
    "Why does VACUUM FULL take an exclusive lock on the table while it rewrites it?",
    "Which operator classes can a GIN index use to speed up queries on jsonb columns?",
    "What are the advantages of the custom archive format when taking a backup with pg_dump?",
    "How can a large table be split into partitions by ranges of a date column?",
    "What is the difference between timestamp with time zone and timestamp without time zone?",
    "How do precision and scale limit the values that a numeric column can store?",
    "What happens to the referencing rows when a row with a foreign key ON DELETE CASCADE is deleted?",
    "How should archive_command be set so that completed WAL segments are copied to the archive?",
    "When is a multicolumn B-tree index used by the planner for conditions on its leading columns?",
]
# ...and keyword queries a well-tuned generator writes for them (paraphrases of the real ones).
SYNTH_KEYWORDS = [
    "pg_hba md5 password auth", "vacuum full exclusive lock", "gin index on jsonb", "pg_dump custom archive",
    "partition by range", "timestamptz time zone", "numeric precision and scale", "on delete cascade foreign key",
    "archive_command wal segments", "btree index multiple columns",
]
REAL_QUESTIONS = [
    "how do I let a remote user log in with a password?",
    "why is vacuum full blocking my queries?",
    "what index should I use for searching inside jsonb documents?",
    "how do I back up one database so I can restore single tables?",
    "how do I split a huge table by month?",
    "should I store timestamps with or without time zone?",
    "what happens if I insert a number with too many decimal places?",
    "how do I delete child rows automatically when the parent is deleted?",
    "how do I copy wal files to another server for point in time recovery?",
    "does the order of columns in an index matter?",
]
CORPUS = [
    "The pg_hba.conf file controls client authentication. The md5 and scram-sha-256 methods send a password.",
    "VACUUM FULL rewrites the entire table into a new disk file and requires an exclusive lock on the table.",
    "The jsonb type supports GIN indexes with the jsonb_ops and jsonb_path_ops operator classes.",
    "pg_dump can write a custom format archive, suitable for input into pg_restore for selective restore.",
    "Range partitioning splits a table into partitions defined by a key column or set of columns, such as dates.",
    "The timestamp with time zone type stores a point in time; timestamp without time zone ignores the time zone.",
    "The precision of a numeric is the total count of digits; the scale is the count of decimal digits in the fraction.",
    "A foreign key with ON DELETE CASCADE deletes referencing rows when the referenced row is deleted.",
    "The archive_command is executed to archive a completed WAL file segment for continuous archiving.",
    "A multicolumn B-tree index is most efficient when there are constraints on the leading columns.",
]


def rows(questions, qtype):
    return [{"id": f"q{i}", "question": q, "query_type": qtype, "segment_ids": [f"c{i}"], "doc_ids": [f"d{i}"],
             "source": {"kind": "llm", "model": "test"}, "quality": {"judge_score": 8}} for i, q in enumerate(questions)]


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
    # The report is JSON-ready (it is written to eval/drift.json).
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
        assert (run / "eval" / name).stat().st_size > 0
    assert (run / "eval" / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "eval" / "drift.json").read_text())["flags"] == rep["flags"]
    assert "synth.types.keyword" in (run / "eval" / "drift.md").read_text()
    # without embeddings the figure still renders
    out = plot_drift(drift_report(REAL_KEYWORDS, rows(SYNTH_QUESTIONS, "factual"), CORPUS, None), tmp_path / "x.png")
    assert out.read_bytes()[:4] == b"\x89PNG"

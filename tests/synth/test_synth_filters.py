"""The synthesis filters and planning, without an LLM (the base embedding model is real)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from domain_embed.synth import filters as F
from domain_embed.synth.prompts import build_examples, chat_messages, completion_prompt, parse_judge
from domain_embed.synth.candidates import plan_tasks, sample_chunks
from domain_embed.synth.structure import normalize_heading, structure_queries

CHUNKS = [json.loads(l) for l in (Path(__file__).parent / "sample_chunks.jsonl").read_text().splitlines()]


def test_format_filter_reasons():
    assert F.format_reason("How do I create a partial index?", "factual") is None
    assert F.format_reason("What does VACUUM FULL lock", "factual") is None  # wh-start without '?'
    assert F.format_reason("", "factual") == "empty"
    assert F.format_reason("Indexes?", "factual") == "too_short"
    assert F.format_reason("Partial indexes are indexes built over a subset of a table.", "factual") == "not_a_question"
    assert F.format_reason("What does the passage say about locks?", "factual") == "refers_to_passage"
    assert F.format_reason("What is the last two lines above?", "factual") == "refers_to_passage"  # SmolLM2 wrote it
    assert F.format_reason("What is MVCC? How does VACUUM work?", "factual") == "several_questions"
    assert F.format_reason(" ".join(["word"] * 41) + "?", "factual") == "too_long"
    assert F.format_reason("vacuum full", "keyword") is None
    assert F.format_reason("you can use a hostname, but you need to,", "keyword") == "fragment"
    assert F.format_reason(" ".join(["w"] * 11), "keyword") == "too_long"


def test_copy_span_filter():
    passage = "A partial index is an index built over a subset of a table; the subset is defined by a predicate."
    assert F.longest_copied_ngram("What is an index built over a subset of a table?", passage) == 10
    assert F.longest_copied_ngram("Which indexes cover only some rows?", passage) <= 1
    assert F.longest_copied_ngram("", passage) == 0


def test_dedup_by_cosine_with_the_base_model(spec):
    from domain_embed.encoding import Encoder

    qs = ["How do I create a partial index?", "How can I create a partial index?",
          "Which lock does VACUUM FULL take?", "how do i create a partial index"]
    vecs = Encoder(spec).encode_queries(qs)
    kept, dup_of = F.dedup_by_cosine(vecs, 0.9)
    assert kept == [0, 2]
    assert dup_of == {1: 0, 3: 0}
    kept_all, _ = F.dedup_by_cosine(vecs, 1.01)
    assert kept_all == [0, 1, 2, 3]


def test_round_trip_ranks():
    corpus = np.eye(4, dtype=np.float32)
    q = np.array([[0.9, 0.1, 0, 0], [0.1, 0.2, 0.9, 0.3]], dtype=np.float32)
    assert F.round_trip_ranks(q, corpus, [[0], [1]]) == [1, 3]
    assert F.round_trip_ranks(q[1:], corpus, [[3, 2]]) == [1]  # best of several positives


def test_heading_numbering_goes_and_terms_that_look_like_it_stay():
    # appendix and chapter numbering (the PostgreSQL manual's "F.35.", Debian Reference's "A.1.")
    assert normalize_heading("F.35. pg_trgm") == "pg_trgm"
    assert normalize_heading("A.1. Getting Started") == "getting started"
    assert normalize_heading("Chapter 5. Data Definition") == "data definition"
    assert normalize_heading("IV. Client Interfaces") == "client interfaces"
    # not numbering: a standard's name, a lone capital, a file name
    assert normalize_heading("X.509 Certificates") == "X.509 certificates"
    assert normalize_heading("A Note on Locking") == "A note on locking"
    assert normalize_heading("a.out format") == "a.out format"


def test_structure_queries_skip_generic_headings():
    assert normalize_heading("11.8. Partial Indexes") == "partial indexes"
    assert normalize_heading("CREATE INDEX") == "CREATE INDEX"
    rows = structure_queries(CHUNKS)
    qs = {r["question"] for r in rows}
    assert "partial indexes" in qs and "table-level locks" in qs and "JSON input and output syntax" in qs
    assert not qs & {"description", "parameters", "synopsis", "tip", "note", "examples"}
    assert all(r["query_type"] in ("heading", "title") and r["segment_ids"] for r in rows)
    # a doc title that equals its first heading is produced once
    assert sum(1 for r in rows if r["question"] == "partial indexes") == 1


def test_sampling_spreads_across_documents_and_is_seeded():
    s1 = sample_chunks(CHUNKS, 4, seed=1, min_words=25)
    assert len({c["doc_id"] for c in s1}) == 4
    assert [c["id"] for c in s1] == [c["id"] for c in sample_chunks(CHUNKS, 4, seed=1, min_words=25)]
    assert len(sample_chunks(CHUNKS, 0, seed=1, min_words=25)) == len(CHUNKS)


def test_multi_hop_tasks_record_every_segment():
    tasks = plan_tasks(CHUNKS[:3], CHUNKS, {"multi_hop": 1, "factual": 2}, hop_chunks=3)
    mh = [t for t in tasks if t["query_type"] == "multi_hop"]
    by_id = {c["id"]: c for c in CHUNKS}
    # the single-chunk document gets no multi-hop task; the others span 3 chunks of one document
    assert all(len(t["segment_ids"]) == 3 and len({by_id[s]["doc_id"] for s in t["segment_ids"]}) == 1 for t in mh)
    assert len({t["key"] for t in tasks}) == len(tasks)
    assert sum(t["query_type"] == "factual" for t in tasks) == 6


def test_prompts_use_examples_from_other_documents():
    rows = structure_queries(CHUNKS)
    by_id = {c["id"]: c for c in CHUNKS}
    doc = CHUNKS[0]["doc_id"]
    ex = build_examples(rows, by_id, "keyword", doc, 2, seed=3)
    assert len(ex) == 2
    own_headings = {r["question"] for r in rows if r["doc_ids"] == [doc]}
    assert not {e["question"] for e in ex} & own_headings
    msgs = chat_messages("keyword", [CHUNKS[0]["text"]], ex, with_answer=False)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert json.loads(msgs[2]["content"]) == {"question": ex[0]["question"]}
    text = completion_prompt("factual", [CHUNKS[0]["text"]], ex)
    assert text.endswith("Question:") and text.count("Question:") == 3


@pytest.mark.parametrize("text,expected", [
    ('{"relevance": 8, "answerability": 7, "clarity": 9}', {"relevance": 8, "answerability": 7, "clarity": 9}),
    ("Relevance: 6\nAnswerability - 5\nclarity: 10", {"relevance": 6, "answerability": 5, "clarity": 10}),
    ("I think it is a good query.", None),
    ('{"relevance": 80, "answerability": 7, "clarity": 9}', None),
])
def test_judge_parsing_is_robust(text, expected):
    assert parse_judge(text) == expected


def test_judge_auto_and_degenerate_judge_detection(base_cfg):
    from domain_embed.config import load_config
    from domain_embed.errors import UserError
    from domain_embed.schema import LLMKind, typed
    from domain_embed.synth.generate import degenerate as _degenerate, judge_enabled

    cfg = typed(base_cfg)  # a copy: the typed view is made afresh from the config
    assert cfg.synth.judge.enabled == "auto" and judge_enabled(cfg) is False  # local tiny model
    cfg.llm.kind = LLMKind.remote
    assert judge_enabled(cfg) is True
    for given, on in ((True, True), ("false", False), (False, False)):  # Hydra's bool or the YAML's string
        cfg.synth.judge.enabled = given
        assert judge_enabled(cfg) is on, given
    cfg.synth.judge.enabled = "sometimes"
    with pytest.raises(UserError, match="auto"):
        judge_enabled(cfg)
    with pytest.raises(UserError, match="synth.judge.enabled='sometimes'"):  # and the schema refuses it at load
        load_config(None, ["synth.judge.enabled=sometimes"], save=False)
    ones = {"relevance": 1, "answerability": 1, "clarity": 1}
    assert _degenerate([ones] * 12, 0.9)                      # what SmolLM2-135M does
    varied = [{"relevance": i % 10 + 1, "answerability": 5, "clarity": 7} for i in range(12)]
    assert _degenerate(varied, 0.9) is None
    assert _degenerate([ones] * 3, 0.9) is None                # too few to tell

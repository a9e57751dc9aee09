"""The document-level split: no test chunk in any training file, BEIR files well-formed, seeded."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.errors import UserError
from domain_embed.rundir import atomic_write_jsonl, read_jsonl, run_stage
from domain_embed.split.stage import assign_documents
from domain_embed.stages import STAGES


def _h(s: str) -> str:
    import hashlib

    return hashlib.sha256(s.encode()).hexdigest()[:16]


def make_inputs(n_docs: int = 10, chunks_per_doc: int = 3) -> tuple[list[dict], list[dict]]:
    chunks, qa = [], []
    for d in range(n_docs):
        did = f"d_{_h(f'doc{d}')}"
        ids = []
        for k in range(chunks_per_doc):
            cid = f"c_{_h(f'doc{d}-{k}')}"
            ids.append(cid)
            chunks.append({"id": cid, "doc_id": did, "text": f"Doc {d} — part {k}\nbody {d} {k}", "title": f"Doc {d}",
                           "section": f"part {k}", "source": f"doc{d}.md", "n_tokens": 8})
        for k, cid in enumerate(ids):
            qa.append({"id": f"q_{_h(f'q{d}-{k}')}", "question": f"what is in doc {d} part {k}?", "answer": "",
                       "query_type": "factual", "reasoning_type": "factual", "hop_count": 1, "segment_ids": [cid],
                       "doc_ids": [did], "source": {"kind": "llm", "model": "m"}, "quality": {}})
        qa.append({"id": f"q_{_h(f'mh{d}')}", "question": f"how do parts of doc {d} relate?", "answer": "",
                   "query_type": "multi_hop", "reasoning_type": "compositional", "hop_count": 2,
                   "segment_ids": ids[:2], "doc_ids": [did], "source": {"kind": "llm", "model": "m"}, "quality": {}})
    return chunks, qa


def run_split(run_dir: Path, chunks: list[dict], qa: list[dict], overrides: list[str] = (), quiet: bool = True) -> dict:
    cfg = load_config(run_dir, list(overrides))

    def curate(ctx):
        atomic_write_jsonl(ctx.dir / "chunks.jsonl", chunks)
        return {}

    def synth(ctx):
        atomic_write_jsonl(ctx.dir / "qa.jsonl", qa)
        return {}

    run_stage(dataclasses.replace(STAGES["curate"], fn=curate), run_dir, cfg, STAGES, quiet=True)
    run_stage(dataclasses.replace(STAGES["synth"], fn=synth), run_dir, cfg, STAGES, quiet=True)
    return run_stage(STAGES["split"], run_dir, cfg, STAGES, quiet=quiet)


def _qrels(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0] == ["query-id", "corpus-id", "score"]
    return [tuple(r) for r in rows[1:]]


def test_no_test_chunk_in_training_files_and_beir_is_well_formed(tmp_path):
    chunks, qa = make_inputs()
    man = run_split(tmp_path, chunks, qa)
    s = tmp_path / "split"
    info = json.loads((s / "split.json").read_text())
    test_docs, val_docs, train_docs = set(info["test_docs"]), set(info["val_docs"]), set(info["train_docs"])
    assert test_docs and train_docs and val_docs
    assert not (test_docs & train_docs) and not (test_docs & val_docs) and not (val_docs & train_docs)
    chunk_doc = {c["id"]: c["doc_id"] for c in chunks}
    test_chunks = {c["id"] for c in chunks if c["doc_id"] in test_docs}

    train_corpus = list(read_jsonl(s / "train_corpus.jsonl"))
    assert {c["doc_id"] for c in train_corpus} == train_docs
    assert set(train_corpus[0]) == set(chunks[0])  # same schema as chunks.jsonl
    train_qa = list(read_jsonl(s / "train_qa.jsonl"))
    assert train_qa and all(chunk_doc[sid] in train_docs for q in train_qa for sid in q["segment_ids"])
    assert not test_chunks & {sid for q in train_qa for sid in q["segment_ids"]}
    val_corpus_ids = {r["_id"] for r in read_jsonl(s / "val_beir" / "corpus.jsonl")}
    assert not test_chunks & val_corpus_ids

    for folder, split_name, corpus_docs in (("val_beir", "dev", train_docs | val_docs),
                                             ("eval_beir", "test", train_docs | val_docs | test_docs)):
        corpus = list(read_jsonl(s / folder / "corpus.jsonl"))
        queries = list(read_jsonl(s / folder / "queries.jsonl"))
        assert all(set(r) == {"_id", "title", "text"} for r in corpus)
        assert all(set(r) == {"_id", "text", "metadata"} and r["_id"].startswith("q_") for r in queries)
        assert {chunk_doc[r["_id"]] for r in corpus} == corpus_docs
        qrels = _qrels(s / folder / "qrels" / f"{split_name}.tsv")
        cids, qids = {r["_id"] for r in corpus}, {r["_id"] for r in queries}
        assert qrels and all(q in qids and c in cids and sc == "1" for q, c, sc in qrels)
        assert not cids & qids
    # test queries come from test documents only; the multi-hop ones cite both chunks
    eval_q = {r["_id"] for r in read_jsonl(s / "eval_beir" / "queries.jsonl")}
    assert eval_q == {q["id"] for q in qa if q["doc_ids"][0] in test_docs}
    mh = [q for q in qa if q["query_type"] == "multi_hop" and q["id"] in eval_q]
    qrels_test = _qrels(s / "eval_beir" / "qrels" / "test.tsv")
    assert all(sum(1 for r in qrels_test if r[0] == q["id"]) == 2 for q in mh)
    assert man["counts"]["queries"]["test"] == len(eval_q)


def test_multi_hop_touching_a_test_document_goes_to_test(tmp_path):
    chunks, qa = make_inputs(n_docs=6)
    assign = assign_documents({c["doc_id"] for c in chunks}, 0.2, 0.0, 42)
    test_doc = next(d for d, p in assign.items() if p == "test")
    train_doc = next(d for d, p in assign.items() if p == "train")
    a = next(c["id"] for c in chunks if c["doc_id"] == train_doc)
    b = next(c["id"] for c in chunks if c["doc_id"] == test_doc)
    qa.append({"id": "q_" + "e" * 16, "question": "cross-document?", "answer": "", "query_type": "multi_hop",
               "reasoning_type": "compositional", "hop_count": 2, "segment_ids": [a, b],
               "doc_ids": [train_doc, test_doc], "source": {"kind": "llm", "model": "m"}, "quality": {}})
    run_split(tmp_path, chunks, qa, ["split.val_fraction=0"])
    train_ids = {q["id"] for q in read_jsonl(tmp_path / "split" / "train_qa.jsonl")}
    test_ids = {q["_id"] for q in read_jsonl(tmp_path / "split" / "eval_beir" / "queries.jsonl")}
    assert "q_" + "e" * 16 in test_ids and "q_" + "e" * 16 not in train_ids


def test_split_is_deterministic_with_seed_and_changes_with_it(tmp_path):
    docs = [f"d_{i:016x}" for i in range(40)]
    a = assign_documents(docs, 0.2, 0.1, seed=7)
    assert a == assign_documents(list(reversed(docs)), 0.2, 0.1, seed=7)
    assert a != assign_documents(docs, 0.2, 0.1, seed=8)
    assert sum(p == "test" for p in a.values()) == 8 and sum(p == "val" for p in a.values()) == 4

    chunks, qa = make_inputs()
    run_split(tmp_path / "r1", chunks, qa)
    run_split(tmp_path / "r2", chunks, qa)
    for rel in ("split/split.json", "split/train_qa.jsonl", "split/eval_beir/qrels/test.tsv"):
        assert (tmp_path / "r1" / rel).read_bytes() == (tmp_path / "r2" / rel).read_bytes()


def test_tiny_corpora(tmp_path, capsys):
    # two documents: one train, one test, no validation to spare
    a = assign_documents(["d_a", "d_b"], 0.2, 0.1, seed=1)
    assert sorted(a.values()) == ["test", "train"]
    with pytest.raises(UserError, match="at least 2"):
        assign_documents(["d_a"], 0.2, 0.1, seed=1)
    with pytest.raises(UserError, match="test_fraction"):
        assign_documents(["d_a", "d_b"], 1.5, 0.1, seed=1)
    # and the warning for a small test set
    chunks, qa = make_inputs(n_docs=3)
    man = run_split(tmp_path, chunks, qa, quiet=False)
    assert man["counts"]["documents"]["test"] == 1 and man["counts"]["queries"]["test"] == 4
    assert "WARNING: the test set has only 4 queries" in capsys.readouterr().err


def test_documents_without_queries_stay_in_training_and_test_always_has_queries(tmp_path):
    chunks, qa = make_inputs(n_docs=12)
    queried_docs = sorted({q["doc_ids"][0] for q in qa})[:4]
    qa = [q for q in qa if q["doc_ids"][0] in queried_docs]   # 8 of 12 documents have no query
    man = run_split(tmp_path / "a", chunks, qa)
    split = json.loads((tmp_path / "a" / "split" / "split.json").read_text())
    assert set(split["test_docs"]) <= set(queried_docs) and set(split["val_docs"]) <= set(queried_docs)
    assert man["counts"]["queries"]["test"] > 0
    unqueried = {c["doc_id"] for c in chunks} - set(queried_docs)
    train_docs = {c["doc_id"] for c in read_jsonl(tmp_path / "a" / "split" / "train_corpus.jsonl")}
    assert unqueried <= train_docs

    one_doc = [q for q in qa if q["doc_ids"][0] == queried_docs[0]]
    with pytest.raises(UserError, match="only 1 document"):
        run_split(tmp_path / "b", chunks, one_doc)


def test_beir_queries_carry_type_and_source(tmp_path):
    chunks, qa = make_inputs(n_docs=6)
    run_split(tmp_path, chunks, qa)
    rows = list(read_jsonl(tmp_path / "split" / "eval_beir" / "queries.jsonl"))
    assert rows and all(r["metadata"]["source"] == "llm" and r["metadata"]["query_type"] in ("factual", "multi_hop")
                        for r in rows)

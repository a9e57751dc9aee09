"""The split stage: documents (never queries) into train, validation and test, in BEIR layout.

The unit is the document because chunks of one document share vocabulary and facts: a query from a
test document whose sibling chunks were trained on would measure memorisation, not retrieval.
So a test document's chunks appear in no training file, and a multi-hop question that touches a
test document is a test question (never a training one).

Outputs (see DESIGN.md): train_qa.jsonl, train_corpus.jsonl, val_beir/ (qrels/dev.tsv; corpus =
train + val chunks), eval_beir/ (qrels/test.tsv; corpus = all chunks), split.json.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from ..beir import write_beir
from ..errors import UserError
from ..rundir import StageContext, atomic_write_json, atomic_write_jsonl, read_jsonl


def assign_documents(doc_ids: Iterable[str], test_fraction: float, val_fraction: float,
                     seed: int) -> dict[str, str]:
    """doc id -> "train" | "val" | "test". Deterministic in (set of ids, fractions, seed).

    At least one test and one train document; validation only when there are documents to spare.
    """
    docs = sorted(set(doc_ids))
    if not 0 < test_fraction < 1:
        raise UserError(f"split.test_fraction={test_fraction} must be between 0 and 1 (e.g. 0.2)")
    if not 0 <= val_fraction < 1:
        raise UserError(f"split.val_fraction={val_fraction} must be in [0, 1) (e.g. 0.1)")
    if len(docs) < 2:
        raise UserError(f"the corpus has {len(docs)} document(s) with chunks; the split needs at least 2 "
                        f"(one to train on, one to test on) -- add documents to corpus.path")
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_test = min(len(docs) - 1, max(1, round(len(docs) * test_fraction)))
    rest = len(docs) - n_test
    n_val = min(rest - 1, round(len(docs) * val_fraction)) if val_fraction > 0 else 0
    n_val = max(0, n_val)
    out = {}
    for i, d in enumerate(docs):
        out[d] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def write_split_beir(folder: Path, corpus: list[dict[str, Any]], queries: list[dict[str, Any]], split_name: str) -> None:
    """One BEIR dataset of the split: every chunk of ``corpus``, the queries with their type and source as
    BEIR metadata (the report says what each contributed), and score 1 for every supporting chunk in it."""
    corpus_ids = {c["id"] for c in corpus}
    qrels = {q["id"]: {sid: 1 for sid in q["segment_ids"] if sid in corpus_ids} for q in queries}
    write_beir(folder, ({"_id": c["id"], "title": c.get("title"), "text": c["text"]} for c in corpus),
               ({"_id": q["id"], "text": q["question"],
                 "metadata": {"query_type": q.get("query_type", ""), "source": (q.get("source") or {}).get("kind", "")}}
                for q in queries),
               {q: docs for q, docs in qrels.items() if docs}, split_name)


def run(ctx: StageContext) -> dict[str, Any]:
    seed, sc = ctx.conf.seed, ctx.conf.split
    chunks = list(read_jsonl(ctx.path("curate/chunks.jsonl")))
    qa = list(read_jsonl(ctx.path("synth/qa.jsonl")))
    if not chunks:
        raise UserError("curate/chunks.jsonl is empty; rerun curate on a corpus with text")
    chunk_doc = {c["id"]: c["doc_id"] for c in chunks}
    # Only documents with queries are drawn for test and validation: a test document without a
    # query measures nothing and only shrinks the training corpus. The others stay in training
    # (as passages and negatives) and in every evaluation corpus as distractors.
    queried = {chunk_doc[s] for q in qa for s in q.get("segment_ids", []) if s in chunk_doc}
    if len(queried) < 2:
        raise UserError(f"only {len(queried)} document(s) have synthetic queries; the split needs at least 2 "
                        f"(train and test) -- raise synth.budget_minutes (or synth.max_chunks if set) or add documents to corpus.path")
    assign = assign_documents(queried, sc.test_fraction, sc.val_fraction, seed)
    for d in chunk_doc.values():
        assign.setdefault(d, "train")

    def qa_part(q: dict[str, Any]) -> str | None:
        """The part a query belongs to: test if any supporting chunk is in a test document."""
        docs = {chunk_doc.get(s) for s in q.get("segment_ids", [])}
        if None in docs or not docs:
            return None
        parts = {assign[d] for d in docs}
        for p in ("test", "val", "train"):
            if p in parts:
                return p
        return None

    by_part: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    orphans = 0
    for q in qa:
        p = qa_part(q)
        if p is None:
            orphans += 1
            continue
        by_part[p].append(q)
    if orphans:
        ctx.log(f"{orphans} queries cite chunks not in curate/chunks.jsonl (a stale synth/qa.jsonl?); skipped")

    train_chunks = [c for c in chunks if assign[c["doc_id"]] == "train"]
    trainval_chunks = [c for c in chunks if assign[c["doc_id"]] in ("train", "val")]
    # Training data: queries whose every supporting chunk is in a train document.
    atomic_write_jsonl(ctx.dir / "train_qa.jsonl", by_part["train"])
    atomic_write_jsonl(ctx.dir / "train_corpus.jsonl", train_chunks)
    write_split_beir(ctx.dir / "val_beir", trainval_chunks, by_part["val"], "dev")
    write_split_beir(ctx.dir / "eval_beir", chunks, by_part["test"], "test")

    docs = {p: sorted(d for d, a in assign.items() if a == p) for p in ("train", "val", "test")}
    counts = {
        "documents": {p: len(v) for p, v in docs.items()},
        "chunks": {"train": len(train_chunks), "val": len(trainval_chunks) - len(train_chunks),
                   "test": len(chunks) - len(trainval_chunks)},
        "queries": {p: len(v) for p, v in by_part.items()},
        "queries_orphaned": orphans,
        "test_queries_by_type": dict(Counter(q["query_type"] for q in by_part["test"])),
    }
    atomic_write_json(ctx.dir / "split.json", {
        "seed": seed, "test_fraction": sc.test_fraction, "val_fraction": sc.val_fraction,
        "unit": "document", "train_docs": docs["train"], "val_docs": docs["val"], "test_docs": docs["test"],
        "counts": counts,
    })
    if not by_part["test"]:
        raise UserError("the split left no test queries; raise synth.budget_minutes (or synth.max_chunks if set) or split.test_fraction")
    if len(by_part["test"]) < sc.min_test_queries_warning:
        ctx.log(f"WARNING: the test set has only {len(by_part['test'])} queries (< {sc.min_test_queries_warning}); "
                f"metrics will be noisy -- raise synth.budget_minutes (or synth.max_chunks if set) or split.test_fraction")
    if not by_part["train"]:
        ctx.log("WARNING: no training queries; raise synth.budget_minutes (or synth.max_chunks if set) or lower split.test_fraction")
    return counts

"""Planning and candidate pairs: which chunks go to the LLM, the tasks for them, and the pairs that
enter the filters (structure pseudo-queries first, then the LLM's generations)."""

from __future__ import annotations

import hashlib
import random
from collections import Counter, OrderedDict, defaultdict
from typing import Any

from . import prompts as P

REASONING = {"factual": "factual", "keyword": "lookup", "procedural": "procedural", "structural": "structural",
             "multi_hop": "compositional", "heading": "lookup", "title": "lookup", "question": "lookup"}
QA_FIELDS = ("id", "question", "answer", "query_type", "reasoning_type", "hop_count", "segment_ids", "doc_ids",
             "source", "quality")


def sample_chunks(chunks: list[dict[str, Any]], max_chunks: int, seed: int, min_words: int) -> list[dict[str, Any]]:
    """Up to ``max_chunks`` chunks, round-robin over shuffled documents so every document gets a share, and
    within a document round-robin over its sections, so any prefix of the result covers the corpus."""
    by_doc: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
    for c in chunks:
        if len(c["text"].split()) >= min_words:
            by_doc.setdefault(c["doc_id"], []).append(c)
    rng = random.Random(seed)
    docs = sorted(by_doc)
    rng.shuffle(docs)
    queues = []
    for d in docs:
        sections: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
        for c in by_doc[d]:
            sections.setdefault(str(c.get("section") or ""), []).append(c)
        groups = list(sections.values())
        rng.shuffle(groups)
        for g in groups:
            rng.shuffle(g)
        # interleave: the first chunk of every section, then the second ones, ...; popped from the end
        q = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
        queues.append(q[::-1])
    limit = max_chunks if max_chunks and max_chunks > 0 else sum(len(q) for q in queues)
    out: list[dict[str, Any]] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop())
    return out


def plan_tasks(sampled: list[dict[str, Any]], chunks: list[dict[str, Any]], types: dict[str, int],
               hop_chunks: int, batch: bool = False) -> list[dict[str, Any]]:
    """One task per (chunk, type, attempt). Multi-hop tasks take the next chunks of the same document.

    With ``batch``, one task per (chunk, attempt) asks for every single-passage type at once
    (``query_types``, key ``<chunk>|batch|<attempt>``); multi-hop keeps its own tasks."""
    doc_order: dict[str, list[str]] = defaultdict(list)
    for c in chunks:
        doc_order[c["doc_id"]].append(c["id"])
    batched = P.batch_types(types) if batch else []
    tasks = []
    for c in sampled:
        for attempt in range(max((int(types.get(t, 0) or 0) for t in batched), default=0)):
            qts = [t for t in batched if int(types[t]) > attempt]
            tasks.append({"key": f"{c['id']}|batch|{attempt}", "chunk_id": c["id"], "query_type": "batch",
                          "query_types": qts, "attempt": attempt, "segment_ids": [c["id"]], "doc_id": c["doc_id"]})
        for qtype in P.QUERY_TYPES:
            if qtype in batched:
                continue
            for attempt in range(int(types.get(qtype, 0) or 0)):
                seg = [c["id"]]
                if qtype == "multi_hop":
                    ids = doc_order[c["doc_id"]]
                    if len(ids) < 2:
                        continue
                    i = ids.index(c["id"])
                    seg += [ids[(i + k) % len(ids)] for k in range(1, min(hop_chunks, len(ids)))]
                tasks.append({"key": f"{c['id']}|{qtype}|{attempt}", "chunk_id": c["id"], "query_type": qtype,
                              "attempt": attempt, "segment_ids": seg, "doc_id": c["doc_id"]})
    return tasks


def plan_heading_tasks(struct_rows: list[dict[str, Any]], per_heading: int, seed: int) -> list[dict[str, Any]]:
    """``per_heading`` tasks per heading pseudo-query that ask the LLM for the question a user would type to find
    that section (type ``question``, positives those of the heading). Round-robin over seeded-shuffled documents,
    so a budget that keeps a prefix still covers every document."""
    if per_heading <= 0:
        return []
    tasks = []
    for r in spread_over_documents([r for r in struct_rows if r["query_type"] == "heading"], f"{seed}:headings"):
        for attempt in range(per_heading):
            tasks.append({"key": f"{r['segment_ids'][0]}|question{P.HEADING_PROMPT_VERSION}|{attempt}",
                          "chunk_id": r["segment_ids"][0], "query_type": "question", "attempt": attempt,
                          "segment_ids": list(r["segment_ids"]), "doc_id": r["doc_ids"][0],
                          "heading": r["question"]})
    return tasks


def spread_over_documents(rows: list[Any], seed_tag: str, doc_of=lambda r: r["doc_ids"][0]) -> list[Any]:
    """``rows`` reordered round robin over their documents, in a seeded order of documents and each document's
    own order within it: any prefix covers as many documents as it can."""
    by_doc: "OrderedDict[str, list[Any]]" = OrderedDict()
    for r in rows:
        by_doc.setdefault(doc_of(r), []).append(r)
    docs = sorted(by_doc)
    random.Random(seed_tag).shuffle(docs)
    queues = [by_doc[d] for d in docs]
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def interleave(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """a[0], b[0], a[1], b[1], ..., then the rest of the longer: any prefix the budget keeps has both kinds,
    and the timed probe times both."""
    out = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


def qa_id(question: str, segment_ids: list[str]) -> str:
    return "q_" + hashlib.sha256(f"{question.strip().lower()}|{','.join(segment_ids)}".encode()).hexdigest()[:16]


def build_candidates(struct_rows: list[dict[str, Any]], with_structure: bool, tasks: list[dict[str, Any]],
                     done: dict[str, dict], by_id: dict[str, dict]) -> list[dict[str, Any]]:
    """Structure pseudo-queries (when enabled), then each task's successful generation, in plan order."""
    cands: list[dict[str, Any]] = []
    if with_structure:
        for r in struct_rows:
            first = by_id[r["segment_ids"][0]]
            cands.append({"question": r["question"], "answer": P.first_sentence(first["text"]),
                          "query_type": r["query_type"], "segment_ids": r["segment_ids"],
                          "doc_ids": r["doc_ids"], "source": {"kind": "structure", "model": "headings"}})
    for t in tasks:
        r = done.get(t["key"])
        if r is None:
            continue
        doc_ids = sorted({by_id[s]["doc_id"] for s in r["segment_ids"]})
        # a batched record holds one query per type; a single-type record one question
        for qtype, question in (r.get("queries") or {r["query_type"]: r["question"]}).items():
            cands.append({"question": question, "answer": r.get("answer", ""), "query_type": qtype,
                          "segment_ids": r["segment_ids"], "doc_ids": doc_ids, "gen_key": r["key"],
                          "source": {"kind": "llm", "model": r["model"]}})
    out, seen = [], set()
    for c in cands:
        c["id"] = qa_id(c["question"], c["segment_ids"])
        if c["id"] in seen:  # the same text for the same passage twice (e.g. as question and as search query)
            continue
        seen.add(c["id"])
        c["reasoning_type"] = REASONING[c["query_type"]]
        c["hop_count"] = len(c["segment_ids"]) if c["query_type"] == "multi_hop" else 1
        c["quality"] = {}
        out.append(c)
    return out


def qa_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The qa.jsonl records: only the documented fields, in their order."""
    return [{k: r[k] for k in QA_FIELDS} for r in rows]


def source_of(r: dict[str, Any]) -> str:
    return f"{r['source']['kind']}:{r['source']['model']}"


def count_by(rows: list[dict[str, Any]], key) -> dict[str, int]:
    return dict(Counter(key(r) for r in rows))

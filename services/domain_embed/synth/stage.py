"""The synthesize stage: typed queries from an LLM plus structure pseudo-queries, then filters.

Flow::

    chunks.jsonl -> sample max_chunks (spread across documents, seeded)
                 -> one generation per (chunk id, query type, attempt), appended to generations.jsonl
                    the moment it completes (a rerun skips the keys already there)
                 + heading/title pseudo-queries (no LLM)
                 -> format -> copied span -> dedup (cosine) -> round trip (top k) -> LLM judge
                 -> qa.jsonl (kept), dropped.jsonl (each dropped pair with its reason)

The cheap filters run before the judge so the judge only spends requests on survivors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter, OrderedDict, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from ..errors import UserError
from ..rundir import AppendLog, StageContext, atomic_open, atomic_write_jsonl, read_jsonl, sha256_file
from . import filters as F
from . import prompts as P
from .structure import structure_queries

REASONING = {"factual": "factual", "keyword": "lookup", "procedural": "procedural", "structural": "structural",
             "multi_hop": "compositional", "heading": "lookup", "title": "lookup"}


# ---------------------------------------------------------------- planning
def sample_chunks(chunks: list[dict[str, Any]], max_chunks: int, seed: int, min_words: int) -> list[dict[str, Any]]:
    """Up to ``max_chunks`` chunks, round-robin over shuffled documents so every document gets a share."""
    by_doc: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
    for c in chunks:
        if len(c["text"].split()) >= min_words:
            by_doc.setdefault(c["doc_id"], []).append(c)
    rng = random.Random(seed)
    docs = sorted(by_doc)
    rng.shuffle(docs)
    queues = []
    for d in docs:
        q = list(by_doc[d])
        rng.shuffle(q)
        queues.append(q)
    limit = max_chunks if max_chunks and max_chunks > 0 else sum(len(q) for q in queues)
    out: list[dict[str, Any]] = []
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop())
    return out


def plan_tasks(sampled: list[dict[str, Any]], chunks: list[dict[str, Any]], types: dict[str, int],
               hop_chunks: int) -> list[dict[str, Any]]:
    """One task per (chunk, type, attempt). Multi-hop tasks take the next chunks of the same document."""
    doc_order: dict[str, list[str]] = defaultdict(list)
    for c in chunks:
        doc_order[c["doc_id"]].append(c["id"])
    tasks = []
    for c in sampled:
        for qtype in P.QUERY_TYPES:
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


def _style_queries(cfg: DictConfig) -> list[str]:
    """Real queries shown to the generator as style examples (synth.style_examples_file), if any."""
    from ..realq import style_examples

    path = cfg.synth.get("style_examples_file")
    return style_examples(path, int(cfg.synth.get("style_examples_n", 5)), int(cfg.seed)) if path else []


def fingerprint(cfg: DictConfig, *extra: Any) -> str:
    """What a generation depends on; records under another fingerprint are not reused."""
    llm, sc = cfg.llm, cfg.synth
    parts = [llm.kind, llm.model, llm.local.get("weights") if llm.kind == "local" else llm.base_url,
             llm.local.prompt_style, llm.temperature, llm.max_tokens, llm.get("structured_output", False),
             sc.few_shot, sc.few_shot_words, sc.max_prompt_words, sc.with_answer, sc.max_tokens, P.PROMPT_VERSION,
             cfg.seed, *_style_queries(cfg), *extra]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _clip(text: str, n: int) -> str:
    w = text.split()
    return " ".join(w[:n]) + (" ..." if len(w) > n else "") if len(w) > n else text


# ---------------------------------------------------------------- LLM work
async def _generate(ctx: StageContext, base_url: str, todo: list[dict[str, Any]], by_id: dict[str, dict],
                    struct_rows: list[dict[str, Any]], fp: str, log: AppendLog, stats_out: dict) -> None:
    from ..llm.client import LLMClient, LLMError

    cfg, sc = ctx.cfg, ctx.cfg.synth
    style = str(cfg.llm.local.prompt_style)
    style_queries = _style_queries(cfg)
    async with LLMClient.from_config(cfg, base_url) as client:
        bar = ctx.progress(total=len(todo), desc="generate")

        async def one(t: dict[str, Any]) -> None:
            passages = [_clip(by_id[s]["text"], int(sc.max_prompt_words)) for s in t["segment_ids"]]
            examples = P.build_examples(struct_rows, by_id, t["query_type"], t["doc_id"], int(sc.few_shot),
                                        int(cfg.seed), int(sc.few_shot_words))
            params = {"temperature": float(cfg.llm.temperature),
                      "max_tokens": min(int(cfg.llm.max_tokens), int(sc.max_tokens or cfg.llm.max_tokens)),
                      "seed": P.request_seed(f"{fp}|{t['key']}")}
            rec = {"key": t["key"], "fp": fp, "chunk_id": t["chunk_id"], "query_type": t["query_type"],
                   "attempt": t["attempt"], "segment_ids": t["segment_ids"], "model": str(cfg.llm.model),
                   "prompt_style": style}
            try:
                if style == "completion":
                    comp = await client.complete(P.completion_prompt(t["query_type"], passages, examples, style_queries),
                                                 stop=["\n"], **params)
                    rec.update(ok=True, question=F.clean_question(comp.text), answer="")
                else:
                    with_answer = bool(sc.with_answer)
                    first = by_id[t["chunk_id"]]
                    msgs = P.chat_messages(t["query_type"], passages, examples, with_answer,
                                           str(first.get("title") or ""), str(first.get("section") or ""),
                                           style_queries)
                    obj, comp = await client.chat_json(msgs,
                                                       P.qa_schema(with_answer), repair_attempts=int(sc.repair_attempts),
                                                       **params)
                    rec.update(ok=True, question=F.clean_question(str(obj.get("question", ""))),
                               answer=str(obj.get("answer", "")).strip())
                rec["usage"] = {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
            except LLMError as exc:
                rec.update(ok=False, error=exc.kind, detail=str(exc)[:300])
            log.append(rec)
            bar.update(1)

        try:
            await asyncio.gather(*(one(t) for t in todo))
        finally:
            bar.close()
            stats_out["generate"] = client.stats.to_dict()


async def _judge(ctx: StageContext, base_url: str, pairs: list[dict[str, Any]], by_id: dict[str, dict],
                 jfp: str, log: AppendLog, stats_out: dict) -> dict[str, dict]:
    from ..llm.client import LLMClient, LLMError

    cfg, jc = ctx.cfg, ctx.cfg.synth.judge
    results: dict[str, dict] = {}
    async with LLMClient.from_config(cfg, base_url) as client:
        bar = ctx.progress(total=len(pairs), desc="judge")

        async def one(p: dict[str, Any]) -> None:
            passages = [_clip(by_id[s]["text"], int(cfg.synth.max_prompt_words)) for s in p["segment_ids"]]
            key = f"{jfp}|{p['id']}"
            params = {"temperature": 0.0, "max_tokens": int(jc.max_tokens), "seed": P.request_seed(key)}
            if client.structured_output:
                params["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": "grade", "schema": P.JUDGE_SCHEMA}}
            rec: dict[str, Any] = {"key": key, "qa_id": p["id"]}
            try:
                comp = await client.chat(P.judge_messages(p["question"], passages), **params)
                scores = P.parse_judge(comp.text)
                rec.update(ok=scores is not None, scores=scores, raw=comp.text[:200])
                if scores is None:
                    rec["error"] = "unparsed"
            except LLMError as exc:
                rec.update(ok=False, error=exc.kind)
            log.append(rec)
            results[key] = rec
            bar.update(1)

        try:
            await asyncio.gather(*(one(p) for p in pairs))
        finally:
            bar.close()
            stats_out["judge"] = client.stats.to_dict()
    return results


def judge_enabled(cfg: DictConfig) -> bool:
    """synth.judge.enabled: true | false | auto (on for remote endpoints, off for the tiny local model,
    whose grades we measured to be constant -- SmolLM2-135M gives nearly every pair 1/1/1)."""
    v = cfg.synth.judge.enabled
    if isinstance(v, str) and v.lower() == "auto":
        return cfg.llm.kind == "remote"
    if isinstance(v, str):
        raise UserError(f"synth.judge.enabled={v!r} is not one of true, false, auto")
    return bool(v)


def _degenerate(scores: list[dict[str, int]], max_same_fraction: float) -> str | None:
    """A description of a judge that gives (almost) everything the same grade, else None."""
    if len(scores) < 5 or max_same_fraction >= 1:
        return None
    common, n = Counter(tuple(sorted(s.items())) for s in scores).most_common(1)[0]
    if n / len(scores) > max_same_fraction:
        return f"the same grade {dict(common)} in {n} of {len(scores)} cases"
    return None


# ---------------------------------------------------------------- embeddings
def _corpus_vectors(ctx: StageContext, encoder, chunks: list[dict[str, Any]]) -> np.ndarray:
    """Passage vectors of every chunk, from the run's embedding store (mining and evaluation reuse them)."""
    return ctx.embeddings.embed([c["text"] for c in chunks], "passage", encoder, desc="embed chunks")


def qa_id(question: str, segment_ids: list[str]) -> str:
    return "q_" + hashlib.sha256(f"{question.strip().lower()}|{','.join(segment_ids)}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    cfg, sc = ctx.cfg, ctx.cfg.synth
    chunks = list(read_jsonl(ctx.path("curate/chunks.jsonl")))
    if not chunks:
        raise UserError("curate/chunks.jsonl is empty; point corpus.path at documents with text and rerun curate")
    by_id = {c["id"]: c for c in chunks}
    types = {k: int(v) for k, v in dict(sc.types).items()}
    unknown = set(types) - set(P.QUERY_TYPES)
    if unknown:
        raise UserError(f"synth.types has unknown query types {sorted(unknown)}; use {list(P.QUERY_TYPES)}")
    style = str(cfg.llm.local.prompt_style)
    if style not in ("chat", "completion"):
        raise UserError(f"llm.local.prompt_style={style!r} is not one of chat, completion")

    st = sc.structure
    struct_rows = structure_queries(chunks, max_per_doc=int(st.max_per_doc), max_positives=int(st.max_positives),
                                    extra_generic=list(st.generic_headings or []))
    sampled = sample_chunks(chunks, int(sc.max_chunks), int(cfg.seed), int(sc.min_chunk_words))
    tasks = plan_tasks(sampled, chunks, types, int(sc.multi_hop_chunks))
    fp = fingerprint(cfg)
    gen_path = ctx.dir / "generations.jsonl"
    judge_path = ctx.dir / "judgements.jsonl"

    def load_done() -> dict[str, dict]:
        done: dict[str, dict] = {}
        if gen_path.is_file():
            for r in read_jsonl(gen_path):
                if r.get("fp") == fp and r.get("ok"):
                    done[r["key"]] = r
        return done

    done = load_done()
    todo = [t for t in tasks if t["key"] not in done]
    ctx.log(f"{len(sampled)} chunks from {len({c['doc_id'] for c in sampled})} documents -> {len(tasks)} generations "
            f"({len(tasks) - len(todo)} already in {gen_path.name}); {len(struct_rows)} structure queries")
    llm_stats: dict[str, Any] = {}
    judge_on = judge_enabled(cfg)
    jfp = fingerprint(cfg, "judge", sc.judge.max_tokens)

    from ..llm.server import local_llm

    server_cm = None
    base_url: str | None = None

    def ensure_server() -> str:
        nonlocal server_cm, base_url
        if base_url is None:
            server_cm = local_llm(cfg, log_path=ctx.dir / "llm_server.log")
            base_url = server_cm.__enter__()
        return base_url

    try:
        if todo:
            url = ensure_server()
            t0 = time.perf_counter()
            with AppendLog(gen_path) as log:
                asyncio.run(_generate(ctx, url, todo, by_id, struct_rows, fp, log, llm_stats))
            llm_stats["generate"]["wall_s"] = round(time.perf_counter() - t0, 3)
            done = load_done()

        # ------------------------------------------------ candidates
        cands: list[dict[str, Any]] = []
        if st.enabled:
            for r in struct_rows:
                first = by_id[r["segment_ids"][0]]
                cands.append({"question": r["question"], "answer": P.first_sentence(first["text"]),
                              "query_type": r["query_type"], "segment_ids": r["segment_ids"],
                              "doc_ids": r["doc_ids"], "source": {"kind": "structure", "model": "headings"}})
        gen_failed = Counter()
        all_gen = {}
        if gen_path.is_file():
            for r in read_jsonl(gen_path):
                if r.get("fp") == fp:
                    all_gen.setdefault(r["key"], []).append(r)
        for t in tasks:
            r = done.get(t["key"])
            if r is None:
                recs = all_gen.get(t["key"], [])
                gen_failed[recs[-1].get("error", "missing") if recs else "missing"] += 1
                continue
            doc_ids = sorted({by_id[s]["doc_id"] for s in r["segment_ids"]})
            cands.append({"question": r["question"], "answer": r.get("answer", ""), "query_type": r["query_type"],
                          "segment_ids": r["segment_ids"], "doc_ids": doc_ids, "gen_key": r["key"],
                          "source": {"kind": "llm", "model": r["model"]}})
        for c in cands:
            c["id"] = qa_id(c["question"], c["segment_ids"])
            c["reasoning_type"] = REASONING[c["query_type"]]
            c["hop_count"] = len(c["segment_ids"]) if c["query_type"] == "multi_hop" else 1
            c["quality"] = {}

        filt: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
        dropped: list[dict[str, Any]] = []

        def apply(name: str, rows: list[dict], keep_fn) -> list[dict]:
            kept, reasons = [], Counter()
            for r in rows:
                why = keep_fn(r)
                if why is None:
                    kept.append(r)
                else:
                    reasons[why] += 1
                    dropped.append({**r, "dropped_at": name, "reason": why})
            filt[name] = {"in": len(rows), "kept": len(kept), "dropped": dict(reasons),
                          "kept_by_source": dict(Counter(r["source"]["kind"] for r in kept)),
                          "kept_llm_by_type": dict(Counter(r["query_type"] for r in kept
                                                           if r["source"]["kind"] == "llm"))}
            return kept

        # 1. format
        fw = sc.filters
        rows = apply("format", cands, lambda r: F.format_reason(
            r["question"], r["query_type"], int(fw.min_question_words), int(fw.max_question_words),
            int(fw.keyword_max_words)))

        # 2. verbatim copy
        def copy_reason(r: dict) -> str | None:
            if r["source"]["kind"] != "llm" or int(sc.max_copy_ngram) <= 0:
                return None
            n = F.longest_copied_ngram(r["question"], "\n".join(by_id[s]["text"] for s in r["segment_ids"]))
            r["quality"]["copy_ngram"] = n
            return "copied_span" if n >= int(sc.max_copy_ngram) else None

        rows = apply("copy", rows, copy_reason)

        need_vectors = rows and (float(sc.dedup_cosine) > 0 or int(sc.round_trip_top_k) > 0)
        if need_vectors:
            from ..inference import stage_encoder

            encoder = stage_encoder(ctx, allow_int8=True)
            qvecs = ctx.embeddings.embed([r["question"] for r in rows], "query", encoder, desc="embed questions")
            # 3. dedup (structure queries first: they are the cleanest)
            if float(sc.dedup_cosine) > 0:
                order = sorted(range(len(rows)), key=lambda i: (rows[i]["source"]["kind"] != "structure", i))
                keep_idx, dup_of = F.dedup_by_cosine(qvecs[order], float(sc.dedup_cosine))
                keep_set = {order[k] for k in keep_idx}
                for k, j in dup_of.items():
                    rows[order[k]]["quality"]["duplicate_of"] = rows[order[j]]["id"]
                qvecs = qvecs[[i for i in range(len(rows)) if i in keep_set]]
                rows = apply("dedup", rows, lambda r: "near_duplicate" if "duplicate_of" in r["quality"] else None)
            # 4. round trip
            k = int(sc.round_trip_top_k)
            if k > 0 and rows:
                cvecs = _corpus_vectors(ctx, encoder, chunks)
                pos_index = {c["id"]: i for i, c in enumerate(chunks)}
                ranks = F.round_trip_ranks(qvecs, cvecs, [[pos_index[s] for s in r["segment_ids"]] for r in rows])
                for r, rank in zip(rows, ranks):
                    r["quality"]["round_trip_rank"] = rank
                rows = apply("round_trip", rows, lambda r: "source_not_in_top_k"
                             if r["quality"]["round_trip_rank"] > k else None)
            del encoder

        # 5. LLM judge (LLM pairs only unless judge.structure)
        if judge_on and rows:
            to_judge = [r for r in rows if r["source"]["kind"] == "llm" or bool(sc.judge.structure)]
            judged: dict[str, dict] = {}
            if judge_path.is_file():
                for rec in read_jsonl(judge_path):
                    if rec.get("ok"):
                        judged[rec["key"]] = rec
            pending = [r for r in to_judge if f"{jfp}|{r['id']}" not in judged]
            if pending:
                url = ensure_server()
                t0 = time.perf_counter()
                with AppendLog(judge_path) as jlog:
                    judged.update(asyncio.run(_judge(ctx, url, pending, by_id, jfp, jlog, llm_stats)))
                llm_stats["judge"]["wall_s"] = round(time.perf_counter() - t0, 3)
            thr = float(sc.judge.threshold)
            on_fail = str(sc.judge.on_failure)
            scores = [judged[k]["scores"] for k in (f"{jfp}|{r['id']}" for r in to_judge) if k in judged]
            degenerate = _degenerate(scores, float(sc.judge.max_same_fraction))
            if degenerate:
                ctx.log(f"WARNING: the judge gave {len(scores)} pairs {degenerate}; it cannot tell pairs apart, so its "
                        f"scores are recorded but not used (synth.judge.max_same_fraction). Use a stronger judge model.")
                llm_stats["judge_degenerate"] = degenerate

            def judge_reason(r: dict) -> str | None:
                if r["source"]["kind"] != "llm" and not bool(sc.judge.structure):
                    return None
                rec = judged.get(f"{jfp}|{r['id']}")
                if rec is None or not rec.get("ok"):
                    r["quality"]["judge"] = None
                    return None if on_fail == "keep" else "judge_failed"
                s = rec["scores"]
                score = round(sum(s.values()) / 3, 2)
                r["quality"]["judge"] = {**s, "score": score}
                if degenerate:
                    return None
                return "judge_below_threshold" if score < thr else None

            rows = apply("judge", rows, judge_reason)
    finally:
        if server_cm is not None:
            server_cm.__exit__(None, None, None)

    # ------------------------------------------------ outputs
    out_rows = []
    for r in rows:
        out_rows.append({k: r[k] for k in ("id", "question", "answer", "query_type", "reasoning_type", "hop_count",
                                           "segment_ids", "doc_ids", "source", "quality")})
    if not out_rows:
        raise UserError("synthesis kept no query pairs; raise synth.max_chunks, enable synth.structure, or relax "
                        "the filters (synth.round_trip_top_k, synth.judge.threshold)")
    atomic_write_jsonl(ctx.dir / "qa.jsonl", out_rows)
    atomic_write_jsonl(ctx.dir / "dropped.jsonl", ({k: v for k, v in d.items() if k != "gen_key"} for d in dropped))

    def by(rows_: list[dict], key) -> dict[str, int]:
        return dict(Counter(key(r) for r in rows_))

    src = lambda r: f"{r['source']['kind']}:{r['source']['model']}"  # noqa: E731
    gen_usage = Counter()
    for r in done.values():
        for k2, v in (r.get("usage") or {}).items():
            gen_usage[k2] += int(v)
    counts = {
        "chunks": len(chunks),
        "chunks_sampled": len(sampled),
        "generations_planned": len(tasks),
        "generations_ok": sum(1 for t in tasks if t["key"] in done),
        "generations_failed": dict(gen_failed),
        "generations_resumed": len(tasks) - len(todo),
        "tokens_generation": dict(gen_usage),
        "llm": llm_stats,
        "candidates": len(cands),
        "candidates_by_source": by(cands, src),
        "filters": filt,
        "pairs": len(out_rows),
        "pairs_by_source": by(out_rows, src),
        "pairs_by_type": by(out_rows, lambda r: r["query_type"]),
        "pairs_per_document": round(len(out_rows) / max(1, len({c["doc_id"] for c in chunks})), 2),
    }
    ctx.log(f"kept {len(out_rows)} of {len(cands)} pairs; " +
            "; ".join(f"{n}: {v['in']}->{v['kept']}" for n, v in filt.items()))
    return counts

"""The ``mine`` stage: split/train_qa.jsonl + split/train_corpus.jsonl -> mine/train.jsonl.

Only training documents are searched (split/ keeps test chunks out of train_corpus.jsonl), so no
test passage can become a training negative -- one of the recipe's leaks.
"""

from __future__ import annotations

from typing import Any


from ..errors import UserError
from ..rundir import StageContext, atomic_open, read_jsonl
from .mining import MineStats, build_index, search, select_negatives


def load_inputs(ctx: StageContext) -> tuple[list[dict], list[dict]]:
    corpus = list(read_jsonl(ctx.path("split/train_corpus.jsonl")))
    qa = list(read_jsonl(ctx.path("split/train_qa.jsonl")))
    if not corpus:
        raise UserError("split/train_corpus.jsonl is empty; check the split stage's output (too few documents?)")
    if not qa:
        raise UserError("split/train_qa.jsonl is empty; synthesis produced no training queries -- rerun `domain-embed synth`")
    return corpus, qa


def run(ctx: StageContext) -> dict[str, Any]:
    mc = ctx.conf.mine
    spec = ctx.spec()
    corpus, qa = load_inputs(ctx)
    ids = [c["id"] for c in corpus]
    texts = [c["text"] for c in corpus]
    row_of = {cid: i for i, cid in enumerate(ids)}

    queries: list[tuple[dict, list[int]]] = []
    no_pos = 0
    for q in qa:
        pos = [row_of[s] for s in dict.fromkeys(q.get("segment_ids") or []) if s in row_of]
        if not pos or not str(q.get("question") or "").strip():
            no_pos += 1
            continue
        queries.append((q, pos))
    if not queries:
        raise UserError("no training query has a positive passage in split/train_corpus.jsonl; "
                        "the split and qa files disagree -- rerun split")

    from ..inference import stage_encoder

    # The run's store: passages and questions that synthesis's round trip already embedded with
    # the same model, spec and precision are read, not re-embedded. Mining only ranks candidates,
    # so the int8 graph may serve when it agrees with fp32 (model.int8).
    encoder = stage_encoder(ctx, spec, allow_int8=True, batch_size=mc.batch_size)
    store = ctx.embeddings
    rows = mc.shard_rows
    p_emb = store.embed(texts, "passage", encoder, desc="embed passages", shard_rows=rows)
    q_emb = store.embed([q["question"] for q, _ in queries], "query", encoder, desc="embed queries", shard_rows=rows)
    p_hits, p_miss = store.counts("passage")
    q_hits, q_miss = store.counts("query")
    ctx.log(f"{len(texts)} passages ({p_hits} from the run's embedding store, {p_miss} embedded) and {len(queries)} "
            f"queries ({q_hits} stored, {q_miss} embedded) with {encoder.backend} {encoder.precision}")

    index = build_index(p_emb, mc.index.value, mc.use_gpu, mc.ivf_nprobe, mc.hnsw_m)
    max_pos = max(len(p) for _, p in queries)
    scores, cand = search(index, q_emb, mc.top_k + max_pos, progress=ctx.progress)

    stats = MineStats()
    n_neg = mc.num_negatives
    with atomic_open(ctx.dir / "train.jsonl") as fh:
        import json

        for i, (q, pos) in enumerate(queries):
            pos_sc, negs = select_negatives(
                q_emb[i], cand[i][: mc.top_k + len(pos)], scores[i][: mc.top_k + len(pos)], pos, p_emb,
                texts, n_neg, mc.margin, mc.margin_type.value, mc.near_dup_threshold, stats)
            row = {"query_id": q["id"], "query": q["question"],
                   "pos": [{"id": ids[p], "score": round(s, 6)} for p, s in pos_sc],
                   "neg": [{"id": ids[n], "score": round(s, 6)} for n, s in negs]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = stats.summary()
    if summary["queries_short_of_negatives"]:
        ctx.log(f"{summary['queries_short_of_negatives']}/{len(queries)} queries got fewer than {n_neg} negatives "
                f"(raise mine.top_k or loosen mine.margin)")
    return {**summary, "queries_without_positive": no_pos, "passages": len(texts),
            "passage_cache_hits": p_hits, "passage_cache_misses": p_miss,
            "query_cache_hits": q_hits, "query_cache_misses": q_miss,
            "encoder": {k: v for k, v in getattr(encoder, "info", {}).items() if k != "graph"},
            "index": mc.index.value, "margin_type": mc.margin_type.value, "margin": mc.margin}

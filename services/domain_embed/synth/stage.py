"""The synth stage: typed queries from an LLM plus structure pseudo-queries, then filters.

Flow::

    chunks.jsonl -> sample max_chunks (spread across documents, seeded)          candidates.py
                 -> one generation per (chunk id, query type, attempt), appended to generations.jsonl
                    the moment it completes (a rerun skips the keys already there)  generate.py
                 + heading/title pseudo-queries (no LLM)                          structure.py
                 + each heading rewritten as a question (synth.structure.questions; one short LLM call each)
                 -> format -> copied span -> dedup (cosine) -> round trip (top k) -> LLM judge
                 -> heading share (synth.structure.max_share)                     pipeline.py
                 -> qa.jsonl (kept), dropped.jsonl (each dropped pair with its reason)

This module only orchestrates; every embedding of the stage goes through :func:`_corpus_vectors` and
:func:`_query_vectors`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np

from ..errors import UserError
from ..llm.server import Endpoint
from ..rundir import StageContext, atomic_write_jsonl, read_jsonl
from ..schema import PromptStyle, SynthConfig
from . import prompts as P
from .candidates import build_candidates, count_by, interleave, plan_heading_tasks, plan_tasks, qa_rows, \
    sample_chunks, source_of
from .generate import GenerationLog, budgeted_generate, fingerprint, judge, judge_enabled, load_judgements
from .pipeline import CopyFilter, DedupFilter, Filter, FilterRunner, FormatFilter, JudgeFilter, QueryVectors, \
    RoundTripFilter, StructureShareFilter
from .structure import structure_queries


# ---------------------------------------------------------------- embeddings (the only two entry points)
def _corpus_vectors(ctx: StageContext, encoder, chunks: list[dict[str, Any]]) -> np.ndarray:
    """Passage vectors of every chunk, from the run's embedding store (mining and evaluation reuse them)."""
    return ctx.embeddings.embed([c["text"] for c in chunks], "passage", encoder, desc="embed chunks")


def _query_vectors(ctx: StageContext, encoder, texts: list[str]) -> np.ndarray:
    """Query vectors of ``texts`` with the base model, through the run's embedding store."""
    return ctx.embeddings.embed(texts, "query", encoder, desc="embed questions")


class _Encoder:
    """The base encoder for inference, loaded on first use (a run whose filters need no vectors never loads it)."""

    def __init__(self, ctx: StageContext):
        self.ctx, self._enc = ctx, None

    def __call__(self):
        if self._enc is None:
            from ..inference import stage_encoder

            self._enc = stage_encoder(self.ctx, allow_int8=True)
        return self._enc


def _check(ctx: StageContext) -> list[dict[str, Any]]:
    chunks = list(read_jsonl(ctx.path("curate/chunks.jsonl")))
    if not chunks:
        raise UserError("curate/chunks.jsonl is empty; point corpus.path at documents with text and rerun curate")
    share = ctx.conf.synth.structure.max_share
    if not 0.0 <= float(share) <= 1.0:
        raise UserError(f"synth.structure.max_share={share} is not a share; use a number from 0 (no heading "
                        f"queries) to 1 (no cap)")
    # synth.types and llm.local.prompt_style were checked by the schema; the prompts must know every type it has
    unknown = set(asdict(ctx.conf.synth.types)) - set(P.QUERY_TYPES)
    if unknown:
        raise UserError(f"synth.types has unknown query types {sorted(unknown)}; use {list(P.QUERY_TYPES)}")
    return chunks


def _check_failures(sc: SynthConfig, failed: Counter, planned: int, log_name: str,
                    sample: dict[str, str] | None = None) -> None:
    """Past synth.max_failed_fraction the stage fails (non-zero exit) instead of training on less data.

    ``sample`` maps a failure kind to the detail of one such failure, quoted for the most common kind,
    so the cause is in the message and not only in the log."""
    limit = sc.max_failed_fraction
    n = sum(failed.values())
    if planned and n / planned > limit:
        kinds = ", ".join(f"{k}: {v}" for k, v in failed.most_common())
        top = failed.most_common(1)[0][0] if failed else None
        detail = " ".join(((sample or {}).get(top) or "").split())[:300]
        if detail and not detail.startswith(f"{top}:"):
            detail = f"{top}: {detail}"
        cause = f"; one of them: {detail}" if detail else ""
        raise UserError(f"{n} of {planned} generations failed ({kinds}), more than synth.max_failed_fraction={limit}"
                        f"{cause}; the {planned - n} that succeeded are kept in {log_name}, so a rerun after fixing the "
                        f"cause sends only the failed ones (see llm_server.log for a local server; raise "
                        f"synth.max_failed_fraction to accept the loss)")


def _filters(ctx: StageContext, chunks: list[dict], by_id: dict[str, dict], llm: Endpoint,
             llm_stats: dict[str, Any]) -> list[Filter]:
    sc = ctx.conf.synth
    fw, jc = sc.filters, sc.judge
    encoder = _Encoder(ctx)
    vectors = QueryVectors(lambda texts: _query_vectors(ctx, encoder(), texts))
    jfp = fingerprint(ctx.conf, "judge", jc.max_tokens)
    judge_path = ctx.dir / "judgements.jsonl"

    def grade(rows: list[dict]) -> dict[str, dict]:
        judged = load_judgements(judge_path)
        pending = [r for r in rows if f"{jfp}|{r['id']}" not in judged]
        if pending:
            t0 = time.perf_counter()
            judged.update(judge(ctx, llm.url(), pending, by_id, jfp, judge_path, llm_stats))
            llm_stats["judge"]["wall_s"] = round(time.perf_counter() - t0, 3)
        return judged

    def on_degenerate(n: int, same: str) -> None:
        ctx.log(f"WARNING: the judge gave {n} pairs {same}; it cannot tell pairs apart, so its "
                f"scores are recorded but not used (synth.judge.max_same_fraction). Use a stronger judge model.")
        llm_stats["judge_degenerate"] = same

    return [
        FormatFilter(fw.min_question_words, fw.max_question_words, fw.keyword_max_words),
        CopyFilter(sc.max_copy_ngram, by_id),
        DedupFilter(sc.dedup_cosine, vectors),
        RoundTripFilter(sc.round_trip_top_k, vectors, lambda: _corpus_vectors(ctx, encoder(), chunks),
                        {c["id"]: i for i, c in enumerate(chunks)}),
        JudgeFilter(judge_enabled(ctx.conf), jfp, float(jc.threshold), jc.on_failure.value, jc.structure,
                    jc.max_same_fraction, grade, on_degenerate),
        StructureShareFilter(sc.structure.max_share, ctx.conf.seed),
    ]


# ---------------------------------------------------------------- the stage
def run(ctx: StageContext) -> dict[str, Any]:
    conf = ctx.conf
    sc, st = conf.synth, conf.synth.structure
    chunks = _check(ctx)
    by_id = {c["id"]: c for c in chunks}
    struct_rows = structure_queries(chunks, max_per_doc=st.max_per_doc, max_positives=st.max_positives,
                                    extra_generic=list(st.generic_headings))
    sampled = sample_chunks(chunks, sc.max_chunks, conf.seed, sc.min_chunk_words)
    chat = conf.llm.local.prompt_style == PromptStyle.chat
    tasks = plan_tasks(sampled, chunks, asdict(sc.types), sc.multi_hop_chunks, batch=sc.batch_types and chat)
    if st.enabled and st.questions and chat:
        # every heading, not only the max_per_doc kept as heading queries: on the real-question dev split more
        # heading queries hurt (all 454 Debian headings: 0.525 against 0.553 at 8 a document)
        every_heading = structure_queries(chunks, max_per_doc=0, max_positives=st.max_positives,
                                          extra_generic=list(st.generic_headings))
        tasks = interleave(plan_heading_tasks(every_heading, st.questions, conf.seed), tasks)
    fp = fingerprint(conf)
    gens = GenerationLog(ctx.dir / "generations.jsonl", fp)
    todo = [t for t in tasks if t["key"] not in gens.done]
    ctx.log(f"{len(sampled)} chunks from {len({c['doc_id'] for c in sampled})} documents -> {len(tasks)} generations "
            f"({len(tasks) - len(todo)} already in {gens.path.name}); {len(struct_rows)} structure queries")
    llm_stats: dict[str, Any] = {}
    with Endpoint(conf.llm, log_path=ctx.dir / "llm_server.log") as llm:
        t0, n_sampled = time.perf_counter(), len(tasks)
        tasks = budgeted_generate(ctx, llm, tasks, todo, by_id, struct_rows, fp, gens.path, llm_stats)
        if "generate" in llm_stats:
            llm_stats["generate"]["wall_s"] = round(time.perf_counter() - t0, 3)
            gens.reload()
        todo = [t for t in todo if t["key"] in {u["key"] for u in tasks}]
        if len(tasks) < n_sampled:
            sampled = [c for c in sampled if c["id"] in {t["chunk_id"] for t in tasks}]
        cands = build_candidates(struct_rows, st.enabled, tasks, gens.done, by_id)
        gen_failed = Counter(gens.failure_kind(t["key"]) for t in tasks if t["key"] not in gens.done)
        sample: dict[str, str] = {}
        for t in tasks:
            last = (gens.records.get(t["key"]) or [{}])[-1]
            if t["key"] not in gens.done and last.get("detail"):
                sample.setdefault(str(last.get("error")), str(last["detail"]))
        _check_failures(sc, gen_failed, len(tasks), gens.path.name, sample)
        runner = FilterRunner(_filters(ctx, chunks, by_id, llm, llm_stats))
        out_rows = qa_rows(runner.run(cands))

    if not out_rows:
        raise UserError("synthesis kept no query pairs; raise synth.budget_minutes or synth.max_chunks, enable "
                        "synth.structure, or relax "
                        "the filters (synth.round_trip_top_k, synth.judge.threshold)")
    atomic_write_jsonl(ctx.dir / "qa.jsonl", out_rows)
    atomic_write_jsonl(ctx.dir / "dropped.jsonl",
                       ({k: v for k, v in d.items() if k != "gen_key"} for d in runner.dropped))
    gen_usage: Counter = Counter()
    for r in gens.done.values():
        for k, v in (r.get("usage") or {}).items():
            gen_usage[k] += int(v)
    filt = runner.counts
    counts = {
        "chunks": len(chunks),
        "chunks_sampled": len(sampled),
        "generations_planned": len(tasks),
        "generations_ok": sum(1 for t in tasks if t["key"] in gens.done),
        "generations_failed": dict(gen_failed),
        "generations_resumed": len(tasks) - len(todo),
        "tokens_generation": dict(gen_usage),
        "llm": llm_stats,
        "candidates": len(cands),
        "candidates_by_source": count_by(cands, source_of),
        "filters": filt,
        "pairs": len(out_rows),
        "pairs_by_source": count_by(out_rows, source_of),
        "pairs_by_type": count_by(out_rows, lambda r: r["query_type"]),
        "pairs_per_document": round(len(out_rows) / max(1, len({c["doc_id"] for c in chunks})), 2),
    }
    ctx.log(f"kept {len(out_rows)} of {len(cands)} pairs; " +
            "; ".join(f"{n}: {v['in']}->{v['kept']}" for n, v in filt.items()))
    return counts

"""The LLM work of synthesis: one generation per planned task, and the judge's grades.

Both append each result to their log (generations.jsonl, judgements.jsonl) the moment it completes,
so a killed run loses nothing and a rerun sends only what is missing. Records carry the fingerprint
of everything they depend on (:func:`fingerprint`); records under another fingerprint are not reused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..rundir import AppendLog, StageContext, read_jsonl
from ..schema import LLMKind, PromptStyle, RunConfig, Toggle, toggle
from . import filters as F
from . import prompts as P


def style_queries(conf: RunConfig) -> list[str]:
    """Real queries shown to the generator as style examples (synth.style_examples_file), if any."""
    from ..user_queries import style_examples

    sc = conf.synth
    return style_examples(sc.style_examples_file, sc.style_examples_n, conf.seed) if sc.style_examples_file else []


def fingerprint(conf: RunConfig, *extra: Any) -> str:
    """What a generation depends on; records under another fingerprint are not reused."""
    llm, sc = conf.llm, conf.synth
    parts = [llm.kind, llm.model, llm.local.weights if llm.kind == LLMKind.local else llm.base_url,
             llm.local.prompt_style, llm.temperature, llm.max_tokens, llm.structured_output,
             sc.few_shot, sc.few_shot_words, sc.max_prompt_words, sc.with_answer, sc.max_tokens, P.PROMPT_VERSION,
             sc.batch_types,
             conf.seed, *style_queries(conf), *extra]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def clip(text: str, n: int) -> str:
    w = text.split()
    return " ".join(w[:n]) + (" ..." if len(w) > n else "") if len(w) > n else text


def body(text: str) -> str:
    """A chunk without its first line (curate's context line: title and section), if it has a body."""
    head, _, rest = text.partition("\n")
    return rest.strip() or head


class GenerationLog:
    """generations.jsonl read back: the successful record of each key, and every record by key."""

    def __init__(self, path: Path, fp: str):
        self.path, self.fp = path, fp
        self.done: dict[str, dict] = {}
        self.records: dict[str, list[dict]] = {}
        self.reload()

    def reload(self) -> None:
        self.done, self.records = {}, {}
        if self.path.is_file():
            for r in read_jsonl(self.path):
                if r.get("fp") == self.fp:
                    self.records.setdefault(r["key"], []).append(r)
                    if r.get("ok"):
                        self.done[r["key"]] = r

    def failure_kind(self, key: str) -> str:
        recs = self.records.get(key, [])
        return recs[-1].get("error", "missing") if recs else "missing"


# ---------------------------------------------------------------- generation
async def _generate(ctx: StageContext, base_url: str, todo: list[dict[str, Any]], by_id: dict[str, dict],
                    struct_rows: list[dict[str, Any]], fp: str, log: AppendLog, stats_out: dict,
                    progress: "GenerationProgress | None" = None, deadline: float | None = None,
                    skipped: set[str] | None = None) -> None:
    import time

    from ..llm.client import LLMClient, LLMError

    conf = ctx.conf
    sc, llm = conf.synth, conf.llm
    style = llm.local.prompt_style.value
    shown_queries = style_queries(conf)
    # llama.cpp keeps each slot's last prompt in its KV cache and reuses the longest common prefix
    extra = {"cache_prompt": True} if llm.kind == LLMKind.local else {}
    batch_examples: dict[tuple[str, ...], list] = {}
    async with LLMClient.from_config(ctx.conf.llm, base_url) as client:
        bar = progress or GenerationProgress(ctx, len(todo))

        # Tasks start in order, as many at once as the client sends; one that would start after the deadline
        # (time.monotonic()) is not sent and goes into ``skipped``, so those form the end of ``todo``.
        slots = asyncio.Semaphore(max(1, int(llm.concurrency)))

        async def one(t: dict[str, Any]) -> None:
            async with slots:
                if deadline is not None and time.monotonic() >= deadline:
                    if skipped is not None:
                        skipped.add(t["key"])
                    return
                await send(t)

        async def send(t: dict[str, Any]) -> None:
            passages = [clip(by_id[s]["text"], sc.max_prompt_words) for s in t["segment_ids"]]
            per_call = (sc.max_tokens or llm.max_tokens) * len(t.get("query_types") or [1])
            params = {"temperature": llm.temperature,
                      "max_tokens": min(llm.max_tokens, per_call),
                      "seed": P.request_seed(f"{fp}|{t['key']}"), **extra}
            rec = {"key": t["key"], "fp": fp, "chunk_id": t["chunk_id"], "query_type": t["query_type"],
                   "attempt": t["attempt"], "segment_ids": t["segment_ids"], "model": llm.model,
                   "prompt_style": style}
            comp = None
            try:
                if t["query_type"] == "batch":
                    qts = list(t["query_types"])
                    # the body only: given the chunk's context line ("Title — Section"), SmolLM2 named the
                    # page's topic for most chunks of a page, and dedup dropped those as near duplicates
                    passages = [clip(body(by_id[s]["text"]), sc.max_prompt_words) for s in t["segment_ids"]]
                    key = tuple(qts)
                    if key not in batch_examples:
                        batch_examples[key] = P.batch_examples(struct_rows, by_id, qts, sc.few_shot,
                                                               conf.seed, sc.few_shot_words)
                    msgs = P.batch_messages(qts, passages, batch_examples[key], shown_queries)
                    obj, comp = await client.chat_json(msgs, P.batch_schema(qts),
                                                       repair_attempts=sc.repair_attempts, **params)
                    rec.update(ok=True, queries={q: F.clean_question(str(obj.get(P.BATCH_KEYS[q], ""))) for q in qts},
                               answer="")
                    rec["usage"] = {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
                    log.append(rec)
                    bar.update(rec)
                    return
                if t["query_type"] == "question":  # a heading rewritten as a question: no passage
                    comp = await client.chat(P.heading_question_messages(t["heading"]),
                                             **{**params, "max_tokens": min(llm.max_tokens, sc.max_tokens)})
                    rec.update(ok=True, question=F.clean_question(comp.text.strip().split("\n")[0]), answer="")
                    rec["usage"] = {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
                    log.append(rec)
                    bar.update(rec)
                    return
                examples = P.build_examples(struct_rows, by_id, t["query_type"], t["doc_id"], sc.few_shot,
                                            conf.seed, sc.few_shot_words)
                if style == PromptStyle.completion:
                    comp = await client.complete(P.completion_prompt(t["query_type"], passages, examples, shown_queries),
                                                 stop=["\n"], **params)
                    rec.update(ok=True, question=F.clean_question(comp.text), answer="")
                else:
                    with_answer = sc.with_answer
                    first = by_id[t["chunk_id"]]
                    msgs = P.chat_messages(t["query_type"], passages, examples, with_answer,
                                           str(first.get("title") or ""), str(first.get("section") or ""),
                                           shown_queries)
                    obj, comp = await client.chat_json(msgs,
                                                       P.qa_schema(with_answer), repair_attempts=sc.repair_attempts,
                                                       **params)
                    rec.update(ok=True, question=F.clean_question(str(obj.get("question", ""))),
                               answer=str(obj.get("answer", "")).strip())
                rec["usage"] = {"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens}
            except LLMError as exc:
                rec.update(ok=False, error=exc.kind, detail=str(exc)[:300])
            log.append(rec)
            bar.update(rec)

        try:
            await asyncio.gather(*(one(t) for t in todo))
        finally:
            if progress is None:
                bar.close()
            stats_out["generate"] = merge_stats(stats_out.get("generate"), client.stats.to_dict())


def merge_stats(old: dict | None, new: dict) -> dict:
    """Client stats of two runs added up (numbers summed, per-kind counts merged)."""
    if not old:
        return new
    out = dict(old)
    for k, v in new.items():
        if isinstance(v, dict):
            merged = Counter(old.get(k) or {})
            merged.update(v)
            out[k] = dict(merged)
        elif isinstance(v, (int, float)):
            out[k] = old.get(k, 0) + v
    return out


class GenerationProgress:
    """done/total, generations per second, tokens per second, failures so far and an ETA, on stderr
    (a bar on a terminal, a line every few seconds otherwise: :class:`~domain_embed.rundir.Progress`)."""

    def __init__(self, ctx: StageContext, total: int):
        import time

        self._time = time.monotonic
        self.bar = ctx.progress(total=total, desc="generate", unit="gen")
        self.t0, self.tokens, self.failed = self._time(), 0, 0

    def set_total(self, total: int) -> None:
        self.bar.total = total
        inner = getattr(self.bar, "_bar", None)
        if inner is not None:
            inner.total = total

    def update(self, rec: dict[str, Any]) -> None:
        self.tokens += int((rec.get("usage") or {}).get("completion_tokens", 0))
        self.failed += 0 if rec.get("ok") else 1
        dt = max(1e-6, self._time() - self.t0)
        self.bar.set_postfix_str(f"{self.tokens / dt:.0f} tok/s, {self.failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def generate(ctx: StageContext, base_url: str, todo: list[dict[str, Any]], by_id: dict[str, dict],
             struct_rows: list[dict[str, Any]], fp: str, gen_path: Path, stats_out: dict,
             progress: "GenerationProgress | None" = None, deadline: float | None = None,
             skipped: set[str] | None = None) -> None:
    """Run every task in ``todo``, appending one record each to ``gen_path``; with a ``deadline``
    (``time.monotonic()``), tasks not started by then are left out and their keys added to ``skipped``."""
    with AppendLog(gen_path) as log:
        asyncio.run(_generate(ctx, base_url, todo, by_id, struct_rows, fp, log, stats_out, progress, deadline,
                              skipped))


def budgeted_generate(ctx: StageContext, endpoint, tasks: list[dict[str, Any]], todo: list[dict[str, Any]],
                      by_id: dict[str, dict], struct_rows: list[dict[str, Any]], fp: str, gen_path: Path,
                      stats_out: dict) -> list[dict[str, Any]]:
    """Generate ``todo`` within synth.budget_minutes; returns the tasks of the plan (maybe fewer than given).

    A short timed probe (real tasks) gives the time a generation takes here: the first
    ``llm.concurrency`` tasks warm the server's prompt cache (the constant prefix is read once, so they
    are slower than the rest: they made the estimate twice too long), the next ``2 x concurrency`` are
    timed. The plan keeps as many tasks as fit the rest of the budget (tasks come spread over documents
    and sections, so a prefix still covers the corpus) and is recorded in plan.json, so that a rerun
    resumes the same plan instead of spending a new budget. The estimate is printed before the rest.
    When the rest runs slower than the probe, the tasks not started by the end of the budget are not sent,
    and the recorded plan shrinks to the ones that were: the budget holds (to within the requests in flight)."""
    import time

    budget_s = float(ctx.conf.synth.budget_minutes or 0) * 60  # a number as given (2, 0.5) or null
    plan_path = ctx.dir / "plan.json"
    plan = _read_plan(plan_path, fp, len(tasks), budget_s)
    if plan is not None:
        tasks = tasks[:plan]
        keep = {t["key"] for t in tasks}
        todo = [t for t in todo if t["key"] in keep]
    if not todo:
        return tasks
    url = endpoint.url()
    k = min(len(todo), max(1, ctx.conf.llm.concurrency))
    bar = GenerationProgress(ctx, len(todo))
    try:
        t0 = time.perf_counter()
        generate(ctx, url, todo[:k], by_id, struct_rows, fp, gen_path, stats_out, bar)   # warm-up
        each = (time.perf_counter() - t0) / k  # wall seconds per generation, k running at once
        probed = k
        if plan is None and (budget_s <= 0 or time.perf_counter() - t0 < budget_s):
            m = min(len(todo) - k, 2 * k)
            if m > 0:
                t1 = time.perf_counter()
                generate(ctx, url, todo[k:k + m], by_id, struct_rows, fp, gen_path, stats_out, bar)
                each, probed = (time.perf_counter() - t1) / m, k + m
        rest = todo[probed:]
        deadline = None
        if plan is None:
            n_all = len(tasks)
            if budget_s > 0:
                left = max(0.0, budget_s - (time.perf_counter() - t0))
                fit = len(tasks) - len(todo) + probed + int(left / max(each, 1e-3))
                tasks = tasks[:fit] if fit < n_all else tasks
                keep = {t["key"] for t in tasks}
                rest = [t for t in rest if t["key"] in keep]
                # The probe can be faster than the rest (a machine that gets busier, longer prompts later in the
                # plan): what is not started when the budget is spent is left out, instead of overrunning it.
                deadline = time.monotonic() + left
            _write_plan(plan_path, fp, n_all, len(tasks), budget_s)
            capped = f" of {n_all} possible (synth.budget_minutes={budget_s / 60:g} caps it)" if len(tasks) < n_all \
                else ""
            bar.set_total(probed + len(rest))
            ctx.log(f"{len(tasks)} generations{capped}; at about {each:.1f} s each ({k} at once, from a timed probe): "
                    f"{len(rest)} left, about {_minutes(each * len(rest))}")
        if rest:
            skipped: set[str] = set()
            t2 = time.perf_counter()
            generate(ctx, url, rest, by_id, struct_rows, fp, gen_path, stats_out, bar, deadline, skipped)
            if skipped:
                # the plan becomes what was sent: the tasks before the first one left out (they start in order)
                n = next(i for i, t in enumerate(tasks) if t["key"] in skipped)
                took = (time.perf_counter() - t2) / max(1, len(rest) - len(skipped))
                ctx.log(f"synth.budget_minutes={budget_s / 60:g} spent: {len(skipped)} of the {len(tasks)} planned "
                        f"generations were not sent (they took about {took:.1f} s each here, against the probe's "
                        f"{each:.1f} s); the plan keeps the first {n}: a rerun resumes it, a larger budget adds to it")
                tasks = tasks[:n]
                _write_plan(plan_path, fp, n_all, n, budget_s)
    finally:
        bar.close()
    return tasks


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _read_plan(path: Path, fp: str, n_all: int, budget_s: float) -> int | None:
    """The recorded plan size, if it was made for these generations, this candidate list and this budget
    (a raised budget plans again, keeping what is done)."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = d.get("fp") == fp and d.get("planned_from") == n_all and d.get("budget_s") == budget_s
    return int(d["tasks"]) if same else None


def _write_plan(path: Path, fp: str, n_all: int, n: int, budget_s: float) -> None:
    from ..rundir import atomic_write_json

    atomic_write_json(path, {"fp": fp, "planned_from": n_all, "tasks": n, "budget_s": budget_s})


# ---------------------------------------------------------------- the judge
async def _judge(ctx: StageContext, base_url: str, pairs: list[dict[str, Any]], by_id: dict[str, dict],
                 jfp: str, log: AppendLog, stats_out: dict) -> dict[str, dict]:
    from ..llm.client import LLMClient, LLMError

    sc = ctx.conf.synth
    jc = sc.judge
    results: dict[str, dict] = {}
    async with LLMClient.from_config(ctx.conf.llm, base_url) as client:
        bar = ctx.progress(total=len(pairs), desc="judge")

        async def one(p: dict[str, Any]) -> None:
            passages = [clip(by_id[s]["text"], sc.max_prompt_words) for s in p["segment_ids"]]
            key = f"{jfp}|{p['id']}"
            params = {"temperature": 0.0, "max_tokens": jc.max_tokens, "seed": P.request_seed(key)}
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


def judge(ctx: StageContext, base_url: str, pairs: list[dict[str, Any]], by_id: dict[str, dict], jfp: str,
          judge_path: Path, stats_out: dict) -> dict[str, dict]:
    """Grade ``pairs``, appending each grade to ``judge_path``; the records by key."""
    with AppendLog(judge_path) as jlog:
        return asyncio.run(_judge(ctx, base_url, pairs, by_id, jfp, jlog, stats_out))


def load_judgements(path: Path) -> dict[str, dict]:
    judged: dict[str, dict] = {}
    if path.is_file():
        for rec in read_jsonl(path):
            if rec.get("ok"):
                judged[rec["key"]] = rec
    return judged


def judge_enabled(conf: RunConfig) -> bool:
    """synth.judge.enabled: true | false | auto (on for remote endpoints, off for the tiny local model,
    whose grades we measured to be constant -- SmolLM2-135M gives nearly every pair 1/1/1)."""
    v = toggle(conf.synth.judge.enabled)
    if v == Toggle.auto:
        return conf.llm.kind == LLMKind.remote
    return v == Toggle.true


def degenerate(scores: list[dict[str, int]], max_same_fraction: float) -> str | None:
    """A description of a judge that gives (almost) everything the same grade, else None."""
    if len(scores) < 5 or max_same_fraction >= 1:
        return None
    common, n = Counter(tuple(sorted(s.items())) for s in scores).most_common(1)[0]
    if n / len(scores) > max_same_fraction:
        return f"the same grade {dict(common)} in {n} of {len(scores)} cases"
    return None

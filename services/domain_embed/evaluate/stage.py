"""The ``evaluate`` stage: base vs tuned (and BM25) on the held-out split and any BEIR dataset,
a report, the quality gate, and optionally the drift of a live /v1/embeddings endpoint.

Both models embed with the one shared spec (prefixes, lengths, pooling), so the comparison measures
the weights and nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import QualityGateFailed, UserError
from ..rundir import StageContext, atomic_write_json, read_jsonl
from .metrics import evaluate as beir_evaluate
from .metrics import per_query
from .report import write_curves, write_markdown
from .retrieval import BeirDataset, bm25_run, dense_run, load_beir


def _real_queries(ctx: StageContext, heldout: BeirDataset) -> tuple[BeirDataset | None, list[str]]:
    """Real user queries with judgments, scored like the held-out set (None without --qrels), and the
    warnings about qrels ids that match no query and queries without a judgment.

    Every input is read and checked here, before anything is embedded: without --qrels the queries are
    loaded for the drift report (with its own inputs), so a bad file fails in a second, not after the
    corpus is embedded."""
    from ..user_queries import load_qrels, load_real_queries, validate_qrels

    rq, qr = ctx.extra.get("real_queries"), ctx.extra.get("qrels")
    if qr and not rq:
        raise UserError(f"--qrels {qr} needs --real-queries, the file of the queries it judges (JSONL with "
                        f"\"_id\" and \"text\"); give both, or neither")
    if not rq:
        return None, []
    if not qr:
        from ..user_queries.run import drift_inputs

        drift_inputs(ctx.run_dir, Path(rq))
        return None, []
    queries = load_real_queries(Path(rq))
    warnings: list[str] = []
    qrels = validate_qrels(queries, load_qrels(Path(qr)), set(heldout.corpus_ids),
                           int(ctx.conf.evaluate.gate.min_real_queries), warnings.append)
    ids = [q for q in queries if q in qrels]
    real = BeirDataset("real", heldout.corpus_ids, heldout.corpus_texts, ids, [queries[q] for q in ids], qrels)
    return real, warnings


# the metrics that get a 95% bootstrap interval (report.json); report.md shows them for every table row
CI_METRICS = ("ndcg@10", "recall@10", "map@10", "precision@10", "ndcg@1", "recall@100")


def _scored(per_q: dict[str, dict[str, dict[str, float]]], qids: list[str]) -> dict[str, Any]:
    """Means of every metric per model over ``qids``, each with its 95% bootstrap interval, and the paired
    interval of tuned minus base per query (with wins and losses): one held-out split or one real set is a
    sample of queries, and a gain smaller than its interval is not a gain."""
    import numpy as np

    from ..beir import bootstrap

    out: dict[str, Any] = {}
    if not qids:
        return {label: {} for label in per_q}
    keys = list(per_q[next(iter(per_q))][qids[0]])
    for label, pq in per_q.items():
        out[label] = {k: sum(pq[q][k] for q in qids) / len(qids) for k in keys}
        out[label]["ci95"] = {k: list(bootstrap([pq[q][k] for q in qids])[1:]) for k in CI_METRICS if k in keys}
    if "tuned" in per_q and "base" in per_q:
        paired = {}
        for k in CI_METRICS:
            if k in keys:
                d = np.array([per_q["tuned"][q][k] - per_q["base"][q][k] for q in qids])
                mean, lo, hi = bootstrap(d)
                paired[k] = {"diff": mean, "ci95": [lo, hi], "wins": int((d > 1e-12).sum()),
                             "losses": int((d < -1e-12).sum())}
        out["tuned_minus_base"] = paired
    return out


def gate_verdict(g, metric: str, b: float, t: float, paired: dict[str, Any] | None, where: str) -> tuple[bool, str]:
    """(passed, reason). Fails when the tuned mean is below the base's by more than the tolerance, and (with
    ``evaluate.gate.refuse_significant_loss``) when the paired 95% interval of tuned - base lies wholly below 0:
    a loss the queries agree on is a loss, however small, and the product never ships a model that loses to its base."""
    tol = g.tolerance
    interval = ""
    if paired:  # the interval says how sure the verdict is
        lo, hi = paired["ci95"]
        interval = (f"; tuned - base {paired['diff']:+.4f}, paired 95% interval [{lo:+.4f}, {hi:+.4f}], "
                    f"{paired['wins']} wins / {paired['losses']} losses")
    if not g.enabled:
        return True, "gate disabled (evaluate.gate.enabled=false)" + interval
    advice = "; check the training data, learning rate and temperature (train/metrics.jsonl)"
    if t < b - tol:
        return False, (f"tuned {metric} {t:.4f} is below base {b:.4f} by {b - t:.4f} {where}, more than the tolerance "
                       f"{tol}{interval}{advice}")
    if g.refuse_significant_loss and paired and paired["ci95"][1] < 0:
        return False, (f"tuned {metric} {t:.4f} is within the tolerance {tol} of base {b:.4f} {where}, but it is "
                       f"worse with 95% confidence{interval} (evaluate.gate.refuse_significant_loss){advice}")
    return True, f"tuned {metric} {t:.4f} >= base {b:.4f} - tolerance {tol} {where}{interval}"


def losing_groups(by_group: dict[str, dict[str, Any]], metric: str, min_queries: int) -> list[str]:
    """Held-out query sources (LLM factual, headings, ...) of at least ``min_queries`` queries where the tuned
    model is worse with 95% confidence: a warning, not a failure (several small groups, one of them below 0 by
    chance now and then), but the source that looks most like a user's question can lose while the mean gains."""
    out = []
    for name, grp in sorted(by_group.items()):
        p = (grp.get("tuned_minus_base") or {}).get(metric)
        if p and grp.get("queries", 0) >= max(1, min_queries) and p["ci95"][1] < 0:
            out.append(f"held-out {name} queries ({grp['queries']}): tuned - base {metric} {p['diff']:+.4f}, "
                       f"paired 95% interval [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}], {p['wins']} wins / "
                       f"{p['losses']} losses: the tuned model is worse on this source")
    return out


def _query_groups(folder: Path, query_ids: list[str]) -> dict[str, list[str]]:
    """Held-out queries grouped by ``source:query_type`` from the split's BEIR metadata, so the
    report shows what each source of synthetic queries contributed (empty for plain BEIR data)."""
    wanted, groups = set(query_ids), {}
    for q in read_jsonl(folder / "queries.jsonl"):
        meta = q.get("metadata") or {}
        if str(q.get("_id")) in wanted and meta.get("query_type"):
            key = f"{meta.get('source') or '?'}:{meta['query_type']}"
            groups.setdefault(key, []).append(str(q["_id"]))
    return groups


def _hubs(ds: BeirDataset, runs: dict[str, dict], train_pairs: Path) -> dict[str, dict[str, Any]]:
    """Per model, the passage in the most queries' top 10 that answers none of them (``beir.top_hub``), with
    its text, and for the tuned model the training queries whose positive it was: where a hub comes from."""
    from ..beir import top_hub

    text = dict(zip(ds.corpus_ids, ds.corpus_texts))
    n = max(1, len(ds.query_ids))
    out: dict[str, dict[str, Any]] = {}
    for label, r in runs.items():
        pid, count = top_hub(r, 10, lambda q, d: ds.qrels.get(q, {}).get(d, 0) > 0)
        out[label] = {"passage": pid, "queries": count, "share": round(count / n, 4),
                      "text": (text.get(pid) or "")[:200]}
    hub = out.get("tuned", {}).get("passage")
    if hub and train_pairs.is_file():
        out["tuned"]["train_queries"] = [p["query"] for p in read_jsonl(train_pairs)
                                         if any(x.get("id") == hub for x in p.get("pos") or [])]
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    from ..inference import stage_encoder

    ec = ctx.conf.evaluate
    spec = ctx.spec()
    # The tuned model is scored with the spec it was trained with; a config that disagrees is refused.
    tuned_spec = ctx.trained_spec("train/model")
    ks = sorted(ec.k_values)
    top = max(ks)
    tuned_dir = ctx.path("train/model")
    heldout = load_beir(ctx.path("split/eval_beir"), "test", "heldout")
    datasets: list[tuple[BeirDataset, str]] = [(heldout, str(ctx.path("split/eval_beir")))]
    real, real_warnings = _real_queries(ctx, heldout)
    for w in real_warnings:
        ctx.log(f"warning: {w}")
    if real is not None:
        datasets.append((real, str(ctx.extra["real_queries"])))
    names = {"heldout", "real"}
    for p in ctx.extra.get("dataset") or []:
        ds = load_beir(Path(p))
        while ds.name in names:
            ds.name += "_"
        names.add(ds.name)
        datasets.append((ds, str(p)))

    # fp32 always (torch, or the ONNX graph that matches it): evaluation measures the model, not a
    # quantisation. Through the run's store, the base model's corpus vectors are the ones synthesis
    # and mining already made, and a rerun (another --dataset, the gate retried) embeds nothing new.
    base = stage_encoder(ctx, spec, allow_int8=False, batch_size=ec.batch_size)
    tuned = stage_encoder(ctx, tuned_spec, tuned_dir, allow_int8=False, batch_size=ec.batch_size)
    stored = {"base": ctx.embeddings.bind(base), "tuned": ctx.embeddings.bind(tuned)}
    report: dict[str, Any] = {"datasets": {}, "k_values": ks, "spec": spec.to_dict(),
                              "tuned_model": str(tuned_dir), "base_model": spec.model_path}
    train_pairs = ctx.path("mine/train.jsonl")
    for ds, path in datasets:
        ctx.log(f"{ds.name}: {len(ds.query_ids)} queries over {len(ds.corpus_ids)} passages")
        entry: dict[str, Any] = {"info": {"queries": len(ds.query_ids), "corpus": len(ds.corpus_ids), "path": path}}
        runs: dict[str, dict] = {}
        for label, enc in stored.items():
            runs[label] = dense_run(ds, lambda t, kind, e=enc: e.encode(t, kind), top)
        if ec.bm25:
            runs["bm25"] = bm25_run(ds, top)
        per_q = {label: per_query(ds.qrels, r, ks) for label, r in runs.items()}
        judged = sorted(per_q["base"])  # queries with a relevant judgment, the same for every model
        entry.update(_scored(per_q, judged))
        entry["hubs"] = _hubs(ds, runs, train_pairs)
        groups = _query_groups(Path(path), ds.query_ids) if ds.name == "heldout" else {}
        if groups:
            entry["by_group"] = {g: {"queries": len(qids), **_scored(per_q, [q for q in qids if q in per_q["base"]])}
                                 for g, qids in sorted(groups.items())}
        report["datasets"][ds.name] = entry

    # ---- quality gate: on the user's real judged queries when given (they decide), else the held-out split
    g = ec.gate
    metric = g.metric
    gate_on = "real" if "real" in report["datasets"] else "heldout"
    if gate_on == "real":  # the report leads with what users ask
        report["datasets"] = {"real": report["datasets"]["real"],
                              **{k: v for k, v in report["datasets"].items() if k != "real"}}
    b = report["datasets"][gate_on]["base"].get(metric)
    t = report["datasets"][gate_on]["tuned"].get(metric)
    if b is None or t is None:
        raise UserError(f"evaluate.gate.metric={metric!r} is not computed; use one of "
                        f"{sorted(k for k in report['datasets'][gate_on]['base'] if k != 'ci95')}")
    tol = g.tolerance
    where = "on the real queries (--real-queries/--qrels)" if gate_on == "real" else "on the held-out split"
    paired = report["datasets"][gate_on].get("tuned_minus_base", {}).get(metric)
    passed, reason = gate_verdict(g, metric, b, t, paired, where)
    report["gate"] = {"passed": passed, "metric": metric, "dataset": gate_on, "base": b, "tuned": t,
                      "tolerance": tol, "reason": reason,
                      "warnings": losing_groups(report["datasets"].get("heldout", {}).get("by_group", {}), metric,
                                                int(g.min_group_queries))}
    for w in report["gate"]["warnings"]:
        ctx.log(f"warning: {w}")
    report["gate"]["warnings"][:0] = [f"real queries: {w}" for w in real_warnings]  # logged above, before embedding

    # ---- live endpoint: drift vs the checkpoint, and its own metrics
    endpoint_ok = True
    if ctx.extra.get("endpoint"):
        endpoint_ok = _check_endpoint(ctx, str(ctx.extra["endpoint"]), heldout, tuned, report, ks, top)

    # ---- real queries without judgments: how far are the synthetic queries from them?
    drift_md = ""
    if ctx.extra.get("real_queries") and not ctx.extra.get("qrels"):
        from ..user_queries.run import drift_for_run, drift_markdown

        drift = drift_for_run(ctx.run_dir, ctx.extra["real_queries"], stored["base"], out_dir=ctx.dir)
        report["drift"] = {"flags": drift.get("flags", []), "files": ["drift.json", "drift.md", "drift.png"]}
        drift_md = drift_markdown(drift)

    atomic_write_json(ctx.dir / "report.json", report)
    write_markdown(ctx.dir / "report.md", report)
    if drift_md:
        with open(ctx.dir / "report.md", "a", encoding="utf-8") as fh:
            fh.write("\n" + drift_md + "\n")
    write_curves(ctx.dir / "curves.png", report, ctx.path("train/metrics.jsonl"))
    h = report["datasets"]["heldout"]
    counts = {"queries": len(heldout.query_ids), "base_ndcg@10": round(h["base"]["ndcg@10"], 4),
              "tuned_ndcg@10": round(h["tuned"]["ndcg@10"], 4),
              "bm25_ndcg@10": round(h["bm25"]["ndcg@10"], 4) if "bm25" in h else None,
              "gate_passed": passed, "datasets": list(report["datasets"])}
    if "endpoint" in report:
        counts["endpoint_max_drift"] = report["endpoint"]["max_drift"]
    counts["encoders"] = {label: {k: v for k, v in getattr(e, "info", {}).items() if k != "graph"}
                          for label, e in (("base", base), ("tuned", tuned))}
    ctx.log(f"held-out nDCG@10: base {counts['base_ndcg@10']}, tuned {counts['tuned_ndcg@10']}, "
            f"bm25 {counts['bm25_ndcg@10']}; gate {'passed' if passed else 'FAILED'}")
    if not passed:
        raise QualityGateFailed(f"quality gate failed: {reason}; see {ctx.dir / 'report.md'}", counts)
    if not endpoint_ok:
        ep = report["endpoint"]
        raise QualityGateFailed(f"endpoint {ep['url']} drifts from the checkpoint: max(1 - cosine) {ep['max_drift']:.2e} "
                                f"> tolerance {ep['tolerance']:.0e}; is it serving {tuned_dir} with the same spec?", counts)
    return counts


def _check_endpoint(ctx: StageContext, url: str, heldout: BeirDataset, tuned, report: dict, ks, top) -> bool:
    import numpy as np

    from .endpoint import EndpointEncoder, api_key_from_env, max_cosine_drift

    e = ctx.conf.evaluate.endpoint
    enc = EndpointEncoder(url, ctx.conf.model.served_name, e.batch_size, float(e.timeout_s),  # a number as given
                          api_key_from_env(e.api_key_env))
    try:
        n = e.max_texts
        drifts = []
        for texts, kind in ((heldout.query_texts[:n], "query"), (heldout.corpus_texts[:n], "passage")):
            drifts.append(max_cosine_drift(enc.encode(texts, kind), tuned.encode(texts, kind)))
        drift = float(max(drifts))
        tol = e.tolerance
        report["endpoint"] = {"url": enc.url, "model": enc.model, "max_drift": drift, "tolerance": tol,
                              "passed": drift <= tol,
                              "texts_compared": len(heldout.query_texts[:n]) + len(heldout.corpus_texts[:n])}
        if e.metrics:
            run_ = dense_run(heldout, lambda t, kind: enc.encode(t, kind), top)
            report["datasets"]["heldout"]["endpoint"] = beir_evaluate(heldout.qrels, run_, ks)
        return bool(drift <= tol) and bool(np.isfinite(drift))
    finally:
        enc.close()

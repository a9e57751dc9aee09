"""Drift of a run's synthetic queries against a real-query file, written beside the evaluation.

The evaluate stage calls :func:`drift_for_run` when it is given ``--real-queries`` without
``--qrels``; it can also be called on any run directory with ``curate/`` and ``synth/`` done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .drift import drift_report
from .loading import load_real_queries
from .plots import plot_drift


def drift_markdown(report: dict[str, Any]) -> str:
    r, s, e = report["real"], report["synthetic"], report.get("embedding")
    lines = ["## Real vs synthetic queries", "",
             "| | real | synthetic |", "|---|---:|---:|",
             f"| queries | {r['n']} | {s['n']} |",
             f"| words (median / mean / p90) | {r['length_words']['median']:g} / {r['length_words']['mean']:g} / "
             f"{r['length_words']['p90']:g} | {s['length_words']['median']:g} / {s['length_words']['mean']:g} / "
             f"{s['length_words']['p90']:g} |",
             f"| question-style | {r['style']['question']:.0%} | {s['style']['question']:.0%} |",
             f"| keyword-style | {r['style']['keyword']:.0%} | {s['style']['keyword']:.0%} |",
             f"| content words found in corpus | {r['vocab_overlap']:.0%} | {s['vocab_overlap']:.0%} |"]
    if e:
        lines += [f"| mean nearest-neighbour cosine to the other set | {e['nn_cosine_real_to_synthetic']:.3f} | "
                  f"{e['nn_cosine_synthetic_to_real']:.3f} |",
                  "", f"MMD² (RBF) = {e['mmd2_rbf']:.4f}, permutation p = {e['mmd_p_value']:.3f}; "
                  f"{e['uncovered_fraction']:.0%} of real queries have no synthetic query within cosine 0.5."]
    lines += ["", "| synthetic type | share | median words | question-style |", "|---|---:|---:|---:|"]
    for t, v in report["by_type"].items():
        lines.append(f"| {t} | {v['share']:.0%} | {v['length_words']['median']:g} | {v['style']['question']:.0%} |")
    lines += ["", "### Flags", ""]
    lines += [f"- {f['message']}" for f in report["flags"]] or ["- none: the synthetic queries look like the real ones"]
    return "\n".join(lines) + "\n"


def drift_inputs(run_dir: str | Path, real_queries: str | Path) -> tuple[list[str], Path, Path]:
    """The real queries (read and checked) and the run's qa.jsonl and chunks.jsonl that a drift report
    compares them with; a missing or malformed input fails here, before anything is embedded."""
    run_dir = Path(run_dir)
    qa, chunks = run_dir / "synth" / "qa.jsonl", run_dir / "curate" / "chunks.jsonl"
    for p, stage in ((qa, "synth"), (chunks, "curate")):
        if not p.is_file():
            raise UserError(f"{p} is missing; run `domain-embed {stage} --run-dir {run_dir}` before comparing real queries")
    return list(load_real_queries(real_queries).values()), qa, chunks


def drift_for_run(run_dir: str | Path, real_queries: str | Path, encoder: Any | None = None,
                  out_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    """Compare ``real_queries`` with ``<run_dir>/synth/qa.jsonl``; write drift.{json,md,png} into ``out_dir``.

    ``out_dir`` defaults to ``<run_dir>/evaluate``. Returns the report.
    """
    from ..rundir import atomic_write_json, atomic_write_text, read_jsonl

    run_dir = Path(run_dir)
    real, qa, chunks = drift_inputs(run_dir, real_queries)
    report = drift_report(real, list(read_jsonl(qa)), [c.get("text", "") for c in read_jsonl(chunks)], encoder, **kw)
    out = Path(out_dir) if out_dir is not None else run_dir / "evaluate"
    atomic_write_json(out / "drift.json", report)
    atomic_write_text(out / "drift.md", drift_markdown(report))
    plot_drift(report, out / "drift.png")
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m domain_embed.user_queries RUN_DIR QUERIES`` prints the drift flags (a helper for notebooks and notes)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m domain_embed.user_queries", description=main.__doc__)
    p.add_argument("run_dir", type=Path)
    p.add_argument("queries", type=Path)
    p.add_argument("--no-embed", action="store_true", help="skip the embedding-space statistics")
    args = p.parse_args(argv)
    from ..rundir import run_dir_lock

    try:
        if not args.run_dir.is_dir():
            raise UserError(f"no run at {args.run_dir}; give the run directory whose synthetic queries to compare")
        # it writes into evaluate/ and the embedding store: the run's lock, as every stage takes, so a stage
        # starting meanwhile (which clears its folder's temporary files) cannot remove this one's mid-write
        with run_dir_lock(args.run_dir):
            report = _drift_cli(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(drift_markdown(report))
    print(json.dumps({k: report["embedding"][k] for k in ("nn_cosine_real_to_synthetic", "mmd2_rbf", "mmd_p_value")}
                     if report["embedding"] else {}))
    return 0


def _drift_cli(args: Any) -> dict[str, Any]:
    import sys

    encoder = None
    if not args.no_embed:
        from ..config import EncodingSpec, load_config
        from ..embed_store import EmbeddingStore
        from ..inference import inference_encoder

        cfg = load_config(args.run_dir, [], save=False)
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        # fp32 through the run's store: the synthetic questions' vectors are the ones synthesis made.
        encoder = EmbeddingStore.for_run(args.run_dir).bind(
            inference_encoder(EncodingSpec.from_config(cfg), cfg.model, log=log))
    return drift_for_run(args.run_dir, args.queries, encoder)

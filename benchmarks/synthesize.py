"""Synthesis throughput against the local llama.cpp server at concurrency 1 and 4, in one run.

For each concurrency it runs the real synthesize stage in a fresh run directory on the same chunks
(the server started with as many parallel slots as the concurrency), and reports generation
requests per second, tokens per second, and pairs kept per document (LLM pairs and all pairs).
The last row is the ratio c4/c1 measured in this same run.

    python benchmarks/synthesize.py [--chunks runs/demo/curate/chunks.jsonl] [--max-chunks 6]

Chunks default to tests/synth/sample_chunks.jsonl (ten chunks of four sample-corpus pages).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent


def run_once(chunks: Path, concurrency: int, args: argparse.Namespace) -> dict:
    from domain_embed.config import load_config
    from domain_embed.rundir import run_stage
    from domain_embed.stages import STAGES

    rd = Path(tempfile.mkdtemp(prefix=f"synth-bench-c{concurrency}-"))
    overrides = [f"synth.max_chunks={args.max_chunks}", "synth.types.factual=1", "synth.types.keyword=1",
                 f"synth.judge.enabled={str(args.judge).lower()}", f"llm.concurrency={concurrency}",
                 f"llm.local.n_parallel={concurrency}", f"llm.local.threads={args.threads}"]
    cfg = load_config(rd, overrides)

    def curate(ctx):
        shutil.copy(chunks, ctx.dir / "chunks.jsonl")
        return {}

    run_stage(dataclasses.replace(STAGES["curate"], fn=curate), rd, cfg, STAGES, quiet=True)
    t0 = time.perf_counter()
    man = run_stage(STAGES["synthesize"], rd, cfg, STAGES, quiet=True)
    wall = time.perf_counter() - t0
    c = man["counts"]
    g = c["llm"]["generate"]
    n_docs = len({json.loads(l)["doc_id"] for l in chunks.read_text().splitlines() if l.strip()})
    llm_pairs = sum(v for k, v in c["pairs_by_source"].items() if k.startswith("llm:"))
    shutil.rmtree(rd, ignore_errors=True)
    return {"concurrency": concurrency, "requests": g["requests"], "gen_wall_s": g["wall_s"],
            "req_per_s": g["requests"] / g["wall_s"], "tok_per_s": g["completion_tokens"] / g["wall_s"],
            "llm_pairs_per_doc": llm_pairs / n_docs, "pairs_per_doc": c["pairs"] / n_docs,
            "stage_wall_s": wall, "failures": sum(g["failures"].values()),
            "failure_kinds": {**g["failures"], **{f"retried_{k}": v for k, v in g["transient_errors"].items()},
                              "json_repairs": g["json_repairs"]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=Path, default=REPO / "tests" / "synth" / "sample_chunks.jsonl")
    ap.add_argument("--max-chunks", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (llm.local.threads)")
    ap.add_argument("--judge", action="store_true", help="include the LLM judge in the stage")
    args = ap.parse_args()
    if not args.chunks.is_file():
        print(f"no chunks file at {args.chunks}; run `domain-embed curate` first or pass --chunks", file=sys.stderr)
        return 2
    rows = [run_once(args.chunks, c, args) for c in (1, 4)]
    cols = ["concurrency", "requests", "gen_wall_s", "req_per_s", "tok_per_s", "llm_pairs_per_doc", "pairs_per_doc",
            "failures"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in cols) + " |")
    c1, c4 = rows
    for r in rows:
        print(f"c{r['concurrency']}: failures and retries by kind {r['failure_kinds']}")
    print(f"| c4/c1 | | | {c4['req_per_s'] / c1['req_per_s']:.2f}x | {c4['tok_per_s'] / c1['tok_per_s']:.2f}x | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

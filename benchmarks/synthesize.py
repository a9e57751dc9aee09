"""Synthesis throughput before and after, in one run: surviving LLM-written pairs per CPU-minute.

"before" is the synthesize stage of a git ref (default: the commit before batched generation), exported
with ``git archive``; "after" is this working tree. Each runs the real stage (real llama.cpp server,
SmolLM2-135M) as a subprocess in a fresh run directory on the same chunks, and the CPU time is the
process tree's (``RUSAGE_CHILDREN``: the CLI, the encoder and the llama.cpp server), so a machine shared
with other jobs counts only this work.

    python benchmarks/synthesize.py --chunks runs/x/curate/chunks.jsonl \
        [--before-ref 0790930] [--before "synth.max_chunks=16"] [--after ""]

By default "after" runs with its defaults (a 4-minute generation budget); "before" with 16 chunks (48
generations: its default of 80 chunks would take about 15 minutes), which only raises the share of the fixed
cost in its stage CPU -- the per-CPU-minute of *generation* column subtracts that cost on both sides.

Chunks default to tests/synth/sample_chunks.jsonl (ten chunks of four sample-corpus pages).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEFORE_REF = "0790930"  # main before the synthesis refactor: one request per query type, few-shot per document


def _curated_run(chunks: Path, code: Path, overrides: list[str]) -> Path:
    """A run dir whose curate stage 'wrote' ``chunks`` (with a real manifest), made by ``code``'s package."""
    rd = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    script = ("import dataclasses, shutil, sys; from pathlib import Path; from domain_embed.config import load_config; "
              "from domain_embed.rundir import run_stage; from domain_embed.stages import STAGES; "
              "rd = Path(sys.argv[1]); cfg = load_config(rd, sys.argv[3:]); "
              "f = lambda ctx: (shutil.copy(sys.argv[2], ctx.dir / 'chunks.jsonl'), {})[1]; "
              "run_stage(dataclasses.replace(STAGES['curate'], fn=f), rd, cfg, STAGES, quiet=True)")
    subprocess.run([sys.executable, "-c", script, str(rd), str(chunks), *overrides], check=True,
                   env=_env(code))
    return rd


def _env(code: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(code / "services"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "DOMAIN_EMBED_CONFIG_DIR": str(code / "configs")}


def run_once(label: str, code: Path, chunks: Path, overrides: list[str]) -> dict:
    rd = _curated_run(chunks, code, overrides)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "domain_embed.cli", "synthesize", "--run-dir", str(rd), "--quiet"],
                       env=_env(code), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{label}: synthesize failed: {r.stderr[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    c = json.loads((rd / "synth" / "manifest.json").read_text())["counts"]
    qa = [json.loads(l) for l in (rd / "synth" / "qa.jsonl").read_text().splitlines() if l.strip()]
    llm = [q for q in qa if q["source"]["kind"] == "llm"]
    g = c["llm"].get("generate", {})
    out = {"label": label, "chunks_sampled": c["chunks_sampled"], "requests": g.get("requests", 0),
           "llm_queries": sum(v for k, v in c["candidates_by_source"].items() if k.startswith("llm:")),
           "llm_pairs_kept": len(llm), "cpu_s": cpu, "wall_s": wall,
           "kept_per_cpu_min": len(llm) / (cpu / 60), "failures": sum(g.get("failures", {}).values()),
           "sample": [f"{q['query_type']}: {q['question']}" for q in llm[:8]]}
    shutil.rmtree(rd, ignore_errors=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=Path, default=REPO / "tests" / "synth" / "sample_chunks.jsonl")
    ap.add_argument("--before-ref", default=BEFORE_REF, help="git ref whose synthesize stage is 'before'")
    ap.add_argument("--before", default="synth.max_chunks=16", help="overrides for the before run (space-separated)")
    ap.add_argument("--after", default="",
                    help="overrides for the after run (space-separated)")
    ap.add_argument("--common", default="", help="overrides for both runs")
    args = ap.parse_args()
    if not args.chunks.is_file():
        print(f"no chunks file at {args.chunks}; run `domain-embed curate` first or pass --chunks", file=sys.stderr)
        return 2
    old = Path(tempfile.mkdtemp(prefix="synth-before-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before_ref, "services", "configs"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tf:
        tf.extractall(old, filter="data")
    common = args.common.split()
    # Each side's stage without any generation (imports, encoder, corpus embedding for the round trip), on the
    # same chunks: subtracted from that side's CPU, it leaves the CPU that generation itself took.
    no_gen = [f"synth.types.{t}=0" for t in ("factual", "keyword", "procedural", "structural", "multi_hop")]
    sides = [(f"before ({args.before_ref})", old, args.before.split()), ("after (this tree)", REPO, args.after.split())]
    rows = []
    for label, code, extra in sides:
        # twice: the first may also build caches outside the run (the base model's ONNX graph)
        off = no_gen + (["synth.structure.questions=0"] if "synth.structure.questions" in " ".join(common + extra) else [])
        fixed = min((run_once(f"{label}, no generation", code, args.chunks, common + extra + off) for _ in range(2)),
                    key=lambda f: f["cpu_s"])
        r = run_once(label, code, args.chunks, common + extra)
        r["fixed_cpu_s"] = fixed["cpu_s"]
        r["gen_cpu_s"] = max(1e-3, r["cpu_s"] - fixed["cpu_s"])
        r["kept_per_gen_cpu_min"] = r["llm_pairs_kept"] / (r["gen_cpu_s"] / 60)
        rows.append(r)
    shutil.rmtree(old, ignore_errors=True)
    cols = ["label", "chunks_sampled", "requests", "llm_queries", "llm_pairs_kept", "cpu_s", "wall_s",
            "kept_per_cpu_min", "fixed_cpu_s", "gen_cpu_s", "kept_per_gen_cpu_min", "failures"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in cols) + " |")
    b, a = rows
    print(f"surviving LLM pairs per CPU-minute of the stage, after/before: "
          f"{a['kept_per_cpu_min'] / max(b['kept_per_cpu_min'], 1e-9):.2f}x; "
          f"per CPU-minute of generation: {a['kept_per_gen_cpu_min'] / max(b['kept_per_gen_cpu_min'], 1e-9):.2f}x")
    for r in rows:
        print(f"{r['label']}: first kept LLM queries:")
        for q in r["sample"]:
            print(f"   {q}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

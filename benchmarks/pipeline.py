"""Time `domain-embed run` stage by stage against the demo's 15-minute target.

Runs the whole pipeline (curate .. export) as a user would, in a fresh run directory, then reads
each stage's wall time from its manifest and prints each stage's share of the total:

    python benchmarks/pipeline.py                                  # the bundled sample corpus
    python benchmarks/pipeline.py --corpus /usr/share/doc/sqlite3-doc --run-dir runs/sqlite
    python benchmarks/pipeline.py --corpus docs/ synth.max_chunks=4 train.max_steps=2   # a quick check

Set-up (installing, the first import of torch) is not counted: the clock is the stages' own. The
run's total wall time, start-up included, is printed too. ``--reuse`` times an existing run
directory's manifests without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGE_FOLDERS = [("curate", "curate"), ("synth", "synth"), ("split", "split"), ("mine", "mine"),
                 ("train", "train"), ("evaluate", "evaluate"), ("export", "export")]


def stage_times(run_dir: Path) -> list[tuple[str, float | None, dict]]:
    out = []
    for name, folder in STAGE_FOLDERS:
        p = run_dir / folder / "manifest.json"
        if not p.is_file():
            out.append((name, None, {}))
            continue
        m = json.loads(p.read_text())
        out.append((name, float(m.get("wall_time_s", 0.0)), m.get("counts", {})))
    return out


def table(rows: list[tuple[str, float | None, dict]], target_s: float, wall_s: float | None) -> str:
    done = [(n, s) for n, s, _ in rows if s is not None]
    total = sum(s for _, s in done)
    lines = [f"{'stage':<11} {'seconds':>9} {'share':>7}  notes", "-" * 60]
    for name, sec, counts in rows:
        if sec is None:
            lines.append(f"{name:<11} {'-':>9} {'-':>7}  not run (no manifest)")
            continue
        note = ""
        if name == "synth":
            note = (f"pairs={counts.get('pairs', '?')}, generations ok {counts.get('generations_ok', '?')}"
                    f"/{counts.get('generations_planned', '?')}")
        elif name == "train":
            best = counts.get("best_val_ndcg@10")
            note = f"steps={counts.get('steps', '?')}, val nDCG@10 {counts.get('base_val_ndcg@10')} -> " \
                   f"{'last step unvalidated' if best is None else best}"
        elif name == "evaluate":
            note = ", ".join(f"{k.replace('_ndcg@10', '')} {v}" for k, v in counts.items()
                             if str(k).endswith("ndcg@10") and isinstance(v, (int, float)))
            note = f"nDCG@10 {note}"[:60] if note else ""
        share = 100.0 * sec / total if total else 0.0
        lines.append(f"{name:<11} {sec:9.1f} {share:6.1f}%  {note}")
    lines.append("-" * 60)
    verdict = "within" if total <= target_s else "OVER"
    lines.append(f"{'total':<11} {total:9.1f} {100.0:6.1f}%  {verdict} the {target_s / 60:.0f}-minute target "
                 f"({total / 60:.1f} min)")
    if wall_s is not None:
        lines.append(f"{'wall':<11} {wall_s:9.1f}          the whole `domain-embed run`, start-up included")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=None, help="documents to run on (default: the sample corpus)")
    ap.add_argument("--run-dir", type=Path, default=None, help="run directory (default: a new temporary one)")
    ap.add_argument("--target-min", type=float, default=15.0, help="the target, in minutes")
    ap.add_argument("--reuse", action="store_true", help="only read the manifests of --run-dir")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides for the run")
    a = ap.parse_args(argv)

    run_dir = (a.run_dir or Path(tempfile.mkdtemp(prefix="pipeline-bench-")) / "run").resolve()
    wall = None
    if not a.reuse:
        overrides = list(a.overrides)
        if a.corpus is not None:
            overrides.append(f"corpus.path={a.corpus.resolve()}")
        cli = Path(sys.executable).parent / "domain-embed"
        cmd = [str(cli) if cli.exists() else sys.executable, *([] if cli.exists() else ["-m", "domain_embed.cli"]),
               "run", "--run-dir", str(run_dir), "--force", *overrides]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"domain-embed run exited with {rc}; the stages that finished:", file=sys.stderr)
            print(table(stage_times(run_dir), a.target_min * 60, wall))
            return rc
    rows = stage_times(run_dir)
    print(f"\npipeline on {a.corpus or 'the sample corpus'} ({run_dir}), {os.cpu_count()} CPUs")
    print(table(rows, a.target_min * 60, wall))
    if a.json:
        a.json.write_text(json.dumps({"run_dir": str(run_dir), "wall_s": wall, "target_s": a.target_min * 60,
                                      "stages": {n: s for n, s, _ in rows}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

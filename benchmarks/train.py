"""Training throughput and peak memory: domain-embed's Lightning trainer vs sentence-transformers'
SentenceTransformerTrainer with MultipleNegativesRankingLoss -- same data, batch, hardware, one run.

Both train on the *same* (query, positive, hard negatives) tuples from mine/train.jsonl, with the
same prefixes, max length, batch size, learning-rate schedule, temperature (MNRL scale = 1/T) and a
no-duplicates batch sampler. Each side runs in its own process so peak memory is its own. The first
step (warm-up, allocator growth) is not timed.

    python benchmarks/train.py --run-dir runs/demo [--steps 12 --batch-size 16 --negatives 2] [overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _setup(a):
    from domain_embed.config import EncodingSpec, load_config
    from domain_embed.rundir import read_jsonl
    from domain_embed.train.batching import BatchPlan, load_examples

    cfg = load_config(None, [*a.overrides, f"train.batch_size={a.batch_size}", f"train.num_negatives={a.negatives}",
                             f"train.max_steps={a.steps}"], save=False)
    spec = EncodingSpec.from_config(cfg)
    corpus = list(read_jsonl(a.run_dir / "split" / "train_corpus.jsonl"))
    texts = [c["text"] for c in corpus]
    examples, _ = load_examples(list(read_jsonl(a.run_dir / "mine" / "train.jsonl")), [c["id"] for c in corpus])
    plan = BatchPlan(examples, len(texts), a.batch_size, a.negatives, int(cfg.seed))
    return cfg, spec, texts, plan


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(a) -> dict:
    import lightning as L
    import torch
    from transformers import AutoTokenizer

    from domain_embed.train.batching import PlannedBatches, make_collate
    from domain_embed.train.bi_encoder import BiEncoder
    from domain_embed.train.worker import resolve_precision

    cfg, spec, texts, plan = _setup(a)
    L.seed_everything(int(cfg.seed), verbose=False)
    tok = AutoTokenizer.from_pretrained(spec.model_path)
    module = BiEncoder(spec, cfg.train, tok, a.steps)
    ds = PlannedBatches(plan, texts, make_collate(tok, spec), 0, 1, a.steps, lambda: 0)
    marks: dict[str, float] = {}

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 1:
                marks["t0"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            marks["t1"] = time.perf_counter()

    trainer = L.Trainer(max_steps=a.steps, max_epochs=-1, precision=resolve_precision("auto"), logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[Timer()], devices=1, gradient_clip_val=1.0)
    trainer.fit(module, torch.utils.data.DataLoader(ds, batch_size=None))
    dt = marks["t1"] - marks["t0"]
    return {"samples_per_s": (a.steps - 1) * a.batch_size / dt, "peak_mem_mb": _peak_mb(), "seconds": dt}


def run_st(a) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers
    from transformers import TrainerCallback

    cfg, spec, texts, plan = _setup(a)
    tc = cfg.train
    cols: dict[str, list[str]] = {"anchor": [], "positive": [], **{f"negative_{i + 1}": [] for i in range(a.negatives)}}
    while len(cols["anchor"]) < a.steps * a.batch_size * 2:  # enough rows for every step, same tuples as ours
        for batch in plan.epoch(len(cols["anchor"]) // max(1, len(plan.examples))):
            for it in batch:
                cols["anchor"].append(spec.query_prefix + plan.examples[it.example].query)
                cols["positive"].append(spec.passage_prefix + texts[it.positive])
                for i, n in enumerate(it.negatives):
                    cols[f"negative_{i + 1}"].append(spec.passage_prefix + texts[n])
    model = SentenceTransformer(spec.model_path, device="cuda" if torch.cuda.is_available() else "cpu")
    model.max_seq_length = spec.max_passage_length
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / float(tc.temperature))
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 1 and "t0" not in marks:
                marks["t0"] = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            marks["t1"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
            learning_rate=float(tc.learning_rate), warmup_ratio=float(tc.warmup_ratio), lr_scheduler_type="cosine",
            weight_decay=float(tc.weight_decay), max_grad_norm=1.0, batch_sampler=BatchSamplers.NO_DUPLICATES,
            report_to="none", save_strategy="no", logging_steps=10**6, dataloader_num_workers=0,
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), seed=int(cfg.seed),
            disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(cols), loss=loss,
                                             callbacks=[Timer()])
        trainer.train()
    dt = marks["t1"] - marks["t0"]
    return {"samples_per_s": (a.steps - 1) * a.batch_size / dt, "peak_mem_mb": _peak_mb(), "seconds": dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run with split/ and mine/ written")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=2)
    ap.add_argument("--which", choices=["ours", "st"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_passage_length=128")
    a = ap.parse_args()
    if a.which:
        res = (run_ours if a.which == "ours" else run_st)(a)
        print("RESULT " + json.dumps(res))
        return 0
    results = {}
    for which in ("ours", "st"):
        cmd = [sys.executable, __file__, "--which", which, "--run-dir", str(a.run_dir), "--steps", str(a.steps),
               "--batch-size", str(a.batch_size), "--negatives", str(a.negatives), *a.overrides]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        results[which] = json.loads(line[-1][7:])
    o, s = results["ours"], results["st"]
    print(f"\n{a.steps} steps (first untimed), batch {a.batch_size} queries x (1 + {a.negatives}) passages, "
          f"overrides {a.overrides or 'none'}")
    print(f"{'trainer':<40}{'samples/s':>11}{'peak MB':>10}")
    print(f"{'domain-embed (Lightning, InfoNCE)':<40}{o['samples_per_s']:>11.2f}{o['peak_mem_mb']:>10.0f}")
    print(f"{'SentenceTransformerTrainer + MNRL':<40}{s['samples_per_s']:>11.2f}{s['peak_mem_mb']:>10.0f}")
    print(f"{'ratio (ours / ST)':<40}{o['samples_per_s'] / s['samples_per_s']:>10.2f}x"
          f"{o['peak_mem_mb'] / s['peak_mem_mb']:>9.2f}x")
    print("(peak MB: CUDA max allocated on GPU, process max RSS on CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

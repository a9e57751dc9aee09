"""Where a training step goes on this machine: collation (planning + tokenising), forward, backward,
optimizer -- for the configured step and for cheaper variants, measured in one run, interleaved.

    python benchmarks/train_step.py --run-dir runs/demo [--steps 3] [overrides]

Each variant runs ``--steps`` micro-batches (the first is a warm-up and not counted) of the run's
own mine/train.jsonl through the real BiEncoder. The weights are restored between variants. Speed
only: whether a variant costs quality is a question for validation nDCG@10 (see
configs/train/default.yaml), never for this table.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = [  # (name, batch_size, num_negatives, train passage length or None = the spec's, fixed padding)
    ("pad to max length (no dynamic padding)", None, None, None, True),
    ("configured (dynamic padding)", None, None, None, False),
    ("passages cut to 128 tokens", None, None, 128, False),
    ("4 negatives", None, 4, None, False),
    ("4 negatives, passages 128", None, 4, 128, False),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run directory with mine/ and split/ done")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from domain_embed.config import EncodingSpec, load_config
    from domain_embed.rundir import read_jsonl
    from domain_embed.train.batching import BatchPlan, PlannedBatches, load_examples, make_collate
    from domain_embed.train.bi_encoder import BiEncoder
    from domain_embed.train.progress import probe_step

    cfg = load_config(None, a.overrides, save=False)
    spec = EncodingSpec.from_config(cfg)
    tc = cfg.train
    corpus = list(read_jsonl(a.run_dir / "split" / "train_corpus.jsonl"))
    texts = [c["text"] for c in corpus]
    examples, _ = load_examples(list(read_jsonl(a.run_dir / "mine" / "train.jsonl")), [c["id"] for c in corpus])
    tok = AutoTokenizer.from_pretrained(spec.model_path)
    module = BiEncoder(spec, tc, tok, 10)
    state = copy.deepcopy(module.state_dict())
    params = [p for p in module.parameters() if p.requires_grad]
    opts = {"AdamW (loop, before)": torch.optim.AdamW(params, lr=float(tc.learning_rate)),
            "AdamW fused (configured)": torch.optim.AdamW(params, lr=float(tc.learning_rate), fused=True)}
    print(f"torch threads {torch.get_num_threads()}, {len(examples)} training queries, "
          f"spec passage length {spec.max_passage_length}, {a.steps - 1} timed micro-batches per variant",
          file=sys.stderr)

    rows = []
    for name, bs, k, plen, fixed in VARIANTS:
        bs = int(bs or tc.batch_size)
        k = int(tc.num_negatives if k is None else k)
        plan = BatchPlan(examples, len(texts), bs, k, int(cfg.seed))
        collate = make_collate(tok, spec, plen)
        if fixed:
            def collate(q, p, _spec=spec, _len=plen or spec.max_passage_length):
                qt = tok([_spec.query_prefix + t for t in q], max_length=_spec.max_query_length, truncation=True,
                         padding="max_length", return_tensors="pt")
                pt = tok([_spec.passage_prefix + t for t in p], max_length=_len, truncation=True,
                         padding="max_length", return_tensors="pt")
                return {"q_input_ids": qt["input_ids"], "q_attention_mask": qt["attention_mask"],
                        "p_input_ids": pt["input_ids"], "p_attention_mask": pt["attention_mask"]}
        batches = iter(PlannedBatches(plan, texts, collate, 0, 1, a.steps, lambda: 0))
        timings = [probe_step(module, [next(batches)], n=1) for _ in range(a.steps)][1:]
        med = lambda xs: statistics.median(xs)  # noqa: E731
        rows.append((name, bs, k, plen or spec.max_passage_length, med([t.collate_s for t in timings]),
                     med([t.forward_s for t in timings]), med([t.backward_s for t in timings]),
                     med([t.tokens for t in timings])))
        print(f"  measured: {name}", file=sys.stderr, flush=True)

    # The optimizer step costs the same in every variant (same parameters): measure it once per kind.
    module.contrastive_loss(next(iter(PlannedBatches(plan, texts, collate, 0, 1, 1, lambda: 0)))).backward()
    opt_time = {}
    for kind, opt in opts.items():
        ts = []
        for _ in range(4):
            t0 = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t0)
        opt_time[kind] = statistics.median(ts[1:])
    module.zero_grad(set_to_none=True)
    module.load_state_dict(state)
    o = opt_time["AdamW fused (configured)"]
    print("\noptimizer step: " + ", ".join(f"{k} {v:.2f} s" for k, v in opt_time.items()))

    base = rows[1][4] + rows[1][5] + rows[1][6] + o
    print(f"\n{'variant':<40} {'B':>3} {'neg':>3} {'plen':>4} {'collate':>8} {'forward':>8} {'backward':>8} "
          f"{'optim':>6} {'step s':>7} {'vs cfg':>7} {'tokens':>7}")
    for name, bs, k, plen, c, f, b, ntok in rows:
        step = c + f + b + o
        print(f"{name:<40} {bs:>3} {k:>3} {plen:>4} {c:8.2f} {f:8.2f} {b:8.2f} {o:6.2f} {step:7.2f} "
              f"{step / base:6.2f}x {int(ntok):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Mining time: domain-embed's mine stage vs sentence_transformers.util.mine_hard_negatives.

Same data (a run directory's split/train_qa.jsonl and split/train_corpus.jsonl), same model, same
prefixes and max length, same window (top_k), same relative margin (0.95 <-> relative_margin=0.05),
same number of negatives, exact FAISS search on both sides. Ours is timed cold (empty embedding
cache) and warm (cache reused, as on a rerun with another margin).

    python benchmarks/mine.py --run-dir runs/demo [--top-k 30 --negatives 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, required=True, help="a run with split/ written")
    ap.add_argument("--top-k", type=int, default=30)
    ap.add_argument("--negatives", type=int, default=5)
    ap.add_argument("--margin", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_passage_length=128")
    a = ap.parse_args()

    from domain_embed.config import load_config
    from domain_embed.rundir import StageContext, read_jsonl
    from domain_embed.stages import STAGES

    over = [*a.overrides, f"mine.top_k={a.top_k}", f"mine.num_negatives={a.negatives}", f"mine.margin={a.margin}",
            f"mine.batch_size={a.batch_size}", "mine.index=flat"]
    cfg = load_config(None, over, save=False)
    spec = StageContext(STAGES["mine"], a.run_dir, cfg).spec()

    # ---- ours, in a scratch copy of the run so its cache starts empty
    tmp = Path(tempfile.mkdtemp(prefix="bench-mine-"))
    try:
        (tmp / "split").mkdir()
        for f in ("train_qa.jsonl", "train_corpus.jsonl"):
            shutil.copy(a.run_dir / "split" / f, tmp / "split" / f)
        from domain_embed.mine import stage as mine_stage

        ctx = StageContext(STAGES["mine"], tmp, cfg, quiet=True)
        t = time.perf_counter()
        ours = mine_stage.run(ctx)
        ours_cold = time.perf_counter() - t
        t = time.perf_counter()
        mine_stage.run(ctx)
        ours_warm = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- sentence-transformers
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    corpus = {r["id"]: r["text"] for r in read_jsonl(a.run_dir / "split" / "train_corpus.jsonl")}
    anchors, positives = [], []
    for q in read_jsonl(a.run_dir / "split" / "train_qa.jsonl"):
        for s in q.get("segment_ids", []):
            if s in corpus:
                anchors.append(q["question"])
                positives.append(corpus[s])
                break
    t = time.perf_counter()
    model = SentenceTransformer(spec.model_path, device="cpu" if not _cuda() else "cuda")
    model.max_seq_length = spec.max_passage_length
    ds = Dataset.from_dict({"anchor": anchors, "positive": positives})
    out = mine_hard_negatives(ds, model, corpus=list(corpus.values()), range_max=a.top_k,
                              relative_margin=1 - a.margin, num_negatives=a.negatives, sampling_strategy="top",
                              query_prompt=spec.query_prefix, corpus_prompt=spec.passage_prefix,
                              batch_size=a.batch_size, use_faiss=True, output_format="n-tuple", verbose=False)
    st_time = time.perf_counter() - t

    rows = [
        ("domain-embed mine (cold cache)", ours_cold, ours["queries"], ours["negatives_per_query_mean"]),
        ("domain-embed mine (warm cache)", ours_warm, ours["queries"], ours["negatives_per_query_mean"]),
        ("st.util.mine_hard_negatives", st_time, len(out), float(a.negatives) if len(out) else 0.0),
    ]
    print(f"\n{len(anchors)} queries, {len(corpus)} passages, top_k={a.top_k}, negatives={a.negatives}, "
          f"margin={a.margin}, max_len={spec.max_query_length}/{spec.max_passage_length}")
    print(f"{'method':<34}{'seconds':>10}{'rows out':>10}{'negs/query':>12}{'vs ST':>8}")
    for name, sec, n, negs in rows:
        print(f"{name:<34}{sec:>10.2f}{n:>10}{negs:>12.2f}{st_time / sec:>7.2f}x")
    print("(ST's n-tuple output drops queries that got fewer than `negatives`; ours keeps them and reports it: "
          f"{ours['queries_short_of_negatives']} short)")
    print(json.dumps({"ours_cold_s": ours_cold, "ours_warm_s": ours_warm, "st_s": st_time}))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())

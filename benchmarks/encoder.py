"""Encoder throughput: torch ``Encoder`` vs ONNX Runtime fp32 vs ONNX Runtime int8, on the same texts.

Passage encoding at the run's spec (max_passage_length, prefixes) of ``--n`` chunks: by default
5-sentence chunks cut from data/sample (the demo corpus), or a run's curate/chunks.jsonl with
``--chunks``. Each backend encodes the same texts in the same order and batch size, after one
warm-up batch; parity is cosine per text against torch. The ONNX graphs come from the same cache the
pipeline uses (built once per model, keyed by its content), and the build time is not counted.

    python benchmarks/encoder.py [--n 512] [--batch-size 64] [--chunks runs/x/curate/chunks.jsonl] [overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def sample_chunks(n: int, per_chunk: int = 5) -> list[str]:
    """``per_chunk``-sentence chunks from data/sample, in file order (no Curator needed)."""
    from domain_embed.curate.chunking import sections, split_sentences
    from domain_embed.curate.readers import SUPPORTED, read_corpus

    root = REPO / "data" / "sample"
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in SUPPORTED and p.name != "README.md")
    out: list[str] = []
    for doc in read_corpus(root, files).docs:
        for _, units in sections(doc.text):
            sents = [s for u in units for s in (split_sentences(u.text) if u.kind == "prose" else [u.text])]
            for s in range(0, len(sents), per_chunk):
                out.append(" ".join(sents[s : s + per_chunk]))
                if len(out) >= n:
                    return out
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="texts to encode")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunks", type=Path, help="a curate/chunks.jsonl to take texts from instead of data/sample")
    ap.add_argument("--input-type", default="passage", choices=["passage", "query"])
    ap.add_argument("--rounds", type=int, default=1,
                    help="interleaved rounds; each backend's best is reported (a shared machine is noisy)")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. model.max_passage_length=128")
    a = ap.parse_args()

    import numpy as np
    import torch

    from domain_embed.config import EncodingSpec, load_config
    from domain_embed.encoding import Encoder
    from domain_embed.inference import OnnxEncoder, build_graph, build_int8, cosine_rows, onnx_cache_root

    cfg = load_config(None, a.overrides, save=False)
    spec = EncodingSpec.from_config(cfg)
    if a.chunks:
        texts = [json.loads(line)["text"] for line in open(a.chunks, encoding="utf-8") if line.strip()][: a.n]
        source = str(a.chunks)
    else:
        texts = sample_chunks(a.n)
        source = "data/sample (5-sentence chunks)"
    t = time.perf_counter()
    fp32_path, build = build_graph(spec.model_path, spec, onnx_cache_root(cfg.model), log=lambda m: print(m, file=sys.stderr))
    int8_path = build_int8(fp32_path, log=lambda m: print(m, file=sys.stderr))
    prep = time.perf_counter() - t

    encoders = [("torch Encoder (fp32)", Encoder(spec, device="cpu", batch_size=a.batch_size)),
                ("ONNX Runtime fp32", OnnxEncoder(spec, fp32_path, batch_size=a.batch_size)),
                ("ONNX Runtime int8", OnnxEncoder(spec, int8_path, precision="int8", batch_size=a.batch_size))]
    for _, enc in encoders:
        enc.encode(texts[: a.batch_size], a.input_type)  # warm-up: first-run allocations, thread pools
    best = [float("inf")] * len(encoders)
    vecs: list = [None] * len(encoders)
    for _ in range(max(1, a.rounds)):  # interleaved, so load from other jobs hits every backend alike
        for i, (_, enc) in enumerate(encoders):
            t = time.perf_counter()
            vecs[i] = enc.encode(texts, a.input_type)
            best[i] = min(best[i], time.perf_counter() - t)
    rows = []
    for (name, _), secs, vec in zip(encoders, best, vecs):
        cos = cosine_rows(vecs[0], vec)
        rows.append((name, len(texts) / secs, secs, float(cos.min()), float(cos.mean())))

    tok = encoders[0][1].tokenizer
    ntok = [len(tok(spec.prefix(a.input_type) + x, truncation=True, max_length=spec.max_length(a.input_type))["input_ids"])
            for x in texts]
    print(f"\n{len(texts)} {a.input_type}s from {source}; max length {spec.max_length(a.input_type)}, "
          f"mean {np.mean(ntok):.0f} tokens; batch {a.batch_size}; best of {max(1, a.rounds)} round(s); torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs; graph build+quantise {prep:.1f}s (cached after the first run)\n")
    print("| encoder | passages/s | seconds | vs torch | min cosine vs torch | mean cosine vs torch |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows[0][1]
    for name, rate, secs, cmin, cmean in rows:
        print(f"| {name} | {rate:.1f} | {secs:.2f} | {rate / base:.2f}x | {cmin:.6f} | {cmean:.6f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

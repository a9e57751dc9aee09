"""PyTorch -> ONNX with pooling and L2 normalisation inside the graph, and the parity check.

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, seq]) and returns
``embeddings`` (float32, [batch, dim]), already pooled and unit-norm as the shared
:class:`~domain_embed.config.EncodingSpec` says. Serving never pools or normalises itself, so the
ONNX file alone reproduces the PyTorch :class:`~domain_embed.encoding.Encoder`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import EncodingSpec
# The graph itself lives on the lower floor (inference encoding uses it too); re-exported here.
from ..onnx_graph import BUILTIN_SENTENCES, PooledEncoder, export_onnx, ort_session, parity_texts  # noqa: F401


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, fp32 inputs/outputs kept so clients need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    # Written beside dst and renamed into place (as export_onnx does): a kill leaves no torn graph,
    # only a temporary file that the next run removes (rundir.remove_stale_temps).
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        onnx.save(half, str(tmp))
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def check_parity(onnx_path: Path, model_path: str | Path, spec: EncodingSpec, texts: Sequence[str],
                 source: str, providers: Sequence[str] | None = None, batch_size: int = 8) -> dict:
    """Compare ONNX Runtime with the PyTorch Encoder, queries and passages, padded batches included."""
    from ..encoding import Encoder

    enc = Encoder(spec, model_path, device="cpu", batch_size=batch_size)
    sess = ort_session(onnx_path, providers=providers)
    worst_abs, worst_cos, n = 0.0, 1.0, 0
    t0 = time.time()
    for input_type in ("query", "passage"):
        ref = enc.encode(texts, input_type)
        got = np.zeros_like(ref)
        for s in range(0, len(texts), batch_size):
            batch = enc.tokenize(texts[s : s + batch_size], input_type)
            got[s : s + batch_size] = sess.run(["embeddings"], {
                "input_ids": batch["input_ids"].numpy().astype(np.int64),
                "attention_mask": batch["attention_mask"].numpy().astype(np.int64)})[0]
        worst_abs = max(worst_abs, float(np.abs(ref - got).max()))
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
        n += len(texts)
    return {"onnx": onnx_path.name, "texts": n, "source": source, "max_abs_diff": worst_abs,
            "min_cosine": worst_cos, "providers": list(sess.get_providers()), "seconds": round(time.time() - t0, 2)}

"""PyTorch -> ONNX with pooling and L2 normalisation inside the graph, and the parity check.

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, seq]) and returns
``embeddings`` (float32, [batch, dim]), already pooled and unit-norm as the shared
:class:`~domain_embed.config.EncodingSpec` says. Serving never pools or normalises itself, so the
ONNX file alone reproduces the PyTorch :class:`~domain_embed.encoding.Encoder`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..config import EncodingSpec
from ..errors import UserError

# Used when the run has no curate/chunks.jsonl: short and long, prose and code-like text.
BUILTIN_SENTENCES = [
    "How do I create an index concurrently without locking writes?",
    "VACUUM reclaims storage occupied by dead tuples.",
    "SELECT * FROM pg_stat_activity WHERE state = 'active';",
    "The quick brown fox jumps over the lazy dog.",
    "Ein Satz auf Deutsch, damit nicht alles Englisch ist.",
    "a",
    " ".join(["Write-ahead logging ensures durability by logging changes before they are applied."] * 30),
]


class PooledEncoder:
    """Factory for the torch module that is exported (kept lazy so importing this file needs no torch)."""

    @staticmethod
    def build(model_path: str | Path, spec: EncodingSpec):
        import torch
        from transformers import AutoModel

        from ..encoding import pool

        base = AutoModel.from_pretrained(str(model_path), attn_implementation="eager").eval()
        uses_token_types = "token_type_ids" in base.forward.__code__.co_varnames

        class Wrapper(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base = base

            def forward(self, input_ids, attention_mask):
                kw = {"input_ids": input_ids, "attention_mask": attention_mask}
                if uses_token_types:
                    # single-segment input: all zeros, as the tokenizer would give
                    kw["token_type_ids"] = torch.zeros_like(input_ids)
                hidden = self.base(**kw).last_hidden_state
                return pool(hidden, attention_mask, spec.pooling, spec.normalize)

        return Wrapper().eval()


def export_onnx(model_path: str | Path, spec: EncodingSpec, out: Path, opset: int = 17, log=print) -> str:
    """Export to ``out``; returns the exporter used. TorchScript first (simple, reliable for BERT)."""
    import torch
    from transformers import AutoTokenizer

    module = PooledEncoder.build(model_path, spec)
    tok = AutoTokenizer.from_pretrained(str(model_path))
    sample = tok(["query: a sample input", "passage: a longer sample input for the exporter to trace"],
                 padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embeddings": {0: "batch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    errors = []
    for dynamo in (False, True):
        try:
            with torch.inference_mode(False), torch.no_grad():
                kw = dict(input_names=["input_ids", "attention_mask"], output_names=["embeddings"],
                          opset_version=opset, dynamo=dynamo)
                if dynamo:
                    kw["dynamic_shapes"] = {"input_ids": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},
                                            "attention_mask": {0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")}}
                    kw["external_data"] = False
                else:
                    kw["dynamic_axes"] = axes
                    kw["do_constant_folding"] = True
                torch.onnx.export(module, args, str(tmp), **kw)
            import onnx

            # The exporter leaves the vector width symbolic; pin it so Triton and clients see [batch, dim].
            model = onnx.load(str(tmp))
            dims = model.graph.output[0].type.tensor_type.shape.dim
            dims[0].dim_param = "batch"
            dims[1].Clear()
            dims[1].dim_value = spec.dim
            onnx.save(model, str(tmp))
            onnx.checker.check_model(str(tmp), full_check=True)
            tmp.replace(out)
            return "dynamo" if dynamo else "torchscript"
        except Exception as exc:  # try the other exporter, report both if neither works
            errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {str(exc)[:300]}")
            log(f"ONNX export with dynamo={dynamo} failed ({errors[-1]}); trying the other exporter")
            tmp.unlink(missing_ok=True)
    raise UserError("ONNX export failed with both exporters: " + " | ".join(errors)
                    + "; check that train/model loads with transformers.AutoModel")


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and activations, fp32 inputs/outputs kept so clients need not change."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(dst))


def parity_texts(chunks_path: Path | None, n: int = 32) -> tuple[list[str], str]:
    """Real chunks when the run has them (longest and shortest included), else built-in sentences."""
    if chunks_path is not None and chunks_path.is_file():
        texts = []
        with open(chunks_path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    try:
                        texts.append(str(json.loads(line)["text"]))
                    except (json.JSONDecodeError, KeyError):
                        continue
        if texts:
            by_len = sorted(texts, key=len)
            step = max(1, len(by_len) // n)
            picked = by_len[::step][: n - 1] + [by_len[-1]]
            return picked, str(chunks_path)
    return list(BUILTIN_SENTENCES), "builtin"


def ort_session(path: Path, threads: int = 0, providers: Sequence[str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=list(providers or ["CPUExecutionProvider"]))


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

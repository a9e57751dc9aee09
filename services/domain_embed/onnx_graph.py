"""The inference graph: a Hugging Face encoder with pooling and L2 normalisation inside, as ONNX.

Export (``export/``) ships this graph to Triton; inference-only encoding on CPU
(:mod:`domain_embed.inference`: synthesis's round trip, mining, evaluation) runs the very same graph
in ONNX Runtime, optionally int8-quantised. It lives on the lower floor so that no stage package
imports another.

The graph takes ``input_ids`` and ``attention_mask`` (int64, [batch, seq]) and returns
``embeddings`` (float32, [batch, dim]), already pooled and unit-norm as the shared
:class:`~domain_embed.config.EncodingSpec` says.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

from .config import EncodingSpec
from .errors import UserError

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

        from .encoding import pool

        base = AutoModel.from_pretrained(str(model_path), attn_implementation="eager",
                                         trust_remote_code=spec.trust_remote_code).eval()
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
    tok = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=spec.trust_remote_code)
    sample = tok(["query: a sample input", "passage: a longer sample input for the exporter to trace"],
                 padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"])
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embeddings": {0: "batch"}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # two processes never write one temporary file
    errors = []
    try:  # a stop (SIGTERM, Ctrl-C) is no Exception: the model-sized temporary file must go then too
        for dynamo in (False, True):
            try:
                with torch.inference_mode(False), torch.no_grad(), quiet_tools():  # parity is checked after
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
    finally:
        tmp.unlink(missing_ok=True)
    raise UserError("ONNX export failed with both exporters: " + " | ".join(errors)
                    + "; check that train/model loads with transformers.AutoModel")


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


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """The exporter's tracer warnings ("might cause the trace to be incorrect", "will produce incorrect results"
    for negative indices) and the quantiser's root-logger advice say nothing a user can act on: every graph is
    checked against the PyTorch model right after it is made, and a mismatch is the error."""
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def ort_session(path: Path, threads: int = 0, providers: Sequence[str] | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=list(providers or ["CPUExecutionProvider"]))



# Names the quantisation below; the cached int8 graph and its parity figures carry it, so a change of
# recipe (u8: unsigned weights, from signed) rebuilds them instead of reusing a graph made the old way.
INT8_RECIPE = "u8"


def quantize_int8(src: Path, dst: Path) -> dict:
    """Dynamic int8 quantisation of the weight MatMuls (activations quantised at run time).

    The down-projections (weights wider in than out: BERT's FFN output, a Llama MLP's down_proj)
    stay fp32: their input is the activation function's output, whose outliers per-tensor dynamic
    quantisation handles badly. On 128 sample chunks with all-MiniLM-L6-v2 (2 shared cores, best
    of 3): quantising every weight MatMul gave min/mean cosine 0.986/0.994 against fp32 at 1.7x
    fp32's speed; keeping the 6 down-projections in fp32 gave 0.994/0.997 at 1.4x (per-tensor
    weights: 0.888/0.952). Quality first: the 0.99 parity threshold rejects the former. Attention's
    activation-by-activation MatMuls are never quantised. Weights are unsigned (U8U8): on an x86 CPU
    without VNNI (AVX2 only) the U8S8 kernel's pairwise 16-bit sums saturate, and signed weights fell
    to min/mean cosine 0.987/0.993 on the tests' 24 texts against 0.995/0.997 unsigned, at the same
    speed (1.04x fp32 there, 32 x 128 tokens). Returns what was quantised.
    Written to a temporary name and renamed, so a crash never leaves a torn model behind.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    weight_mm = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in shapes]
    keep_fp32 = [n.name for n in weight_mm if len(shapes[n.input[1]]) == 2 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]
    del model
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QUInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=keep_fp32)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return {"quantised_matmuls": len(weight_mm) - len(keep_fp32), "fp32_down_projections": len(keep_fp32)}

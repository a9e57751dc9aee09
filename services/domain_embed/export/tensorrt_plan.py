"""TensorRT fp16 plan from the ONNX file, GPU only, with profiles from export.trt_profiles and the spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import EncodingSpec
from ..schema import TrtProfilesConfig, as_section


def gpu_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401

        return True
    except Exception:
        return False


def profile_shapes(spec: EncodingSpec, profiles: TrtProfilesConfig) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(min, opt, max) for batch and sequence; the max sequence never exceeds the spec's longest input."""
    profiles = as_section(profiles, TrtProfilesConfig)
    b, s = profiles.batch, profiles.seq
    longest = max(spec.max_query_length, spec.max_passage_length)
    s_max = max(longest, s[2])
    return (b[0], b[1], b[2]), (min(s[0], longest), min(s[1], s_max), s_max)


def build_plan(onnx_path: Path, plan_path: Path, spec: EncodingSpec, profiles: TrtProfilesConfig, log=print) -> dict[str, Any]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    (b0, b1, b2), (s0, s1, s2) = profile_shapes(spec, profiles)
    prof = builder.create_optimization_profile()
    for name in ("input_ids", "attention_mask"):
        prof.set_shape(name, (b0, s0), (b1, s1), (b2, s2))
    config.add_optimization_profile(prof)
    log(f"building TensorRT fp16 plan: batch {b0}/{b1}/{b2}, seq {s0}/{s1}/{s2}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the plan; see its log above")
    from ..rundir import atomic_write_bytes

    atomic_write_bytes(plan_path, bytes(serialized))
    return {"batch": [b0, b1, b2], "seq": [s0, s1, s2], "tensorrt": trt.__version__}


def plan_parity(plan_path: Path, ref_onnx: Path, spec: EncodingSpec, texts: list[str], model_path: Path) -> dict[str, Any]:
    """Max abs diff and min cosine of the plan against the PyTorch Encoder (GPU only)."""
    import numpy as np
    import tensorrt as trt
    import torch

    from ..encoding import Encoder

    enc = Encoder(spec, model_path, device="cuda")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    ctx = engine.create_execution_context()
    worst_abs, worst_cos = 0.0, 1.0
    for kind in ("query", "passage"):
        ref = enc.encode(texts, kind)
        batch = enc.tokenize(texts, kind)
        ids = batch["input_ids"].to("cuda", torch.int64).contiguous()
        mask = batch["attention_mask"].to("cuda", torch.int64).contiguous()
        out = torch.empty((ids.shape[0], spec.dim), device="cuda", dtype=torch.float32)
        ctx.set_input_shape("input_ids", tuple(ids.shape))
        ctx.set_input_shape("attention_mask", tuple(mask.shape))
        ctx.set_tensor_address("input_ids", ids.data_ptr())
        ctx.set_tensor_address("attention_mask", mask.data_ptr())
        ctx.set_tensor_address("embeddings", out.data_ptr())
        ctx.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        got = out.cpu().numpy()
        worst_abs = max(worst_abs, float(np.abs(ref - got).max()))
        cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
    return {"plan": plan_path.name, "max_abs_diff": worst_abs, "min_cosine": worst_cos}

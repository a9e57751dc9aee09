"""The export stage: gate check, ONNX export, parity, fp16 / TensorRT on GPU, Triton repository."""

from __future__ import annotations

import json
from typing import Any

from ..errors import UserError
from ..rundir import StageContext, atomic_write_json
from ..schema import Toggle, toggle
from . import onnx_export, tensorrt_plan
from .triton_repo import build_repository, choose_layout


def _check_gate(ctx: StageContext) -> dict[str, Any]:
    path = ctx.path("evaluate/report.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); rerun `domain-embed evaluate --run-dir {ctx.run_dir} --force`")
    gate = report.get("gate") or {}
    if gate.get("passed") is not True:
        raise UserError(
            f"the quality gate in {path} did not pass ({ {k: v for k, v in gate.items() if k != 'passed'} }), so "
            f"the tuned model is not exported; improve training, or loosen evaluate.gate.tolerance knowingly and "
            f"rerun `domain-embed evaluate`")
    return gate


def run(ctx: StageContext) -> dict[str, Any]:
    ecfg = ctx.conf.export
    _check_gate(ctx)
    model_dir = ctx.path("train/model")
    spec = ctx.trained_spec("train/model")  # what training used; a drifted config is refused
    out = ctx.dir
    onnx_path = out / "model.onnx"
    # Optional artefacts of an earlier export belong to its model: this run writes them again or not at all.
    for name in ("model.fp16.onnx", "model.plan"):
        (out / name).unlink(missing_ok=True)
    opset = ecfg.opset
    if opset < 17:
        raise UserError(f"export.opset={opset}; opset 17 or newer is needed (LayerNormalization)")
    exporter = onnx_export.export_onnx(model_dir, spec, onnx_path, opset=opset, log=ctx.log)
    ctx.log(f"exported {onnx_path} with the {exporter} exporter (opset {opset})")

    texts, source = onnx_export.parity_texts(ctx.path("curate/chunks.jsonl"))
    parity = {"tolerance": ecfg.parity_tolerance,
              "onnx": onnx_export.check_parity(onnx_path, model_dir, spec, texts, source)}
    counts: dict[str, Any] = {"exporter": exporter, "opset": opset, "parity_texts": parity["onnx"]["texts"],
                              "parity_max_abs_diff": parity["onnx"]["max_abs_diff"],
                              "parity_min_cosine": parity["onnx"]["min_cosine"]}
    tol = ecfg.parity_tolerance

    def fail_if_off(p: dict[str, Any], what: str, tol: float) -> None:
        if p["max_abs_diff"] > tol or p["min_cosine"] < 1.0 - tol:
            atomic_write_json(out / "parity.json", {**parity, "passed": False})
            raise UserError(f"{what} does not match the PyTorch model: max abs diff {p['max_abs_diff']:.2e}, min "
                            f"cosine {p['min_cosine']:.6f} (tolerance {tol:g}); see {out / 'parity.json'}. Check the "
                            f"model's pooling ({spec.pooling}) and export.opset, or raise export.parity_tolerance")

    fail_if_off(parity["onnx"], "the ONNX model", tol)

    gpu = tensorrt_plan.gpu_available()
    plan_path = None
    if ecfg.fp16 or gpu:
        fp16 = out / "model.fp16.onnx"
        try:
            onnx_export.convert_fp16(onnx_path, fp16)
            counts["fp16_onnx"] = True
            if gpu:
                p16 = onnx_export.check_parity(fp16, model_dir, spec, texts, source,
                                               providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                parity["onnx_fp16"] = p16
        except Exception as exc:  # optional artefact: say why it is missing, keep the fp32 model
            ctx.log(f"fp16 ONNX conversion failed ({type(exc).__name__}: {exc}); fp32 ONNX serves")
            counts["fp16_onnx"] = False
    want_trt = toggle(ecfg.tensorrt)
    if want_trt in (Toggle.true, Toggle.auto) and gpu and tensorrt_plan.tensorrt_available():
        plan_path = out / "model.plan"
        counts["tensorrt_profile"] = tensorrt_plan.build_plan(onnx_path, plan_path, spec, ecfg.trt_profiles, log=ctx.log)
        parity["tensorrt_fp16"] = tensorrt_plan.plan_parity(plan_path, onnx_path, spec, texts, model_dir)
        fail_if_off(parity["tensorrt_fp16"], "the TensorRT fp16 plan", max(tol, 2e-2))  # fp16 needs looser
        counts["tensorrt"] = "built"
    else:
        why = "no GPU" if not gpu else "tensorrt not installed" if want_trt != Toggle.false else "export.tensorrt=false"
        if want_trt == Toggle.true and not (gpu and tensorrt_plan.tensorrt_available()):
            raise UserError(f"export.tensorrt=true but {why}; use export.tensorrt=auto to fall back to ONNX")
        ctx.log(f"{why}: TensorRT skipped, ONNX serves")
        counts["tensorrt"] = f"skipped ({why})"
    atomic_write_json(out / "parity.json", {**parity, "passed": True})

    # the layout follows what the target tritonserver can load, not whether torch sees a GPU
    layout, use_plan, why = choose_layout(ecfg.triton, plan_built=plan_path is not None)
    counts.update(build_repository(ctx.path("triton"), spec, onnx_path, model_dir / "tokenizer.json", ecfg.triton,
                                   layout=layout, plan_path=plan_path if use_plan else None, gpu=gpu))
    counts["triton_layout_reason"] = why
    ctx.log(f"Triton model repository ({layout}; {why}) written to {ctx.path('triton')}")
    return counts

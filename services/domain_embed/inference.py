"""Inference-only encoding: the export graph in ONNX Runtime (fp32, or int8 when it agrees), else torch.

Synthesis's round trip and dedup, mining and evaluation only ever run the model forward, so they
do not need torch's autograd machinery: the graph of :mod:`domain_embed.onnx_graph` (pooling and
normalisation inside, as export ships it) runs in ONNX Runtime, on the CUDA execution provider
when one is present. Training stays on torch.

Config (``configs/model/*.yaml``)::

    model.inference_backend: auto | torch | onnx
    model.int8: auto | true | false
    model.int8_min_cosine: 0.99

- ``auto`` backend: ONNX Runtime where it can run on this machine's device (CPU, or CUDA with
  onnxruntime-gpu), else torch. The fp32 graph is checked against the torch :class:`Encoder` once
  when it is built (min cosine must be >= :data:`FP32_MIN_COSINE`); if it is not, torch is used
  and the log says why. ``onnx`` makes any of that an error instead.
- ``int8``: dynamic int8 quantisation (``onnxruntime.quantization.quantize_dynamic``), used only
  by callers that allow it (the filters: synthesis and mining; evaluation measures the model in
  fp32) and only when its vectors agree with fp32 on the run's own chunks: min cosine >=
  ``model.int8_min_cosine``. ``true`` makes a failed check an error, ``auto`` falls back to fp32.
  Never on CUDA (the quantised MatMuls are CPU kernels).

Built graphs are cached by the model's content fingerprint under :func:`onnx_cache_root`
(``model.onnx_cache_dir``, default the user cache dir), so each base model is exported once per
machine, with the parity figures beside it (``build.json``, ``model.int8-*-parity-*.json``); a run's own
trained model gets its graph in ``runs/<name>/embeddings/onnx/``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import EncodingSpec
from .embed_store import model_fingerprint, user_cache_dir
from .errors import UserError
from .rundir import atomic_write_json
from .schema import ModelConfig, as_section

FP32_MIN_COSINE = 0.999
OPSET = 17
BACKENDS = ("auto", "torch", "onnx")
INT8_CHOICES = ("auto", "true", "false")


class OnnxEncoder:
    """Same interface as :class:`~domain_embed.encoding.Encoder`, running the pooled ONNX graph."""

    backend = "onnx"

    def __init__(self, spec: EncodingSpec, onnx_path: Path | str, model_path: str | Path | None = None,
                 precision: str = "fp32", batch_size: int = 64, providers: Sequence[str] | None = None,
                 threads: int = 0):
        from transformers import AutoTokenizer

        from .onnx_graph import ort_session

        self.spec = spec
        self.model_path = str(model_path or spec.model_path)
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=spec.trust_remote_code)
        self.session = ort_session(self.onnx_path, threads=threads, providers=providers)
        self.providers = list(self.session.get_providers())

    def tokenize(self, texts: Sequence[str], input_type: str) -> dict[str, np.ndarray]:
        from .encoding import apply_prefix

        tok = self.tokenizer(apply_prefix(texts, self.spec, input_type), max_length=self.spec.max_length(input_type),
                             truncation=True, padding=True, return_tensors="np")
        return {"input_ids": tok["input_ids"].astype(np.int64), "attention_mask": tok["attention_mask"].astype(np.int64)}

    def encode(self, texts: Sequence[str], input_type: str, progress: bool = False, desc: str = "",
               callback: Callable[[int], object] | None = None) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        if not texts:
            return out
        # Sort by length so batches pad little; restore the order at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(texts), desc=desc or f"embed {input_type}s", leave=False)
        for s in range(0, len(texts), self.batch_size):
            idx = order[s : s + self.batch_size]
            out[idx] = self.session.run(["embeddings"], self.tokenize([texts[i] for i in idx], input_type))[0]
            if callback is not None:
                callback(len(idx))
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        return out

    def encode_queries(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, "query", **kw)

    def encode_passages(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, "passage", **kw)


# ---------------------------------------------------------------- building and caching graphs
def onnx_cache_root(model_cfg: Any = None) -> Path:
    """``model.onnx_cache_dir``, else the user cache; ``model_cfg``: a ModelConfig, a DictConfig section or None."""
    d = as_section(model_cfg, ModelConfig).onnx_cache_dir
    return Path(d).expanduser() if d else user_cache_dir() / "onnx"


def _graph_dir(root: Path, model_path: str | Path, spec: EncodingSpec) -> Path:
    # The graph holds the weights, the pooling and the normalisation; prefixes and lengths are inputs.
    key = hashlib.sha256(json.dumps({"model": model_fingerprint(model_path), "pooling": spec.pooling,
                                     "normalize": spec.normalize, "opset": OPSET}).encode()).hexdigest()[:16]
    return root / key


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _parity(ref: Any, got: Any, texts: Sequence[str]) -> dict[str, Any]:
    cos = np.concatenate([cosine_rows(ref.encode(texts, k), got.encode(texts, k)) for k in ("query", "passage")])
    return {"texts": int(len(cos)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}


def build_graph(model_path: str | Path, spec: EncodingSpec, root: Path, log: Callable[[str], None] = print,
                texts: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The fp32 pooled graph for ``model_path``, exported once and checked against torch; (path, build info)."""
    from .files import file_lock, remove_temps

    d = _graph_dir(root, model_path, spec)
    path, info_path = d / "model.onnx", d / "build.json"
    if (done := _built(path, info_path)) is not None:
        return path, done
    # The cache is shared by every run on the machine: two runs that start together on a fresh cache
    # (two corpora, two benchmarks) build it once, the second waiting for the first.
    with file_lock(d / ".build.lock", lambda: log(f"waiting for another process building the ONNX graph in {d}")):
        if (done := _built(path, info_path)) is not None:
            return path, done
        # under the lock nobody else writes here: what a killed build left (a model-sized .model.onnx.<pid>.tmp)
        # goes, or every kill in the shared cache would keep another one
        remove_temps(d)
        return path, _build_graph(model_path, spec, path, info_path, log, texts)


def _built(path: Path, info_path: Path) -> dict[str, Any] | None:
    if path.is_file() and info_path.is_file():
        try:
            return json.loads(info_path.read_text())
        except ValueError:
            pass
    return None


def _build_graph(model_path: str | Path, spec: EncodingSpec, path: Path, info_path: Path,
                 log: Callable[[str], None], texts: Sequence[str] | None) -> dict[str, Any]:
    from .onnx_graph import BUILTIN_SENTENCES, export_onnx

    d = path.parent
    t0 = time.perf_counter()
    log(f"building the ONNX inference graph for {model_path} (once per model; cached in {d})")
    exporter = export_onnx(model_path, spec, path, opset=OPSET, log=log)
    export_s = time.perf_counter() - t0
    from .encoding import Encoder

    ref = Encoder(spec, model_path, device="cpu", batch_size=16)
    got = OnnxEncoder(spec, path, model_path, batch_size=16)
    parity = _parity(ref, got, list(texts or BUILTIN_SENTENCES))
    info = {"exporter": exporter, "opset": OPSET, "export_s": round(export_s, 2), "model": str(model_path),
            "fingerprint": model_fingerprint(model_path), "parity_vs_torch": parity,
            "min_cosine_required": FP32_MIN_COSINE, "passed": parity["min_cosine"] >= FP32_MIN_COSINE}
    atomic_write_json(info_path, info)
    return info


def build_int8(fp32_path: Path, log: Callable[[str], None] = print) -> Path:
    from .files import file_lock, remove_temps
    from .onnx_graph import INT8_RECIPE, quantize_int8, quiet_tools

    path = fp32_path.with_name(f"model.int8-{INT8_RECIPE}.onnx")
    if path.is_file():
        return path
    with file_lock(fp32_path.parent / ".build.lock",
                   lambda: log(f"waiting for another process quantising {fp32_path.parent}")):
        if not path.is_file():
            remove_temps(fp32_path.parent)
            log(f"quantising {fp32_path.name} to int8 (dynamic, per-channel MatMul weights)")
            with quiet_tools():
                quantize_int8(fp32_path, path)
    return path


def int8_parity(fp32: OnnxEncoder, int8: OnnxEncoder, texts: Sequence[str]) -> dict[str, Any]:
    """int8 vs fp32 on ``texts`` as queries and passages; cached beside the graph, keyed by the texts."""
    th = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    f = int8.onnx_path.with_name(f"{int8.onnx_path.stem}-parity-{th}-q{fp32.spec.max_query_length}-p{fp32.spec.max_passage_length}.json")
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except ValueError:
            pass
    out = _parity(fp32, int8, texts)
    atomic_write_json(f, out)
    return out


def _cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _choice(m: ModelConfig, key: str, default: str, allowed: Sequence[str]) -> str:
    """A choice key of ``model`` as its lower-case string (int8 may be the bool Hydra makes of ``int8=true``)."""
    v = getattr(m, key)
    v = str(v).lower() if v is not None else default
    if v not in allowed:
        raise UserError(f"model.{key}={v!r} is not one of {', '.join(allowed)}")
    return v


def inference_encoder(spec: EncodingSpec, model_cfg: Any = None, *, model_path: str | Path | None = None,
                      allow_int8: bool = False, parity_texts: Sequence[str] | None = None, batch_size: int = 64,
                      log: Callable[[str], None] = print, onnx_root: Path | None = None) -> Any:
    """The fastest encoder this machine has that matches the torch :class:`Encoder`.

    Returns an :class:`OnnxEncoder` (``backend`` "onnx", ``precision`` "fp32"/"int8") or the torch
    :class:`~domain_embed.encoding.Encoder`; either has ``.info`` saying what was chosen and why.
    """
    from .encoding import Encoder

    m = as_section(model_cfg, ModelConfig)  # callers outside the stages (benchmarks) pass a DictConfig section
    backend = _choice(m, "inference_backend", "auto", BACKENDS)
    int8 = _choice(m, "int8", "false", INT8_CHOICES)
    min_cos = m.int8_min_cosine
    path = str(model_path or spec.model_path)
    cuda = _cuda()

    def torch_encoder(why: str) -> Encoder:
        enc = Encoder(spec, path, batch_size=batch_size)
        enc.info = {"backend": "torch", "precision": "fp32", "device": enc.device, "why": why}
        return enc

    if backend == "torch":
        return torch_encoder("model.inference_backend=torch")
    try:
        import onnxruntime as ort
    except ImportError:
        if backend == "onnx":
            raise UserError("model.inference_backend=onnx needs onnxruntime; `pip install onnxruntime` "
                            "(or onnxruntime-gpu), or set model.inference_backend=auto") from None
        return torch_encoder("onnxruntime is not installed")
    available = ort.get_available_providers()
    if cuda and "CUDAExecutionProvider" in available:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif cuda and backend == "auto":
        return torch_encoder("a GPU is present but onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    else:
        providers = ["CPUExecutionProvider"]

    from .onnx_graph import BUILTIN_SENTENCES

    texts = list(parity_texts or [])[:32] + list(BUILTIN_SENTENCES)
    try:
        fp32_path, build = build_graph(path, spec, onnx_root or onnx_cache_root(m), log, texts)
    except Exception as exc:
        if backend == "onnx":
            raise
        return torch_encoder(f"ONNX export failed ({type(exc).__name__}: {str(exc)[:200]})")
    if not build.get("passed"):
        why = (f"the ONNX graph disagrees with torch (min cosine {build['parity_vs_torch']['min_cosine']:.6f} "
               f"< {FP32_MIN_COSINE})")
        if backend == "onnx":
            raise UserError(f"{why}; see {fp32_path.parent / 'build.json'}, or set model.inference_backend=torch")
        log(f"{why}: using torch")
        return torch_encoder(why)
    fp32 = OnnxEncoder(spec, fp32_path, path, "fp32", batch_size, providers)
    fp32.info = {"backend": "onnx", "precision": "fp32", "providers": fp32.providers,
                 "parity_vs_torch": build["parity_vs_torch"], "graph": str(fp32_path)}
    on_cpu = providers[0] == "CPUExecutionProvider"
    if not allow_int8 or int8 == "false" or not on_cpu:
        if int8 == "true" and allow_int8 and not on_cpu:
            log("model.int8=true ignored on CUDA: the quantised kernels are CPU-only; fp32 on the GPU")
        return fp32
    q = OnnxEncoder(spec, build_int8(fp32_path, log), path, "int8", batch_size, providers)
    par = int8_parity(fp32, q, texts)
    q.info = {"backend": "onnx", "precision": "int8", "providers": q.providers, "graph": str(q.onnx_path),
              "parity_vs_fp32": par, "min_cosine_required": min_cos}
    if par["min_cosine"] >= min_cos:
        log(f"int8 inference: min cosine vs fp32 {par['min_cosine']:.4f} >= {min_cos} on {par['texts']} texts")
        return q
    why = f"int8 vectors disagree with fp32 (min cosine {par['min_cosine']:.4f} < model.int8_min_cosine={min_cos})"
    if int8 == "true":
        raise UserError(f"{why} and model.int8=true; use model.int8=auto to fall back to fp32, or lower the threshold "
                        f"knowingly")
    log(f"{why}: using fp32")
    fp32.info["int8_rejected"] = par
    return fp32


def stage_encoder(ctx: Any, spec: EncodingSpec | None = None, model_path: str | Path | None = None,
                  allow_int8: bool = False, batch_size: int = 64) -> Any:
    """:func:`inference_encoder` for a stage: its config, its log, and the run's own chunks for parity."""
    from .onnx_graph import parity_texts

    texts, _ = parity_texts(ctx.path("curate/chunks.jsonl"))
    spec = spec or ctx.spec()
    # The base model's graph is shared by every run on this machine (the user cache); a run's own
    # trained model gets its graph inside the run, so it goes away with the run.
    own = model_path is not None and Path(model_path).resolve().is_relative_to(Path(ctx.run_dir).resolve())
    return inference_encoder(spec, ctx.conf.model, model_path=model_path, allow_int8=allow_int8,
                             parity_texts=texts, batch_size=batch_size, log=ctx.log,
                             onnx_root=Path(ctx.run_dir) / "embeddings" / "onnx" if own else None)

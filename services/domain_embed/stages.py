"""The stage registry: each stage's inputs, outputs and config dependencies, in pipeline order.

Stage functions are imported lazily so that, for example, the serving image (no torch, no
Curator) can still run ``domain-embed serve``.
"""

from __future__ import annotations

import importlib
from typing import Any

from pathlib import Path

from .rundir import OutsideInput, Stage, StageContext
from .schema import LLMKind, typed


def _lazy(module: str, attr: str = "run"):
    def call(ctx: StageContext) -> dict[str, Any]:
        try:
            mod = importlib.import_module(f"domain_embed.{module}")
        except ModuleNotFoundError as exc:
            from .errors import UserError

            raise UserError(
                f"the {ctx.stage.name} stage needs the Python package '{exc.name}', which is not installed; "
                f"install the extras with `pip install 'domain-embed[all]'` (or `make setup`)"
            ) from None
        return getattr(mod, attr)(ctx)

    call.module = module  # type: ignore[attr-defined]  (which subpackage implements the stage)
    return call


MODEL_KEYS = ["model"]


# ---------------------------------------------------------------- outside inputs, by content
# What each stage reads from outside the run directory. The config records only paths; these
# make the contents part of the up-to-date check (rundir.fingerprint_files).
def _model(cfg) -> dict[str, OutsideInput]:
    """The base model's files: new weights at the same path are a new model."""
    from .config import resolve_path

    path = resolve_path(typed(cfg).model.path)
    return {"model.path": OutsideInput.of(path)} if path is not None and path.exists() else {}


def _curate_inputs(cfg, extra) -> dict[str, OutsideInput]:
    """Exactly the files curate reads: corpus.path filtered by include/exclude/max_files."""
    from .curate.readers import discover
    from .curate.stage import _corpus_root

    c = typed(cfg).corpus
    # the run's own folders, so that a corpus.path inside one of them is refused (see _holding_run_dir)
    root = _corpus_root(c, frozenset({"embeddings", *(s.folder for s in STAGES.values()),
                                      *(out.split("/")[0] for s in STAGES.values() for out in s.outputs)}))
    files = discover(root, list(c.include or ["**/*"]), list(c.exclude), c.max_files)
    return {"corpus": OutsideInput(root, files), **_model(cfg)}


def _curate_on_skip(ctx: StageContext, manifest: dict[str, Any]) -> None:
    """An up-to-date curate repeats in short what its recorded run left out (curate.stage.on_skip)."""
    from .curate.stage import on_skip

    on_skip(ctx, manifest)


def _synth_inputs(cfg, extra) -> dict[str, OutsideInput]:
    from .config import resolve_path

    conf = typed(cfg)
    out = _model(cfg)
    style = conf.synth.style_examples_file
    if style:
        out["synth.style_examples_file"] = OutsideInput.of(Path(style).expanduser().resolve())
    llm = conf.llm
    if llm.kind == LLMKind.local and not llm.base_url and llm.local.weights:
        weights = resolve_path(llm.local.weights)
        if weights is not None and weights.exists():
            out["llm.local.weights"] = OutsideInput.of(weights)
    return out


def _model_inputs(cfg, extra) -> dict[str, OutsideInput]:
    return _model(cfg)


def _evaluate_inputs(cfg, extra) -> dict[str, OutsideInput]:
    """The base model plus the files behind --real-queries, --qrels and each --dataset."""
    out = _model(cfg)
    for key in ("real_queries", "qrels"):
        if extra.get(key):
            out[f"--{key.replace('_', '-')}"] = OutsideInput.of(Path(str(extra[key])).expanduser().resolve())
    for i, d in enumerate(extra.get("dataset") or []):
        out[f"--dataset[{i}]"] = OutsideInput.of(Path(str(d)).expanduser().resolve())
    return out

STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("curate", "curate", inputs=[], outputs=["curate/chunks.jsonl"],
              config_keys=["corpus", "curate", *MODEL_KEYS], fn=_lazy("curate.stage"),
              outside_inputs=_curate_inputs, on_skip=_curate_on_skip,
              description="clean, filter, dedup and chunk documents (NeMo Curator)"),
        Stage("synth", "synth", inputs=["curate/chunks.jsonl"], outputs=["synth/qa.jsonl"],
              config_keys=["synth", "llm", *MODEL_KEYS, "seed"], fn=_lazy("synth.stage"),
              outside_inputs=_synth_inputs,
              description="generate typed queries with an LLM, judge and filter them"),
        Stage("split", "split", inputs=["curate/chunks.jsonl", "synth/qa.jsonl"],
              outputs=["split/train_qa.jsonl", "split/train_corpus.jsonl", "split/val_beir",
                       "split/eval_beir", "split/split.json"],
              config_keys=["split", "seed"], fn=_lazy("split.stage"),
              description="split by document into train / validation / test (BEIR layout)"),
        Stage("mine", "mine", inputs=["split/train_qa.jsonl", "split/train_corpus.jsonl"],
              outputs=["mine/train.jsonl"], config_keys=["mine", *MODEL_KEYS], fn=_lazy("mine.stage"),
              outside_inputs=_model_inputs,
              description="positive-aware hard-negative mining with the base model and FAISS"),
        Stage("train", "train", inputs=["mine/train.jsonl", "split/train_corpus.jsonl", "split/val_beir"],
              outputs=["train/model"], config_keys=["train", *MODEL_KEYS, "seed"], fn=_lazy("train.stage"),
              outside_inputs=_model_inputs,
              description="contrastive fine-tuning with Lightning"),
        Stage("evaluate", "evaluate", inputs=["split/eval_beir", "train/model"],
              outputs=["evaluate/report.json", "evaluate/report.md"], config_keys=["evaluate", *MODEL_KEYS],
              fn=_lazy("evaluate.stage"), outside_inputs=_evaluate_inputs,
              description="BEIR metrics, base vs tuned (+BM25), quality gate"),
        Stage("export", "export", inputs=["train/model", "evaluate/report.json"],
              outputs=["export/model.onnx", "export/parity.json", "triton"],
              config_keys=["export", *MODEL_KEYS], fn=_lazy("export.stage"),
              description="ONNX (and TensorRT on GPU) export with parity check; Triton model repository"),
    ]
}

PIPELINE = list(STAGES)

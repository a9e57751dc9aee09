"""The stage registry: each stage's inputs, outputs and config dependencies, in pipeline order.

Stage functions are imported lazily so that, for example, the serving image (no torch, no
Curator) can still run ``domain-embed serve``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .rundir import Stage, StageContext


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

    return call


MODEL_KEYS = ["model"]

STAGES: dict[str, Stage] = {
    s.name: s
    for s in [
        Stage("curate", "curate", inputs=[], outputs=["curate/chunks.jsonl"],
              config_keys=["corpus", "curate", *MODEL_KEYS], fn=_lazy("curate.stage"),
              description="clean, filter, dedup and chunk documents (NeMo Curator)"),
        Stage("synthesize", "synth", inputs=["curate/chunks.jsonl"], outputs=["synth/qa.jsonl"],
              config_keys=["synth", "llm", *MODEL_KEYS, "seed"], fn=_lazy("synth.stage"),
              description="generate typed queries with an LLM, judge and filter them"),
        Stage("split", "split", inputs=["curate/chunks.jsonl", "synth/qa.jsonl"],
              outputs=["split/train_qa.jsonl", "split/train_corpus.jsonl", "split/val_beir",
                       "split/eval_beir", "split/split.json"],
              config_keys=["split", "seed"], fn=_lazy("split.stage"),
              description="split by document into train / validation / test (BEIR layout)"),
        Stage("mine", "mine", inputs=["split/train_qa.jsonl", "split/train_corpus.jsonl"],
              outputs=["mine/train.jsonl"], config_keys=["mine", *MODEL_KEYS], fn=_lazy("mine.stage"),
              description="positive-aware hard-negative mining with the base model and FAISS"),
        Stage("train", "train", inputs=["mine/train.jsonl", "split/train_corpus.jsonl", "split/val_beir"],
              outputs=["train/model"], config_keys=["train", *MODEL_KEYS, "seed"], fn=_lazy("train.stage"),
              description="contrastive fine-tuning with Lightning"),
        Stage("evaluate", "eval", inputs=["split/eval_beir", "train/model"],
              outputs=["eval/report.json", "eval/report.md"], config_keys=["evaluate", *MODEL_KEYS],
              fn=_lazy("evaluate.stage"), description="BEIR metrics, base vs tuned (+BM25), quality gate"),
        Stage("export", "export", inputs=["train/model", "eval/report.json"],
              outputs=["export/model.onnx", "export/parity.json", "triton"],
              config_keys=["export", *MODEL_KEYS], fn=_lazy("export.stage"),
              description="ONNX (and TensorRT on GPU) export with parity check; Triton model repository"),
    ]
}

PIPELINE = list(STAGES)

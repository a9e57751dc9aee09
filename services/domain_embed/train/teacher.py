"""A larger embedding model as the teacher (``train.teacher``).

The tuned model learns, beside the contrastive loss, the teacher's distribution over each query's candidates
(its positive, its mined negatives and the micro-batch's other passages): :func:`info_nce.base_kl` with the
teacher's vectors in place of the base's. The candidates of every planned micro-batch are known before
training (:class:`batching.BatchPlan` is deterministic), so the teacher embeds each training query and
passage once, up front, through the run's embedding store, and is not in memory while the student trains:
on 2 CPU cores all-mpnet-base-v2 (110M) embeds Debian's 120 training queries and 330 passages in about 2 min.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ..config import SPEC_FILE, EncodingSpec, model_prompts, resolve_path
from ..errors import UserError

_POOLING = (("pooling_mode_cls_token", "cls"), ("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean"))


def teacher_path(value: Any) -> Path:
    """``train.teacher.path`` resolved (a folder or ``pkg:``), or a :class:`UserError` saying what to give."""
    path = resolve_path(str(value))
    if path is None or not (path / "config.json").is_file():
        raise UserError(f"train.teacher.path={value} is not a model folder (no config.json in {path}); give a "
                        f"sentence-transformers model folder or pkg:<package>, or train.teacher.path=null for none")
    return path


def teacher_spec(path: Path, student: EncodingSpec) -> EncodingSpec:
    """How the teacher encodes: a domain-embed model folder's own spec, else its sentence-transformers pooling,
    width and prompts, at the student's token limits."""
    own = path / SPEC_FILE
    if own.is_file():
        return EncodingSpec.from_dict({**json.loads(own.read_text()), "model_path": str(path)})
    pooling, dim = "mean", None
    pool_cfg = path / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        pc = json.loads(pool_cfg.read_text())
        pooling = next((name for key, name in _POOLING if pc.get(key)), "mean")
        dim = pc.get("word_embedding_dimension")
    if dim is None:
        dim = json.loads((path / "config.json").read_text()).get("hidden_size")
    if not isinstance(dim, int) or dim <= 0:
        raise UserError(f"train.teacher.path={path}: cannot tell the model's width (no word_embedding_dimension in "
                        f"1_Pooling/config.json, no hidden_size in config.json)")
    prompts = model_prompts(path)
    return EncodingSpec(model_path=str(path), query_prefix=prompts.get("query", ""),
                        passage_prefix=prompts.get("passage", ""), max_query_length=student.max_query_length,
                        max_passage_length=student.max_passage_length, pooling=pooling, normalize=True, dim=dim,
                        matryoshka_dims=(dim,))


def planned_rows(plan, n_batches: int) -> tuple[list[int], list[int]]:
    """The example (query) rows and passage rows of the plan's first ``n_batches`` micro-batches."""
    queries, passages = set(), set()
    for b in range(n_batches):
        for it in plan.batch(b):
            queries.add(it.example)
            passages.update((it.positive, *it.negatives))
    return sorted(queries), sorted(passages)


def teacher_vectors(plan, texts: list[str], n_batches: int, tspec: EncodingSpec, model_cfg: Any, store=None,
                    log: Callable[[str], None] = print):
    """``(queries, passages)``: float32 tensors ``[len(plan.examples), dim]`` and ``[len(texts), dim]``, unit rows
    for every query and passage the plan trains on (zeros elsewhere: never read)."""
    import numpy as np
    import torch

    from ..inference import inference_encoder

    qrows, prows = planned_rows(plan, n_batches)
    enc = inference_encoder(tspec, model_cfg, allow_int8=False, log=lambda m: None)
    if store is not None:
        enc = store.bind(enc)
    qv = np.asarray(enc.encode([plan.examples[i].query for i in qrows], "query"), dtype=np.float32)
    pv = np.asarray(enc.encode([texts[i] for i in prows], "passage"), dtype=np.float32)
    tq = torch.zeros(len(plan.examples), tspec.dim)
    tp = torch.zeros(len(texts), tspec.dim)
    tq[qrows] = torch.nn.functional.normalize(torch.from_numpy(qv), dim=-1)
    tp[prows] = torch.nn.functional.normalize(torch.from_numpy(pv), dim=-1)
    log(f"teacher {Path(tspec.model_path).name}: {len(qrows)} queries and {len(prows)} passages embedded")
    return tq, tp

"""The Lightning bi-encoder: a Hugging Face encoder, :func:`encoding.pool`, InfoNCE.

Validation encodes the validation slice (split/val_beir, its corpus bounded by
:mod:`train.validation`) with the same spec and logs ``val_ndcg@10``; the corpus is sharded over
ranks and gathered, so every rank computes the same number.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ..config import EncodingSpec
from ..encoding import apply_prefix, pool
from ..schema import TrainConfig, as_section
from ..beir import evaluate as beir_evaluate
from .info_nce import base_kl, info_nce, passage_to_query


def load_encoder(spec: EncodingSpec, tcfg: TrainConfig) -> torch.nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
    # BERT-style pooler heads are not used by token pooling; frozen, DDP need not hunt for unused parameters
    for name, param in model.named_parameters():
        if name.startswith("pooler.") or ".pooler." in name:
            param.requires_grad_(False)
    if tcfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if tcfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = tcfg.lora
        lcfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                          target_modules=list(lora.target_modules) or None)
        model = get_peft_model(model, lcfg)
    # from_pretrained returns eval mode; fine-tuning wants dropout like the original training did
    model.train()
    return model


def load_frozen_base(spec: EncodingSpec) -> torch.nn.Module:
    """The base model, for ``train.distill_base``: eval mode (no dropout), no gradients."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class BiEncoder(L.LightningModule):
    def __init__(self, spec: EncodingSpec, tcfg: TrainConfig, tokenizer, total_steps: int, val=None,
                 metrics_log=None):
        super().__init__()
        self.spec = spec
        self.tcfg: TrainConfig = as_section(tcfg, TrainConfig)  # (benchmarks pass a DictConfig section)
        tcfg = self.tcfg
        self.tokenizer = tokenizer
        self.model = load_encoder(spec, tcfg)
        self.total_steps = total_steps
        self.val = val                      # evaluate.retrieval.BeirDataset or None
        self.metrics_log = metrics_log      # rank 0: AppendLog for train/metrics.jsonl
        self.resume_batch = 0
        self.stop_check = None              # callable raising when a stop was requested (train.stopping)
        self.show_progress = False          # rank 0, not --quiet: validation prints its progress
        self.owes_validation = False        # resumed at a validation step whose validation never ran
        # The base's vectors of the validation passages, when an earlier stage left every one in the run's
        # embedding store (synthesis's round trip embeds the whole corpus): the step-0 pass reads them
        # instead of encoding the passages again (SQLite's docs: 2,044 passages, about 2 min on 2 cores).
        self.base_passages = None
        dims = sorted({int(d) for d in spec.matryoshka_dims if int(d) <= spec.dim}, reverse=True)
        self.dims = dims if tcfg.matryoshka and dims else [spec.dim]
        # train.distill_base: the frozen base, held in a list so that it is not a submodule: it stays out
        # of state_dict (checkpoints, best.ckpt, the shipped weights), the optimiser and DDP's buckets
        self._base = [load_frozen_base(spec)] if tcfg.distill_base > 0 else []
        # train.teacher: (query vectors by example row, passage vectors by passage row), set by the worker
        # before training (train/teacher.py); plain tensors, not buffers, so they stay out of checkpoints
        self.teacher: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ encoding
    def tokenize(self, texts: list[str], input_type: str) -> dict[str, torch.Tensor]:
        return self.tokenizer(apply_prefix(texts, self.spec, input_type), max_length=self.spec.max_length(input_type),
                              truncation=True, padding=True, return_tensors="pt")

    def embed(self, input_ids, attention_mask, normalize: bool | None = None, model=None) -> torch.Tensor:
        """Pooled embeddings from ``model`` (default: the model being tuned)."""
        hidden = (model or self.model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        norm = self.spec.normalize if normalize is None else normalize
        return pool(hidden, attention_mask, self.spec.pooling, norm)

    # ------------------------------------------------------------------ training
    def contrastive_loss(self, batch: dict[str, Any], gather: bool = False) -> torch.Tensor:
        """InfoNCE of one micro-batch (summed over the Matryoshka dims); ``gather``: in-batch
        negatives from every rank."""
        q = self.embed(batch["q_input_ids"], batch["q_attention_mask"], normalize=False)
        p = self.embed(batch["p_input_ids"], batch["p_attention_mask"], normalize=False)
        ids, pos_sets = batch["passage_ids"], batch["pos_sets"]
        B = q.shape[0]
        group = p.shape[0] // B
        offset = 0
        if gather:
            p = self.all_gather(p, sync_grads=True).reshape(-1, p.shape[-1])
            ids = self.all_gather(ids).reshape(-1)
            offset = self.global_rank * B
        loss = q.new_zeros((), dtype=torch.float32)
        for d in self.dims:
            qd, pd = q[:, :d].float(), p[:, :d].float()
            if self.spec.normalize:
                qd, pd = F.normalize(qd, dim=-1), F.normalize(pd, dim=-1)
            loss = loss + info_nce(qd, pd, ids, pos_sets, group, offset, self.tcfg.temperature,
                                   self.tcfg.in_batch_negatives)
            if self.tcfg.symmetric > 0:
                loss = loss + self.tcfg.symmetric * passage_to_query(qd, pd, ids, pos_sets, group, offset,
                                                                     self.tcfg.temperature)
        if self._base:
            loss = loss + self.tcfg.distill_base * self.base_term(batch, q, p, group, offset, gather)
        if self.teacher is not None and self.tcfg.teacher.weight > 0:
            loss = loss + self.tcfg.teacher.weight * self.teacher_term(batch, q, p, ids, group, offset)
        return loss

    def teacher_term(self, batch: dict[str, Any], q: torch.Tensor, p: torch.Tensor, ids: torch.Tensor, group: int,
                     offset: int) -> torch.Tensor:
        """:func:`info_nce.base_kl` against the teacher's stored vectors of the same queries and candidates
        (``p`` and ``ids`` are already gathered when the negatives come from every rank)."""
        tq, tp = self.teacher
        qt = tq[batch["query_rows"].cpu()].to(q.device)
        pt = tp[ids.cpu()].to(q.device)
        qs, ps = F.normalize(q.float(), dim=-1), F.normalize(p.float(), dim=-1)
        return base_kl(qs, ps, qt, pt, group, offset, self.tcfg.teacher.temperature, self.tcfg.in_batch_negatives)

    def base_term(self, batch: dict[str, Any], q: torch.Tensor, p: torch.Tensor, group: int, offset: int,
                  gather: bool) -> torch.Tensor:
        """:func:`info_nce.base_kl` at the full dimension; ``p`` is already gathered when ``gather``."""
        base = self._base[0]
        if next(base.parameters()).device != q.device:
            base.to(q.device)
        with torch.no_grad():
            qb = self.embed(batch["q_input_ids"], batch["q_attention_mask"], normalize=False, model=base)
            pb = self.embed(batch["p_input_ids"], batch["p_attention_mask"], normalize=False, model=base)
            if gather:
                pb = self.all_gather(pb).reshape(-1, pb.shape[-1])
        qs, ps, qb, pb = q.float(), p.float(), qb.float(), pb.float()
        if self.spec.normalize:
            qs, ps, qb, pb = (F.normalize(t, dim=-1) for t in (qs, ps, qb, pb))
        return base_kl(qs, ps, qb, pb, group, offset, self.tcfg.temperature, self.tcfg.in_batch_negatives)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        gather = self.tcfg.in_batch_negatives and self.tcfg.gather_across_devices and self.trainer.world_size > 1
        loss = self.contrastive_loss(batch, gather)
        self.log("train_loss", loss, prog_bar=True, batch_size=batch["q_input_ids"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.metrics_log is None or self.trainer.global_rank != 0:
            return
        if (batch_idx + 1) % max(1, self.tcfg.grad_accum) != 0:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.metrics_log.append({"step": int(self.global_step), "loss": round(float(loss), 6), "lr": float(lr)})

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        kw = {"lr": self.tcfg.learning_rate, "weight_decay": self.tcfg.weight_decay}
        try:
            # One fused kernel instead of a loop over ~100 tensors: the same update, and on CPU the
            # step went from 2.4-5.3 s to 0.25 s for MiniLM (benchmarks/train_step.py, a loaded 2-core host).
            opt = torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):  # a device or dtype the fused kernel lacks
            opt = torch.optim.AdamW(params, **kw)
        warmup = int(round(self.tcfg.warmup_ratio * self.total_steps))
        total = max(1, self.total_steps)

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ validation
    def val_ndcg(self) -> float:
        """nDCG@10 on the validation slice; every rank encodes a shard of the corpus."""
        from ..beir import search
        import faiss
        import numpy as np

        ds = self.val
        world, rank = self.trainer.world_size, self.trainer.global_rank
        n = len(ds.corpus_texts)
        per = math.ceil(n / world)
        mine = ds.corpus_texts[rank * per : (rank + 1) * per]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            if self.global_step == 0 and world == 1 and self.base_passages is not None:
                allp = torch.from_numpy(self.base_passages)  # the untouched base: the store's vectors
            else:
                local = self._encode(mine, "passage")
                if local.shape[0] < per:
                    local = torch.cat([local, local.new_zeros(per - local.shape[0], local.shape[1])])
                allp = self.all_gather(local).reshape(-1, local.shape[-1])[:n] if world > 1 else local[:n]
            q = self._encode(ds.query_texts, "query")
        self.model.train(was_training)
        index = faiss.IndexFlatIP(allp.shape[1])
        index.add(np.ascontiguousarray(allp.float().cpu().numpy()))
        scores, idx = search(index, q.float().cpu().numpy(), 10)
        run = {qid: {ds.corpus_ids[j]: float(s) for j, s in zip(idx[i], scores[i]) if j >= 0}
               for i, qid in enumerate(ds.query_ids)}
        return float(beir_evaluate(ds.qrels, run, [10]).get("ndcg@10", 0.0))

    def _encode(self, texts: list[str], input_type: str, bs: int = 64) -> torch.Tensor:
        from ..rundir import Progress

        out = [torch.zeros(0, self.spec.dim, device=self.device)]
        bar = Progress(total=len(texts), desc=f"train: validation {input_type}s", unit="text",
                       disable=not self.show_progress or len(texts) <= bs)
        for s in range(0, len(texts), bs):
            if self.stop_check is not None:
                self.stop_check()  # a stop must not wait for a whole validation pass
            t = self.tokenize(texts[s : s + bs], input_type)
            out.append(self.embed(t["input_ids"].to(self.device), t["attention_mask"].to(self.device)).float())
            bar.update(len(texts[s : s + bs]))
        bar.close()
        return torch.cat(out)

    def validation_step(self, batch, batch_idx) -> None:
        v = self.val_ndcg()
        self.log("val_ndcg@10", v, prog_bar=True, batch_size=1, sync_dist=False)
        if self.metrics_log is not None and self.trainer.global_rank == 0:
            self.metrics_log.append({"step": int(self.global_step), "val_ndcg@10": round(v, 6)})

    def on_train_start(self) -> None:
        # The base model's validation score (step 0) is what training has to beat.
        if self.val is not None and self.global_step == 0:
            v = self.val_ndcg()
            if self.metrics_log is not None and self.trainer.global_rank == 0:
                self.metrics_log.append({"step": 0, "val_ndcg@10": round(v, 6)})
        elif self.val is not None and self.owes_validation:
            # Resumed from a checkpoint written just before a validation that the stop abandoned:
            # Lightning resumes after it, so run it here, where the uninterrupted run ran it.
            v = self.val_ndcg()
            if self.metrics_log is not None and self.trainer.global_rank == 0:
                self.metrics_log.append({"step": int(self.global_step), "val_ndcg@10": round(v, 6)})
            self.trainer.callback_metrics["val_ndcg@10"] = torch.tensor(v)
            for cb in self.trainer.callbacks:  # best checkpoint, early stopping, progress
                cb.on_validation_end(self.trainer, self)
            self.owes_validation = False

    # ------------------------------------------------------------------ resume
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["domain_embed"] = {"torch_rng": torch.get_rng_state(),
                                      "micro_batches": int(self.global_step) * max(1, self.tcfg.grad_accum)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("domain_embed") or {}
        self.resume_batch = int(state.get("micro_batches", 0))
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])

"""The training process: ``python -m domain_embed.train.worker <run_dir>``.

The ``train`` stage starts it as a child process so that Lightning's DDP launcher can re-run this
same command for the other local ranks, and torchrun (multi-node) environment variables pass
straight through. It reads ``train/run_config.yaml`` that the stage wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf


def resolve_precision(p: str) -> str:
    import torch

    if str(p) != "auto":
        return str(p)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _devices(v):
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return v


def main(run_dir: Path) -> int:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import EarlyStopping
    from transformers import AutoTokenizer

    from ..config import EncodingSpec
    from ..errors import UserError
    from ..evaluate.retrieval import load_beir
    from ..rundir import AppendLog, atomic_write_json, read_jsonl, sha256_path
    from .batching import PlannedBatches, fit_plan, load_examples, make_collate
    from .bi_encoder import BiEncoder
    from .checkpointing import AtomicCheckpoints
    from .model_dir import save_model_dir

    tdir = run_dir / "train"
    cfg = OmegaConf.load(tdir / "run_config.yaml")
    tc = cfg.train
    spec = EncodingSpec.from_config(cfg)
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision("high")

    corpus = list(read_jsonl(run_dir / "split" / "train_corpus.jsonl"))
    corpus_ids = [c["id"] for c in corpus]
    texts = [c["text"] for c in corpus]
    mined = list(read_jsonl(run_dir / "mine" / "train.jsonl"))
    examples, dropped = load_examples(mined, corpus_ids)
    if not examples:
        raise UserError("mine/train.jsonl has no query with a positive in split/train_corpus.jsonl; rerun mine")
    val = None
    vdir = run_dir / "split" / "val_beir"
    if vdir.is_dir() and int(tc.val_every_n_steps) > 0:
        try:
            val = load_beir(vdir, "dev", "val")
        except UserError as exc:
            print(f"[train] no validation: {exc}", file=sys.stderr)

    strategy = str(tc.strategy)
    if strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=False)
    ck = AtomicCheckpoints(tdir / "checkpoints", int(tc.checkpoint_every_n_steps))
    callbacks: list = [ck]
    if val is not None and int(tc.early_stopping_patience) > 0:
        callbacks.append(EarlyStopping("val_ndcg@10", mode="max", patience=int(tc.early_stopping_patience),
                                       check_on_train_epoch_end=False))
    trainer = L.Trainer(
        accelerator=str(tc.accelerator), devices=_devices(tc.devices), num_nodes=int(tc.num_nodes), strategy=strategy,
        precision=resolve_precision(tc.precision), accumulate_grad_batches=int(tc.grad_accum),
        gradient_clip_val=float(tc.gradient_clip) if float(tc.gradient_clip) > 0 else None,
        max_epochs=-1, max_steps=1, logger=False, callbacks=callbacks, enable_checkpointing=False,
        enable_progress_bar=not bool(cfg.get("_quiet", False)), enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, default_root_dir=str(tdir),
        val_check_interval=(int(tc.val_every_n_steps) * int(tc.grad_accum)) if val is not None else None,
        check_val_every_n_epoch=None, limit_val_batches=1 if val is not None else 0,
    )
    world = trainer.world_size
    per_device = int(tc.batch_size)
    plan = fit_plan(examples, len(texts), per_device, world, int(tc.num_negatives), seed,
                    log=lambda m: print(m, file=sys.stderr))
    accum = int(tc.grad_accum)
    total_steps = int(tc.max_steps) if int(tc.max_steps) > 0 else max(1, plan.batches_in(int(tc.epochs)) // accum)
    trainer.fit_loop.epoch_loop.max_steps = total_steps  # known only once the world size is

    tokenizer = AutoTokenizer.from_pretrained(spec.model_path)

    collate = make_collate(tokenizer, spec)

    # Resume only from a checkpoint of this very config and these very inputs.
    fp_blob = json.dumps({"cfg": OmegaConf.to_container(cfg.train), "model": OmegaConf.to_container(cfg.model),
                          "seed": seed, "mined": sha256_path(run_dir / "mine" / "train.jsonl"), "world": world},
                         sort_keys=True, default=str)
    fingerprint = hashlib.sha256(fp_blob.encode()).hexdigest()[:16]
    fp_file = tdir / "checkpoints" / "fingerprint.json"
    resume = ck.last.is_file() and fp_file.is_file() and json.loads(fp_file.read_text()).get("fingerprint") == fingerprint
    metrics_path = tdir / "metrics.jsonl"
    if trainer.is_global_zero:
        if not resume:
            for f in (ck.last, ck.best, metrics_path):
                f.unlink(missing_ok=True)
            atomic_write_json(fp_file, {"fingerprint": fingerprint})
        else:
            # Drop what the killed run logged after its last checkpoint; the resumed run logs it again.
            step = int(torch.load(ck.last, map_location="cpu", weights_only=False)["global_step"])
            keep = [r for r in read_jsonl(metrics_path) if r["step"] <= step] if metrics_path.is_file() else []
            from ..rundir import atomic_write_jsonl

            atomic_write_jsonl(metrics_path, keep)
            print(f"[train] resuming from {ck.last} at step {step}", file=sys.stderr)
    log = AppendLog(metrics_path) if trainer.is_global_zero else None
    module = BiEncoder(spec, tc, tokenizer, total_steps, val=val, metrics_log=log)
    rank_world = lambda: (trainer.global_rank, trainer.world_size)  # noqa: E731

    class _Data(PlannedBatches):
        def __iter__(self):
            self.rank, self.world = rank_world()
            return super().__iter__()

    train_ds = _Data(plan, texts, collate, 0, world, total_steps * accum, lambda: module.resume_batch)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=None, num_workers=0)
    val_dl = torch.utils.data.DataLoader([0], batch_size=1) if val is not None else None
    trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                ckpt_path=str(ck.last) if resume else None)
    trainer.strategy.barrier()

    # Each rank's final weights, hashed, so a test (or a person) can check DDP kept them identical.
    if os.environ.get("DOMAIN_EMBED_WEIGHT_HASH"):
        h = hashlib.sha256()
        for k, v in sorted(module.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        atomic_write_json(tdir / f".weights_rank{trainer.global_rank}.json", {"sha256": h.hexdigest()})

    # Export the best validated weights (or the last, without validation).
    best_step = ck.best_step
    if ck.best.is_file():
        state = torch.load(ck.best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    if trainer.is_global_zero:
        rows = list(read_jsonl(metrics_path)) if metrics_path.is_file() else []
        vals = [(r["step"], r["val_ndcg@10"]) for r in rows if "val_ndcg@10" in r]
        losses = [r["loss"] for r in rows if "loss" in r]
        base_val = next((v for s, v in vals if s == 0), None)
        summary = {
            "steps": int(trainer.global_step), "planned_steps": total_steps, "world_size": world,
            "train_queries": len(examples), "dropped_queries": dropped, "train_passages": len(texts),
            "val_queries": len(val.query_ids) if val else 0,
            "base_val_ndcg@10": base_val, "best_val_ndcg@10": ck.best_score, "best_step": best_step,
            "final_loss": losses[-1] if losses else None, "resumed": bool(resume),
            "precision": resolve_precision(tc.precision), "early_stopped": bool(trainer.should_stop
                                                                                and trainer.global_step < total_steps),
        }
        card = {**summary, "train": OmegaConf.to_container(tc), "base_model_name": str(cfg.model.name),
                "base_model_path": spec.model_path, "served_name": str(cfg.model.served_name),
                "train_sha": sha256_path(run_dir / "mine" / "train.jsonl"), "val_curve": vals}
        save_model_dir(module.model, tokenizer, spec, tdir / "model", card)
        atomic_write_json(tdir / "summary.json", summary)
    trainer.strategy.barrier()
    if log is not None:
        log.close()
    return 0


if __name__ == "__main__":
    from ..errors import UserError

    try:
        sys.exit(main(Path(sys.argv[1]).resolve()))
    except UserError as exc:
        # the stage re-raises this one line in the parent process
        from ..rundir import atomic_write_text

        atomic_write_text(Path(sys.argv[1]) / "train" / ".error", str(exc))
        sys.exit(exc.exit_code)

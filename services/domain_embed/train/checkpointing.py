"""Checkpoints that survive a kill: write to a temporary file, then rename.

``last.ckpt`` (full state: weights, optimizer, scheduler, loops, RNG) every N optimizer steps and at
the last one, for resuming; ``best.ckpt`` (weights only) whenever validation nDCG@10 improves, for the exported model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L


class AtomicCheckpoints(L.Callback):
    def __init__(self, dirpath: Path, every_n_steps: int, monitor: str = "val_ndcg@10"):
        self.dir = Path(dirpath)
        self.every = max(1, int(every_n_steps))
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.saved_step: int | None = None   # the step of the last.ckpt this run wrote
        self.val_every = 0                   # also save right before each validation (see save_last)

    @property
    def last(self) -> Path:
        return self.dir / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.dir / "best.ckpt"

    def _save(self, trainer: L.Trainer, path: Path, weights_only: bool = False) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=weights_only)   # collective; rank 0 writes
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            os.replace(tmp, path)
        trainer.strategy.barrier()

    def save_last(self, trainer: L.Trainer) -> None:
        self._save(trainer, self.last)
        self.saved_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        accum = trainer.accumulate_grad_batches
        step = trainer.global_step
        if (batch_idx + 1) % accum != 0 or step <= 0:
            return
        # Before a validation pass too: a stop during validation abandons it, and the rerun then
        # resumes from this very step instead of from the last periodic checkpoint.
        if step % self.every == 0 or (self.val_every > 0 and step % self.val_every == 0):
            self.save_last(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        # A run that trained all its steps keeps its last one, even off the checkpoint cadence: a rerun
        # that only changes what is shipped (train.base_mix) then resumes there and trains nothing
        # again. Git's 81-step run had last.ckpt at 75, so such a rerun trained 6 steps and validated
        # again (265 s). An early-stopped run ends before max_steps and is left as it was.
        step = int(trainer.global_step)
        if trainer.interrupted or not (0 < trainer.max_steps <= step) or self.saved_step == step:
            return
        self.save_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is None:
            return
        score = float(score)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step = score, int(trainer.global_step)
            self._save(trainer, self.best, weights_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # last.ckpt at a validation step is written just before that validation, so its best may lag
        # what seed_best() read from the log; keep the better of the two
        score = state_dict.get("best_score")
        if score is not None and (self.best_score is None or score > self.best_score):
            self.best_score, self.best_step = score, state_dict.get("best_step")

    def seed_best(self, rows: list[dict[str, Any]]) -> None:
        """On resume: the best validation the stopped run logged (the one best.ckpt holds), so that a
        later, worse validation does not overwrite best.ckpt and the summary names it."""
        if not self.best.is_file():
            return
        for r in rows:
            score = r.get(self.monitor)
            if score is not None and r["step"] > 0 and (self.best_score is None or score > self.best_score):
                self.best_score, self.best_step = float(score), int(r["step"])

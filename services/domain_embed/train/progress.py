"""What training tells the person waiting: an estimate before it starts, then progress with an ETA.

The estimate comes from a short timed probe on this machine (a quarter of two micro-batches through
forward and backward, scaled up, and a few validation passages), so a user sees "93 steps at about 4.1 s each ... about
9 min" and can lower the caps before waiting. Progress is a tqdm bar on a terminal and a line every
few seconds elsewhere (:class:`rundir.Progress`), with steps, loss, the last validation, the rate and ETA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from ..rundir import Progress


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``6 min``, ``1 h 12 min``: the precision an estimate deserves."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


@dataclass
class StepTiming:
    """Seconds of one micro-batch, by part (the last of ``n`` probes; the first warms up)."""

    collate_s: float      # planning the batch, tokenising queries and passages, building tensors
    forward_s: float
    backward_s: float
    tokens: int           # padded tokens in the batch (queries + passages)

    @property
    def step_s(self) -> float:
        return self.collate_s + self.forward_s + self.backward_s


def sub_batch(batch: dict[str, Any], rows: int) -> dict[str, Any]:
    """The first ``rows`` queries of a collated batch, with their own passages (same padding)."""
    B = batch["q_input_ids"].shape[0]
    group = batch["p_input_ids"].shape[0] // B
    out = {k: batch[k][:rows] for k in ("q_input_ids", "q_attention_mask", "pos_sets")}
    for k in ("p_input_ids", "p_attention_mask", "passage_ids"):
        out[k] = batch[k][: rows * group]
    return out


def probe_step(module, batches, n: int = 2, rows: int | None = None) -> StepTiming:
    """Time ``n`` micro-batches from the iterator ``batches`` through forward and backward.

    ``rows``: run only that many of each batch's queries (with their passages, at the full batch's
    padding) and scale the time up by rows, which is what forward and backward cost in; the probe
    then costs a fraction of a step. The weights do not change (no optimizer step; gradients are
    dropped) and the torch RNG is put back, so training after the probe is exactly what it would
    have been without it.
    """
    rng = torch.get_rng_state()
    was_training = module.model.training
    module.model.train()
    timing = None
    it = iter(batches)
    try:
        for _ in range(max(1, n)):
            t0 = time.perf_counter()
            batch = next(it)
            t1 = time.perf_counter()
            B = batch["q_input_ids"].shape[0]
            part = sub_batch(batch, rows) if rows and rows < B else batch
            scale = B / part["q_input_ids"].shape[0]
            loss = module.contrastive_loss(part)
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            tokens = int(batch["q_input_ids"].numel() + batch["p_input_ids"].numel())
            timing = StepTiming(t1 - t0, (t2 - t1) * scale, (t3 - t2) * scale, tokens)
    finally:
        module.model.zero_grad(set_to_none=True)
        module.model.train(was_training)
        torch.set_rng_state(rng)
    assert timing is not None
    return timing


def probe_validation(module, texts: list[str], n: int = 32) -> float:
    """Seconds to embed one validation passage (from ``n`` of them)."""
    sample = texts[:n]
    if not sample:
        return 0.0
    was_training = module.model.training
    module.model.eval()
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            module._encode(sample, "passage", bs=len(sample))
            return (time.perf_counter() - t0) / len(sample)
    finally:
        module.model.train(was_training)


def estimate_line(steps: int, accum: int, timing: StepTiming, validations: int, val_texts: int,
                  val_s_per_text: float, world: int) -> str:
    step_s = timing.step_s * accum * 1.03   # + the optimizer step, a few percent on CPU
    val_s = val_texts * val_s_per_text / max(1, world)
    total = steps * step_s + validations * val_s
    line = f"{steps} steps at about {step_s:.1f} s each"
    if validations:
        line += (f" + {validations} validation{'s' if validations > 1 else ''} of {val_texts} passages at about "
                 f"{format_duration(val_s)} each")
    return (f"{line}: about {format_duration(total)} on this machine (probe: collate {timing.collate_s:.2f} s, "
            f"forward {timing.forward_s:.2f} s, backward {timing.backward_s:.2f} s, {timing.tokens} tokens a "
            f"micro-batch)")


def steps_within(budget_s: float, planned: int, accum: int, timing: StepTiming, val_every: int,
                 val_texts: int, val_s_per_text: float, world: int, base_free: bool = False) -> int:
    """The most optimizer steps (at most ``planned``, at least 1) whose estimated time, with the initial
    validation (unless ``base_free``: its passages' vectors come from the run's embedding store), one
    every ``val_every`` steps and one at the last step, fits in ``budget_s`` seconds (the same arithmetic
    as ``estimate_line``; the last step's pass is counted whether or not it falls on the cadence, which
    errs by one pass on the safe side)."""
    step_s = timing.step_s * accum * 1.03
    val_s = val_texts * val_s_per_text / max(1, world)
    per_step = step_s + (val_s / val_every if val_every > 0 and val_texts else 0.0)
    room = budget_s - ((1 if base_free else 2) * val_s if val_every > 0 and val_texts else 0.0)
    if per_step <= 0:
        return planned
    return max(1, min(planned, int(room // per_step)))


class TrainProgress(L.Callback):
    """Rank 0: optimizer steps done/total with loss, last validation nDCG@10, rate and ETA."""

    def __init__(self, total_steps: int | None = None):
        self.total_steps = total_steps  # set once the world size, hence the plan, is known
        self.bar: Any = None
        self.last_val: tuple[int, float] | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        # started at the first step, so the rate (and ETA) leaves out the base validation before it
        if self.bar is None and trainer.is_global_zero:
            done = int(trainer.global_step)  # a resumed run counts (and rates) only what is left
            desc = "train: steps" + (f" {done + 1}..{self.total_steps}" if done else "")
            self.bar = Progress(total=max(0, (self.total_steps or done) - done), desc=desc, unit="step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None or (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        post = {"loss": f"{float(loss):.4f}"}
        if self.last_val is not None:
            post["val nDCG@10"] = f"{self.last_val[1]:.4f} (step {self.last_val[0]})"
        self.bar.set_postfix(post)
        self.bar.update(1)

    def on_validation_end(self, trainer, pl_module) -> None:
        v = trainer.callback_metrics.get("val_ndcg@10")
        if v is not None:
            self.last_val = (int(trainer.global_step), float(v))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)

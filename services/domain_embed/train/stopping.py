"""Stopping the training worker early: on SIGTERM and SIGINT (finish the step, save ``last.ckpt``, exit
128+signal), and when ``train.budget_minutes`` is spent (:class:`BudgetDeadline`, at the end).

Lightning installs its own SIGTERM handler in ``fit``; it only raises after the current step *and*
the validation that follows it, and then exits with status 0. Kubernetes sends SIGTERM, waits the
pod's grace period, then SIGKILLs, so that is too late and says the wrong thing. This callback takes
the signals back when training starts. After the optimizer step in progress, every rank agrees to
stop (one of them having seen the signal is enough), the checkpoint is written, and the worker exits
with ``128 + signal``. A validation pass in progress is abandoned at its next batch; the checkpoint
written before it (see :class:`AtomicCheckpoints`) is the one a rerun resumes from.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Callable

import lightning as L

from .checkpointing import AtomicCheckpoints


class TrainingStopped(Exception):
    """Raised through ``trainer.fit`` once the checkpoint is saved; the worker exits ``exit_code``."""

    def __init__(self, signum: int, step: int | None):
        self.signum, self.step = int(signum), step
        self.exit_code = 128 + self.signum
        where = f" at step {step}" if step is not None else " before the first step"
        super().__init__(f"stopped by {signal.Signals(self.signum).name}{where}")


class StopOnSignal(L.Callback):
    def __init__(self, checkpoints: AtomicCheckpoints):
        self.checkpoints = checkpoints
        self.signum: int | None = None
        self.pending: int | None = None   # the step whose checkpoint was saved for a stop

    # ---------------------------------------------------------------- the handler
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"[train] {signal.Signals(signum).name}: stopping after this step (a checkpoint is saved)",
                  file=sys.stderr, flush=True)

    def check(self, step: int | None = None) -> None:
        """Raise :class:`TrainingStopped` if a signal arrived (used outside the step loop)."""
        if self.signum is not None:
            raise TrainingStopped(self.signum, self.pending if step is None else step)

    # ---------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.install()  # Lightning's SignalConnector replaced ours when fit began

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.pending is not None or (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return  # mid-accumulation: the optimizer step is not complete
        # Every rank decides together: a rank that saves while another trains on would deadlock.
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        step = int(trainer.global_step)
        if self.checkpoints.saved_step != step:
            self.checkpoints.save_last(trainer)
        # Raise at the next hook, once the module has logged this step's metrics row.
        self.pending = step

    def _raise_pending(self) -> None:
        if self.pending is not None:
            raise TrainingStopped(self.signum or signal.SIGTERM, self.pending)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._raise_pending()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._raise_pending()


class BudgetDeadline(L.Callback):
    """``train.budget_minutes`` as a deadline, not only a plan. The plan (``worker.fit_budget``) comes from
    a timed probe; when the steps then run slower than the probe did (a machine that got busier), the plan
    would overrun the budget by the slowdown. After each optimizer step this checks whether the next one,
    and the validation the run would then end on, still fit before the deadline; when they do not, the
    plan ends at this step (``max_steps``), so the step is checkpointed, validated and shipped as a planned
    run of that length would be, and ``on_stop(step, seconds_a_step)`` records it for a resume. Inactive
    until :meth:`arm`; one process only (the budget is off with more than one)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.step_s = 0.0           # the probe's estimate of one optimizer step
        self.val_s = 0.0            # the probe's estimate of one validation pass
        self.on_stop: Callable[[int, float], None] | None = None
        self.stopped_at: int | None = None
        self._step_t0: float | None = None
        self._val_t0: float | None = None
        self._steps_s: list[float] = []   # each optimizer step's duration, validation excluded
        self._last_val = 0.0

    def arm(self, budget_s: float, step_s: float, val_s: float, on_stop: Callable[[int, float], None],
            start: float | None = None) -> None:
        self.deadline = (time.monotonic() if start is None else start) + budget_s
        self.step_s, self.val_s, self.on_stop = float(step_s), float(val_s), on_stop

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self._step_t0 = time.monotonic()   # the step's first micro-batch

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_t0 = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_t0 is not None:
            self._last_val = time.monotonic() - self._val_t0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        now = time.monotonic()
        if self._step_t0 is not None:
            self._steps_s.append(now - self._step_t0)
        step = int(trainer.global_step)
        if self.deadline is None or self.stopped_at is not None or step >= trainer.max_steps:
            return
        # the next step at the rate seen so far (never faster than the probe), then the validation the run
        # may end on (the cadence's or the final one): at most one of each, so the overrun is at most one
        # step's misestimate
        seen = sum(self._steps_s) / len(self._steps_s) if self._steps_s else 0.0
        next_step = max(self.step_s, seen)
        last_val = max(self.val_s, self._last_val)
        if now + next_step + last_val <= self.deadline:
            return
        self.stopped_at = step
        trainer.fit_loop.epoch_loop.max_steps = step
        if self.on_stop is not None:
            self.on_stop(step, seen)

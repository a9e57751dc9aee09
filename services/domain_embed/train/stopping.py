"""SIGTERM and SIGINT in the training worker: finish the step, save ``last.ckpt``, exit 128+signal.

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
from typing import Any

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

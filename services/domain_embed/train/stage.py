"""The ``train`` stage: mine/train.jsonl + split/ -> train/model (+ metrics.jsonl, checkpoints/).

Training runs in a child process (``domain_embed.train.worker``) so that Lightning can launch the
other DDP ranks by re-running that command, and torchrun's environment passes through unchanged.
Killing the stage and running it again resumes from ``train/checkpoints/last.ckpt``. On SIGTERM or
SIGINT the stage stops the worker's whole process group (every DDP rank): each rank finishes its
step, ``last.ckpt`` is saved, and the command exits 128+signal within ``DOMAIN_EMBED_STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from omegaconf import OmegaConf

from ..errors import Interrupted, UserError
from ..rundir import (StageContext, atomic_write_text, kill_child, register_child, stop_deadline, stop_timeout_s,
                      unregister_child)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def stop_worker(proc: subprocess.Popen) -> int | None:
    """SIGTERM the worker's process group (every rank): each saves a checkpoint after its current
    step and exits. Past the stop deadline, less a margin to exit ourselves, SIGKILL the group."""
    kill_child(proc, True, signal.SIGTERM)
    deadline = stop_deadline() or (time.monotonic() + stop_timeout_s())
    try:
        return proc.wait(timeout=max(1.0, deadline - time.monotonic() - 3.0))
    except subprocess.TimeoutExpired:
        kill_child(proc, True, signal.SIGKILL)
        print("[train] the worker did not stop in time and was killed; a rerun resumes from the last periodic "
              "checkpoint", file=sys.stderr, flush=True)
        return proc.poll()


def run(ctx: StageContext) -> dict[str, Any]:
    import json

    from .merge import check_alpha

    check_alpha(ctx.conf.train.base_mix)  # before minutes of training, not after
    if not float(ctx.conf.train.distill_base) >= 0.0:
        raise UserError(f"train.distill_base={ctx.conf.train.distill_base} is negative; give the weight of the "
                        f"regulariser toward the base, >= 0 (0 = off, 1 = as much as the contrastive loss)")
    if not float(ctx.conf.train.symmetric) >= 0.0:
        raise UserError(f"train.symmetric={ctx.conf.train.symmetric} is negative; give the weight of the reverse "
                        f"(passage -> query) term, >= 0 (0 = off, 1 = as much as the query -> passage term)")
    teacher = ctx.conf.train.teacher
    if teacher.path:
        from .teacher import teacher_path

        if not float(teacher.weight) >= 0.0 or not float(teacher.temperature) > 0.0:
            raise UserError(f"train.teacher.weight={teacher.weight}, train.teacher.temperature={teacher.temperature}: "
                            f"give a weight >= 0 (1 = as much as the contrastive loss) and a temperature > 0 (0.05)")
        teacher_dir = teacher_path(teacher.path)  # before minutes of training, not after
    tdir = ctx.dir
    if ctx.force:
        forget_checkpoints(tdir, os.environ, ctx.log)
    cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
    cfg["_quiet"] = ctx.quiet  # a flag of the stage, not a config key: the worker reads it apart
    # Freeze the model path so the worker (maybe another pod) needs no registry-package lookup.
    cfg["model"]["path"] = ctx.spec().model_path
    if teacher.path:
        cfg["train"]["teacher"]["path"] = str(teacher_dir)
    atomic_write_text(tdir / "run_config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (tdir / "summary.json").unlink(missing_ok=True)
    from .worker import error_file

    err = error_file(tdir)  # this rank's own: another rank's message stays for that rank's stage to read
    err.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "domain_embed.train.worker", str(ctx.run_dir)]
    ctx.log(f"training: {' '.join(cmd)}")
    # Its own process group: a stop reaches every DDP rank the worker launched, and nothing else.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    register_child(proc, group=True)
    try:
        rc = proc.wait()
    except BaseException:
        stop_worker(proc)
        raise
    finally:
        unregister_child(proc)
    if rc == 2 and err.is_file():
        raise UserError(err.read_text().strip())
    if rc in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        # the worker itself was signalled (not through this stage): it saved a checkpoint and stopped
        raise Interrupted(rc - 128)
    if rc != 0:
        ckpt = tdir / "checkpoints" / "last.ckpt"
        then = (f"rerun `domain-embed train` to resume from {ckpt}" if ckpt.is_file() else
                "no checkpoint was saved, so a rerun starts over")
        raise RuntimeError(f"training process exited with code {rc} (its traceback is above); {then}")
    summary = json.loads((tdir / "summary.json").read_text())
    ctx.log(validation_line(summary))
    return summary


def forget_checkpoints(tdir, env, log) -> None:
    """``--force`` means "train again", not "resume the finished run": the checkpoints go. Except when
    torchrun restarts its workers (``TORCHELASTIC_RESTART_COUNT`` > 0, after a rank failed or a node was
    replaced): it runs the same command again, ``--force`` included, and deleting then would throw away
    the forced run's own progress, so every restart would train from step 0."""
    restart = str(env.get("TORCHELASTIC_RESTART_COUNT", "0")).strip() or "0"
    if restart != "0":
        log(f"--force under torchrun restart {restart}: resuming this run's checkpoints, not deleting them")
        return
    for name in ("last.ckpt", "best.ckpt", "fingerprint.json"):
        (tdir / "checkpoints" / name).unlink(missing_ok=True)


def validation_line(summary: dict[str, Any]) -> str:
    """What training says of its validation: the base's and the shipped step's nDCG@10, and when the
    shipped step scored below the base there, that the held-out evaluation decides (a few validation
    queries are noisy; the quality gate keeps a model that loses to its base from shipping)."""
    base, best, step = summary.get("base_val_ndcg@10"), summary.get("best_val_ndcg@10"), summary.get("best_step")

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{float(v):.4f}"

    if best is None and base is not None:
        return (f"trained {summary['steps']} steps; validation nDCG@10 base {f(base)}; the last step is shipped "
                f"unvalidated (no earlier trained step to choose between) -- the held-out evaluation scores it")
    if best is None:
        return f"trained {summary['steps']} steps; no validation (train.val_every_n_steps=0, or no validation split)"
    line = f"trained {summary['steps']} steps; validation nDCG@10 base {f(base)} -> best {f(best)} (step {step})"
    if base is not None and float(best) < float(base):
        line += (f"; below the base on the {summary.get('val_queries')} validation queries -- the held-out "
                 f"evaluation and its quality gate decide")
    return line

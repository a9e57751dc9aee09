"""The ``train`` stage: mine/train.jsonl + split/ -> train/model (+ metrics.jsonl, checkpoints/).

Training runs in a child process (``domain_embed.train.worker``) so that Lightning can launch the
other DDP ranks by re-running that command, and torchrun's environment passes through unchanged.
Killing the stage and running it again resumes from ``train/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from omegaconf import OmegaConf

from ..errors import UserError
from ..rundir import StageContext, atomic_write_text


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def run(ctx: StageContext) -> dict[str, Any]:
    import json

    tdir = ctx.dir
    if ctx.force:
        # --force means "train again", not "resume the finished run"
        for name in ("last.ckpt", "best.ckpt", "fingerprint.json"):
            (tdir / "checkpoints" / name).unlink(missing_ok=True)
    cfg = OmegaConf.to_container(ctx.cfg, resolve=True)
    cfg["_quiet"] = bool(ctx.quiet)
    # Freeze the model path so the worker (maybe another pod) needs no registry-package lookup.
    cfg["model"]["path"] = ctx.spec().model_path
    atomic_write_text(tdir / "run_config.yaml", OmegaConf.to_yaml(OmegaConf.create(cfg)))
    (tdir / "summary.json").unlink(missing_ok=True)
    (tdir / ".error").unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "domain_embed.train.worker", str(ctx.run_dir)]
    ctx.log(f"training: {' '.join(cmd)}")
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    err = tdir / ".error"
    if rc == 2 and err.is_file():
        raise UserError(err.read_text().strip())
    if rc != 0:
        raise RuntimeError(f"training process exited with code {rc}; rerun `domain-embed train` to resume from "
                           f"{tdir / 'checkpoints' / 'last.ckpt'}")
    summary = json.loads((tdir / "summary.json").read_text())
    ctx.log(f"trained {summary['steps']} steps; validation nDCG@10 base {summary['base_val_ndcg@10']} -> "
            f"best {summary['best_val_ndcg@10']} (step {summary['best_step']})")
    return summary

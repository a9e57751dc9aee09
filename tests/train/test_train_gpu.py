"""GPU-only checks (skipped on CPU machines): bf16-mixed training on the GPU.

The faiss GPU index has its own test, which asserts that faiss sees the GPU: tests/mine/test_mine_gpu.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.rundir import run_stage
from domain_embed.stages import STAGES
from split_fixture import write_split

pytestmark = pytest.mark.gpu


def test_precision_auto_is_bf16_on_a_bf16_gpu():
    import torch

    from domain_embed.train.worker import resolve_precision

    assert resolve_precision("auto") == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true")


def test_bf16_training_on_gpu(tmp_path):
    run = write_split(tmp_path / "run")
    over = ["model.max_query_length=32", "model.max_passage_length=64", "train.batch_size=2", "train.num_negatives=2",
            "train.max_steps=4", "train.val_every_n_steps=2", "train.accelerator=gpu", "train.devices=1"]
    cfg = load_config(run, over)
    m = run_stage(STAGES["mine"], run, cfg, STAGES, quiet=True)
    assert m["counts"]["queries"] == 20
    p = subprocess.run([str(Path(sys.executable).parent / "domain-embed"), "train", "--run-dir", str(run), "--quiet"],
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((run / "train" / "summary.json").read_text())
    assert summary["precision"] == "bf16-mixed" and summary["steps"] == 4

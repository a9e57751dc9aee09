"""FAISS on the GPU: what mining uses on a GPU cluster (faiss-gpu, same code path as faiss-cpu).

Marked gpu, so a CPU machine skips it (tests/conftest.py). On a GPU machine it asserts: faiss must
see the GPU (faiss-cpu never does, so a GPU host with only faiss-cpu fails here instead of passing
without testing anything), the index must really live on the GPU, and its neighbours must equal the
CPU search's.
"""

from __future__ import annotations

import numpy as np
import pytest

from domain_embed.config import load_config
from domain_embed.mine.mining import build_index, search
from domain_embed.rundir import read_jsonl, run_stage
from domain_embed.stages import STAGES
from split_fixture import write_split

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def faiss():
    import faiss as f

    assert hasattr(f, "get_num_gpus") and f.get_num_gpus() > 0, (
        "faiss sees no GPU: this is a faiss-cpu build; install a faiss GPU build (e.g. faiss-gpu-cu12) for GPU mining")
    return f


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_gpu_index_lives_on_the_gpu_and_matches_cpu_search(faiss, kind):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(32, 64))
    emb = _unit(centers[rng.integers(0, 32, size=3000)] + 0.3 * rng.normal(size=(3000, 64)))
    queries = _unit(centers[rng.integers(0, 32, size=100)] + 0.3 * rng.normal(size=(100, 64)))
    gpu = build_index(emb, kind, use_gpu="true", nprobe=8)
    cpu = build_index(emb, kind, use_gpu="false", nprobe=8)
    assert "Gpu" in type(gpu).__name__ or "IndexReplicas" in type(gpu).__name__ or "IndexShards" in type(gpu).__name__, \
        f"use_gpu=true built a {type(gpu).__name__}, not a GPU index"
    assert "Gpu" not in type(cpu).__name__
    gs, gi = search(gpu, queries, 10)
    cs, ci = search(cpu, queries, 10)
    assert np.allclose(gs, cs, atol=1e-3)                   # fp32 on both; order of ties may differ
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(gi, ci)]) >= 0.99
    assert (search(gpu, emb[:10], 1)[1][:, 0] == np.arange(10)).all()


def test_mine_stage_with_use_gpu_true(faiss, tmp_path):
    run = write_split(tmp_path / "run")
    cfg = load_config(None, ["model.max_query_length=32", "model.max_passage_length=64", "mine.use_gpu=true"],
                      save=False)
    m = run_stage(STAGES["mine"], run, cfg, STAGES, quiet=True)
    assert m["counts"]["queries"] == 20 and len(list(read_jsonl(run / "mine" / "train.jsonl"))) == 20

"""The key=value arguments the chart gives every stage compose in the real Hydra tree: a renamed
config key breaks this test instead of a pipeline Job hours into a cluster run."""

from __future__ import annotations

import pytest

from domain_embed.config import load_config

VALUE_SET_NAMES = ["default", "multinode-gpu", "indexed-job"]


def _stage_containers(dh, docs):
    for d in docs:
        if d["kind"] not in ("Job", "PyTorchJob"):
            continue
        for pod in dh.pod_specs(d):
            for c in pod["containers"]:
                if "--run-dir" in c.get("args", []):
                    yield d, c


@pytest.mark.parametrize("value_set", VALUE_SET_NAMES)
def test_stage_overrides_compose(rendered, dh, value_set):
    seen = 0
    for doc, c in _stage_containers(dh, rendered[value_set]):
        args = c["args"]
        run_dir = args[args.index("--run-dir") + 1]
        overrides = [a for a in args if a != "--run-dir" and a != run_dir]
        cfg = load_config(None, overrides, save=False)
        assert cfg.name == doc["metadata"]["labels"]["domain-embed/run"] == run_dir.rsplit("/", 1)[1]
        assert cfg.llm.kind == "remote" and cfg.llm.base_url.startswith("http")
        assert cfg.model.path.startswith("/data/base-models/")
        seen += 1
    assert seen >= 6


def test_multinode_training_config(rendered, dh):
    (doc, c), *_ = [(d, c) for d, c in _stage_containers(dh, rendered["multinode-gpu"]) if d["kind"] == "PyTorchJob"]
    args = c["args"]
    cfg = load_config(None, args[2:], save=False)
    assert (cfg.train.devices, cfg.train.num_nodes, cfg.train.strategy) == (8, 4, "fsdp")
    assert cfg.train.precision == "bf16-mixed" and cfg.corpus.path == "/data/corpus/nvidia-docs"
    # a 2048-dim base: its spec says so (it used to keep MiniLM's 384, and the first encode crashed)
    assert cfg.model.dim == 2048 and max(cfg.model.matryoshka_dims) == 2048 and cfg.model.max_passage_length == 512
    assert cfg.llm.base_url == "https://integrate.api.nvidia.com/v1" and cfg.llm.api_key_env == "NVIDIA_API_KEY"
    export = next(c for d, c in _stage_containers(dh, rendered["multinode-gpu"]) if "-export-" in d["metadata"]["name"])
    ecfg = load_config(None, export["args"][2:], save=False)
    assert ecfg.export.tensorrt is True and ecfg.export.fp16 is True


def test_a_misspelt_key_would_be_caught():
    from domain_embed.errors import UserError

    with pytest.raises(UserError, match="epochz"):
        load_config(None, ["train.epochz=3"], save=False)

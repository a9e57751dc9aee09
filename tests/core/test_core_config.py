"""Config composition, saved overrides, and the single encoding spec."""

from __future__ import annotations

import json

import pytest

from domain_embed.config import EncodingSpec, config_hash, load_config, resolve_path
from domain_embed.errors import UserError


def test_defaults_compose_and_spec(base_cfg):
    spec = EncodingSpec.from_config(base_cfg)
    assert spec.max_passage_length == base_cfg.model.max_passage_length
    assert (resolve_path(base_cfg.model.path) / "config.json").is_file()
    # all-MiniLM-L6-v2 declares no prompts, so "auto" gives none: the base is used as its authors meant
    assert base_cfg.model.query_prefix == "auto"
    assert spec.prefix("query") == spec.prefix("passage") == ""


def test_prefixes_follow_the_model_prompts_or_an_explicit_value(tmp_path, minilm_path):
    import shutil

    from domain_embed.config import model_prompts

    model = tmp_path / "e5-like"
    shutil.copytree(minilm_path, model)
    (model / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}}))
    assert model_prompts(model) == {"query": "query: ", "passage": "passage: "}
    spec = EncodingSpec.from_config(load_config(None, [f"model.path={model}"], save=False))
    assert (spec.query_prefix, spec.passage_prefix) == ("query: ", "passage: ")
    forced = EncodingSpec.from_config(load_config(None, ['model.query_prefix="q> "', 'model.passage_prefix=""'],
                                                  save=False))
    assert (forced.query_prefix, forced.passage_prefix) == ("q> ", "")


def test_unknown_key_is_a_user_error():
    with pytest.raises(UserError, match="train.nonexistent"):
        load_config(None, ["train.nonexistent=3"], save=False)


def test_not_key_value_is_a_user_error():
    with pytest.raises(UserError, match="key=value"):
        load_config(None, ["train.max_steps"], save=False)


def test_missing_package_is_a_user_error():
    with pytest.raises(UserError, match="not installed"):
        resolve_path("pkg:no_such_package_xyz")


def test_overrides_persist_in_run_dir(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(run, ["train.max_steps=7", "mine.num_negatives=3"])
    assert cfg.train.max_steps == 7
    assert (run / "config.yaml").is_file()
    # a later command in the same run sees the earlier overrides, and can replace one
    cfg2 = load_config(run, ["train.max_steps=9"])
    assert cfg2.train.max_steps == 9 and cfg2.mine.num_negatives == 3
    saved = json.loads((run / "overrides.json").read_text())
    assert saved.count("train.max_steps=9") == 1 and "train.max_steps=7" not in saved


def test_config_hash_tracks_only_named_sections(base_cfg):
    other = load_config(None, ["train.max_steps=123"], save=False)
    assert config_hash(base_cfg, ["mine"]) == config_hash(other, ["mine"])
    assert config_hash(base_cfg, ["train"]) != config_hash(other, ["train"])


def test_spec_roundtrip(spec):
    assert EncodingSpec.from_dict(json.loads(spec.to_json())) == spec


def test_a_dim_the_model_does_not_give_is_a_user_error_before_any_encoding(tmp_path, minilm_path):
    """model.dim=2048 with MiniLM (384) used to fail inside the first encode with a numpy broadcast error;
    the chart's multi-node example paired a 2048-dim base with the MiniLM config that way."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cfg = load_config(None, ["model.dim=2048"], save=False)
    with pytest.raises(UserError, match=r"model.dim=2048, but the model at .* gives 384-dimensional vectors.*"
                                        r"set model.dim=384"):
        EncodingSpec.from_config(cfg)
    assert EncodingSpec.from_config(load_config(None, [], save=False)).dim == 384
    # a folder with no config.json (a serving image without the base model) is not checked
    bare = tmp_path / "bare"
    bare.mkdir()
    assert EncodingSpec.from_config(cfg, model_path=bare).dim == 2048
    # and the CLI says so with exit 2, no traceback
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    src = sorted((Path(__file__).resolve().parents[2] / "data" / "sample").glob("*.htm*"))[:2]
    for p in src:
        shutil.copy(p, corpus / p.name)
    proc = subprocess.run([str(Path(sys.executable).parent / "domain-embed"), "curate", "--run-dir",
                           str(tmp_path / "run"), f"corpus.path={corpus}", "model.dim=2048"],
                          capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                             "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.dim=2048, but the model" in proc.stderr and "Traceback" not in proc.stderr

"""The encoding spec travels with the trained model: export, evaluation and serving take it from
train/model/encoding_spec.json and refuse a config that disagrees, naming both values.

Real stages on a real model directory written by the train stage's own writer (save_model_dir).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domain_embed.config import EncodingSpec, load_config, model_spec
from domain_embed.errors import UserError
from domain_embed.rundir import atomic_write_json, sha256_path

BIN = Path(sys.executable).parent / "domain-embed"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=600, env=ENV)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """train/model as the train stage writes it (with encoding_spec.json), and a passing gate."""
    from transformers import AutoModel, AutoTokenizer

    from domain_embed.train.model_dir import save_model_dir

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mine"))
    from split_fixture import write_split

    run = write_split(tmp_path_factory.mktemp("spec") / "run")
    cfg = load_config(run, [])
    spec = EncodingSpec.from_config(cfg)
    save_model_dir(AutoModel.from_pretrained(spec.model_path), AutoTokenizer.from_pretrained(spec.model_path), spec,
                   run / "train" / "model", {"base_model_name": "test"})
    atomic_write_json(run / "train" / "manifest.json",
                      {"stage": "train", "outputs": {"train/model": sha256_path(run / "train" / "model")}})
    atomic_write_json(run / "evaluate" / "report.json", {"gate": {"passed": True}})
    atomic_write_json(run / "evaluate" / "manifest.json",
                      {"stage": "evaluate", "outputs": {"evaluate/report.json": sha256_path(run / "evaluate" / "report.json")}})
    return run


def test_model_spec_comes_from_the_model_directory(trained_run):
    cfg = load_config(trained_run, [], save=False)
    spec = model_spec(cfg, trained_run / "train" / "model")
    saved = json.loads((trained_run / "train" / "model" / "encoding_spec.json").read_text())
    assert spec.max_query_length == saved["max_query_length"] == 64
    assert spec.model_path == str(trained_run / "train" / "model")
    with pytest.raises(UserError) as err:
        model_spec(load_config(trained_run, ["model.max_query_length=32", "model.pooling=cls"], save=False),
                   trained_run / "train" / "model", label="train/model")
    msg = str(err.value)
    assert "model.max_query_length=32 in the config, but train/model was trained with 64" in msg
    assert "model.pooling=cls in the config, but train/model was trained with mean" in msg
    assert "retrain with `domain-embed train --force`" in msg
    with pytest.raises(UserError, match=r"model.query_prefix='query: ' in the config, but train/model was trained "
                                        r"with ''"):
        model_spec(load_config(trained_run, ["model.query_prefix='query: '"], save=False),
                   trained_run / "train" / "model", label="train/model")


def test_export_alone_refuses_a_drifted_config_and_runs_with_the_trained_one(trained_run):
    bad = _cli("export", "--run-dir", str(trained_run), "--quiet", "model.max_query_length=32")
    assert bad.returncode == 2, bad.stderr[-2000:]
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("domain-embed export: error:")]
    assert len(errors) == 1 and "Traceback" not in bad.stderr
    assert "model.max_query_length=32 in the config, but train/model was trained with 64" in errors[0]
    assert not (trained_run / "triton").exists()

    # back to the trained value (the override is saved in the run, so it must be set again)
    ok = _cli("export", "--run-dir", str(trained_run), "--quiet", "model.max_query_length=64")
    assert ok.returncode == 0, ok.stderr[-3000:]
    served = json.loads((trained_run / "triton" / "encoding.json").read_text())
    assert served["max_query_length"] == 64 and served["max_passage_length"] == 256

    # evaluation of the trained model refuses the same drift, before any work
    ev = _cli("evaluate", "--run-dir", str(trained_run), "--quiet", "model.max_passage_length=128")
    assert ev.returncode == 2
    assert "model.max_passage_length=128 in the config, but train/model was trained with 256" in ev.stderr

    # and so does serving the exported model
    sv = _cli("serve", str(trained_run), "model.max_query_length=48")
    assert sv.returncode == 2, sv.stderr[-2000:]
    assert "model.max_query_length=48 in the config, but the exported model in triton/ has 64" in sv.stderr

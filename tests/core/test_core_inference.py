"""Inference-only encoding through ONNX Runtime: the same vectors as the torch Encoder (fp32), the
int8 graph only when its parity check passes, and the graph built once per model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from domain_embed.errors import UserError

TEXTS = ["How do I create an index concurrently?", "VACUUM reclaims storage occupied by dead tuples.", "a",
         "SELECT * FROM pg_stat_activity WHERE state = 'active';",
         " ".join(["Write-ahead logging ensures durability by logging changes before they are applied."] * 40)]


def _mcfg(tmp_path, **kw):
    return OmegaConf.create({"inference_backend": "auto", "int8": "false", "int8_min_cosine": 0.99,
                             "onnx_cache_dir": str(tmp_path / "onnx"), **kw})


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


def test_onnx_fp32_matches_the_torch_encoder(spec, onnx_cache):
    from domain_embed.encoding import Encoder
    from domain_embed.inference import OnnxEncoder, _graph_dir, cosine_rows, inference_encoder

    # what a build killed mid-export left in the shared cache goes when the next build holds the lock
    stale = _graph_dir(onnx_cache / "onnx", spec.model_path, spec) / ".model.onnx.99999.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 4096)
    enc = inference_encoder(spec, _mcfg(onnx_cache), log=lambda m: None)
    assert not stale.exists()
    assert isinstance(enc, OnnxEncoder) and enc.backend == "onnx" and enc.precision == "fp32"
    assert enc.providers[0] == "CPUExecutionProvider"
    assert enc.info["parity_vs_torch"]["min_cosine"] > 0.999
    ref = Encoder(spec, device="cpu", batch_size=2)
    for kind in ("query", "passage"):
        a, b = ref.encode(TEXTS, kind), enc.encode(TEXTS, kind)
        assert b.shape == (len(TEXTS), spec.dim) and b.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
        assert cosine_rows(a, b).min() > 0.999
    # built once: a second encoder reuses the cached graph and its recorded build
    (build,) = list((onnx_cache / "onnx").glob("*/build.json"))
    before = build.stat().st_mtime_ns
    inference_encoder(spec, _mcfg(onnx_cache), log=lambda m: None)
    assert build.stat().st_mtime_ns == before
    assert json.loads(build.read_text())["passed"] is True


def test_torch_backend_and_bad_choices(spec, onnx_cache):
    from domain_embed.inference import inference_encoder

    enc = inference_encoder(spec, _mcfg(onnx_cache, inference_backend="torch"), log=lambda m: None)
    assert enc.backend == "torch" and enc.info["why"] == "model.inference_backend=torch"
    with pytest.raises(UserError, match="inference_backend"):
        inference_encoder(spec, _mcfg(onnx_cache, inference_backend="tensorrt"))
    with pytest.raises(UserError, match="int8"):
        inference_encoder(spec, _mcfg(onnx_cache, int8="maybe"))


def test_int8_is_used_only_where_allowed_and_when_parity_passes(spec, onnx_cache):
    from domain_embed.inference import inference_encoder

    logs: list[str] = []
    q = inference_encoder(spec, _mcfg(onnx_cache, int8="auto"), allow_int8=True, parity_texts=TEXTS,
                          log=logs.append)
    assert q.precision == "int8", logs
    par = q.info["parity_vs_fp32"]
    assert par["texts"] > 0 and 0.99 <= par["min_cosine"] <= par["mean_cosine"] <= 1.0 + 1e-6
    # evaluation never gets int8, whatever the config says
    assert inference_encoder(spec, _mcfg(onnx_cache, int8="true"), allow_int8=False, log=logs.append).precision == "fp32"
    # a threshold int8 cannot meet: auto falls back to fp32 and says why; true refuses
    strict = _mcfg(onnx_cache, int8="auto", int8_min_cosine=0.999999)
    fp = inference_encoder(spec, strict, allow_int8=True, parity_texts=TEXTS, log=logs.append)
    assert fp.precision == "fp32" and fp.info["int8_rejected"]["min_cosine"] < 0.999999
    assert any("int8 vectors disagree" in m for m in logs)
    with pytest.raises(UserError, match="int8_min_cosine"):
        inference_encoder(spec, _mcfg(onnx_cache, int8="true", int8_min_cosine=0.999999), allow_int8=True,
                          parity_texts=TEXTS, log=logs.append)
    # the quantised graph keeps its down-projections in fp32
    import onnx

    (int8_path,) = list((onnx_cache / "onnx").glob("*/model.int8-*.onnx"))
    from domain_embed.onnx_graph import INT8_RECIPE

    # named by its recipe: a graph quantised another way (a cache from before a change) is never reused
    assert int8_path.name == f"model.int8-{INT8_RECIPE}.onnx"
    assert list(int8_path.parent.glob(f"{int8_path.stem}-parity-*.json"))
    ops = [n.op_type for n in onnx.load(str(int8_path)).graph.node]
    assert ops.count("MatMulInteger") == 30 and ops.count("MatMul") == 12 + 6


_BUILDER = r"""
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from domain_embed.config import EncodingSpec, load_config
from domain_embed.inference import inference_encoder

root, go, ready = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
spec = EncodingSpec.from_config(load_config(None, [], save=False))
mcfg = OmegaConf.create({"inference_backend": "onnx", "int8": "true", "int8_min_cosine": 0.9,
                         "onnx_cache_dir": str(root)})
ready.touch()
while not go.exists():  # both processes past their imports, then both ask for the graph at once
    time.sleep(0.01)
enc = inference_encoder(spec, mcfg, allow_int8=True, log=lambda m: print(m, flush=True))
v = enc.encode(["How do I create an index concurrently?"], "query")
print("USED", enc.backend, enc.precision, round(float((v * v).sum()), 4), flush=True)
"""


def test_two_processes_on_an_empty_cache_build_the_graph_once(tmp_path):
    """The base's graph lives in a cache every run on the machine shares: two runs starting together on a
    fresh one (two corpora, two benchmarks) used to write the same temporary file. One builds, the other
    waits for it and uses what it built."""
    import os
    import subprocess
    import sys
    import time

    script = tmp_path / "builder.py"
    script.write_text(_BUILDER)
    root, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(root), str(go), str(tmp_path / f"ready{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert all(p.poll() is None for p in procs) and time.time() < deadline, [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    text = "\n".join(outs)
    assert text.count("building the ONNX inference graph") == 1, text
    assert text.count("quantising model.onnx to int8") == 1, text
    assert text.count("waiting for another process building the ONNX graph") == 1, text
    assert text.count("USED onnx int8 1.0") == 2, text
    (graph,) = [p for p in root.iterdir() if p.is_dir()]
    assert json.loads((graph / "build.json").read_text())["passed"]
    assert not [f.name for f in graph.iterdir() if f.name.endswith(".tmp")]

"""A stage killed mid-write (SIGKILL: the OOM killer, a lost node) and run again: the rerun succeeds, its
outputs equal an uninterrupted run's, and the temporary files the killed writer left behind are gone,
not piled up one more per crash (a SIGKILL runs no cleanup; the exporter's is a whole model).

Each test starts the real ``domain-embed`` command and kills it while a temporary file of its outputs exists.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domain_embed.rundir import atomic_write_json, sha256_path
from domain_embed.stages import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mine"))
from split_fixture import write_split  # noqa: E402

CLI = str(Path(sys.executable).parent / "domain-embed")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _temps(run: Path) -> list[str]:
    return sorted(p.relative_to(run).as_posix() for p in run.rglob(".*.tmp"))


def _kill_when(cmd: list[str], run: Path, pattern: str, sig: int = signal.SIGKILL, timeout: float = 300) -> int:
    """Start ``cmd``; the moment a file matches ``pattern`` (under ``run``), send ``sig`` to its process group."""
    proc = subprocess.Popen(cmd, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if glob.glob(str(run / pattern), recursive=True):
                os.killpg(proc.pid, sig)
                break
            time.sleep(0.001)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _hid(prefix: str, s: str) -> str:
    return f"{prefix}_{hashlib.sha256(s.encode()).hexdigest()[:16]}"


def _split_inputs(run: Path, n_docs: int = 400, per_doc: int = 30) -> None:
    """curate/chunks.jsonl and synth/qa.jsonl with the manifests that vouch for them: 12,000 chunks, large
    enough that the split stage spends a while in each of its atomic writes."""
    words = ("index vacuum replica snapshot tuple page buffer commit rollback lock wal checkpoint "
             "partition planner cost join hash merge sort scan").split()
    chunks, qa = [], []
    for d in range(n_docs):
        doc = _hid("d", f"doc {d}")
        for j in range(per_doc):
            text = " ".join(words[(d * 7 + j * 3 + k) % len(words)] for k in range(120)) + f" doc {d} part {j}"
            cid = _hid("c", doc + text)
            chunks.append({"id": cid, "doc_id": doc, "text": text, "title": f"Doc {d}", "section": "",
                           "source": f"doc{d}.md", "n_tokens": 130})
            if j < 2:
                q = f"what does part {j} of doc {d} say?"
                qa.append({"id": _hid("q", q + cid), "question": q, "query_type": "factual", "segment_ids": [cid],
                           "doc_ids": [doc], "source": {"kind": "llm"}})
    for stage, rel, rows in (("curate", "curate/chunks.jsonl", chunks), ("synth", "synth/qa.jsonl", qa)):
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_json(run / stage / "manifest.json", {"stage": stage, "outputs": {rel: sha256_path(run / rel)}})


def test_split_killed_mid_write_reruns_to_the_same_outputs_and_leaves_no_temporary_files(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    _split_inputs(ref)
    shutil.copytree(ref, run)
    done = subprocess.run([CLI, "split", "--run-dir", str(ref), "--quiet"], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    cmd = [CLI, "split", "--run-dir", str(run), "--quiet"]
    left: list[str] = []
    for _ in range(3):  # the kill must land while a temporary file exists: retry if the stage outran it
        rc = _kill_when(cmd, run, "split/**/.*.tmp")
        left = _temps(run)
        if rc == -signal.SIGKILL and left:
            break
        shutil.rmtree(run / "split", ignore_errors=True)
    assert left, "never killed mid-write"
    assert not (run / "split" / "manifest.json").exists()

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(run) == [], f"the killed writer's temporary files outlived the rerun (was {left})"
    for rel in STAGES["split"].outputs:
        assert sha256_path(run / rel) == sha256_path(ref / rel), rel
    man = json.loads((run / "split" / "manifest.json").read_text())
    assert man["outputs"] == {rel: sha256_path(run / rel) for rel in STAGES["split"].outputs}


def _trained(run: Path, minilm: Path) -> None:
    """train/model (the base MiniLM), with the manifest the train stage would write."""
    shutil.copytree(minilm, run / "train" / "model")
    atomic_write_json(run / "train" / "manifest.json",
                      {"stage": "train", "outputs": {"train/model": sha256_path(run / "train" / "model")}})


def test_evaluate_stopped_while_building_its_models_graph_leaves_no_temporary_file(tmp_path, minilm_path):
    """The tuned model's ONNX graph is built inside the run (embeddings/onnx/<key>/, under its .build.lock):
    SIGTERM while the exporter writes .model.onnx.<pid>.tmp, and the rerun scores and leaves nothing behind."""
    run = write_split(tmp_path / "run")
    _trained(run, minilm_path)
    cmd = [CLI, "evaluate", "--run-dir", str(run), "--quiet"]
    rc = _kill_when(cmd, run, "embeddings/onnx/*/.model.onnx.*.tmp", signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, rc
    left = _temps(run)
    assert not (run / "evaluate" / "manifest.json").exists()

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(run) == [], f"left behind: {_temps(run)} (after the stop: {left})"
    report = json.loads((run / "evaluate" / "report.json").read_text())
    assert report["gate"]["passed"] and report["datasets"]["heldout"]["info"]["queries"] == 8


def _export_run(run: Path, minilm: Path) -> None:
    """train/model (the base MiniLM) and a passing evaluate/report.json, each with its manifest."""
    _trained(run, minilm)
    (run / "evaluate").mkdir(parents=True)
    atomic_write_json(run / "evaluate" / "report.json", {"gate": {"passed": True, "tolerance": 0.01}})
    atomic_write_json(run / "evaluate" / "manifest.json",
                      {"stage": "evaluate", "outputs": {"evaluate/report.json": sha256_path(run / "evaluate" / "report.json")}})


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_export_stopped_mid_onnx_export_leaves_no_model_sized_temporary_file(tmp_path, minilm_path, sig):
    """The exporter writes .model.onnx.<pid>.tmp (the whole model) for seconds: stopped there, by SIGKILL or by
    SIGTERM (whose unwinding the exporter's cleanup did not cover), the rerun exports and nothing is left."""
    run = tmp_path / "run"
    _export_run(run, minilm_path)
    cmd = [CLI, "export", "--run-dir", str(run), "--quiet"]
    rc = _kill_when(cmd, run, "export/.model.onnx.*.tmp", sig)
    assert rc in (-signal.SIGKILL, 128 + signal.SIGTERM), rc
    assert not (run / "export" / "manifest.json").exists()
    left = _temps(run)

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _temps(run) == [], f"left behind: {_temps(run)} (after the stop: {left})"
    man = json.loads((run / "export" / "manifest.json").read_text())
    assert man["outputs"]["export/model.onnx"] == sha256_path(run / "export" / "model.onnx")
    assert json.loads((run / "export" / "parity.json").read_text())["passed"] is True

"""`domain-embed status` against a real run directory (the mine stage really run): each stage's state is what
`run` would do with it (skip, redo and why, resume), and status itself writes nothing. Also: a key that a newer
version added, at its default, does not make a finished stage stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.rundir import run_dir_lock, run_stage
from domain_embed.stages import STAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mine"))
from split_fixture import write_split  # noqa: E402

CLI = str(Path(sys.executable).parent / "domain-embed")
TINY = ["model.max_query_length=32", "model.max_passage_length=64", "mine.num_negatives=3", "mine.top_k=10"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _status(run: Path, *over: str) -> dict:
    p = _cli("status", "--run-dir", str(run), "--json", *over)
    assert p.returncode == 0, p.stderr[-2000:]
    return {r["stage"]: r for r in json.loads(p.stdout)["stages"]}


def _snapshot(run: Path) -> dict[str, int]:
    return {str(f): f.stat().st_mtime_ns for f in run.rglob("*") if f.is_file()}


@pytest.fixture(scope="module")
def mined(tmp_path_factory) -> Path:
    run = write_split(tmp_path_factory.mktemp("status") / "run")
    cfg = load_config(run, TINY)  # saved: the CLI below sees the same overrides
    run_stage(STAGES["mine"], run, cfg, STAGES, quiet=True)
    return run


def test_status_says_what_run_would_do_and_writes_nothing(mined):
    before = _snapshot(mined)
    rows = _status(mined)
    assert rows["mine"]["state"] == "done" and rows["mine"]["counts"]["queries"] > 0
    assert rows["train"]["state"] == "not run" and rows["evaluate"]["state"] == "not run"
    # an override that changes mining: mine is stale and says which key, and the stage agrees when run
    rows = _status(mined, "mine.num_negatives=2")
    assert rows["mine"]["state"] == "stale"
    assert rows["mine"]["why"] == ["config changed: mine.num_negatives 3 -> 2"]
    text = _cli("status", "--run-dir", str(mined), "mine.num_negatives=2").stdout
    assert "config changed: mine.num_negatives 3 -> 2" in text and "next: domain-embed run" in text
    assert _snapshot(mined) == before, "status wrote or touched files"


def test_started_stage_altered_input_and_a_busy_run(mined, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mined, run)
    (run / "train" / "checkpoints").mkdir(parents=True)
    (run / "train" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert _status(run)["train"]["state"] == "started"
    with open(run / "split" / "train_qa.jsonl", "a") as fh:
        fh.write("\n")
    mine = _status(run)["mine"]
    assert mine["state"] == "stale" and "changed since the split stage wrote it" in mine["why"][0]
    with run_dir_lock(run):  # another process works in the run: status says who, and still answers
        p = _cli("status", "--run-dir", str(run))
    assert p.returncode == 0 and f"busy: pid {os.getpid()}" in p.stdout


def test_a_key_added_by_a_newer_version_at_its_default_keeps_a_stage_up_to_date(mined, tmp_path):
    """Adding model.trust_remote_code (default false) changed every stage's config hash, so upgrading made every
    finished stage of every run redo its work (hours of training). A new key at its default is no change; a key
    set to something else still is."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mined, run)
    man_path = run / "mine" / "manifest.json"
    man = json.loads(man_path.read_text())
    del man["config"]["model"]["trust_remote_code"]  # as a version without the key recorded it
    man["config_hash"] = "0" * 16
    man_path.write_text(json.dumps(man))
    assert _status(run)["mine"]["state"] == "done"
    p = _cli("mine", "--run-dir", str(run))
    assert p.returncode == 0 and "up to date" in p.stderr and "rerunning" not in p.stderr, p.stderr[-2000:]
    rewritten = json.loads(man_path.read_text())  # recorded now, so the next check is the plain hash compare
    assert rewritten["config_hash"] != "0" * 16 and rewritten["config"]["model"]["trust_remote_code"] is False
    # the same key away from its default is a change
    man["config"]["model"]["trust_remote_code"] = False
    man_path.write_text(json.dumps(man))
    rows = _status(run, "model.trust_remote_code=true")
    assert rows["mine"]["state"] == "stale"
    assert rows["mine"]["why"] == ["config changed: model.trust_remote_code false -> true"]

"""`python -m domain_embed.user_queries RUN QUERIES`, the drift helper for notebooks and notes, run for real: it
writes evaluate/drift.{json,md,png} and takes the run directory's lock as every stage does, so a stage starting
meanwhile (which clears its folder's temporary files first) cannot remove one of this helper's mid-write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from domain_embed.rundir import run_dir_lock


def _run_dir(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "run"
    (run / "curate").mkdir(parents=True)
    (run / "synth").mkdir()
    chunks = [{"id": f"c{i}", "text": f"VACUUM reclaims storage from dead tuples in table {i}."} for i in range(6)]
    qa = [{"question": f"What does VACUUM do to table {i}?", "query_type": "factual"} for i in range(6)]
    (run / "curate" / "chunks.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))
    (run / "synth" / "qa.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qa))
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"_id": f"r{i}", "text": t}) + "\n" for i, t in
                            enumerate(["how do i free space after deletes", "vacuum full lock", "autovacuum settings"])))
    return run, real


def _drift(run: Path, real: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domain_embed.user_queries", str(run), str(real), "--no-embed"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_drift_cli_writes_its_report_and_waits_its_turn_for_the_run(tmp_path):
    run, real = _run_dir(tmp_path)
    with run_dir_lock(run):  # a stage is working in the run: the helper says so instead of writing beside it
        busy = _drift(run, real)
    assert busy.returncode == 2, busy.stderr[-2000:]
    assert "another domain-embed process is working in" in busy.stderr and f"pid {os.getpid()}" in busy.stderr
    assert not (run / "evaluate" / "drift.json").exists()
    ok = _drift(run, real)
    assert ok.returncode == 0, ok.stderr[-2000:]
    report = json.loads((run / "evaluate" / "drift.json").read_text())
    assert report["real"]["n"] == 3 and report["synthetic"]["n"] == 6 and report["embedding"] is None  # --no-embed
    assert (run / "evaluate" / "drift.md").is_file() and (run / "evaluate" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    missing = _drift(tmp_path / "nope", real)
    assert missing.returncode == 2 and "no run at" in missing.stderr and not (tmp_path / "nope").exists()

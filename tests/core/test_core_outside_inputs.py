"""Files from outside the run directory take part in the up-to-date check by content.

The pipeline test runs the real `domain-embed run` (curate with NeMo Curator, synthesize with the
heading queries only, so no LLM is needed, split, and mine with MiniLM and FAISS) on six real pages,
edits one page, and checks that curate and every stage after it rerun, while an untouched or merely
touched corpus reruns nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domain_embed.config import load_config
from domain_embed.rundir import (OutsideInput, atomic_write_json, fingerprint_files, read_manifest, run_stage,
                                 sha256_path)
from domain_embed.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent / "domain-embed"
SPHINX = REPO / "tests" / "curate" / "fixtures" / "sphinx-python311"
# heading and title queries only: synthesize runs for real but needs no LLM server
NO_LLM = ["synth.types.factual=0", "synth.types.keyword=0", "synth.types.multi_hop=0"]
FIRST_FOUR = ["curate", "synth", "split", "mine"]


def _cli(run_dir: Path, corpus: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([str(BIN), "run", "--run-dir", str(run_dir), "--until", "mine", f"corpus.path={corpus}", *NO_LLM],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _stage_lines(stderr: str) -> list[str]:
    """The runner's one line per stage: "up to date", or why it reruns."""
    return [ln for ln in stderr.splitlines() if " up to date " in ln or "] rerunning: " in ln
            or (ln.endswith("] starting") and ln.startswith("["))]


def _ran(stderr: str) -> list[str]:
    return [ln[1:ln.index("]")] for ln in stderr.splitlines() if ln.startswith("[") and ln.endswith("] starting")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three real Sphinx pages and the three smallest PostgreSQL sample pages, one folder per site."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "python").mkdir()
    (root / "postgres").mkdir()
    for p in sorted(SPHINX.glob("*.html")):
        shutil.copy(p, root / "python" / p.name)
    sample = sorted((REPO / "data" / "sample").glob("*.html"), key=lambda p: p.stat().st_size)[:3]
    for p in sample:
        shutil.copy(p, root / "postgres" / p.name)
    return root


def test_edited_document_reruns_curate_and_every_stage_after_it(corpus, tmp_path):
    run = tmp_path / "run"
    first = _cli(run, corpus)
    assert _ran(first.stderr) == FIRST_FOUR

    man = read_manifest(run, "curate")
    listed = man["outside_inputs"]["corpus"]
    assert listed["root"] == str(corpus)
    assert sorted(f["path"] for f in listed["files"]) == sorted(p.relative_to(corpus).as_posix()
                                                                for p in corpus.rglob("*.html"))
    for f in listed["files"]:
        assert f["size"] == (corpus / f["path"]).stat().st_size and len(f["sha256"]) == 64
    assert "model.path" in man["outside_inputs"] and "model.path" in read_manifest(run, "mine")["outside_inputs"]

    # Sphinx decorations do not reach the chunks (their context lines are what heading queries see)
    chunks = [json.loads(ln) for ln in (run / "curate" / "chunks.jsonl").read_text().splitlines()]
    assert not [c for c in chunks if "¶" in c["text"] or "documentation" in c["title"]]
    assert any(c["title"] == "keyword — Testing for Python keywords" for c in chunks)

    untouched = _cli(run, corpus)
    assert _ran(untouched.stderr) == [] and untouched.stderr.count("up to date") == 4

    # a touch (new mtimes, same bytes) is not a change
    future = time.time() + 5
    for p in corpus.rglob("*.html"):
        os.utime(p, (future, future))
    touched = _cli(run, corpus)
    assert _ran(touched.stderr) == [], touched.stderr

    page = corpus / "python" / "keyword.html"
    page.write_text(page.read_text(encoding="utf-8").replace(
        "This module allows a Python program to determine", "This module lets a Python program determine"),
        encoding="utf-8")
    edited = _cli(run, corpus)
    lines = _stage_lines(edited.stderr)
    print("\n".join(lines))  # the lead's note quotes this
    assert _ran(edited.stderr) == FIRST_FOUR
    assert "[curate] rerunning: corpus changed: 1 edited (python/keyword.html)" in lines
    assert any(ln.startswith("[synth] rerunning: inputs changed: curate/chunks.jsonl") for ln in lines)
    edited_man = read_manifest(run, "curate")
    sha = {f["path"]: f["sha256"] for f in edited_man["outside_inputs"]["corpus"]["files"]}
    old = {f["path"]: f["sha256"] for f in listed["files"]}
    assert [k for k in sha if sha[k] != old[k]] == ["python/keyword.html"]

    # a new document is a change too, and a removed one
    extra_page = corpus / "python" / "nis-copy.html"
    shutil.copy(corpus / "python" / "nis.html", extra_page)
    try:
        added = _cli(run, corpus)
        assert "[curate] rerunning: corpus changed: 1 added (python/nis-copy.html)" in added.stderr
    finally:
        extra_page.unlink()
    removed = _cli(run, corpus)
    assert "[curate] rerunning: corpus changed: 1 removed (python/nis-copy.html)" in removed.stderr


def test_fingerprint_reuses_hashes_only_for_unchanged_size_and_mtime(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    old_t = time.time() - 60
    os.utime(f, (old_t, old_t))
    first = fingerprint_files(OutsideInput.of(tmp_path))
    assert first["reused_hashes"] == 0
    again = fingerprint_files(OutsideInput.of(tmp_path), first)
    assert again["reused_hashes"] == 1 and again["sha256"] == first["sha256"]
    f.write_text("world")                                  # same size, new mtime: read again
    os.utime(f, (old_t + 1, old_t + 1))
    edited = fingerprint_files(OutsideInput.of(tmp_path), again)
    assert edited["reused_hashes"] == 0 and edited["sha256"] != first["sha256"]
    # a file changed in the same clock tick as its hashing is never trusted by mtime
    g = tmp_path / "b.txt"
    g.write_text("fresh")
    racy = fingerprint_files(OutsideInput.of(g))
    assert fingerprint_files(OutsideInput.of(g), racy)["reused_hashes"] == 0


def _fake_work(calls: list):
    """Stand-in for the evaluation work only: the runner and its checks are the real ones."""
    def fn(ctx):
        calls.append(dict(ctx.extra))
        atomic_write_json(ctx.path("evaluate/report.json"), {"gate": {"passed": True}})
        (ctx.dir / "report.md").write_text("report\n")
        return {}
    return fn


def test_evaluate_real_queries_qrels_and_dataset_contents_are_inputs(tmp_path):
    sys.path.insert(0, str(REPO / "tests" / "mine"))
    from split_fixture import write_split

    run = write_split(tmp_path / "run")
    (run / "train" / "model").mkdir(parents=True)
    (run / "train" / "model" / "weights").write_text("w")
    atomic_write_json(run / "train" / "manifest.json", {"outputs": {"train/model": sha256_path(run / "train" / "model")}})
    rq, qrels, ds = tmp_path / "real.jsonl", tmp_path / "real.tsv", tmp_path / "beir"
    rq.write_text('{"text": "how do I vacuum"}\n')
    qrels.write_text("q\tc\t1\n")
    shutil.copytree(run / "split" / "eval_beir", ds)
    calls: list = []
    stage = dataclasses.replace(STAGES["evaluate"], fn=_fake_work(calls))
    extra = {"real_queries": rq, "qrels": qrels, "dataset": [ds]}
    cfg = load_config(None, [], save=False)
    m = run_stage(stage, run, cfg, STAGES, quiet=True, extra=extra)
    assert set(m["outside_inputs"]) == {"model.path", "--real-queries", "--qrels", "--dataset[0]"}
    assert [f["path"] for f in m["outside_inputs"]["--dataset[0]"]["files"]] == [
        "corpus.jsonl", "qrels/test.tsv", "queries.jsonl"]
    assert run_stage(stage, run, cfg, STAGES, quiet=True, extra=extra).get("skipped")
    for path, edit in ((rq, '{"text": "how do I analyze"}\n'), (qrels, "q\tc\t2\n"),
                       (ds / "qrels" / "test.tsv", (ds / "qrels" / "test.tsv").read_text() + "x\ty\t1\n")):
        n = len(calls)
        path.write_text(edit)
        assert not run_stage(stage, run, cfg, STAGES, quiet=True, extra=extra).get("skipped"), path
        assert len(calls) == n + 1
        assert run_stage(stage, run, cfg, STAGES, quiet=True, extra=extra).get("skipped")


def test_style_examples_file_contents_are_an_input(tmp_path):
    style = tmp_path / "style.txt"
    style.write_text("how do I create an index\n")
    cfg = load_config(None, [f"synth.style_examples_file={style}"], save=False)
    got = STAGES["synth"].outside_inputs(cfg, {})
    first = fingerprint_files(got["synth.style_examples_file"])
    assert [f["path"] for f in first["files"]] == ["style.txt"]
    assert "llm.local.weights" in got and got["llm.local.weights"].files[0].suffix == ".gguf"
    style.write_text("why is my query slow\n")
    assert fingerprint_files(STAGES["synth"].outside_inputs(cfg, {})["synth.style_examples_file"],
                             first)["sha256"] != first["sha256"]

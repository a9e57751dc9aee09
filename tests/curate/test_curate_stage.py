"""The curate stage end to end through the real runner, Curator stages and tokenizer, at tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from domain_embed.errors import UserError
from domain_embed.rundir import read_jsonl, read_manifest, run_stage
from domain_embed.stages import STAGES

CURATE = STAGES["curate"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, paras, binary):
    """Four real documents in four formats, an exact and a near duplicate, and junk to skip."""
    root = tmp_path_factory.mktemp("corpus")
    wal = paras("wal-intro.html", 3)
    mvcc = paras("mvcc-intro.html", 2)
    iso = paras("transaction-iso.html", 4)
    idx = paras("indexes-partial.html", 3)
    (root / "guide").mkdir()
    (root / "guide" / "wal.md").write_text("# Write-Ahead Logging\n\n" + "\n\n".join(wal) + "\n")
    (root / "guide" / "wal_copy.md").write_text("#  write-ahead logging\n\n" + "\n\n".join(wal).upper() + "\n")
    words = "\n\n".join(iso).split()
    for i in (10, 60, 110):  # a few words changed: a near duplicate
        words[i] = "CHANGED"
    (root / "isolation.txt").write_text("Transaction Isolation\n\n" + "\n\n".join(iso) + "\n")
    (root / "isolation_v2.txt").write_text("Transaction Isolation\n\n" + " ".join(words) + "\n")
    (root / "mvcc.html").write_text(
        "<html><head><title>MVCC</title></head><body><div class='navheader'>Prev Next</div><h1>MVCC</h1>"
        + "".join(f"<p>{p}</p>" for p in mvcc)
        # mojibake that Curator's UnicodeReformatter (ftfy) must repair
        + "<p>The cafÃ© example: PostgreSQLâ€™s snapshot rules are described in the next section of this chapter.</p>"
        + "</body></html>")
    (root / "indexes.rst").write_text("Partial Indexes\n===============\n\n" + "\n\n".join(idx) + "\n")
    (root / "short.txt").write_text("Too short to be a document.")
    (root / "logo.txt").write_bytes(binary)
    (root / "empty.md").write_text("")
    return root


@pytest.fixture(scope="module")
def _finished_run(corpus, tmp_path_factory, make_cfg):
    """One real curate run for the module; tests get copies of it, never the run itself."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_cfg(corpus)
    manifest = run_stage(CURATE, run_dir, cfg, STAGES, quiet=True)
    return run_dir, cfg, manifest


@pytest.fixture
def run1(_finished_run, tmp_path):
    """A private copy of the finished run: what one test reruns or changes, no other test sees."""
    import copy
    import shutil

    src, cfg, manifest = _finished_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    return run_dir, cfg, copy.deepcopy(manifest)


def test_manifest_counts_every_decision(run1):
    _, _, m = run1
    c = m["counts"]
    assert c["files_seen"] == 9 and c["docs_read"] == 7
    assert c["skipped_binary"] == 1 and c["skipped_empty"] == 1
    assert c["filtered_word_count"] == 1            # short.txt
    assert c["exact_dups_removed"] == 1             # wal_copy.md: same words, other case and spacing
    assert c["near_dups_removed"] == 1              # isolation_v2.txt
    assert c["docs_kept"] == 4 and c["docs_chunked"] == 4
    assert c["chunks"] > 4 and c["tokens_max"] <= 256 and c["executor"] == "inprocess"
    assert m["outputs"]["curate/chunks.jsonl"]


def test_chunks_follow_the_contract(run1, tokenizer, spec):
    run_dir, _, _ = run1
    rows = list(read_jsonl(run_dir / "curate/chunks.jsonl"))
    assert {r["source"] for r in rows} == {"guide/wal.md", "indexes.rst", "isolation.txt", "mvcc.html"}
    keys = [(r["source"]) for r in rows]
    assert keys == sorted(keys)                                   # sorted by source, then position
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "doc_id", "text", "title", "section", "source", "n_tokens"}
        assert r["id"].startswith("c_") and len(r["id"]) == 18 and r["doc_id"].startswith("d_")
        assert r["n_tokens"] == len(tokenizer(spec.passage_prefix + r["text"])["input_ids"]) <= spec.max_passage_length
        assert r["text"].startswith(r["title"])                    # the context line
        assert "§§" not in r["text"]
    mvcc = " ".join(r["text"] for r in rows if r["source"] == "mvcc.html")
    assert "café" in mvcc and "PostgreSQL’s" in mvcc and "Ã" not in mvcc  # ftfy repaired it
    assert "Prev Next" not in mvcc


def test_second_run_is_a_noop_and_force_reproduces_ids(run1):
    run_dir, cfg, m = run1
    again = run_stage(CURATE, run_dir, cfg, STAGES, quiet=True)
    assert again.get("skipped") is True
    before = (run_dir / "curate/chunks.jsonl").read_bytes()
    forced = run_stage(CURATE, run_dir, cfg, STAGES, force=True, quiet=True)
    assert not forced.get("skipped")
    assert (run_dir / "curate/chunks.jsonl").read_bytes() == before   # stable ids and order
    assert forced["outputs"] == m["outputs"]
    assert read_manifest(run_dir, "curate")["counts"]["chunks"] == m["counts"]["chunks"]


def test_config_change_reruns(run1, corpus, make_cfg):
    run_dir, _, m = run1
    cfg = make_cfg(corpus, "curate.chunk_sentences=2")
    m2 = run_stage(CURATE, run_dir, cfg, STAGES, quiet=True)
    assert not m2.get("skipped") and m2["counts"]["chunks"] > m["counts"]["chunks"]


def test_missing_corpus_is_a_user_error(tmp_path, make_cfg):
    with pytest.raises(UserError, match="does not exist; pass corpus.path="):
        run_stage(CURATE, tmp_path / "run", make_cfg(tmp_path / "nope"), STAGES, quiet=True)


def test_corpus_without_matching_files_is_a_user_error(tmp_path, make_cfg):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "data.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"has no files matching .*left out 1 file of an unsupported type: \.csv \(1\)"):
        run_stage(CURATE, tmp_path / "run", make_cfg(tmp_path / "docs"), STAGES, quiet=True)


def test_corpus_of_only_binary_and_empty_files_is_a_user_error(tmp_path, make_cfg, binary):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_bytes(binary)
    (tmp_path / "docs" / "b.md").write_text("\n")
    with pytest.raises(UserError, match=r"no usable documents .*skipped_binary=1, skipped_empty=1"):
        run_stage(CURATE, tmp_path / "run", make_cfg(tmp_path / "docs"), STAGES, quiet=True)
    assert not (tmp_path / "run" / "curate" / "manifest.json").exists()


def test_jsonl_with_the_wrong_field_says_which_field(tmp_path, make_cfg):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "rows.jsonl").write_text(json.dumps({"content": "x " * 50}) + "\n")
    with pytest.raises(UserError, match="corpus.jsonl_text_field"):
        run_stage(CURATE, tmp_path / "run", make_cfg(tmp_path / "docs"), STAGES, quiet=True)


def test_executor_choice(make_cfg, tmp_path):
    from domain_embed.curate.cleaning import choose_executor
    from domain_embed.schema import typed

    def curate(*overrides):
        return typed(make_cfg(tmp_path, *overrides)).curate

    assert choose_executor(curate(), 10) == "inprocess"
    many = "ray" if (os.cpu_count() or 1) > 2 else "inprocess"
    assert choose_executor(curate("curate.ray_min_files=5"), 10) == many
    assert choose_executor(curate("curate.executor=ray"), 10) == "ray"
    with pytest.raises(UserError, match="not one of"):  # the schema refuses it when the config is loaded
        choose_executor(curate("curate.executor=spark"), 10)


@pytest.mark.slow
def test_ray_executor_gives_the_same_documents_as_inprocess(corpus, make_cfg):
    """Curator's RayDataExecutor on a local Ray, against the in-process executor, on the same batches."""
    import pandas as pd
    import ray

    from domain_embed.curate.cleaning import run_cleaning
    from domain_embed.curate.readers import discover, read_corpus

    from domain_embed.schema import typed

    cfg = typed(make_cfg(corpus)).curate
    docs = read_corpus(corpus, discover(corpus, ["**/*.md", "**/*.html", "**/*.txt"])).docs
    frame = pd.DataFrame({"source": [d.source for d in docs], "title": [d.title for d in docs],
                          "text": [d.text for d in docs], "order_path": [d.order[0] for d in docs],
                          "order_pos": [0] * len(docs)})
    local = run_cleaning(frame, cfg, "inprocess", batch_size=2)
    try:
        remote = run_cleaning(frame, cfg, "ray", batch_size=2)
    finally:
        ray.shutdown()
    key = ["source", "text", "score_word_count", "score_non_alphanumeric", "score_repeated_lines"]
    a = local[key].sort_values("source").reset_index(drop=True)
    b = remote[key].sort_values("source").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert "café" in " ".join(b.text)


def test_cli_missing_corpus_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "domain_embed.cli", "curate", "--run-dir", str(tmp_path / "r"),
         f"corpus.path={tmp_path / 'missing'}"],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("[curate]")]
    assert len(lines) == 1 and "does not exist" in lines[0], proc.stderr

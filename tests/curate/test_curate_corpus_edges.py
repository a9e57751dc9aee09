"""What the curate stage does with awkward corpora: its own run folder inside the corpus, unreadable
files and folders, folder links, files it cannot use. Nothing may be read twice, crash, or vanish
without a line saying so (and what to do), even with --quiet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from domain_embed.errors import UserError
from domain_embed.rundir import read_jsonl, read_manifest, run_stage, tree_files
from domain_embed.stages import STAGES

CURATE = STAGES["curate"]


def _docs(root, paras):
    """Two real documents: the part of every corpus below that must come through."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wal.md").write_text("# Write-Ahead Logging\n\n" + "\n\n".join(paras("wal-intro.html", 2)) + "\n")
    (root / "mvcc.txt").write_text("Concurrency Control\n\n" + "\n\n".join(paras("mvcc-intro.html", 2)) + "\n")
    return root


def _sources(run_dir):
    return {r["source"] for r in read_jsonl(run_dir / "curate" / "chunks.jsonl")}


def test_run_folders_inside_the_corpus_are_not_read(tmp_path, paras, make_cfg, capsys):
    """`curate --run-dir docs/runs/r corpus.path=docs` (or corpus.path=. from the docs folder) must not
    read its own chunks.jsonl back as documents, nor another run's, and is up to date the second time."""
    docs = _docs(tmp_path / "docs", paras)
    old = docs / "old-run"  # a run folder the CLI started: config.yaml and overrides.json, no stage yet
    old.mkdir()
    (old / "config.yaml").write_text("corpus: {}\n")
    (old / "overrides.json").write_text("[]\n")
    (old / "notes.md").write_text("\n\n".join(paras("indexes-partial.html", 2)) + "\n")
    run_dir = docs / "runs" / "r"
    cfg = make_cfg(docs)

    first = run_stage(CURATE, run_dir, cfg, STAGES)
    log = capsys.readouterr().err
    assert _sources(run_dir) == {"wal.md", "mvcc.txt"}
    assert "left out 2 domain-embed run folders inside the corpus" in log and "old-run" in log and "runs/r" in log
    assert [f["path"] for f in first["outside_inputs"]["corpus"]["files"]] == ["mvcc.txt", "wal.md"]
    assert [p.relative_to(docs).as_posix() for p in tree_files(docs)] == ["mvcc.txt", "wal.md"]

    # a copy of a finished run, without its lock: known by its stage manifest
    shutil.copytree(run_dir, docs / "archive" / "r2", ignore=shutil.ignore_patterns(".lock"))
    again = run_stage(CURATE, run_dir, cfg, STAGES, quiet=True)
    assert again.get("skipped") is True, "curate reran: it read a run folder inside the corpus"
    assert _sources(run_dir) == {"wal.md", "mvcc.txt"}


def _without_root_powers(cmd: list[str]) -> list[str]:
    """Root reads any file whatever its mode; drop the two capabilities that allow it (setpriv)."""
    if os.geteuid() != 0:
        return cmd
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    if not shutil.which("setpriv") or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, and setpriv (util-linux) cannot drop the powers that read unreadable files")
    return [*drop, *cmd]


def test_unreadable_file_and_folder_are_skipped_with_advice_even_with_quiet(tmp_path, paras, make_cfg, capsys):
    docs = _docs(tmp_path / "docs", paras)
    secret = docs / "secret.html"
    secret.write_text("<html><body>" + "".join(f"<p>{p}</p>" for p in paras("indexes-partial.html", 2))
                      + "</body></html>")
    locked = docs / "locked"
    locked.mkdir()
    (locked / "constraints.md").write_text("\n\n".join(paras("transaction-iso.html", 2)) + "\n")
    secret.chmod(0)
    locked.chmod(0)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    try:
        proc = subprocess.run(_without_root_powers(
            [sys.executable, "-m", "domain_embed.cli", "curate", "--quiet", "--run-dir", str(run_dir),
             f"corpus.path={docs}", "corpus.exclude=[]"]), capture_output=True, text=True, env=env, timeout=300)
    finally:
        secret.chmod(0o644)
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    warned = [ln for ln in proc.stderr.splitlines() if "warning" in ln]
    assert any("secret.html" in ln and "fix its permissions" in ln for ln in warned), proc.stderr
    assert any("locked" in ln and "fix its permissions" in ln for ln in warned), proc.stderr
    m = read_manifest(run_dir, "curate")
    assert m["counts"]["skipped_unreadable"] == 1
    entry = {f["path"]: f for f in m["outside_inputs"]["corpus"]["files"]}["secret.html"]
    assert entry["sha256"] is None and "unreadable" in entry

    # with its permissions fixed, the file is a change and is read
    again = run_stage(CURATE, run_dir, make_cfg(docs), STAGES)
    assert not again.get("skipped")
    assert "secret.html" in capsys.readouterr().err.split("rerunning:")[1].splitlines()[0]
    assert "secret.html" in _sources(run_dir)


def test_folder_links_are_followed_and_left_out_files_are_named(tmp_path, paras, make_cfg, capsys):
    real = _docs(tmp_path / "real", paras)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide").symlink_to(real, target_is_directory=True)          # the only documents: behind a link
    (real / "back").symlink_to(docs, target_is_directory=True)           # a loop
    (docs / "gone.md").symlink_to(tmp_path / "nowhere.md")               # dangling
    (docs / "report.docx").write_bytes(b"PK\x03\x04 not read")
    (docs / "notes.docx").write_bytes(b"PK\x03\x04 not read")
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n")
    run_dir = tmp_path / "run"

    m = run_stage(CURATE, run_dir, make_cfg(docs), STAGES)
    log = capsys.readouterr().err
    assert _sources(run_dir) == {"guide/wal.md", "guide/mvcc.txt"}
    assert m["counts"]["files_seen"] == 2
    assert "left out 3 files of unsupported types: .docx (2), .png (1); supported: " in log
    assert any("warning" in ln and "gone.md" in ln and "does not exist" in ln for ln in log.splitlines()), log
    assert any("guide/back" in ln and "already" in ln for ln in log.splitlines()), log
    assert run_stage(CURATE, run_dir, make_cfg(docs), STAGES, quiet=True).get("skipped") is True


def test_skip_warnings_print_with_quiet_and_say_what_to_do(tmp_path, paras, make_cfg, capsys, binary):
    docs = _docs(tmp_path / "docs", paras)
    (docs / "latin1.txt").write_bytes(("Crème brûlée à la café. " * 40).encode("latin-1"))
    (docs / "image.txt").write_bytes(binary)
    run_stage(CURATE, tmp_path / "run", make_cfg(docs), STAGES, quiet=True)
    log = capsys.readouterr().err
    warned = [ln for ln in log.splitlines() if ln.startswith("[curate] warning")]
    assert any("latin1.txt" in ln and "UTF-8" in ln and "iconv -f latin1 -t utf-8" in ln for ln in warned), log
    assert any("image.txt" in ln and "binary" in ln for ln in warned), log


def test_a_corpus_whose_every_file_is_skipped_says_why(tmp_path, make_cfg, binary):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "latin1.txt").write_bytes(("Crème brûlée à la café. " * 40).encode("latin-1"))
    (tmp_path / "docs" / "image.txt").write_bytes(binary)
    with pytest.raises(UserError) as err:
        run_stage(CURATE, tmp_path / "run", make_cfg(tmp_path / "docs"), STAGES, quiet=True)
    msg = str(err.value)
    assert "no usable documents" in msg and "skipped_encoding=1" in msg
    assert "latin1.txt" in msg and "UTF-8" in msg and "iconv -f latin1 -t utf-8" in msg
    assert "image.txt" in msg and "binary" in msg


def test_filtered_documents_are_named_with_the_setting_to_change(tmp_path, paras, make_cfg, capsys):
    docs = _docs(tmp_path / "docs", paras)
    pages = ["wal-intro.html", "mvcc-intro.html", "transaction-iso.html", "indexes-partial.html"]
    huge = "\n\n".join(p for page in pages for p in paras(page, 2))
    (docs / "huge.txt").write_text("Everything at Once\n\n" + huge + "\n")
    (docs / "short.txt").write_text("Too short to be a document.")
    longest_kept = max(len((docs / n).read_text().split()) for n in ("wal.md", "mvcc.txt"))
    assert longest_kept < len(huge.split()) - 10
    run_stage(CURATE, tmp_path / "run", make_cfg(docs, f"curate.max_words={longest_kept + 5}"), STAGES, quiet=True)
    log = capsys.readouterr().err
    assert _sources(tmp_path / "run") == {"wal.md", "mvcc.txt"}
    lines = log.splitlines()
    assert any("huge.txt" in ln and "curate.max_words" in ln for ln in lines), log
    assert any("short.txt" in ln and "curate.min_words" in ln for ln in lines), log


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domain_embed.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


def test_a_run_directory_as_the_corpus_is_refused(tmp_path, paras, make_cfg):
    """`curate corpus.path=runs/demo` (or runs/demo/curate) would curate the run's own chunks.jsonl and
    manifests as documents: it exits 2 with one line that says to point corpus.path at the documents."""
    docs = _docs(tmp_path / "docs", paras)
    demo = tmp_path / "runs" / "demo"
    run_stage(CURATE, demo, make_cfg(docs), STAGES, quiet=True)
    for corpus in (demo, demo / "curate", demo / "curate" / "chunks.jsonl"):
        proc = _cli("curate", "--quiet", "--run-dir", str(tmp_path / "runs" / "x"), f"corpus.path={corpus}",
                    "corpus.exclude=[]")
        assert proc.returncode == 2, (corpus, proc.stderr)
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "domain-embed run directory" in err[0] and "point corpus.path at the documents" in err[0], err
        assert read_manifest(tmp_path / "runs" / "x", "curate") is None
    assert _sources(demo) == {"wal.md", "mvcc.txt"}
    # a folder of documents kept in a run directory is not the run's own: it is read
    shutil.copytree(docs, demo / "docs")
    run_stage(CURATE, tmp_path / "runs" / "y", make_cfg(demo / "docs"), STAGES, quiet=True)
    assert _sources(tmp_path / "runs" / "y") == {"wal.md", "mvcc.txt"}


def test_an_up_to_date_rerun_repeats_what_was_left_out_even_with_quiet(tmp_path, paras, binary):
    """A rerun to check must not look like a clean bill: the skip repeats, as warnings, the unsupported
    files, the files that could not be read and the documents the filters dropped."""
    docs = _docs(tmp_path / "docs", paras)
    (docs / "logo.png").write_bytes(b"\x89PNG\r\n")
    (docs / "image.txt").write_bytes(binary)
    (docs / "short.txt").write_text("Too short to be a document.")
    args = ["curate", "--quiet", "--run-dir", str(tmp_path / "run"), f"corpus.path={docs}", "corpus.exclude=[]"]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    recorded = read_manifest(tmp_path / "run", "curate")

    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    lines = [ln for ln in again.stderr.splitlines() if ln.startswith("[curate] warning: last run: ")]
    assert 3 <= len(lines) <= 7, again.stderr
    assert any("unsupported type" in ln and ".png" in ln for ln in lines), again.stderr
    assert any("image.txt" in ln and "binary" in ln for ln in lines), again.stderr
    assert any("short.txt" in ln and "curate.min_words" in ln for ln in lines), again.stderr
    assert read_manifest(tmp_path / "run", "curate")["finished_at"] == recorded["finished_at"]  # skipped, not rerun

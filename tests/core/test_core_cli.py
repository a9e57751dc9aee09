"""The CLI: help lists the stages; bad input ends with one line and a non-zero code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent / "domain-embed"


def run(*args, **kw):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120, **kw)


def test_help_lists_every_stage():
    out = run("--help").stdout
    for name in ["curate", "synth", "split", "mine", "train", "evaluate", "export", "serve", "run"]:
        assert name in out


def test_every_stage_has_one_name_for_cli_folder_package_and_config():
    from domain_embed.stages import STAGES

    pkg = Path(__file__).resolve().parents[2] / "services" / "domain_embed"
    for name, st in STAGES.items():
        assert st.folder == name and (pkg / name / "__init__.py").is_file(), name


def test_the_old_stage_verb_still_runs_the_stage(tmp_path):
    # `synthesize` was the synth stage's name: it is an alias, and reaches the same stage (no curate output yet)
    for verb in ("synth", "synthesize"):
        p = run(verb, "--run-dir", str(tmp_path / "r"))
        assert p.returncode == 2 and "run `domain-embed curate" in p.stderr, p.stderr


def test_wrong_override_key_exits_nonzero_with_one_line(tmp_path):
    p = run("mine", "--run-dir", str(tmp_path / "r"), "mine.no_such_key=1")
    assert p.returncode == 2
    assert "mine.no_such_key" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_stage_before_its_inputs_exits_nonzero(tmp_path):
    p = run("mine", "--run-dir", str(tmp_path / "r"))
    assert p.returncode == 2
    assert "run `domain-embed split" in p.stderr and "Traceback" not in p.stderr


def test_serve_without_repository_exits_nonzero(tmp_path):
    p = run("serve", str(tmp_path))
    assert p.returncode == 2 and "export" in p.stderr


def test_a_command_that_fails_before_any_stage_finishes_does_not_keep_its_overrides(tmp_path):
    """`curate corpus.path=/typo` (exit 2) used to save the typo into overrides.json; the next command on the run
    then failed on a path the user had not given it. A stage that finished keeps the overrides it ran with."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "domain-embed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for p in sorted((Path(__file__).resolve().parents[2] / "data" / "sample").glob("*.htm*"))[:2]:
        shutil.copy(p, corpus / p.name)
    run = tmp_path / "run"

    def domain_embed(*args):
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)

    ok = domain_embed("curate", "--run-dir", str(run), f"corpus.path={corpus}", "--quiet")
    assert ok.returncode == 0, ok.stderr[-2000:]
    saved = json.loads((run / "overrides.json").read_text())
    config = (run / "config.yaml").read_text()
    bad = domain_embed("curate", "--run-dir", str(run), f"corpus.path={tmp_path / 'typo'}", "--force")
    assert bad.returncode == 2 and "does not exist" in bad.stderr, bad.stderr[-2000:]
    assert json.loads((run / "overrides.json").read_text()) == saved
    assert (run / "config.yaml").read_text() == config
    again = domain_embed("curate", "--run-dir", str(run))
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr[-2000:]
    # on a fresh folder, nothing of a failed first command is kept
    fresh = tmp_path / "fresh"
    assert domain_embed("curate", "--run-dir", str(fresh), f"corpus.path={tmp_path / 'typo'}").returncode == 2
    assert not (fresh / "overrides.json").exists() and not (fresh / "config.yaml").exists()

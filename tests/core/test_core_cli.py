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

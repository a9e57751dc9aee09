"""docs/architecture.md is generated from the stage registry, the record types and the package docstrings."""

from __future__ import annotations

import ast
import subprocess
import sys


def test_architecture_is_up_to_date(repo_root):
    r = subprocess.run([sys.executable, str(repo_root / "tools" / "gen_architecture.py"), "--check"],
                       capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert r.returncode == 0, f"{r.stderr}\nregenerate with: python tools/gen_architecture.py"


def test_every_stage_package_says_what_it_takes_gives_and_guarantees(repo_root):
    from domain_embed.stages import STAGES

    pkgs = {getattr(s.fn, "module", s.name).split(".")[0] for s in STAGES.values()} | {"llm", "serve", "user_queries"}
    assert "synth" in pkgs and "evaluate" in pkgs
    for pkg in sorted(pkgs):
        doc = ast.get_docstring(ast.parse((repo_root / "services" / "domain_embed" / pkg / "__init__.py").read_text()))
        lines = (doc or "").splitlines()
        for key in ("Takes:", "Gives:", "Guarantees:"):
            assert any(line.startswith(key) for line in lines), (pkg, key)

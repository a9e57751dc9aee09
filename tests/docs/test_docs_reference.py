"""docs/reference.md is generated from the config tree and the code; this fails when it is stale."""

from __future__ import annotations

import subprocess
import sys


def run_tool(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / "tools" / "gen_reference.py"), *args],
                          capture_output=True, text=True, cwd=repo_root, timeout=120)


def test_reference_is_up_to_date(repo_root):
    r = run_tool(repo_root, "--check")
    assert r.returncode == 0, f"{r.stderr}\nregenerate with: python tools/gen_reference.py"


def test_reference_covers_every_key_option_and_env_var(repo_root, base_cfg):
    from omegaconf import OmegaConf

    text = (repo_root / "docs" / "reference.md").read_text()

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from leaves(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    keys = list(leaves(OmegaConf.to_container(base_cfg, resolve=False)))
    assert len(keys) > 50
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing, missing
    assert "### `llm=nim` (select with `llm=nim`)" in text and "`https://integrate.api.nvidia.com/v1`" in text
    for env in ("DOMAIN_EMBED_CONFIG_DIR", "DOMAIN_EMBED_HOME", "NVIDIA_API_KEY", "DOMAIN_EMBED_API_KEY",
                "HF_HUB_OFFLINE", "DOMAIN_EMBED_SERVE_PORT", "DOMAIN_EMBED_SERVE_MAX_BATCH_ITEMS"):
        assert f"| `{env}` |" in text, env
    assert "| `--real-queries` |" in text  # command flags come from the CLI parser
    # machine-independent: interpolations stay unresolved
    assert "${repo:data/sample}" in text and str(repo_root) not in text


def test_check_fails_on_a_stale_file(repo_root, tmp_path):
    stale = tmp_path / "reference.md"
    stale.write_text((repo_root / "docs" / "reference.md").read_text().replace("| `seed` |", "| `sead` |"))
    r = run_tool(repo_root, "--check", "--out", str(stale))
    assert r.returncode == 1 and "is stale; regenerate it with `python tools/gen_reference.py`" in r.stderr
    assert "sead" in r.stderr


def test_yaml_comment_parser(tmp_path):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "tools"))
    from gen_reference import yaml_comments

    f = tmp_path / "g.yaml"
    f.write_text("# File header.\n\n# Above a.\na: 1\nb: \"x # not a comment\"  # inline b\nc:\n  # nested\n  d: 2\n"
                 "e:   # the e map\n  f: 3\n")
    header, c = yaml_comments(f)
    assert header == "File header."
    assert c == {"a": "Above a.", "b": "inline b", "c.d": "nested", "e": "the e map", "e.f": "the e map"}

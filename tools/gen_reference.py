#!/usr/bin/env python3
"""Generate docs/reference.md: every config key, every command flag and every environment variable.

    python tools/gen_reference.py            # rewrite docs/reference.md
    python tools/gen_reference.py --check    # exit 1 if docs/reference.md is stale

Config keys come from composing the Hydra tree (configs/run.yaml and every option of every
group, e.g. llm=local and llm=nim), with each option's own defaults; each key's type (allowed
values for an enum) and description come from its field in services/domain_embed/schema.py, and
each file's description from the comment block at its top. Command flags come from the CLI's
argparse parser. Environment variables are the ones the code reads: the fixed list below, every
``*_env`` config value (the names of API-key variables), the gateway's ``DOMAIN_EMBED_SERVE_<KEY>``
twin of each ``serve.*`` key, and any ``DOMAIN_EMBED_*`` name found in the package source.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
OUT = REPO / "docs" / "reference.md"
sys.path.insert(0, str(REPO / "services"))

# Environment variables with a fixed meaning. Names found elsewhere are added automatically.
ENV_DOCS = {
    "DOMAIN_EMBED_CONFIG_DIR": ("configs/ beside the source tree",
                                "The Hydra config tree (the folder holding run.yaml). Point it at a copy to change defaults for every run."),
    "DOMAIN_EMBED_HOME": ("the repository root",
                          "What `${repo:...}` paths in the config resolve against (e.g. the sample corpus `${repo:data/sample}`)."),
    "DOMAIN_EMBED_API_KEY": ("unset",
                             "When set, the gateway requires `Authorization: Bearer <key>` and answers 401 without it. The variable's name is `serve.api_key_env`."),
    "NVIDIA_API_KEY": ("unset",
                       "The key for a remote LLM endpoint (build.nvidia.com or an in-cluster NIM) used by synthesis with `llm=nim`. The variable's name is `llm.api_key_env`."),
    "HF_HUB_OFFLINE": ("1 (set by the CLI and the Makefile)",
                       "Keep Hugging Face libraries off the network: models load from registry packages or local paths only."),
    "TRANSFORMERS_OFFLINE": ("1 (set by the CLI and the Makefile)", "The same, for older transformers releases."),
    "TOKENIZERS_PARALLELISM": ("false (set by the CLI)", "Silences the tokenizers fork warning in multi-process stages."),
    "DOMAIN_EMBED_TRITONSERVER": ("the binary in the nvidia-pytriton wheel, else `tritonserver` on PATH",
                                  "The tritonserver binary `domain-embed serve` starts."),
    "DOMAIN_EMBED_STOP_TIMEOUT_S": ("25", "Seconds from SIGTERM/SIGINT to exit for a stage command: it saves what "
                                    "it can (a training checkpoint), stops its children, and exits 128+signal; past "
                                    "this a watchdog kills the children and exits. Keep it under the pod's "
                                    "terminationGracePeriodSeconds (Kubernetes' default: 30)."),
    "DOMAIN_EMBED_CACHE_DIR": ("`$XDG_CACHE_HOME/domain-embed`, else `~/.cache/domain-embed`",
                               "Per-machine caches: built ONNX inference graphs (`onnx/`, unless `model.onnx_cache_dir` "
                               "is set) and memoised sha256 of large model files (`file-sha256/`)."),
    "DOMAIN_EMBED_PROGRESS_INTERVAL": ("10", "Seconds between progress lines (done/total, rate, ETA) when stderr "
                                       "is not a terminal; on a terminal a bar is drawn instead."),
}
SERVE_TWIN_PREFIX = "DOMAIN_EMBED_SERVE_"

_ENV_IN_CODE = re.compile(r"""["'](DOMAIN_EMBED_[A-Z0-9_]+)["']""")


# ------------------------------------------------------------------ YAML comments
def _strip_comment(line: str) -> tuple[str, str]:
    """Split ``key: value  # comment`` outside quotes into (code, comment)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


_KEY = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_\-]*)\s*:(.*)$")


def yaml_comments(path: Path) -> tuple[str, dict[str, str]]:
    """(file description, {dotted key: comment}) from a YAML file's comments, by a line parser.

    The comment block at the top of the file describes the whole file; after that, a key's
    description is its inline comment, else the comment block directly above it.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    header: list[str] = []
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        if not lines[i].strip() and header:  # the header block ends at its first blank line
            break
        if lines[i].lstrip().startswith("#"):
            text = lines[i].lstrip()[1:].strip()
            if not text.startswith("@package"):
                header.append(text)
        i += 1
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in lines[i:]:
        s = line.strip()
        if not s:
            pending = []
            continue
        if s.startswith("#"):
            pending.append(s[1:].strip())
            continue
        code, comment = _strip_comment(line)
        m = _KEY.match(code)
        if not m:  # a list item or a continuation line
            pending = []
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        desc = comment or " ".join(pending)
        if not desc and stack:  # a leaf of a commented mapping says what its mapping says
            desc = out.get(".".join(k for _, k in stack), "")
        if desc:
            out[dotted] = desc
        pending = []
        if not m.group(3).strip():  # a mapping opens
            stack.append((indent, key))
    return " ".join(header), out


# ------------------------------------------------------------------ config composition
def _compose(overrides: list[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from domain_embed.config import _compose as compose  # unresolved: ${repo:...} must not become a local path

    return OmegaConf.to_container(compose(overrides), resolve=False)


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v


def _field(key: str) -> tuple[str, str]:
    """(type, description) of a config key, from its field in domain_embed.schema."""
    from domain_embed.schema import find_field, type_name

    found = find_field(key)
    if found is None or not found[0].metadata.get("doc"):
        raise SystemExit(f"config key {key} has no documented field in services/domain_embed/schema.py; add one "
                         "(a type, the YAML default and a one-line doc)")
    f, tp = found
    return type_name(f, tp), f.metadata["doc"]


def _fmt(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v)
    if isinstance(v, str) and (v == "" or v != v.strip()):
        s = json.dumps(v)
    return "`" + s.replace("|", "\\|") + "`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _defaults() -> dict[str, str]:
    import yaml

    run = yaml.safe_load((CONFIGS / "run.yaml").read_text())
    out: dict[str, str] = {}
    for item in run.get("defaults", []):
        if isinstance(item, dict):
            for g, opt in item.items():
                out[str(g)] = str(opt)
    return out


def config_sections() -> list[str]:
    defaults = _defaults()
    base = _compose([])
    md: list[str] = ["## Config keys", "",
                     "Set any key on the command line as `key=value` (e.g. `domain-embed run train.max_steps=200`), "
                     "pick a group option as `group=option` (e.g. `llm=nim`), and see the resolved tree with "
                     "`domain-embed config`. A run keeps its overrides in `<run-dir>/overrides.json`. Every key is typed "
                     "(services/domain_embed/schema.py): a value of the wrong type, one outside a key's allowed values, "
                     "or an unknown key fails at the command line (exit 2), naming the key.", ""]
    root = [(k, v) for k, v in base.items() if k not in defaults and not isinstance(v, dict)]
    if root:
        md += ["### Top level (`configs/run.yaml`)", "", "| key | default | type | description |", "|---|---|---|---|"]
        md += [f"| `{k}` | {_fmt(v)} | {_cell(_field(k)[0])} | {_cell(_field(k)[1])} |" for k, v in root]
        md.append("")
    groups = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and any(p.glob("*.yaml")))
    for g in groups:
        options = sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
        default = defaults.get(g)
        for opt in sorted(options, key=lambda o: (o != default, o)):
            cfg = base if opt == default else _compose([f"{g}={opt}"])
            header, _ = yaml_comments(CONFIGS / g / f"{opt}.yaml")
            tag = " (default)" if opt == default else f" (select with `{g}={opt}`)"
            md += [f"### `{g}={opt}`{tag}", "", f"File: `configs/{g}/{opt}.yaml`.", ""]
            if header:
                md += [header, ""]
            md += ["| key | default | type | description |", "|---|---|---|---|"]
            section = cfg.get(g, {})
            for k, v in _flatten(section if isinstance(section, dict) else {}):
                kind, desc = _field(f"{g}.{k}")
                md.append(f"| `{g}.{k}` | {_fmt(v)} | {_cell(kind)} | {_cell(desc)} |")
            md.append("")
    return md


# ------------------------------------------------------------------ commands
def command_section() -> list[str]:
    from domain_embed.cli import build_parser

    parser = build_parser()
    md = ["## Commands", "", "`domain-embed <command> --help` prints the same. Every stage command also takes "
          "`key=value` config overrides.", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, p in sub.choices.items():
        md += [f"### `domain-embed {name}`", "", _cell(helps.get(name) or p.description or ""), "",
               "| argument | default | description |", "|---|---|---|"]
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            if isinstance(a, argparse._SubParsersAction):
                for cname in a.choices:
                    md.append(f"| `{cname}` | | subcommand: `domain-embed {name} {cname} --help` |")
                continue
            flag = ", ".join(a.option_strings) or a.metavar or a.dest
            dflt = "" if a.default in (None, False, [], argparse.SUPPRESS) else _fmt(
                str(a.default) if isinstance(a.default, Path) else a.default)
            md.append(f"| `{flag}` | {dflt} | {_cell(a.help or '')} |")
        md.append("")
    return md


# ------------------------------------------------------------------ environment
def env_section() -> list[str]:
    base = _compose([])
    env = dict(ENV_DOCS)
    # Names of key variables are config values (*_env keys): document whatever they are set to.
    for k, v in _flatten(base):
        if k.endswith("_env") and isinstance(v, str) and v and v not in env:
            env[v] = ("unset", f"The variable named by `{k}`.")
    twins = []
    serve = base.get("serve", {})
    for k, v in _flatten(serve if isinstance(serve, dict) else {}):
        twins.append((SERVE_TWIN_PREFIX + k.replace(".", "_").upper(), k, v))
    twin_names = {t[0] for t in twins}
    found: dict[str, str] = {}
    for f in sorted((REPO / "services").rglob("*.py")):
        for name in _ENV_IN_CODE.findall(f.read_text(encoding="utf-8", errors="replace")):
            if name not in env and name not in twin_names and not name.endswith("_"):
                found.setdefault(name, str(f.relative_to(REPO)))
    md = ["## Environment variables", "", "| variable | default | description |", "|---|---|---|"]
    for name in sorted(env):
        dflt, desc = env[name]
        md.append(f"| `{name}` | {_cell(dflt)} | {_cell(desc)} |")
    for name in sorted(found):
        md.append(f"| `{name}` | | Read in `{found[name]}`. |")
    md += ["", "### Gateway twins of `serve.*`", "",
           f"Every `serve.<key>` has an environment twin `{SERVE_TWIN_PREFIX}<KEY>` (dots become underscores, upper case), "
           "read by the gateway at start; it wins over the config value. This is how the Helm chart sets them.", "",
           "| variable | config key | default |", "|---|---|---|"]
    md += [f"| `{n}` | `serve.{k}` | {_fmt(v)} |" for n, k, v in twins]
    md.append("")
    return md


def render() -> str:
    os.environ["DOMAIN_EMBED_CONFIG_DIR"] = str(CONFIGS)
    md = ["# Reference", "",
          "<!-- Generated by `python tools/gen_reference.py` from configs/ and the code. Do not edit by hand: "
          "tests/docs/test_docs_reference.py fails when this file is stale. -->", "",
          "Contents: [Config keys](#config-keys) · [Commands](#commands) · [Environment variables](#environment-variables)", ""]
    md += config_sections()
    md += command_section()
    md += env_section()
    return "\n".join(md).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    from generated_doc import main as generated_main

    return generated_main(render, OUT, __doc__.splitlines()[0], "tools/gen_reference.py", argv)


if __name__ == "__main__":
    sys.exit(main())

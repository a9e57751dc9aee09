"""Static checks of containers/*.Dockerfile (no Docker engine here): pinned bases, multi-stage,
a non-root USER, no secrets, the right extras per image, and hadolint."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS = REPO / "containers"
DOCKERFILES = sorted(CONTAINERS.glob("*.Dockerfile"))
SECRETISH = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL)", re.I)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def resolve(ref: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), ref)


def test_the_four_images_exist():
    assert {p.name for p in DOCKERFILES} == {"gateway.Dockerfile", "pipeline.Dockerfile",
                                             "tensorrt-export.Dockerfile", "triton.Dockerfile"}
    for p in DOCKERFILES:
        assert (CONTAINERS / f"{p.name}.dockerignore").is_file(), f"{p.name} has no .dockerignore"
        ignore = (CONTAINERS / f"{p.name}.dockerignore").read_text()
        assert ignore.splitlines()[1] == "*" or "\n*\n" in ignore  # deny by default
        assert f"-f containers/{p.name}" in (CONTAINERS / "README.md").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_dockerfile_rules(dockerfile):
    ins = instructions(dockerfile)
    args = {}
    for word, rest in ins:
        if word == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k] = v
    froms = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, copy into the runtime stage"
    stage_names = {rest.split()[-1] for word, rest in ins if word == "FROM" and " AS " in rest.upper()}
    for ref in froms:
        if ref in stage_names:
            continue
        image = resolve(ref, args)
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag, f"{dockerfile.name}: base {image} has no tag"
        assert tag != "latest" and re.match(r"^\d+\.\d+", tag), f"{dockerfile.name}: base {image} is not a full version"
    users = [rest for word, rest in ins if word == "USER"]
    assert users, f"{dockerfile.name}: no USER"
    final_user = users[-1].split(":")[0]
    assert final_user not in ("root", "0") and final_user.isdigit() and int(final_user) >= 10000, final_user
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    assert any(w == "USER" for w, _ in ins[last_from:]), "USER must be set in the final stage"
    for word, rest in ins:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", rest) or [rest.split("=")[0].split()[0]]:
                assert not SECRETISH.search(name), f"{dockerfile.name}: {word} {name} looks like a secret"
        if word in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|\.pem\b|id_rsa|\.key\b|netrc", rest), f"{dockerfile.name}: {word} {rest}"
        assert not re.search(r"(nvapi-|ghp_|hf_)[A-Za-z0-9]{8,}", rest), f"{dockerfile.name}: token literal"


def test_each_image_installs_only_its_extras():
    text = {p.stem: "\n".join(f"{w} {r}" for w, r in instructions(p)) for p in DOCKERFILES}
    assert '".[serve]"' in text["gateway"] and "torch" not in text["gateway"]
    assert "python:3.11" in text["gateway"]
    assert "[curate,train,export]" in text["pipeline"] and "nvcr.io/nvidia/pytorch:" in text["pipeline"]
    assert "[export]" in text["tensorrt-export"] and "nvcr.io/nvidia/tensorrt:" in text["tensorrt-export"]
    assert "nvcr.io/nvidia/tritonserver:" in text["triton"]
    # the NGC bases move together: a TensorRT plan only loads in the TensorRT it was built with
    releases = {re.search(r"nvcr\.io/nvidia/\w+:(\d+\.\d+)-py3", text[n]).group(1)
                for n in ("pipeline", "tensorrt-export", "triton")}
    assert len(releases) == 1, releases


def test_chart_runs_images_as_the_dockerfiles_user(dh):
    values = dh.yaml.safe_load((dh.CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001
    for p in DOCKERFILES:
        assert "useradd --uid 10001" in p.read_text()


def test_hadolint_is_clean(dh):
    exe = dh.TOOLS_BIN / "hadolint"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run `make setup` (helm/tools/requirements.txt into .venv/tools)")
    r = subprocess.run([str(exe), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

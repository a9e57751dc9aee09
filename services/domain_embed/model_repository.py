"""The Triton model repository's format on the lower floor: its names and its sha256 manifest.

``export`` writes a repository and its manifest; ``serve`` verifies the manifest before it starts
Triton. Both use this module, so serving does not import a pipeline stage. (The chart's
``files/model_repo.py`` keeps its own small copy on purpose: it runs in an init container without
this package.)
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .files import atomic_write_json, sha256_file

MODEL_NAME = "embed"
MANIFEST = "checksums.json"  # the repository's sha256 of every file (a stage's record is manifest.json)


def write_manifest(repo: Path) -> dict[str, str]:
    files = {p.relative_to(repo).as_posix(): sha256_file(p)
             for p in sorted(repo.rglob("*"))
             if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts and not p.name.startswith(".")}
    atomic_write_json(repo / MANIFEST, {"algorithm": "sha256", "files": files})
    return files


def verify_manifest(repo: Path) -> int:
    """Raise UserError naming the first file that differs from the manifest; returns files checked."""
    mpath = repo / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{mpath} is missing, so the model repository cannot be verified; "
                        f"rerun `domain-embed export --run-dir {repo.parent} --force`")
    files = json.loads(mpath.read_text())["files"]
    for rel, digest in files.items():
        p = repo / rel
        if not p.is_file():
            raise UserError(f"tampered model repository: {p} is missing; rerun `domain-embed export --force`")
        if sha256_file(p) != digest:
            raise UserError(f"tampered model repository: {p} does not match its sha256 in {mpath}; refusing to "
                            f"serve it. Rerun `domain-embed export --run-dir {repo.parent} --force`")
    for p in repo.rglob("*"):
        rel = p.relative_to(repo).as_posix()
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts and not p.name.startswith(".") \
                and rel not in files:
            raise UserError(f"tampered model repository: {p} is not in {mpath}; remove it or rerun export --force")
    return len(files)

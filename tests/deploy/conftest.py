"""Shared fixtures for the offline chart checks: the chart, rendered with the value sets we ship.

Rendering goes through helm-python-sdk (Helm's Go engine in a shared library, no helm binary and
no cluster), which also applies values.schema.json exactly as `helm install` does.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="the deploy extra (helm-python-sdk) is not installed")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "domain-embed"
MULTINODE = CHART / "ci" / "values-multinode-gpu.yaml"
TOOLS_BIN = REPO / ".venv" / "tools" / "bin"
RELEASE, NAMESPACE = "emb", "domain-embed"

# The value sets every structural check runs on. indexedJob is the no-operator multi-node path.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "multinode-gpu": yaml.safe_load(MULTINODE.read_text()),
    "indexed-job": {"pipeline": {"train": {"launcher": "indexedJob", "nodes": 2, "gpusPerNode": 4}},
                    "serving": {"modelSource": "url", "modelUrl": "https://models.example.com/r.tar.gz",
                                "modelUrlSha256": "a" * 64}},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render the chart and return every manifest as a dict (NOTES.txt left out)."""
    chart = helm.Chart.load(str(CHART))
    out = chart.render(copy.deepcopy(values) or None, name=RELEASE, namespace=NAMESPACE)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def rendered_multinode() -> list[dict[str, Any]]:
    return render(VALUE_SETS["multinode-gpu"])


def render_notes(values: dict[str, Any] | None = None) -> str:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(copy.deepcopy(values) or None, name=RELEASE, namespace=NAMESPACE)
    return next(v for k, v in out.items() if k.endswith("NOTES.txt"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a workload, CRDs included."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        return [spec]
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [spec["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if kind == "RayJob":
        rc = spec["rayClusterSpec"]
        return ([rc["headGroupSpec"]["template"]["spec"]] + [w["template"]["spec"] for w in rc["workerGroupSpecs"]]
                + [spec["submitterPodTemplate"]["spec"]])
    return []


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


@pytest.fixture(scope="session")
def dh():
    """This module's helpers for the test modules (importlib mode cannot import conftest)."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def checkov_report(rendered, tmp_path_factory) -> dict[str, Any]:
    """One checkov run over every rendered value set (it is slow to start: once per session)."""
    exe = TOOLS_BIN / "checkov"
    if not exe.is_file():
        pytest.fail(f"{exe} is missing: run `make setup` (it installs helm/tools/requirements.txt into .venv/tools)")
    out = tmp_path_factory.mktemp("rendered")
    for name, docs in rendered.items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run([str(exe), "--config-file", str(CHART / ".checkov.yaml"), "-d", str(out), "-o", "json"],
                          capture_output=True, text=True, timeout=600)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return report[0] if isinstance(report, list) else report

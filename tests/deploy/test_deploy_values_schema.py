"""values.schema.json and the README table are generated from the `## @param` annotations, are not
stale, and reject bad values files the way `helm install -f` would."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import jsonschema
import pytest
import yaml


@pytest.fixture(scope="module")
def gen(dh):
    spec = importlib.util.spec_from_file_location("gen_schema", dh.REPO / "helm" / "tools" / "gen_schema.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gen_schema"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_schema_and_readme_table_are_up_to_date(dh):
    r = subprocess.run([sys.executable, str(dh.REPO / "helm" / "tools" / "gen_schema.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + "\nrun: python helm/tools/gen_schema.py --write"


def test_every_value_is_annotated_and_documented(dh, gen):
    params = gen.parse((dh.CHART / "values.yaml").read_text())
    readme = (dh.CHART / "README.md").read_text()
    assert len(params) > 80
    for p in params:
        assert p.description, p.key
        assert f"| `{p.key}` |" in readme, p.key
    with pytest.raises(gen.AnnotationError, match="has no `## @param"):
        gen.parse("## @param a.b first\na:\n  b: 1\n  c: 2\n")
    with pytest.raises(gen.AnnotationError, match="not in values.yaml"):
        gen.parse("## @param a.x ghost\na:\n  b: 1\n")
    with pytest.raises(gen.AnnotationError, match="is not a string"):
        gen.parse("## @param a [string] wrong default\na: 3\n")


def test_shipped_values_files_pass_the_schema(dh):
    schema = json.loads((dh.CHART / "values.schema.json").read_text())
    for path in [dh.CHART / "values.yaml", *sorted((dh.CHART / "ci").glob("*.yaml"))]:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)


BAD_VALUES = {
    "wrong type": ("serving:\n  replicaCount: two\n", "replicaCount"),
    "unknown top-level key": ("servng:\n  replicaCount: 2\n", "servng"),
    "misspelt nested key": ("pipeline:\n  run:\n    corpusPth: /data/x\n", "corpusPth"),
    "not in enum": ("pipeline:\n  train:\n    launcher: mpi\n", "launcher"),
    "negative count": ("autoscaling:\n  maxReplicas: -1\n", "maxReplicas"),
    "key material in values": ("secrets:\n  apiKey:\n    value: hunter2\n", "value"),
    # each used to pass the schema and kubernetes-validate, and fail at the API server or at run time
    "port 0": ("serving:\n  gateway:\n    port: 0\n", "port"),
    "port over 65535": ("pipeline:\n  train:\n    masterPort: 70000\n", "masterPort"),
    "no nodes": ("pipeline:\n  train:\n    nodes: 0\n", "nodes"),
    "no GPUs per node": ("pipeline:\n  train:\n    gpusPerNode: 0\n", "gpusPerNode"),
    "no HPA replicas": ("autoscaling:\n  minReplicas: 0\n", "minReplicas"),
    "grace under the drain margin": ("serving:\n  terminationGracePeriodSeconds: 5\n", "terminationGracePeriodSeconds"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects_a_bad_values_file(dh, tmp_path, case):
    text, needle = BAD_VALUES[case]
    values_file = tmp_path / "bad-values.yaml"
    values_file.write_text(text)
    values = dh.helm.values_from_yaml(values_file.read_text())
    chart = dh.helm.Chart.load(str(dh.CHART))
    with pytest.raises(dh.helm.HelmError) as exc:
        chart.validate_schema(values)
    assert needle in str(exc.value)
    with pytest.raises(dh.helm.HelmError):  # and install/template refuses it too
        chart.render(values, name=dh.RELEASE, namespace=dh.NAMESPACE)


def test_int_or_string_fields_take_both_and_render_valid_objects(dh):
    """`--set podDisruptionBudget.maxUnavailable=1` and `--set autoscaling.queueDepth.targetAverageValue=16` give
    integers; the schema used to refuse them although Kubernetes takes either form."""
    kv = pytest.importorskip("kubernetes_validate")
    for mu, avg in ((1, 16), ("25%", "16")):
        docs = dh.render({"podDisruptionBudget": {"maxUnavailable": mu},
                          "autoscaling": {"queueDepth": {"enabled": True, "targetAverageValue": avg}}})
        pdb = dh.by_kind(docs, "PodDisruptionBudget")[0]
        assert pdb["spec"]["maxUnavailable"] == mu
        hpa = dh.by_kind(docs, "HorizontalPodAutoscaler")[0]
        assert any(m.get("pods", {}).get("target", {}).get("averageValue") == str(avg) for m in hpa["spec"]["metrics"])
        for d in (pdb, hpa):
            kv.validate(d, kv.latest_version(), strict=True)


def test_hpa_min_above_max_is_refused_at_render(dh):
    with pytest.raises(dh.helm.HelmError, match="minReplicas .* is above autoscaling.maxReplicas"):
        dh.render({"autoscaling": {"minReplicas": 10, "maxReplicas": 2}})

"""Every rendered manifest validates against the Kubernetes schemas (strict), and checkov passes."""

from __future__ import annotations

import re

import pytest

VALUE_SET_NAMES = ["default", "multinode-gpu", "indexed-job"]  # conftest.VALUE_SETS

kv = pytest.importorskip("kubernetes_validate")

# kubernetes-validate bundles the schemas of built-in kinds only. These three are CRDs (KubeRay,
# Kubeflow training operator, Prometheus operator) with no schema in the package, so strict
# validation cannot cover them; test_crd_kinds_have_their_required_fields checks what their
# controllers need instead, and their pod templates get the same security checks as the rest.
CRD_KINDS = {"RayJob", "PyTorchJob", "ServiceMonitor"}


@pytest.mark.parametrize("value_set", VALUE_SET_NAMES)
def test_every_manifest_is_valid_kubernetes(rendered, value_set, dh):
    assert set(dh.VALUE_SETS) == set(VALUE_SET_NAMES)
    docs = rendered[value_set]
    assert docs, "the chart rendered nothing"
    version = kv.latest_version()
    checked = 0
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({value_set}): {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked >= 10


def test_the_crd_kinds_are_the_only_unvalidated_ones(rendered):
    # If a built-in kind ever lands in CRD_KINDS by mistake, kubernetes-validate would know it.
    version = kv.latest_version()
    for kind in CRD_KINDS:
        docs = [d for ds in rendered.values() for d in ds if d["kind"] == kind]
        assert docs, f"no value set renders a {kind}; the skip is dead"
        with pytest.raises(kv.SchemaNotFoundError):
            kv.validate(docs[0], version, strict=True)


def test_crd_kinds_have_their_required_fields(rendered, dh):
    docs = rendered["multinode-gpu"]
    pt = next(d for d in docs if d["kind"] == "PyTorchJob")
    assert pt["apiVersion"] == "kubeflow.org/v1"
    specs = pt["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"} and specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 3
    for role in specs.values():
        # the training operator finds the training container by this name
        assert role["template"]["spec"]["containers"][0]["name"] == "pytorch"
    assert pt["spec"]["nprocPerNode"] == "8"
    ray = next(d for d in docs if d["kind"] == "RayJob")
    assert ray["apiVersion"] == "ray.io/v1"
    assert ray["spec"]["entrypoint"].startswith("'domain-embed' 'curate' '--run-dir'")
    assert "'curate.executor=ray'" in ray["spec"]["entrypoint"]
    assert ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 4
    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/v1/metrics", "interval": "30s",
                                        "authorization": {"type": "Bearer", "credentials": {
                                            "name": "domain-embed-api-key", "key": "api-key"}}}]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for d in (pt, ray):
        assert dh.pod_specs(d), d["kind"]


def test_checkov_passes_on_every_rendered_manifest(checkov_report):
    summary = checkov_report["summary"]
    failed = checkov_report["results"].get("failed_checks", [])
    lines = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed]
    assert summary["failed"] == 0, "checkov failures:\n" + "\n".join(lines)
    assert summary["passed"] > 1000  # it really looked at the manifests
    # per-resource skips come only from annotated reasons in the templates
    for c in checkov_report["results"].get("skipped_checks", []):
        assert c.get("suppress_comment"), f"{c['check_id']} skipped on {c['resource']} without a reason"


def test_every_global_checkov_skip_has_a_reason(dh):
    text = (dh.CHART / ".checkov.yaml").read_text()
    lines = text.splitlines()
    skips = [i for i, line in enumerate(lines) if re.match(r"\s*-\s*CKV", line)]
    assert skips, "no skips? then drop this test"
    for i in skips:
        above = lines[i - 1].strip()
        assert above.startswith("#") and len(above) > 20, f"skip {lines[i].strip()} has no reason above it"

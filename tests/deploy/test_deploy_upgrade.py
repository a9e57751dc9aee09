"""`helm upgrade` with changed values must apply: a Job's pod template is immutable, so a Job whose spec
changes must get a new name (the old one is deleted by Helm, the new one finds its work up to date in the
run directory). Also the smaller wiring found by an audit of the rendered chart: Hydra overrides keep their
types, no duplicate keys, the ServiceMonitor carries the gateway's key, only synthesis holds the LLM key,
and a PyTorchJob gets the rendezvous port it is given."""

from __future__ import annotations

import copy

import pytest
import yaml

JOB_KINDS = ("Job", "PyTorchJob", "RayJob")

# Each is a values change a platform team makes on a running release (README: retune by values).
CHANGES = {
    "pipeline image tag": {"images": {"pipeline": {"tag": "0.1.1-25.01"}}},
    "gateway image tag": {"images": {"gateway": {"tag": "0.1.1"}}},
    "tensorrt image tag": {"images": {"tensorrt": {"tag": "0.1.1-25.01"}}},
    "cpu resources": {"pipeline": {"resources": {"cpu": {"limits": {"cpu": "6", "memory": "16Gi",
                                                                    "ephemeral-storage": "4Gi"}}}}},
    "gpu resources": {"pipeline": {"resources": {"gpu": {"limits": {"cpu": "32", "memory": "96Gi", "nvidia.com/gpu": 1,
                                                                    "ephemeral-storage": "8Gi"}}}}},
    "node selector": {"pipeline": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}}},
    "tolerations": {"pipeline": {"tolerations": []}},
    "gpus per node": {"pipeline": {"train": {"gpusPerNode": 2}}},
    "master port": {"pipeline": {"train": {"masterPort": 29600}}},
    "tensorrt off": {"pipeline": {"export": {"tensorrt": False}}},
    "pinned run (rollback)": {"serving": {"pinnedRun": "r-0123456789"}},
    "no rollout restart": {"pipeline": {"publish": {"rolloutRestart": False}}},
    "common labels": {"commonLabels": {"team": "search"}},
    "pod security": {"podSecurityContext": {"fsGroup": 2000}},
    "backoff": {"pipeline": {"backoffLimit": 5}},
    "grace": {"pipeline": {"terminationGracePeriodSeconds": 600}},
    "wait timeout": {"pipeline": {"waitTimeoutSeconds": 3600}},
    "ray workers": {"pipeline": {"curate": {"ray": {"workers": 3}}}},
}
BASES = {
    "default": {},
    "ray": {"pipeline": {"curate": {"ray": {"enabled": True}}}},
    "indexed-job": None,   # from conftest's VALUE_SETS
    "multinode-gpu": None,
}


def merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in change.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) and v else copy.deepcopy(v)
    return out


def jobs(docs) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"] for d in docs if d["kind"] in JOB_KINDS}


@pytest.mark.parametrize("base", sorted(BASES))
def test_a_values_change_that_alters_a_jobs_spec_also_renames_the_job(dh, base):
    values = BASES[base] if BASES[base] is not None else dh.VALUE_SETS[base]
    before = jobs(dh.render(values))
    renamed = 0
    for what, change in CHANGES.items():
        after = jobs(dh.render(merge(values, change)))
        assert len(after) == len(before), what
        for name, spec in after.items():
            if name in before:
                assert spec == before[name], f"{what}: {name} kept its name with a changed spec (immutable)"
        renamed += len(set(after) - set(before))
        # and a change nothing in a Job reads leaves every Job as it is
    assert renamed >= len(CHANGES)
    same = jobs(dh.render(merge(values, {"serving": {"replicaCount": 5, "gateway": {"maxQueue": 32}}})))
    assert same == before, "a serving-only change renamed or changed pipeline Jobs"


class _Strict(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    assert not dup, f"duplicate keys {dup} at line {node.start_mark.line + 1}"
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.mark.parametrize("value_set", ["default", "multinode-gpu", "indexed-job"])
def test_no_manifest_has_a_duplicate_key(dh, value_set):
    """Helm keeps the last of two equal keys, but kustomize and other strict YAML parsers refuse the file
    (the publish pod had serviceAccountName twice)."""
    chart = dh.helm.Chart.load(str(dh.CHART))
    out = chart.render(copy.deepcopy(dh.VALUE_SETS[value_set]) or None, name=dh.RELEASE, namespace=dh.NAMESPACE)
    n = 0
    for path, text in out.items():
        if not path.endswith("NOTES.txt"):
            n += sum(1 for d in yaml.load_all(text, Loader=_Strict) if d)
    assert n > 10


def test_hydra_overrides_keep_their_types(dh):
    from domain_embed.config import load_config

    overrides = {"export.triton.queue_timeout_us": 5000000, "model.matryoshka_dims": [384, 128],
                 "train.learning_rate": 1e-5, "synth.style_examples_file": None, "train.symmetric": 0.5}
    docs = dh.render({"pipeline": {"run": {"overrides": overrides}}})
    mine = next(d for d in dh.by_kind(docs, "Job") if "-mine-" in d["metadata"]["name"])
    args = mine["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "export.triton.queue_timeout_us=5000000" in args  # %v printed 5e+06, which Hydra refuses for an int
    cfg = load_config(None, args[2:], save=False)
    assert cfg.export.triton.queue_timeout_us == 5000000 and list(cfg.model.matryoshka_dims) == [384, 128]
    assert cfg.train.learning_rate == 1e-5 and cfg.synth.style_examples_file is None and cfg.train.symmetric == 0.5
    with pytest.raises(Exception, match="pipeline.run.overrides.train is a map"):
        dh.render({"pipeline": {"run": {"overrides": {"train": {"epochs": 2}}}}})


def test_the_servicemonitor_sends_the_gateways_key_when_it_has_one(dh):
    keyed = dh.by_kind(dh.rendered_multinode(), "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert keyed["authorization"] == {"type": "Bearer", "credentials": {"name": "domain-embed-api-key",
                                                                        "key": "api-key"}}
    open_ = dh.render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert "authorization" not in dh.by_kind(open_, "ServiceMonitor")[0]["spec"]["endpoints"][0]


def test_only_synthesis_holds_the_llm_key(dh):
    holders = set()
    for d in dh.rendered_multinode():
        for pod in dh.pod_specs(d):
            for c in dh.containers(pod):
                if any(e["name"] == "NVIDIA_API_KEY" for e in c.get("env", [])):
                    holders.add(d["metadata"]["name"])
    assert len(holders) == 1 and "-synth-" in holders.pop()


def test_a_pytorchjob_gets_the_rendezvous_port_it_is_given(dh):
    values = merge(dh.VALUE_SETS["multinode-gpu"], {"pipeline": {"train": {"masterPort": 23999}}})
    pj = dh.by_kind(dh.render(values), "PyTorchJob")[0]
    for role, spec in pj["spec"]["pytorchReplicaSpecs"].items():
        c = spec["template"]["spec"]["containers"][0]
        assert {"name": "pytorchjob-port", "containerPort": 23999, "protocol": "TCP"} in c["ports"], role


def test_a_tensorrt_plan_is_built_where_it_is_served(dh):
    """A TensorRT plan only loads on the GPU model it was built on: the multinode example trains on H100s and
    serves on L40S, so its export Job must run on the serving nodes."""
    docs = dh.rendered_multinode()
    serving = dh.by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    jobs = {d["metadata"]["name"].split("-r-")[0].rsplit("-", 1)[1]: d["spec"]["template"]["spec"]
            for d in dh.by_kind(docs, "Job")}
    assert jobs["export"]["nodeSelector"] == serving["nodeSelector"] != jobs["mine"]["nodeSelector"]
    assert jobs["export"].get("tolerations") == serving.get("tolerations")
    onnx = dh.render(merge(dh.VALUE_SETS["multinode-gpu"], {"pipeline": {"export": {"tensorrt": False}}}))
    export = next(d for d in dh.by_kind(onnx, "Job") if "-export-" in d["metadata"]["name"])
    assert export["spec"]["template"]["spec"]["nodeSelector"] == jobs["mine"]["nodeSelector"]  # ONNX runs anywhere


def test_extra_ingress_peers_reach_the_gateway_and_the_ray_head(dh):
    controller = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay"}}}
    docs = dh.render({"networkPolicy": {"extraIngressFrom": [controller], "pipelineExtraIngressFrom": [operator]},
                      "pipeline": {"curate": {"ray": {"enabled": True}}}})
    pols = {d["metadata"]["name"].rsplit("-", 1)[1]: d["spec"] for d in dh.by_kind(docs, "NetworkPolicy")}
    assert controller in pols["serving"]["ingress"][0]["from"]
    assert operator in pols["pipeline"]["ingress"][0]["from"]
    kv = pytest.importorskip("kubernetes_validate")
    for d in dh.by_kind(docs, "NetworkPolicy"):
        kv.validate(d, kv.latest_version(), strict=True)


def test_tritons_storage_limit_carries_the_model_scratch(dh):
    """The models emptyDir counts against the pod's ephemeral-storage, capped by its containers' limits: a
    20Gi scratch under a 2Gi + 2Gi pod limit got the pod evicted for any repository over ~4 GB."""
    for scratch, want in (("20Gi", 22 << 30), ("500Mi", (2 << 30) + (500 << 20)), ("50G", (2 << 30) + 50 * 10**9)):
        docs = dh.render({"serving": {"modelScratchSizeLimit": scratch}})
        pod = dh.by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
        triton = next(c for c in pod["containers"] if c["name"] == "triton")
        assert int(triton["resources"]["limits"]["ephemeral-storage"]) == want, scratch
    with pytest.raises(Exception, match="not a storage quantity"):
        dh.render({"serving": {"modelScratchSizeLimit": "lots"}})

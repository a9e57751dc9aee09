"""Multi-node training on the rendered chart: what happens when a rank fails, which exit codes end a Job at
once, and the volume every rank mounts. (What needs a real cluster, a node actually lost under an indexed Job,
is exercised with real torchrun processes in tests/train/test_train_launch.py.)"""

from __future__ import annotations

import importlib.util

import pytest

LAUNCH = ["python", "-m", "domain_embed.train.launch"]


def _train(docs):
    return next(d for d in docs if d["kind"] in ("Job", "PyTorchJob") and d["metadata"]["labels"].get("domain-embed/stage") == "train")


def _batch_jobs(docs):
    return [d for d in docs if d["kind"] == "Job"]


def _rules(job):
    return job["spec"].get("podFailurePolicy", {}).get("rules", [])


def test_the_launcher_the_chart_runs_exists():
    assert importlib.util.find_spec("domain_embed.train.launch") is not None


def test_indexed_job_rank_failure_restarts_the_group_and_never_leaves_ranks_waiting(rendered, dh):
    """A replaced rank must be able to rejoin: torchrun's c10d rendezvous (hosted by index 0), not the static one,
    whose replacement pod connected to the old group's store and hung while the other ranks hung in their
    collectives. torchrun restarts every node's workers together; once an index is out of retries the whole Job
    fails (maxFailedIndexes: 0) instead of the other indexes running on without it."""
    docs = rendered["indexed-job"]
    job = _train(docs)
    name, spec = job["metadata"]["name"], job["spec"]
    c = spec["template"]["spec"]["containers"][0]
    cmd = c["command"]
    assert cmd[:3] == LAUNCH, cmd
    assert "--rdzv_backend=c10d" in cmd and f"--rdzv_endpoint={name}-0.{name}:29500" in cmd
    assert f"--rdzv_id={name}" in cmd and "--max_restarts=2" in cmd and "--nnodes=2" in cmd
    assert not [a for a in cmd if a.startswith(("--node_rank", "--master_addr", "--master_port"))], cmd
    assert cmd[cmd.index("-m", 3):] == ["-m", "domain_embed.cli", "train"]
    assert spec["backoffLimitPerIndex"] == 2 and spec["maxFailedIndexes"] == 0
    assert "backoffLimit" not in spec
    rules = _rules(job)
    fails = [r["onExitCodes"] for r in rules if r["action"] == "FailJob"]
    assert {"operator": "In", "values": [2, 3]} in fails  # any container: the wait's failed gate too
    assert {"containerName": "train", "operator": "In", "values": [1]} in fails  # torchrun gave up
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    # the rendezvous port of index 0 is reachable from the other ranks (headless Service + pipeline policy)
    svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    values = dh.VALUE_SETS["indexed-job"]
    custom = _train(dh.render({**values, "pipeline": {**values["pipeline"], "backoffLimit": 4}}))
    assert custom["spec"]["backoffLimitPerIndex"] == 4
    assert "--max_restarts=4" in custom["spec"]["template"]["spec"]["containers"][0]["command"]


def test_pytorchjob_does_not_retry_user_errors_and_stops_the_other_ranks(rendered):
    """restartPolicy OnFailure restarted a rank that exited 2 (bad input) or 3 (failed gate) until backoffLimit.
    The operator's ExitCode policy treats 1-127 as final and 128-255 (a signal: preemption, eviction) as
    retryable; the launcher passes the workers' 2 and 3 through (torchrun alone exits 1). When the job fails,
    cleanPodPolicy Running deletes the ranks still waiting in their collectives."""
    pt = _train(rendered["multinode-gpu"])
    assert pt["kind"] == "PyTorchJob"
    for role, rs in pt["spec"]["pytorchReplicaSpecs"].items():
        assert rs["restartPolicy"] == "ExitCode", role
        c = rs["template"]["spec"]["containers"][0]
        assert c["name"] == "pytorch" and c["command"] == [*LAUNCH, "-m", "domain_embed.cli", "train"], role
    assert pt["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"


@pytest.mark.parametrize("value_set", ["default", "multinode-gpu", "indexed-job"])
def test_every_batch_job_fails_at_once_on_a_user_error_or_a_failed_gate(rendered, value_set):
    """Exit 2 (bad input or config) and 3 (a failed gate) are final for every stage: the Job fails at once with
    the stage's message in its log instead of burning backoffLimit on retries."""
    jobs = _batch_jobs(rendered[value_set])
    assert len(jobs) >= 6
    for job in jobs:
        where = job["metadata"]["name"]
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never", where  # podFailurePolicy needs it
        fails = [r for r in _rules(job) if r["action"] == "FailJob" and "onExitCodes" in r]
        assert fails, where
        codes = {v for r in fails if r["onExitCodes"]["operator"] == "In" for v in r["onExitCodes"]["values"]}
        assert {2, 3} <= codes, where
        # pods that run torchrun must run it through the launcher, or 2 and 3 arrive as 1
        for c in job["spec"]["template"]["spec"]["containers"]:
            assert "torchrun" not in c["command"], (where, c["command"])


@pytest.mark.parametrize("launcher", ["indexedJob", "pyTorchJob"])
def test_multinode_training_on_a_read_write_once_volume_is_refused(dh, launcher):
    """Every rank mounts the run directory: a ReadWriteOnce volume attaches to one node, so the other ranks would
    wait in ContainerCreating (Multi-Attach error) with no word from the chart."""
    train = {"launcher": launcher, "nodes": 2, "gpusPerNode": 1}
    for modes in (["ReadWriteOnce"], ["ReadWriteOncePod"], ["ReadOnlyMany"]):
        with pytest.raises(dh.helm.HelmError, match=r"ReadWriteMany.*existingClaim"):
            dh.render({"storage": {"accessModes": modes}, "pipeline": {"train": train}})
    # a claim the user brings is theirs to vouch for; RWX, or one node, is fine
    dh.render({"storage": {"accessModes": ["ReadWriteOnce"], "existingClaim": "shared-rwx"}, "pipeline": {"train": train}})
    dh.render({"storage": {"accessModes": ["ReadWriteOnce", "ReadWriteMany"]}, "pipeline": {"train": train}})
    dh.render({"storage": {"accessModes": ["ReadWriteOnce"]}})


def test_finished_jobs_can_be_kept_instead_of_being_recreated_by_the_next_upgrade(dh, rendered):
    """The TTL controller deletes finished Jobs that Helm still lists, so the next `helm upgrade` (any change) creates
    them again and every stage reruns (a skip: its manifest is up to date; see the publish test for the serving
    pods). pipeline.ttlSecondsAfterFinished=null keeps them: nothing to recreate; 0 still means "delete at once"."""
    kinds = ("Job", "PyTorchJob", "RayJob")

    def ttls(docs):
        out = {}
        for d in docs:
            if d["kind"] in kinds:
                spec = d["spec"]["runPolicy"] if d["kind"] == "PyTorchJob" else d["spec"]
                out[d["metadata"]["name"]] = spec.get("ttlSecondsAfterFinished")
        return out

    assert set(ttls(rendered["multinode-gpu"]).values()) == {604800}
    for base in ({}, dh.VALUE_SETS["multinode-gpu"], dh.VALUE_SETS["indexed-job"]):
        kept = ttls(dh.render({**base, "pipeline": {**base.get("pipeline", {}), "ttlSecondsAfterFinished": None}}))
        assert kept and set(kept.values()) == {None}, kept
        now = ttls(dh.render({**base, "pipeline": {**base.get("pipeline", {}), "ttlSecondsAfterFinished": 0}}))
        assert set(now.values()) == {0}, now

"""Retuning through values: a changed pipeline value names a new run; serving does not move.

The chart half of the contract is checked here on rendered manifests: the run name (a hash of
pipeline.run) changes the Jobs, never the Deployment. The runtime half (the pointer only moves
after the gate) is checked on real files in test_deploy_publish_script.py.
"""

from __future__ import annotations

import copy
import re


def _run_names(docs):
    return {d["metadata"]["labels"]["domain-embed/run"] for d in docs if "domain-embed/run" in d["metadata"]["labels"]}


def _deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def _job_args(docs):
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0].get("args", [])
            for d in docs if d["kind"] == "Job"}


def test_changed_corpus_path_renames_the_run_but_not_the_serving_model(dh):
    before = dh.render()
    after = dh.render({"pipeline": {"run": {"corpusPath": "/data/corpus/2026-q4"}}})
    (old_run,) = _run_names(before)
    (new_run,) = _run_names(after)
    assert re.fullmatch(r"r-[0-9a-f]{10}", old_run) and old_run != new_run
    # every pipeline Job is new: its name and run directory carry the new run
    new_jobs = _job_args(after)
    assert new_jobs and all(new_run in name for name in new_jobs)
    assert not set(new_jobs) & set(_job_args(before))
    mine = next(a for n, a in new_jobs.items() if "-mine-" in n)
    assert "corpus.path=/data/corpus/2026-q4" in mine and f"/data/runs/{new_run}" in mine
    # ...while the serving Deployment is byte-for-byte the same: no rollout, the published model
    # keeps serving until publish (after the gate) moves models/current
    assert _deployment(before) == _deployment(after)
    assert old_run not in str(_deployment(before)) and new_run not in str(_deployment(after))


def test_hyperparameter_and_base_model_changes_rename_the_run(dh):
    base = _run_names(dh.render())
    for change in ({"overrides": {"train.epochs": 4, "train.learning_rate": 1.0e-5, "evaluate.gate.tolerance": 0.01}},
                   {"baseModelPath": "/data/base-models/llama-nemotron-embed-1b-v2"},
                   {"llm": {"model": "meta/llama-3.1-8b-instruct"}},
                   {"revision": 2}):
        assert _run_names(dh.render({"pipeline": {"run": change}})) != base, change


def test_scale_out_and_serving_changes_keep_the_run_name(dh):
    base = _run_names(dh.render())
    for values in ({"pipeline": {"train": {"launcher": "indexedJob", "nodes": 2, "gpusPerNode": 8}}},
                   {"pipeline": {"backoffLimit": 5}},
                   {"serving": {"replicaCount": 4}},
                   {"images": {"pipeline": {"tag": "0.1.1-25.01"}}}):
        assert _run_names(dh.render(values)) == base, values


def test_run_name_ignores_key_order(dh):
    values = copy.deepcopy(dh.VALUE_SETS["multinode-gpu"])
    overrides = values["pipeline"]["run"]["overrides"]
    values["pipeline"]["run"]["overrides"] = dict(reversed(list(overrides.items())))
    assert _run_names(dh.render(values)) == _run_names(dh.render(dh.VALUE_SETS["multinode-gpu"]))


def test_pinned_run_is_the_one_deliberate_serving_change(dh):
    pinned = _deployment(dh.render({"serving": {"pinnedRun": "r-0123456789"}}))
    cmd = pinned["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert cmd[cmd.index("--source") + 1] == "/data/runs/r-0123456789/triton"
    # a pinned release must not be rolled off its pin by the publish Job
    docs = dh.render({"serving": {"pinnedRun": "r-0123456789"}})
    assert not [d for d in docs if d["kind"] == "Role"]
    publish = next(d for d in docs if d["kind"] == "Job" and "-publish-" in d["metadata"]["name"])
    assert [c["name"] for c in publish["spec"]["template"]["spec"]["containers"]] == ["publish"]

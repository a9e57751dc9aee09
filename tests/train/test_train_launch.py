"""domain_embed.train.launch: torchrun for the chart's multi-node pods.

torchrun exits 1 whatever its workers did, so a Job's podFailurePolicy (exit 2 = user error, 3 = failed gate:
fail at once) never matched and a PyTorchJob retried user errors. And with torchrun's static rendezvous (the
chart's indexed Job before) a rank whose pod was replaced could not rejoin the others. These run real torchrun
processes on 127.0.0.1 (gloo, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from domain_embed.train.launch import RETRY_EXIT, child_exit, torchrun_args

LAUNCH = [sys.executable, "-m", "domain_embed.train.launch"]


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC_", "JOB_COMPLETION"))}
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    return {**env, "OMP_NUM_THREADS": "1", **kw}


@pytest.mark.parametrize("worker, pod", [(2, 2), (3, 3), (1, 1), (0, 0)])
def test_a_workers_final_exit_code_reaches_the_pod(tmp_path, worker, pod):
    """2 (bad input) and 3 (failed gate) come out as themselves, so podFailurePolicy FailJob [2, 3] and
    Kubeflow's restartPolicy ExitCode (1-127 final) stop at once instead of retrying."""
    r = subprocess.run([*LAUNCH, "--standalone", "--nproc_per_node=1", "--no-python", "sh", "-c", f"exit {worker}"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == pod, r.stderr[-3000:]


def test_exit_code_mapping():
    assert child_exit([2]) == 2 and child_exit([1, 3]) == 3 and child_exit([3, 2]) == 2
    assert child_exit([1]) == 1 and child_exit([-9]) == 1 and child_exit([-15, 1]) == 1
    assert RETRY_EXIT >= 128  # Kubeflow's ExitCode policy retries 128-255 only


def test_index_0_of_an_indexed_job_hosts_the_c10d_rendezvous():
    base = ["--nnodes=4", "--rdzv_backend=c10d", "--rdzv_endpoint=j-0.j:29500", "-m", "domain_embed.cli", "train",
            "--rdzv_conf=not-mine"]
    assert torchrun_args(base, {"JOB_COMPLETION_INDEX": "0"})[0] == "--rdzv_conf=is_host=1"
    assert torchrun_args(base, {"JOB_COMPLETION_INDEX": "3"})[0] == "--rdzv_conf=is_host=0"
    # merged into torchrun's own --rdzv_conf, never into the script's arguments
    merged = torchrun_args(["--rdzv_conf=join_timeout=900", *base], {"JOB_COMPLETION_INDEX": "0"})
    assert merged[0] == "--rdzv_conf=join_timeout=900,is_host=1" and merged[-1] == "--rdzv_conf=not-mine"
    assert torchrun_args(["--rdzv_conf=is_host=0", *base], {"JOB_COMPLETION_INDEX": "0"})[0] == "--rdzv_conf=is_host=0"
    spaced = ["--rdzv_backend", "c10d", "-m", "x"]
    assert torchrun_args(spaced, {"JOB_COMPLETION_INDEX": "1"}) == ["--rdzv_conf=is_host=0", *spaced]
    # not an indexed Job, or the static rendezvous: untouched
    assert torchrun_args(base, {}) == base
    static = ["--nnodes=2", "--master_addr=x", "-m", "domain_embed.cli", "train"]
    assert torchrun_args(static, {"JOB_COMPLETION_INDEX": "0"}) == static


WORKER = """
import os, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
print(f"start rank={rank} restart={os.environ.get('TORCHELASTIC_RESTART_COUNT')}", flush=True)
t = torch.ones(1)
for step in range(int(os.environ["STEPS"])):
    dist.all_reduce(t)
    time.sleep(0.25)
print(f"done rank={rank}", flush=True)
"""


def _kill_tree(proc: subprocess.Popen) -> None:
    import psutil

    try:
        p = psutil.Process(proc.pid)
        for c in p.children(recursive=True) + [p]:
            c.kill()
    except psutil.NoSuchProcess:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_a_replaced_node_rejoins_and_every_node_restarts_together(tmp_path):
    """The chart's indexed Job: node 1's pod dies (agent and worker killed, as when a node is lost); its
    replacement joins the rendezvous, node 0 restarts its workers for it, and both finish."""
    pytest.importorskip("psutil")
    (tmp_path / "worker.py").write_text(WORKER)
    port = 29000 + os.getpid() % 2000

    def node(index: int, log: str) -> subprocess.Popen:
        cmd = [*LAUNCH, "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
               f"--rdzv_id=job-{port}", "--max_restarts=2", "--monitor_interval=0.5", "worker.py"]
        return subprocess.Popen(cmd, cwd=tmp_path, env=_env(JOB_COMPLETION_INDEX=str(index), STEPS="120"),
                                stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    n0, n1 = node(0, "n0.log"), node(1, "n1.log")
    replacement = None
    try:
        deadline = time.monotonic() + 120
        while "start rank=1" not in (tmp_path / "n1.log").read_text():
            assert time.monotonic() < deadline and n1.poll() is None, (tmp_path / "n1.log").read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(3)
        _kill_tree(n1)  # the pod is gone: torchrun and its worker, no goodbye
        time.sleep(20)  # a new pod takes a while (scheduling, image, init container); its old heartbeat expires
        replacement = node(1, "n1b.log")
        n0_rc, n1b_rc = n0.wait(timeout=240), replacement.wait(timeout=60)
    finally:
        for p in (n0, n1, replacement):
            if p is not None and p.poll() is None:
                _kill_tree(p)
    logs = {name: (tmp_path / name).read_text() for name in ("n0.log", "n1b.log")}
    assert (n0_rc, n1b_rc) == (0, 0), {k: v[-3000:] for k, v in logs.items()}
    assert "start rank=0 restart=1" in logs["n0.log"], "node 0 did not restart its workers for the new node"
    assert "done rank=0" in logs["n0.log"] and "done rank=1" in logs["n1b.log"]

"""`domain-embed serve RUN_DIR` as users run it: tampered repositories refused, Triton killed -> 503 ->
restarted -> 200 again, and SIGTERM stopping gateway and Triton together."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from domain_embed.errors import UserError

BIN = Path(sys.executable).parent / "domain-embed"
MODEL = "domain-embed-minilm"


def _serve_cmd(run: Path, port: int, free_port) -> list[str]:
    return [str(BIN), "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
            f"serve.triton_grpc_port={free_port()}", f"serve.triton_http_port={free_port()}",
            f"serve.triton_metrics_port={free_port()}"]


@pytest.fixture
def tampered_run(exported_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(exported_run / "triton", run / "triton")
    with open(run / "triton" / "embed" / "1" / "model.py", "a") as fh:
        fh.write("\n# an edit after export\n")
    return run


def test_launcher_refuses_tampered_repository(tampered_run, helpers):
    proc = subprocess.run(_serve_cmd(tampered_run, helpers.free_port(), helpers.free_port),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "tampered" in proc.stderr and "model.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_triton_itself_refuses_tampered_model(tampered_run, helpers, tmp_path):
    """Bypassing the launcher: the python model checks the manifest in initialize() and will not load."""
    from domain_embed.serve.triton_process import TritonProcess

    fp = helpers.free_port
    t = TritonProcess(tampered_run / "triton", fp(), fp(), fp(), log_path=tmp_path / "triton.log").start()
    try:
        with pytest.raises(UserError):
            t.wait_ready(timeout=120)
    finally:
        t.stop()
    log = (tmp_path / "triton.log").read_text()
    assert "tampered model repository" in log and "embed/1/model.py" in log


def _stubs_of(repo: Path) -> list[psutil.Process]:
    """Live python-backend stubs serving a model of ``repo`` (their argv names the model file)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "triton_python_backend_stub" and str(repo) in " ".join(p.info["cmdline"] or []) \
                    and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _post(base: str):
    return httpx.post(f"{base}/v1/embeddings", json={"input": ["recovery check"], "model": f"{MODEL}-query"}, timeout=30)


def test_serve_kill_triton_503_then_recovers_and_sigterm_stops_all(exported_run, helpers):
    port = helpers.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(_serve_cmd(exported_run, port, helpers.free_port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        helpers.wait_gateway_ready(proc, base)
        assert _post(base).status_code == 200

        tritons = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        assert len(tritons) == 1
        (old_stub,) = _stubs_of(exported_run / "triton")
        # A stub that outlives its server (issue 12: one ignored SIGTERM for 77 minutes); held with
        # SIGSTOP so it cannot notice its parent is gone. Then SIGKILL the server alone, as a crash would.
        old_stub.suspend()
        os.kill(tritons[0].pid, signal.SIGKILL)
        tritons[0].wait(timeout=10)

        r = _post(base)
        assert r.status_code == 503, r.text
        assert "message" in r.json() and "retry-after" in r.headers
        assert httpx.get(f"{base}/v1/health/ready", timeout=30).status_code == 503

        deadline = time.time() + 120  # the supervisor restarts Triton; the gateway reconnects by itself
        while (r := _post(base)).status_code != 200:
            assert r.status_code == 503, r.text
            assert time.time() < deadline, "never recovered"
            time.sleep(0.5)
        assert httpx.get(f"{base}/v1/health/ready", timeout=30).status_code == 200
        new = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        assert len(new) == 1 and new[0].pid != tritons[0].pid
        # the supervised restart reaped the old stub: one stub, the new server's
        assert not old_stub.is_running() or old_stub.status() == psutil.STATUS_ZOMBIE
        stubs = _stubs_of(exported_run / "triton")
        assert len(stubs) == 1 and stubs[0].pid != old_stub.pid

        # graceful shutdown: a request in flight when SIGTERM arrives is still answered
        import threading

        slow: dict = {}
        body = {"input": [f"passage {i} " + "about write-ahead logging " * 40 for i in range(64)],
                "model": f"{MODEL}-passage", "truncate": "END"}
        th = threading.Thread(target=lambda: slow.update(r=httpx.post(f"{base}/v1/embeddings", json=body, timeout=120)))
        th.start()
        # SIGTERM only once the request is in flight: the gateway's queue gauge says it holds a slot
        deadline = time.time() + 60
        while "embed_queue_depth 1.0" not in httpx.get(f"{base}/v1/metrics", timeout=10).text:
            assert th.is_alive(), "the request finished before it was seen in flight"
            assert time.time() < deadline, "the request never got in flight"
            time.sleep(0.02)
    finally:
        children = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    out = proc.stdout.read()
    assert code == 0, out
    th.join(timeout=60)
    assert slow["r"].status_code == 200 and len(slow["r"].json()["data"]) == 64
    assert "stopped" in out
    time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], "Triton left running"
    assert _stubs_of(exported_run / "triton") == [], "a backend stub outlived serve"

"""The script the init containers and the publish Job run, taken from the rendered ConfigMap and
run on real files: the serving pointer moves only after the gate, and tampered repositories are
refused. Repositories are written by the exporter's own manifest writer, so the two agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from domain_embed.export.triton_repo import write_manifest


@pytest.fixture(scope="module")
def script(tmp_path_factory, dh) -> Path:
    cm = next(d for d in dh.render() if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-scripts"))
    path = tmp_path_factory.mktemp("scripts") / "model_repo.py"
    path.write_text(cm["data"]["model_repo.py"])
    assert path.read_text() == (dh.CHART / "files" / "model_repo.py").read_text()
    return path


def run(script: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout)


def make_run(root: Path, name: str, gate: bool | None, payload: str = "weights") -> Path:
    run_dir = root / "runs" / name
    repo = run_dir / "triton"
    (repo / "embed" / "1").mkdir(parents=True)
    (repo / "embed" / "config.pbtxt").write_text('name: "embed"\n')
    (repo / "embed" / "1" / "model.onnx").write_text(payload)
    (repo / "encoding.json").write_text(json.dumps({"dim": 384}))
    write_manifest(repo)
    if gate is not None:
        (run_dir / "evaluate").mkdir()
        (run_dir / "evaluate" / "report.json").write_text(json.dumps({"gate": {"passed": gate, "metric": "ndcg@10"}}))
    return run_dir


def test_publish_refuses_a_failed_gate_and_keeps_the_old_model(script, tmp_path):
    models = tmp_path / "models"
    good = make_run(tmp_path, "r-aaaaaaaaaa", gate=True)
    assert run(script, "publish", "--run-dir", str(good), "--models", str(models)).returncode == 0
    assert os.readlink(models / "current") == "../runs/r-aaaaaaaaaa/triton"

    bad = make_run(tmp_path, "r-bbbbbbbbbb", gate=False)
    r = run(script, "publish", "--run-dir", str(bad), "--models", str(models))
    assert r.returncode == 3 and "has not passed" in r.stderr
    assert os.readlink(models / "current") == "../runs/r-aaaaaaaaaa/triton"  # old model keeps serving
    missing = make_run(tmp_path, "r-cccccccccc", gate=None)  # evaluate never finished
    assert run(script, "publish", "--run-dir", str(missing), "--models", str(models)).returncode == 3

    newer = make_run(tmp_path, "r-dddddddddd", gate=True, payload="better weights")
    assert run(script, "publish", "--run-dir", str(newer), "--models", str(models)).returncode == 0
    assert (models / "current" / "embed" / "1" / "model.onnx").read_text() == "better weights"
    history = [json.loads(line) for line in (models / "history.jsonl").read_text().splitlines()]
    assert [h["run"] for h in history] == ["r-aaaaaaaaaa", "r-dddddddddd"]
    assert history[1]["previous"] == "../runs/r-aaaaaaaaaa/triton"  # what a rollback goes back to
    assert not list(models.glob(".current.*"))  # the temporary link was renamed into place


def test_publish_refuses_a_tampered_repository(script, tmp_path):
    run_dir = make_run(tmp_path, "r-eeeeeeeeee", gate=True)
    (run_dir / "triton" / "embed" / "1" / "model.onnx").write_text("swapped")
    r = run(script, "publish", "--run-dir", str(run_dir), "--models", str(tmp_path / "models"))
    assert r.returncode == 2 and "does not match its sha256" in r.stderr
    assert not (tmp_path / "models" / "current").exists()


def test_verify_copy_serves_a_verified_snapshot(script, tmp_path):
    models = tmp_path / "models"
    make_run(tmp_path, "r-ffffffffff", gate=True)
    run(script, "publish", "--run-dir", str(tmp_path / "runs" / "r-ffffffffff"), "--models", str(models))
    dest = tmp_path / "pod" / "repo"
    r = run(script, "verify-copy", "--source", str(models / "current"), "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    assert not dest.is_symlink() and (dest / "embed" / "1" / "model.onnx").read_text() == "weights"
    # an extra file that the manifest does not list is refused too
    (tmp_path / "runs" / "r-ffffffffff" / "triton" / "embed" / "1" / "backdoor.py").write_text("x")
    r = run(script, "verify-copy", "--source", str(models / "current"), "--dest", str(dest))
    assert r.returncode == 2 and "backdoor.py is not in" in r.stderr


def test_verify_copy_waits_for_the_first_publish(script, tmp_path):
    models = tmp_path / "models"
    make_run(tmp_path, "r-1111111111", gate=True)
    proc = subprocess.Popen([sys.executable, str(script), "verify-copy", "--source", str(models / "current"),
                             "--dest", str(tmp_path / "pod"), "--wait", "30", "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert proc.poll() is None  # still waiting: nothing published yet
    run(script, "publish", "--run-dir", str(tmp_path / "runs" / "r-1111111111"), "--models", str(models))
    assert proc.wait(timeout=20) == 0
    assert (tmp_path / "pod" / "encoding.json").is_file()


def test_wait_finds_the_manifest_and_stops_on_a_failed_gate(script, tmp_path):
    target = tmp_path / "run" / "mine" / "manifest.json"
    target.parent.mkdir(parents=True)
    timer = threading.Timer(0.5, lambda: target.write_text("{}"))
    timer.start()
    r = run(script, "wait", "--path", str(target), "--timeout", "20", "--interval", "0.1")
    assert r.returncode == 0 and "found" in r.stderr
    r = run(script, "wait", "--path", str(tmp_path / "nope"), "--timeout", "0.3", "--interval", "0.1")
    assert r.returncode == 2 and "timed out" in r.stderr
    report = tmp_path / "run" / "evaluate" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"gate": {"passed": False}}))
    (tmp_path / "run" / "export").mkdir()
    (tmp_path / "run" / "export" / "manifest.json").write_text("{}")  # even a stale export is not trusted
    r = run(script, "wait", "--path", str(tmp_path / "run" / "export" / "manifest.json"),
            "--gate-report", str(report), "--timeout", "20", "--interval", "0.1")
    assert r.returncode == 3 and "quality gate failed" in r.stderr


def test_fetch_refuses_plain_http_and_malformed_checksums(script, tmp_path):
    # (the download itself needs an HTTPS server with a trusted certificate: not offline)
    r = run(script, "fetch", "--url", "http://example.com/m.tar.gz", "--sha256", "0" * 64, "--dest", str(tmp_path))
    assert r.returncode == 2 and "only https://" in r.stderr
    r = run(script, "fetch", "--url", "https://example.com/m.tar.gz", "--sha256", "abc", "--dest", str(tmp_path))
    assert r.returncode == 2 and "64-hex sha256" in r.stderr


class _FakeKube:
    """The API server as the restart container sees it: GET and PATCH of one Deployment."""

    def __init__(self, annotations: dict[str, str]):
        self.annotations = dict(annotations)
        self.calls: list[tuple[str, str, dict | None]] = []

    def urlopen(self, req, context=None, timeout=None):
        import io

        body = json.loads(req.data) if req.data else None
        self.calls.append((req.get_method(), req.full_url, body))
        if body is not None:
            self.annotations.update(body["spec"]["template"]["metadata"]["annotations"])
        doc = {"spec": {"template": {"metadata": {"annotations": dict(self.annotations)}}}}

        class Resp(io.BytesIO):
            status = 200

        return Resp(json.dumps(doc).encode())


@pytest.mark.parametrize("already", [True, False])
def test_a_rerun_publish_job_does_not_roll_the_serving_pods_again(script, tmp_path, monkeypatch, already):
    """After ttlSecondsAfterFinished deletes the finished Jobs, the next `helm upgrade` (any values change, even a
    serving one) creates them again, and each stage finds its work up to date. The publish Job's restart container
    used to patch the Deployment every time, so every serving pod rolled (and re-copied the model) for nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_repo_under_test", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t0ken")
    (sa / "namespace").write_text("embed")
    (sa / "ca.crt").write_text("")
    kube = _FakeKube({"domain-embed/published-run": "r-aaaaaaaaaa" if already else "r-0000000000"})
    monkeypatch.setattr(mod, "SA_DIR", sa)
    monkeypatch.setattr(mod.ssl, "create_default_context", lambda **kw: None)
    monkeypatch.setattr(mod.urllib.request, "urlopen", kube.urlopen)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    mod.main(["restart", "--deployment", "emb-domain-embed", "--run", "r-aaaaaaaaaa"])
    methods = [m for m, _, _ in kube.calls]
    assert all(u.endswith("/namespaces/embed/deployments/emb-domain-embed") for _, u, _ in kube.calls)
    if already:
        assert methods == ["GET"], kube.calls
    else:
        assert methods == ["GET", "PATCH"], kube.calls
        assert kube.annotations["domain-embed/published-run"] == "r-aaaaaaaaaa"
        assert "kubectl.kubernetes.io/restartedAt" in kube.annotations

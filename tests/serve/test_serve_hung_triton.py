"""A hung, overloaded or crashing backend, against the real tritonserver and real gateways on 127.0.0.1.

Each test here starts its own Triton (SIGSTOP, queue limits and SIGKILL must not touch the one the
API tests share).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import httpx
import psutil
import pytest

from domain_embed.serve.app import create_app
from domain_embed.serve.settings import ServeSettings
from domain_embed.serve.triton_client import TritonEmbedder
from domain_embed.serve.triton_process import TritonProcess

MODEL = "domain-embed-minilm"
BODY = {"input": ["is the server there"], "model": MODEL, "input_type": "query"}


@pytest.fixture(scope="module", autouse=True)
def _helpers(helpers):
    global GatewayThread, free_port
    GatewayThread, free_port = helpers.GatewayThread, helpers.free_port


def _start(repo, tmp_path) -> TritonProcess:
    t = TritonProcess(repo, free_port(), free_port(), free_port(), log_path=tmp_path / "tritonserver.log").start()
    t.wait_ready()
    return t


def _timed(fn):
    t0 = time.monotonic()
    r = fn()
    return r, time.monotonic() - t0


def _json_error(r, status: int, *words: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body.get("message"), str) and body["message"]
    for w in words:
        assert w in body["message"], body["message"]
    return body


@pytest.fixture
def private_repo(exported_run, tmp_path):
    repo = tmp_path / "triton"
    shutil.copytree(exported_run / "triton", repo, ignore=shutil.ignore_patterns("__pycache__"))
    return repo


def test_sigstopped_triton_gives_fast_503_json_then_recovers(private_repo, served_spec, tmp_path, capsys):
    """SIGSTOP the real tritonserver: readiness says 503 (JSON) within serve.ready_timeout_s, a request
    gets its 503 as fast instead of waiting request_timeout_s (60 s); SIGCONT and both recover."""
    t = _start(private_repo, tmp_path)
    s = ServeSettings(served_name=MODEL, triton_url=t.url)  # defaults: ready_timeout_s=2, request_timeout_s=60
    bound = s.ready_timeout_s + 1.0  # the documented deadline plus HTTP/scheduling slack
    try:
        with GatewayThread(create_app(s, served_spec), free_port()) as g, httpx.Client(base_url=g.url, timeout=90) as c:
            assert c.post("/v1/embeddings", json=BODY).status_code == 200
            assert c.get("/v1/health/ready").status_code == 200
            os.kill(t.proc.pid, signal.SIGSTOP)
            try:
                # an inference that succeeded less than ready_timeout_s ago still counts, so the
                # first answers may be 200; each answer comes within the bound, and 503 comes
                answers = []
                deadline = time.monotonic() + 4 * s.ready_timeout_s + 5
                while True:
                    r, dt = _timed(lambda: c.get("/v1/health/ready"))
                    answers.append((r.status_code, round(dt, 2)))
                    assert dt < bound, answers
                    if r.status_code == 503:
                        break
                    assert r.status_code == 200 and time.monotonic() < deadline, answers
                    time.sleep(0.2)
                _json_error(r, 503, "not ready", "ready_timeout_s")
                assert r.headers["retry-after"] == "1"
                ready_503_s = dt

                r, req_s = _timed(lambda: c.post("/v1/embeddings", json=BODY))
                _json_error(r, 503, "unavailable")
                assert "retry-after" in r.headers
                assert req_s < bound, req_s
                assert "embed_triton_up 0.0" in c.get("/v1/metrics").text
            finally:
                os.kill(t.proc.pid, signal.SIGCONT)
            with capsys.disabled():
                print(f"\n[hung triton] readiness 503 after {ready_503_s:.2f}s, request 503 after {req_s:.2f}s "
                      f"(ready_timeout_s={s.ready_timeout_s:g}); answers {answers}")

            deadline = time.monotonic() + 60
            while c.get("/v1/health/ready").status_code != 200:
                assert time.monotonic() < deadline, "never ready again after SIGCONT"
                time.sleep(0.2)
            assert c.post("/v1/embeddings", json=BODY).status_code == 200
    finally:
        t.stop()


class _Faulty(TritonEmbedder):
    """Fault injection only: the real Triton client, except one input raises a bug-like error."""

    async def embed(self, texts, input_type, truncate, timeout_s=None):
        if "trigger a bug" in texts:
            raise KeyError("an unexpected bug")
        return await super().embed(texts, input_type, truncate, timeout_s)


def test_unexpected_exception_is_a_json_500(private_repo, served_spec, tmp_path):
    t = _start(private_repo, tmp_path)
    try:
        s = ServeSettings(served_name=MODEL, triton_url=t.url)
        app = create_app(s, served_spec, embedder=_Faulty(s.triton_url, s.triton_model, s.request_timeout_s))
        with GatewayThread(app, free_port()) as g, httpx.Client(base_url=g.url, timeout=60) as c:
            assert c.post("/v1/embeddings", json=BODY).status_code == 200  # the real path works
            r = c.post("/v1/embeddings", json={**BODY, "input": ["trigger a bug"]})
            body = _json_error(r, 500, "KeyError")
            assert body["type"] == "internal_error"
            assert 'embed_requests_total{route="/v1/embeddings",status="500"} 1.0' in c.get("/v1/metrics").text
            assert c.post("/v1/embeddings", json=BODY).status_code == 200  # and the gateway carries on
    finally:
        t.stop()


def test_tritons_queue_policy_rejects_and_gateway_says_429(exported_run, served_spec, tmp_path, base_cfg):
    """export.triton.queue_timeout_us written as a REJECT queue policy, loaded by the real Triton: with one
    instance busy on the first 64 texts, the second Triton request of the same call waits longer than
    50 ms and is refused; the gateway answers 429 with Retry-After, not a held slot or a 500."""
    from omegaconf import OmegaConf

    from domain_embed.config import EncodingSpec
    from domain_embed.export.triton_repo import build_repository

    tcfg = OmegaConf.merge(base_cfg.export.triton, {"queue_timeout_us": 50_000})
    repo = tmp_path / "triton"
    build_repository(repo, EncodingSpec.from_dict(served_spec), exported_run / "export" / "model.onnx",
                     exported_run / "train" / "model" / "tokenizer.json", tcfg, layout="python")
    t = _start(repo, tmp_path)
    try:
        loaded = httpx.get(f"http://127.0.0.1:{t.ports[1]}/v2/models/embed/config", timeout=10).json()
        policy = loaded["dynamic_batching"]["default_queue_policy"]
        assert policy["timeout_action"] == "REJECT" and int(policy["default_timeout_microseconds"]) == 50_000
        s = ServeSettings(served_name=MODEL, triton_url=t.url, retry_after_s=3)
        with GatewayThread(create_app(s, served_spec), free_port()) as g:
            texts = [f"passage {i} " + "about write-ahead logging and checkpoints " * 30 for i in range(128)]
            r = httpx.post(f"{g.url}/v1/embeddings", timeout=120,
                           json={"input": texts, "model": MODEL, "input_type": "passage", "truncate": "END"})
            _json_error(r, 429, "overloaded")
            assert r.headers["retry-after"] == "3"
            deadline = time.monotonic() + 120  # once the first 64 are done, an idle queue serves again
            while (ok := httpx.post(f"{g.url}/v1/embeddings", json=BODY, timeout=60)).status_code == 429:
                assert time.monotonic() < deadline, "Triton never idle again"
                time.sleep(0.5)
            assert ok.status_code == 200, ok.text
    finally:
        t.stop()


def test_python_backend_bytecode_never_stays_in_the_repository(private_repo, tmp_path):
    """The python backend's interpreter ignores PYTHONDONTWRITEBYTECODE and writes embed/1/__pycache__;
    TritonProcess removes it before a start (a planted .pyc could shadow the verified model.py) and after
    a stop, so the repository on disk is exactly what its manifest lists."""
    from domain_embed.export.triton_repo import verify_manifest

    planted = private_repo / "embed" / "1" / "__pycache__" / "model.cpython-311.pyc"
    planted.parent.mkdir()
    planted.write_bytes(b"not from export")
    t = TritonProcess(private_repo, free_port(), free_port(), free_port(), log_path=tmp_path / "t.log").start()
    try:
        assert not planted.exists()
        t.wait_ready()
    finally:
        t.stop()
    files = set(json.loads((private_repo / "checksums.json").read_text())["files"])
    on_disk = {p.relative_to(private_repo).as_posix() for p in private_repo.rglob("*")
               if p.is_file() and p.name != "checksums.json"}
    assert on_disk == files
    assert not list(private_repo.rglob("__pycache__"))
    assert verify_manifest(private_repo) == len(files)


def _stubs_of(repo) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "triton_python_backend_stub" and str(repo) in " ".join(p.info["cmdline"] or []):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        except psutil.Error:
            pass
    return out


def test_restart_after_sigkill_reaps_the_old_stub_and_its_shm(private_repo, tmp_path):
    """A stub that outlives its server (here held with SIGSTOP, as a wedged one would be; issue 12 saw
    one ignore SIGTERM for 77 minutes) is SIGKILLed before the next server starts, and its
    shared-memory region is unlinked."""
    t = _start(private_repo, tmp_path)
    try:
        (old,) = _stubs_of(private_repo)
        region = next(a for a in old.cmdline() if a.startswith("triton_python_backend_shm_region"))
        old.suspend()
        os.kill(t.proc.pid, signal.SIGKILL)  # the server only, as a crash or the OOM killer would
        t.proc.wait(timeout=10)
        assert old.is_running() and os.path.exists(f"/dev/shm/{region}")  # left behind
        t.start()
        t.wait_ready()
        assert not old.is_running() or old.status() == psutil.STATUS_ZOMBIE
        assert not os.path.exists(f"/dev/shm/{region}")
        assert len(_stubs_of(private_repo)) == 1
    finally:
        t.stop()
    assert _stubs_of(private_repo) == []

"""Fixtures for the serving tests: an exported run (export stage on the base MiniLM), Triton, gateways."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from domain_embed.netutil import free_port


def make_exported_run(base: Path, minilm: Path) -> Path:
    """A run directory with train/model (the base MiniLM), a passing gate, and the real export stage run.

    Shared by path across test directories in one session, so the export runs once.
    """
    from domain_embed.config import load_config
    from domain_embed.rundir import atomic_write_json, run_stage, sha256_path
    from domain_embed.stages import STAGES

    run = base / "exported-run"
    if (run / "export" / "manifest.json").is_file():
        return run
    (run / "train").mkdir(parents=True, exist_ok=True)
    (run / "evaluate").mkdir(parents=True, exist_ok=True)
    shutil.copytree(minilm, run / "train" / "model", dirs_exist_ok=True)
    atomic_write_json(run / "evaluate" / "report.json", {"gate": {"passed": True, "tolerance": 0.01}})
    atomic_write_json(run / "train" / "manifest.json", {"stage": "train", "outputs": {"train/model": sha256_path(run / "train" / "model")}})
    atomic_write_json(run / "evaluate" / "manifest.json", {"stage": "evaluate", "outputs": {"evaluate/report.json": sha256_path(run / "evaluate" / "report.json")}})
    cfg = load_config(run, [], save=True)
    run_stage(STAGES["export"], run, cfg, STAGES, quiet=True)
    return run


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, minilm_path) -> Path:
    return make_exported_run(tmp_path_factory.getbasetemp(), minilm_path)


@pytest.fixture(scope="session")
def served_spec(exported_run) -> dict:
    return json.loads((exported_run / "triton" / "encoding.json").read_text())


@pytest.fixture(scope="session")
def reference_encoder(exported_run):
    """The PyTorch reference the served vectors must equal."""
    from domain_embed.config import EncodingSpec
    from domain_embed.encoding import Encoder

    spec = EncodingSpec.from_dict(json.loads((exported_run / "triton" / "encoding.json").read_text()))
    return Encoder(spec, device="cpu")


class GatewayThread:
    """A real uvicorn server for one gateway app, on 127.0.0.1, in a background thread."""

    def __init__(self, app, port: int):
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "GatewayThread":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_gateway_ready(proc, base: str, timeout: float = 120.0, pause: float = 0.5) -> None:
    """Until ``base``/v1/health/ready answers 200; fails with the process's output if it exits first."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else proc.returncode
        try:
            if httpx.get(f"{base}/v1/health/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, f"{base} never ready"
        time.sleep(pause)


@pytest.fixture(scope="session")
def helpers():
    """GatewayThread, free_port and wait_gateway_ready for test modules (importlib mode cannot import conftest
    directly)."""
    import types

    return types.SimpleNamespace(GatewayThread=GatewayThread, free_port=free_port,
                                 wait_gateway_ready=wait_gateway_ready)

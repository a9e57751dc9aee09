"""Start and stop ``tritonserver`` on a model repository.

On a CPU machine the binary is the one shipped in the ``nvidia-pytriton`` wheel (python backend
only). Its backend process embeds libpython, so the interpreter's LIBDIR goes first on
LD_LIBRARY_PATH (else the stub loads the system libpython and crashes), and the running venv's
site-packages go on PYTHONPATH so the model can import onnxruntime and tokenizers. In the
production image ``tritonserver`` is on PATH and has its own backends; set
DOMAIN_EMBED_TRITONSERVER to use a specific binary.
"""

from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from ..errors import UserError


def pytriton_dist() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    d = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return d if (d / "bin" / "tritonserver").is_file() else None


def _backend_dir(dist: Path) -> Path:
    """pytriton's backends folder plus the python stub for this interpreter, built once per version."""
    ver = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"nvidia-pytriton has no python backend stub for Python {ver}; use Python 3.8-3.12")
    root = Path(tempfile.gettempdir()) / f"domain-embed-triton-backends-{os.getuid()}-{ver}"
    py = root / "python"
    if not (py / "triton_python_backend_stub").is_file():
        tmp = Path(tempfile.mkdtemp(prefix=".backends.", dir=tempfile.gettempdir()))
        (tmp / "python").mkdir()
        for f in (dist / "backends" / "python").iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / "python" / f.name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(root)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def server_command(repo: Path, grpc_port: int, http_port: int, metrics_port: int,
                   extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    custom = os.environ.get("DOMAIN_EMBED_TRITONSERVER")
    dist = pytriton_dist()
    args = [f"--model-repository={repo}", f"--grpc-port={grpc_port}", f"--http-port={http_port}",
            f"--metrics-port={metrics_port}", "--grpc-address=127.0.0.1", "--http-address=127.0.0.1",
            "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0"]
    if custom or dist is None:
        binary = custom or shutil.which("tritonserver")
        if not binary:
            raise UserError("no tritonserver found: install nvidia-pytriton (pip install 'domain-embed[serve]') "
                            "or set DOMAIN_EMBED_TRITONSERVER to the binary")
        return [binary, *args, *(extra or [])], env
    backends = _backend_dir(dist)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libs = [libdir, str(dist.parent.parent / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    paths = [*site.getsitepackages(), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = ":".join(p for p in paths if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep __pycache__ out of the hashed repository
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    args += [f"--backend-directory={backends}",
             f"--backend-config=python,shm-default-byte-size={4 << 20}",
             f"--backend-config=python,shm-growth-byte-size={4 << 20}",
             f"--cache-directory={dist / 'caches'}"]
    return [str(dist / "bin" / "tritonserver"), *args, *(extra or [])], env


class TritonProcess:
    """One tritonserver child process, restartable; logs go to ``log_path``."""

    def __init__(self, repo: Path, grpc_port: int, http_port: int, metrics_port: int, log_path: Path | None = None):
        self.repo = Path(repo)
        self.ports = (grpc_port, http_port, metrics_port)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tritonserver-{grpc_port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self) -> "TritonProcess":
        cmd, env = server_command(self.repo, *self.ports)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # its own process group, so that stopping it also stops the python backend stubs
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 180.0) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        url = f"http://127.0.0.1:{self.ports[1]}/v2/health/ready"
        while time.time() < deadline:
            if not self.alive():
                raise UserError(f"tritonserver exited with code {self.proc.returncode if self.proc else '?'} before "
                                f"it was ready; its log ends with:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise UserError(f"tritonserver was not ready after {timeout:.0f}s; log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

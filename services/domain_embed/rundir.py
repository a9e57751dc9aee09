"""The run directory: atomic writes, per-stage manifests, and the rules for skipping and resuming.

Layout (see DESIGN.md)::

    runs/<name>/config.yaml, overrides.json
    runs/<name>/<stage>/manifest.json  + the stage's outputs

A stage is *done* when its manifest exists and records the same config hash, the same input
hashes, and outputs whose hashes still match. A later stage verifies each input against the
manifest of the stage that wrote it, and refuses it (with the command that fixes it) otherwise.

SIGTERM and SIGINT during a stage raise :class:`errors.Interrupted`: the stage unwinds through its
``finally`` blocks (saving what it can, stopping its children), no manifest is written, and the
command exits 128+signal, at the latest :func:`stop_timeout_s` after the signal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from .config import EncodingSpec, config_hash
from .errors import Interrupted, QualityGateFailed, UserError


# ---------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_open(path) as fh:
        fh.write(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path | str) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file. A torn last line (a crash mid-append) is skipped, not fatal."""
    path = Path(path)
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                # Only a torn final line is tolerated; anything else is real corruption.
                rest = fh.read()
                if rest.strip():
                    raise UserError(f"{path}:{lineno} is not valid JSON; fix or delete the file and rerun") from None
                return


class AppendLog:
    """An append-only JSONL file, flushed and fsynced per record: a crash loses nothing written."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- hashing
def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_path(path: Path | str) -> str:
    """sha256 of a file, or of a directory tree (relative names and file hashes, sorted)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(str(p.relative_to(path)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    base = ["domain-embed", "torch", "transformers", "lightning", "nemo-curator", "faiss-cpu", "onnxruntime",
            "sentence-transformers", "numpy", "tritonclient", "xllamacpp"]
    out = {"python": platform.python_version()}
    for n in [*base, *names]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


# ---------------------------------------------------------------- progress
def format_duration(seconds: float) -> str:
    """``42 s``, ``6 min``, ``1 h 12 min``: the precision a person waiting needs."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


class Progress:
    """Progress with a rate and an ETA for a non-TTY (a log file, a pod): one line every ``every_s``.

    It answers the part of tqdm's API the stages use (``update``, ``set_postfix``, iteration,
    ``close``, a context manager), so :meth:`StageContext.progress` returns a tqdm bar on a
    terminal and this elsewhere, and callers do not care which.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 every_s: float = 15.0, unit: str = "it", file: Any = None, disable: bool = False, initial: int = 0,
                 **_: Any):
        self.iterable, self.desc, self.every_s, self.unit = iterable, desc, float(every_s), unit
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
        self.file, self.disable = file, disable
        self.n = self._n0 = int(initial)
        self.postfix = ""
        self._t0 = self._last = time.monotonic()
        self._closed = False

    def _out(self):
        return self.file if self.file is not None else sys.stderr

    def rate(self) -> float | None:
        dt = time.monotonic() - self._t0
        done = self.n - self._n0
        return done / dt if dt > 0 and done > 0 else None

    def line(self) -> str:
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "")]
        r = self.rate()
        if r is not None:
            parts.append(f"{r:.2f} {self.unit}/s" if r >= 1 else f"{1 / r:.1f} s/{self.unit}")
            if self.total and self.n < self.total:
                parts.append(f"ETA {format_duration((self.total - self.n) / r)}")
            elif self.total:
                parts.append(f"done in {format_duration(time.monotonic() - self._t0)}")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _maybe_print(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.disable or (not force and now - self._last < self.every_s):
            return
        self._last = now
        print(self.line(), file=self._out(), flush=True)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        # the closing line only for work long enough to have earned progress lines
        long = time.monotonic() - self._t0 >= self.every_s
        self._maybe_print(force=self.total is not None and self.n >= self.total and long)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.postfix = ", ".join(f"{k} {v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def refresh(self) -> None:
        self._maybe_print(force=True)

    def close(self) -> None:
        long = time.monotonic() - self._t0 >= self.every_s
        if not self._closed and long and self.n != self._n0 and (self.total is None or self.n < self.total):
            self._maybe_print(force=True)
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", quiet: bool = False,
             **kw: Any):
    """A tqdm bar on a terminal, periodic :class:`Progress` lines otherwise (logs, pods, CI)."""
    if not sys.stderr.isatty():
        return Progress(iterable, total=total, desc=desc, disable=quiet, **kw)
    from tqdm.auto import tqdm

    kw.pop("every_s", None)
    return tqdm(iterable, total=total, desc=desc, disable=quiet or None, leave=False, dynamic_ncols=True, **kw)


# ---------------------------------------------------------------- stopping on SIGTERM / SIGINT
def stop_timeout_s() -> float:
    """Seconds from SIGTERM to exit. The chart's pipeline pods get Kubernetes' default grace of 30 s
    before SIGKILL, so 25 s leaves a margin (``DOMAIN_EMBED_STOP_TIMEOUT_S`` changes it)."""
    try:
        return max(1.0, float(os.environ.get("DOMAIN_EMBED_STOP_TIMEOUT_S", "25")))
    except ValueError:
        return 25.0


class _Stopping:
    signum: int | None = None
    deadline: float | None = None    # time.monotonic() by which the process must be gone
    active = False
    children: dict[int, tuple[Any, bool]] = {}   # pid -> (Popen, whole process group)
    timer: Any = None


def register_child(proc: Any, group: bool = False) -> Any:
    """Track a child process so a stop that overruns its deadline can kill it (and its group)."""
    _Stopping.children[proc.pid] = (proc, group)
    return proc


def unregister_child(proc: Any) -> None:
    _Stopping.children.pop(proc.pid, None)


def stop_deadline() -> float | None:
    """When a stop was requested: the ``time.monotonic()`` by which everything must have exited."""
    return _Stopping.deadline


def kill_child(proc: Any, group: bool, sig: int) -> None:
    import signal as _signal

    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        if group and sys.platform != "win32":
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    if sig == getattr(_signal, "SIGKILL", None):
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)


def _hard_stop() -> None:  # pragma: no cover - the last resort, exercised by the kill tests
    import signal as _signal

    for proc, group in list(_Stopping.children.values()):
        kill_child(proc, group, _signal.SIGKILL)
    sig = _Stopping.signum or _signal.SIGTERM
    print(f"domain-embed: did not stop within {stop_timeout_s():.0f}s of {_signal.Signals(sig).name}; killed "
          f"{len(_Stopping.children)} child process(es) and exiting. Rerun to resume.", file=sys.stderr, flush=True)
    os._exit(128 + sig)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`errors.Interrupted` in the main thread, so every stage
    unwinds through its ``finally`` blocks: it saves what it can and stops its children. A watchdog
    makes sure the process is gone within :func:`stop_timeout_s`, whatever a stage is stuck in.

    Nested use, and use outside the main thread (a notebook's worker thread), is a no-op.
    """
    import signal as _signal
    import threading

    from .errors import Interrupted

    if _Stopping.active or threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (getattr(_signal, "SIGTERM", None), _signal.SIGINT) if s is not None]
    old = {s: _signal.getsignal(s) for s in sigs}

    def handler(signum: int, frame: Any) -> None:
        if _Stopping.signum is not None:
            left = (_Stopping.deadline or time.monotonic()) - time.monotonic()
            print(f"domain-embed: already stopping ({left:.0f}s left before a hard stop)", file=sys.stderr, flush=True)
            return
        _Stopping.signum = signum
        _Stopping.deadline = time.monotonic() + stop_timeout_s()
        _Stopping.timer = threading.Timer(stop_timeout_s(), _hard_stop)
        _Stopping.timer.daemon = True
        _Stopping.timer.start()
        raise Interrupted(signum)

    _Stopping.active = True
    for s in sigs:
        _signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            _signal.signal(s, h)
        if _Stopping.timer is not None:
            _Stopping.timer.cancel()
        _Stopping.active, _Stopping.signum, _Stopping.deadline, _Stopping.timer = False, None, None, None


# ---------------------------------------------------------------- stages
@dataclass
class Stage:
    """A stage's contract: what it reads and writes in the run directory, and what config it depends on.

    ``inputs`` and ``outputs`` are paths relative to the run directory. ``config_keys`` are the
    top-level config sections whose values change the outputs. ``fn`` does the work and returns
    counts for the manifest.
    """

    name: str
    folder: str
    inputs: list[str]
    outputs: list[str]
    config_keys: list[str]
    fn: Callable[["StageContext"], dict[str, Any]]
    # Inputs that may be absent (e.g. an optional real-query file); absent ones are not hashed.
    optional_inputs: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class StageContext:
    stage: Stage
    run_dir: Path
    cfg: DictConfig
    force: bool = False
    quiet: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        d = self.run_dir / self.stage.folder
        d.mkdir(parents=True, exist_ok=True)
        return d

    def path(self, rel: str) -> Path:
        return self.run_dir / rel

    def spec(self, model_path: str | Path | None = None) -> EncodingSpec:
        return EncodingSpec.from_config(self.cfg, model_path)

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{self.stage.name}] {msg}", file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", **kw: Any):
        """A tqdm bar on a terminal; on a non-TTY, a line with the rate and ETA every 15 s."""
        return progress(iterable, total=total, desc=f"{self.stage.name}: {desc}" if desc else self.stage.name,
                        quiet=self.quiet, **kw)


MANIFEST = "manifest.json"


def manifest_path(run_dir: Path, folder: str) -> Path:
    return run_dir / folder / MANIFEST


def read_manifest(run_dir: Path, folder: str) -> dict[str, Any] | None:
    p = manifest_path(run_dir, folder)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def _producer_of(rel: str, stages: dict[str, Stage]) -> Stage | None:
    for st in stages.values():
        for out in st.outputs:
            if rel == out or rel.startswith(out.rstrip("/") + "/"):
                return st
    return None


def verify_input(run_dir: Path, rel: str, stages: dict[str, Stage]) -> str:
    """Check an input exists and matches what its producing stage recorded; return its hash."""
    p = run_dir / rel
    producer = _producer_of(rel, stages)
    if not p.exists():
        hint = f"run `domain-embed {producer.name} --run-dir {run_dir}` first" if producer else "create it first"
        raise UserError(f"missing input {rel} in {run_dir}; {hint}")
    digest = sha256_path(p)
    if producer is None:
        return digest
    man = read_manifest(run_dir, producer.folder)
    if man is None:
        raise UserError(
            f"{rel} has no manifest from the {producer.name} stage (it was not written by a finished run); "
            f"rerun `domain-embed {producer.name} --run-dir {run_dir} --force`"
        )
    recorded = man.get("outputs", {}).get(rel)
    if recorded is not None and recorded != digest:
        raise UserError(
            f"{rel} changed since the {producer.name} stage wrote it (sha256 {digest[:12]} != recorded {recorded[:12]}); "
            f"rerun `domain-embed {producer.name} --run-dir {run_dir} --force` and the stages after it"
        )
    return digest


def run_stage(stage: Stage, run_dir: Path, cfg: DictConfig, stages: dict[str, Stage], force: bool = False,
              quiet: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage with the skip/force/verify rules and write its manifest. Returns the manifest."""
    run_dir.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, str] = {}
    for rel in stage.inputs:
        if rel in stage.optional_inputs and not (run_dir / rel).exists():
            continue
        inputs[rel] = verify_input(run_dir, rel, stages)
    chash = config_hash(cfg, stage.config_keys)
    ctx = StageContext(stage=stage, run_dir=run_dir, cfg=cfg, force=force, quiet=quiet, extra=extra or {})

    # Command-line extras (e.g. evaluate --dataset/--endpoint) change the outputs too.
    extra_sig = json.dumps(extra or {}, sort_keys=True, default=str)
    old = read_manifest(run_dir, stage.folder)
    if (old is not None and not force and old.get("config_hash") == chash and old.get("inputs") == inputs
            and old.get("extra", "{}") == extra_sig):
        outs_ok = all((run_dir / rel).exists() and sha256_path(run_dir / rel) == h
                      for rel, h in old.get("outputs", {}).items())
        if outs_ok:
            ctx.log(f"up to date (manifest {manifest_path(run_dir, stage.folder)}); nothing to do. Use --force to rerun.")
            old["skipped"] = True
            return old
    if old is not None:
        # The stage's outputs are about to change: its old manifest must not vouch for them.
        manifest_path(run_dir, stage.folder).unlink(missing_ok=True)

    started = time.time()
    ctx.log("starting")
    gate_error: QualityGateFailed | None = None
    try:
        with stop_on_signals():
            counts = stage.fn(ctx) or {}
    except QualityGateFailed as exc:
        gate_error, counts = exc, exc.counts
    except Interrupted as exc:
        # No manifest: the stage is not done. What it saved (checkpoints, append-only logs) is kept.
        print(f"[{stage.name}] {exc} after {time.time() - started:.1f}s; saved work is kept, rerun to resume",
              file=sys.stderr, flush=True)
        raise
    wall = time.time() - started
    outputs = {rel: sha256_path(run_dir / rel) for rel in stage.outputs if (run_dir / rel).exists()}
    missing = [rel for rel in stage.outputs if rel not in outputs]
    if missing:
        raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
    manifest = {
        "stage": stage.name,
        "config_hash": chash,
        "config": {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
                   for k in stage.config_keys},
        "inputs": inputs,
        "outputs": outputs,
        "counts": counts,
        "extra": extra_sig,
        "wall_time_s": round(wall, 3),
        "started_at": datetime.fromtimestamp(started, timezone.utc).isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "versions": package_versions(),
        "host": platform.node(),
    }
    atomic_write_json(manifest_path(run_dir, stage.folder), manifest)
    if not quiet:
        print(f"[{stage.name}] done in {wall:.1f}s; wrote:", file=sys.stderr)
        for rel in stage.outputs:
            print(f"  {run_dir / rel}", file=sys.stderr)
        shown = {k: v for k, v in counts.items() if isinstance(v, (int, float, str))}
        if shown:
            print("  " + ", ".join(f"{k}={v}" for k, v in list(shown.items())[:12]), file=sys.stderr, flush=True)
    if gate_error is not None:
        raise gate_error
    return manifest

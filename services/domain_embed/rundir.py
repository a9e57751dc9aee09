"""The run directory: per-stage manifests, the rules for skipping and resuming, and stopping cleanly.

Layout (see DESIGN.md)::

    runs/<name>/config.yaml, overrides.json
    runs/<name>/<stage>/manifest.json  + the stage's outputs

A stage is *done* when its manifest exists and records the same config hash, the same input
hashes, and outputs whose hashes still match. A later stage verifies each input against the
manifest of the stage that wrote it, and refuses it (with the command that fixes it) otherwise.

SIGTERM and SIGINT during a stage raise :class:`errors.Interrupted`: the stage unwinds through its
``finally`` blocks (saving what it can, stopping its children), no manifest is written, and the
command exits 128+signal, at the latest :func:`stop_timeout_s` after the signal. SIGKILL runs no
``finally``: the temporary files of the writes in flight stay, and the stage's next run removes them
(:func:`remove_stale_temps`) before it starts.

One process works in a run directory at a time (:func:`run_dir_lock`, an ``flock`` on
``runs/<name>/.lock`` that the kernel drops however its holder exits): a second ``domain-embed run``
on the same folder would rewrite ``config.yaml`` and the stages' outputs under the first. The ranks
of one torchrun job (the chart's multi-node training runs ``domain_embed.cli train`` on each) share
the folder by design and take no lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import stat
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from omegaconf import DictConfig

from .config import EncodingSpec, config_hash, config_sections, model_spec
from .errors import Interrupted, QualityGateFailed, UserError
from .records import versions as record_versions
from .schema import RunConfig, typed
# Re-exported: the file helpers live on the lower floor (files.py); stages import them from either.
from .files import (AppendLog, atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_jsonl,  # noqa: F401
                    atomic_write_text, read_jsonl, remove_temps, sha256_file, sha256_path)


# ---------------------------------------------------------------- outside inputs
# Files from outside the run directory (the corpus, a style-examples file, an evaluation dataset,
# the base model) take part in the up-to-date check by content. Each is recorded in the manifest
# as a file list with sizes and sha256s. Hashing is made cheap by a fast path: a file whose size
# and mtime match the previous manifest's entry reuses that entry's sha256 instead of being read
# again -- unless its mtime is within RACY_NS of the moment it was last hashed, since a file edited
# in the same clock tick as the hashing could keep both (git's "racily clean" rule). The check
# itself compares contents only (names, sizes, sha256s), so a `touch` or a copy that keeps the
# bytes does not rerun anything, while any edit, addition or removal does.
RACY_NS = 2_000_000_000


def is_run_dir(path: Path) -> bool:
    """A domain-embed run directory, by what this module and the CLI write into one: the ``.lock`` of
    :func:`run_dir_lock`, config.yaml with overrides.json, or a stage folder's manifest.json. A corpus
    may hold one (``--run-dir docs/runs/x corpus.path=docs``); its outputs are not documents."""
    try:
        names = {e.name: e for e in os.scandir(path)}
    except OSError:
        return False
    if "config.yaml" in names and "overrides.json" in names:
        return True
    with contextlib.suppress(OSError):
        if ".lock" in names and (path / ".lock").read_bytes()[:4] == b"pid ":
            return True
    for e in names.values():
        with contextlib.suppress(OSError):
            if e.is_dir() and (Path(e.path) / MANIFEST).is_file():
                with open(Path(e.path) / MANIFEST, "rb") as fh:
                    if fh.read(16).startswith(b'{\n  "stage": "'):  # as _run_stage writes it
                        return True
    return False


def tree_files(path: Path | str, left_out: list[tuple[str, str, str]] | None = None) -> list[Path]:
    """A file itself, or every non-hidden file under a directory, sorted.

    Folder links are followed (each folder is listed once, so a loop ends), and domain-embed run
    directories are left out. What is left out, and why, is appended to ``left_out`` as
    ``(kind, relative path, detail)``: kind is run_dir, unreadable_dir, broken_link, seen_dir,
    not_a_file or unreadable, so that the caller can say so instead of losing files silently.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    notes = left_out if left_out is not None else []
    st = path.stat()
    seen = {(st.st_dev, st.st_ino): "."}
    out: list[Path] = []
    stack = [path]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            notes.append(("unreadable_dir", d.relative_to(path).as_posix(), exc.strerror or str(exc)))
            continue
        for e in entries:
            if e.name.startswith("."):
                continue  # .git, editor swap files and our own temporary files
            p = Path(e.path)
            rel = p.relative_to(path).as_posix()
            try:
                target = p.stat()  # follows links
            except OSError as exc:
                link = ""
                with contextlib.suppress(OSError):
                    link = os.readlink(p)
                notes.append(("broken_link" if link else "unreadable", rel,
                              f"{link}: {exc.strerror or exc}" if link else exc.strerror or str(exc)))
                continue
            if stat.S_ISDIR(target.st_mode):
                key = (target.st_dev, target.st_ino)
                if key in seen:
                    notes.append(("seen_dir", rel, seen[key]))
                elif is_run_dir(p):
                    seen[key] = rel
                    notes.append(("run_dir", rel, ""))
                else:
                    seen[key] = rel
                    stack.append(p)
            elif stat.S_ISREG(target.st_mode):
                out.append(p)
            else:
                notes.append(("not_a_file", rel, ""))  # a socket or FIFO: reading it could block
    return sorted(out)


@dataclass
class OutsideInput:
    """Files outside the run directory that a stage reads: ``files`` are under ``root`` (or are it)."""

    root: Path
    files: list[Path]

    @classmethod
    def of(cls, path: Path | str) -> "OutsideInput":
        path = Path(path)
        return cls(path, tree_files(path))


def fingerprint_files(item: OutsideInput, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest entry for one outside input: ``{"root", "files": [{path, size, mtime_ns, sha256}],
    "sha256", "hashed_at_ns"}``; ``sha256`` covers the names, sizes and file hashes only."""
    root = Path(item.root)
    prev_files: dict[str, dict[str, Any]] = {}
    prev_at = 0
    if previous and previous.get("root") == str(root):
        prev_files = {f["path"]: f for f in previous.get("files", [])}
        prev_at = int(previous.get("hashed_at_ns", 0))
    now = time.time_ns()
    files = []
    reused = 0
    for f in item.files:
        rel = f.name if f == root else f.relative_to(root).as_posix()
        try:
            st = f.stat()
            old = prev_files.get(rel)
            if (old is not None and old.get("sha256") and old.get("size") == st.st_size
                    and old.get("mtime_ns") == st.st_mtime_ns and st.st_mtime_ns + RACY_NS < prev_at):
                digest = old["sha256"]
                reused += 1
            else:
                digest = sha256_file(f)
        except OSError as exc:
            # Recorded, not fatal: the stage's reader skips the file and says why; once it can be
            # read, its hash differs from None and the stage reruns. (A chmod keeps the mtime, so
            # an unreadable entry is never reused by the fast path above.)
            files.append({"path": rel, "size": None, "mtime_ns": None, "sha256": None,
                          "unreadable": exc.strerror or str(exc)})
            continue
        files.append({"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f['path']}\0{f['size']}\0{f['sha256']}\n".encode())
    return {"root": str(root), "files": files, "sha256": h.hexdigest(), "hashed_at_ns": now,
            "reused_hashes": reused}


def outside_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """What differs between two recorded file lists, for the log ("2 edited (a.md, b.md), 1 added")."""
    if old is None:
        return "not recorded before"
    a = {f["path"]: (f["size"], f["sha256"]) for f in old.get("files", [])}
    b = {f["path"]: (f["size"], f["sha256"]) for f in new.get("files", [])}
    parts = []
    for label, names in (("edited", [k for k in b if k in a and a[k] != b[k]]),
                         ("added", [k for k in b if k not in a]), ("removed", [k for k in a if k not in b])):
        if names:
            shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{len(names)} {label} ({shown})")
    return "; ".join(parts) or "unchanged"


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    base = ["domain-embed", "torch", "transformers", "lightning", "nemo-curator", "faiss-cpu", "onnxruntime",
            "sentence-transformers", "numpy", "tritonclient", "xllamacpp"]
    out = {"python": platform.python_version()}
    for n in [*base, *names]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[n] = metadata.version(n)
    return out


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


_HELD: dict[str, list] = {}  # run directory -> [open lock file, depth]: the lock is re-entrant in one process


def _torchrun_rank() -> bool:
    """A rank of a torchrun (or Kubeflow PyTorchJob) job, whose ranks share the run directory by design."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process; a second process gets a :class:`UserError` naming the holder."""
    import fcntl

    key = str(Path(run_dir).resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    if _torchrun_rank():
        yield
        return
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fh = open(Path(run_dir) / ".lock", "a+")
    except OSError as exc:  # read-only, another user's, a full disk: the stage could not write there either
        raise UserError(f"cannot write in the run directory {run_dir} ({exc.strerror or exc}); give a --run-dir you "
                        f"can write to, or fix its permissions") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        raise UserError(f"another domain-embed process is working in {run_dir} ({holder or 'its pid unknown'}); wait "
                        f"for it to finish, or give this one another --run-dir") from None
    except OSError:  # a filesystem without locks: go on unguarded, as before
        fh.close()
        yield
        return
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {platform.node()}, since {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
             f"{' '.join(sys.argv)[:200]}\n")
    fh.flush()
    _HELD[key] = [fh, 1]
    try:
        yield
    finally:
        del _HELD[key]
        fh.close()  # closing the last descriptor drops the flock


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
    description: str = ""
    # Files from outside the run directory that the outputs depend on, by name (e.g. "corpus"),
    # given the config and the command-line extras. They take part in the up-to-date check by
    # content (see fingerprint_files), not by path.
    outside_inputs: Callable[[DictConfig, dict[str, Any]], dict[str, OutsideInput]] | None = None
    # Called when the stage is up to date and skipped, with its manifest: to repeat in short what the
    # recorded run warned about (curate: the files it left out), which a rerun would otherwise hide.
    on_skip: Callable[["StageContext", dict[str, Any]], None] | None = None


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

    @property
    def conf(self) -> RunConfig:
        """The typed view of ``cfg`` (:func:`schema.typed`), made once: stages read their section from
        it (``ctx.conf.mine.top_k`` is an int, ``ctx.conf.mine.index`` an :class:`~schema.IndexKind`)."""
        if "_conf" not in self.__dict__:
            self.__dict__["_conf"] = typed(self.cfg)
        return self.__dict__["_conf"]

    def spec(self, model_path: str | Path | None = None) -> EncodingSpec:
        return EncodingSpec.from_config(self.conf, model_path)

    def trained_spec(self, rel: str = "train/model") -> EncodingSpec:
        """The spec the model at ``rel`` was trained with; a config that disagrees is refused."""
        return model_spec(self.conf, self.path(rel), label=rel, log=self.log)

    def log(self, msg: str) -> None:
        # A warning names something the user must act on (a skipped file): --quiet does not hide it.
        if not self.quiet or msg.startswith("warning:"):
            print(f"[{self.stage.name}] {msg}", file=sys.stderr, flush=True)

    def progress(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", **kw: Any):
        """A progress reporter on stderr with a rate and an ETA (see :class:`Progress`)."""
        return Progress(iterable, total=total, desc=f"{self.stage.name}: {desc}" if desc else self.stage.name,
                        disable=self.quiet, **kw)

    @property
    def embeddings(self):
        """The run's embedding store (``runs/<name>/embeddings``); what a stage embeds through it
        is counted in its manifest as ``counts.embeddings`` (hits and misses per input type)."""
        if "_embed_store" not in self.__dict__:
            from .embed_store import EmbeddingStore

            self.__dict__["_embed_store"] = EmbeddingStore.for_run(self.run_dir, progress=self.progress, log=self.log)
        return self.__dict__["_embed_store"]


def _fmt_secs(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Done/total, rate and ETA for a long step, on stderr.

    On a terminal it is a tqdm bar. Elsewhere (CI logs, ``kubectl logs``, a pipe) bars are noise,
    so it prints one line every ``interval`` seconds (``$DOMAIN_EMBED_PROGRESS_INTERVAL``, default
    10) and a last line when it ends, if it printed any: ``[mine: embed passages] 1200/18239
    (6.6%) 35.2 text/s, 34s elapsed, ETA 8m04s``. Use it as tqdm: iterate it, or ``update(n)``,
    ``set_postfix(...)``/``set_postfix_str(...)`` (shown after the rate), ``close()``; it is also a
    context manager. ``disable=True`` (a quiet stage) reports nothing.
    """

    def __init__(self, iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", interval: float | None = None, stream: Any = None,
                 tty: bool | None = None, **kw: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, bool(disable)
        self.stream = stream or sys.stderr
        self.n = 0
        self.postfix = ""
        self.interval = float(interval if interval is not None else os.environ.get("DOMAIN_EMBED_PROGRESS_INTERVAL", 10))
        self.start = self._last = time.monotonic()
        self.lines = 0
        self._closed = False
        is_tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = None
        if not self.disable and is_tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream,
                             **{"leave": False, "dynamic_ncols": True, **kw})

    # tqdm-compatible surface
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("Progress without an iterable cannot be iterated; call update(n)")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(n)
        elif not self.disable and time.monotonic() - self._last >= self.interval:
            self._line()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        items = {**(ordered_dict or {}), **kw}
        self.set_postfix_str(", ".join(f"{k}={v}" for k, v in items.items()), refresh)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)
        if self._bar is not None:
            self._bar.set_postfix_str(s, refresh=refresh)

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc, refresh=refresh)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        elif not self.disable:
            print(msg, file=self.stream, flush=True)

    def refresh(self) -> None:
        if self._bar is not None:
            self._bar.refresh()

    def status(self) -> str:
        """The line a non-terminal gets: done/total, percent, rate, elapsed, ETA, postfix."""
        el = time.monotonic() - self.start
        rate = self.n / el if el > 0 else 0.0
        parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.1f}%)" if self.total else f"{self.n}"]
        parts.append(f"{rate:.2f} {self.unit}/s" if rate < 10 else f"{rate:.1f} {self.unit}/s")
        parts.append(f"{_fmt_secs(el)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_fmt_secs((self.total - self.n) / rate)}")
        text = ", ".join(parts)
        return f"[{self.desc}] {text}" + (f"; {self.postfix}" if self.postfix else "")

    def _line(self) -> None:
        self._last = time.monotonic()
        self.lines += 1
        print(self.status(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif not self.disable and self.lines:
            self._line()


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


def producer_of(rel: str, stages: dict[str, Stage]) -> Stage | None:
    """The stage whose outputs hold ``rel`` (a file, or a file inside an output folder), if any."""
    for st in stages.values():
        for out in st.outputs:
            if rel == out or rel.startswith(out.rstrip("/") + "/"):
                return st
    return None


def verify_input(run_dir: Path, rel: str, stages: dict[str, Stage]) -> str:
    """Check an input exists and matches what its producing stage recorded; return its hash."""
    p = run_dir / rel
    producer = producer_of(rel, stages)
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


def check_records(run_dir: Path, rels: list[str], stages: dict[str, Stage], produced: bool) -> None:
    """The first rows of every record file among (or inside) ``rels`` match their record type
    (domain_embed.records), and the version its producer recorded is the one this code reads.

    Inputs (``produced=False``): a mismatch is the user's to fix (a hand-edited file, a run directory
    from another version), so the error names the file, the line, the field and the stage to rerun.
    Outputs (``produced=True``): a stage that wrote a malformed record is a bug, caught here, before
    any later stage reads it."""
    from .records import RecordError, check_file, files_in

    for rel in rels:
        for f, rec in files_in(rel):
            path = run_dir / f
            if not path.is_file():
                continue
            producer = producer_of(f, stages)
            if not produced and producer is not None:
                kept = ((read_manifest(run_dir, producer.folder) or {}).get("records") or {}).get(f)
                want = f"{rec.__name__}/{rec.VERSION}"
                if kept is not None and kept != want:
                    raise UserError(f"{path} holds {kept} records but this version of domain-embed reads {want}; "
                                    f"rerun `domain-embed {producer.name} --force --run-dir {run_dir}`")
            try:
                check_file(path, rec, display=str(path))
            except RecordError as exc:
                if produced:
                    raise RuntimeError(f"stage wrote a malformed record: {exc}") from None
                fix = f"; rerun `domain-embed {producer.name} --force --run-dir {run_dir}`" if producer else ""
                raise UserError(f"{exc}{fix}") from None


# The run's embedding store (and the graphs of its own models under embeddings/onnx) is written by every
# stage, and also by processes that take no run-directory lock (the ranks of a torchrun job, the drift
# report's CLI): only temporary files untouched for this long there are a killed writer's.
SHARED_TEMP_AGE_S = 3600.0


def remove_stale_temps(run_dir: Path, stage: Stage) -> list[Path]:
    """Remove the temporary files that a killed run of ``stage`` left (a SIGKILL runs no cleanup, and every
    kill mid-write left another: a torn ``.train.jsonl.*.tmp``, a 90 MB to several GB ``.model.onnx.<pid>.tmp``).

    Only while this process holds the run directory (:func:`run_dir_lock`), before the stage starts: then
    no live writer uses the stage's folder or outputs, so every temporary file there goes. In the run's
    shared embedding store only those older than :data:`SHARED_TEMP_AGE_S` go, but all of those in the
    folder of a graph (``embeddings/onnx/<key>``) that no process is building."""
    import fcntl

    if str(Path(run_dir).resolve()) not in _HELD:  # a torchrun rank, or a filesystem without locks
        return []
    removed = remove_temps(run_dir / stage.folder)
    for rel in stage.outputs:
        removed += remove_temps(run_dir / rel) + remove_temps(run_dir, siblings_of=run_dir / rel)
    # The graphs of the run's own models (inference.build_graph) are written under their folder's
    # .build.lock: while nobody holds it, nobody is writing there.
    for d in sorted((run_dir / "embeddings" / "onnx").glob("*/")):
        with contextlib.suppress(OSError), open(d / ".build.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError): a build is running
            removed += remove_temps(d)
    return removed + remove_temps(run_dir / "embeddings", older_than_s=SHARED_TEMP_AGE_S)


def run_stage(stage: Stage, run_dir: Path, cfg: DictConfig, stages: dict[str, Stage], force: bool = False,
              quiet: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one stage with the skip/force/verify rules and write its manifest. Returns the manifest."""
    with run_dir_lock(run_dir):
        return _run_stage(stage, run_dir, cfg, stages, force, quiet, extra)


@dataclass
class Freshness:
    """Whether a stage's manifest still vouches for its outputs (``why`` empty), and what a new manifest of it
    would record: the hashes of its inputs, its config and command-line inputs, its outside inputs."""

    old: dict[str, Any] | None
    inputs: dict[str, str]
    config_hash: str
    extra_sig: str
    outside: dict[str, Any]
    why: list[str]

    @property
    def up_to_date(self) -> bool:
        return self.old is not None and not self.why


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _plain_sections(cfg: DictConfig, keys: list[str]) -> dict[str, Any]:
    return _flat(json.loads(json.dumps(config_sections(cfg, keys), default=str)))


def config_changes(recorded: Any, cfg: DictConfig, keys: list[str], shown: int = 4) -> str:
    """What differs between the config a stage's manifest recorded and ``cfg``, as "key old -> new" (empty: nothing
    that matters). A key the recorded config lacks and that is at its default now is left out: a newer version
    added it, and a new key's default keeps the old behaviour, so upgrading domain-embed does not redo every
    stage of every run (adding model.trust_remote_code did exactly that)."""
    if not isinstance(recorded, dict):
        return "the manifest has no recorded config"
    now = _plain_sections(cfg, keys)
    was = _flat(json.loads(json.dumps({k: recorded.get(k) for k in keys if k in recorded}, default=str)))
    defaults: dict[str, Any] | None = None
    diffs = []
    for key in sorted({*now, *was}):
        if key in was and key in now and was[key] == now[key]:
            continue
        if key not in was and key in now:
            if defaults is None:
                from .config import load_config

                defaults = _plain_sections(load_config(None, [], save=False), keys)
            if key in defaults and defaults[key] == now[key]:
                continue
        diffs.append(f"{key} {json.dumps(was[key]) if key in was else '(new)'} -> "
                     f"{json.dumps(now[key]) if key in now else '(gone)'}")
    return ", ".join(diffs[:shown]) + (f" and {len(diffs) - shown} more" if len(diffs) > shown else "")


def freshness(stage: Stage, run_dir: Path, cfg: DictConfig, stages: dict[str, Stage],
              extra: dict[str, Any] | None = None, judge: bool = True) -> Freshness:
    """The skip rule of :func:`run_stage`, without running anything (``domain-embed status`` asks it too).
    Raises :class:`UserError` for a missing or altered input, naming the stage to run. ``judge=False`` (--force)
    skips the reasons and the hashing of the outputs they need."""
    inputs = {rel: verify_input(run_dir, rel, stages) for rel in stage.inputs}
    chash = config_hash(cfg, stage.config_keys)
    # Command-line extras (e.g. evaluate --dataset/--endpoint) change the outputs too.
    extra_sig = json.dumps(extra or {}, sort_keys=True, default=str)
    old = read_manifest(run_dir, stage.folder)
    old_outside = (old or {}).get("outside_inputs") or {}
    outside = {name: fingerprint_files(item, old_outside.get(name))
               for name, item in (stage.outside_inputs(cfg, extra or {}) if stage.outside_inputs else {}).items()}
    outside_sig = {name: e["sha256"] for name, e in outside.items()}
    old_outside_sig = {name: e.get("sha256") for name, e in old_outside.items()}
    why: list[str] = []
    if old is not None and judge:
        if old.get("config_hash") != chash and (changed := config_changes(old.get("config"), cfg, stage.config_keys)):
            why.append("config changed: " + changed)
        if old.get("inputs") != inputs:
            why.append("inputs changed: " + ", ".join(sorted(k for k in {*inputs, *old.get("inputs", {})}
                                                               if inputs.get(k) != old.get("inputs", {}).get(k))))
        if old.get("extra", "{}") != extra_sig:
            why.append("command-line inputs changed")
        for name in sorted({*outside_sig, *old_outside_sig}):
            if outside_sig.get(name) != old_outside_sig.get(name):
                why.append(f"{name} changed: " + (outside_changes(old_outside.get(name), outside[name])
                                                  if name in outside else "no longer given"))
        if not why and not all((run_dir / rel).exists() and sha256_path(run_dir / rel) == h
                               for rel, h in old.get("outputs", {}).items()):
            why.append("outputs changed or missing")
    return Freshness(old, inputs, chash, extra_sig, outside, why)


def _run_stage(stage: Stage, run_dir: Path, cfg: DictConfig, stages: dict[str, Stage], force: bool,
               quiet: bool, extra: dict[str, Any] | None) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = freshness(stage, run_dir, cfg, stages, extra, judge=not force)
    old, inputs, chash, extra_sig, outside = fresh.old, fresh.inputs, fresh.config_hash, fresh.extra_sig, fresh.outside
    ctx = StageContext(stage=stage, run_dir=run_dir, cfg=cfg, force=force, quiet=quiet, extra=extra or {})
    if old is not None and not force:
        if fresh.up_to_date:
            ctx.log(f"up to date (manifest {manifest_path(run_dir, stage.folder)}); nothing to do. Use --force to rerun.")
            if stage.on_skip is not None:
                stage.on_skip(ctx, old)
            if (any(e["reused_hashes"] != len(e["files"]) for e in outside.values())
                    or old.get("config_hash") != chash):
                # same contents, new mtimes (a touch, a fresh checkout), or a config that differs only by keys
                # a newer version added at their defaults: record them so the next check takes the fast path
                old = {**old, "outside_inputs": outside, "config_hash": chash,
                       "config": config_sections(cfg, stage.config_keys)}
                atomic_write_json(manifest_path(run_dir, stage.folder), old)
            old["skipped"] = True
            return old
        ctx.log("rerunning: " + "; ".join(fresh.why))
    if old is not None:
        # The stage's outputs are about to change: its old manifest must not vouch for them.
        manifest_path(run_dir, stage.folder).unlink(missing_ok=True)

    check_records(run_dir, stage.inputs, stages, produced=False)
    started = time.time()
    ctx.log("starting")
    stale = remove_stale_temps(run_dir, stage)
    if stale:
        shown = ", ".join(p.relative_to(run_dir).as_posix() for p in stale[:3]) + (", ..." if len(stale) > 3 else "")
        ctx.log(f"removed {len(stale)} temporary file(s) an interrupted run left: {shown}")
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
    store = ctx.__dict__.get("_embed_store")
    if store is not None and store.used:
        # Hits and misses of the run's embedding store: a rerun, or mining after synthesis, shows 0 misses.
        counts = {**counts, "embeddings": store.summary()}
    wall = time.time() - started
    outputs = {rel: sha256_path(run_dir / rel) for rel in stage.outputs if (run_dir / rel).exists()}
    missing = [rel for rel in stage.outputs if rel not in outputs]
    if missing:
        raise RuntimeError(f"stage {stage.name} finished without writing {missing}")
    check_records(run_dir, stage.outputs, stages, produced=True)
    manifest = {
        "stage": stage.name,
        "config_hash": chash,
        "config": config_sections(cfg, stage.config_keys),
        "inputs": inputs,
        "outside_inputs": outside,
        "outputs": outputs,
        "records": record_versions(stage.outputs),
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

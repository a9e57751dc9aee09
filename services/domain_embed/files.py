"""The lower floor's file helpers: atomic writes, JSONL, sha256. Every stage may use them; none owns them.

A write goes to a temporary sibling, is fsynced, then renamed over the target (and the folder
fsynced), so a crash leaves the old file or the new one, never half of one. A SIGKILL mid-write
leaves the temporary file too; the next run of the stage removes it (:func:`remove_temps`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import UserError


# ---------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (os.umask can only be read by
    setting it, which races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside ``path`` and rename it into place only on success.

    The file gets the mode a plain ``open`` would give it (0666 less the umask): mkstemp's 0600 made every
    manifest, report and Triton repository file (config.pbtxt, encoding.json, checksums.json) unreadable to any
    other user, e.g. a Triton or NIM container that mounts the published repository under its own uid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
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


def is_temp_name(name: str) -> bool:
    """A writer's temporary file or folder: hidden and ending ``.tmp`` (``.chunks.jsonl.k3j9.tmp`` from
    :func:`atomic_open`, ``.model.onnx.<pid>.tmp`` from the ONNX exporter, ``.triton.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp") and len(name) > 4


def remove_temps(root: Path | str, older_than_s: float = 0.0, siblings_of: Path | str | None = None) -> list[Path]:
    """Remove the temporary files and folders (:func:`is_temp_name`) that writers killed mid-write left
    under ``root`` (recursively; links are not followed), or, with ``siblings_of``, those beside it named
    after it (``.triton.tmp`` beside ``triton``). A SIGKILL (the OOM killer, a node lost) runs no cleanup,
    and every such crash leaves another one: only the caller knows no live writer is using them, so it
    says which ones may go: those last modified more than ``older_than_s`` ago. Returns what was removed."""
    import shutil

    now = time.time()
    found: list[Path] = []
    if siblings_of is not None:
        s = Path(siblings_of)
        with contextlib.suppress(OSError):
            found = [e for e in s.parent.iterdir() if is_temp_name(e.name) and e.name.startswith(f".{s.name}.")]
    elif Path(root).is_dir():
        for d, dirs, files in os.walk(root):
            found += [Path(d) / n for n in [*dirs, *files] if is_temp_name(n)]
            dirs[:] = [n for n in dirs if not is_temp_name(n)]
    removed = []
    for p in found:
        try:
            if older_than_s > 0 and now - p.lstat().st_mtime < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:  # gone already, or not ours to remove: it only costs space
            continue
    return removed


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


# ---------------------------------------------------------------- a lock between processes
@contextlib.contextmanager
def file_lock(path: Path | str, waiting: Any = None) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``path`` for the block, blocking while another process
    holds it; ``waiting()`` is called once if it has to wait. The kernel drops the lock when its holder
    exits, however it exits, so a crash never leaves a stale lock behind."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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

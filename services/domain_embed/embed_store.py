"""The run's embedding store: each distinct text is embedded once per model, spec and precision.

Synthesis's round trip, mining and evaluation all embed the same chunks (and mining the same
questions) with the same base model; the store makes the second and third time free. Training's
base validation (step 0) reads its passages from it too, when every one is there (``lookup``). It lives in
``runs/<name>/embeddings/<input type>-<set key>/shard_*.npz``, on the lower floor: no stage owns
it and every stage may read it.

- **Keys.** The set key hashes the model's *content* fingerprint (:func:`model_fingerprint`), the
  spec fields that change a vector (prefix, max length, pooling, normalisation), the input type
  and the encoder's precision (``fp32``: torch or ONNX Runtime fp32, which agree to cosine >
  0.999; ``int8``: the quantised graph, kept apart). A row is keyed by the text's sha256.
- **Bounded memory.** Missing texts are embedded ``shard_rows`` at a time and each shard is
  written as soon as it is done, so memory is one shard plus the output matrix the caller needs.
- **Atomic and resumable.** Every shard is written to a temporary file and renamed, so a crash
  loses at most the shard in progress and a rerun embeds only what is missing. Shard names are
  unique per writer, so two processes can fill one store.
- **Counted.** ``summary()`` gives hits and misses per set; the run directory puts it into the
  stage's manifest (``counts.embeddings``).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import EncodingSpec
from .files import atomic_open, atomic_write_json

# Files of a model directory that change its vectors: weights, configs, tokenizer.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model")
_NOT_MODEL = {"README.md", "manifest.json", "training_args.json"}
# Above this size a file's sha256 is memoised by (path, size, mtime): hashing a 2 GB weight file
# takes seconds, and every stage asks.
_MEMO_BYTES = 8 << 20
_memo: dict[str, str] = {}


def user_cache_dir() -> Path:
    """$DOMAIN_EMBED_CACHE_DIR, else $XDG_CACHE_HOME/domain-embed, else ~/.cache/domain-embed."""
    env = os.environ.get("DOMAIN_EMBED_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "domain-embed"


def _file_sha256(f: Path) -> str:
    from .files import sha256_file

    st = f.stat()
    if st.st_size < _MEMO_BYTES:
        return sha256_file(f)
    stamp = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if stamp in _memo:
        return _memo[stamp]
    memo_file = user_cache_dir() / "file-sha256" / (hashlib.sha256(stamp.encode()).hexdigest()[:32] + ".txt")
    try:
        digest = memo_file.read_text().strip()
        if len(digest) == 64:
            _memo[stamp] = digest
            return digest
    except OSError:
        pass
    digest = sha256_file(f)
    _memo[stamp] = digest
    try:
        with atomic_open(memo_file) as fh:
            fh.write(digest + "\n")
    except OSError:  # a read-only home only costs the re-hash next time
        pass
    return digest


def model_fingerprint(model_path: str | Path) -> str:
    """A content hash of a model directory: names and full sha256 of its weight, config and tokenizer files.

    Content, not path or mtime: the same registry weights installed on two machines (or a run
    directory moved to a pod) must find each other's vectors, and a re-trained model with the
    same file sizes must not. Hashing only a file's head would not do: a fine-tune that freezes
    the embedding layer keeps the first tensors, and the head, unchanged. The full hash of a
    large file is memoised per machine (:func:`user_cache_dir`), keyed by path, size, mtime and
    inode, so it is paid once (about 0.3 s for MiniLM's 90 MB).
    """
    p = Path(model_path)
    if p.is_file():
        files = [p]
    else:
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix in _MODEL_SUFFIXES and f.name not in _NOT_MODEL)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{_file_sha256(f)}|".encode())
    return h.hexdigest()[:16]


def set_fields(spec: EncodingSpec, input_type: str, model_path: str | Path | None = None,
               precision: str = "fp32") -> dict[str, Any]:
    """What decides a vector besides its text."""
    return {
        "model": model_fingerprint(model_path or spec.model_path),
        "prefix": spec.prefix(input_type),
        "max_length": spec.max_length(input_type),
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "input_type": input_type,
        "precision": precision,
    }


def set_key(spec: EncodingSpec, input_type: str, model_path: str | Path | None = None, precision: str = "fp32") -> str:
    return hashlib.sha256(json.dumps(set_fields(spec, input_type, model_path, precision),
                                     sort_keys=True).encode()).hexdigest()[:16]


def text_key(text: str) -> str:
    # hex, not raw bytes: numpy's fixed-width bytes type drops trailing NULs, which breaks lookups
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _encoder_model_path(encoder: Any, spec: EncodingSpec) -> str:
    return str(getattr(encoder, "model_path", None) or spec.model_path)


class EmbeddingStore:
    """``store.embed(texts, "passage", encoder)`` -> float32 [n, dim], embedding only what is missing.

    ``encoder`` is anything with ``spec`` and ``encode(texts, input_type, callback=...)``: the torch
    :class:`~domain_embed.encoding.Encoder` or :class:`~domain_embed.inference.OnnxEncoder`.
    Its ``model_path`` (default: the spec's) and ``precision`` (default fp32) pick the set.
    """

    def __init__(self, root: Path | str, progress: Callable | None = None, log: Callable[[str], None] | None = None,
                 shard_rows: int = 4096):
        self.root = Path(root)
        self.progress = progress
        self.log = log
        self.shard_rows = int(shard_rows)
        self._sets: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_run(cls, run_dir: Path | str, **kw: Any) -> "EmbeddingStore":
        return cls(Path(run_dir) / "embeddings", **kw)

    # ------------------------------------------------------------ reading
    @staticmethod
    def _index(folder: Path) -> dict[str, tuple[Path, int]]:
        out: dict[str, tuple[Path, int]] = {}
        for shard in sorted(folder.glob("shard_*.npz")):
            try:
                with np.load(shard) as z:
                    keys = z["keys"]
            except Exception:  # a torn shard (should not happen with atomic writes) is just re-embedded
                continue
            for i, k in enumerate(keys):
                out[str(k)] = (shard, i)
        return out

    def embed(self, texts: Sequence[str], input_type: str, encoder: Any, desc: str = "",
              shard_rows: int | None = None) -> np.ndarray:
        """Vectors for ``texts`` in order; missing ones are encoded, stored, and counted as misses."""
        spec: EncodingSpec = encoder.spec
        precision = str(getattr(encoder, "precision", "fp32"))
        folder, stat = self._set(spec, input_type, _encoder_model_path(encoder, spec), precision,
                                 str(getattr(encoder, "backend", "torch")))
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        out, missing = self._read(folder, keys, spec.dim)
        todo: list[int] = []
        seen: set[str] = set()
        for i in missing:  # each distinct missing text once
            if keys[i] not in seen:
                seen.add(keys[i])
                todo.append(i)
        # hits + misses == len(texts): a text repeated within one call is embedded once, then a hit
        stat["hits"] += len(texts) - len(todo)
        stat["misses"] += len(todo)
        if not todo:
            return out

        rows = int(shard_rows or self.shard_rows)
        bar = None
        if self.progress is not None:
            bar = self.progress(total=len(todo), desc=desc or f"embed {len(todo)} {input_type}s", unit="text")
        token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        done: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        try:
            for n, s in enumerate(range(0, len(todo), rows)):
                idx = todo[s : s + rows]
                batch = [texts[i] for i in idx]
                cb = bar.update if bar is not None else None
                emb = np.asarray(encoder.encode(batch, input_type, callback=cb), dtype=np.float32)
                with atomic_open(folder / f"shard_{token}_{n:05d}.npz", "wb", encoding=None) as fh:
                    np.savez(fh, keys=np.array([keys[i] for i in idx], dtype="U32"), emb=emb)
                for j, i in enumerate(idx):
                    out[i] = emb[j]
                    done[keys[i]] = emb[j]
        finally:
            if bar is not None:
                bar.close()
            stat["encode_s"] = round(stat["encode_s"] + time.perf_counter() - t0, 3)
        for i in missing:  # duplicates of texts embedded above
            out[i] = done[keys[i]]
        return out

    def lookup(self, texts: Sequence[str], input_type: str, spec: EncodingSpec,
               model_path: str | Path | None = None, precision: str = "fp32") -> np.ndarray | None:
        """The stored vectors of ``texts`` (float32 [n, dim]) when every one is there, else None; embeds
        nothing. For a caller that holds the same model in another form (training's validation of the
        base at step 0) and only wants what an earlier stage already paid for."""
        # A read writes nothing: a set that was never made is a miss, not a new empty folder.
        model_path = str(model_path or spec.model_path)
        folder, _ = self._set_folder(spec, input_type, model_path, precision)
        if not (folder / "set.json").is_file():
            return None
        keys = [text_key(t) for t in texts]
        out, missing = self._read(folder, keys, spec.dim)
        if missing:
            return None
        self._set(spec, input_type, model_path, precision, "torch")[1]["hits"] += len(keys)
        return out

    def _set_folder(self, spec: EncodingSpec, input_type: str, model_path: str,
                    precision: str) -> tuple[Path, dict[str, Any]]:
        """Where one (model, spec, input type, precision) set lives, and the fields that name it."""
        fields = set_fields(spec, input_type, model_path, precision)
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return self.root / f"{input_type}-{key}", fields

    def _set(self, spec: EncodingSpec, input_type: str, model_path: str, precision: str,
             backend: str) -> tuple[Path, dict[str, Any]]:
        """The folder of one (model, spec, input type, precision) set, made if new, and its hit/miss counters."""
        folder, fields = self._set_folder(spec, input_type, model_path, precision)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "set.json").is_file():
            atomic_write_json(folder / "set.json", {**fields, "model_path": model_path})
        stat = self._sets.setdefault(folder.name, {
            "input_type": input_type, "model": fields["model"], "precision": precision,
            "backend": backend, "hits": 0, "misses": 0, "encode_s": 0.0})
        return folder, stat

    def _read(self, folder: Path, keys: list[str], dim: int) -> tuple[np.ndarray, list[int]]:
        """The stored rows of ``keys`` (zeros where missing) and the positions that are missing."""
        index = self._index(folder)
        out = np.zeros((len(keys), dim), dtype=np.float32)
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        missing: list[int] = []
        for i, k in enumerate(keys):
            hit = index.get(k)
            if hit is None:
                missing.append(i)
            else:
                by_shard.setdefault(hit[0], []).append((i, hit[1]))
        for shard, pairs in by_shard.items():  # each shard file is read once
            with np.load(shard) as z:
                emb = z["emb"]
                for i, row in pairs:
                    out[i] = emb[row]
        return out, missing

    def bind(self, encoder: Any) -> "StoredEncoder":
        """An encoder-like object whose ``encode(texts, input_type)`` goes through this store."""
        return StoredEncoder(self, encoder)

    # ------------------------------------------------------------ accounting
    def summary(self) -> dict[str, Any]:
        """Hits and misses per input type (summed over sets) and per set, for the manifest."""
        out: dict[str, Any] = {}
        for stat in self._sets.values():
            t = out.setdefault(stat["input_type"], {"hits": 0, "misses": 0})
            t["hits"] += stat["hits"]
            t["misses"] += stat["misses"]
        out["sets"] = {name: dict(s) for name, s in sorted(self._sets.items())}
        return out

    def counts(self, input_type: str) -> tuple[int, int]:
        t = self.summary().get(input_type) or {"hits": 0, "misses": 0}
        return int(t["hits"]), int(t["misses"])

    @property
    def used(self) -> bool:
        return bool(self._sets)


class StoredEncoder:
    """Wraps an encoder so that every ``encode`` reads and fills the run's store."""

    def __init__(self, store: EmbeddingStore, encoder: Any):
        self.store, self.encoder = store, encoder
        self.spec = encoder.spec

    def encode(self, texts: Sequence[str], input_type: str, **_: Any) -> np.ndarray:
        return self.store.embed(texts, input_type, self.encoder)

    def encode_queries(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, "query", **kw)

    def encode_passages(self, texts: Sequence[str], **kw: Any) -> np.ndarray:
        return self.encode(texts, "passage", **kw)

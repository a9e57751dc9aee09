"""An on-disk embedding cache keyed by (model, encoding spec, input type, text).

Re-running mining after a config change (margin, top-k, index type) must not re-embed the corpus:
embeddings live in ``mine/cache/<set key>/shard_*.npz`` where the set key hashes the model
weights' identity and the spec fields that change a vector, and each row is keyed by the text's
sha256. Texts are embedded ``shard_rows`` at a time, so memory is bounded by one shard plus the
output matrix the index needs anyway.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..config import EncodingSpec
from ..rundir import atomic_open


def model_fingerprint(model_path: str | Path) -> str:
    """Path plus name, size and mtime of the weight and config files: cheap, and changes with the weights."""
    p = Path(model_path)
    parts = [str(p.resolve())]
    for f in sorted(p.glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".pt"):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{int(st.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def set_key(spec: EncodingSpec, input_type: str) -> str:
    fields = {
        "model": model_fingerprint(spec.model_path),
        "prefix": spec.prefix(input_type),
        "max_length": spec.max_length(input_type),
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "input_type": input_type,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def text_key(text: str) -> str:
    # hex, not raw bytes: numpy's fixed-width bytes type drops trailing NULs, which breaks lookups
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    def __init__(self, root: Path, spec: EncodingSpec, input_type: str):
        self.dir = Path(root) / f"{input_type}-{set_key(spec, input_type)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        self.input_type = input_type
        self.hits = 0
        self.misses = 0

    def _index(self) -> dict[str, tuple[Path, int]]:
        out: dict[str, tuple[Path, int]] = {}
        for shard in sorted(self.dir.glob("shard_*.npz")):
            try:
                with np.load(shard) as z:
                    keys = z["keys"]
            except Exception:  # a torn shard (should not happen with atomic writes) is just re-embedded
                continue
            for i, k in enumerate(keys):
                out[str(k)] = (shard, i)
        return out

    def embed(self, texts: Sequence[str], encode: Callable[[list[str]], np.ndarray], shard_rows: int = 4096,
              progress: Callable | None = None) -> np.ndarray:
        """Embeddings for ``texts`` in order, [n, dim] float32; missing ones are encoded and stored."""
        keys = [text_key(t) for t in texts]
        index = self._index()
        out = np.zeros((len(texts), self.spec.dim), dtype=np.float32)
        # Fill hits shard by shard so each shard file is read once.
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        missing: list[int] = []
        seen_missing: set[str] = set()
        for i, k in enumerate(keys):
            hit = index.get(k)
            if hit is None:
                missing.append(i)
            else:
                by_shard.setdefault(hit[0], []).append((i, hit[1]))
        for shard, pairs in by_shard.items():
            with np.load(shard) as z:
                emb = z["emb"]
                for i, row in pairs:
                    out[i] = emb[row]
        self.hits = len(texts) - len(missing)
        # Embed each distinct missing text once.
        todo: list[int] = []
        for i in missing:
            if keys[i] not in seen_missing:
                seen_missing.add(keys[i])
                todo.append(i)
        self.misses = len(todo)
        n_existing = len(list(self.dir.glob("shard_*.npz")))
        starts = range(0, len(todo), shard_rows)
        if progress is not None:
            starts = progress(starts, total=len(starts), desc=f"embed {self.input_type}s")
        done: dict[str, np.ndarray] = {}
        for s_i, s in enumerate(starts):
            idx = todo[s : s + shard_rows]
            emb = np.asarray(encode([texts[i] for i in idx]), dtype=np.float32)
            shard = self.dir / f"shard_{n_existing + s_i:06d}.npz"
            with atomic_open(shard, "wb", encoding=None) as fh:
                np.savez(fh, keys=np.array([keys[i] for i in idx], dtype="U32"), emb=emb)
            for j, i in enumerate(idx):
                out[i] = emb[j]
                done[keys[i]] = emb[j]
        for i in missing:  # duplicates of texts embedded above
            out[i] = done[keys[i]]
        return out

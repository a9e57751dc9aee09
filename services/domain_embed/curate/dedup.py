"""Exact and near-duplicate document removal that runs on CPU.

Curator's exact and fuzzy dedup workflows need cudf (a GPU), so on CPU these two passes stand in:
a hash of the normalised text, then MinHash over word 5-gram shingles with an LSH index
(datasketch). Both keep the first document in the deterministic corpus order, so the same corpus
always loses the same documents.
"""

from __future__ import annotations

import hashlib
import re
from typing import Sequence

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalise(text: str) -> str:
    """Case-folded words joined by single spaces: what "the same text" means for dedup and doc ids."""
    return " ".join(_NON_WORD.sub(" ", text.casefold()).split())


def doc_id(text: str) -> str:
    return "d_" + hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()[:16]


def exact_duplicates(texts: Sequence[str]) -> list[int]:
    """Indices of documents whose normalised text equals an earlier one's."""
    seen: set[str] = set()
    dups = []
    for i, t in enumerate(texts):
        h = hashlib.sha256(normalise(t).encode("utf-8")).hexdigest()
        if h in seen:
            dups.append(i)
        else:
            seen.add(h)
    return dups


def _shingles(text: str, n: int) -> set[bytes]:
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, ngram: int = 5,
                    seed: int = 1) -> list[tuple[int, int, float]]:
    """(index, index of the earlier document it duplicates, estimated Jaccard) for near-duplicates.

    A document is a near-duplicate when the LSH index returns an earlier kept document whose
    MinHash Jaccard estimate is at least ``threshold``; LSH candidates below it are not removed.
    """
    from datasketch import MinHash, MinHashLSH

    # LSH bands are tuned a little below the threshold so that pairs just above it are not missed
    # (banding has false negatives near its own threshold); the estimate below is the decision.
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=num_perm)
    hashes: dict[int, MinHash] = {}
    out = []
    for i, t in enumerate(texts):
        sh = _shingles(t, ngram)
        if not sh:
            continue
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(sh))
        best, best_j = None, 0.0
        for key in lsh.query(m):
            j = m.jaccard(hashes[key])
            if j >= threshold and (j > best_j or (j == best_j and best is not None and key < best)):
                best, best_j = key, j
        if best is not None:
            out.append((i, best, best_j))
            continue
        lsh.insert(i, m)
        hashes[i] = m
    return out

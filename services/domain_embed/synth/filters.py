"""Filters that turn weak generated queries into usable training pairs.

Each returns a reason string (why a pair is dropped) or None, or works on a batch of pairs, so the
stage can count kept and dropped pairs at every filter.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_WORD = re.compile(r"[\w'-]+", re.UNICODE)
_QUESTION_START = re.compile(
    r"^(what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|can|could|should|would|will|"
    r"may|might|must|shall|has|have|had|in what|for what|to what|under what|explain|describe|list|name|give)\b",
    re.I)
# Phrases that make a query depend on the prompt rather than stand alone.
_CONTEXT_REFS = re.compile(r"\b(the (given |above |following |provided )?(passage|text|paragraph|excerpt|snippet)|"
                           r"passage \d|according to the (text|passage|author)|this (passage|text|excerpt)|"
                           r"(lines?|sentences?|paragraphs?|examples?|code|commands?) (above|below))\b", re.I)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def clean_question(q: str) -> str:
    q = q.strip().strip('"').strip()
    q = re.sub(r"^(question|query|search query|q)\s*[:\-]\s*", "", q, flags=re.I)
    return re.sub(r"\s+", " ", q).strip()


def format_reason(question: str, query_type: str, min_words: int = 3, max_words: int = 40,
                  keyword_max_words: int = 10) -> str | None:
    """Why ``question`` is not a usable query of ``query_type``, or None."""
    q = question.strip()
    n = len(words(q))
    if n == 0:
        return "empty"
    if query_type in ("keyword", "heading", "title"):
        if n > keyword_max_words:
            return "too_long"
        if query_type == "keyword" and q[-1] in ",;:":  # a sentence cut off by the length cap
            return "fragment"
        return None
    if n < min_words:
        return "too_short"
    if n > max_words:
        return "too_long"
    if _CONTEXT_REFS.search(q):
        return "refers_to_passage"
    if not (q.endswith("?") or _QUESTION_START.match(q)):
        return "not_a_question"
    if q.count("?") > 1:
        return "several_questions"
    return None


def longest_copied_ngram(question: str, passage: str) -> int:
    """Length in words of the longest run of consecutive question words found verbatim in ``passage``."""
    qw, pw = words(question), words(passage)
    if not qw or not pw:
        return 0
    pos: dict[str, list[int]] = {}
    for i, w in enumerate(pw):
        pos.setdefault(w, []).append(i)
    best = 0
    # Dynamic programming over matches: run[j] = length of the match ending at passage word j.
    prev: dict[int, int] = {}
    for w in qw:
        cur: dict[int, int] = {}
        for j in pos.get(w, ()):
            cur[j] = prev.get(j - 1, 0) + 1
            best = max(best, cur[j])
        prev = cur
    return best


def dedup_by_cosine(vectors: np.ndarray, threshold: float) -> tuple[list[int], dict[int, int]]:
    """Greedy near-duplicate removal in the given order (earlier rows win).

    Returns the kept row indices and, for each dropped row, the kept row it duplicates. Vectors must
    be L2-normalised (cosine = dot product).
    """
    kept: list[int] = []
    dup_of: dict[int, int] = {}
    if len(vectors) == 0:
        return kept, dup_of
    kept_vecs = np.zeros((0, vectors.shape[1]), dtype=np.float32)
    for i, v in enumerate(vectors):
        if len(kept):
            sims = kept_vecs @ v
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                dup_of[i] = kept[j]
                continue
        kept.append(i)
        kept_vecs = np.vstack([kept_vecs, v[None, :]])
    return kept, dup_of


def round_trip_ranks(query_vecs: np.ndarray, corpus_vecs: np.ndarray, positives: Sequence[Sequence[int]],
                     batch: int = 256) -> list[int]:
    """For each query, the 1-based rank of its best-ranked positive among all corpus rows.

    Exact inner-product search (the corpus of one run fits easily); ties count against the query.
    """
    ranks: list[int] = []
    for s in range(0, len(query_vecs), batch):
        scores = query_vecs[s : s + batch] @ corpus_vecs.T
        for row, pos in zip(scores, positives[s : s + batch]):
            best = max(float(row[p]) for p in pos)
            ranks.append(int((row > best).sum()) + 1 if np.isfinite(best) else len(row) + 1)
    return ranks

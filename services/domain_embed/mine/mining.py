"""Positive-aware hard-negative mining.

For each training query, the base model and a FAISS index propose the ``top_k`` most similar
passages; a candidate becomes a hard negative only if it is

* not one of the query's positives (all of them, not just the one trained on),
* not a near-duplicate of a positive (identical normalised text, or cosine above
  ``near_dup_threshold`` to any positive) -- those are positives in disguise, and
* below the margin relative to the *lowest* positive score.

The recipe's TopK-PercPos rule keeps ``score < 0.95 * min_pos``. When ``min_pos`` is negative,
``0.95 * min_pos`` is *above* ``min_pos``, so the rule lets through candidates that score higher
than the positive. We use ``score < min_pos - (1 - margin) * |min_pos|``, which equals the recipe
for positive scores and stays below the positive for negative ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..beir import build_index, search  # noqa: F401  (dense search lives on the lower floor; mine uses it)
from ..errors import UserError


def margin_threshold(min_pos: float, margin: float, margin_type: str = "perc_pos") -> float:
    """The score a candidate must stay strictly under to count as a negative."""
    if margin_type == "perc_pos":
        if not 0.0 < margin <= 1.0:
            raise UserError(f"mine.margin={margin} must be in (0, 1] for margin_type=perc_pos (e.g. 0.95)")
        return float(min_pos - (1.0 - margin) * abs(min_pos))
    if margin_type == "absolute":
        if margin < 0:
            raise UserError(f"mine.margin={margin} must be >= 0 for margin_type=absolute (e.g. 0.05)")
        return float(min_pos - margin)
    raise UserError(f"mine.margin_type={margin_type!r} is not one of perc_pos, absolute")


def normalise_text(t: str) -> str:
    return re.sub(r"\s+", " ", t).strip().lower()



@dataclass
class MineStats:
    queries: int = 0
    short: int = 0                     # got fewer negatives than asked
    rejected_positive: int = 0
    rejected_near_dup: int = 0
    rejected_margin: int = 0
    pos_scores: list[float] = field(default_factory=list)
    neg_scores: list[float] = field(default_factory=list)
    neg_counts: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        def st(xs: list[float], name: str) -> dict:
            if not xs:
                return {f"{name}_mean": None}
            a = np.asarray(xs)
            return {f"{name}_mean": round(float(a.mean()), 4), f"{name}_min": round(float(a.min()), 4),
                    f"{name}_max": round(float(a.max()), 4), f"{name}_std": round(float(a.std()), 4)}

        return {
            "queries": self.queries,
            "queries_short_of_negatives": self.short,
            "negatives_per_query_mean": round(float(np.mean(self.neg_counts)), 3) if self.neg_counts else 0.0,
            "rejected_positive": self.rejected_positive,
            "rejected_near_duplicate": self.rejected_near_dup,
            "rejected_margin": self.rejected_margin,
            **st(self.pos_scores, "pos_score"),
            **st(self.neg_scores, "neg_score"),
        }


def select_negatives(
    q_emb: np.ndarray,
    cand_ids: Sequence[int],
    cand_scores: Sequence[float],
    pos_idx: Sequence[int],
    passage_emb: np.ndarray,
    texts: Sequence[str],
    num_negatives: int,
    margin: float,
    margin_type: str = "perc_pos",
    near_dup_threshold: float = 0.98,
    stats: MineStats | None = None,
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Positives (with scores) and up to ``num_negatives`` hard negatives for one query.

    ``cand_*`` are the search results (best first); ``pos_idx`` index rows of ``passage_emb``.
    """
    stats = stats if stats is not None else MineStats()
    pos_set = set(int(p) for p in pos_idx)
    pos_emb = passage_emb[list(pos_idx)]
    pos_scores = pos_emb @ q_emb
    min_pos = float(pos_scores.min())
    thr = margin_threshold(min_pos, margin, margin_type)
    pos_texts = {normalise_text(texts[p]) for p in pos_idx}
    negs: list[tuple[int, float]] = []
    neg_texts: set[str] = set()
    for cid, score in zip(cand_ids, cand_scores):
        cid = int(cid)
        if cid < 0:  # faiss pads with -1 when it has fewer results
            continue
        if cid in pos_set:
            stats.rejected_positive += 1
            continue
        nt = normalise_text(texts[cid])
        if nt in pos_texts or float((pos_emb @ passage_emb[cid]).max()) > near_dup_threshold:
            stats.rejected_near_dup += 1
            continue
        if not float(score) < thr:
            stats.rejected_margin += 1
            continue
        if nt in neg_texts:  # two copies of one passage would be one negative counted twice
            continue
        neg_texts.add(nt)
        negs.append((cid, float(score)))
        if len(negs) >= num_negatives:
            break
    stats.queries += 1
    stats.short += int(len(negs) < num_negatives)
    stats.pos_scores.extend(float(s) for s in pos_scores)
    stats.neg_scores.extend(s for _, s in negs)
    stats.neg_counts.append(len(negs))
    return [(int(p), float(s)) for p, s in zip(pos_idx, pos_scores)], negs

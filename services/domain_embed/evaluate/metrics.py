"""BEIR retrieval metrics -- nDCG, Recall, MAP and Precision at k -- matching trec_eval's definitions.

* ``ndcg@k``: gain = graded relevance (linear, as trec_eval's ``ndcg_cut``), discount 1/log2(rank+1),
  ideal DCG from the qrels.
* ``recall@k``: relevant documents retrieved in the top k / all relevant documents.
* ``map@k``: sum of precision at each relevant rank within k / all relevant documents (``map_cut``).
* ``precision@k``: relevant documents in the top k / k (``P_k``; k, not the number retrieved).

Results are ranked by score, ties broken by document id descending, as trec_eval does. Queries
that have judgments but no results count as zero; queries without a relevant judgment are skipped.
Cross-checked against pytrec_eval in tests/evaluate.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def _ranked(docs: Mapping[str, float]) -> list[str]:
    # trec_eval: score descending, then docno descending
    return [d for d, _ in sorted(docs.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def per_query(qrels: Qrels, run: Run, k_values: Iterable[int]) -> dict[str, dict[str, float]]:
    ks = sorted(set(int(k) for k in k_values))
    out: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        rel = {d: int(r) for d, r in judged.items() if int(r) > 0}
        if not rel:
            continue
        ranked = _ranked(run.get(qid, {}))
        ideal = sorted(rel.values(), reverse=True)
        m: dict[str, float] = {}
        for k in ks:
            top = ranked[:k]
            dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            hits = [i for i, d in enumerate(top) if d in rel]
            m[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
            m[f"recall@{k}"] = len(hits) / len(rel)
            m[f"precision@{k}"] = len(hits) / k
            m[f"map@{k}"] = sum((n + 1) / (i + 1) for n, i in enumerate(hits)) / len(rel)
        out[qid] = m
    return out


def evaluate(qrels: Qrels, run: Run, k_values: Iterable[int] = (1, 5, 10, 100)) -> dict[str, float]:
    """Mean of each metric over the judged queries, e.g. ``{"ndcg@10": 0.71, ...}``."""
    pq = per_query(qrels, run, k_values)
    if not pq:
        return {}
    keys = next(iter(pq.values())).keys()
    return {key: sum(m[key] for m in pq.values()) / len(pq) for key in keys}

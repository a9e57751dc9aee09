"""The filter cascade as named parts: each filter is an object with a ``name`` that gives, for a batch of
candidate pairs, a drop reason or None per pair; one :class:`FilterRunner` runs them in order and counts
what each keeps and drops (``counts['filters']`` in the manifest, ``dropped.jsonl``).

The cheap filters come first so that the judge only spends requests on survivors.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Callable, Sequence

import numpy as np

from . import filters as F
from .candidates import spread_over_documents
from .prompts import HEADING_EXAMPLES

_EXAMPLE_QUESTIONS = {q.lower() for _, q in HEADING_EXAMPLES}

Row = dict[str, Any]


class Filter:
    """One step of the cascade. ``reasons`` may annotate ``row['quality']`` as it goes."""

    name = "filter"
    run_on_empty = False  # a filter that needs vectors or the LLM is skipped when nothing reaches it

    def enabled(self) -> bool:
        return True

    def reasons(self, rows: list[Row]) -> list[str | None]:
        return [self.reason(r) for r in rows]

    def reason(self, row: Row) -> str | None:  # pragma: no cover - per-row filters override this
        raise NotImplementedError


class FilterRunner:
    """Runs filters in order; ``counts`` per filter (in, kept, dropped by reason, kept by source and LLM type)
    and ``dropped`` (each dropped row with ``dropped_at`` and ``reason``)."""

    def __init__(self, filters: Sequence[Filter]):
        self.filters = list(filters)
        self.counts: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
        self.dropped: list[Row] = []

    def run(self, rows: list[Row]) -> list[Row]:
        for f in self.filters:
            if not f.enabled() or (not rows and not f.run_on_empty):
                continue
            rows = self._apply(f, rows)
        return rows

    def _apply(self, f: Filter, rows: list[Row]) -> list[Row]:
        kept, reasons = [], Counter()
        for r, why in zip(rows, f.reasons(rows)):
            if why is None:
                kept.append(r)
            else:
                reasons[why] += 1
                self.dropped.append({**r, "dropped_at": f.name, "reason": why})
        self.counts[f.name] = {"in": len(rows), "kept": len(kept), "dropped": dict(reasons),
                               "kept_by_source": dict(Counter(r["source"]["kind"] for r in kept)),
                               "kept_llm_by_type": dict(Counter(r["query_type"] for r in kept
                                                                if r["source"]["kind"] == "llm"))}
        return kept


class FormatFilter(Filter):
    """A question of its type: length, question form, no reference to 'the passage'."""

    name = "format"
    run_on_empty = True

    def __init__(self, min_words: int, max_words: int, keyword_max_words: int):
        self.args = (min_words, max_words, keyword_max_words)

    def reason(self, row: Row) -> str | None:
        if row["query_type"] == "question" and F.clean_question(row["question"]).lower() in _EXAMPLE_QUESTIONS:
            return "copied_example"  # the heading prompt's fixed example, not a question about this section
        return F.format_reason(row["question"], row["query_type"], *self.args)


class CopyFilter(Filter):
    """An LLM question that copies ``max_ngram`` consecutive words of its source is dropped."""

    name = "copy"
    run_on_empty = True

    def __init__(self, max_ngram: int, by_id: dict[str, dict]):
        self.max_ngram, self.by_id = max_ngram, by_id

    def reason(self, row: Row) -> str | None:
        if row["source"]["kind"] != "llm" or self.max_ngram <= 0:
            return None
        n = F.longest_copied_ngram(row["question"], "\n".join(self.by_id[s]["text"] for s in row["segment_ids"]))
        row["quality"]["copy_ngram"] = n
        return "copied_span" if n >= self.max_ngram else None


class QueryVectors:
    """Query vectors by text, computed once: dedup and the round trip share them."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray]):
        self.encode = encode
        self.memo: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in texts if t not in self.memo]
        if missing:
            for t, v in zip(missing, self.encode(missing)):
                self.memo[t] = v
        return np.stack([self.memo[t] for t in texts]) if texts else np.zeros((0, 0), dtype=np.float32)


class DedupFilter(Filter):
    """Near-duplicate queries (cosine >= threshold) go; structure queries win, being the cleanest."""

    name = "dedup"

    def __init__(self, threshold: float, vectors: QueryVectors):
        self.threshold, self.vectors = threshold, vectors

    def enabled(self) -> bool:
        return self.threshold > 0

    def reasons(self, rows: list[Row]) -> list[str | None]:
        qvecs = self.vectors([r["question"] for r in rows])
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["source"]["kind"] != "structure", i))
        _, dup_of = F.dedup_by_cosine(qvecs[order], self.threshold)
        for k, j in dup_of.items():
            rows[order[k]]["quality"]["duplicate_of"] = rows[order[j]]["id"]
        return ["near_duplicate" if "duplicate_of" in r["quality"] else None for r in rows]


class RoundTripFilter(Filter):
    """The base model must rank a query's source chunk in its top ``k`` over the whole corpus."""

    name = "round_trip"

    def __init__(self, k: int, vectors: QueryVectors, corpus_vectors: Callable[[], np.ndarray],
                 chunk_index: dict[str, int]):
        self.k, self.vectors, self.corpus_vectors, self.chunk_index = k, vectors, corpus_vectors, chunk_index

    def enabled(self) -> bool:
        return self.k > 0

    def reasons(self, rows: list[Row]) -> list[str | None]:
        qvecs = self.vectors([r["question"] for r in rows])
        ranks = F.round_trip_ranks(qvecs, self.corpus_vectors(),
                                   [[self.chunk_index[s] for s in r["segment_ids"]] for r in rows])
        for r, rank in zip(rows, ranks):
            r["quality"]["round_trip_rank"] = rank
        return ["source_not_in_top_k" if r["quality"]["round_trip_rank"] > self.k else None for r in rows]


class JudgeFilter(Filter):
    """LLM grades (relevance, answerability, clarity); below ``threshold`` is dropped.

    ``grade(rows)`` returns the grade records by key (resumed from the log, the rest requested), and
    ``on_degenerate(text)`` is told when the judge gives (almost) every pair the same grade: then its
    grades are recorded but not used."""

    name = "judge"

    def __init__(self, enabled: bool, jfp: str, threshold: float, on_failure: str, structure: bool,
                 max_same_fraction: float, grade: Callable[[list[Row]], dict[str, dict]],
                 on_degenerate: Callable[[int, str], None]):
        self._enabled, self.jfp, self.threshold = enabled, jfp, threshold
        self.on_failure, self.structure, self.max_same_fraction = on_failure, structure, max_same_fraction
        self.grade, self.on_degenerate = grade, on_degenerate

    def enabled(self) -> bool:
        return self._enabled

    def key(self, row: Row) -> str:
        return f"{self.jfp}|{row['id']}"

    def _judged(self, row: Row) -> bool:
        return row["source"]["kind"] == "llm" or self.structure

    def reasons(self, rows: list[Row]) -> list[str | None]:
        from .generate import degenerate

        to_judge = [r for r in rows if self._judged(r)]
        judged = self.grade(to_judge)
        scores = [judged[k]["scores"] for k in (self.key(r) for r in to_judge) if judged.get(k, {}).get("ok")]
        same = degenerate(scores, self.max_same_fraction)
        if same:
            self.on_degenerate(len(scores), same)
        out: list[str | None] = []
        for r in rows:
            if not self._judged(r):
                out.append(None)
                continue
            rec = judged.get(self.key(r))
            if rec is None or not rec.get("ok"):
                r["quality"]["judge"] = None
                out.append(None if self.on_failure == "keep" else "judge_failed")
                continue
            s = rec["scores"]
            score = round(sum(s.values()) / 3, 2)
            r["quality"]["judge"] = {**s, "score": score}
            out.append(None if same else ("judge_below_threshold" if score < self.threshold else None))
        return out


class StructureShareFilter(Filter):
    """Structure pseudo-queries (headings, titles) at most ``max_share`` of the kept pairs, the last step.

    A corpus of many short documents (man pages, one page an API) gives up to ``structure.max_per_doc``
    headings each and drowns the LLM's questions: on Git's documentation 571 of 629 kept pairs were
    headings. Past the cap, the headings kept are spread over the documents (round robin in a seeded
    order, each document's title and first headings first), so every document keeps its share. A run
    without LLM pairs has nothing to balance, and keeps every heading."""

    name = "structure_share"

    def __init__(self, max_share: float, seed: int):
        self.max_share, self.seed = float(max_share), seed

    def enabled(self) -> bool:
        return self.max_share < 1.0

    def limit(self, n_other: int) -> int:
        """The most structure rows beside ``n_other`` others: s / (s + n_other) <= max_share."""
        return int(self.max_share * n_other / (1.0 - self.max_share) + 1e-9)

    def reasons(self, rows: list[Row]) -> list[str | None]:
        struct = [i for i, r in enumerate(rows) if r["source"]["kind"] == "structure"]
        n_other = len(rows) - len(struct)
        limit = self.limit(n_other)
        if not n_other or len(struct) <= limit:
            return [None] * len(rows)
        keep = set(spread_over_documents(struct, f"{self.seed}:structure_share",
                                         lambda i: rows[i]["doc_ids"][0])[:limit])
        dropped = set(struct) - keep
        return ["structure_share" if i in dropped else None for i in range(len(rows))]

"""BEIR on the lower floor: the dataset layout, its metrics, and dense search. Every stage may use it; none owns it.

* **Files:** ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
  ``qrels/<split>.tsv`` (``query-id<TAB>corpus-id<TAB>score``), so our data works with every BEIR
  tool and theirs with ours.
* **Metrics** (nDCG, Recall, MAP and Precision at k) match trec_eval's definitions: gain = graded
  relevance, discount 1/log2(rank+1), ideal DCG from the qrels; results ranked by score, ties
  broken by document id descending; queries with judgments but no results count as zero, queries
  without a relevant judgment are skipped. Cross-checked against pytrec_eval in tests/evaluate.
* **Dense search:** a FAISS index (flat, IVF or HNSW; GPU when faiss sees one) searched in batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from .errors import UserError
from .files import read_jsonl

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


BOOTSTRAP = 2000  # resamples of the queries for a 95% interval


def bootstrap(values: np.ndarray | list[float], n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile 95% interval over resamples of the queries (``values`` may be paired differences,
    one per query). Seeded, so a report says the same thing twice; resampled in blocks, so memory stays small
    for a held-out set of many thousand queries."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    block = max(1, min(n, 4_000_000 // v.size))
    means = np.concatenate([v[rng.integers(0, v.size, size=(min(block, n - s), v.size))].mean(axis=1)
                            for s in range(0, n, block)])
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def top_hub(run: Run, k: int = 10, relevant: Callable[[str, str], bool] | None = None) -> tuple[str | None, int]:
    """The passage in the most queries' top k where it is not relevant (``relevant(query_id, passage_id)``),
    and in how many. A model tuned on generic queries (one domain word, a title) can pull one passage into
    everyone's results: nDCG barely shows it when the passage sits below the answer, a user does."""
    from collections import Counter

    seen = Counter(d for q, docs in run.items() for d in _ranked(docs)[:k] if not (relevant and relevant(q, d)))
    return seen.most_common(1)[0] if seen else (None, 0)


# ---------------------------------------------------------------- BEIR datasets
@dataclass
class BeirDataset:
    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]


def load_beir(folder: Path | str, split: str | None = None, name: str | None = None) -> BeirDataset:
    """corpus.jsonl, queries.jsonl, qrels/<split>.tsv. ``split`` None: test, else dev, else the only one."""
    folder = Path(folder)
    for f in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / f).is_file():
            raise UserError(f"{folder} is not a BEIR dataset: {f} is missing (need corpus.jsonl, queries.jsonl, qrels/*.tsv)")
    if split is None:
        cands = sorted((folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        names = [p.stem for p in cands]
        split = "test" if "test" in names else "dev" if "dev" in names else names[0] if len(names) == 1 else None
        if split is None:
            raise UserError(f"{folder}/qrels has {names or 'no .tsv files'}; add qrels/test.tsv")
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    corpus = list(read_jsonl(folder / "corpus.jsonl"))
    queries = {str(q["_id"]): str(q["text"]) for q in read_jsonl(folder / "queries.jsonl")}
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise UserError(f"no query in {folder}/queries.jsonl has judgments in qrels/{split}.tsv")
    return BeirDataset(name or folder.name, [str(c["_id"]) for c in corpus], [str(c.get("text", "")) for c in corpus],
                       qids, [queries[q] for q in qids], qrels)


def read_qrels(path: Path | str, split: str = "test") -> dict[str, dict[str, int]]:
    """Relevance judgments as ``{query_id: {corpus_id: score}}`` (integer grades): the one reader, for the
    pipeline's own BEIR folders and for a user's ``--qrels`` alike.

    ``path``: the TSV, or a BEIR folder (``qrels/<split>.tsv``, or ``<split>.tsv`` in it). Lines are
    ``query-id<TAB>corpus-id<TAB>score``; the BEIR header line and TREC's four columns (``qid iter docid
    score``) are accepted. Anything else is an error naming the file, the line and what to write.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        found = next((c for c in (p / "qrels" / f"{split}.tsv", p / f"{split}.tsv") if c.is_file()), None)
        if found is None:
            raise UserError(f"{p} holds no qrels/{split}.tsv; give the TSV file itself (query-id, corpus-id, score)")
        p = found
    if not p.is_file():
        raise UserError(f"qrels file {p} does not exist; give a BEIR TSV 'query-id<TAB>corpus-id<TAB>score'")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{p} is not UTF-8 text; qrels must be a TSV 'query-id<TAB>corpus-id<TAB>score'") from None
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) == 4:  # TREC style: qid, iteration, docid, score
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise UserError(f"{p}:{lineno} has {len(parts)} tab-separated columns, not 3; each line must be "
                            f"'query-id<TAB>corpus-id<TAB>score'")
        qid, did, score = (x.strip() for x in parts)
        try:
            grade = int(float(score))
        except ValueError:
            if lineno == 1:  # the BEIR header line
                continue
            raise UserError(f"{p}:{lineno} has score {score!r}, not a number; use integer relevance grades "
                            f"(0, 1, 2...)") from None
        qrels.setdefault(qid, {})[did] = grade
    if not qrels:
        raise UserError(f"{p} holds no judgments; add lines 'query-id<TAB>corpus-id<TAB>score'")
    return qrels


def write_beir(folder: Path | str, corpus: Iterable[Mapping], queries: Iterable[Mapping],
               qrels: Qrels | None, split: str = "test") -> Path:
    """The one writer: ``corpus`` rows (``_id``, ``title``, ``text``), ``queries`` rows (``_id``, ``text``,
    optional ``metadata``) and ``qrels`` as ``qrels/<split>.tsv`` with its header line. Atomic per file."""
    from .files import atomic_write_jsonl, atomic_write_text

    folder = Path(folder)
    atomic_write_jsonl(folder / "corpus.jsonl",
                       ({"_id": str(c["_id"]), "title": c.get("title") or "", "text": c.get("text") or ""} for c in corpus))
    atomic_write_jsonl(folder / "queries.jsonl", (
        {"_id": str(q["_id"]), "text": q["text"], **({"metadata": q["metadata"]} if "metadata" in q else {})}
        for q in queries))
    if qrels is not None:
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{d}\t{g}" for q, docs in qrels.items() for d, g in docs.items())]
        atomic_write_text(folder / "qrels" / f"{split}.tsv", "\n".join(lines) + "\n")
    return folder


def dense_run(ds: BeirDataset, encode: Callable[[list[str], str], np.ndarray], top_k: int = 100
              ) -> dict[str, dict[str, float]]:
    """Exact inner-product search of every query over the corpus."""
    import faiss

    p = np.ascontiguousarray(encode(ds.corpus_texts, "passage"), dtype=np.float32)
    q = np.ascontiguousarray(encode(ds.query_texts, "query"), dtype=np.float32)
    index = faiss.IndexFlatIP(p.shape[1])
    index.add(p)
    scores, idx = index.search(q, min(top_k, len(ds.corpus_ids)))
    return {qid: {ds.corpus_ids[j]: float(s) for j, s in zip(idx[i], scores[i]) if j >= 0}
            for i, qid in enumerate(ds.query_ids)}


def bm25_run(ds: BeirDataset, top_k: int = 100) -> dict[str, dict[str, float]]:
    import bm25s

    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(ds.corpus_texts, stopwords="en", show_progress=False), show_progress=False)
    k = min(top_k, len(ds.corpus_ids))
    docs, scores = retriever.retrieve(bm25s.tokenize(ds.query_texts, stopwords="en", show_progress=False), k=k,
                                      show_progress=False)
    return {qid: {ds.corpus_ids[int(j)]: float(s) for j, s in zip(docs[i], scores[i])}
            for i, qid in enumerate(ds.query_ids)}


# ---------------------------------------------------------------- dense search
def build_index(emb: np.ndarray, kind: str = "flat", use_gpu: str | bool = "auto", nprobe: int = 16, hnsw_m: int = 32):
    """A FAISS inner-product index over ``emb``; moved to the GPU(s) when present (same code path)."""
    import faiss

    n, d = emb.shape
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39 or 1))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(emb)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise UserError(f"mine.index={kind!r} is not one of flat, ivf, hnsw")
    want_gpu = str(use_gpu).lower() in ("auto", "true", "1")
    n_gpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if str(use_gpu).lower() == "true" and n_gpu == 0:
        raise UserError("mine.use_gpu=true but faiss sees no GPU; install faiss-gpu or set mine.use_gpu=auto")
    if want_gpu and n_gpu > 0 and kind != "hnsw":  # HNSW has no GPU implementation
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(emb)
    return index


def search(index, queries: np.ndarray, k: int, batch: int = 1024, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of every query, ``batch`` queries at a time (``progress``: a ctx.progress factory)."""
    k = min(k, index.ntotal)
    scores = np.zeros((len(queries), k), dtype=np.float32)
    ids = np.zeros((len(queries), k), dtype=np.int64)
    bar = progress(total=len(queries), desc="search", unit="query") if progress is not None else None
    try:
        for s in range(0, len(queries), batch):
            sc, ix = index.search(np.ascontiguousarray(queries[s : s + batch], dtype=np.float32), k)
            scores[s : s + batch], ids[s : s + batch] = sc, ix
            if bar is not None:
                bar.update(len(sc))
    finally:
        if bar is not None:
            bar.close()
    return scores, ids

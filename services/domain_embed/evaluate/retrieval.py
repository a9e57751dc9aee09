"""BEIR-layout datasets, dense retrieval with FAISS (via the shared encoding spec), and BM25."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UserError
from ..rundir import read_jsonl


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


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise UserError(f"qrels file {path} is missing")
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh, delimiter="\t")):
            if not row or (i == 0 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise UserError(f"{path}:{i + 1}: expected 'query-id<TAB>corpus-id<TAB>score'")
            out.setdefault(row[0], {})[row[1]] = int(float(row[2]))
    return out


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

"""BEIR datasets, dense retrieval and BM25: on the lower floor (:mod:`domain_embed.beir`); re-exported here."""

from ..beir import BeirDataset, bm25_run, dense_run, load_beir, read_qrels  # noqa: F401

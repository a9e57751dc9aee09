"""No text is embedded twice by the base model in one run: synthesis's round trip fills the run's
embedding store, and mining (which embeds the same chunks and the same questions) finds them all.

Real stages at a tiny size: the sample chunks of tests/synth, synthesis with its LLM-free
structure queries (heading queries, dedup and round trip with the real MiniLM), the real split,
then mining with real FAISS."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from domain_embed.config import load_config
from domain_embed.rundir import read_jsonl, run_stage
from domain_embed.stages import STAGES

CHUNKS = Path(__file__).parent.parent / "synth" / "sample_chunks.jsonl"
# No LLM generations and no judge: synthesis runs only its structure queries, dedup and round trip.
OVERRIDES = ["synth.types.factual=0", "synth.types.keyword=0", "synth.types.multi_hop=0",
             "synth.judge.enabled=false", "synth.round_trip_top_k=10",
             "model.max_query_length=32", "model.max_passage_length=128", "mine.num_negatives=2", "mine.top_k=5"]


def _run_through_split(rd: Path, extra: list[str] = ()) -> None:
    cfg = load_config(rd, [*OVERRIDES, *extra])

    def curate(ctx):
        shutil.copy(CHUNKS, ctx.dir / "chunks.jsonl")
        return {}

    run_stage(dataclasses.replace(STAGES["curate"], fn=curate), rd, cfg, STAGES, quiet=True)
    syn = run_stage(STAGES["synth"], rd, cfg, STAGES, quiet=True)
    e = syn["counts"]["embeddings"]
    n_chunks = len(CHUNKS.read_text().splitlines())
    # synthesis embedded every chunk once (round trip) and every question once (dedup)
    assert e["passage"]["misses"] == n_chunks and e["passage"]["hits"] == 0
    assert e["query"]["misses"] > 0
    run_stage(STAGES["split"], rd, cfg, STAGES, quiet=True)


def test_mining_after_synthesis_embeds_nothing_new(tmp_path):
    rd = tmp_path / "run"
    _run_through_split(rd)
    cfg = load_config(rd, [])
    m = run_stage(STAGES["mine"], rd, cfg, STAGES, quiet=True)
    c = m["counts"]
    n_pass = len(list(read_jsonl(rd / "split" / "train_corpus.jsonl")))
    assert c["passages"] == n_pass > 0 and c["queries"] > 0
    assert c["passage_cache_misses"] == 0 and c["passage_cache_hits"] == n_pass
    assert c["query_cache_misses"] == 0 and c["query_cache_hits"] == c["queries"]
    assert c["embeddings"]["passage"] == {"hits": n_pass, "misses": 0}
    # the store is the run's, not a stage's
    assert (rd / "embeddings").is_dir() and not (rd / "mine" / "cache").exists()
    sets = [json.loads(p.read_text()) for p in (rd / "embeddings").glob("*/set.json")]
    assert {s["input_type"] for s in sets} == {"passage", "query"} and len({s["model"] for s in sets}) == 1

    # a forced rerun embeds nothing either
    again = run_stage(STAGES["mine"], rd, cfg, STAGES, force=True, quiet=True)["counts"]
    assert again["passage_cache_misses"] == 0 and again["query_cache_misses"] == 0

    # a spec field that changes a vector (max_passage_length) misses every passage, not the queries
    cfg64 = load_config(rd, ["model.max_passage_length=64"], save=False)
    c64 = run_stage(STAGES["mine"], rd, cfg64, STAGES, quiet=True)["counts"]
    assert c64["passage_cache_misses"] == n_pass and c64["passage_cache_hits"] == 0
    assert c64["query_cache_misses"] == 0

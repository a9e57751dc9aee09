"""The run's embedding store: a rerun embeds nothing, a changed spec field or precision misses,
duplicates are embedded once, and the model fingerprint follows content, not paths or mtimes."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest

from domain_embed.embed_store import EmbeddingStore, model_fingerprint


class CountingEncoder:
    """The real torch Encoder, counting the texts it is asked to embed."""

    def __init__(self, enc, precision="fp32"):
        self.enc, self.spec, self.model_path, self.precision = enc, enc.spec, enc.model_path, precision
        self.backend = "torch"
        self.seen: list[str] = []

    def encode(self, texts, input_type, callback=None):
        self.seen += list(texts)
        return self.enc.encode(texts, input_type, callback=callback)


@pytest.fixture(scope="module")
def torch_encoder(spec):
    from domain_embed.encoding import Encoder

    return Encoder(dataclasses.replace(spec, max_passage_length=64), device="cpu", batch_size=4)


TEXTS = ["B-tree indexes keep keys sorted.", "VACUUM reclaims dead rows.", "B-tree indexes keep keys sorted.",
         "GRANT gives a role privileges.", "Partition pruning skips partitions.", "pg_dump makes a logical backup."]


def test_rerun_embeds_nothing_and_a_changed_spec_misses(tmp_path, torch_encoder):
    enc = CountingEncoder(torch_encoder)
    store = EmbeddingStore(tmp_path / "embeddings", shard_rows=2)
    v1 = store.embed(TEXTS, "passage", enc)
    assert enc.seen == [t for i, t in enumerate(TEXTS) if t not in TEXTS[:i]]  # the duplicate embedded once
    assert store.counts("passage") == (1, 5)  # the in-call duplicate counts as a hit
    ref = torch_encoder.encode(TEXTS, "passage")
    np.testing.assert_allclose(v1, ref, atol=1e-5)
    assert len(list((tmp_path / "embeddings").glob("passage-*/shard_*.npz"))) == 3  # 5 texts, 2 a shard

    # a new store over the same folder (a rerun): nothing embedded, same vectors, in the asked order
    enc2 = CountingEncoder(torch_encoder)
    store2 = EmbeddingStore(tmp_path / "embeddings")
    v2 = store2.embed(TEXTS[::-1], "passage", enc2)
    assert enc2.seen == [] and store2.counts("passage") == (6, 0)
    np.testing.assert_allclose(v2, v1[::-1], atol=0)

    # queries are another set; so is another max_passage_length, and int8
    assert store2.embed(TEXTS[:2], "query", enc2) is not None and store2.counts("query") == (0, 2)
    from domain_embed.encoding import Encoder

    longer = CountingEncoder(Encoder(dataclasses.replace(torch_encoder.spec, max_passage_length=128), device="cpu"))
    store2.embed(TEXTS, "passage", longer)
    assert len(longer.seen) == 5 and store2.counts("passage") == (6 + 1, 5)
    q8 = CountingEncoder(torch_encoder, precision="int8")
    store2.embed(TEXTS[:1], "passage", q8)
    assert q8.seen == TEXTS[:1]
    s = store2.summary()
    assert len(s["sets"]) == 4 and {v["precision"] for v in s["sets"].values()} == {"fp32", "int8"}


def test_lookup_gives_all_stored_vectors_or_none_and_embeds_nothing(tmp_path, torch_encoder):
    """Training's base validation asks for vectors an earlier stage paid for: all of them, or it encodes
    the passages itself; a lookup never embeds, and a different spec is another set."""
    enc = CountingEncoder(torch_encoder)
    store = EmbeddingStore(tmp_path)
    v = store.embed(TEXTS[:4], "passage", enc)
    spec = torch_encoder.spec
    got = EmbeddingStore(tmp_path).lookup(TEXTS[2::-1], "passage", spec, torch_encoder.model_path)
    np.testing.assert_allclose(got, v[2::-1], atol=0)
    assert EmbeddingStore(tmp_path).lookup(TEXTS, "passage", spec, torch_encoder.model_path) is None  # 2 missing
    assert EmbeddingStore(tmp_path).lookup(TEXTS[:2], "query", spec, torch_encoder.model_path) is None
    longer = dataclasses.replace(spec, max_passage_length=128)
    reader = EmbeddingStore(tmp_path)
    assert reader.lookup(TEXTS[:2], "passage", longer, torch_encoder.model_path) is None
    assert len(enc.seen) == 3  # the lookups embedded nothing
    # a read writes nothing: the sets that were never made are still absent, and not in the accounting
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["passage"]
    assert reader.summary() == {"sets": {}}


def test_a_torn_shard_is_re_embedded_not_fatal(tmp_path, torch_encoder):
    enc = CountingEncoder(torch_encoder)
    EmbeddingStore(tmp_path, shard_rows=3).embed(TEXTS, "passage", enc)
    shards = sorted(tmp_path.glob("passage-*/shard_*.npz"))
    shards[0].write_bytes(shards[0].read_bytes()[:50])  # e.g. a disk filled up outside our atomic writes
    enc2 = CountingEncoder(torch_encoder)
    out = EmbeddingStore(tmp_path).embed(TEXTS, "passage", enc2)
    assert 0 < len(enc2.seen) <= 3
    np.testing.assert_allclose(out, torch_encoder.encode(TEXTS, "passage"), atol=1e-5)


def test_fingerprint_follows_content_not_path_or_mtime(tmp_path, minilm_path):
    a = tmp_path / "a"
    shutil.copytree(minilm_path, a, copy_function=shutil.copy)  # new path, new mtimes
    os.utime(a / "config.json", (1, 1))
    assert model_fingerprint(a) == model_fingerprint(minilm_path)
    # same sizes, one weight byte different (a fine-tune that keeps shapes): another model
    b = tmp_path / "b"
    shutil.copytree(a, b)
    w = next(f for f in b.iterdir() if f.suffix in (".safetensors", ".bin"))
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    assert w.stat().st_size == (a / w.name).stat().st_size
    assert model_fingerprint(b) != model_fingerprint(a)

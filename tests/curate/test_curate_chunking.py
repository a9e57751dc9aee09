"""Chunks never exceed the encoding spec's passage length, keep their context, and have stable ids."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain_embed.curate.chunking import Chunker, chunk_id, split_sentences
from domain_embed.curate.readers import HEADING


@pytest.fixture(scope="module")
def chunker(tokenizer, spec):
    return Chunker(tokenizer, spec.passage_prefix, spec.max_passage_length, chunk_sentences=5,
                   overlap_sentences=1, min_chunk_tokens=8)


def _exact(tokenizer, spec, text):
    return len(tokenizer(spec.passage_prefix + text)["input_ids"])


def test_pathological_inputs_never_exceed_the_limit(chunker, tokenizer, spec, paras):
    prose = " ".join(paras("transaction-iso.html", 3))
    long_sentence = " ".join(f"column_{i}_value" for i in range(900)) + "."   # one 'sentence', >2000 tokens
    no_spaces = "x" * 5000                                                    # one 'word'
    code = "\n".join(f"    SELECT {i}, repeat('abc', {i}) FROM generate_series(1, {i});" for i in range(120))
    table = "\n".join(f"fn_{i}(a int) | returns the {i}th value of the argument list" for i in range(80))
    long_title = "A " + "very " * 300 + "long title"
    text = "\n\n".join([HEADING + "Isolation", prose, long_sentence, no_spaces, code, table,
                        HEADING + "x" * 40, "émoji 🚀 and CJK 日本語テキスト " * 200])
    chunks = chunker.chunk_document(long_title, text)
    assert len(chunks) > 20
    for ch in chunks:
        n = _exact(tokenizer, spec, ch.text)
        assert n == ch.n_tokens <= spec.max_passage_length
    # every word of the long sentence survives somewhere (cut, never truncated away)
    joined = "\n".join(ch.text for ch in chunks)
    assert "column_0_value" in joined and "column_899_value" in joined


def test_context_line_carries_title_and_section(chunker, paras):
    p = paras("wal-intro.html", 3)
    text = f"{HEADING}Write-Ahead Logging (WAL)\n\n{p[0]}\n\n{HEADING}Benefits\n\n{p[1]}\n\n{p[2]}"
    chunks = chunker.chunk_document("Write-Ahead Logging (WAL)", text)
    assert chunks[0].text.startswith("Write-Ahead Logging (WAL)\n")  # section == title: said once
    later = [c for c in chunks if c.section == "Benefits"]
    assert later and all(c.text.startswith("Write-Ahead Logging (WAL) — Benefits\n") for c in later)


def test_admonition_headings_do_not_replace_the_section(chunker, paras):
    p = paras("mvcc-intro.html", 2)
    text = f"{HEADING}Introduction\n\n{p[0]}\n\n{HEADING}Note\n\n{p[1]}"
    assert {c.section for c in chunker.chunk_document("MVCC", text)} == {"Introduction"}


def test_sentence_target_and_overlap(tokenizer, spec):
    sents = [f"Sentence number {i} talks about vacuum and the visibility map in detail." for i in range(12)]
    ch = Chunker(tokenizer, spec.passage_prefix, spec.max_passage_length, chunk_sentences=4,
                 overlap_sentences=1, min_chunk_tokens=0, include_title=False)
    chunks = ch.chunk_document("T", " ".join(sents))
    bodies = [c.text for c in chunks]
    assert bodies[0].count("Sentence number") == 4
    assert "Sentence number 3 " in bodies[0] and bodies[1].startswith("Sentence number 3 ")  # overlap of one
    assert "Sentence number 11 " in bodies[-1]


def test_tiny_chunks_are_dropped_or_merged(tokenizer, spec, paras):
    ch = Chunker(tokenizer, spec.passage_prefix, spec.max_passage_length, chunk_sentences=5,
                 overlap_sentences=0, min_chunk_tokens=24)
    text = f"{HEADING}Tiny\n\nOk.\n\n{HEADING}Real\n\n" + paras("mvcc-intro.html", 1)[0]
    chunks = ch.chunk_document("Doc", text)
    assert all(c.n_tokens >= 24 for c in chunks) and ch.dropped_small == 1


def test_sentence_splitter_respects_abbreviations():
    assert split_sentences("Use e.g. VACUUM here. Then ANALYZE the table! Done?") == [
        "Use e.g. VACUUM here.", "Then ANALYZE the table!", "Done?"]


def test_chunk_ids_are_content_hashes():
    assert chunk_id("d_1", "abc") == chunk_id("d_1", "abc")
    assert chunk_id("d_1", "abc") != chunk_id("d_2", "abc")
    assert chunk_id("d_1", "abc").startswith("c_") and len(chunk_id("d_1", "abc")) == 18


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400),
                min_size=1, max_size=8),
       st.integers(min_value=24, max_value=96))
def test_any_text_fits_any_small_limit(tokenizer, spec, blocks, limit):
    ch = Chunker(tokenizer, spec.passage_prefix, limit, chunk_sentences=3, overlap_sentences=1, min_chunk_tokens=0)
    for c in ch.chunk_document("Title of the doc", "\n\n".join(blocks)):
        assert len(tokenizer(spec.passage_prefix + c.text)["input_ids"]) == c.n_tokens <= limit

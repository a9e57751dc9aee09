"""Loaders for real queries and qrels: the accepted layouts, and one clear line for each bad file."""

from __future__ import annotations

import json

import pytest

from domain_embed.errors import UserError
from domain_embed.user_queries import load_qrels, load_real_queries, real_queries_beir, style_examples, validate_qrels


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_jsonl_with_text_or_query_field(tmp_path):
    f = write(tmp_path / "q.jsonl", '{"text": "vacuum full lock"}\n\n{"query": "pg_dump  custom format", "id": 7}\n'
                                    '{"text": "Vacuum full lock"}\n')
    q = load_real_queries(f)
    assert q == {"rq1": "vacuum full lock", "7": "pg_dump custom format"}  # blank line, case-dup dropped


def test_beir_folder_and_plain_text(tmp_path):
    write(tmp_path / "beir" / "queries.jsonl", '{"_id": "a", "text": "wal archive"}\n{"_id": "b", "text": "gin index"}\n')
    assert load_real_queries(tmp_path / "beir") == {"a": "wal archive", "b": "gin index"}
    assert load_real_queries(write(tmp_path / "q.txt", "one\ntwo\n")) == {"rq1": "one", "rq2": "two"}


@pytest.mark.parametrize("content,needle", [
    ('{"text": "ok"}\n{"txt": "typo"}\n', "no 'text' or 'query' field (keys: txt)"),
    ('{"text": "ok"}\nnot json\n', ":2 is not valid JSON"),
    ('[1, 2]\n', "is a JSON list"),
    ("\n\n", "holds no queries"),
    ('{"_id": "x", "text": "a"}\n{"_id": "x", "text": "b"}\n', "repeats query id 'x'"),
])
def test_bad_query_files(tmp_path, content, needle):
    f = write(tmp_path / "q.jsonl", content)
    with pytest.raises(UserError) as ei:
        load_real_queries(f)
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg


def test_missing_binary_and_folder_without_queries(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_real_queries(tmp_path / "nope.jsonl")
    (tmp_path / "bin.jsonl").write_bytes(b"\x00\x01\x02PK")
    with pytest.raises(UserError, match="binary file"):
        load_real_queries(tmp_path / "bin.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without queries.jsonl"):
        load_real_queries(tmp_path / "empty")


def test_qrels_with_and_without_header(tmp_path):
    f = write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\na\tc1\t1\na\tc2\t0\nb\tc3\t2\n")
    assert load_qrels(f) == {"a": {"c1": 1, "c2": 0}, "b": {"c3": 2}}
    assert load_qrels(tmp_path) == load_qrels(f)  # BEIR folder
    g = write(tmp_path / "nohead.tsv", "a\tc1\t1\n")
    assert load_qrels(g) == {"a": {"c1": 1}}


@pytest.mark.parametrize("content,needle", [
    ("query-id\tcorpus-id\tscore\na c1 1\n", "has 1 tab-separated columns, not 3"),
    ("query-id\tcorpus-id\tscore\na\tc1\thigh\n", "score 'high', not a number"),
    ("query-id\tcorpus-id\tscore\n", "holds no judgments"),
])
def test_bad_qrels(tmp_path, content, needle):
    f = write(tmp_path / "q.tsv", content)
    with pytest.raises(UserError) as ei:
        load_qrels(f)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(UserError, match="does not exist"):
        load_qrels(tmp_path / "missing.tsv")
    with pytest.raises(UserError, match="no qrels/test.tsv"):
        load_qrels(tmp_path)


def test_validate_qrels_and_beir_writer(tmp_path):
    queries = {"a": "wal archive", "b": "gin index", "c": "unjudged"}
    qrels = {"a": {"c1": 1}, "b": {"c2": 0}, "zz": {"c1": 1}}
    assert validate_qrels(queries, qrels, {"c1", "c2"}) == {"a": {"c1": 1}}  # b has no positive, zz unknown
    with pytest.raises(UserError, match="not in the corpus"):
        validate_qrels(queries, {"a": {"c9": 1}}, {"c1"})
    with pytest.raises(UserError, match="none of the qrels' query ids"):
        validate_qrels(queries, {"x": {"c1": 1}})
    warned: list[str] = []
    assert validate_qrels(queries, qrels, {"c1", "c2"}, warn=warned.append) == {"a": {"c1": 1}}
    assert len(warned) == 2 and "1 of the 3 query ids in the qrels ('zz')" in warned[0] and '"_id"' in warned[0]
    assert "2 of the 3 real queries ('b', 'c')" in warned[1]
    out = real_queries_beir(queries, {"a": {"c1": 1}}, {"c1": {"title": "t", "text": "WAL"}}, tmp_path / "beir")
    assert load_real_queries(out) == queries
    assert load_qrels(out) == {"a": {"c1": 1}}
    assert json.loads((out / "corpus.jsonl").read_text()) == {"_id": "c1", "title": "t", "text": "WAL"}


def test_style_examples(tmp_path):
    f = write(tmp_path / "q.jsonl", "".join(json.dumps({"text": f"query {i}"}) + "\n" for i in range(20)))
    ex = style_examples(f, 5)
    assert len(ex) == 5 and len(set(ex)) == 5 and all(e.startswith("query ") for e in ex)
    assert ex == style_examples(f, 5)  # seeded: the same prompt on a rerun
    assert style_examples(None, 5) == [] and style_examples("", 5) == []
    assert len(style_examples(f, 50)) == 20


def test_qrels_ids_that_mostly_match_no_query_or_too_few_judged_queries_are_errors():
    """The audit's case: qrels for q1, zz1, zz2 against queries q1, q2 must not score (and gate on) one query."""
    queries = {"q1": "how do I dump a database", "q2": "what is jsonb"}
    qrels = {"q1": {"c1": 1}, "zz1": {"c1": 1}, "zz2": {"c1": 1}}
    with pytest.raises(UserError) as ei:
        validate_qrels(queries, qrels, {"c1"}, min_judged=10)
    msg = str(ei.value)
    assert "only 1 of the 2 real queries have a relevant judgment" in msg
    assert "2 qrels ids match no query: 'zz1', 'zz2'" in msg and "'q1', 'q2'" in msg
    assert '"_id"' in msg and "\n" not in msg
    many = {f"q{i}": f"query {i}" for i in range(12)}
    with pytest.raises(UserError, match=r"only 3 of the 12 real queries have a relevant judgment .* fewer than the 10"):
        validate_qrels(many, {f"q{i}": {"c1": 1} for i in range(3)}, {"c1"}, min_judged=10)
    # a full qrels file against a subset of its queries is fine: the rest is a warning
    said = []
    full = {f"q{i}": {"c1": 1} for i in range(40)}
    assert len(validate_qrels(many, full, {"c1"}, min_judged=10, warn=said.append)) == 12
    assert said and "28 of the 40 query ids in the qrels" in said[0]
    assert len(validate_qrels(many, {f"q{i}": {"c1": 1} for i in range(10)}, {"c1"}, min_judged=10)) == 10

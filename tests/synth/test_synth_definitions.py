"""LLM-free "what is X?" queries from the corpus's own defining sentences (synth/definitions.py)."""

from __future__ import annotations

import pytest

from domain_embed.synth.definitions import definition_queries, term_of


@pytest.mark.parametrize("sentence, term", [
    ("A partial index is an index built over a subset of a table.", ("partial index", "is")),
    ("tmpfs (a temporary file system) is a file system kept in memory.", ("tmpfs", "is")),
    ("The MTU is the maximum packet size without IP fragmentation.", ("MTU", "is")),
    ("Symbolic refs are one of the ways HEAD names a branch.", ("Symbolic refs", "are")),
    ("SQLITE_BUSY_RECOVERY is an extended error code.", ("SQLITE_BUSY_RECOVERY", "is")),
    ("The git-gc command, is a housekeeping tool.", ("git-gc command", "is")),
])
def test_a_defining_sentence_gives_its_term(sentence, term):
    assert term_of(sentence) == term


@pytest.mark.parametrize("sentence", [
    "It is a good idea to remove packages first.",               # a pronoun
    "This is the default behaviour of the shell.",
    "If there is a conflict, dpkg asks the user.",               # an opener
    "Each rectangle is a bounding box of its entries.",          # a determiner
    "Reading shell scripts is the best way to learn Unix.",      # a gerund phrase: an activity
    "The 1st argument is the root URL of the archive.",          # an ordinal
    "SQLite version 3.40.1 is a bug fix release.",               # a version
    "R-15818-17128 The first parameter is a pointer.",           # a requirement id
    "The keys supported are the ones below.",                    # a clause, not a term
    "Index 0 is the leftmost column.",                           # a number
    "Dpkg installs packages into the system.",                   # no definition at all
    "The tool is used to build packages.",                       # 'is used', not 'is a'
])
def test_sentences_that_define_no_term_give_none(sentence):
    assert term_of(sentence) is None


def _chunk(i: int, doc: str, body: str) -> dict:
    return {"id": f"c{i}", "doc_id": doc, "text": f"Title — Section\n{body}"}


def test_one_query_a_term_its_first_definition_wins_spread_over_documents_and_capped():
    chunks = [
        _chunk(1, "d1", "A conffile is a configuration file that dpkg does not overwrite. It is kept on upgrades."),
        _chunk(2, "d1", "A conffile is a file in /etc. Dpkg asks before replacing it."),            # a repeat
        _chunk(3, "d1", "Debconf is a configuration system for packages. It asks questions once."),
        _chunk(4, "d2", "Aptitude is a text-mode package manager. It resolves dependencies."),
        _chunk(5, "d2", "Packages are installed by dpkg. See below. More text. Tasksel is a tool for tasks."),
    ]
    rows = definition_queries(chunks, max_queries=0, seed=1)
    assert [r["question"] for r in rows if r["segment_ids"] == ["c1"]] == ["what is conffile?"]
    assert {r["question"] for r in rows} == {"what is conffile?", "what is Debconf?", "what is Aptitude?"}
    # the fourth sentence of chunk 5 is past max_sentences=3: a section defines its subject up front
    assert all(r["query_type"] == "definition" and r["doc_ids"] == [chunks[int(r["segment_ids"][0][1:]) - 1]["doc_id"]]
               for r in rows)
    assert len(definition_queries(chunks, max_queries=0, seed=1, max_sentences=4)) == 4
    # capped at 2, both documents are in (spread, not the first document's terms), and the seed decides the order
    two = definition_queries(chunks, max_queries=2, seed=1)
    assert len(two) == 2 and {r["doc_ids"][0] for r in two} == {"d1", "d2"}
    assert two == definition_queries(chunks, max_queries=2, seed=1)
    assert definition_queries([_chunk(1, "d1", "Nothing here defines a term.")], 10, 1) == []

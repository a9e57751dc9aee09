"""The filter runner, without an LLM."""

from __future__ import annotations

from domain_embed.synth.pipeline import Filter, FilterRunner, FormatFilter


def _row(q: str, kind: str = "llm", qtype: str = "factual") -> dict:
    return {"id": q, "question": q, "query_type": qtype, "source": {"kind": kind, "model": "m"}, "quality": {}}


class _DropLong(Filter):
    name = "long"

    def reason(self, row):
        return "long" if len(row["question"]) > 30 else None


class _Off(Filter):
    name = "off"

    def enabled(self):
        return False


def test_runner_counts_what_each_named_filter_drops_and_skips_empty_or_disabled():
    rows = [_row("How do I create a partial index?"), _row("Indexes?"), _row("vacuum full", "structure", "heading"),
            _row("What does VACUUM FULL lock on a big table, and for how long?")]
    runner = FilterRunner([FormatFilter(3, 40, 10), _Off(), _DropLong()])
    kept = runner.run(rows)
    assert [r["question"] for r in kept] == ["vacuum full"]
    assert list(runner.counts) == ["format", "long"]              # a disabled filter leaves no entry
    assert runner.counts["format"] == {"in": 4, "kept": 3, "dropped": {"too_short": 1},
                                       "kept_by_source": {"llm": 2, "structure": 1}, "kept_llm_by_type": {"factual": 2}}
    assert runner.counts["long"]["dropped"] == {"long": 2}
    assert [(d["dropped_at"], d["reason"]) for d in runner.dropped] == [("format", "too_short"), ("long", "long"),
                                                                        ("long", "long")]
    # a filter that needs rows is skipped when nothing reaches it; the format filter still reports
    empty = FilterRunner([FormatFilter(3, 40, 10), _DropLong()])
    assert empty.run([]) == [] and list(empty.counts) == ["format"]


def test_heading_question_plan_spreads_over_documents_and_interleaves_with_passages():
    from domain_embed.synth.candidates import interleave, plan_heading_tasks
    from domain_embed.synth.prompts import HEADING_EXAMPLES

    rows = [{"question": f"h{d}{i}", "query_type": "heading", "segment_ids": [f"c{d}{i}", f"c{d}{i}b"],
             "doc_ids": [f"d{d}"]} for d in range(3) for i in range(2 + d)]
    rows.append({"question": "a title", "query_type": "title", "segment_ids": ["t"], "doc_ids": ["d0"]})
    tasks = plan_heading_tasks(rows, 1, seed=0)
    assert len(tasks) == 9 and all(t["query_type"] == "question" for t in tasks)   # headings only, titles not
    assert len({t["doc_id"] for t in tasks[:3]}) == 3                               # the first round: every document
    assert len({t["key"] for t in tasks}) == 9 and plan_heading_tasks(rows, 1, seed=0) == tasks
    assert all(t["segment_ids"] == [t["chunk_id"], t["chunk_id"] + "b"] for t in tasks)
    assert len(plan_heading_tasks(rows, 2, seed=0)) == 18 and plan_heading_tasks(rows, 0, seed=0) == []
    mixed = interleave(tasks[:2], [{"key": "p0"}, {"key": "p1"}, {"key": "p2"}])
    assert [t["key"] for t in mixed] == [tasks[0]["key"], "p0", tasks[1]["key"], "p1", "p2"]
    # the prompt's own examples come back as a format drop, never as a pair
    copied = _row(HEADING_EXAMPLES[0][1], qtype="question")
    runner = FilterRunner([FormatFilter(3, 40, 10)])
    assert runner.run([copied, _row("How do I rotate the WAL files?", qtype="question")])[0]["question"] \
        .startswith("How do I rotate")
    assert runner.counts["format"]["dropped"] == {"copied_example": 1}


def test_structure_share_caps_headings_spread_over_documents_and_leaves_llm_pairs():
    from domain_embed.synth.pipeline import StructureShareFilter

    def head(doc, i):
        r = _row(f"heading {doc} {i}", "structure", "title" if i == 0 else "heading")
        r["doc_ids"] = [doc]
        return r

    rows = [head(d, i) for d in ("a", "b", "c") for i in range(4)] + [_row(f"llm question {i}") for i in range(3)]
    runner = FilterRunner([StructureShareFilter(0.5, seed=1)])
    kept = runner.run(list(rows))
    heads = [r for r in kept if r["source"]["kind"] == "structure"]
    assert len(heads) == 3 and len(kept) == 6                                    # 3 headings beside 3 LLM pairs
    assert sorted(r["doc_ids"][0] for r in heads) == ["a", "b", "c"]              # one a document, not one document's
    assert all(r["query_type"] == "title" for r in heads)                         # each document's first: its title
    assert runner.counts["structure_share"]["dropped"] == {"structure_share": 9}
    assert [r["question"] for r in FilterRunner([StructureShareFilter(0.5, seed=1)]).run(list(rows))] == \
        [r["question"] for r in kept]                                             # seeded: the same rerun, the same pairs
    # 0.75: 3 headings a pair -> 9; then the second round reaches every document before any third
    k75 = FilterRunner([StructureShareFilter(0.75, seed=1)]).run(list(rows))
    from collections import Counter
    assert Counter(r["doc_ids"][0] for r in k75 if r["source"]["kind"] == "structure") == {"a": 3, "b": 3, "c": 3}
    # 1 is off (no count entry); under the cap nothing goes; without LLM pairs every heading stays
    off = FilterRunner([StructureShareFilter(1.0, seed=1)])
    assert off.run(list(rows)) == rows and "structure_share" not in off.counts
    few = rows[:2] + rows[-3:]
    assert FilterRunner([StructureShareFilter(0.5, seed=1)]).run(list(few)) == few
    assert FilterRunner([StructureShareFilter(0.5, seed=1)]).run(rows[:12]) == rows[:12]
    assert FilterRunner([StructureShareFilter(0.0, seed=1)]).run(list(rows)) == rows[-3:]

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

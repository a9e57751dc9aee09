"""Evaluate: BEIR retrieval metrics of the base and the tuned model (and BM25), with 95% bootstrap intervals.

Takes: ``split/eval_beir``, ``train/model``, and optionally real queries with judgments or other BEIR datasets.
Gives: ``evaluate/report.json`` and ``report.md`` (by query source, paired tuned-minus-base intervals, the gate).
Guarantees: the same encoding spec as serving; the quality gate fails the run when the tuned model loses.
"""

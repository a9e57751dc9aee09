"""User queries: the questions a domain's users really ask, as judged queries and as a drift check.

Takes: a user's queries (JSONL, BEIR folder or text) and, optionally, their relevance judgments (BEIR qrels).
Gives: validated query/qrels maps for evaluate's gate, style examples for synthesis, the drift report and plot.
Guarantees: ids and judgments that cannot be scored fail with the file, the line and what to fix.

    from domain_embed.user_queries import load_real_queries, drift_report, plot_drift
    report = drift_report(list(load_real_queries("queries.jsonl").values()), qa_rows, chunk_texts, encoder)
    for flag in report["flags"]:
        print(flag["message"])
"""

from .drift import drift_flags, drift_report, query_style
from .loading import load_qrels, load_real_queries, real_queries_beir, style_examples, validate_qrels
from .plots import plot_drift
from .run import drift_for_run, drift_markdown

__all__ = [
    "load_real_queries", "load_qrels", "validate_qrels", "real_queries_beir", "style_examples",
    "drift_report", "drift_flags", "query_style", "plot_drift", "drift_for_run", "drift_markdown",
]

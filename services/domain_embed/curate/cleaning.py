"""Cleaning and quality scoring as a NeMo Curator pipeline, run in-process or on Ray.

The pipeline is built once (:func:`build_stages`) and executed by either executor:

- :class:`InProcessExecutor` runs each Curator stage's ``setup``/``process``/``teardown`` in this
  process, batch by batch. It is what runs for small corpora and on machines with 2 cores or fewer,
  where Ray's streaming executor cannot make progress.
- Curator's ``RayDataExecutor`` runs the same stages on a Ray cluster (``RAY_ADDRESS``, KubeRay)
  or on a local Ray it starts, for large corpora. ``auto`` picks it only above ``ray_min_files``
  files and with more than 2 cores: below that, starting Ray costs more than it saves.

Scores are computed by Curator's own heuristic filters (``Score``), and the keep/drop decision is
taken afterwards so that the manifest can say which filter removed how many documents.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd
from nemo_curator.backends.base import BaseExecutor
from nemo_curator.stages.base import ProcessingStage
from nemo_curator.stages.text.filters.heuristic.repetition import RepeatedLinesFilter
from nemo_curator.stages.text.filters.heuristic.string import NonAlphaNumericFilter, WordCountFilter
from nemo_curator.stages.text.filters.score_filter import Score
from nemo_curator.stages.text.modifiers.doc_modifier import DocumentModifier
from nemo_curator.stages.text.modifiers.modifier import Modify
from nemo_curator.stages.text.modifiers.unicode import UnicodeReformatter
from nemo_curator.tasks import DocumentBatch

from ..schema import CurateConfig, Executor

# Lines that doc generators repeat on every page and that carry no content.
_BOILERPLATE = re.compile(
    r"^\s*(prev(ious)?|next|up|home|top|back to top|skip to (main )?content|table of contents|"
    r"edit (this|on) (page|github)|view (page )?source|show source|print( this page)?|"
    r"(©|\(c\)|copyright)\s.*all rights reserved\.?|was this (page|article) helpful\??|"
    r"search|menu|toggle navigation|share this( page)?)\s*[:.]?\s*$",
    re.I,
)
_SPACES = re.compile(r"(?<=\S)[ \t\u00a0]{2,}")
_BLANKS = re.compile(r"\n{3,}")


class WhitespaceBoilerplateNormalizer(DocumentModifier):
    """Unify line endings and spaces, drop trailing spaces and boilerplate lines, keep indentation.

    Indentation is kept because it marks code blocks, which chunking treats as one unit.
    """

    def __init__(self) -> None:
        super().__init__()
        self._name = "whitespace_boilerplate"

    def modify_document(self, text: str) -> str:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u200b", "").replace("\ufeff", "")
        out = []
        for line in text.split("\n"):
            line = line.expandtabs(4).rstrip()
            if _BOILERPLATE.match(line):
                continue
            out.append(_SPACES.sub(" ", line))
        return _BLANKS.sub("\n\n", "\n".join(out)).strip("\n")


def prose_only(text: str) -> str:
    """The text without code blocks (indented or fenced lines) and without heading markers."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.startswith(("    ", "\t")):
            continue
        out.append(line)
    prose = "\n".join(out).strip()
    return prose or text


def build_stages(c: CurateConfig) -> tuple[list[ProcessingStage], list[tuple[str, Any, str]]]:
    """The Curator stages, and (name, filter, score column) for each quality filter."""
    filters = [
        ("word_count", WordCountFilter(min_words=c.min_words, max_words=c.max_words), "score_word_count"),
        ("non_alphanumeric", NonAlphaNumericFilter(max_non_alpha_numeric_to_text_ratio=c.max_non_alpha_ratio),
         "score_non_alphanumeric"),
        # Curator's score is the fraction of *unique* lines; our config names the repeated fraction.
        ("repeated_lines", RepeatedLinesFilter(max_repeated_line_fraction=1.0 - c.max_repeated_line_fraction),
         "score_repeated_lines"),
    ]
    stages: list[ProcessingStage] = [
        Modify(UnicodeReformatter(), input_fields="text"),
        Modify(WhitespaceBoilerplateNormalizer(), input_fields="text"),
        Modify(prose_only, input_fields="text", output_fields="prose"),
        # Repeated lines are scored on prose: code examples legitimately repeat lines
        # ("    name text,") and would otherwise drop the most useful reference pages.
        Score([f for _, f, _ in filters], text_field=["text", "text", "prose"],
              score_field=[col for _, _, col in filters]),
    ]
    return stages, filters


class InProcessExecutor(BaseExecutor):
    """Runs Curator stages one after another in this process (no Ray, no worker processes)."""

    def execute(self, stages: list[ProcessingStage], initial_tasks: list | None = None) -> list:
        tasks = list(initial_tasks or [])
        for stage in stages:
            stage.setup_on_node()
            stage.setup()
            try:
                nxt: list = []
                for task in tasks:
                    out = stage.process(task)
                    if out is None:
                        continue
                    nxt.extend(out if isinstance(out, list) else [out])
                tasks = nxt
            finally:
                stage.teardown()
        return tasks


def choose_executor(c: CurateConfig, n_files: int) -> str:
    """'inprocess' or 'ray', from curate.executor (auto: by corpus size and cores)."""
    cores = os.cpu_count() or 1
    if c.executor == Executor.auto:
        return "ray" if (n_files >= c.ray_min_files and cores > 2) else "inprocess"
    return c.executor.value  # an explicit "ray" is honoured even on small machines (Ray Data runs there, slowly)


def run_cleaning(docs: pd.DataFrame, c: CurateConfig, executor: str, batch_size: int = 256) -> pd.DataFrame:
    """Run the cleaning pipeline over a frame with columns source, title, text (+order columns)."""
    stages, _ = build_stages(c)
    batches = [
        DocumentBatch(dataset_name="corpus", data=docs.iloc[i : i + batch_size].reset_index(drop=True))
        for i in range(0, len(docs), batch_size)
    ]
    for i, b in enumerate(batches):
        b._set_task_id("curate", i)  # deterministic ids, as Curator's own readers assign
    if executor == "ray":
        from nemo_curator.backends.ray_data import RayDataExecutor
        from nemo_curator.pipeline import Pipeline

        pipeline = Pipeline(name="domain-embed-curate", stages=stages)
        out = pipeline.run(executor=RayDataExecutor(), initial_tasks=batches) or []
    else:
        out = InProcessExecutor().execute(stages, batches)
    frames = [t.to_pandas() for t in out if isinstance(t, DocumentBatch) and t.num_items > 0]
    if not frames:
        return docs.iloc[0:0].copy()
    return pd.concat(frames, ignore_index=True)


def apply_filters(df: pd.DataFrame, c: CurateConfig
                  ) -> tuple[pd.DataFrame, dict[str, int], dict[str, list[tuple[str, float]]]]:
    """Keep rows that pass every filter; count removals by the first filter that failed, and name
    them (filter -> [(source, score)]) so that the log can say which documents went and why."""
    _, filters = build_stages(c)
    removed = {f"filtered_{name}": 0 for name, _, _ in filters}
    dropped: dict[str, list[tuple[str, float]]] = {name: [] for name, _, _ in filters}
    keep = pd.Series(True, index=df.index)
    for name, flt, col in filters:
        ok = df[col].apply(flt.keep_document).astype(bool)
        gone = keep & ~ok
        removed[f"filtered_{name}"] = int(gone.sum())
        dropped[name] = list(zip(df.loc[gone, "source"], df.loc[gone, col].astype(float)))
        keep &= ok
    return df[keep].reset_index(drop=True), removed, dropped

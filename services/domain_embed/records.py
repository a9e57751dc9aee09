"""The records that flow between stages (lower floor): one dataclass per kind of JSONL row, with a version.

Each record type names the run-directory files that hold it. ``check_file`` reads the first rows of
such a file and fails with the file, the line and the field when a row does not match, so a renamed
or missing field stops the stage that reads it (or the one that wrote it) at once, instead of
breaking a stage several steps later. The run directory checks every stage's inputs before it starts
and its outputs when it ends, and each manifest records the versions of the records it wrote
(``records``); a reader that expects another version asks for a rerun of the producer.

    from domain_embed.records import Chunk, check_file
    check_file(run_dir / "curate/chunks.jsonl", Chunk)
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import UserError


def _doc(text: str, default: Any = dataclasses.MISSING) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


class RecordError(UserError):
    """A row that does not match its record type: names the file, the line and the field."""


@dataclass(frozen=True)
class Chunk:
    """A passage of a document: the unit the model retrieves."""

    VERSION: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("curate/chunks.jsonl", "split/train_corpus.jsonl")
    id: str = _doc("stable id: c_ and 16 hex digits of sha256(doc_id + text)")
    doc_id: str = _doc("the document: d_ and 16 hex digits of sha256 of its normalised text (same text, same id)")
    text: str = _doc("the passage as embedded (title line first when curate.include_title)")
    title: str = _doc("the document's title ('' when it has none)")
    section: str = _doc("the heading path of the passage's section ('' when none)")
    source: str = _doc("the document's path, relative to corpus.path")
    n_tokens: int = _doc("tokens by the base model's tokenizer, at most model.max_passage_length")


@dataclass(frozen=True)
class QAPair:
    """A synthetic query with the chunks that answer it."""

    VERSION: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("synth/qa.jsonl", "split/train_qa.jsonl")
    id: str = _doc("q_ and 16 hex digits of sha256 of the lower-cased question and its positives' ids")
    question: str = _doc("the query as a user would type it")
    query_type: str = _doc("factual, keyword, procedural, structural, multi_hop, heading, title or question (a heading rewritten)")
    segment_ids: list = _doc("the positive chunks' ids (Chunk.id)")
    doc_ids: list = _doc("their documents' ids (Chunk.doc_id)")
    source: dict = _doc("who wrote it: {kind: llm or structure, model: ...}")
    answer: str = _doc("the answer or the passage's opening (informational)", default=None)
    reasoning_type: str = _doc("lookup, comparison, procedure, ... (informational)", default=None)
    hop_count: int = _doc("chunks needed to answer: 1, or 2+ for multi-hop (informational)", default=None)
    quality: dict = _doc("filter evidence: round_trip_rank, judge scores", default=None)


@dataclass(frozen=True)
class MinedRow:
    """A training query with its positives and the hard negatives mined for it."""

    VERSION: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("mine/train.jsonl",)
    query_id: str = _doc("QAPair.id")
    query: str = _doc("QAPair.question")
    pos: list = _doc("positives: [{id: Chunk.id, score: base-model cosine}]")
    neg: list = _doc("hard negatives, best first: [{id, score}], none a positive or a near duplicate of one")


@dataclass(frozen=True)
class BeirPassage:
    """A passage of a BEIR corpus (the split's validation and test sets, a user's dataset)."""

    VERSION: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("split/val_beir/corpus.jsonl", "split/eval_beir/corpus.jsonl")
    _id: str = _doc("Chunk.id")
    title: str = _doc("Chunk.title")
    text: str = _doc("Chunk.text")


@dataclass(frozen=True)
class BeirQuery:
    """A query of a BEIR dataset; its judgments are in qrels/<split>.tsv."""

    VERSION: ClassVar[int] = 1
    FILES: ClassVar[tuple[str, ...]] = ("split/val_beir/queries.jsonl", "split/eval_beir/queries.jsonl")
    _id: str = _doc("QAPair.id")
    text: str = _doc("QAPair.question")
    metadata: dict = _doc("{query_type, source}: what the report groups results by", default=None)


RECORDS: tuple[type, ...] = (Chunk, QAPair, MinedRow, BeirPassage, BeirQuery)
_BY_FILE = {f: rec for rec in RECORDS for f in rec.FILES}
_PY = {"str": str, "int": int, "float": (int, float), "list": list, "dict": dict, "bool": bool}


def record_of(rel: str) -> type | None:
    """The record type a run-directory file holds (``curate/chunks.jsonl`` -> Chunk), or None."""
    return _BY_FILE.get(str(rel))


def files_in(rel: str) -> list[tuple[str, type]]:
    """(file, record type) for ``rel`` itself, or for the record files inside the folder ``rel``."""
    rec = record_of(rel)
    if rec is not None:
        return [(rel, rec)]
    prefix = str(rel).rstrip("/") + "/"
    return [(f, r) for f, r in _BY_FILE.items() if f.startswith(prefix)]


def _fields(rec: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(rec))


def _type_name(rec: type, f: dataclasses.Field) -> str:
    hint = typing.get_type_hints(rec)[f.name]
    return getattr(hint, "__name__", str(hint))


def field_docs(rec: type) -> dict[str, tuple[str, str]]:
    """{field: (type name, one-line doc)}, for the generated architecture page."""
    return {f.name: (_type_name(rec, f) + ("" if f.default is dataclasses.MISSING else ", optional"),
                     f.metadata.get("doc", "")) for f in _fields(rec)}


def check_row(row: Any, rec: type, where: str) -> None:
    """Raise RecordError naming ``where`` (file:line) and the field when ``row`` is not a ``rec``."""
    if not isinstance(row, dict):
        raise RecordError(f"{where}: a JSON {type(row).__name__}, not a {rec.__name__} object")
    for f in _fields(rec):
        want = _type_name(rec, f)
        if f.name not in row:
            if f.default is not dataclasses.MISSING:
                continue
            raise RecordError(f"{where}: field {f.name!r} ({want}) of a {rec.__name__} is missing "
                              f"(fields there: {', '.join(sorted(row)) or 'none'})")
        value = row[f.name]
        if value is None and f.default is not dataclasses.MISSING:
            continue
        ok = _PY.get(want, object)
        if not isinstance(value, ok) or (want == "int" and isinstance(value, bool)):
            raise RecordError(f"{where}: field {f.name!r} of a {rec.__name__} is a {type(value).__name__}, "
                              f"not a {want}")


def check_file(path: Path | str, rec: type, rows: int = 20, display: str | None = None) -> int:
    """Check the first ``rows`` lines of the JSONL file ``path`` against ``rec``; returns how many were read."""
    path = Path(path)
    name = display or str(path)
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    break  # a torn last line of an append-only log: its reader skips it too
                raise RecordError(f"{name}:{lineno}: not valid JSON ({exc.msg}); a {rec.__name__} a line is expected") \
                    from None
            check_row(row, rec, f"{name}:{lineno}")
            n += 1
            if n >= rows:
                break
    return n


def versions(rels: list[str]) -> dict[str, str]:
    """{file: "Type/version"} for the record files among (or inside) ``rels``, for a manifest."""
    return {f: f"{r.__name__}/{r.VERSION}" for rel in rels for f, r in files_in(rel)}

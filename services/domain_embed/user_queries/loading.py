"""Read real user queries and relevance judgments, as JSONL or in the BEIR layout.

Accepted query files:

* a JSONL file whose rows carry the text in ``"text"`` or ``"query"`` (and optionally an id in
  ``"_id"``, ``"id"`` or ``"query_id"``);
* a BEIR ``queries.jsonl`` (``{"_id", "text"}``), or the BEIR folder holding it;
* a plain text file with one query a line (``.txt``).

Qrels are the BEIR TSV ``query-id<TAB>corpus-id<TAB>score``, with or without the header line,
given as the file or as a BEIR folder (``qrels/test.tsv``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from ..beir import read_qrels, write_beir
from ..errors import UserError

_TEXT_KEYS = ("text", "query", "question")
_ID_KEYS = ("_id", "id", "query_id", "query-id")


def _queries_file(path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"real-query file {path} does not exist; give a JSONL file with a 'text' or 'query' field, "
                        f"or a BEIR folder holding queries.jsonl")
    if path.is_dir():
        cand = path / "queries.jsonl"
        if not cand.is_file():
            raise UserError(f"{path} is a folder without queries.jsonl; give the JSONL file itself, or a BEIR folder "
                            f"(corpus.jsonl, queries.jsonl, qrels/)")
        return cand
    return path


def load_real_queries(path: str | Path) -> dict[str, str]:
    """Real queries as an ordered ``{query_id: text}``; ids are made up (``rq1``, ``rq2``...) when absent.

    Blank queries and exact duplicates (same text) are dropped, since they add nothing to a
    drift statistic and would double-count in an evaluation.
    """
    f = _queries_file(Path(path))
    raw = f.read_bytes()
    if b"\x00" in raw[:4096]:
        raise UserError(f"{f} is a binary file, not JSONL; give a UTF-8 JSONL file with a 'text' or 'query' field")
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{f} is not UTF-8 text; re-save it as UTF-8 JSONL with a 'text' or 'query' field") from None
    out: dict[str, str] = {}
    seen: set[str] = set()
    plain = f.suffix.lower() == ".txt"
    for lineno, line in enumerate(content.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if plain:
            qid, text = f"rq{len(out) + 1}", line
        else:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{f}:{lineno} is not valid JSON; each line must be an object like "
                                f'{{"text": "how to vacuum a table"}} (or use a .txt file, one query a line)') from None
            if isinstance(row, str):
                row = {"text": row}
            if not isinstance(row, dict):
                raise UserError(f"{f}:{lineno} is a JSON {type(row).__name__}, not an object with a 'text' or 'query' field")
            text = next((row[k] for k in _TEXT_KEYS if isinstance(row.get(k), str)), None)
            if text is None:
                raise UserError(f"{f}:{lineno} has no 'text' or 'query' field (keys: {', '.join(sorted(row)) or 'none'}); "
                                f"rename the field holding the query to 'text'")
            qid = next((str(row[k]) for k in _ID_KEYS if row.get(k) not in (None, "")), f"rq{len(out) + 1}")
        text = " ".join(text.split())
        if not text or text.lower() in seen:
            continue
        if qid in out:
            raise UserError(f"{f}:{lineno} repeats query id {qid!r}; query ids must be unique")
        seen.add(text.lower())
        out[qid] = text
    if not out:
        raise UserError(f"{f} holds no queries; add one JSON object a line with a 'text' or 'query' field")
    return out


def load_qrels(path: str | Path, split: str = "test") -> dict[str, dict[str, int]]:
    """A user's relevance judgments as ``{query_id: {corpus_id: score}}``: ``beir.read_qrels``, the one
    reader (a TSV, or a BEIR folder holding ``qrels/<split>.tsv``)."""
    return read_qrels(path, split)


def _some(ids, n: int = 3) -> str:
    ids = list(ids)
    return ", ".join(repr(i) for i in ids[:n]) + (", ..." if len(ids) > n else "")


def validate_qrels(queries: dict[str, str], qrels: dict[str, dict[str, int]],
                   corpus_ids: set[str] | None = None, min_judged: int = 1,
                   warn: Callable[[str], None] | None = None) -> dict[str, dict[str, int]]:
    """Keep the judgments that can be scored; raise when too few can, naming the mismatch.

    Queries without any positive judgment cannot be scored and are dropped from the returned
    qrels, and qrels ids that match no query are skipped (a full qrels file against a subset of its
    queries is fine); each is reported through ``warn`` (count and a few ids), never dropped silently.
    It is an error when fewer than ``min_judged`` queries remain to score (the message names the
    unmatched ids, which usually means the two files use different ids), or when a judgment names a
    document that is not in the corpus (the qrels were written for a different chunking).
    """
    fix_ids = ("the qrels' query-id column must hold the \"_id\" (or \"id\") of the lines of the real-query "
               "file")
    known = {q: {d: s for d, s in docs.items()} for q, docs in qrels.items() if q in queries}
    unmatched = [q for q in qrels if q not in queries]
    if not known:
        raise UserError(f"none of the qrels' query ids ({_some(qrels)}; {len(qrels)} in all) are in the real-query "
                        f"file, whose ids are {_some(queries)}; {fix_ids}")
    if corpus_ids is not None:
        missing = sorted({d for docs in known.values() for d in docs if d not in corpus_ids})
        if missing:
            raise UserError(f"{len(missing)} judged document ids are not in the corpus (e.g. {missing[0]!r}); "
                            f"qrels must use the corpus ids of this run (split/eval_beir/corpus.jsonl or curate/chunks.jsonl)")
    judged = {q: docs for q, docs in known.items() if any(s > 0 for s in docs.values())}
    unjudged = [q for q in queries if q not in judged]
    if len(judged) < max(1, min_judged):
        raise UserError(f"only {len(judged)} of the {len(queries)} real queries have a relevant judgment (score > 0) "
                        f"in the qrels, fewer than the {max(1, min_judged)} needed to score them and gate on them "
                        f"(evaluate.gate.min_real_queries)"
                        + (f" ({len(unmatched)} qrels ids match no query: {_some(unmatched)}; the real-query "
                           f"file's ids are {_some(queries)})" if unmatched else "")
                        + f"; judge more of the queries ({fix_ids}), or leave out --qrels to compare the real queries "
                        f"with the synthetic ones instead")
    if warn is not None:
        if unmatched:
            warn(f"{len(unmatched)} of the {len(qrels)} query ids in the qrels ({_some(unmatched)}) match no query in "
                 f"the real-query file; their judgments are not scored ({fix_ids})")
        if unjudged:
            warn(f"{len(unjudged)} of the {len(queries)} real queries ({_some(unjudged)}) have no relevant judgment "
                 f"(score > 0) in the qrels and are left out of the scores; {len(judged)} are scored")
    return judged


def real_queries_beir(queries: dict[str, str], qrels: dict[str, dict[str, int]] | None,
                      corpus: dict[str, dict[str, str]], out_dir: str | Path) -> Path:
    """Write real queries (+ qrels) and a corpus as a BEIR folder, so any BEIR tool can score them."""
    return write_beir(out_dir, ({"_id": cid, **d} for cid, d in corpus.items()),
                      ({"_id": qid, "text": t} for qid, t in queries.items()), qrels or None, "test")


def style_examples(path: str | Path | None, n: int = 5, seed: int = 0) -> list[str]:
    """Up to ``n`` real queries to show the query generator as style examples (``synth.style_examples_file``).

    A seeded sample rather than the first ``n`` lines, so a file sorted by topic still gives a mix.
    Returns ``[]`` when ``path`` is empty, so callers can pass the config value straight through.
    """
    if path in (None, "") or n <= 0:
        return []
    texts = list(load_real_queries(path).values())
    if len(texts) <= n:
        return texts
    return random.Random(seed).sample(texts, n)

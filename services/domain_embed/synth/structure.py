"""LLM-free pseudo-queries from the documents' own structure: section headings and titles.

A heading such as "Partial Indexes" is what a user types into a search box to find that section,
so it is a free, clean (query, passage) pair -- as long as the heading is specific. Generic
headings ("Examples", "Description", "Notes") name a role, not a topic, and are skipped.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Iterable

# Headings that say what kind of section it is, not what it is about (reference-manual boilerplate).
GENERIC_HEADINGS = {
    "examples", "example", "description", "notes", "note", "parameters", "synopsis", "see also",
    "compatibility", "outputs", "output", "overview", "introduction", "summary", "caveats", "details",
    "usage", "options", "arguments", "return value", "returns", "background", "references", "tip",
    "tips", "warning", "warnings", "caution", "important", "faq", "contents", "table of contents",
    "index", "appendix", "history", "diagnostics", "environment", "files", "bugs", "authors", "author",
    "license", "changelog", "todo", "misc", "miscellaneous", "other", "general", "getting started",
}

# "1.2.3.", "2)", "IV.", "Chapter 5.", and appendix numbering "A.1.", "F.35.", "Appendix A.". Terms that look
# like numbering stay: "X.509 certificates" (a Roman numeral must end with its own dot; an appendix letter
# takes one- or two-digit parts), "A Note on Locking" (a lone capital is a word).
_NUMBERING = re.compile(r"^\s*\d+(?:\.\d+)*[.)]?(?:\s+|$)|^\s*[IVX]+[.)](?:\s+|$)"
                        r"|^\s*(?:chapter|section|part)\s+[\dIVX.]+[:.]?\s*"
                        r"|^\s*[A-Z](?:\.\d{1,2})+\.?(?:\s+|$)|^\s*appendix\s+[A-Z\d]+[:.]?\s*", re.I)


def normalize_heading(heading: str) -> str:
    """A heading as a search query: numbering stripped, Title Case words lowered, code words kept.

    "11.8. Partial Indexes" -> "partial indexes"; "CREATE INDEX" stays; "pg_hba.conf" stays.
    """
    h = _NUMBERING.sub("", heading or "").strip().strip(":.").strip()
    h = re.sub(r"\s+", " ", h)
    words = []
    for w in h.split(" "):
        # Title Case words are prose; ALLCAPS, mixedCase and words with _ . ( are names to keep.
        m = re.fullmatch(r"([(\"']?)([A-Z][a-z]+(?:[-'][A-Za-z]+)?)([)\"'?:,.!]*)", w)
        if m:
            words.append(m.group(1) + m.group(2).lower() + m.group(3))
        else:
            words.append(w)
    return " ".join(words)


def is_generic(query: str, extra_generic: Iterable[str] = ()) -> bool:
    q = query.lower().strip()
    generic = GENERIC_HEADINGS | {g.lower() for g in extra_generic}
    if q in generic:
        return True
    if len(q) < 3 or not re.search(r"[a-z]", q):
        return True
    return False


def structure_queries(chunks: list[dict[str, Any]], max_per_doc: int = 8, max_positives: int = 3,
                      extra_generic: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Heading and title pseudo-queries. Each row: question, query_type, segment_ids, doc_ids.

    A heading query's positives are the first ``max_positives`` chunks of that section (the section
    opens with what it is about); a title query's positive is the document's first chunk.
    """
    by_doc: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
    for c in chunks:
        by_doc.setdefault(c["doc_id"], []).append(c)
    out: list[dict[str, Any]] = []
    for doc_id, doc_chunks in by_doc.items():
        seen: set[str] = set()
        rows: list[dict[str, Any]] = []
        title = str(doc_chunks[0].get("title") or "")
        tq = normalize_heading(title)
        if tq and not is_generic(tq, extra_generic):
            seen.add(tq.lower())
            rows.append({"question": tq, "query_type": "title", "segment_ids": [doc_chunks[0]["id"]],
                         "doc_ids": [doc_id], "heading": title})
        sections: "OrderedDict[str, list[str]]" = OrderedDict()
        for c in doc_chunks:
            sec = str(c.get("section") or "")
            if sec:
                sections.setdefault(sec, []).append(c["id"])
        for sec, ids in sections.items():
            q = normalize_heading(sec)
            if not q or is_generic(q, extra_generic) or q.lower() in seen:
                continue
            seen.add(q.lower())
            rows.append({"question": q, "query_type": "heading", "segment_ids": ids[:max_positives],
                         "doc_ids": [doc_id], "heading": sec})
        out.extend(rows[:max_per_doc] if max_per_doc > 0 else rows)
    return out

"""LLM-free "what is X?" queries from the corpus's own definitions.

Documentation defines its terms in sentences such as "A conffile is a configuration file that dpkg
does not overwrite" or "tmpfs (the temporary file system) is a ...". The term, asked about as a
question, is a free (question, passage) pair in the form users write, with the defining chunk as
its positive, and costs no LLM call. Only sentences whose subject is a term are taken: pronouns,
sentence openers ("If ...", "Each ..."), gerund phrases ("Reading shell scripts is the best way"),
ordinals, version strings and requirement ids are not terms.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from typing import Any

from ..curate.chunking import split_sentences

# "[The|A|An] TERM [(gloss)][,] is|are a|an|the|one of ..." at the start of a sentence; TERM is 1..4 tokens
_TOKEN = r"[A-Za-z0-9][\w.+#/:'-]*"
_DEFINITION = re.compile(
    rf"^(?:(?:The|A|An)\s+)?(?P<term>{_TOKEN}(?:\s+{_TOKEN}){{0,3}}?)(?:\s+\([^()]{{1,80}}\))?,?\s+"
    rf"(?P<verb>is|are)\s+(?:an?|the|one of the)\s+\w")
# Words that make the subject something other than a term: pronouns, determiners, openers, adverbs.
_NOT_TERM = frozenset("""
    it its this that these those there here which what who whom whose he she they we you i me us them one another
    each every all some any no none both either neither such other others same several many most much more less few
    if since after before when whenever while because although though so but and or nor yet as in on at for with by
    from to of into onto about above below under over between through during without within upon than then thus
    hence however therefore otherwise also only just even still now again already really usually often always never
    not note notice tip warning caution important example examples following first second third next last final
    previous default result results output value values reason way thing things case cases part rest main new old
    following above below here see please where unless until whether itself themselves normally two three four
    fourth fifth general the a an syntax behavior behaviour effect effects possible actual usual
""".split())
_ORDINAL = re.compile(r"^\d+(?:st|nd|rd|th)$|^\d", re.I)
_VERSION = re.compile(r"\d+\.\d+|^R-\d|^[\d.]+$")


def _body(chunk: dict[str, Any]) -> str:
    """The chunk's text after its context line (title and section), where its own sentences are."""
    text = chunk["text"]
    return text.split("\n", 1)[1] if "\n" in text else text


def term_of(sentence: str) -> tuple[str, str] | None:
    """The term a defining sentence defines, and its verb ('is'/'are'); None when it defines nothing."""
    m = _DEFINITION.match(sentence.strip())
    if not m:
        return None
    term = m.group("term").strip(" ,:'")
    words = term.split()
    low = [w.lower() for w in words]
    if (not words or any(w in _NOT_TERM for w in low) or _ORDINAL.match(words[0]) or _VERSION.search(term)
            or words[-1].isdigit() or (len(words) > 1 and low[-1].endswith("ed"))):
        return None
    # "Reading shell scripts is ..." is an activity and "keys supported are ..." a clause, not terms
    if len(words) > 1 and low[0].endswith("ing"):
        return None
    if not re.search(r"[A-Za-z]{2}", term):
        return None
    return term, m.group("verb")


def definition_queries(chunks: list[dict[str, Any]], max_queries: int, seed: int,
                       max_sentences: int = 3) -> list[dict[str, Any]]:
    """One "what is X?" row (question, query_type, segment_ids, doc_ids) for each term the corpus defines in one
    of a chunk's first ``max_sentences`` sentences, the first definition of a term winning; at most
    ``max_queries``, spread over documents (seeded), so a corpus of many pages is not all one page's terms."""
    by_doc: "OrderedDict[str, list[dict[str, Any]]]" = OrderedDict()
    seen: set[str] = set()
    for c in chunks:
        for sent in split_sentences(" ".join(_body(c).split()))[:max_sentences]:
            found = term_of(sent)
            if found is None or found[0].lower() in seen:
                continue
            term, verb = found
            seen.add(term.lower())
            by_doc.setdefault(c["doc_id"], []).append(
                {"question": f"what {verb} {term}?", "query_type": "definition", "segment_ids": [c["id"]],
                 "doc_ids": [c["doc_id"]], "term": term})
    docs = list(by_doc)
    random.Random(f"{seed}:definitions").shuffle(docs)
    spread = [by_doc[d][i] for i in range(max((len(v) for v in by_doc.values()), default=0)) for d in docs
              if i < len(by_doc[d])]
    return spread[:max_queries] if max_queries > 0 else spread

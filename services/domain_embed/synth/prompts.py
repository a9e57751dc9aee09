"""Prompts for each query type, in two styles: chat (instruct models) and completion (base models).

Few-shot examples come from the user's own corpus -- structure-derived (heading, section) pairs of
*other* documents -- so that a small model imitates the form of the examples without copying one
fixed topic into every query.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

QUERY_TYPES = ("factual", "keyword", "procedural", "structural", "multi_hop")

# Bump when prompts change: generations keyed under an older version are not reused on resume.
PROMPT_VERSION = "6"  # 6: one call answers several query types (synth.batch_types), constant prefix

INSTRUCTIONS = {
    "factual": "Write one specific question that a user of this documentation would ask and that the passage "
               "answers. Use your own words; do not copy sentences from the passage.",
    "keyword": "Write a short search-box query (2 to 6 words, no question mark) that a user would type to find "
               "this passage.",
    "procedural": "Write one 'How do I ...' question about a task that the passage explains how to do.",
    "structural": "Write one question about what the section '{section}' of '{title}' covers, naming its topic.",
    "multi_hop": "Write one question that needs facts from BOTH passages to answer. Use your own words.",
}

QA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 2, "maxLength": 400},
        "answer": {"type": "string", "maxLength": 1200},
    },
    "required": ["question"],
}

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "relevance": {"type": "integer", "minimum": 1, "maximum": 10},
        "answerability": {"type": "integer", "minimum": 1, "maximum": 10},
        "clarity": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["relevance", "answerability", "clarity"],
}

SYSTEM = ("You write search queries for technical documentation. Answer with one JSON object "
          '{"question": "...", "answer": "..."} and nothing else.')
SYSTEM_NO_ANSWER = ("You write search queries for technical documentation. Answer with one JSON object "
                    '{"question": "..."} and nothing else.')


def qa_schema(with_answer: bool) -> dict[str, Any]:
    if with_answer:
        return {**QA_SCHEMA, "required": ["question", "answer"]}
    return {"type": "object", "properties": {"question": QA_SCHEMA["properties"]["question"]}, "required": ["question"]}


def _words(text: str, n: int) -> str:
    w = text.split()
    return " ".join(w[:n]) + (" ..." if len(w) > n else "")


def first_sentence(text: str, max_words: int = 30) -> str:
    """The first real sentence of a chunk (past its context line and any section numbering)."""
    body = text.split("\n", 1)[-1]
    for m in re.finditer(r"(.+?[.!?])(\s|$)", body):
        sent = re.sub(r"^\s*[\d.]+\s*", "", m.group(1)).strip()
        if len(sent.split()) >= 3:
            return _words(sent, max_words)
    return _words(body, max_words)


def example_question(qtype: str, heading: str, title: str, other_heading: str | None = None) -> str:
    """A clean question of ``qtype`` built from a heading: the shape we want the model to imitate."""
    h = heading
    if qtype == "keyword":
        return h
    if qtype == "procedural":
        return f"How do I use {h} in {title}?" if title.lower() != h.lower() else f"How do I use {h}?"
    if qtype == "structural":
        return f"Which part of the {title} documentation describes {h}?"
    if qtype == "multi_hop" and other_heading:
        return f"How does {h} relate to {other_heading}?"
    return f"What is {h}?"


def build_examples(structure_rows: list[dict[str, Any]], chunks_by_id: dict[str, dict[str, Any]],
                   qtype: str, exclude_doc: str, n: int, seed: int, words_per_passage: int = 50) -> list[dict[str, str]]:
    """``n`` few-shot examples from documents other than ``exclude_doc``, chosen deterministically."""
    pool = [r for r in structure_rows if r["doc_ids"][0] != exclude_doc and r["query_type"] == "heading"]
    if not pool:
        return []
    rng = random.Random(f"{seed}:{qtype}:{exclude_doc}")
    picks = rng.sample(pool, min(n, len(pool)))
    out = []
    for r in picks:
        c = chunks_by_id[r["segment_ids"][0]]
        other = None
        passages = [_words(c["text"], words_per_passage)]
        if qtype == "multi_hop":
            same_doc = [q for q in pool if q["doc_ids"] == r["doc_ids"] and q is not r]
            if same_doc:
                o = rng.choice(same_doc)
                other = o["question"]
                passages.append(_words(chunks_by_id[o["segment_ids"][0]]["text"], words_per_passage))
        out.append({
            "passages": passages, "title": str(c.get("title") or ""), "section": str(c.get("section") or ""),
            "question": example_question(qtype, r["question"], str(c.get("title") or ""), other),
            "answer": first_sentence(c["text"]),
        })
    return out


def _passage_block(passages: list[str]) -> str:
    if len(passages) == 1:
        return f"Passage:\n{passages[0]}"
    return "\n\n".join(f"Passage {i + 1}:\n{p}" for i, p in enumerate(passages))


def instruction(qtype: str, title: str = "", section: str = "") -> str:
    """The task line; the structural one names the section, so the model does not borrow the topic
    of a few-shot example from another document (it did)."""
    return INSTRUCTIONS[qtype].format(title=title or "the document", section=section or title or "this part")


def style_hint(style_queries: list[str] | None) -> str:
    """A line showing real users' queries, so the generator matches their length and form."""
    if not style_queries:
        return ""
    shown = "; ".join(f'"{q}"' for q in style_queries)
    return f"\n\nReal users of this documentation write queries like: {shown}. Match their style."


def chat_messages(qtype: str, passages: list[str], examples: list[dict[str, str]],
                  with_answer: bool = True, title: str = "", section: str = "",
                  style_queries: list[str] | None = None) -> list[dict[str, str]]:
    """Chat prompt. Without answers the model spends its tokens on the question only (a 135M model
    rambles in the answer field, and nothing downstream trains on the answer)."""
    import json

    msgs = [{"role": "system", "content": SYSTEM if with_answer else SYSTEM_NO_ANSWER}]
    for ex in examples:
        shot = {"question": ex["question"], "answer": ex["answer"]} if with_answer else {"question": ex["question"]}
        ex_instr = instruction(qtype, ex.get("title", ""), ex.get("section", ""))
        msgs.append({"role": "user", "content": f"{_passage_block(ex['passages'])}\n\n{ex_instr}"})
        msgs.append({"role": "assistant", "content": json.dumps(shot)})
    msgs.append({"role": "user", "content": f"{_passage_block(passages)}\n\n{instruction(qtype, title, section)}"
                                            f"{style_hint(style_queries)}"})
    return msgs


COMPLETION_LABEL = {"factual": "Question", "keyword": "Search query", "procedural": "How-to question",
                    "structural": "Question about this section", "multi_hop": "Question using both passages"}


def completion_prompt(qtype: str, passages: list[str], examples: list[dict[str, str]],
                      style_queries: list[str] | None = None) -> str:
    """Few-shot text for a base model; it continues after the label and stops at the newline."""
    label = COMPLETION_LABEL[qtype]
    parts = [f"Technical documentation passages, each with a {label.lower()} a user would ask."
             f"{style_hint(style_queries).strip() and ' ' + style_hint(style_queries).strip()}\n"]
    for ex in examples:
        parts.append(f"{_passage_block(ex['passages'])}\n{label}: {ex['question']}\n")
    parts.append(f"{_passage_block(passages)}\n{label}:")
    return "\n".join(parts)


def judge_messages(question: str, passages: list[str]) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You grade search queries for a documentation search engine. Answer with one "
                                      'JSON object {"relevance": n, "answerability": n, "clarity": n}, each 1 to 10.'},
        {"role": "user", "content": f"{_passage_block(passages)}\n\nQuery: {question}\n\n"
                                    "relevance: is the query about this passage? answerability: does the passage "
                                    "answer it? clarity: is it a clear, self-contained query? Grade 1 to 10."},
    ]


def parse_judge(text: str) -> dict[str, int] | None:
    """Scores from a judge answer: JSON if possible, else 'relevance: 7'-style text (tiny models ramble)."""
    from ..llm.client import extract_json, validate

    try:
        obj = extract_json(text)
        if isinstance(obj, dict) and validate(obj, JUDGE_SCHEMA) is None:
            return {k: int(obj[k]) for k in ("relevance", "answerability", "clarity")}
    except ValueError:
        pass
    out = {}
    for k in ("relevance", "answerability", "clarity"):
        m = re.search(rf"{k}\W{{0,4}}(\d{{1,2}})", text, re.I)
        if m and 1 <= int(m.group(1)) <= 10:
            out[k] = int(m.group(1))
    return out if len(out) == 3 else None


def request_seed(key: str) -> int:
    """A per-request sampling seed, so a rerun of the same key asks for the same sample."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------- several types from one call
# The JSON key each single-passage type is answered under, and what the system prompt asks for it.
BATCH_KEYS = {"factual": "question", "keyword": "search", "procedural": "how_to", "structural": "section_question"}
BATCH_ASK = {
    "factual": '"question": a specific question the passage answers, in your own words',
    "keyword": '"search": a short search-box query (2 to 5 words)',
    "procedural": '"how_to": a "How do I ..." question about a task the passage explains',
    "structural": '"section_question": a question about what the passage\'s section covers',
}
# Constrained decoding stops a string at its maxLength, often mid-word: with SmolLM2 on the Debian Reference 44
# of 154 search queries ended at 40 characters ("the default network configuration of DeB"), 16 of the 53 kept.
# Dropping every batched query within a character of its cap was measured on the real-question DEV split over
# three pipeline seeds (benchmarks/real_questions.py --seeds 42,43,44): 0.535 / 0.545 / 0.554, mean 0.545,
# against 0.553 / 0.542 / 0.571, mean 0.555, keeping them. A cut search query still reads like one, so they stay.
BATCH_MAX_CHARS = {"factual": 120, "keyword": 40, "procedural": 120, "structural": 120}


def batch_types(types: dict[str, int]) -> list[str]:
    """The single-passage types one batched call answers, in a fixed order."""
    return [t for t in QUERY_TYPES if t in BATCH_KEYS and int(types.get(t, 0) or 0) > 0]


def batch_schema(qtypes: list[str]) -> dict[str, Any]:
    """Every requested key, length-capped, so constrained decoding cannot ramble."""
    return {"type": "object", "required": [BATCH_KEYS[t] for t in qtypes],
            "properties": {BATCH_KEYS[t]: {"type": "string", "minLength": 3, "maxLength": BATCH_MAX_CHARS[t]}
                           for t in qtypes}}


def batch_system(qtypes: list[str], style_queries: list[str] | None = None) -> str:
    asks = "; ".join(BATCH_ASK[t] for t in qtypes)
    return ("You write search queries that users of technical documentation would type to find a passage. "
            f"For each passage answer with one JSON object: {asks}.{style_hint(style_queries)}")


def batch_examples(structure_rows: list[dict[str, Any]], chunks_by_id: dict[str, dict[str, Any]],
                   qtypes: list[str], n: int, seed: int, words_per_passage: int = 40) -> list[dict[str, Any]]:
    """``n`` examples chosen once per run (not per document), so every prompt starts with the same tokens
    and llama.cpp reuses their KV cache: the examples cost prompt evaluation once per slot, not per call."""
    pool = [r for r in structure_rows if r["query_type"] == "heading"]
    if not pool or n <= 0:
        return []
    rng = random.Random(f"{seed}:batch")
    out = []
    for r in rng.sample(pool, min(n, len(pool))):
        c = chunks_by_id[r["segment_ids"][0]]
        title = str(c.get("title") or "")
        answer = {BATCH_KEYS[t]: example_question(t, r["question"], title) for t in qtypes}
        body = c["text"].partition("\n")[2].strip() or c["text"]
        out.append({"passages": [_words(body, words_per_passage)], "answer": answer})
    return out


def batch_messages(qtypes: list[str], passages: list[str], examples: list[dict[str, Any]],
                   style_queries: list[str] | None = None) -> list[dict[str, str]]:
    """The constant prefix (system prompt and examples) first, the passage last."""
    import json

    msgs = [{"role": "system", "content": batch_system(qtypes, style_queries)}]
    for ex in examples:
        msgs.append({"role": "user", "content": _passage_block(ex["passages"])})
        msgs.append({"role": "assistant", "content": json.dumps(ex["answer"])})
    msgs.append({"role": "user", "content": _passage_block(passages)})
    return msgs


# ---------------------------------------------------------------- headings rewritten as questions
# A heading says what a section is about in a few words; users ask questions. Asking the LLM to turn the heading
# alone into a question is a short request after a constant prefix (llama.cpp reuses its KV cache), several
# times cheaper than reading a passage: measured with SmolLM2-135M on 15 Debian Reference headings, 0.18 s a
# question against 0.43 s when the section's first words were shown too (and no better questions).
# Bump when this prompt changes: the version is part of each task's key (synth.structure.questions).
HEADING_PROMPT_VERSION = "1"
HEADING_SYSTEM = ("You turn section titles of technical documentation into the question a user would type to "
                  "find that section. Answer with one question only.")
# Fixed, from domains unlike most corpora: the model copies the form, and a copied example is dropped.
HEADING_EXAMPLES = (
    ("Partial indexes", "How do I create an index on only some rows of a table?"),
    ("Mounting a USB stick", "How can I mount a USB drive?"),
    ("Locale settings", "How do I change the system language?"),
)


def heading_question_messages(heading: str) -> list[dict[str, str]]:
    """The constant prefix (system prompt and the fixed examples), then the heading."""
    msgs = [{"role": "system", "content": HEADING_SYSTEM}]
    for h, q in HEADING_EXAMPLES:
        msgs += [{"role": "user", "content": f"Title: {h}"}, {"role": "assistant", "content": q}]
    msgs.append({"role": "user", "content": f"Title: {heading}"})
    return msgs

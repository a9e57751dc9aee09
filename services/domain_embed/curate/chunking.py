"""Sentence- and token-aware chunking by the base model's tokenizer.

A chunk is a context line (``Title — Section``) followed by about ``chunk_sentences`` units, where
a unit is a prose sentence, a table row, or a whole code block. The hard limit is the encoding
spec's ``max_passage_length``, counted on ``passage_prefix + text`` with special tokens -- exactly
what the encoder will see -- and every chunk is checked against it with the real tokenizer, so no
chunk is ever truncated at training or serving time. A unit longer than the budget (a pathological
sentence, a huge code block) is cut at token boundaries.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterator

from .readers import HEADING

# A sentence ends at . ! or ? followed by space and something that can start a sentence.
_SENT_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREV = re.compile(r"(?:\b(?:e\.g|i\.e|etc|vs|cf|approx|Fig|Sec|No|Dr|Mr|Mrs|Ms|St)\.)$", re.I)


# Headings of call-out boxes, not of sections: they must not replace the section's own heading.
ADMONITIONS = {"note", "tip", "warning", "caution", "important", "danger", "hint", "attention"}


@dataclass
class Unit:
    text: str
    kind: str      # "prose" | "code" | "table"
    block: int     # paragraph index within the section: units of one paragraph join with a space


@dataclass
class Chunk:
    text: str
    section: str
    n_tokens: int
    position: int


def split_sentences(paragraph: str) -> list[str]:
    flat = " ".join(paragraph.split())
    parts, start = [], 0
    for m in _SENT_END.finditer(flat):
        if _ABBREV.search(flat[start : m.start()]):
            continue
        parts.append(flat[start : m.start()].strip())
        start = m.end()
    tail = flat[start:].strip()
    if tail:
        parts.append(tail)
    return [p for p in parts if p]


def _block_units(block: str, index: int) -> list[Unit]:
    lines = block.split("\n")
    if block.lstrip().startswith(("```", "~~~")) or any(ln.startswith(("    ", "\t")) for ln in lines if ln.strip()):
        return [Unit(block, "code", index)]
    if sum(" | " in ln for ln in lines) >= max(1, len(lines) // 2):
        return [Unit(ln.strip(), "table", index) for ln in lines if ln.strip()]
    # list items and definition lines stay lines; wrapped prose lines join into sentences
    if len(lines) > 1 and all(re.match(r"\s*([-*+•]|\d+[.)])\s", ln) for ln in lines if ln.strip()):
        return [Unit(ln.strip(), "prose", index) for ln in lines if ln.strip()]
    return [Unit(s, "prose", index) for s in split_sentences(block)]


def sections(text: str) -> Iterator[tuple[str, list[Unit]]]:
    """(section heading or "", units) in document order."""
    section, blocks = "", []
    # Fenced code may contain blank lines; keep a fence as one block.
    raw_blocks, cur, fenced = [], [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if not fenced and not line.strip():
            if cur:
                raw_blocks.append("\n".join(cur))
                cur = []
            continue
        if not fenced and line.startswith(HEADING):
            if cur:
                raw_blocks.append("\n".join(cur))
                cur = []
            raw_blocks.append(line)
            continue
        cur.append(line)
    if cur:
        raw_blocks.append("\n".join(cur))
    for b in raw_blocks:
        if b.startswith(HEADING) and b[len(HEADING):].strip().casefold() in ADMONITIONS:
            blocks.append(b[len(HEADING):].strip() + ":")  # "Note" boxes stay inside their section
        elif b.startswith(HEADING) and "\n" not in b:
            if blocks:
                yield section, [u for i, blk in enumerate(blocks) for u in _block_units(blk, i)]
            section, blocks = b[len(HEADING):].strip(), []
        else:
            blocks.append(b)
    if blocks:
        yield section, [u for i, blk in enumerate(blocks) for u in _block_units(blk, i)]


class Chunker:
    def __init__(self, tokenizer: Any, passage_prefix: str, max_tokens: int, chunk_sentences: int = 5,
                 overlap_sentences: int = 0, min_chunk_tokens: int = 0, include_title: bool = True):
        self.tok = tokenizer
        # We count whole documents' sentences on purpose; silence the "longer than 512" warning.
        self.tok.model_max_length = 1 << 30
        self.prefix = passage_prefix
        self.max_tokens = int(max_tokens)
        self.chunk_sentences = max(1, int(chunk_sentences))
        self.overlap = max(0, int(overlap_sentences))
        self.min_chunk_tokens = int(min_chunk_tokens)
        self.include_title = include_title
        self._base = self.count("")  # prefix + special tokens
        if self._base + 8 > self.max_tokens:
            raise ValueError(f"max_passage_length={self.max_tokens} leaves no room after the passage prefix")
        self.dropped_small = 0

    # exact token count of what the encoder sees
    def count(self, text: str) -> int:
        return len(self.tok(self.prefix + text, add_special_tokens=True, truncation=False)["input_ids"])

    def _ntok(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False, truncation=False)["input_ids"])

    def _cut(self, text: str, budget: int) -> list[str]:
        """Cut text at token boundaries into pieces of at most ``budget`` tokens."""
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
        offs = enc["offset_mapping"]
        pieces = []
        for s in range(0, len(offs), budget):
            window = offs[s : s + budget]
            start = window[0][0]
            end = offs[s + budget][0] if s + budget < len(offs) else len(text)
            piece = text[start:end].strip()
            if piece:
                pieces.append(piece)
        return pieces

    def context_line(self, title: str, section: str) -> str:
        if not self.include_title:
            return ""
        title = " ".join(title.split())
        section = " ".join(section.split())
        line = f"{title} — {section}" if section and section.casefold() != title.casefold() else title
        cap = max(8, (self.max_tokens - self._base) // 4)  # a context line never eats the chunk
        if line and self._ntok(line) > cap:
            line = self._cut(line, cap)[0]
        return line

    def _join(self, head: str, units: list[Unit]) -> str:
        body = ""
        prev: Unit | None = None
        for u in units:
            if prev is None:
                body = u.text
            elif prev.kind == "prose" and u.kind == "prose" and prev.block == u.block:
                body += " " + u.text
            else:
                body += "\n" + u.text
            prev = u
        return f"{head}\n{body}" if head else body

    def _lens(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False, truncation=False)["input_ids"]]

    def chunk_document(self, title: str, text: str) -> list[Chunk]:
        out: list[Chunk] = []
        pos = 0
        for section, units in sections(text):
            head = self.context_line(title, section)
            room = self.max_tokens - self.count(head + "\n" if head else "") - 2  # 2: join slack, checked below
            # units too long for any chunk are cut at token boundaries first
            fitted: list[Unit] = []
            for u, n in zip(units, self._lens([u.text for u in units])):
                if n > room:
                    if u.kind == "code" and "\n" in u.text:
                        lines = [Unit(ln, "code", u.block) for ln in u.text.split("\n") if ln.strip()]
                        for ln, m in zip(lines, self._lens([ln.text for ln in lines])):
                            if m > room:
                                fitted.extend(Unit(p, "code", u.block) for p in self._cut(ln.text, room))
                            else:
                                fitted.append(ln)
                    else:
                        fitted.extend(Unit(p, u.kind, u.block) for p in self._cut(u.text, room))
                else:
                    fitted.append(u)
            sec_chunks = self._pack(head, fitted)
            for text_, n in sec_chunks:
                out.append(Chunk(text=text_, section=section, n_tokens=n, position=pos))
                pos += 1
        kept = [c for c in out if c.n_tokens >= self.min_chunk_tokens]
        self.dropped_small += len(out) - len(kept)
        return kept

    def _pack(self, head: str, units: list[Unit]) -> list[tuple[str, int]]:
        """Greedy packing on summed unit lengths, with the exact count checked on every chunk closed.

        Summed lengths equal the exact count for word-level tokenizers (WordPiece); for others they
        may be off by a token per join, so a chunk over the limit gives back units until it fits.
        """
        chunks: list[tuple[str, int]] = []
        head_n = self.count(head + "\n" if head else "")
        lens = self._lens([u.text for u in units])
        i = 0
        while i < len(units):
            j, est, sentences = i, head_n, 0.0
            while j < len(units) and est + lens[j] <= self.max_tokens:
                est += lens[j]
                sentences += 0.5 if units[j].kind == "table" else 1.0
                j += 1
                if sentences >= self.chunk_sentences:
                    break
            best: tuple[str, int] | None = None
            while j > i:
                cand = self._join(head, units[i:j])
                n = self.count(cand)
                if n <= self.max_tokens:
                    best = (cand, n)
                    break
                j -= 1
            if best is None:
                # a single unit (joined with the context line) over budget: cut it harder
                pieces = self._cut(units[i].text, max(8, (self.max_tokens - head_n) - 4 - (1 if j == i else 0)))
                if len(pieces) == 1 and pieces[0] == units[i].text:
                    pieces = self._cut(units[i].text, max(1, self._ntok(units[i].text) // 2))
                units[i : i + 1] = [Unit(p, units[i].kind, units[i].block) for p in pieces]
                lens[i : i + 1] = self._lens(pieces)
                continue
            # a tiny last chunk of a section merges into the previous one when it fits
            if j >= len(units) and chunks and best[1] < self.min_chunk_tokens:
                prev_text, _ = chunks[-1]
                merged = prev_text + "\n" + self._join("", units[i:j])
                n = self.count(merged)
                if n <= self.max_tokens:
                    chunks[-1] = (merged, n)
                    break
            chunks.append(best)
            if j >= len(units):
                break
            step_back = min(self.overlap, j - i - 1)  # always make progress
            i = j - step_back if all(u.kind == "prose" for u in units[j - step_back : j]) else j
        return chunks


def chunk_id(doc: str, text: str) -> str:
    return "c_" + hashlib.sha256((doc + text).encode("utf-8")).hexdigest()[:16]

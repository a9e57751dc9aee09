"""Find corpus files and turn each into documents, or into a counted reason for skipping it.

Every reader returns text in one internal form, so that cleaning and chunking need not know the
file type: paragraphs separated by blank lines, code indented by four spaces (or fenced), and
section headings on their own line as ``§§ Heading``. Chunking turns the heading markers into the
context line at the start of each chunk.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .markup import HEADING  # noqa: E402,F401  (re-exported: the chunker imports it from here)

TEXT_EXTS = {".txt", ".text"}
MD_EXTS = {".md", ".markdown"}
RST_EXTS = {".rst"}
HTML_EXTS = {".html", ".htm", ".xhtml"}
JSONL_EXTS = {".jsonl"}
PDF_EXTS = {".pdf"}
SUPPORTED = TEXT_EXTS | MD_EXTS | RST_EXTS | HTML_EXTS | JSONL_EXTS | PDF_EXTS


@dataclass
class Document:
    source: str          # path relative to the corpus root (plus ":<line>" for JSONL rows)
    title: str
    text: str            # internal form, see the module docstring
    order: tuple = ()    # (relative path, position in file): the deterministic output order


@dataclass
class ReadResult:
    docs: list[Document] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> count
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    details: dict[str, str] = field(default_factory=dict)  # source -> what the system said (e.g. "Permission denied")
    files_seen: int = 0

    def skip(self, source: str, reason: str, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.skipped_files.append((source, reason))
        if detail:
            self.details[source] = detail


# ---------------------------------------------------------------- discovery
def _matches(rel: str, patterns: Iterable[str]) -> bool:
    for pat in patterns:
        # "**/*.md" should also match "x.md" at the root, as users expect from globs.
        if fnmatch.fnmatch(rel, pat) or (pat.startswith("**/") and fnmatch.fnmatch(rel, pat[3:])):
            return True
    return False


@dataclass
class Discovery:
    """The files to read, and every file or folder under the root that was left out, by why."""

    files: list[Path] = field(default_factory=list)
    left_out: list[tuple[str, str, str]] = field(default_factory=list)  # rundir.tree_files' (kind, rel, detail)
    unsupported: dict[str, int] = field(default_factory=dict)  # extension -> files of a type no reader takes
    not_included: dict[str, int] = field(default_factory=dict)  # extension -> readable files no include matched
    excluded: list[str] = field(default_factory=list)           # files an exclude pattern matched
    over_max_files: int = 0


def _ext(rel: str) -> str:
    return Path(rel).suffix.lower() or "(no extension)"


def scan(root: Path, include: Iterable[str], exclude: Iterable[str] = (), max_files: int = 0) -> Discovery:
    """Files under ``root`` matching an include pattern and no exclude pattern, sorted by path, with
    what was left out. Run directories under the corpus (its own among them) are never read."""
    from ..rundir import tree_files

    include, exclude = list(include), list(exclude)
    found = Discovery()
    if root.is_file():
        found.files = [root]
        return found
    for p in tree_files(root, found.left_out):
        rel = p.relative_to(root).as_posix()
        if _matches(rel, exclude):
            found.excluded.append(rel)
        elif not _matches(rel, include):
            counts = found.not_included if p.suffix.lower() in SUPPORTED else found.unsupported
            counts[_ext(rel)] = counts.get(_ext(rel), 0) + 1
        else:
            found.files.append(p)
    if max_files and max_files > 0:
        found.over_max_files = max(0, len(found.files) - max_files)
        found.files = found.files[:max_files]
    return found


def discover(root: Path, include: Iterable[str], exclude: Iterable[str] = (), max_files: int = 0) -> list[Path]:
    """The files of :func:`scan` (the corpus fingerprint lists exactly these)."""
    return scan(root, include, exclude, max_files).files


def _by_ext(counts: dict[str, int]) -> str:
    return ", ".join(f"{ext} ({n})" for ext, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _names(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def left_out_lines(found: Discovery, root: Path) -> list[str]:
    """One line per kind of thing discovery left out; a line that needs the user's action starts
    with "warning:" (so that --quiet still shows it)."""
    by: dict[str, list[tuple[str, str]]] = {}
    for kind, rel, detail in found.left_out:
        by.setdefault(kind, []).append((rel, detail))
    lines = []
    if by.get("run_dir"):
        rels = [r for r, _ in by["run_dir"]]
        lines.append(f"left out {len(rels)} domain-embed run folder{'s' * (len(rels) != 1)} inside the corpus "
                     f"(stage outputs, not documents): {_names(rels)}")
    for rel, detail in by.get("unreadable_dir", []):
        lines.append(f"warning: cannot read the folder {rel}/ ({detail}); its files are left out. To read them, "
                     f"fix its permissions (e.g. chmod -R a+rX {shlex.quote(str(root / rel))})")
    for rel, detail in by.get("unreadable", []):
        lines.append(f"warning: left out {rel}: cannot look at it ({detail})")
    for rel, detail in by.get("broken_link", []):
        target, _, err = detail.rpartition(": ")
        why = "which does not exist" if "No such file" in err else f"which cannot be followed ({err})"
        lines.append(f"warning: left out {rel}: a link to {target}, {why}; fix or remove the link")
    for rel, first in by.get("seen_dir", []):
        lines.append(f"left out {rel}: a link to a folder already read (as {first})")
    for rel, _ in by.get("not_a_file", []):
        lines.append(f"warning: left out {rel}: not a regular file (a pipe, socket or device)")
    if found.unsupported:
        n = sum(found.unsupported.values())
        lines.append(f"left out {n} file{'s' * (n != 1)} of {'an ' * (n == 1)}unsupported type{'s' * (n != 1)}: "
                     f"{_by_ext(found.unsupported)}; supported: {' '.join(sorted(SUPPORTED))}")
    if found.not_included:
        n = sum(found.not_included.values())
        lines.append(f"left out {n} file{'s' * (n != 1)} that no corpus.include pattern matches: "
                     f"{_by_ext(found.not_included)}")
    if found.excluded:
        lines.append(f"left out {len(found.excluded)} file{'s' * (len(found.excluded) != 1)} matching corpus.exclude: "
                     f"{_names(found.excluded)}")
    if found.over_max_files:
        lines.append(f"left out the last {found.over_max_files} files beyond corpus.max_files={len(found.files)}")
    return lines


# ---------------------------------------------------------------- decoding
_CTRL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _looks_binary(data: bytes) -> bool:
    head = data[:8192]
    if b"\x00" in head and not (head.startswith(b"\xff\xfe") or head.startswith(b"\xfe\xff")):
        return True
    return False


def decode(data: bytes, declared: str | None = None) -> tuple[str | None, str | None]:
    """(text, None) or (None, skip reason). UTF-8, UTF-16 with BOM, or an HTML-declared charset."""
    if not data.strip():
        return None, "skipped_empty"
    if _looks_binary(data):
        return None, "skipped_binary"
    candidates = ["utf-8-sig"]
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    elif declared and declared.lower().replace("_", "-") not in ("utf-8", "utf8"):
        candidates.append(declared)
    for enc in candidates:
        try:
            text = data.decode(enc)
        except (UnicodeDecodeError, LookupError):
            continue
        if len(_CTRL.findall(text[:20000])) > 0.01 * max(1, len(text[:20000])):
            return None, "skipped_binary"
        if not text.strip():
            return None, "skipped_empty"
        return text, None
    return None, "skipped_encoding"


_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)


# ---------------------------------------------------------------- text formats
_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_to_internal(text: str) -> tuple[str, str | None]:
    """Headings outside code fences become section markers; returns (text, first heading)."""
    out, title, fenced = [], None, False
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            out.append(line)
        elif not fenced and (m := _MD_HEADING.match(line)):
            heading = m.group(2).strip()
            title = title or heading
            out.extend(["", HEADING + heading, ""])
        elif (not fenced and i + 1 < len(lines) and line.strip()
              and re.fullmatch(r"\s*(=+|-+)\s*", lines[i + 1]) and len(lines[i + 1].strip()) >= 3
              and not line.lstrip().startswith(("-", "*", "|"))):
            # setext heading: "Title\n====="
            title = title or line.strip()
            out.extend(["", HEADING + line.strip(), ""])
            i += 1
        else:
            out.append(line)
        i += 1
    return "\n".join(out), title


_RST_ADORN = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")


def rst_to_internal(text: str) -> tuple[str, str | None]:
    """reStructuredText section titles (underlined, optionally overlined) become section markers."""
    lines = text.splitlines()
    out, title = [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if _RST_ADORN.match(line) and i + 2 < len(lines) and _RST_ADORN.match(lines[i + 2]) and lines[i + 1].strip():
            heading = lines[i + 1].strip()  # overlined title
            title = title or heading
            out.extend(["", HEADING + heading, ""])
            i += 3
            continue
        if line.strip() and not line.startswith((" ", "\t")) and _RST_ADORN.match(nxt) and len(nxt.strip()) >= len(line.strip()) - 2:
            heading = line.strip()
            title = title or heading
            out.extend(["", HEADING + heading, ""])
            i += 2
            continue
        if line.strip().startswith(".. ") and not line.strip().startswith((".. code", ".. note", ".. warning")):
            i += 1  # directives and comments (targets, images, toctree) are markup, not prose
            continue
        out.append(line)
        i += 1
    return "\n".join(out), title


def txt_title(text: str, fallback: str) -> str:
    for line in text.splitlines():
        s = line.strip()
        if s:
            if len(s) <= 100 and not s.endswith((".", ",", ";", ":")):
                return s
            break
    return fallback


def _stem_title(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


# ---------------------------------------------------------------- the readers
def read_corpus(root: Path, files: list[Path], jsonl_text_field: str = "text",
                jsonl_title_field: str | None = "title") -> ReadResult:
    res = ReadResult(files_seen=len(files))
    html_titled: list[Document] = []  # HTML pages whose title came from <title>: may carry site-wide text
    for path in files:
        rel = path.relative_to(root).as_posix() if path != root else path.name
        ext = path.suffix.lower()
        try:
            data = path.read_bytes()
        except OSError as exc:
            res.skip(rel, "skipped_unreadable", exc.strerror or str(exc))
            continue
        if ext in PDF_EXTS:
            _read_pdf(path, rel, data, res)
            continue
        if ext not in SUPPORTED:
            res.skip(rel, "skipped_unsupported")
            continue
        declared = None
        if ext in HTML_EXTS and (m := _META_CHARSET.search(data[:4096])):
            declared = m.group(1).decode("ascii", "ignore")
        text, reason = decode(data, declared)
        if reason:
            res.skip(rel, reason)
            continue
        if ext in JSONL_EXTS:
            _read_jsonl(text, rel, res, jsonl_text_field, jsonl_title_field)
            continue
        if ext in HTML_EXTS:
            from .html_text import html_to_internal

            body, page_title = html_to_internal(text)
            title = page_title or _stem_title(path)
        elif ext in MD_EXTS:
            body, title = markdown_to_internal(text)
            title = title or _stem_title(path)
        elif ext in RST_EXTS:
            body, title = rst_to_internal(text)
            title = title or _stem_title(path)
        else:
            body, title = text, txt_title(text, _stem_title(path))
        if not body.replace(HEADING, "").strip():
            res.skip(rel, "skipped_empty")
            continue
        res.docs.append(Document(source=rel, title=title, text=body, order=(rel, 0)))
        if ext in HTML_EXTS and page_title:
            html_titled.append(res.docs[-1])
    _strip_site_titles(html_titled)
    return res


def _strip_site_titles(docs: list[Document]) -> None:
    """Drop the text a generated site repeats in every page title (" — Python 3.11.2 documentation"):
    it is the same in every chunk's context line, so it only dilutes the embedding.

    A site is the pages under one top-level folder of the corpus (the files at its root are one
    more), so two documentation sets copied side by side are told apart.
    """
    from .html_text import site_title_affixes, strip_title_affixes

    sites: dict[str, list[Document]] = {}
    for d in docs:
        top = d.source.split("/", 1)[0] if "/" in d.source else ""
        sites.setdefault(top, []).append(d)
    for group in sites.values():
        prefix, suffix = site_title_affixes([d.title for d in group])
        if prefix or suffix:
            for d in group:
                d.title = strip_title_affixes(d.title, prefix, suffix)


def _read_jsonl(text: str, rel: str, res: ReadResult, field_name: str, title_field: str | None) -> None:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            res.skip(f"{rel}:{lineno}", "skipped_jsonl_bad_line")
            continue
        value = row.get(field_name) if isinstance(row, dict) else None
        if not isinstance(value, str) or not value.strip():
            res.skip(f"{rel}:{lineno}", "skipped_jsonl_no_text")
            continue
        title = row.get(title_field) if title_field and isinstance(row, dict) else None
        body, md_title = markdown_to_internal(value)
        title = str(title).strip() if isinstance(title, str) and title.strip() else (md_title or txt_title(value, f"{rel}:{lineno}"))
        res.docs.append(Document(source=f"{rel}:{lineno}", title=title, text=body, order=(rel, lineno)))


def _read_pdf(path: Path, rel: str, data: bytes, res: ReadResult) -> None:
    if not data.strip():
        res.skip(rel, "skipped_empty")
        return
    try:
        import pypdf
    except ImportError:
        res.skip(rel, "skipped_pdf_unsupported")
        return
    import io
    import logging

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            res.skip(rel, "skipped_pdf_encrypted")
            return
        pages = [(p.extract_text() or "") for p in reader.pages]
        meta_title = (reader.metadata.title if reader.metadata else None) or None
    except Exception:  # pypdf raises many types on damaged files
        res.skip(rel, "skipped_pdf_error")
        return
    # Pages are paragraphs; a PDF has no reliable headings, so the title is the only context.
    body = "\n\n".join(p.strip() for p in pages if p.strip())
    if not body.strip():
        res.skip(rel, "skipped_pdf_no_text")  # a scan without a text layer
        return
    title = str(meta_title).strip() if meta_title and str(meta_title).strip() else txt_title(body, _stem_title(path))
    res.docs.append(Document(source=rel, title=title, text=body, order=(rel, 0)))

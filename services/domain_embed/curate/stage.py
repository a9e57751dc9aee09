"""The curate stage: documents -> curate/chunks.jsonl.

read (txt, md, rst, html, jsonl, pdf) -> NeMo Curator cleaning (UnicodeReformatter, whitespace and
boilerplate normalisation, heuristic quality scores) -> quality filters -> exact and near-duplicate
removal -> token-aware chunking with a title/section context line.

Output rows (the contract every later stage relies on)::

    {"id": "c_<16 hex>", "doc_id": "d_<16 hex>", "text", "title", "section", "source", "n_tokens"}

sorted by source path, then position in the document.
"""

from __future__ import annotations

import os
import shlex
import statistics
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rundir import StageContext, atomic_write_jsonl
from ..schema import CorpusConfig

OUTPUT = "curate/chunks.jsonl"


def _corpus_root(corpus: CorpusConfig, run_folders: frozenset[str] = frozenset()) -> Path:
    if not corpus.path:
        raise UserError("corpus.path is not set; pass corpus.path=/path/to/your/documents")
    root = Path(corpus.path).expanduser().resolve()
    if not root.exists():
        raise UserError(f"corpus path {root} does not exist; pass corpus.path=/path/to/your/documents")
    run = _holding_run_dir(root, run_folders)
    if run is not None:
        where = "is a domain-embed run directory" if run == root else f"is inside the domain-embed run directory {run}"
        raise UserError(f"corpus path {root} {where}: its files are a run's outputs, not documents; "
                        f"point corpus.path at the documents (corpus.path=/path/to/your/documents)")
    return root


def _holding_run_dir(root: Path, run_folders: frozenset[str] = frozenset()) -> Path | None:
    """The run directory whose own files ``root`` is or holds: the run itself, or a path in one of its stage
    folders or top-level files (``runs/demo``, ``runs/demo/curate``). Reading it would curate the run's own
    chunks.jsonl, manifests and reports. A folder of documents kept in a run directory is not the run's, and
    runs *inside* a corpus are left out by :func:`readers.scan`. ``run_folders``: the names of the folders the
    stages write (from the stage registry, which imports this module, so it is passed in)."""
    from ..rundir import MANIFEST, is_run_dir

    if is_run_dir(root):
        return root
    owned = {"embeddings", *run_folders}
    for run in root.parents:
        if is_run_dir(run):
            top = run / root.relative_to(run).parts[0]
            if top.name in owned or not top.is_dir() or (top / MANIFEST).is_file():
                return run
    return None


def _skip_summary(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())) or "none"


def _skip_why(reason: str, path: Path, detail: str = "", jsonl_field: str = "text") -> str:
    """Why a file was skipped and what to do about it, for its warning and for the final error."""
    from .readers import SUPPORTED

    q, tmp = shlex.quote(str(path)), shlex.quote(f"{path}.utf8")
    return {
        "skipped_unreadable": f"cannot read it ({detail or 'permission denied'}), fix its permissions "
                              f"(e.g. chmod a+r {q}) and rerun",
        "skipped_encoding": "not UTF-8 or UTF-16 text, re-save it as UTF-8 and rerun (for a Latin-1 file: "
                            f"iconv -f latin1 -t utf-8 {q} > {tmp} && mv {tmp} {q})",
        "skipped_binary": "binary data, not text",
        "skipped_empty": "no text in it",
        "skipped_unsupported": f"not a type curate reads (supported: {' '.join(sorted(SUPPORTED))})",
        "skipped_pdf_unsupported": "a PDF, and pypdf is not installed (pip install 'domain-embed[curate]')",
        "skipped_pdf_encrypted": "an encrypted PDF, save a copy without the password",
        "skipped_pdf_error": "a PDF that pypdf cannot open (damaged or not a PDF)",
        "skipped_pdf_no_text": "a PDF without a text layer (a scan), run OCR on it first (e.g. ocrmypdf)",
        "skipped_jsonl_bad_line": "a line that is not valid JSON",
        "skipped_jsonl_no_text": f"a row without a non-empty '{jsonl_field}' field (set corpus.jsonl_text_field)",
    }.get(reason, reason)


def _skips_by_reason(res, root: Path, jsonl_field: str) -> str:
    """Every reason files were skipped, with up to 3 of them and the fix (for an error message)."""
    by: dict[str, list[str]] = {}
    for source, reason in res.skipped_files:
        by.setdefault(reason, []).append(source)
    parts = []
    for reason, sources in sorted(by.items()):
        names = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
        where = root if root.is_file() else root / sources[0]
        parts.append(f"{names}: {_skip_why(reason, where, res.details.get(sources[0], ''), jsonl_field)}")
    return "; ".join(parts)


# Each quality filter's setting, and what a dropped document had too much or too little of.
_FILTER_SETTINGS = {"non_alphanumeric": ("max_non_alpha_ratio", "a larger share of non-alphanumeric characters"),
                    "repeated_lines": ("max_repeated_line_fraction", "a larger share of repeated lines")}


def _filter_lines(dropped: dict[str, list[tuple[str, float]]], c) -> list[str]:
    """A warning per filter that dropped documents: up to 5 of them by name, and the setting to change."""
    groups: list[tuple[str, str, list[str]]] = []
    for name, rows in dropped.items():
        if name == "word_count":
            few = [f"{s} ({int(v)} words)" for s, v in rows if v < c.min_words]
            many = [f"{s} ({int(v)} words)" for s, v in rows if v >= c.min_words]
            groups.append((f"fewer than curate.min_words={c.min_words} words", "lower curate.min_words", few))
            groups.append((f"more than curate.max_words={c.max_words} words", "raise curate.max_words", many))
        elif name in _FILTER_SETTINGS:
            key, what = _FILTER_SETTINGS[name]
            groups.append((f"{what} than curate.{key}={getattr(c, key)}", f"raise curate.{key}",
                           [s for s, _ in rows]))
    lines = []
    for why, fix, names in groups:
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            lines.append(f"warning: dropped {len(names)} document{'s' * (len(names) != 1)} with {why}: {shown}; "
                         f"{fix} to keep {'them' if len(names) != 1 else 'it'}")
    return lines


def run(ctx: StageContext) -> dict[str, Any]:
    import pandas as pd
    from transformers import AutoTokenizer

    from .chunking import Chunker, chunk_id
    from .cleaning import apply_filters, choose_executor, run_cleaning
    from .dedup import doc_id, exact_duplicates, near_duplicates
    from .readers import left_out_lines, read_corpus, scan

    corpus, c = ctx.conf.corpus, ctx.conf.curate
    spec = ctx.spec()
    root = _corpus_root(corpus)
    include = list(corpus.include or ["**/*"])
    exclude = list(corpus.exclude)
    jsonl_field = corpus.jsonl_text_field or "text"
    found = scan(root, include, exclude, corpus.max_files)  # the same files the corpus fingerprint lists
    left_out = left_out_lines(found, root)
    files = found.files
    if not files:
        raise UserError(
            f"corpus {root} has no files matching {include}"
            + "".join(f"; {ln.removeprefix('warning: ')}" for ln in left_out)
            + "; point corpus.path at a folder of .txt/.md/.rst/.html/.jsonl/.pdf files"
        )
    for line in left_out:
        ctx.log(line)
    told = list(left_out)  # what was left out, one line per kind: repeated by on_skip on an up-to-date rerun
    ctx.log(f"reading {len(files)} files from {root}")
    res = read_corpus(root, files, jsonl_field, corpus.jsonl_title_field)
    for source, reason in res.skipped_files[:20]:
        where = root if root.is_file() else root / source
        ctx.log(f"warning: skipped {source}: {_skip_why(reason, where, res.details.get(source, ''), jsonl_field)}")
    if len(res.skipped_files) > 20:
        ctx.log(f"warning: ... and {len(res.skipped_files) - 20} more skipped "
                f"({_skip_summary(res.skipped)}; the manifest counts them)")
    if not res.docs:
        raise UserError(
            f"corpus {root} has no usable documents ({len(files)} files, skipped: {_skip_summary(res.skipped)}): "
            f"{_skips_by_reason(res, root, jsonl_field)}; "
            "give it text, Markdown, reStructuredText, HTML, JSONL or PDF files with real content"
        )

    if res.skipped_files:
        told.append(f"warning: skipped {len(res.skipped_files)} file{'s' * (len(res.skipped_files) != 1)}: "
                    f"{_skips_by_reason(res, root, jsonl_field)}")
    counts: dict[str, Any] = {"files_seen": res.files_seen, "docs_read": len(res.docs)}
    for k, v in sorted(res.skipped.items()):
        counts[k] = v

    # ---- cleaning and quality scores (NeMo Curator stages)
    docs = sorted(res.docs, key=lambda d: d.order)
    frame = pd.DataFrame({
        "source": [d.source for d in docs],
        "title": [d.title for d in docs],
        "text": [d.text for d in docs],
        "order_path": [d.order[0] for d in docs],
        "order_pos": [int(d.order[1]) for d in docs],
    })
    executor = choose_executor(c, len(files))
    counts["executor"] = executor
    if executor == "ray" and (os.cpu_count() or 1) <= 2:
        ctx.log(f"warning: curate.executor=ray on {os.cpu_count()} cores; Ray adds start-up time here, inprocess is faster")
    ctx.log(f"cleaning {len(frame)} documents with NeMo Curator ({executor})")
    cleaned = run_cleaning(frame, c, executor)
    # executors may reorder batches; the output order is ours to fix
    cleaned = cleaned.sort_values(["order_path", "order_pos"], kind="stable").reset_index(drop=True)
    kept, removed, dropped = apply_filters(cleaned, c)
    for line in _filter_lines(dropped, c):
        ctx.log(line)
        told.append(line)
    counts.update(removed)
    counts["docs_after_filters"] = len(kept)

    # ---- dedup
    texts = kept["text"].tolist()
    drop: set[int] = set()
    if c.exact_dedup:
        ex = exact_duplicates(texts)
        drop.update(ex)
        counts["exact_dups_removed"] = len(ex)
    if c.near_dedup:
        remaining = [i for i in range(len(texts)) if i not in drop]
        near = near_duplicates([texts[i] for i in remaining], threshold=c.near_dedup_threshold,
                               num_perm=c.minhash_num_perm)
        for idx, other, j in near:
            ctx.log(f"near-duplicate: {kept['source'][remaining[idx]]} ~ {kept['source'][remaining[other]]} (Jaccard≈{j:.2f})")
        drop.update(remaining[idx] for idx, _, _ in near)
        counts["near_dups_removed"] = len(near)
    kept = kept.drop(index=sorted(drop)).reset_index(drop=True)
    counts["docs_kept"] = len(kept)
    if len(kept) == 0:
        raise UserError(
            f"every document in {root} was removed by the quality filters "
            f"({', '.join(f'{k}={v}' for k, v in removed.items() if v)}); "
            "check the documents, or relax curate.min_words / curate.max_non_alpha_ratio / curate.max_repeated_line_fraction"
        )

    # ---- chunking with the base model's tokenizer
    tokenizer = AutoTokenizer.from_pretrained(spec.model_path, trust_remote_code=spec.trust_remote_code)
    chunker = Chunker(tokenizer, spec.passage_prefix, spec.max_passage_length,
                      chunk_sentences=c.chunk_sentences, overlap_sentences=c.chunk_overlap_sentences,
                      min_chunk_tokens=c.min_chunk_tokens, include_title=c.include_title)
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    dup_chunks = 0
    per_doc: list[int] = []
    for rec in ctx.progress(kept.itertuples(index=False), total=len(kept), desc="chunk"):
        did = doc_id(rec.text)
        n = 0
        for ch in chunker.chunk_document(rec.title, rec.text):
            cid = chunk_id(did, ch.text)
            if cid in seen_ids:
                dup_chunks += 1  # a passage repeated inside a document is embedded once
                continue
            seen_ids.add(cid)
            rows.append({"id": cid, "doc_id": did, "text": ch.text, "title": rec.title, "section": ch.section,
                         "source": rec.source, "n_tokens": ch.n_tokens})
            n += 1
        per_doc.append(n)
    if not rows:
        raise UserError(
            f"no chunks came out of {len(kept)} documents (all under curate.min_chunk_tokens={c.min_chunk_tokens}); "
            "lower curate.min_chunk_tokens or add longer documents"
        )
    over = [r for r in rows if r["n_tokens"] > spec.max_passage_length]
    if over:  # the chunker guarantees this; a failure here is a bug, not bad input
        raise RuntimeError(f"{len(over)} chunks exceed max_passage_length={spec.max_passage_length}")
    atomic_write_jsonl(ctx.path(OUTPUT), rows)

    toks = [r["n_tokens"] for r in rows]
    counts.update({
        "docs_chunked": sum(1 for n in per_doc if n > 0),
        "chunks": len(rows),
        "chunks_dropped_small": chunker.dropped_small,
        "chunks_dropped_duplicate": dup_chunks,
        "tokens_min": min(toks),
        "tokens_mean": round(statistics.fmean(toks), 1),
        "tokens_max": max(toks),
        "tokens_total": sum(toks),
        "chunks_per_doc_mean": round(statistics.fmean(per_doc), 2) if per_doc else 0,
        "chunks_per_doc_max": max(per_doc) if per_doc else 0,
        "max_passage_length": spec.max_passage_length,
    })
    counts["left_out"] = told
    ctx.log(f"{counts['docs_kept']} documents -> {len(rows)} chunks "
            f"(tokens min/mean/max {counts['tokens_min']}/{counts['tokens_mean']}/{counts['tokens_max']})")
    return counts


_ON_SKIP_LINES = 6


def on_skip(ctx: StageContext, manifest: dict[str, Any]) -> None:
    """On an up-to-date rerun, repeat in short what the recorded run left out (files, documents), as
    warnings so that --quiet shows them too: a rerun to check must not look like a clean bill."""
    counts = manifest.get("counts") or {}
    lines = counts.get("left_out")
    if lines is None:  # a manifest from before counts.left_out: its nonzero skip and filter counts
        lines = [f"{k}={v}" for k, v in sorted(counts.items())
                 if k.startswith(("skipped_", "filtered_")) and isinstance(v, int) and v > 0]
        lines = [f"left out files or documents: {', '.join(lines)}"] if lines else []
    for line in lines[:_ON_SKIP_LINES]:
        ctx.log(f"warning: last run: {line.removeprefix('warning: ')}")
    if len(lines) > _ON_SKIP_LINES:
        ctx.log(f"warning: last run: ... and {len(lines) - _ON_SKIP_LINES} more; see counts.left_out in "
                f"{ctx.run_dir / ctx.stage.folder / 'manifest.json'}")

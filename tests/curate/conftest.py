"""Shared material for the curate tests: real documentation text from the bundled sample corpus.

Helpers are handed out as fixtures because the suite imports test files with importlib mode.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"


def sample_paragraphs(page: str, n: int = 4) -> list[str]:
    """Prose paragraphs (>= 25 words) of one sample page, extracted by the real HTML reader."""
    from domain_embed.curate.html_text import html_to_internal

    text, _ = html_to_internal((SAMPLE / page).read_text(encoding="utf-8"))
    paras = [b for b in text.split("\n\n") if not b.startswith(("§§", "    ")) and len(b.split()) >= 25]
    assert len(paras) >= n, f"{page} has only {len(paras)} long paragraphs"
    return paras[:n]


def curate_cfg(corpus: Path, *overrides: str):
    from domain_embed.config import load_config

    return load_config(None, [f"corpus.path={corpus}", "corpus.exclude=[]", *overrides], save=False)


def minimal_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A valid one-page PDF with a text layer (Helvetica), built by hand so no PDF writer is needed."""
    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "50 780 Td"]
    for ln in lines:
        ops.append(f"({esc(ln)}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    if title:
        objs.append(b"<< /Title (" + esc(title).encode("latin-1") + b") >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    info = f" /Info {len(objs)} 0 R" if title else ""
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def binary_blob(n: int = 4096) -> bytes:
    return zlib.compress(bytes(range(256)) * (n // 256)) + b"\x00\x01\x02" * 50


@pytest.fixture(scope="session")
def paras():
    """paras(page, n): real prose paragraphs from a sample page."""
    return sample_paragraphs


@pytest.fixture(scope="session")
def make_cfg():
    return curate_cfg


@pytest.fixture(scope="session")
def make_pdf():
    return minimal_pdf


@pytest.fixture(scope="session")
def binary():
    return binary_blob()


@pytest.fixture(scope="session")
def tokenizer(spec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.model_path)

"""Main text of an HTML page: navigation, headers, footers and scripts removed; headings kept.

General extractors (trafilatura, jusText) drop headings and code blocks, which are exactly what
technical documentation needs, so this walks the DOM itself: block elements become paragraphs,
``<pre>`` keeps its lines (indented as code), table rows become ``cell | cell`` lines, and
``<h1>``..``<h6>`` become section markers.
"""

from __future__ import annotations

import re

from .readers import HEADING

DROP_TAGS = {"script", "style", "noscript", "nav", "header", "footer", "aside", "form", "button",
             "iframe", "svg", "canvas", "template", "select", "input", "head"}
# class/id words that mark navigation chrome in common doc generators (Sphinx, DocBook, MkDocs, Hugo)
_CHROME = re.compile(
    r"^(nav|navbar|navheader|navfooter|navigation|breadcrumbs?|sidebar|sphinxsidebar|menu|footer|"
    r"header|site-header|site-footer|toc|toctree-wrapper|skip-?link|related|cookie.*|banner|pagination)$",
    re.I,
)
BLOCK_TAGS = {"p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "blockquote",
              "figure", "figcaption", "body", "html", "br", "hr", "caption", "details", "summary",
              "address", "center"}
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_WS = re.compile(r"\s+")


def _is_chrome(tag) -> bool:
    attrs = getattr(tag, "attrs", None) or {}
    words = list(attrs.get("class") or [])
    if attrs.get("id"):
        words.append(str(attrs["id"]))
    if attrs.get("role") in ("navigation", "banner", "contentinfo"):
        return True
    return any(_CHROME.match(str(w)) for w in words)


def html_to_internal(html: str) -> tuple[str, str | None]:
    """(text in the internal form, page title)."""
    import warnings

    from bs4 import BeautifulSoup, Comment, NavigableString, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)  # XHTML (DocBook output) parses fine as HTML
        soup = BeautifulSoup(html, "lxml")
    title = None
    if soup.title and soup.title.get_text(strip=True):
        title = _WS.sub(" ", soup.title.get_text(" ", strip=True))
    root = soup.body or soup
    blocks: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        s = _WS.sub(" ", "".join(buf)).strip()
        buf.clear()
        if s:
            blocks.append(s)

    def walk(node) -> None:
        for child in list(node.children):
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                buf.append(str(child))
                continue
            name = (child.name or "").lower()
            if name in DROP_TAGS or _is_chrome(child):
                continue
            if name in HEADINGS:
                flush()
                text = _WS.sub(" ", child.get_text(" ", strip=True)).strip()
                if text:
                    blocks.append(HEADING + text)
            elif name == "pre":
                flush()
                code = child.get_text().expandtabs(4).rstrip()
                lines = [ln.rstrip() for ln in code.split("\n")]
                while lines and not lines[0].strip():
                    lines.pop(0)
                if lines:
                    blocks.append("\n".join("    " + ln if ln.strip() else "" for ln in lines))
            elif name == "table":
                flush()
                rows = []
                for tr in child.find_all("tr"):
                    cells = [_WS.sub(" ", c.get_text(" ", strip=True)) for c in tr.find_all(["td", "th"])]
                    cells = [c for c in cells if c]
                    if cells:
                        rows.append(" | ".join(cells))
                cap = child.find("caption")
                if cap and cap.get_text(strip=True):
                    blocks.append(_WS.sub(" ", cap.get_text(" ", strip=True)))
                if rows:
                    blocks.append("\n".join(rows))
            elif name in BLOCK_TAGS:
                flush()
                walk(child)
                flush()
            else:
                walk(child)  # inline element (code, em, a, span)

    walk(root)
    flush()
    if title is None:
        for b in blocks:
            if b.startswith(HEADING):
                title = b[len(HEADING):]
                break
    return "\n\n".join(blocks), title

"""Main text of an HTML page: navigation, headers, footers and scripts removed; headings kept.

General extractors (trafilatura, jusText) drop headings and code blocks, which are exactly what
technical documentation needs, so this walks the DOM itself: block elements become paragraphs,
``<pre>`` keeps its lines (indented as code), table rows become ``cell | cell`` lines, and
``<h1>``..``<h6>`` become section markers.
"""

from __future__ import annotations

import re

from .markup import HEADING

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
# Permalink anchors that generators put beside headings and definitions: Sphinx and MkDocs
# (<a class="headerlink">¶</a>), Asciidoctor/Hugo/Docusaurus (class anchor, hash-link, ...).
_PERMALINK_CLASS = re.compile(r"^(headerlink|anchor|anchorjs-link|permalink|hash-link|heading-anchor|"
                              r"header-anchor|anchor-link|direct-link|zola-anchor)$", re.I)
_PERMALINK_TEXT = {"", "¶", "§", "#", "🔗", "∞", "⚓", "link"}


def _is_permalink(tag) -> bool:
    if (tag.name or "").lower() != "a":
        return False
    attrs = getattr(tag, "attrs", None) or {}
    text = tag.get_text(strip=True)
    if any(_PERMALINK_CLASS.match(str(c)) for c in attrs.get("class") or []):
        return text in _PERMALINK_TEXT or len(text) <= 2
    # no telling class, but a same-page link whose only text is a pilcrow-like mark
    return str(attrs.get("href", "")).startswith("#") and text in _PERMALINK_TEXT - {""}


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
    # Permalink marks go first, wherever they sit (headings, definition terms, table cells): in the
    # text they would repeat "¶" in every context line and heading query.
    for a in root.find_all("a"):
        if _is_permalink(a):
            a.decompose()
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


# ---------------------------------------------------------------- site-wide title text
# Separators generators put between a page's own title and the site's ("page — Project 3.1
# documentation", "Site | page", "page - Site").
_SEPARATORS = (" — ", " – ", " - ", " | ", " · ", " :: ", " » ", " : ", ": ")
# Share of the titles that must carry an affix for it to count as site-wide: not all of them,
# because a site's front page is often titled with the site name alone ("3.11.2 Documentation").
SITE_AFFIX_SHARE = 0.8


def _tails(title: str) -> set[str]:
    """Every end of ``title`` that starts at a separator, with something before it."""
    out = set()
    for sep in _SEPARATORS:
        i = title.find(sep, 1)
        while i > 0:
            out.add(title[i:])
            i = title.find(sep, i + 1)
    return out


def _heads(title: str) -> set[str]:
    """Every start of ``title`` that ends at a separator, with something after it."""
    out = set()
    for sep in _SEPARATORS:
        i = title.find(sep)
        while i >= 0:
            if title[i + len(sep):].strip():
                out.add(title[: i + len(sep)])
            i = title.find(sep, i + 1)
    return out


def site_title_affixes(titles: list[str], share: float = SITE_AFFIX_SHARE) -> tuple[str, str]:
    """(prefix, suffix) that most page titles of one site share, cut at a separator, or "".

    E.g. " — Python 3.11.2 documentation" for a Sphinx build. Needs at least two titles; an
    affix counts when at least ``share`` of the titles (and at least two) carry it.
    """
    if len(titles) < 2:
        return "", ""
    need = max(2, -(-int(share * 100) * len(titles) // 100))

    def best(sets: list[set[str]]) -> str:
        counts: dict[str, int] = {}
        for s in sets:
            for a in s:
                counts[a] = counts.get(a, 0) + 1
        common = [a for a, n in counts.items() if n >= need]
        return max(common, key=len) if common else ""

    return best([_heads(t) for t in titles]), best([_tails(t) for t in titles])


def strip_title_affixes(title: str, prefix: str, suffix: str) -> str:
    if suffix and title.endswith(suffix) and title[: -len(suffix)].strip():
        title = title[: -len(suffix)]
    if prefix and title.startswith(prefix) and title[len(prefix):].strip():
        title = title[len(prefix):]
    return title.strip()

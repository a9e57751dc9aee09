"""Every reader on small real inputs, and the reasons files are skipped."""

from __future__ import annotations

import json

import pytest

from domain_embed.curate.readers import HEADING, discover, read_corpus


def _read(root, **kw):
    return read_corpus(root, discover(root, ["**/*"]), **kw)


def test_txt_reader_keeps_text_and_takes_first_line_as_title(tmp_path, paras):
    p = paras("mvcc-intro.html", 2)
    (tmp_path / "mvcc.txt").write_text("Concurrency Control\n\n" + p[0] + "\n\n" + p[1] + "\n")
    res = _read(tmp_path)
    assert [d.title for d in res.docs] == ["Concurrency Control"]
    assert p[1] in res.docs[0].text and res.docs[0].source == "mvcc.txt"


def test_markdown_headings_become_sections_but_not_inside_code_fences(tmp_path, paras):
    p = paras("wal-intro.html", 2)
    md = f"# Write-Ahead Logging\n\n{p[0]}\n\n## Benefits\n\n{p[1]}\n\n```sh\n# not a heading\npg_ctl start\n```\n"
    (tmp_path / "wal.md").write_text(md)
    doc = _read(tmp_path).docs[0]
    assert doc.title == "Write-Ahead Logging"
    assert HEADING + "Benefits" in doc.text
    assert "# not a heading" in doc.text and HEADING + "not a heading" not in doc.text


def test_rst_section_titles_become_sections(tmp_path, paras):
    p = paras("indexes-multicolumn.html", 2)
    rst = f"=================\nMulticolumn Indexes\n=================\n\n{p[0]}\n\nWhen to use them\n----------------\n\n{p[1]}\n\n.. toctree::\n"
    (tmp_path / "idx.rst").write_text(rst)
    doc = _read(tmp_path).docs[0]
    assert doc.title == "Multicolumn Indexes"
    assert HEADING + "When to use them" in doc.text
    assert "toctree" not in doc.text


def test_html_reader_strips_navigation_and_keeps_headings_code_and_tables(tmp_path, paras):
    p = paras("sql-begin.html", 1)[0]
    html = f"""<html><head><title>BEGIN</title><script>var x = 1;</script></head><body>
    <nav><a href="/">Home</a> <a href="next.html">Next chapter: ROLLBACK</a></nav>
    <div class="navheader"><table><tr><td>Prev</td><td>Up</td><td>NAVIGATION-MARKER</td></tr></table></div>
    <div class="sidebar">SIDEBAR-MARKER</div>
    <h1>BEGIN</h1><h2>Description</h2><p>{p}</p>
    <pre>BEGIN;
  UPDATE accounts SET balance = 0;
COMMIT;</pre>
    <table><tr><th>Mode</th><th>Meaning</th></tr><tr><td>READ ONLY</td><td>no writes</td></tr></table>
    <footer>Copyright FOOTER-MARKER</footer></body></html>"""
    (tmp_path / "begin.html").write_text(html)
    doc = _read(tmp_path).docs[0]
    assert doc.title == "BEGIN"
    for marker in ("NAVIGATION-MARKER", "SIDEBAR-MARKER", "FOOTER-MARKER", "var x", "Next chapter"):
        assert marker not in doc.text
    assert HEADING + "Description" in doc.text
    assert p.split()[0] in doc.text
    assert "    BEGIN;\n      UPDATE accounts" in doc.text  # code keeps its lines and indentation
    assert "READ ONLY | no writes" in doc.text


def test_html_reader_on_a_real_sample_page_drops_the_docbook_nav(repo_root):
    from domain_embed.curate.html_text import html_to_internal

    raw = (repo_root / "data/sample/sql-createindex.html").read_text(encoding="utf-8")
    assert "navfooter" in raw and "CREATE LANGUAGE" in raw  # the footer links to the next page
    text, title = html_to_internal(raw)
    assert title == "CREATE INDEX"
    assert "CREATE LANGUAGE" not in text and "Prev" not in text.split() and "CREATE GROUP" not in text
    assert HEADING + "Description" in text and "constructs an index" in text


def test_jsonl_reader_uses_the_configured_field_and_skips_bad_rows(tmp_path, paras):
    p = paras("transaction-iso.html", 2)
    rows = [json.dumps({"body": p[0], "title": "Isolation"}), "{not json", json.dumps({"other": "x"}),
            json.dumps({"body": p[1]})]
    (tmp_path / "docs.jsonl").write_text("\n".join(rows) + "\n")
    res = _read(tmp_path, jsonl_text_field="body")
    assert [d.source for d in res.docs] == ["docs.jsonl:1", "docs.jsonl:4"]
    assert res.docs[0].title == "Isolation"
    assert res.skipped == {"skipped_jsonl_bad_line": 1, "skipped_jsonl_no_text": 1}


def test_pdf_reader_extracts_the_text_layer(tmp_path, make_pdf):
    pytest.importorskip("pypdf")
    lines = ["Point-in-time recovery replays archived WAL files", "until the recovery target is reached."]
    (tmp_path / "pitr.pdf").write_bytes(make_pdf(lines, title="PITR Guide"))
    (tmp_path / "scan.pdf").write_bytes(make_pdf([]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf")
    res = _read(tmp_path)
    assert [d.title for d in res.docs] == ["PITR Guide"]
    assert "archived WAL files" in res.docs[0].text
    assert res.skipped == {"skipped_pdf_error": 1, "skipped_pdf_no_text": 1}


def test_binary_empty_and_badly_encoded_files_are_skipped_with_reasons(tmp_path, paras, binary):
    (tmp_path / "good.txt").write_text(paras("mvcc-intro.html", 1)[0])
    (tmp_path / "image.txt").write_bytes(binary)
    (tmp_path / "blank.md").write_text("  \n\n \n")
    (tmp_path / "zero.html").write_bytes(b"")
    (tmp_path / "latin.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 20)
    (tmp_path / "nav-only.html").write_text("<html><body><nav>Home Next</nav></body></html>")
    res = _read(tmp_path)
    assert [d.source for d in res.docs] == ["good.txt"]
    assert res.skipped == {"skipped_binary": 1, "skipped_empty": 3, "skipped_encoding": 1}
    assert ("image.txt", "skipped_binary") in res.skipped_files


def test_discover_is_sorted_and_honours_include_exclude_and_hidden(tmp_path):
    for rel in ["b/x.md", "a.txt", "README.md", ".git/config.txt", "c.bin"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    found = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path, ["**/*.md", "**/*.txt"], ["README.md"])]
    assert found == ["a.txt", "b/x.md"]


SPHINX = __import__("pathlib").Path(__file__).parent / "fixtures" / "sphinx-python311"


def test_sphinx_pages_lose_permalinks_and_the_site_title_suffix(tmp_path):
    """Real Sphinx output (Python 3.11.2 docs, Debian python3-doc): no "¶" anywhere, and the title
    suffix every page repeats (" — Python 3.11.2 documentation") is gone from the titles."""
    import shutil

    raw = (SPHINX / "keyword.html").read_text(encoding="utf-8")
    assert 'class="headerlink"' in raw and "¶" in raw and "&#8212; Python 3.11.2 documentation</title>" in raw
    for name in ("keyword.html", "copyreg.html", "nis.html"):
        shutil.copy(SPHINX / name, tmp_path / name)
    docs = {d.source: d for d in _read(tmp_path).docs}
    assert set(docs) == {"keyword.html", "copyreg.html", "nis.html"}
    assert docs["keyword.html"].title == "keyword — Testing for Python keywords"
    assert docs["copyreg.html"].title == "copyreg — Register pickle support functions"
    assert docs["nis.html"].title.startswith("nis — Interface to Sun")
    for d in docs.values():
        assert "¶" not in d.text and "¶" not in d.title
        assert "documentation" not in d.title
    text = docs["keyword.html"].text
    assert HEADING + "keyword — Testing for Python keywords" in text.splitlines()   # heading without its mark
    assert "keyword.iskeyword(s)" in text.splitlines()                             # a definition term too
    assert "Return True if s is a Python keyword." in text


def test_one_page_keeps_its_whole_title(tmp_path):
    """With a single page nothing tells the site's text from the page's, so the title stays."""
    import shutil

    shutil.copy(SPHINX / "keyword.html", tmp_path / "keyword.html")
    assert _read(tmp_path).docs[0].title == "keyword — Testing for Python keywords — Python 3.11.2 documentation"


def test_site_title_affixes_need_a_separator_and_most_pages():
    from domain_embed.curate.html_text import site_title_affixes, strip_title_affixes

    titles = ["bisect — Array bisection — Python 3.11.2 documentation",
              "keyword — Testing for keywords — Python 3.11.2 documentation",
              "copy — Shallow and deep copy operations — Python 3.11.2 documentation",
              "Index — Python 3.11.2 documentation",
              "3.11.2 Documentation"]                        # the front page: the site name alone
    prefix, suffix = site_title_affixes(titles)
    assert (prefix, suffix) == ("", " — Python 3.11.2 documentation")
    assert [strip_title_affixes(t, prefix, suffix) for t in titles] == [
        "bisect — Array bisection", "keyword — Testing for keywords", "copy — Shallow and deep copy operations",
        "Index", "3.11.2 Documentation"]
    # shared words that are not cut off by a separator are the pages' own ("... Types")
    assert site_title_affixes(["8.5. Date/Time Types", "8.14. JSON Types"]) == ("", "")
    assert site_title_affixes(["MySite | Install", "MySite | Configure", "MySite | Upgrade"]) == ("MySite | ", "")


def test_permalinks_of_other_generators_are_dropped(tmp_path):
    """MkDocs (headerlink, &para;), Asciidoctor (empty class="anchor"), a bare same-page '#' mark."""
    from domain_embed.curate.html_text import html_to_internal

    html = """<html><body>
    <h2 id="install">Install<a class="headerlink" href="#install" title="Permanent link">&para;</a></h2>
    <h2 id="_usage"><a class="anchor" href="#_usage"></a>Usage</h2>
    <h3 id="x">Options <a href="#x">#</a></h3>
    <p>See <a href="#install">Install</a> and <a href="other.html">the other page</a> first.</p></body></html>"""
    text, _ = html_to_internal(html)
    assert text.splitlines()[0] == HEADING + "Install"
    assert HEADING + "Usage" in text and HEADING + "Options" in text.splitlines()
    assert "See Install and the other page first." in text     # ordinary links keep their text
    assert "¶" not in text and "#" not in text

"""Tests for knowledge.loaders: every format on a real small file, and every way loading fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kbot.errors import DocumentLoadError, UnsupportedFileError
from knowledge.document import LoadedDocument, Section
from knowledge.loaders import SUPPORTED_SUFFIXES, is_supported, load_document

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def paths(document: LoadedDocument) -> list[tuple[str, ...]]:
    return [section.heading_path for section in document.sections]


def text_under(document: LoadedDocument, *heading_path: str) -> str:
    return "\n\n".join(s.text for s in document.sections if s.heading_path == heading_path)


# --- Which files are supported ------------------------------------------------------------


def test_supported_suffixes_and_sphinx_sources() -> None:
    assert {".txt", ".md", ".rst", ".html", ".pdf", ".docx"} <= SUPPORTED_SUFFIXES
    assert is_supported(Path("guide.MD"))
    assert is_supported(Path("library/functions.rst.txt"))
    assert not is_supported(Path("photo.png"))
    assert not is_supported(Path("Makefile"))


def test_import_does_not_load_parsers() -> None:
    code = (
        "import sys, knowledge.loaders\n"
        "heavy = {'docutils', 'pypdf', 'docx', 'bs4', 'markdown_it'} & set(sys.modules)\n"
        "print(sorted(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- Plain text ---------------------------------------------------------------------------


def test_text_title_and_paragraphs(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", "Office hours\n\nOpen from nine\nto five.\n\n\nClosed on Sundays.\n")
    document = load_document(path)
    assert document.title == "Office hours"
    assert document.sections[0].heading_path == ()
    assert document.sections[0].text == "Office hours\n\nOpen from nine to five.\n\nClosed on Sundays."


def test_text_long_first_line_falls_back_to_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "minutes.text", "word " * 40)
    assert load_document(path).title == "minutes"


def test_text_utf16_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "memo.txt"
    path.write_bytes("備忘錄\n\n明天開會".encode("utf-16"))
    document = load_document(path)
    assert document.title == "備忘錄"
    assert "明天開會" in document.sections[0].text


# --- Markdown -----------------------------------------------------------------------------

MARKDOWN = """\
Intro before any heading.

# Employee Handbook

Welcome to the company.

## Benefits

### Health

- Dental is covered
- Vision is covered

| Plan | Cost |
|------|------|
| Basic | 0 |

## Tools

```python
def hello():

    return "hi"
```
"""


def test_markdown_title_and_heading_paths(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, "handbook.md", MARKDOWN))
    assert document.title == "Employee Handbook"
    assert paths(document) == [
        (),
        ("Employee Handbook",),
        ("Employee Handbook", "Benefits", "Health"),
        ("Employee Handbook", "Tools"),
    ]
    health = text_under(document, "Employee Handbook", "Benefits", "Health")
    assert health == "- Dental is covered\n\n- Vision is covered\n\nPlan | Cost\n\nBasic | 0"
    # Code keeps its line breaks, minus the blank line a paragraph may not hold.
    assert text_under(document, "Employee Handbook", "Tools") == 'def hello():\n    return "hi"'


def test_markdown_without_h1_uses_file_stem(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, "faq.markdown", "## Question\n\nAnswer.\n"))
    assert document.title == "faq"
    assert paths(document) == [("Question",)]


def test_markdown_front_matter_gives_title_and_no_text(tmp_path: Path) -> None:
    text = '---\ntitle: "Release Notes"\ntags: [a, b]\n---\n\n# Version 2\n\nFaster.\n'
    document = load_document(write(tmp_path, "notes.md", text))
    assert document.title == "Release Notes"
    assert document.sections == [Section(("Version 2",), "Faster.")]


LEAVE_POLICY = """\
# 請假規定

本規定適用於全體員工，
請假須事先於系統提出申請，
並經主管核准。

## 特別休假

到職滿六個月者，
給予三日特別休假。

## 病假

未住院者，一年內合計不得超過三十日。
"""


def test_traditional_chinese_markdown_keeps_characters(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, "leave.md", LEAVE_POLICY))
    assert document.title == "請假規定"
    assert paths(document) == [("請假規定",), ("請假規定", "特別休假"), ("請假規定", "病假")]
    # Hard-wrapped lines join without a space; every character survives in order.
    assert document.sections[0].text == "本規定適用於全體員工，請假須事先於系統提出申請，並經主管核准。"
    assert document.sections[1].text == "到職滿六個月者，給予三日特別休假。"
    assert document.sections[2].text == "未住院者，一年內合計不得超過三十日。"
    all_text = "".join(s.text for s in document.sections)
    assert " " not in all_text


def test_mixed_cjk_and_latin_wrap(tmp_path: Path) -> None:
    text = "# 說明\n\n請使用 VPN\n連線，再登入\nHR system 查詢。\n"
    document = load_document(write(tmp_path, "mixed.md", text))
    assert document.sections[0].text == "請使用 VPN 連線，再登入 HR system 查詢。"


# --- reStructuredText ---------------------------------------------------------------------

RST = """\
==============
Travel Policy
==============

Book early.

Flights
=======

Economy class for trips under six hours.

International
-------------

Bring your passport.
"""


def test_rst_title_and_heading_paths(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, "travel.rst", RST))
    assert document.title == "Travel Policy"
    assert paths(document) == [
        ("Travel Policy",),
        ("Travel Policy", "Flights"),
        ("Travel Policy", "Flights", "International"),
    ]
    assert text_under(document, "Travel Policy", "Flights", "International") == ("Bring your passport.")


SPHINX_RST = """\
:mod:`shutil` --- File operations
=================================

.. module:: shutil
   :synopsis: High-level file operations.

.. toctree::
   :maxdepth: 2

   other

.. index:: single: copying files

Use :func:`copyfile` or :class:`the copier <shutil.Copier>` and
:meth:`~shutil.Copier.run`; see :ref:`copy-notes`.

.. function:: copyfile(src, dst, *, follow_symlinks=True)
   :noindex:

   Copy the contents of *src* to *dst*.

   .. versionadded:: 3.3
      The *follow_symlinks* parameter.

   .. note::

      Special files are not copied.

.. class:: Copier(path)

   .. method:: run()

      Run the copy.

.. code-block:: python

   shutil.copyfile("a", "b")

.. seealso:: Module :mod:`os`

.. c:function:: int PyCopy(PyObject *o)

   A C function.
"""


def test_sphinx_rst_keeps_signatures_without_warnings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    document = load_document(write(tmp_path, "shutil.rst.txt", SPHINX_RST))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert document.title == "shutil --- File operations"
    assert paths(document) == [("shutil --- File operations",)]
    text = document.sections[0].text
    assert "Use copyfile or the copier and run; see copy-notes." in text
    assert "copyfile(src, dst, *, follow_symlinks=True)" in text
    assert "Copy the contents of src to dst." in text
    assert "New in version 3.3: The follow_symlinks parameter." in text
    assert "Note: Special files are not copied." in text
    assert "Copier(path)\n\nrun()\n\nRun the copy." in text
    assert 'shutil.copyfile("a", "b")' in text
    assert "See also: Module os" in text
    assert "int PyCopy(PyObject *o)" in text
    # Directives with no prose leave nothing behind.
    for dropped in ("maxdepth", "other", "single:", "synopsis", "High-level"):
        assert dropped not in text


def test_sphinx_directives_do_not_leak_into_docutils(tmp_path: Path) -> None:
    from docutils.core import publish_doctree
    from docutils.parsers.rst import directives

    load_document(write(tmp_path, "api.rst", SPHINX_RST))
    assert "function" not in directives._directives
    # docutils' own ".. class::" still sets a class attribute on the next element.
    tree = publish_doctree(".. class:: special\n\nText.\n", settings_overrides={"report_level": 5})
    assert tree.children[0]["classes"] == ["special"]


def test_rst_never_reads_other_files_or_raw_markup(tmp_path: Path) -> None:
    write(tmp_path, "secret.txt", "TOP-SECRET-VALUE")
    source = (
        "Page\n====\n\nVisible.\n\n.. include:: secret.txt\n\n"
        ".. raw:: html\n\n   <script>RAW-HTML</script>\n\n"
        ".. csv-table::\n   :file: secret.txt\n"
    )
    document = load_document(write(tmp_path, "page.rst", source))
    text = " ".join(s.text for s in document.sections)
    assert "Visible." in text
    assert "TOP-SECRET-VALUE" not in text
    assert "RAW-HTML" not in text


@pytest.mark.skipif(not PYTHON_DOCS.is_dir(), reason="Python 3.11 docs sources not installed")
def test_python_docs_functions_page() -> None:
    document = load_document(PYTHON_DOCS / "library" / "functions.rst.txt")
    assert document.title == "Built-in Functions"
    assert ("Built-in Functions",) in paths(document)
    text = text_under(document, "Built-in Functions")
    assert "abs(x)\n\nReturn the absolute value of a number." in text


# --- HTML ---------------------------------------------------------------------------------

HTML = """\
<!DOCTYPE html>
<html><head><title>IT Help</title><style>body { color: red }</style></head>
<body>
<header><a href="/">Home</a> | <a href="/it">IT</a></header>
<nav><ul><li>Menu item</li></ul></nav>
<main>
  <h1>IT <b>Help</b></h1>
  <p>Call the
     help desk.</p>
  <h2>Passwords</h2>
  <p>Change it every<br>90 days.</p>
  <h3>Reset</h3>
  <ul><li>Open the portal</li><li>Click <i>reset</i></li></ul>
  <h2>Hardware</h2>
  <table><tr><th>Item</th><th>Owner</th></tr><tr><td>Laptop</td><td>IT</td></tr></table>
  <pre>ping  host
  traceroute host</pre>
</main>
<script>alert("no")</script>
<footer>Copyright</footer>
</body></html>
"""


def test_html_title_heading_paths_and_skipped_parts(tmp_path: Path) -> None:
    document = load_document(write(tmp_path, "help.html", HTML))
    assert document.title == "IT Help"
    assert paths(document) == [
        ("IT Help",),
        ("IT Help", "Passwords"),
        ("IT Help", "Passwords", "Reset"),
        ("IT Help", "Hardware"),
    ]
    assert text_under(document, "IT Help") == "Call the help desk."
    assert text_under(document, "IT Help", "Passwords") == "Change it every 90 days."
    reset = text_under(document, "IT Help", "Passwords", "Reset")
    assert reset == "- Open the portal\n\n- Click reset"
    hardware = text_under(document, "IT Help", "Hardware")
    assert hardware == "Item | Owner\n\nLaptop | IT\n\nping  host\n  traceroute host"
    everything = " ".join(s.text for s in document.sections)
    for skipped in ("Home", "Menu item", "alert", "color", "Copyright"):
        assert skipped not in everything


def test_html_title_falls_back_to_h1_and_reads_declared_charset(tmp_path: Path) -> None:
    html = '<html><head><meta charset="big5"></head><body><h1>公告</h1><p>停電通知</p></body></html>'
    path = tmp_path / "notice.htm"
    path.write_bytes(html.encode("big5"))
    document = load_document(path)
    assert document.title == "公告"
    assert document.sections[0].text == "停電通知"


# --- PDF ----------------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[list[str]], title: str | None = None) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    if title:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for page_lines in pages:
        pdf.add_page()
        for line in page_lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def test_pdf_metadata_title_and_page_sections(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    make_pdf(path, [["Quarterly report", "Sales grew."], ["Costs fell."]], title="Q3 Report")
    document = load_document(path)
    assert document.title == "Q3 Report"
    assert paths(document) == [("Page 1",), ("Page 2",)]
    assert "Sales grew." in document.sections[0].text
    assert "Costs fell." in document.sections[1].text


def test_pdf_title_falls_back_to_first_line(tmp_path: Path) -> None:
    path = tmp_path / "memo.pdf"
    make_pdf(path, [["Parking memo", "Use level B2."]])
    assert load_document(path).title == "Parking memo"


def test_pdf_outline_gives_heading_paths(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for chapter in ("Setup", "Usage"):
        pdf.add_page()
        pdf.start_section(chapter)
        pdf.cell(text=f"About {chapter.lower()}.")
    path = tmp_path / "manual.pdf"
    pdf.output(str(path))
    document = load_document(path)
    assert paths(document) == [("Setup", "Page 1"), ("Usage", "Page 2")]


@pytest.mark.parametrize("name", ["broken.pdf", "broken.docx"])
def test_corrupt_file_raises_document_load_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(2048))
    with pytest.raises(DocumentLoadError) as info:
        load_document(path, source=name)
    assert info.value.source == name
    assert str(info.value).startswith(f"{name}: not a readable")
    assert info.value.__cause__ is not None


# --- DOCX ---------------------------------------------------------------------------------


def make_docx(path: Path, title: str | None = None) -> None:
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    document.add_paragraph("Preface text.")
    document.add_heading("Onboarding", level=1)
    document.add_paragraph("Day one.")
    document.add_heading("Accounts", level=2)
    document.add_paragraph("Get a badge", style="List Bullet")
    table = document.add_table(rows=2, cols=2)
    for row, cells in zip(table.rows, [("System", "Owner"), ("Mail", "IT")], strict=True):
        for cell, text in zip(row.cells, cells, strict=True):
            cell.text = text
    document.add_heading("Offboarding", level=1)
    document.add_paragraph("Return the laptop.")
    document.save(str(path))


def test_docx_core_title_heading_paths_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "hr.docx"
    make_docx(path, title="HR Guide")
    document = load_document(path)
    assert document.title == "HR Guide"
    assert paths(document) == [
        (),
        ("Onboarding",),
        ("Onboarding", "Accounts"),
        ("Offboarding",),
    ]
    accounts = text_under(document, "Onboarding", "Accounts")
    assert accounts == "- Get a badge\n\nSystem | Owner\n\nMail | IT"


def test_docx_title_falls_back_to_first_heading(tmp_path: Path) -> None:
    path = tmp_path / "untitled.docx"
    make_docx(path)
    assert load_document(path).title == "Onboarding"


# --- Failures -----------------------------------------------------------------------------


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(UnsupportedFileError) as info:
        load_document(path)
    assert ".png" in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads files whatever their mode, so test the other unreadable cases instead.
        with pytest.raises(DocumentLoadError, match="does not exist"):
            load_document(tmp_path / "missing.md")
        directory = tmp_path / "folder.md"
        directory.mkdir()
        with pytest.raises(DocumentLoadError, match="directory"):
            load_document(directory)
        return
    path = write(tmp_path, "secret.md", "# Secret\n")
    path.chmod(0)
    try:
        with pytest.raises(DocumentLoadError, match="permission denied"):
            load_document(path)
    finally:
        path.chmod(0o600)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.txt"
    os.mkfifo(pipe)
    with pytest.raises(DocumentLoadError, match="not a regular file"):
        load_document(pipe)


@pytest.mark.parametrize("name", ["empty.txt", "empty.md", "empty.rst", "empty.html"])
def test_empty_file_has_no_text(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, "")
    with pytest.raises(DocumentLoadError, match="no text"):
        load_document(path)


def test_markup_without_text_has_no_text(tmp_path: Path) -> None:
    path = write(tmp_path, "index.rst", ".. toctree::\n\n   intro\n   usage\n")
    with pytest.raises(DocumentLoadError, match="no text"):
        load_document(path)

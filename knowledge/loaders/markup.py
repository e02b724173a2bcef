"""Loaders for text formats: plain text, Markdown, reStructuredText and HTML.

Each loader takes the file's bytes and returns a :class:`LoadedDocument`; parser libraries are
imported inside the loader that needs them so importing this module stays cheap.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from knowledge.document import LoadedDocument, Section
from knowledge.loaders._text import SectionBuilder, decode_text, first_line, normalise, paragraphs, stem

if TYPE_CHECKING:
    from bs4.element import Tag
    from markdown_it.token import Token


def load_text(data: bytes, path: Path, source: str) -> LoadedDocument:
    """Plain text: one section, paragraphs split at blank lines."""
    text = decode_text(data, source)
    found = paragraphs(text)
    sections = [Section((), "\n\n".join(found))] if found else []
    return LoadedDocument(first_line(text) or stem(path), sections)


# --- Markdown -----------------------------------------------------------------------------


def _md_inline(children: list[Token] | None) -> str:
    parts: list[str] = []
    for token in children or []:
        if token.type in ("text", "code_inline"):
            parts.append(token.content)
        elif token.type in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif token.type == "image":  # its children hold the alt text
            parts.append(_md_inline(token.children))
    return "".join(parts)


# YAML front matter (Jekyll, Hugo, MkDocs): CommonMark would read it as a rule and a heading.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)


def _split_front_matter(text: str) -> tuple[str, str]:
    """The front matter's title (or "") and the Markdown after the front matter."""
    front_matter = _FRONT_MATTER.match(text)
    if not front_matter:
        return "", text
    found = _FRONT_MATTER_TITLE.search(front_matter.group(1))
    title = normalise(found.group(1).strip("'\"")) if found else ""
    return title, text[front_matter.end() :]


def load_markdown(data: bytes, path: Path, source: str) -> LoadedDocument:
    """Markdown: sections at headings; lists, tables and code blocks become paragraphs."""
    from markdown_it import MarkdownIt

    title, text = _split_front_matter(decode_text(data, source))
    # With html on, raw HTML becomes html_* tokens we can skip instead of literal tag text.
    parser = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    builder = SectionBuilder()
    heading_level = 0
    cells: list[str] | None = None
    for token in parser.parse(text):
        kind = token.type
        if kind == "heading_open":
            heading_level = int(token.tag[1:])
        elif kind == "heading_close":
            heading_level = 0
        elif kind == "inline":
            content = _md_inline(token.children)
            if heading_level:
                builder.heading(heading_level, content)
                if heading_level == 1 and not title:
                    title = normalise(content)
            elif cells is not None:
                cells.append(normalise(content))
            else:
                builder.paragraph(content)
        elif kind in ("fence", "code_block"):
            builder.code(token.content)
        elif kind == "tr_open":
            cells = []
        elif kind == "tr_close" and cells is not None:
            builder.paragraph(" | ".join(cell for cell in cells if cell))
            cells = None
        elif kind == "list_item_open":
            builder.prefix = f"{token.info}{token.markup} " if token.info else "- "
    return LoadedDocument(title or stem(path), builder.sections())


# --- reStructuredText ---------------------------------------------------------------------


def load_rst(data: bytes, path: Path, source: str) -> LoadedDocument:
    """reStructuredText, Sphinx markup included: sections follow the document's sections."""
    from knowledge.loaders._rst import read_rst

    return read_rst(decode_text(data, source), path)


# --- HTML ---------------------------------------------------------------------------------

_HTML_SKIPPED = {"script", "style", "nav", "noscript", "template", "svg", "head", "iframe"}
_HTML_BLOCKS = {
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details",
    "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header",
    "hgroup", "hr", "html", "legend", "main", "ol", "p", "section", "summary", "table", "tbody",
    "tfoot", "thead", "ul",
}  # fmt: skip
_HTML_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


def load_html(data: bytes, path: Path, source: str) -> LoadedDocument:
    """HTML: sections at h1-h6; scripts, styles, navigation and page headers/footers skipped."""
    from bs4 import BeautifulSoup
    from bs4.dammit import EncodingDetector

    declared = EncodingDetector.find_declared_encoding(data, is_html=True)
    soup = BeautifulSoup(decode_text(data, source, declared), "lxml")
    walker = _HtmlWalker()
    walker.walk(soup)
    title_tag = soup.find("title") or soup.find("h1")
    title = normalise(title_tag.get_text()) if title_tag is not None else ""
    return LoadedDocument(title or stem(path), walker.builder.sections())


class _HtmlWalker:
    """Feeds an HTML tree to a SectionBuilder, gathering inline text into paragraphs."""

    def __init__(self) -> None:
        self.builder = SectionBuilder()
        self.buffer: list[str] = []

    def flush(self) -> None:
        self.builder.paragraph("".join(self.buffer))
        self.buffer = []

    def walk(self, element: Tag) -> None:
        from bs4.element import NavigableString, Tag

        for child in element.children:
            if type(child) is NavigableString:  # subclasses are comments, doctypes, CDATA...
                self.buffer.append(str(child))
            if not isinstance(child, Tag) or self._skipped(child):
                continue
            name = child.name
            if name in _HTML_HEADINGS:
                self.flush()
                self.builder.heading(int(name[1]), _html_inline(child))
            elif name == "pre":
                self.flush()
                self.builder.code(child.get_text())
            elif name == "br":
                self.buffer.append("\n")
            elif name == "tr":
                self.flush()
                cells = (
                    normalise(_html_inline(cell)) for cell in child.find_all(["td", "th"], recursive=False)
                )
                self.builder.paragraph(" | ".join(cell for cell in cells if cell))
            elif name == "li":
                self.flush()
                self.builder.prefix = "- "
                self.walk(child)
                self.flush()
            elif name in _HTML_BLOCKS:
                self.flush()
                self.walk(child)
                self.flush()
            else:
                self.walk(child)

    @staticmethod
    def _skipped(tag: Tag) -> bool:
        if tag.name in _HTML_SKIPPED:
            return True
        # A page's own header and footer are banners and links; an article's header holds
        # its heading, so only those outside article, section and main are skipped.
        if tag.name in ("header", "footer"):
            return tag.find_parent(["article", "section", "main"]) is None
        return False


def _html_inline(element: Tag) -> str:
    from bs4.element import NavigableString, Tag

    parts: list[str] = []
    for node in element.descendants:
        if type(node) is NavigableString:
            parts.append(str(node))
        elif isinstance(node, Tag) and node.name == "br":
            parts.append("\n")
    return "".join(parts)

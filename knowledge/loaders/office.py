"""Loaders for office formats: PDF (pypdf) and Word DOCX (python-docx).

Parser libraries are imported inside the loader that needs them so importing this module stays
cheap.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kbot.errors import DocumentLoadError
from knowledge.document import LoadedDocument, Section
from knowledge.loaders._text import SectionBuilder, first_line, normalise, paragraphs, stem

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph
    from pypdf import PdfReader

# --- PDF ----------------------------------------------------------------------------------


def load_pdf(data: bytes, path: Path, source: str) -> LoadedDocument:
    """PDF: one section per page, under the page's outline (bookmark) path when there is one."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    reader = PdfReader(io.BytesIO(data))
    # Many PDFs are encrypted with an empty password only to restrict printing or copying.
    if reader.is_encrypted and not reader.decrypt(""):
        raise DocumentLoadError(source, "the PDF is password-protected")
    try:
        outline = _outline_starts(reader, reader.outline, ())
    except (PyPdfError, KeyError, ValueError, TypeError):
        outline = []  # the outline only refines headings; a broken one must not lose the text
    outline.sort(key=lambda entry: entry[0])

    sections: list[Section] = []
    first_text = ""
    for index, page in enumerate(reader.pages):
        text = page.extract_text() or ""
        found = paragraphs(text)
        if not found:
            continue
        first_text = first_text or text
        chapter = next((p for start, p in reversed(outline) if start <= index), ())
        sections.append(Section((*chapter, f"Page {index + 1}"), "\n\n".join(found)))

    metadata_title = reader.metadata.title if reader.metadata is not None else None
    title = normalise(metadata_title or "") or first_line(first_text) or stem(path)
    return LoadedDocument(title, sections)


def _outline_starts(
    reader: PdfReader, items: Sequence[object], parents: tuple[str, ...]
) -> list[tuple[int, tuple[str, ...]]]:
    """(first page index, heading path) for every outline item; nested lists are children."""
    from pypdf.generic import Destination

    starts: list[tuple[int, tuple[str, ...]]] = []
    previous = parents
    for item in items:
        if isinstance(item, list):
            starts.extend(_outline_starts(reader, item, previous))  # children of the last item
        elif isinstance(item, Destination):
            previous = (*parents, normalise(str(item.title or "")))
            page = reader.get_destination_page_number(item)
            if page is not None and page >= 0:
                starts.append((page, previous))
    return starts


# --- DOCX ---------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"heading\s*(\d)$", re.IGNORECASE)


def load_docx(data: bytes, path: Path, source: str) -> LoadedDocument:
    """DOCX: sections at Heading 1..9 paragraphs; tables become one paragraph per row."""
    import docx
    from docx.table import Table

    document = docx.Document(io.BytesIO(data))
    builder = SectionBuilder()
    first_heading = ""
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            _add_table(builder, block)
            continue
        level = _heading_level(block)
        style_name = block.style.name if block.style is not None else ""
        if level is not None:
            builder.heading(level, block.text)
            first_heading = first_heading or normalise(block.text)
        else:
            if style_name and style_name.startswith("List"):
                builder.prefix = "- "
            builder.paragraph(block.text)
    title = normalise(document.core_properties.title or "") or first_heading or stem(path)
    return LoadedDocument(title, builder.sections())


def _heading_level(paragraph: Paragraph) -> int | None:
    """0 for the Title style, N for Heading N, None for body text."""
    name = paragraph.style.name if paragraph.style is not None else None
    if not name:
        return None
    if name.lower() == "title":
        return 0
    match = _HEADING_STYLE.match(name)
    return int(match.group(1)) if match else None


def _add_table(builder: SectionBuilder, table: Table) -> None:
    for row in table.rows:
        seen: set[int] = set()
        cells: list[str] = []
        for cell in row.cells:
            # A merged cell is repeated for every grid column it spans; keep it once.
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            text = normalise(cell.text)
            if text:
                cells.append(text)
        builder.paragraph(" | ".join(cells))

"""Loaders for office formats: PDF (pypdf) and Word DOCX (python-docx).

Parser libraries are imported inside the loader that needs them so importing this module stays
cheap.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from kbot.errors import DocumentLoadError
from knowledge.document import LoadedDocument, Section
from knowledge.loaders._text import SectionBuilder, first_line, normalise, paragraphs, stem

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
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
# A DOCX is a zip: one that unpacks to more than this, and to more than _MAX_RATIO times its own
# size, is a zip bomb (python-docx would inflate every part in memory). Big real documents are
# big files: their images barely compress.
_MAX_UNPACKED = 64 * 1024**2
_MAX_RATIO = 20


def load_docx(data: bytes, path: Path, source: str) -> LoadedDocument:
    """DOCX: sections at Heading 1..9 paragraphs; tables become one paragraph per row."""
    import docx
    from docx.table import Table

    _check_unpacked_size(data, source)
    document = docx.Document(io.BytesIO(data))
    style_name = _paragraph_style_names(document)
    builder = SectionBuilder()
    first_heading = ""
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            _add_table(builder, block)
            continue
        name = style_name(block)
        level = _heading_level(name)
        if level is not None:
            builder.heading(level, block.text)
            first_heading = first_heading or normalise(block.text)
        else:
            if name.startswith("List"):
                builder.prefix = "- "
            builder.paragraph(block.text)
    title = normalise(document.core_properties.title or "") or first_heading or stem(path)
    return LoadedDocument(title, builder.sections())


def _check_unpacked_size(data: bytes, source: str) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        # zipfile never inflates a member past the size its header declares.
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > _MAX_UNPACKED and unpacked > _MAX_RATIO * len(data):
        raise DocumentLoadError(
            source,
            f"it unpacks to {unpacked // 1024**2} MB from {len(data) // 1024} KB, as only a zip bomb does",
        )


def _paragraph_style_names(document: DocxDocument) -> Callable[[Paragraph], str]:
    """The style name of a paragraph, as ``Paragraph.style.name`` gives it, from one read of the styles.

    python-docx looks a paragraph's style up anew each time, scanning every style (~4 ms), and a
    style id with a quote in it breaks its lookup.
    """
    from docx.enum.style import WD_STYLE_TYPE

    names: dict[str, str] = {}
    for style in document.styles:
        if style.type == WD_STYLE_TYPE.PARAGRAPH and style.style_id:
            names.setdefault(style.style_id, style.name or "")
    default = document.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    default_name = (default.name or "") if default is not None else ""
    return lambda paragraph: names.get(paragraph._p.style or "", default_name)


def _heading_level(style_name: str) -> int | None:
    """0 for the Title style, N for Heading N, None for body text."""
    if style_name.lower() == "title":
        return 0
    match = _HEADING_STYLE.match(style_name)
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

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
# A DOCX is a zip. Real ones unpack to a few times their size (Word's XML compresses ~10x,
# images not at all); much more is a zip bomb, and python-docx inflates every part in memory
# (a 165 KB file whose XML was 56 MB took over 4 minutes and 3.5 GB). Refused at any size:
# - unpacking to over MAX_UNPACK_RATIO times the file (once that is over 1 MB: a tiny file's
#   ratio means nothing);
# - parts that each compress over MAX_UNPACK_RATIO times and add up to over 4 MB (a bomb part
#   beside incompressible padding keeps its own ratio);
# - unpacking to over 64 MB at over 20 times (big real documents are big files: their images
#   barely compress).
MAX_UNPACK_RATIO = 100
_RATIO_FLOOR = 1024**2
_MAX_DENSE_PARTS = 4 * 1024**2
_MAX_UNPACKED = 64 * 1024**2
_BIG_RATIO = 20
# Paragraphs and table rows walked at most: each costs python-docx ~10 µs even when empty, and a
# document of millions of empty paragraphs compresses like any other.
MAX_BLOCKS = 200_000


def load_docx(data: bytes, path: Path, source: str) -> LoadedDocument:
    """DOCX: sections at Heading 1..9 paragraphs; tables become one paragraph per row."""
    import docx
    from docx.table import Table

    _check_unpacked_size(data, source)
    document = docx.Document(io.BytesIO(data))
    style_name = _paragraph_style_names(document)
    builder = SectionBuilder()
    first_heading = ""
    blocks = 0
    for block in document.iter_inner_content():
        blocks += len(block.rows) if isinstance(block, Table) else 1
        if blocks > MAX_BLOCKS:
            raise DocumentLoadError(
                source, f"it has over {MAX_BLOCKS:,} paragraphs and table rows, more than kbot reads per file"
            )
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
        parts = [(info.file_size, info.compress_size) for info in archive.infolist()]
    unpacked = sum(size for size, _ in parts)
    dense = sum(size for size, packed in parts if size > MAX_UNPACK_RATIO * max(packed, 1))
    ratio = unpacked / max(len(data), 1)
    if (unpacked > _RATIO_FLOOR and ratio > MAX_UNPACK_RATIO) or (
        unpacked > _MAX_UNPACKED and ratio > _BIG_RATIO
    ):
        detail = (
            f"it unpacks to {unpacked / 1024**2:,.1f} MB from {len(data) / 1024:,.0f} KB ({ratio:,.0f} times)"
        )
    elif dense > _MAX_DENSE_PARTS:
        detail = f"{dense / 1024**2:,.1f} MB of its parts unpack to over {MAX_UNPACK_RATIO} times their size"
    else:
        return
    raise DocumentLoadError(source, f"{detail}, as only a zip bomb does")


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

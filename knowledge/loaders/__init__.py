"""Turn a file into a :class:`~knowledge.document.LoadedDocument`, whatever its type.

Supported: plain text, Markdown, reStructuredText (Sphinx sources included), HTML, PDF and DOCX.
Parser libraries load on first use, so importing this package is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kbot.errors import DocumentError, DocumentLoadError, NoTextError, UnsupportedFileError
from knowledge.document import LoadedDocument
from knowledge.loaders import markup, office
from knowledge.loaders._files import SYSTEM_REASON, is_system_path, open_document, read_document

__all__ = [
    "SUPPORTED_SUFFIXES",
    "SYSTEM_REASON",
    "is_supported",
    "is_system_path",
    "load_document",
    "open_document",
    "read_document",
]

_Loader = Callable[[bytes, Path, str], LoadedDocument]

_LOADERS: dict[str, tuple[str, _Loader]] = {
    ".txt": ("text", markup.load_text),
    ".text": ("text", markup.load_text),
    ".md": ("Markdown", markup.load_markdown),
    ".markdown": ("Markdown", markup.load_markdown),
    ".rst": ("reStructuredText", markup.load_rst),
    ".rest": ("reStructuredText", markup.load_rst),
    ".html": ("HTML", markup.load_html),
    ".htm": ("HTML", markup.load_html),
    ".pdf": ("PDF", office.load_pdf),
    ".docx": ("DOCX", office.load_docx),
}

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(_LOADERS)


def _loader_for(path: Path) -> tuple[str, _Loader] | None:
    # Sphinx ships its sources as "name.rst.txt": they are reStructuredText, not plain text.
    if path.name.lower().endswith(".rst.txt"):
        return _LOADERS[".rst"]
    return _LOADERS.get(path.suffix.lower())


def is_supported(path: Path) -> bool:
    """Whether :func:`load_document` has a loader for this file's type."""
    return _loader_for(path) is not None


def load_document(path: Path, source: str | None = None, data: bytes | None = None) -> LoadedDocument:
    """Load one file; ``source`` names it in error messages (default: the path).

    ``data`` is the file's content when the caller has already read it: ingestion hashes the
    bytes first and must index exactly the bytes it hashed. Then ``path`` only names the file
    (its suffix picks the loader, its stem is the fallback title) and nothing is opened.

    Raises :class:`UnsupportedFileError` for a file type without a loader and
    :class:`DocumentLoadError` for a file that cannot be read, is corrupt, or holds no text.
    """
    source = str(path) if source is None else source
    found = _loader_for(path)
    if found is None:
        suffixes = ", ".join(sorted(SUPPORTED_SUFFIXES))
        raise UnsupportedFileError(
            source, f"no loader for {path.suffix or 'files without a suffix'}; supported: {suffixes}"
        )
    kind, loader = found
    if data is None:
        data = _read(path, source)
    try:
        document = loader(data, path, source)
    except DocumentError:
        raise
    except Exception as exc:  # parsers fail in any way on malformed input (a bad PDF raises anything)
        detail = str(exc) or type(exc).__name__
        raise DocumentLoadError(source, f"not a readable {kind} file ({detail})") from exc
    if document.is_empty:
        raise NoTextError(source, "no text found: the file is empty or holds only images or markup")
    return document


def _read(path: Path, source: str) -> bytes:
    # Named by the caller, so a link is followed, but to where it resolves now: that path is
    # the one checked (never /proc, /sys or /dev) and opened.
    return read_document(Path(os.path.realpath(path)), source)

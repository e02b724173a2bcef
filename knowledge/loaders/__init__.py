"""Turn a file into a :class:`~knowledge.document.LoadedDocument`, whatever its type.

Supported: plain text, Markdown, reStructuredText (Sphinx sources included), HTML, PDF and DOCX.
Parser libraries load on first use, so importing this package is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kbot.errors import DocumentError, DocumentLoadError, UnsupportedFileError
from knowledge.document import LoadedDocument
from knowledge.loaders import markup, office

__all__ = ["SUPPORTED_SUFFIXES", "is_supported", "load_document"]

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
    bytes first and must index exactly the bytes it hashed.

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
        raise DocumentLoadError(source, "no text found: the file is empty or holds only images or markup")
    return document


def _read(path: Path, source: str) -> bytes:
    if path.is_dir():
        raise DocumentLoadError(source, "this is a directory, not a file")
    if path.exists() and not path.is_file():
        # Reading a named pipe would block forever; devices and sockets hold no document.
        raise DocumentLoadError(source, "not a regular file")
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DocumentLoadError(source, "the file does not exist") from exc
    except PermissionError as exc:
        raise DocumentLoadError(source, "permission denied: kbot may not read this file") from exc
    except OSError as exc:
        raise DocumentLoadError(source, f"the file cannot be read: {exc.strerror or exc}") from exc

"""Text helpers shared by the loaders: decoding, whitespace normalisation, section building."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from kbot.errors import DocumentLoadError
from knowledge.document import Section

# Scripts written without spaces between words: a line break between two of these characters
# is only a hard wrap, so joining them must not insert a space. Hangul is left out on purpose:
# Korean separates words with spaces.
_CJK = re.compile(
    "[\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3190-\u31ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef\U00020000-\U0003134f]"
)
# Whitespace except the ideographic space U+3000, which CJK text uses as a real character.
_SPACES = re.compile(r"[^\S\u3000]+")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def _join_whitespace(match: re.Match[str]) -> str:
    text, start, end = match.string, match.start(), match.end()
    wraps_cjk = (
        "\n" in match.group()
        and start > 0
        and end < len(text)
        and _CJK.match(text, start - 1)
        and _CJK.match(text, end)
    )
    return "" if wraps_cjk else " "


def normalise(text: str) -> str:
    """Collapse a paragraph's whitespace to single spaces; hard wraps inside CJK text vanish."""
    return _SPACES.sub(_join_whitespace, text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def code_text(text: str) -> str:
    """Keep a code block's lines but drop blank ones: a paragraph never holds a blank line."""
    lines = (line.rstrip() for line in text.replace("\r\n", "\n").split("\n"))
    return "\n".join(line for line in lines if line.strip())


def paragraphs(text: str) -> list[str]:
    """Split plain text at blank lines into normalised, non-empty paragraphs."""
    parts = (normalise(part) for part in _BLANK_LINE.split(text.replace("\r\n", "\n")))
    return [part for part in parts if part]


def first_line(text: str, limit: int = 120) -> str:
    """The first non-empty line if it is short enough to be a title, else ""."""
    for raw in text.splitlines():
        line = normalise(raw)
        if line:
            return line if len(line) < limit else ""
    return ""


def stem(path: Path) -> str:
    """The file name without its suffix; ``functions.rst.txt`` gives ``functions``."""
    name = path.name
    if name.lower().endswith(".rst.txt"):
        return name[: -len(".rst.txt")]
    return path.stem


def _decode(data: bytes, source: str, declared: str | None = None) -> str:
    """BOM, then UTF-8, then a declared or detected charset."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        # NUL bytes in valid UTF-8 mean UTF-16 without a BOM or a binary file.
        if "\x00" not in text:
            return text
    if declared:
        try:
            return data.decode(declared)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        # charset-normalizer only looks at a few samples of the file, so this stays cheap.
        from charset_normalizer import from_bytes
    except ImportError:
        best = None
    else:
        best = from_bytes(data).best()
    if best is None:
        raise DocumentLoadError(source, "the file is not UTF-8 text and its encoding is unknown")
    return str(best)


def decode_text(data: bytes, source: str, declared: str | None = None) -> str:
    """Decode bytes expected to hold text: BOM, then UTF-8, then a declared or detected charset.

    ``declared`` is an encoding the file names itself (an HTML ``<meta charset>``). Text that
    decodes but is mostly control characters is a binary file with a text suffix: refused, so
    junk never reaches the index.
    """
    text = _decode(data, source, declared)
    sample = text[:4096]
    controls = sum(1 for ch in sample if ch < " " and ch not in "\t\n\r\f")
    if sample and controls / len(sample) > 0.05:
        raise DocumentLoadError(source, "the file looks binary, not text")
    return text


class SectionBuilder:
    """Collects headings and paragraphs in reading order and cuts them into sections."""

    def __init__(self) -> None:
        self._sections: list[Section] = []
        self._path: list[tuple[int, str]] = []
        self._paragraphs: list[str] = []
        # Marks the next paragraph, e.g. "- " for a list item or "Note: " for an admonition.
        self.prefix = ""

    def heading(self, level: int, text: str) -> None:
        """Start a section under ``text``, closing any open heading of the same or deeper level."""
        self._flush()
        text = normalise(text)
        if not text:
            return
        while self._path and self._path[-1][0] >= level:
            self._path.pop()
        self._path.append((level, text))

    def leave(self, level: int) -> None:
        """Close the headings at ``level`` and deeper (the end of a nested section)."""
        self._flush()
        while self._path and self._path[-1][0] >= level:
            self._path.pop()

    def paragraph(self, text: str) -> None:
        self._add(normalise(text))

    def code(self, text: str) -> None:
        self._add(code_text(text))

    def _add(self, text: str) -> None:
        if text:
            self._paragraphs.append(self.prefix + text)
            self.prefix = ""

    def _flush(self) -> None:
        if self._paragraphs:
            path = tuple(text for _, text in self._path)
            self._sections.append(Section(path, "\n\n".join(self._paragraphs)))
            self._paragraphs = []

    def sections(self) -> list[Section]:
        self._flush()
        return self._sections

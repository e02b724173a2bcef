"""What a loader produces: a document as a title and a list of sections.

Loaders turn a file of any supported type into this one shape; the chunker only ever sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path.

    ``heading_path`` is the chain of headings above the text, outermost first, e.g.
    ``("Leave policy", "Sick leave")``; empty for text before the first heading.
    ``text`` holds paragraphs separated by a blank line (``"\\n\\n"``); a paragraph never
    contains a blank line itself.
    """

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class LoadedDocument:
    """A whole document: its title and its sections in reading order."""

    title: str
    sections: list[Section] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not any(s.text.strip() for s in self.sections)

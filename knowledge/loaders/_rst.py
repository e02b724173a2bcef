"""reStructuredText through docutils: a quiet, safe parse and the walk from tree to sections.

Imported lazily by :mod:`knowledge.loaders.markup`: it imports docutils.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from docutils import nodes, utils
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.transforms import references

from knowledge.document import LoadedDocument
from knowledge.loaders._sphinx import sphinx_directives, tolerant_inliner
from knowledge.loaders._text import SectionBuilder, normalise, stem

# Nodes that hold no text for a reader: markup plumbing, errors, link targets.
_SKIPPED = (
    nodes.comment,
    nodes.system_message,
    nodes.target,
    nodes.substitution_definition,
    nodes.pending,
    nodes.raw,
    nodes.transition,
    nodes.decoration,
    nodes.label,
)
_CODE = (nodes.literal_block, nodes.doctest_block, nodes.math_block, nodes.line_block)


@functools.cache
def _settings() -> Any:
    settings = get_default_settings(Parser)
    # Never print warnings, never stop on errors, never read other files or pass raw HTML.
    settings.report_level = 5
    settings.halt_level = 5
    settings.warning_stream = False
    settings.file_insertion_enabled = False
    settings.raw_enabled = False
    settings.syntax_highlight = "none"
    return settings


def parse_rst(text: str, source_path: str) -> nodes.document:
    """Parse reStructuredText into a docutils document tree, Sphinx markup included."""
    document = utils.new_document(source_path, copy.copy(_settings()))
    parser = Parser(inliner=tolerant_inliner())
    with sphinx_directives():
        parser.parse(text, document)
    # Only substitutions matter for text; the other transforms serve writers.
    document.transformer.add_transforms([references.Substitutions])
    document.transformer.apply_transforms()
    return document


def read_rst(text: str, path: Path) -> LoadedDocument:
    """Turn reStructuredText into a document whose sections follow its sections."""
    document = parse_rst(text, str(path))
    builder = SectionBuilder()
    _RstWalker(builder).walk(document, 0)
    section = document.next_node(nodes.section)
    title = ""
    if section is not None and section.children and isinstance(section[0], nodes.title):
        title = normalise(_inline_text(section[0]))
    return LoadedDocument(title or stem(path), builder.sections())


def _inline_text(node: Any) -> str:
    """The text of an inline run, without system messages and with footnote marks kept."""
    parts: list[str] = []
    for child in node.children:
        if isinstance(child, nodes.Text):
            parts.append(child.astext())
        elif isinstance(child, nodes.system_message | nodes.raw | nodes.target):
            continue
        elif isinstance(child, nodes.footnote_reference | nodes.citation_reference):
            # Auto-numbered references ("[#]_") stay empty without docutils' numbering transform.
            parts.append(f"[{child.astext()}]" if child.astext() else "")
        elif isinstance(child, nodes.image):
            parts.append(child.get("alt", ""))
        else:
            parts.append(_inline_text(child))
    return "".join(parts)


class _RstWalker:
    """Feeds a docutils tree to a SectionBuilder in reading order."""

    def __init__(self, builder: SectionBuilder) -> None:
        self.builder = builder

    def walk(self, node: Any, depth: int) -> None:
        for child in node.children:
            if isinstance(child, _SKIPPED):
                continue
            if isinstance(child, nodes.section):
                has_title = bool(child.children) and isinstance(child[0], nodes.title)
                self.builder.heading(depth + 1, _inline_text(child[0]) if has_title else "")
                self.walk(child, depth + 1)
                self.builder.leave(depth + 1)
            elif isinstance(child, nodes.title) and isinstance(node, nodes.section):
                continue  # already the heading
            elif isinstance(child, nodes.Element):
                self._element(child, depth)
            elif isinstance(child, nodes.Text):
                self.builder.paragraph(child.astext())

    def _element(self, element: Any, depth: int) -> None:
        builder = self.builder
        if isinstance(element, _CODE):
            builder.code(element.astext())
        elif isinstance(element, nodes.row):
            cells = (normalise(entry.astext()) for entry in element.children)
            builder.paragraph(" | ".join(cell for cell in cells if cell))
        elif isinstance(element, nodes.field | nodes.option_list_item):
            name, body = element.children[0], element.children[-1]
            builder.paragraph(f"{normalise(name.astext())}: {body.astext()}")
        elif isinstance(element, nodes.TextElement):
            builder.paragraph(_inline_text(element))
        else:
            builder.prefix = self._prefix(element) or builder.prefix
            self.walk(element, depth)

    def _prefix(self, element: Any) -> str:
        """What marks the first paragraph of a list item, footnote or admonition."""
        if isinstance(element, nodes.list_item):
            return "- "
        if isinstance(element, nodes.footnote | nodes.citation) and element.children:
            return f"[{element[0].astext()}] "
        if isinstance(element, nodes.Admonition) and not isinstance(element, nodes.admonition):
            return f"{element.tagname.capitalize()}: "  # note, warning, tip...
        return ""

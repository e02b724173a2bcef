"""Make docutils tolerate the roles and directives Sphinx adds to reStructuredText.

Plain docutils knows none of Sphinx's markup (``:func:``, ``.. function::``...) and turns it into
error messages, losing the text. Here unknown roles render their text as a literal, and the
Sphinx directives met in practice (the Python documentation uses all of these) either keep their
argument and body, keep their body as a literal block, or are dropped when they hold no prose.

Imported lazily by :mod:`knowledge.loaders._rst`: it imports docutils.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from docutils import nodes, utils
from docutils.parsers.rst import Directive, directives, roles, states

# Sphinx's explicit title syntax, ``title <target>``, matched on docutils' escaped text where a
# backslash-escaped "<" is preceded by a NUL.
_EXPLICIT_TITLE = re.compile(r"^(.+?)\s*(?<!\x00)<(.*?)>$", re.DOTALL)


def _role_title(text: str) -> str:
    """The text Sphinx would show for a cross-reference role."""
    match = _EXPLICIT_TITLE.match(text)
    if match:
        return str(utils.unescape(match.group(1)))
    title = str(utils.unescape(text)).lstrip("!")
    if title.startswith("~"):  # "~os.path.join" shows only "join"
        title = title[1:].rpartition(".")[2]
    return title


def tolerant_inliner() -> Any:
    """An inliner that renders any role docutils does not know as literal text."""
    # Wrapping one instance rather than subclassing: Inliner builds its regexes from
    # vars(type(self)), which a subclass would leave without the base class's patterns.
    inliner = states.Inliner()
    known_role = inliner.interpreted

    def interpreted(
        rawsource: str, text: str, role: str, lineno: int
    ) -> tuple[list[nodes.Node], list[nodes.system_message]]:
        role_fn, _ = roles.role(role, inliner.language, lineno, inliner.reporter)
        if role_fn is None:
            return [nodes.literal(rawsource, _role_title(text))], []
        return known_role(rawsource, text, role, lineno)  # type: ignore[no-any-return]

    inliner.interpreted = interpreted
    return inliner


class _AnyOptions(dict[str, Callable[[str | None], str]]):
    """An option spec accepting every option, so ``:noindex:`` and friends never fail."""

    def __missing__(self, key: str) -> Callable[[str | None], str]:
        return directives.unchanged  # type: ignore[no-any-return]


class _Drop(Directive):  # type: ignore[misc]
    """A directive whose body is not prose (toctree, index...): it produces nothing."""

    optional_arguments = 1
    final_argument_whitespace = True
    has_content = True
    # docutils only parses options when the spec is truthy, hence one named entry.
    option_spec = _AnyOptions(noindex=directives.unchanged)

    def run(self) -> list[nodes.Node]:
        return []


class _Literal(_Drop):
    """A code directive (code-block, doctest...): its body as a literal block."""

    def run(self) -> list[nodes.Node]:
        lines = list(self.content)
        if self.name == "productionlist" and self.arguments:  # the grammar is in the argument
            grammar = self.arguments[0].splitlines()
            if grammar and ":" not in grammar[0]:  # a production group name, not a rule
                grammar = grammar[1:]
            lines = [*grammar, *lines]
        text = "\n".join(lines)
        return [nodes.literal_block(text, text)] if text.strip() else []


class _Describe(_Drop):
    """An object description (function, class, option...): its signature, then its body."""

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        if self.arguments:
            # The signature stays raw: inline parsing would eat the "*" of "*args".
            container += nodes.paragraph(self.arguments[0], self.arguments[0])
        self.state.nested_parse(self.content, self.content_offset, container)
        return [container]


# Label templates of the note-like directives: each "{}" takes one argument, the last one the
# rest of the argument text (Sphinx lets "versionadded:: 3.2 Some text" carry text).
_LABELS = {
    "versionadded": "New in version {}: {}",
    "versionchanged": "Changed in version {}: {}",
    "deprecated": "Deprecated since version {}: {}",
    "deprecated-removed": "Deprecated since version {}, removed in version {}: {}",
    "availability": "Availability: {}",
    "audit-event": "Raises an auditing event {}",
    "impl-detail": "CPython implementation detail",
    "seealso": "See also: {}",
    "centered": "{}",
    "tab": "{}",
}


class _Labelled(_Drop):
    """A note-like directive (versionadded, seealso...): its label, then its body."""

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(self.content, self.content_offset, container)
        label = self._label(self.arguments[0] if self.arguments else "")
        if label:
            inline, _ = self.state.inline_text(label, self.lineno)
            first = container.children[0] if container.children else None
            if isinstance(first, nodes.paragraph):
                separator = " " if label.endswith((":", ".")) else ": "
                first[0:0] = [*inline, nodes.Text(separator)]
            else:
                container.insert(0, nodes.paragraph(label, "", *inline))
        return [container]

    def _label(self, argument: str) -> str:
        template = _LABELS.get(self.name.lower())
        if template is None:  # glossary, hlist...: the argument is no text
            return ""
        pieces = template.split("{}")
        parts = argument.split(None, len(pieces) - 2) if argument and len(pieces) > 1 else []
        if not parts:
            return pieces[0].strip()
        # Fill as many placeholders as there are arguments; the rest of the template goes.
        text = "".join(piece + part for piece, part in zip(pieces, parts, strict=False))
        if len(parts) == len(pieces) - 1:
            text += pieces[-1]
        return text.strip()


# The Sphinx directives met in the Python docs and common Sphinx projects, by how they are kept.
_DESCRIBED = (
    "function", "method", "classmethod", "staticmethod", "abstractmethod", "decorator",
    "decoratormethod", "coroutinefunction", "coroutinemethod", "awaitablefunction",
    "awaitablemethod", "class", "exception", "attribute", "data", "property", "type", "object",
    "opcode", "cmdoption", "option", "envvar", "describe", "pdbcommand", "confval", "event",
)  # fmt: skip
_C_DESCRIBED = ("function", "member", "macro", "type", "var", "struct", "union", "enum", "enumerator")
_LITERAL = ("code-block", "sourcecode", "testcode", "testoutput", "doctest", "productionlist")
_DROPPED = (
    "toctree", "index", "highlight", "highlightlang", "literalinclude", "only", "ifconfig",
    "tabularcolumns", "sectionauthor", "moduleauthor", "codeauthor", "module", "currentmodule",
    "py:module", "py:currentmodule", "program", "default-domain", "c:namespace", "testsetup",
    "testcleanup", "miscnews", "limited-api-list", "audit-event-table", "autosummary",
    "automodule", "autoclass", "autofunction", "automethod", "autoattribute", "autodata",
    "autoexception",
)  # fmt: skip


def _directive_table() -> dict[str, type[Directive]]:
    table: dict[str, type[Directive]] = {}
    for name in _DESCRIBED:
        table[name] = table[f"py:{name}"] = _Describe
    for name in _C_DESCRIBED:
        table[f"c:{name}"] = _Describe
    for name in (*_LABELS, "glossary", "hlist", "rst-class", "cssclass", "tabs"):
        table[name] = _Labelled
    for name in _LITERAL:
        table[name] = _Literal
    for name in _DROPPED:
        table[name] = _Drop
    return table


_DIRECTIVES = _directive_table()
_REGISTRY_LOCK = threading.Lock()


@contextmanager
def sphinx_directives() -> Iterator[None]:
    """Register the Sphinx directives for one parse, then restore docutils' registry.

    docutils looks directives up in a process-wide table; restoring it keeps Sphinx's
    meaning of ``.. class::`` from leaking into other docutils users.
    """
    registry: dict[str, Any] = directives._directives
    with _REGISTRY_LOCK:
        saved = {name: registry[name] for name in _DIRECTIVES if name in registry}
        registry.update(_DIRECTIVES)
        try:
            yield
        finally:
            for name in _DIRECTIVES:
                registry.pop(name, None)
            registry.update(saved)

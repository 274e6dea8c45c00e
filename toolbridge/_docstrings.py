"""What a function's docstring says about it, for a tool's schema.

A docstring in Google, NumPy or Sphinx style is parsed with griffe (the
style is detected); the result is its prose (without the parameter, return
and raise sections) and a description for each documented parameter.
Parsing never fails a tool: a docstring griffe cannot make sense of yields
its first paragraph and no parameter descriptions, as before griffe.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Literal, TypeAlias

if TYPE_CHECKING:
    import griffe

__all__ = ["ParsedDocstring", "parse_docstring"]

_Style: TypeAlias = Literal["google", "numpy", "sphinx"]

#: Tried in this order when griffe's own detection finds no style (griffe
#: older than the public ``auto`` style); the same order griffe uses, as
#: Google and NumPy section headers also turn up in plain prose.
_STYLES: tuple[_Style, ...] = ("sphinx", "google", "numpy")

#: Both kinds hold parameters: NumPy's "Other Parameters" and Google's
#: "Keyword Args" are ``other_parameters``.
_PARAMETER_KINDS = frozenset({"parameters", "other_parameters"})


@dataclass(frozen=True)
class ParsedDocstring:
    """A docstring's prose and its parameters' descriptions.

    ``summary`` is the first paragraph; ``description`` all the prose
    paragraphs (the summary included), each on one line, joined by blank
    lines.  ``parameters`` maps a documented parameter's name to its
    description; a parameter documented with no text is left out.
    """

    summary: str = ""
    description: str = ""
    parameters: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


#: Set while this module parses: the filter below drops griffe's log records
#: then (warnings about missing types, unknown parameters), which mean
#: nothing to whoever declared a tool.  A context variable, not a logger
#: level, so griffe's logging stays as it was for other users of griffe
#: (mkdocstrings) in other threads and tasks.
_parsing: contextvars.ContextVar[bool] = contextvars.ContextVar("toolbridge_parsing_docstring", default=False)


class _WhileParsing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _parsing.get()


@cache
def _griffe() -> ModuleType:
    # Imported on first use: griffe takes ~0.1 s to import, which commands
    # that never build a tool should not pay.
    import griffe

    # griffe logs through the standard logger named "griffe" (all its versions).
    logging.getLogger("griffe").addFilter(_WhileParsing())
    return griffe


@contextmanager
def _quiet() -> Iterator[None]:
    token = _parsing.set(True)
    try:
        yield
    finally:
        _parsing.reset(token)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _paragraphs(text: str) -> list[str]:
    return [p for p in (_one_line(chunk) for chunk in re.split(r"\n\s*\n", text)) if p]


def _first_paragraph(doc: str) -> str:
    parts = _paragraphs(inspect.cleandoc(doc))
    return parts[0] if parts else ""


def _parse(docstring: griffe.Docstring, style: _Style | griffe.Parser) -> list[griffe.DocstringSection]:
    try:
        # ``warnings=False`` stops griffe's warnings at their source in
        # recent versions; the log filter covers older ones.
        return docstring.parse(style, warnings=False)
    except TypeError:  # a griffe whose parsers take no such option
        return docstring.parse(style)


def _score(sections: list[griffe.DocstringSection]) -> tuple[int, int]:
    # Parameters found first (what a tool needs), then sections found.
    found = sum(len(s.value) for s in sections if s.kind.value in _PARAMETER_KINDS)
    return found, sum(s.kind.value != "text" for s in sections)


def _sections(docstring: griffe.Docstring) -> list[griffe.DocstringSection]:
    lib = _griffe()
    style: griffe.Parser | None = None
    infer = getattr(lib, "infer_docstring_style", None)
    if infer is not None:
        # Heuristics (regular expressions on section headers); older griffe
        # (1.5, say) ships a stub of it that finds nothing.
        style = infer(docstring)[0]
    if style is not None:
        return _parse(docstring, style)
    # griffe's "max_sections" idea by hand: the style that finds the most
    # parameters (then sections) wins; none finding any means plain prose.
    best: list[griffe.DocstringSection] = [lib.DocstringSectionText(docstring.value)]
    for candidate in _STYLES:
        sections = _parse(docstring, candidate)
        if _score(sections) > _score(best):
            best = sections
    return best


def parse_docstring(doc: str | None) -> ParsedDocstring:
    """Parse ``doc`` (a ``__doc__``); never raises."""
    if not doc or not doc.strip():
        return ParsedDocstring()
    try:
        with _quiet():
            sections = _sections(_griffe().Docstring(inspect.cleandoc(doc)))
        prose: list[str] = []
        parameters: dict[str, str] = {}
        for section in sections:
            if section.kind.value == "text":
                prose.extend(_paragraphs(str(section.value)))
            elif section.kind.value in _PARAMETER_KINDS:
                for param in section.value:
                    text = _one_line(str(param.description or ""))
                    # The first description of a name wins, as a repeated
                    # entry is more likely a slip than a correction.
                    if text and isinstance(param.name, str):
                        parameters.setdefault(param.name.lstrip("*"), text)
            # Returns, raises, examples, admonitions: not what the model
            # needs to choose and call the tool.
    except Exception:  # griffe failed on it: what the docstring says first is still useful
        summary = _first_paragraph(doc)
        return ParsedDocstring(summary=summary, description=summary)
    return ParsedDocstring(
        summary=prose[0] if prose else "",
        description="\n\n".join(prose),
        parameters=MappingProxyType(parameters),
    )

"""The journal: durable runs.  Every step result, LLM reply and tool result is stored before the workflow sees it.

:func:`journal_from` turns what ``Runtime(journal=...)`` accepts into a
backend: a path for SQLite (the default backend), a ``postgresql://`` DSN
for PostgreSQL, or a :class:`Journal` instance.  The runtime keeps a
program's record with :mod:`._programs` (create, resume, end) and its
context looks up and records each piece of work through the program's
:class:`ProgramJournal` (:mod:`._recorder`); how values, prompts and
fingerprints become bytes (:mod:`._codec`) stays inside this package.
"""

from __future__ import annotations

import os

from ._base import Journal, JournalState, ProgramRecord, PruneReport, StepRecord
from ._postgres import PostgresJournal
from ._programs import check_owner_gone, find_program, new_program, record_program_end, resume_program
from ._recorder import NOT_JOURNALED, Lookup, ProgramJournal, StepEntry
from ._sqlite import SQLiteJournal

__all__ = [
    "NOT_JOURNALED",
    "Journal",
    "JournalState",
    "Lookup",
    "PostgresJournal",
    "ProgramJournal",
    "ProgramRecord",
    "PruneReport",
    "SQLiteJournal",
    "StepEntry",
    "StepRecord",
    "check_owner_gone",
    "find_program",
    "journal_from",
    "new_program",
    "record_program_end",
    "resume_program",
]


def journal_from(spec: Journal | str | os.PathLike[str]) -> Journal:
    """A journal backend for ``spec``: a :class:`Journal`, a PostgreSQL DSN, or a SQLite file path."""
    if isinstance(spec, Journal):
        return spec
    if isinstance(spec, str) and spec.startswith(("postgresql://", "postgres://")):
        return PostgresJournal(spec)
    if isinstance(spec, str | os.PathLike):
        if not os.fspath(spec):
            raise ValueError("journal: the path is empty")
        return SQLiteJournal(spec)
    raise TypeError(f"journal must be a path, a postgresql:// DSN or a Journal, got {spec!r}")

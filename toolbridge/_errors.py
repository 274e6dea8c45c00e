"""Exceptions raised by toolbridge.

The tree::

    ToolbridgeError
     ├── ToolDefinitionError   a @tool declared wrongly (raised at decoration time)
     ├── ToolArgumentsError    arguments from a model do not match the tool's schema
     ├── ShellFailed           a shell tool's command exited non-zero (inside the sandbox)
     └── SQLError              a database refused or failed a query
          └── ReadOnlyViolation  the SQL tried to write

Failures of a tool *call* (timeouts, exceptions inside the tool, a shell
command's non-zero exit) are not raised to the caller: :func:`run_tool`
returns them in :class:`ToolResult` so they can be shown to the model.
"""

from __future__ import annotations

from typing import ClassVar

from ._result import ErrorKind

__all__ = [
    "ReadOnlyViolation",
    "SQLError",
    "ShellFailed",
    "ToolArgumentsError",
    "ToolDefinitionError",
    "ToolbridgeError",
]


class ToolbridgeError(Exception):
    """Base class of every exception raised by :mod:`toolbridge`."""


class ToolDefinitionError(ToolbridgeError, TypeError):
    """A tool is declared wrongly; raised when it is declared."""


class ToolArgumentsError(ToolbridgeError, ValueError):
    """Arguments do not match a tool's schema; the message is written for the model to read."""


class ShellFailed(ToolbridgeError):
    """A command exited with a non-zero status; the message holds its output.

    Raised inside the isolated child process; the runner reports
    :attr:`error_kind`, so the caller gets a result of kind ``exit``.
    """

    #: Reported to the model as an error of kind "exit".
    error_kind: ClassVar[ErrorKind] = ErrorKind.EXIT


class SQLError(ToolbridgeError):
    """A database refused or failed a query; the message is the database's, for the model to read."""


class ReadOnlyViolation(SQLError):
    """The SQL tried to write to a database that tools may only read."""

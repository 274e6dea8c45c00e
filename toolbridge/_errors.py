"""Exceptions raised by toolbridge.

The tree::

    ToolbridgeError
     ├── ToolDefinitionError   a @tool declared wrongly (raised at decoration time)
     ├── ToolArgumentsError    arguments from a model do not match the tool's schema
     └── SQLError              a database refused or failed a query
          └── ReadOnlyViolation  the SQL tried to write

Failures of a tool *call* (timeouts, exceptions inside the tool) are not
raised: :func:`run_tool` returns them in :class:`ToolResult` so they can be
shown to the model.
"""

from __future__ import annotations

__all__ = ["ReadOnlyViolation", "SQLError", "ToolArgumentsError", "ToolDefinitionError", "ToolbridgeError"]


class ToolbridgeError(Exception):
    """Base class of every exception raised by :mod:`toolbridge`."""


class ToolDefinitionError(ToolbridgeError, TypeError):
    """A tool is declared wrongly; raised when it is declared."""


class ToolArgumentsError(ToolbridgeError, ValueError):
    """Arguments do not match a tool's schema; the message is written for the model to read."""


class SQLError(ToolbridgeError):
    """A database refused or failed a query; the message is the database's, for the model to read."""


class ReadOnlyViolation(SQLError):
    """The SQL tried to write to a database that tools may only read."""

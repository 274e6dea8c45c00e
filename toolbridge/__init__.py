"""Tools for agents: declaring them (``@tool``), running them (``run_tool``), sandboxes, SQL.

Layering: toolbridge imports ``telemetry`` only; never ``runtime`` or
``workflows``.

- ``@tool(limits=Limits(memory="64M", cpu=0.5, pids=32, timeout_s=10),
  isolation="process")``: each call runs in a child process placed in its
  own cgroup before any tool code runs; ``shell()`` makes a shell-command tool.
  :func:`as_tool` makes (once per function) a :class:`Tool` of a plain function.
- ``await run_tool(tool, arguments, call_id=...)`` -> :class:`ToolResult`
  (``ok``, ``value``, ``error.kind`` an :class:`ErrorKind`, ``usage``, and
  ``content``: the text the model is shown).  Failures of a call are results,
  never exceptions.  Each call is traced as an ``execute_tool {name}`` span.
- :class:`ToolSet`: the tools of one model turn by name; ``await
  toolset.run(name, arguments, call_id=...)`` runs one (an unknown name is a
  result of kind ``unknown_tool``).
- :func:`render_tool_value`: how a tool's return value is shown to the model.
- Sandbox backends (:class:`SandboxDriver`): cgroup v2, cgroup v1, rlimits;
  chosen at start by :func:`sandbox_driver` (``AGENTRT_SANDBOX=cgroup2|cgroup1|rlimit``
  forces one; ``v2``/``v1`` also accepted).
- :data:`durations`: per-tool wall-time distributions (:class:`DurationPredictor`).
- SQL: :func:`sql_tools` over :class:`SQLiteDatabase` / :class:`PostgresDatabase`,
  read-only whatever SQL a model writes.

Exceptions (see :mod:`toolbridge._errors`)::

    ToolbridgeError
     ├── ToolDefinitionError   a @tool declared wrongly (decoration time; also a TypeError);
     │                         two tools of a ToolSet with one name
     ├── ToolArgumentsError    a model's arguments do not match the schema (also a ValueError)
     ├── ShellFailed           a shell tool's command exited non-zero (raised in the sandbox;
     │                         the caller gets a result of kind ``exit``)
     └── SQLError              a database refused or failed a query (shown to the model)
          └── ReadOnlyViolation  the SQL tried to write

Sandbox set-up failures (no writable cgroup) are ``OSError`` from the
backend constructors and make :func:`select_driver` fall back to the next one.
"""

from ._cgroups import (
    CgroupV1Driver,
    CgroupV2Driver,
    RlimitDriver,
    Sandbox,
    SandboxDriver,
    SandboxStats,
    sandbox_driver,
    select_driver,
    set_sandbox_driver,
)
from ._chinook import chinook_sqlite, load_chinook_postgres
from ._errors import (
    ReadOnlyViolation,
    ShellFailed,
    SQLError,
    ToolArgumentsError,
    ToolbridgeError,
    ToolDefinitionError,
)
from ._limits import Limits
from ._predict import DurationPredictor, durations
from ._result import ErrorKind, ToolError, ToolResult, ToolUsage, render_tool_value
from ._run import run_tool
from ._shell import ShellTool, shell
from ._sql import Database, PostgresDatabase, QueryResult, SQLiteDatabase, sql_tools
from ._tool import IdempotencyKey, Isolation, Tool, as_tool, tool
from ._toolset import ToolSet

__all__ = [
    "CgroupV1Driver",
    "CgroupV2Driver",
    "Database",
    "DurationPredictor",
    "ErrorKind",
    "IdempotencyKey",
    "Isolation",
    "Limits",
    "PostgresDatabase",
    "QueryResult",
    "ReadOnlyViolation",
    "RlimitDriver",
    "SQLError",
    "SQLiteDatabase",
    "Sandbox",
    "SandboxDriver",
    "SandboxStats",
    "ShellFailed",
    "ShellTool",
    "Tool",
    "ToolArgumentsError",
    "ToolDefinitionError",
    "ToolError",
    "ToolResult",
    "ToolSet",
    "ToolUsage",
    "ToolbridgeError",
    "as_tool",
    "chinook_sqlite",
    "durations",
    "load_chinook_postgres",
    "render_tool_value",
    "run_tool",
    "sandbox_driver",
    "select_driver",
    "set_sandbox_driver",
    "shell",
    "sql_tools",
    "tool",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("toolbridge._"):
        _obj.__module__ = "toolbridge"
del _name, _obj

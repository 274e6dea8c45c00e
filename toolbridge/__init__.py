"""Tools for agents: declaring them (``@tool``) and running them (``run_tool``).

Layering: toolbridge imports ``telemetry`` only; never ``runtime`` or
``workflows``.

Exceptions (see :mod:`toolbridge._errors`)::

    ToolbridgeError
     ├── ToolDefinitionError
     └── ToolArgumentsError
"""

from ._errors import ToolArgumentsError, ToolbridgeError, ToolDefinitionError
from ._result import ErrorKind, ToolError, ToolResult, ToolUsage
from ._run import run_tool
from ._tool import Tool, as_tool, tool

__all__ = [
    "ErrorKind",
    "Tool",
    "ToolArgumentsError",
    "ToolDefinitionError",
    "ToolError",
    "ToolResult",
    "ToolUsage",
    "ToolbridgeError",
    "as_tool",
    "run_tool",
    "tool",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("toolbridge._"):
        _obj.__module__ = "toolbridge"
del _name, _obj

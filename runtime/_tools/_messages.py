"""What the model is shown of a tool call: the one mapping from a tool's outcome to a tool message.

``toolbridge.ToolResult.content`` renders a result (the value as text, or
``error (kind): message``); here it becomes the :class:`workflows.ToolMessage`
an agent feeds back, and so do the outcomes no tool produced: a call the
agent repeats, a call cancelled before it finished.
"""

from __future__ import annotations

from toolbridge import ErrorKind, ToolResult
from workflows import ToolCall, ToolMessage

__all__ = ["repeated_message", "tool_message"]


def tool_message(call: ToolCall, result: ToolResult) -> ToolMessage:
    """The message for ``call`` that ran (or failed to) with ``result``."""
    if result.ok:
        return ToolMessage(call.id, call.name, result.content, value=result.value)
    assert result.error is not None
    return ToolMessage(call.id, call.name, result.content, ok=False, error_kind=result.error.kind)


def repeated_message(call: ToolCall, earlier: ToolMessage) -> ToolMessage:
    """The message for ``call``, identical to one that already succeeded with ``earlier``: not run again."""
    return ToolMessage(
        call.id,
        call.name,
        f"{earlier.content} (you already called {call.name} with these arguments: "
        "use this result, call another tool, or give the final answer)",
        value=earlier.value,
        error_kind=ErrorKind.REPEATED,
    )

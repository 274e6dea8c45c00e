"""The ``execute_tool {name}`` span of one tool call, in GenAI names.

The same attributes the runtime recorded when it opened tool spans itself,
so a trace looks alike whether a tool ran under the runtime or was called
directly.  While tracing is off, :func:`tool_span` hands out the
non-recording span before building any attribute and :func:`end_tool` returns
at its ``is_recording()`` check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

from opentelemetry.trace import Span

import telemetry
from telemetry import names as n

from ._result import ToolResult

__all__ = ["end_tool", "tool_span"]


def _arguments_text(arguments: Mapping[str, Any] | str) -> str:
    if isinstance(arguments, str):
        return arguments  # the JSON text a model produced, as it produced it (even when invalid)
    try:
        return json.dumps(dict(arguments), default=str)
    except (TypeError, ValueError):  # a circular structure: still say something
        return repr(arguments)


def tool_span(name: str, arguments: Mapping[str, Any] | str, call_id: str | None) -> AbstractContextManager[Span]:
    """The span of one call of the tool ``name``; arguments are recorded only with content capture on."""
    if not telemetry.is_enabled():
        return telemetry.span(n.OP_EXECUTE_TOOL)
    attributes: dict[str, str] = {
        n.GEN_AI_OPERATION_NAME: n.OP_EXECUTE_TOOL,
        n.GEN_AI_TOOL_NAME: name,
        n.GEN_AI_TOOL_TYPE: "function",
    }
    if call_id is not None:
        attributes[n.GEN_AI_TOOL_CALL_ID] = call_id
    if telemetry.capture_content():
        attributes[n.GEN_AI_TOOL_CALL_ARGUMENTS] = _arguments_text(arguments)
    return telemetry.span(f"{n.OP_EXECUTE_TOOL} {name}", attributes)


def end_tool(span: Span, result: ToolResult, *, ran: bool = True) -> None:
    """Record ``result`` on ``span``: usage (when the tool ``ran``), the content shown, the error."""
    if not span.is_recording():
        return
    if ran:
        usage = result.usage
        span.set_attributes(
            {
                n.AGENTRT_TOOL_WALL_S: usage.wall_s,
                n.AGENTRT_TOOL_CPU_S: usage.cpu_s,
                n.AGENTRT_TOOL_OOM_KILLED: usage.oom_killed,
            }
        )
        if usage.peak_memory_bytes is not None:
            span.set_attribute(n.AGENTRT_TOOL_PEAK_MEMORY_BYTES, usage.peak_memory_bytes)
    capture = telemetry.capture_content()
    if result.ok and not capture:
        return  # nothing left to record, and rendering a large value is not free
    content = result.content
    if capture:
        span.set_attribute(n.GEN_AI_TOOL_CALL_RESULT, content)
    if result.ok:
        return
    # A plain str: the attribute and error.type get the kind's value, not the enum.
    kind = str(result.error.kind) if result.error is not None else "error"
    span.set_attribute(n.AGENTRT_TOOL_ERROR_KIND, kind)
    telemetry.set_error(span, kind, content)

"""Tool calling in the core: a call's tools to the model and back, and a tool's outcome to the model.

- ``_calling.py``: :class:`ToolCalling`, one chat call's prepare (the prompt
  and the constraint on its output) and parse (the answer or the tool calls),
  on whichever path the call takes; :func:`tool_specs`, the tools a model is
  shown.
- ``_native.py``: native tool calling (docs/tools.md): the chat template's
  tool format detected (:class:`NativeTools`), OpenAI tools and messages for
  it, vLLM's structural tag for forced calls, vLLM's tool parser on the
  output; :func:`resolve_tool_format` chooses the path.
- ``_json_protocol.py``: agentrt's JSON protocol through structured output:
  the system text, the reply schema, parsing, other clients' histories.
- ``_messages.py``: the one mapping from a tool's outcome to the
  ``ToolMessage`` a model is shown.

Layering: imports workflows, toolbridge and the engines' prompt type
(``runtime._engines``); vLLM only inside the functions that need it.  The
rest of the runtime imports these names from here, not from the modules.
"""

from __future__ import annotations

from ._calling import PreparedChat, ToolCalling, ToolPath, tool_calling, tool_specs
from ._json_protocol import ParsedReply
from ._messages import repeated_message, tool_message
from ._native import TOOL_FORMATS, NativeTools, ToolFormat, load_native_tools, native_tools_of, resolve_tool_format
from ._streaming import ReplyStream

__all__ = [
    "ReplyStream",
    "TOOL_FORMATS",
    "NativeTools",
    "ParsedReply",
    "PreparedChat",
    "ToolCalling",
    "ToolFormat",
    "ToolPath",
    "load_native_tools",
    "native_tools_of",
    "repeated_message",
    "resolve_tool_format",
    "tool_calling",
    "tool_message",
    "tool_specs",
]

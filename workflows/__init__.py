"""Declaring agent programs: ``@workflow``, ``@step`` and ``Agent``.

Layering: this package imports nothing else of agentrt.  The runtime
(``runtime``) implements :class:`Context` and executes what is declared here;
tools are described by ``toolbridge``, which this package sees only through
the :class:`ToolSpec` protocol.

Exceptions (see :mod:`workflows._errors`)::

    WorkflowError
     ├── WorkflowDefinitionError
     ├── WorkflowInputError
     ├── ContextError
     ├── StepFailed
     └── AgentOutputError
"""

from ._agent import Agent, AgentResult, AgentTurn, tool_name
from ._context import Context, ToolRun
from ._decorators import Step, StepCall, Workflow, step, workflow
from ._errors import (
    AgentOutputError,
    ContextError,
    StepFailed,
    WorkflowDefinitionError,
    WorkflowError,
    WorkflowInputError,
)
from ._types import (
    LLMReply,
    ReplyDelta,
    TokenReply,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolFormat,
    ToolLike,
    ToolMessage,
    ToolSpec,
    Usage,
)

__all__ = [
    "Agent",
    "AgentOutputError",
    "AgentResult",
    "AgentTurn",
    "Context",
    "ContextError",
    "LLMReply",
    "ReplyDelta",
    "Step",
    "StepCall",
    "StepFailed",
    "TokenReply",
    "ToolCall",
    "ToolCallDelta",
    "ToolChoice",
    "ToolFormat",
    "ToolLike",
    "ToolMessage",
    "ToolRun",
    "ToolSpec",
    "Usage",
    "Workflow",
    "WorkflowDefinitionError",
    "WorkflowError",
    "WorkflowInputError",
    "step",
    "tool_name",
    "workflow",
]

# Tracebacks and reprs show the public path (httpx does the same).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("workflows._"):
        _obj.__module__ = "workflows"
del _name, _obj

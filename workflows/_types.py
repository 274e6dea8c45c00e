"""Values exchanged between workflow code and the runtime: replies, tool calls, tools, usage."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "LLMReply",
    "TokenReply",
    "ToolCall",
    "ToolChoice",
    "ToolFormat",
    "ToolLike",
    "ToolMessage",
    "ToolSpec",
    "Usage",
]


@runtime_checkable
class ToolSpec(Protocol):
    """A tool described to a model: what ``toolbridge.Tool`` objects are (this package never imports them).

    ``parameters`` is the JSON schema of the arguments.
    """

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    @property
    def parameters(self) -> Mapping[str, Any]: ...


#: What a workflow may hand the runtime as a tool: a described tool
#: (:class:`ToolSpec`, e.g. ``toolbridge.tool(...)``) or a plain function,
#: sync or async, whose annotations describe its arguments.
ToolLike: TypeAlias = ToolSpec | Callable[..., Any]

#: ``"auto"`` lets the model choose between calling tools and answering,
#: ``"required"`` forces at least one tool call, ``"none"`` forces an answer;
#: any other string names the one tool the model must call.
ToolChoice: TypeAlias = Literal["auto", "required", "none"] | str

#: How tools are put to the model (docs/tools.md): ``"native"`` in its chat
#: template's own tool format, parsed by vLLM's tool parser for it; ``"json"``
#: as a JSON protocol forced by structured output (any model); ``"auto"``
#: native where the model's template supports tools, else JSON.
ToolFormat: TypeAlias = Literal["auto", "native", "json"]


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one or more LLM calls.

    ``cached_tokens`` is the part of ``prompt_tokens`` the engine served from
    its prefix cache instead of computing it.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    def __sub__(self, other: Usage) -> Usage:
        """The tokens of ``self`` not in ``other`` (usage since an earlier reading of the same total)."""
        return Usage(
            self.prompt_tokens - other.prompt_tokens,
            self.completion_tokens - other.completion_tokens,
            self.cached_tokens - other.cached_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call requested by the model, in OpenAI's shape (``function.name`` / ``arguments``)."""

    id: str
    name: str
    arguments: dict[str, Any]

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments)},
        }


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call as the model writes it: an item of OpenAI's streamed ``delta.tool_calls``.

    The first piece of call ``index`` carries its ``id`` and ``name`` (the
    ids :attr:`LLMReply.tool_calls` will carry); later pieces add to its
    ``arguments``, JSON text whose pieces, joined, are the call's arguments.
    """

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """What the model added to its reply, read as it streams (``ctx.llm(on_delta=...)``).

    ``text`` is answer text (with tools: the answer only, never the call
    syntax of the tool format); ``tool_calls`` are pieces of the calls.
    """

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class LLMReply:
    """What ``ctx.llm(...)`` returns.

    ``text`` is the answer (with tools: the ``answer`` the model gave, else the
    raw generated text).  ``tool_calls`` is empty unless the model called tools.
    ``tool_call_error`` is set when the model tried to call tools but produced
    output that cannot be used (truncated or invalid JSON, a native call that
    does not parse, a required call not made); ``raw_text`` always holds
    exactly what the model generated.  ``tool_format`` says how the tools
    were put to the model (``"native"`` or ``"json"``; None without tools).
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    model: str = ""
    engine: str = ""
    raw_text: str = ""
    tool_call_error: str | None = None
    ttft_s: float | None = None
    latency_s: float = 0.0
    queued_s: float | None = None
    tool_format: Literal["native", "json"] | None = None


@dataclass(frozen=True, slots=True)
class TokenReply:
    """What ``ctx.llm_tokens(...)`` returns: the generated token ids, their text, and how the call went.

    ``text`` is the generated tokens decoded by the engine (a stop string
    that ended the call is not in it).  Times in seconds from the moment the request reached the engine:
    ``ttft_s`` to the first token, ``latency_s`` to the last; ``queued_s``
    is how long the engine kept it waiting, when it can tell.
    ``usage.cached_tokens`` is the part of the prompt served from the
    engine's prefix cache.  ``engine`` names the engine that served it.
    """

    token_ids: tuple[int, ...]
    usage: Usage
    finish_reason: str | None
    model: str
    engine: str
    ttft_s: float | None
    latency_s: float
    queued_s: float | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class ToolMessage:
    """The outcome of one tool call, as fed back to the model.

    ``content`` is what the model sees: the tool's value as text, or a short
    error description when ``ok`` is false.  ``error_kind`` is a value of
    ``toolbridge.ErrorKind`` (``"invalid_args"``, ``"unknown_tool"``,
    ``"timeout"``, ``"oom"``, ``"cancelled"`` ...); ``"repeated"`` marks an
    ``ok`` message that repeats an earlier result instead of running the
    tool again.
    """

    call_id: str
    name: str
    content: str
    ok: bool = True
    error_kind: str | None = None
    value: Any = None

    def to_message(self) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": self.call_id, "name": self.name, "content": self.content}

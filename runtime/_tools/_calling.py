"""One chat call's tools, put to the model and read back: prepare, generate, parse.

A call with tools takes one of two paths (docs/tools.md): the model's own
chat-template format (:mod:`._native`) or agentrt's JSON protocol
(:mod:`._json_protocol`).  Each path shapes the prompt and constrains the
output before generation and reads the completion after it.  A
:class:`ToolCalling` holds both halves of one call on one path, so the
context does neither itself::

    calling = tool_calling(specs, native, tool_choice="auto", max_tokens=256)
    prepared = calling.prepare(messages)  # prompt, json_schema or structural_tag
    ...                                   # generate prepared.prompt under the constraint
    reply = calling.parse(completion.text, finish_reason=..., call_id_prefix=...)

A call without tools (plain chat, or the caller's own ``json_schema``) is
:class:`PlainChat`: plain messages in, the text out as it is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeAlias

from toolbridge import ToolDefinitionError, as_tool
from workflows import ToolChoice, ToolLike, ToolSpec

from .._engines import ChatPrompt
from ._json_protocol import ParsedReply, ToolPrompt, normalize_messages, parse_reply
from ._native import (
    NativeTools,
    native_argument_chars,
    native_messages,
    openai_tools,
    parse_native_reply,
    structural_tag,
)
from ._streaming import JsonProtocolStream, NativeStream, PlainStream, ReplyStream

__all__ = [
    "JsonToolCalling",
    "NativeToolCalling",
    "PlainChat",
    "PreparedChat",
    "ToolCalling",
    "ToolPath",
    "tool_calling",
    "tool_specs",
]

#: The path a call with tools took (``LLMReply.tool_format``).
ToolPath: TypeAlias = Literal["native", "json"]


def tool_specs(tools: Sequence[ToolLike]) -> tuple[ToolSpec, ...]:
    """The tools a model is shown: described tools as they are, functions made tools (``toolbridge.as_tool``).

    Any object with ``name``, ``description`` and ``parameters`` (the
    :class:`workflows.ToolSpec` protocol, e.g. an OpenAI client's tool) is
    enough to prompt with and parse for; running one takes a
    ``toolbridge.Tool``.  Two tools with one name raise
    :class:`toolbridge.ToolDefinitionError`.
    """
    specs: dict[str, ToolSpec] = {}
    for item in tools:
        spec: ToolSpec = item if isinstance(item, ToolSpec) else as_tool(item)
        if spec.name in specs:
            raise ToolDefinitionError(f"two tools are named {spec.name!r}: {specs[spec.name]!r} and {spec!r}")
        specs[spec.name] = spec
    return tuple(specs.values())


@dataclass(frozen=True, slots=True)
class PreparedChat:
    """What one chat call sends: its prompt, and the one constraint on its output if it has one."""

    prompt: ChatPrompt
    json_schema: Mapping[str, Any] | None = None
    structural_tag: str | None = None


class ToolCalling(ABC):
    """How one chat call's tools are put to the model and its reply read back.

    :meth:`prepare` before generation, :meth:`parse` after it.
    ``tool_format`` is the path the call takes (``LLMReply.tool_format``):
    None for a call without tools.
    """

    __slots__ = ()

    tool_format: ClassVar[ToolPath | None]

    @abstractmethod
    def prepare(self, messages: Sequence[Mapping[str, Any]]) -> PreparedChat:
        """The prompt for OpenAI-shaped ``messages`` and the constraint sampling needs.

        Raises ``ValueError`` for a message that is not a mapping with a
        string ``role``, and for a ``tool_choice`` that names no tool.
        """

    @abstractmethod
    def parse(self, raw: str, *, finish_reason: str | None, call_id_prefix: str) -> ParsedReply:
        """The answer or the tool calls (ids ``{call_id_prefix}-{i}``) in the completion's text ``raw``.

        Never raises on what the model wrote: output that cannot be used is
        reported in ``ParsedReply.error``.
        """

    @abstractmethod
    def stream(self, call_id_prefix: Callable[[], str]) -> ReplyStream:
        """A reader of the reply as it streams; its tool calls' ids are :meth:`parse`'s (``{prefix}-{i}``).

        ``call_id_prefix`` is asked when the first call is read (the call's
        step key is known once it runs).
        """


@dataclass(frozen=True, slots=True)
class PlainChat(ToolCalling):
    """A call without tools: plain messages, the caller's own ``json_schema`` if any, the text as the answer."""

    json_schema: Mapping[str, Any] | None = None

    tool_format: ClassVar[ToolPath | None] = None

    def prepare(self, messages: Sequence[Mapping[str, Any]]) -> PreparedChat:
        return PreparedChat(ChatPrompt.of(normalize_messages(messages)), json_schema=self.json_schema)

    def parse(self, raw: str, *, finish_reason: str | None, call_id_prefix: str) -> ParsedReply:
        return ParsedReply(raw, (), None)

    def stream(self, call_id_prefix: Callable[[], str]) -> ReplyStream:
        return PlainStream()


@dataclass(frozen=True, slots=True)
class JsonToolCalling(ToolCalling):
    """Tools on agentrt's JSON protocol: described in the system message, the reply held to its schema."""

    tools: tuple[ToolSpec, ...]
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    max_tokens: int = 256

    tool_format: ClassVar[ToolPath | None] = "json"

    def prepare(self, messages: Sequence[Mapping[str, Any]]) -> PreparedChat:
        tool_prompt = ToolPrompt(self.tools)
        chat = tool_prompt.with_system(normalize_messages(messages))
        schema = tool_prompt.schema(self.tool_choice, self.max_tokens, parallel_tool_calls=self.parallel_tool_calls)
        return PreparedChat(ChatPrompt.of(chat), json_schema=schema)

    def parse(self, raw: str, *, finish_reason: str | None, call_id_prefix: str) -> ParsedReply:
        return parse_reply(raw, finish_reason=finish_reason, call_id_prefix=call_id_prefix)

    def stream(self, call_id_prefix: Callable[[], str]) -> ReplyStream:
        return JsonProtocolStream(lambda i: f"{call_id_prefix()}-{i}")


@dataclass(frozen=True, slots=True)
class NativeToolCalling(ToolCalling):
    """Tools in the model's own format: rendered by its chat template, read by its vLLM tool parser.

    A required call (``tool_choice="required"`` or a tool's name) is forced
    by vLLM's structural tag for the format.
    """

    native: NativeTools
    tools: tuple[ToolSpec, ...]
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    max_tokens: int = 256

    tool_format: ClassVar[ToolPath | None] = "native"

    def prepare(self, messages: Sequence[Mapping[str, Any]]) -> PreparedChat:
        # The template renders the tools and the OpenAI-shaped messages its own way.
        prompt = ChatPrompt.of(native_messages(messages), tools=openai_tools(self.tools))
        tag = structural_tag(
            self.native,
            self.tools,
            self.tool_choice,
            parallel_tool_calls=self.parallel_tool_calls,
            max_chars=native_argument_chars(self.native, self.tools, self.max_tokens),
        )
        return PreparedChat(prompt, structural_tag=tag)

    def parse(self, raw: str, *, finish_reason: str | None, call_id_prefix: str) -> ParsedReply:
        return parse_native_reply(
            self.native, raw, self.tools, self.tool_choice, finish_reason=finish_reason, call_id_prefix=call_id_prefix
        )

    def stream(self, call_id_prefix: Callable[[], str]) -> ReplyStream:
        if self.tool_choice == "none":  # the reply is not parsed for calls: its text is the answer
            return PlainStream()
        return NativeStream(self.native, self.tools, lambda i: f"{call_id_prefix()}-{i}")


def tool_calling(
    tools: Sequence[ToolSpec],
    native: NativeTools | None = None,
    *,
    tool_choice: ToolChoice = "auto",
    parallel_tool_calls: bool = True,
    max_tokens: int = 256,
    json_schema: Mapping[str, Any] | None = None,
) -> ToolCalling:
    """The :class:`ToolCalling` of one call of at most ``max_tokens`` tokens.

    Without ``tools``: :class:`PlainChat` (with ``json_schema``, if given).
    With them: native when ``native`` is given (the path
    :func:`~._native.resolve_tool_format` chose), else the JSON protocol;
    ``json_schema`` then raises ``ValueError`` (a call has one constraint).
    """
    if not tools:
        return PlainChat(json_schema)
    if json_schema is not None:
        raise ValueError("pass either tools or json_schema, not both")
    if native is not None:
        return NativeToolCalling(native, tuple(tools), tool_choice, parallel_tool_calls, max_tokens)
    return JsonToolCalling(tuple(tools), tool_choice, parallel_tool_calls, max_tokens)

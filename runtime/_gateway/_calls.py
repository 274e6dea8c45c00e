"""What one gateway request asks of its program: a chat call or a raw completion, as a turn's work.

Chat requests go through ``ctx.llm`` like a library program's, so tools are
rendered and parsed on the path the model takes (native chat-template tool
calls, or agentrt's structured-output protocol; ``tool_format``), and the
reply's tool calls come back in OpenAI's shape.  The client's tools are
described, not run: the gateway has only their schemas.  Raw completions
are token prompts (a string prompt is encoded with the model's tokenizer).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workflows import ReplyDelta, ToolCall, Usage

from .._context import RuntimeContext
from .._tools import ToolFormat
from ._protocol import ChatRequest, CompletionRequest, OpenAIError

__all__ = ["ChatOutcome", "ClientTool", "CompletionOutcome", "chat_work", "completion_work"]

#: OpenAI's sampling defaults, for fields a request leaves unset.
DEFAULT_TEMPERATURE = 1.0


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A tool the client runs: its name, description and argument schema (a ``workflows.ToolSpec``)."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatOutcome:
    content: str | None
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str | None
    usage: Usage
    engine: str | None
    tool_call_error: str | None


@dataclass(frozen=True, slots=True)
class CompletionOutcome:
    text: str
    finish_reason: str | None
    usage: Usage
    engine: str | None
    token_ids: tuple[int, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    #: vLLM's ``return_token_ids``: the reply carries the generated and the prompt's token ids.
    return_token_ids: bool = False


def chat_work(
    request: ChatRequest, *, default_max_tokens: int, tool_format: ToolFormat
) -> Callable[[RuntimeContext, Callable[[ReplyDelta], None] | None], Awaitable[ChatOutcome]]:
    """The turn's work for a chat request already checked (:meth:`ChatRequest.check_messages` and the rest)."""
    tools = [ClientTool(t["name"], t["description"], t["parameters"]) for t in request.function_tools()]
    tool_choice = request.tool_choice_name([t.name for t in tools]) if tools else "auto"
    json_schema = request.json_schema()
    if tools and json_schema is not None and tool_choice != "none":
        raise OpenAIError(400, "response_format and tools cannot be combined", param="response_format")
    messages = _openai_messages(request.messages)
    max_tokens = request.token_limit(default_max_tokens)
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    stop = request.stop_sequences()
    extra = request.extra_sampling()

    # With tool_choice "none" the tools are still shown (as OpenAI and vLLM do): the prompt stays the
    # same as the turns before it, and so does its prefix in the engine's cache.
    show_tools = bool(tools) and not (json_schema is not None and tool_choice == "none")

    async def work(ctx: RuntimeContext, on_delta: Callable[[ReplyDelta], None] | None) -> ChatOutcome:
        # Without tools shown, tool_choice and the rest are not used; json_schema only goes without tools.
        reply = await ctx.llm(
            messages,
            tools=tools if show_tools else None,
            tool_choice=tool_choice,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            tool_format=tool_format,
            json_schema=None if show_tools else json_schema,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=request.seed,
            stop=stop,
            ignore_eos=request.ignore_eos,
            on_delta=on_delta,
            extra_sampling=extra,
        )
        if reply.tool_calls:
            return ChatOutcome(None, reply.tool_calls, "tool_calls", reply.usage, reply.engine, None)
        # A malformed tool call is the model's text, shown as it is: the client decides what to do with it.
        content = reply.raw_text if reply.tool_call_error else reply.text
        return ChatOutcome(content, (), reply.finish_reason, reply.usage, reply.engine, reply.tool_call_error)

    return work


def _openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    # "developer" is OpenAI's newer name for the system role; chat templates know only "system".
    return [{**m, "role": "system"} if m.get("role") == "developer" else dict(m) for m in messages]


def completion_work(
    request: CompletionRequest, *, encode: Callable[[str], list[int]] | None
) -> Callable[[RuntimeContext, Callable[[ReplyDelta], None] | None], Awaitable[CompletionOutcome]]:
    prompt = request.single_prompt()
    if isinstance(prompt, str):
        if encode is None:
            raise OpenAIError(
                400,
                "this gateway has no tokenizer for its model (a remote engine whose model is not a local "
                "directory): send the prompt as token ids, or start agentrt serve with --tokenizer PATH",
                param="prompt",
            )
        ids = encode(prompt)
    else:
        ids = prompt
    if not ids:
        raise OpenAIError(400, "the prompt is empty", param="prompt")
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    stop = request.stop_sequences()
    extra = request.extra_sampling()

    async def work(ctx: RuntimeContext, on_delta: Callable[[ReplyDelta], None] | None) -> CompletionOutcome:
        reply = await ctx.llm_tokens(
            ids,
            max_tokens=request.max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=request.seed,
            stop=stop,
            ignore_eos=request.ignore_eos,
            on_token=None if on_delta is None else lambda text: on_delta(ReplyDelta(text)),
            extra_sampling=extra,
        )
        return CompletionOutcome(
            reply.text,
            reply.finish_reason,
            reply.usage,
            reply.engine,
            reply.token_ids,
            tuple(ids),
            request.return_token_ids,
        )

    return work

"""Native tool calling: the model's own chat-template tool format, parsed by vLLM's tool parsers.

A model trained for tools (Qwen, Llama 3.x, Mistral, Hermes) knows one format
for them: its chat template shows the tools (OpenAI function schemas) and
renders assistant ``tool_calls`` and ``tool`` messages its own way, and the
model writes calls in that format (Hermes: ``<tool_call>{...}</tool_call>``).
On this *native* path the runtime hands the template the OpenAI tools and
messages untouched, parses the output with the vLLM tool parser that matches
the template (what vLLM's OpenAI server does), and, when a call is required
(``tool_choice="required"`` or a tool's name), constrains generation with the
xgrammar structural tag vLLM builds for that format.

The other path is :mod:`._json_protocol`: a JSON protocol of our own forced
by structured output, which any model (even a random-weight one) follows.
:class:`~._calling.ToolCalling` puts a call on one path or the other.

Which path a call takes (:func:`resolve_tool_format`):

- ``"json"``: always the JSON protocol;
- ``"native"``: the template's format; a model whose template does not do
  tools, or whose format no vLLM parser reads, is an error;
- ``"auto"``: native when the template does tools and a parser is known,
  else JSON.

vLLM is imported only inside the functions that need it, so importing the
runtime loads none of it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, TypeAlias

from workflows import ToolCall, ToolChoice, ToolSpec

from .._engines import NativeTools, detect_parser, load_native_tools, native_tools_of, template_supports_tools
from ._json_protocol import ParsedReply, bounded

__all__ = [
    "TOOL_FORMATS",
    "NativeTools",
    "ToolFormat",
    "detect_parser",
    "load_native_tools",
    "native_argument_chars",
    "native_messages",
    "native_tools_of",
    "openai_tools",
    "parse_native_reply",
    "resolve_tool_format",
    "structural_tag",
    "template_supports_tools",
]

logger = logging.getLogger(__name__)

#: How a call with tools is put to the model: ``"native"`` (its chat
#: template's tool format), ``"json"`` (the structured-output protocol of
#: :mod:`._json_protocol`), ``"auto"`` (native where the model supports it).
ToolFormat: TypeAlias = Literal["auto", "native", "json"]

TOOL_FORMATS: tuple[str, ...] = ("auto", "native", "json")


def resolve_tool_format(
    tool_format: str, native: NativeTools | None, *, tool_parser: str | None = None, model: str = ""
) -> NativeTools | None:
    """The native tools to use for a call (``None``: the JSON protocol).

    ``tool_parser`` names a vLLM parser and overrides the one detected from
    the template.  Raises ``ValueError`` for ``tool_format="native"`` on a
    model whose template does not render tools or whose format no parser
    reads, and for an unknown ``tool_format`` or parser name.
    """
    if tool_format not in TOOL_FORMATS:
        raise ValueError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}, got {tool_format!r}")
    if tool_parser is not None:
        parser_class(tool_parser)  # an unknown name fails here, whatever the format
    if tool_format == "json":
        return None
    if native is None:
        if tool_format == "native":
            raise ValueError(
                f"tool_format='native': the chat template of model {model or '(unknown)'!r} does not render "
                "tools (or its tokenizer is not available locally); use tool_format='json' (the structured-output "
                "protocol, any model) or serve a model whose template supports tools"
            )
        return None
    parser = tool_parser or native.parser
    if parser is None:
        if tool_format == "native":
            raise ValueError(
                f"tool_format='native': model {native.model!r} renders tools but its tool-call format is not one "
                "agentrt recognises; name the vLLM parser with tool_parser= (e.g. 'hermes', 'llama3_json', "
                "'mistral') or use tool_format='json'"
            )
        return None
    return NativeTools(native.model, parser, native.tokenizer)


def parser_class(name: str) -> Any:
    """The vLLM tool parser class registered as ``name``."""
    from vllm.tool_parsers import ToolParserManager

    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError as exc:
        known = ", ".join(sorted(ToolParserManager.list_registered()))
        raise ValueError(f"unknown vLLM tool parser {name!r}; known parsers: {known}") from exc


# -- prompts ---------------------------------------------------------------------


def openai_tools(tools: Sequence[ToolSpec]) -> tuple[dict[str, Any], ...]:
    """``tools`` as OpenAI function tools, what chat templates are given as ``tools``."""
    return tuple(
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description or "", "parameters": dict(t.parameters)},
        }
        for t in tools
    )


def _arguments(value: object) -> object:
    # vLLM parses JSON-string arguments into mappings before rendering: Hermes and
    # Qwen templates write `arguments | tojson`, which would quote a string twice.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value  # shown as written: the history is shown, not executed
    return value


def native_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-shaped ``messages`` ready for a tool-aware chat template.

    Assistant ``tool_calls`` keep their OpenAI shape with ``arguments`` as
    mappings; ``tool`` messages (``tool_call_id``, ``name``, ``content``) pass
    through, for the template to render its own way.
    """
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"message {i} must be a mapping with a string 'role', got {m!r}")
        message = dict(m)
        calls = message.get("tool_calls")
        if message["role"] == "assistant" and calls:
            rendered = []
            for c in calls:
                fn = c.get("function", c)
                rendered.append(
                    {
                        "id": c.get("id", ""),
                        "type": "function",
                        "function": {"name": fn.get("name"), "arguments": _arguments(fn.get("arguments", {}))},
                    }
                )
            message["tool_calls"] = rendered
        out.append(message)
    return out


# -- constrained calls -------------------------------------------------------------


def _named_choice(tool_choice: ToolChoice, tools: Sequence[ToolSpec]) -> str | None:
    if tool_choice in ("auto", "required", "none"):
        return None
    if not any(t.name == tool_choice for t in tools):
        raise ValueError(f"tool_choice {tool_choice!r} names no tool; tools: {[t.name for t in tools]}")
    return tool_choice


def structural_tag(
    native: NativeTools,
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice,
    *,
    parallel_tool_calls: bool = True,
    max_chars: int = 1024,
) -> str | None:
    """The xgrammar structural tag (JSON text) that forces a call in the model's format, or None.

    Only ``tool_choice="required"`` or a tool's name constrain generation (as
    in vLLM's server): ``"auto"`` and ``"none"`` generate freely.  The
    arguments follow each tool's schema, with :func:`~._json_protocol.bounded`
    bounds (``max_chars`` characters) so they close before ``max_tokens``.
    ``parallel_tool_calls=False`` allows one call.  None, too, for a parser
    vLLM has no structural tag for (Mistral, pythonic): such a call is
    generated freely and parsed (a missing call is then ``tool_call_error``).
    """
    named = _named_choice(tool_choice, tools)
    if tool_choice in ("auto", "none") or native.parser is None:
        return None
    key = getattr(parser_class(native.parser), "structural_tag_model", None)
    if key is None:
        return None
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionToolsParam,
    )
    from vllm.tool_parsers.structural_tag_registry import get_model_structural_tag, limit_to_single_tool_call

    params = [
        ChatCompletionToolsParam.model_validate(
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": _closed(bounded(dict(t.parameters), max_chars)),
                    # strict: the arguments follow the schema, not just the envelope.
                    "strict": True,
                },
            }
        )
        for t in tools
    ]
    choice: Any = (
        "required"
        if named is None
        else ChatCompletionNamedToolChoiceParam.model_validate({"type": "function", "function": {"name": named}})
    )
    tag = get_model_structural_tag(key, params, choice, reasoning=False)
    if tag is None:
        return None
    if not parallel_tool_calls:
        limit_to_single_tool_call(tag)
    return json.dumps(_bounded_whitespace(tag.model_dump()))


def _closed(schema: Any) -> Any:
    """``schema`` with objects closed (``additionalProperties: false``) unless it says otherwise.

    xgrammar's JSON-schema grammars close objects by default (strict mode),
    its structural tags do not: a weak model would invent property names
    until max_tokens.  For the grammar only, as on the JSON path.
    """
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


#: The most whitespace characters in a row inside a constrained call's JSON.
#: Unbounded, a weak model pads the arguments with whitespace until max_tokens
#: (the engines' "no free whitespace" setting does not reach structural tags);
#: one still allows the usual `{"a": 1}` spacing.
_MAX_WHITESPACE = 1


def _bounded_whitespace(node: Any) -> Any:
    if isinstance(node, list):
        return [_bounded_whitespace(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _bounded_whitespace(v) for k, v in node.items()}
    if out.get("type") == "json_schema" and out.get("max_whitespace_cnt") is None:
        out["max_whitespace_cnt"] = _MAX_WHITESPACE
    return out


def native_argument_chars(native: NativeTools, tools: Sequence[ToolSpec], max_tokens: int) -> int:
    """The bound on each argument string of a forced call of at most ``max_tokens`` tokens, characters.

    As on the JSON path (:func:`~._json_protocol.argument_chars`: four tokens a
    character, for byte-level tokenizers), less what the format's envelope
    around the arguments costs in this tokenizer (Hermes: ``<tool_call>``,
    the name, ``</tool_call>``), so the call closes before ``max_tokens``.
    """
    envelope = 16
    encode = getattr(native.tokenizer, "encode", None)
    if callable(encode) and tools:
        longest = max((t.name for t in tools), key=len)
        try:
            sample = f'<tool_call>\n{{"name": "{longest}", "arguments": {{}}}}\n</tool_call>'
            envelope = max(envelope, len(encode(sample, add_special_tokens=False)) + 4)
        except Exception:  # a tokenizer that cannot say: keep the JSON path's estimate
            pass
    # 12 more for one argument's own name, quotes and the whitespace the grammar allows.
    return max(4, (max_tokens - envelope - 12) // 4)


# -- parsing -------------------------------------------------------------------------


def tool_request(tools: Sequence[ToolSpec], tool_choice: ToolChoice) -> Any:
    """vLLM's ``ChatCompletionRequest`` showing ``tools`` with ``tool_choice``: what its tool parsers read."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    named = tool_choice not in ("auto", "required", "none")
    choice: Any = {"type": "function", "function": {"name": tool_choice}} if named else tool_choice
    return ChatCompletionRequest.model_validate(
        {
            "model": "agentrt",
            "messages": [{"role": "user", "content": ""}],
            "tools": list(openai_tools(tools)),
            "tool_choice": choice,
        }
    )


@contextlib.contextmanager
def quiet_logger(logger_name: str) -> Iterator[None]:
    """The logger ``logger_name`` silenced meanwhile (vLLM's parsers log what they cannot parse)."""
    quieted = logging.getLogger(logger_name)
    was = quieted.disabled
    quieted.disabled = True
    try:
        yield
    finally:
        quieted.disabled = was


def _call_marker(parser: Any) -> str | None:
    """The text that opens a call in the parser's format (Hermes ``<tool_call>``, Llama/Mistral bot token)."""
    for attr in ("tool_call_start_token", "bot_token"):
        marker = getattr(parser, attr, None)
        if isinstance(marker, str) and marker:
            return marker
    return None


def parse_native_reply(
    native: NativeTools,
    raw: str,
    tools: Sequence[ToolSpec],
    tool_choice: ToolChoice,
    *,
    finish_reason: str | None,
    call_id_prefix: str,
) -> ParsedReply:
    """The tool calls (ids ``{call_id_prefix}-{i}``) or the answer in ``raw``, read by the model's vLLM parser.

    Never raises on what the model wrote: a call that does not parse (cut off
    by ``max_tokens``, bad JSON, arguments that are not an object) and a
    required call that is missing are reported in ``error``.
    """
    if native.parser is None:
        return ParsedReply(raw, (), "no tool parser for this model")
    if tool_choice == "none":
        return ParsedReply(raw, (), None)
    try:
        parser_cls = parser_class(native.parser)
        parser = parser_cls(native.tokenizer, list(tool_request(tools, "auto").tools or ()))
        # Parsers log a traceback for every call that does not parse; here that is
        # the model's output, reported in `error`, not a fault of the process.
        with quiet_logger(parser_cls.__module__):
            info = parser.extract_tool_calls(raw, tool_request(tools, tool_choice))
    except Exception as exc:  # a parser's own failure is the model output's problem, not the caller's
        return ParsedReply(raw, (), f"the {native.parser} tool parser failed: {type(exc).__name__}: {exc}")
    marker = _call_marker(parser)
    if not info.tools_called or not info.tool_calls:
        if marker is not None and marker in raw:
            why = "output cut off by max_tokens" if finish_reason == "length" else "a tool call that does not parse"
            return ParsedReply(raw, (), f"{why} ({native.parser} format)")
        if tool_choice != "auto":
            return ParsedReply(raw, (), f"a tool call was required (tool_choice={tool_choice!r}) but none was made")
        return ParsedReply(info.content if info.content is not None else raw, (), None)
    calls: list[ToolCall] = []
    for i, call in enumerate(info.tool_calls):
        name = call.function.name
        try:
            args = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            return ParsedReply(raw, (), f"arguments of tool call {i} ({name}) are not JSON ({exc.msg})")
        if not isinstance(args, dict):
            return ParsedReply(raw, (), f"arguments of tool call {i} ({name}) are not an object")
        calls.append(ToolCall(f"{call_id_prefix}-{i}", name, args))
    return ParsedReply(info.content or "", tuple(calls), None)

"""Tool calling through structured output: agentrt's JSON protocol.

The model is shown the tools in its system message and its reply is
constrained (vLLM structured output) to one JSON object: either
``{"tool_calls": [{"name": ..., "arguments": {...}}, ...]}`` or
``{"answer": "..."}``.  The tool name is an enum and the arguments follow the
tool's own schema, so even a small or random-weight model emits calls that
parse.  What still can go wrong (output cut by ``max_tokens``, arguments a
schema could not express) is reported, never raised.  Histories written by
other clients (OpenAI-shaped assistant ``tool_calls``, ``tool`` messages) are
rewritten into this protocol by :func:`normalize_messages`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workflows import ToolCall, ToolChoice, ToolSpec

__all__ = ["ParsedReply", "ToolPrompt", "argument_chars", "bounded", "normalize_messages", "parse_reply"]

#: The most tool calls one reply may make.
MAX_CALLS_PER_TURN = 4


def _answer_schema(max_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"answer": {"type": "string", "maxLength": max_chars}},
        "required": ["answer"],
        "additionalProperties": False,
    }


#: Bounds added to unbounded numbers in the grammar (not in validation): without
#: them a weak model can emit digits until max_tokens runs out.
_NUMBER_BOUND = 2**53 - 1


def bounded(schema: Any, max_chars: int) -> Any:
    """A copy of ``schema`` with bounds on unbounded integers, numbers and strings.

    Guided decoding then cannot run away inside one value; the bounds are wide
    enough (±2**53, ``max_chars`` characters) not to bother a sensible model.
    """
    if isinstance(schema, list):
        return [bounded(v, max_chars) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, max_chars) for k, v in schema.items()}
    kind = out.get("type")
    if kind in ("integer", "number"):
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = _NUMBER_BOUND
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -_NUMBER_BOUND
    elif kind == "string" and "maxLength" not in out and "enum" not in out and "const" not in out:
        out["maxLength"] = max_chars
    return out


def _calls_schema(tools: Sequence[ToolSpec], max_chars: int, max_calls: int) -> dict[str, Any]:
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": bounded(t.parameters, max_chars)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    item = variants[0] if len(variants) == 1 else {"anyOf": variants}
    return {
        "type": "object",
        "properties": {"tool_calls": {"type": "array", "items": item, "minItems": 1, "maxItems": max_calls}},
        "required": ["tool_calls"],
        "additionalProperties": False,
    }


def argument_chars(max_tokens: int) -> int:
    """The bound on each argument string of a constrained call of at most ``max_tokens`` tokens, characters.

    A call's JSON then closes before ``max_tokens`` runs out even when every
    character costs a token (random-weight test models).
    """
    return max(8, (max_tokens - 16) // 4)


@dataclass(frozen=True, slots=True)
class ToolPrompt:
    """The tools of one call: the system text that describes them and the reply schema."""

    tools: tuple[ToolSpec, ...]

    def system_text(self) -> str:
        lines = ["You can call these tools:"]
        for t in self.tools:
            params = json.dumps(t.parameters, separators=(",", ":"))
            lines.append(f"- {t.name}: {t.description or 'no description'} Arguments: {params}")
        lines.append(
            'Reply with one JSON object: {"tool_calls": [{"name": "<tool>", "arguments": {...}}]} '
            'to call tools, or {"answer": "<text>"} to give the final answer.'
        )
        return "\n".join(lines)

    def with_system(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with the tool description appended to the system message.

        The text is the same on every turn so the prompt prefix, and so the
        engine's prefix cache, stays valid across turns.
        """
        out = [dict(m) for m in messages]
        text = self.system_text()
        if out and out[0].get("role") == "system":
            out[0]["content"] = f"{out[0].get('content') or ''}\n\n{text}".lstrip()
        else:
            out.insert(0, {"role": "system", "content": text})
        return out

    def schema(self, tool_choice: ToolChoice, max_tokens: int, *, parallel_tool_calls: bool = True) -> dict[str, Any]:
        """The JSON schema the reply is constrained to.

        ``parallel_tool_calls=False`` allows one call per reply (else up to
        ``MAX_CALLS_PER_TURN``).
        """
        max_calls = MAX_CALLS_PER_TURN if parallel_tool_calls else 1
        # Argument strings are bounded so a call's JSON closes before
        # max_tokens runs out even when every character costs a token
        # (random-weight test models).  The answer bound is loose: an answer
        # cut off by max_tokens is salvaged by parse_reply.
        answer = _answer_schema(max(16, 4 * max_tokens))
        arg_chars = argument_chars(max_tokens)
        if tool_choice == "none":
            return answer
        if tool_choice == "auto":
            return {"anyOf": [_calls_schema(self.tools, arg_chars, max_calls), answer]}
        if tool_choice == "required":
            return _calls_schema(self.tools, arg_chars, max_calls)
        named = [t for t in self.tools if t.name == tool_choice]
        if not named:
            raise ValueError(f"tool_choice {tool_choice!r} names no tool; tools: {[t.name for t in self.tools]}")
        return _calls_schema(named, arg_chars, max_calls)


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """A model's reply read back: its text, its tool calls, and why the calls cannot be used (None: they can)."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    error: str | None


def _salvage_answer(raw: str) -> str | None:
    # An answer cut off by max_tokens: keep what was generated of the string.
    head = raw.lstrip()
    for prefix in ('{"answer":"', '{"answer": "'):
        if head.startswith(prefix):
            body = head[len(prefix) :]
            for trim in range(min(len(body), 8) + 1):
                try:
                    value = str(json.loads('"' + body[: len(body) - trim] + '"'))
                except json.JSONDecodeError:
                    continue
                # A cut between the two halves of an escaped surrogate pair
                # leaves a lone high surrogate: not text, drop it.
                return value[:-1] if value and "\ud800" <= value[-1] <= "\udbff" else value
    return None


def parse_reply(raw: str, *, finish_reason: str | None, call_id_prefix: str) -> ParsedReply:
    """Turn the constrained JSON a model produced into an answer or tool calls."""
    try:
        # strict=False: the grammar lets raw control characters into strings (a weak model writes
        # them), which strict JSON refuses; the call is still the one the grammar shaped.
        data = json.loads(raw, strict=False)
    except json.JSONDecodeError as exc:
        salvaged = _salvage_answer(raw)
        if salvaged is not None:
            return ParsedReply(salvaged, (), None)
        why = "output cut off by max_tokens" if finish_reason == "length" else f"invalid JSON ({exc.msg})"
        return ParsedReply(raw, (), why)
    if isinstance(data, dict) and isinstance(data.get("answer"), str):
        return ParsedReply(data["answer"], (), None)
    calls = data.get("tool_calls") if isinstance(data, dict) else None
    if not isinstance(calls, list) or not calls:
        return ParsedReply(raw, (), 'expected {"answer": ...} or {"tool_calls": [...]}')
    parsed: list[ToolCall] = []
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return ParsedReply(raw, (), f"tool call {i} has no name")
        args = call.get("arguments", {})
        if not isinstance(args, dict):
            return ParsedReply(raw, (), f"arguments of tool call {i} ({call['name']}) are not an object")
        parsed.append(ToolCall(f"{call_id_prefix}-{i}", call["name"], args))
    return ParsedReply("", tuple(parsed), None)


def _text_of(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return str(content)


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain ``role``/``content`` messages every chat template can render.

    Assistant tool calls in OpenAI's shape become the JSON text our tool
    protocol uses, so a history from another client still renders; tool
    results become user turns that name the tool.
    """
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"message {i} must be a mapping with a string 'role', got {m!r}")
        content = _text_of(m.get("content"))
        if m["role"] == "assistant" and not content and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = c.get("function", c)
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    # Unparseable text stays as it is: the history is shown, not executed.
                    with contextlib.suppress(json.JSONDecodeError):
                        args = json.loads(args)
                calls.append({"name": fn.get("name"), "arguments": args})
            content = json.dumps({"tool_calls": calls})
        if m["role"] == "tool":
            # Tool results go in as user turns, the way most chat templates
            # render them (Qwen wraps them in <tool_response> inside a user
            # turn); templates of small models often know no "tool" role.
            name = m.get("name") or "tool"
            out.append({"role": "user", "content": f"Result of {name}: {content}"})
            continue
        out.append({"role": m["role"], "content": content})
    return out

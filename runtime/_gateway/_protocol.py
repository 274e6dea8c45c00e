"""The OpenAI wire format the gateway speaks: request bodies in, responses, stream chunks and errors out.

Requests are validated with pydantic into :class:`ChatRequest` and
:class:`CompletionRequest`.  Sampling fields that change which tokens are
drawn (penalties, ``logit_bias``, ``top_k``, ``min_p``, ``min_tokens``,
``stop_token_ids`` ...) go to the engine as they are, which checks them as
vLLM's server does.  Fields that would change the reply's shape and agentrt
does not implement are refused with a clear 400 when set to anything but
their default (``n`` > 1, ``logprobs``, ``echo`` ...), never silently
ignored: a client relying on them would get wrong answers.  Fields nobody defines
are ignored, as OpenAI's and vLLM's servers do, so SDKs that send new
optional fields keep working.  Errors are :class:`OpenAIError`, rendered as
OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from workflows import ToolCallDelta

from .._engines import EXTRA_SAMPLING_FIELDS, INT64_MAX, INT64_MIN

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "OpenAIError",
    "SessionFields",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_body",
    "usage_body",
]

M = TypeVar("M", bound="BaseModel")

_ROLES = ("system", "developer", "user", "assistant", "tool")


class OpenAIError(Exception):
    """A request refused or failed, as OpenAI reports it: HTTP ``status``, error ``type``, ``code``, ``param``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param


def error_body(error: OpenAIError) -> dict[str, Any]:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


class SessionFields(BaseModel):
    """agentrt's own request fields (top level of the body; the OpenAI SDK sends them as ``extra_body``).

    ``program_id`` names the program the request joins; ``deadline_s`` and
    ``priority`` set that program's deadline (seconds from its first
    request) and user priority (lower first) when the request starts it;
    ``last_turn`` ends the program after this request; ``expected_tool`` names
    the tool the client will run after this reply when the reply itself
    cannot say (a ``/v1/completions`` turn, or a client that parses tool
    calls itself), so the program's KV cache is pinned for that tool.
    """

    model_config = ConfigDict(extra="ignore")

    program_id: str | None = Field(default=None, min_length=1, max_length=256)
    deadline_s: float | None = Field(default=None, gt=0)
    priority: int | None = None
    last_turn: bool | None = None
    expected_tool: str | None = Field(default=None, min_length=1, max_length=128)
    # Other serving stacks' session fields (see _session_keys).
    session_id: str | None = Field(default=None, min_length=1, max_length=256)
    job_id: str | int | None = None
    is_last_step: bool | None = None
    metadata: dict[str, Any] | None = None


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: str | list[str] | None = None
    n: int | None = None
    logprobs: bool | int | None = None
    # Sampling fields passed to the engine as they are (EXTRA_SAMPLING_FIELDS); vLLM checks their values.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions, forwarded: generate past the end-of-sequence token; and the rest below.
    ignore_eos: bool = False
    repetition_penalty: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    min_tokens: int | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[int] | None = None

    def extra_sampling(self) -> dict[str, Any]:
        """The set sampling fields that go to the engine as they are (``SamplingOptions.extra``)."""
        extra = {name: getattr(self, name) for name in EXTRA_SAMPLING_FIELDS if name != "logit_bias"}
        extra = {name: value for name, value in extra.items() if value is not None}
        if self.logit_bias:
            try:  # OpenAI's keys are token ids written as strings
                extra["logit_bias"] = {int(token): float(bias) for token, bias in self.logit_bias.items()}
            except ValueError:
                raise OpenAIError(400, "logit_bias keys must be token ids", param="logit_bias") from None
        return extra

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.get("include_usage"))

    def refuse_unsupported(self) -> None:
        if self.n not in (None, 1):
            raise OpenAIError(400, "n > 1 is not supported: send one request per completion", param="n")
        if self.logprobs not in (None, False, 0):
            raise OpenAIError(400, "logprobs are not supported by agentrt serve", param="logprobs")
        if len(self.stop_sequences()) > 4:  # OpenAI's bound, and vLLM's server's
            raise OpenAIError(400, "stop: List should have at most 4 items", param="stop")
        if any(not s for s in self.stop_sequences()):
            raise OpenAIError(400, "stop cannot contain an empty string", param="stop")


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs not in (None, 0):
            raise OpenAIError(400, "top_logprobs are not supported by agentrt serve", param="top_logprobs")

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def check_messages(self) -> None:
        for i, message in enumerate(self.messages):
            role = message.get("role")
            if role not in _ROLES:
                raise OpenAIError(
                    400, f"messages[{i}].role must be one of {', '.join(_ROLES)}, got {role!r}", param="messages"
                )
            content = message.get("content")
            if content is not None and not isinstance(content, str | list):
                raise OpenAIError(400, f"messages[{i}].content must be a string or a list of parts", param="messages")
            if isinstance(content, list):
                for part in content:
                    if not isinstance(part, Mapping) or part.get("type") not in ("text", "input_text", None):
                        raise OpenAIError(
                            400,
                            f"messages[{i}].content: only text parts are supported, got {part!r:.80}",
                            param="messages",
                        )
            if role == "tool" and not isinstance(message.get("tool_call_id"), str):
                raise OpenAIError(400, f"messages[{i}]: a tool message needs a tool_call_id", param="messages")

    def function_tools(self) -> list[dict[str, Any]]:
        """The request's tools as ``{"name", "description", "parameters"}``, checked."""
        out: list[dict[str, Any]] = []
        for i, tool in enumerate(self.tools or ()):
            fn = tool.get("function") if isinstance(tool, Mapping) else None
            if (
                not isinstance(tool, Mapping)
                or tool.get("type", "function") != "function"
                or not isinstance(fn, Mapping)
            ):
                raise OpenAIError(400, f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
            name = fn.get("name")
            if not isinstance(name, str) or not name or not name.replace("_", "").replace("-", "").isalnum():
                raise OpenAIError(400, f"tools[{i}].function.name must be letters, digits, '_' or '-'", param="tools")
            parameters = fn.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(parameters, Mapping):
                raise OpenAIError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
            out.append({"name": name, "description": str(fn.get("description") or ""), "parameters": dict(parameters)})
        return out

    def tool_choice_name(self, tool_names: Sequence[str]) -> str:
        """``tool_choice`` as the runtime's ``ToolChoice``: "auto", "none", "required" or a tool name."""
        choice = self.tool_choice
        if choice is None:
            return "auto"
        if isinstance(choice, str):
            if choice not in ("auto", "none", "required"):
                raise OpenAIError(400, f"tool_choice must be auto, none, required or a function, got {choice!r}")
            return choice
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise OpenAIError(
                400, "tool_choice must be {'type': 'function', 'function': {'name': ...}}", param="tool_choice"
            )
        if name not in tool_names:
            raise OpenAIError(400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice")
        return name

    def json_schema(self) -> dict[str, Any] | None:
        fmt = self.response_format
        if not fmt or fmt.get("type") == "text":
            return None
        if fmt.get("type") == "json_object":
            return {"type": "object"}
        if fmt.get("type") == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, Mapping):
                raise OpenAIError(
                    400, "response_format.json_schema.schema must be a JSON schema", param="response_format"
                )
            return dict(schema)
        raise OpenAIError(400, f"response_format.type {fmt.get('type')!r} is not supported", param="response_format")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a string or token ids (one prompt per request)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = Field(default=16, ge=1)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    # vLLM's extension: the reply carries the generated and the prompt's token ids.
    return_token_ids: bool = False

    def single_prompt(self) -> str | list[int]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return [int(p) for p in prompt]  # type: ignore[arg-type]
        if len(prompt) == 1:
            only = prompt[0]
            return only if isinstance(only, str) else [int(p) for p in only]  # type: ignore[union-attr]
        raise OpenAIError(400, "one prompt per request: send a string or a list of token ids", param="prompt")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise OpenAIError(400, "echo is not supported by agentrt serve", param="echo")
        if self.suffix:
            raise OpenAIError(400, "suffix is not supported by agentrt serve", param="suffix")
        if self.best_of not in (None, 1):
            raise OpenAIError(400, "best_of > 1 is not supported by agentrt serve", param="best_of")


#: The deepest nesting of arrays and objects a request body may have (tool schemas of real agents: tens).
MAX_JSON_DEPTH = 128


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether ``data`` nests arrays and objects more than ``limit`` levels deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, dict | list))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, dict | list))
    return False


def parse_body(raw: bytes, model: type[M]) -> tuple[M, SessionFields]:
    """The request body as ``model`` and agentrt's session fields, or a 400 that says what is wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OpenAIError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder's own guard against a stack overflow
        raise OpenAIError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "the request body must be a JSON object")
    if _deeper_than(data, MAX_JSON_DEPTH):
        # Within the decoder's guard, but what reads it next (templates, schema compilers) recurses too.
        raise OpenAIError(400, f"the request body is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        return model.model_validate(data), SessionFields.model_validate(data)
    except RecursionError:
        raise OpenAIError(400, "the request body is nested too deeply") from None
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{where or 'body'}: {first['msg']}", param=where) from None


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def _tool_calls_body(tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    return [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(dict(arguments))}}
        for call_id, name, arguments in tool_calls
    ]


def chat_response(
    response_id: str,
    model: str,
    *,
    content: str | None,
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any]]],
    finish_reason: str | None,
    usage: dict[str, Any],
    created: int | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = _tool_calls_body(tool_calls)
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def chat_chunk(
    response_id: str,
    model: str,
    created: int,
    *,
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    tool_calls: Sequence[tuple[int, str, str, Mapping[str, Any]]] = (),
    tool_call_pieces: Sequence[ToolCallDelta] = (),
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` the final usage chunk (no choices).

    ``tool_calls`` are whole calls as (index, id, name, arguments);
    ``tool_call_pieces`` pieces of calls as they stream: a call's first
    piece carries its id, type and name, later ones its arguments' text.
    """
    chunk: dict[str, Any] = {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": model}
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
        return chunk
    body = dict(delta or {})
    items = [
        {"index": index, **call}
        for index, call in zip((c[0] for c in tool_calls), _tool_calls_body([c[1:] for c in tool_calls]), strict=True)
    ]
    for piece in tool_call_pieces:
        item: dict[str, Any] = {"index": piece.index}
        if piece.id is not None:
            item.update(id=piece.id, type="function")
        function: dict[str, Any] = {"arguments": piece.arguments}
        if piece.name is not None:
            function = {"name": piece.name, **function}
        item["function"] = function
        items.append(item)
    if items:
        body["tool_calls"] = items
    chunk["choices"] = [{"index": 0, "delta": body, "finish_reason": finish_reason, "logprobs": None}]
    return chunk


def completion_response(
    response_id: str, model: str, *, text: str, finish_reason: str | None, usage: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


def completion_chunk(
    response_id: str,
    model: str,
    created: int,
    *,
    text: str = "",
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    chunk: dict[str, Any] = {"id": response_id, "object": "text_completion", "created": created, "model": model}
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
        return chunk
    chunk["choices"] = [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]
    return chunk

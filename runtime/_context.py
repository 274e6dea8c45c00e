"""The runtime's implementation of :class:`workflows.Context`.

One :class:`RuntimeContext` exists per running node body (the workflow
itself, each step attempt's body, each agent loop).  It records every piece of
work started through it as a node of the program's DAG, with ``after`` edges
to the sibling nodes that finished before it started.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from telemetry import names, set_error
from toolbridge import Tool, run_tool
from workflows import (
    Agent,
    AgentResult,
    Context,
    LLMReply,
    StepCall,
    StepFailed,
    ToolCall,
    ToolChoice,
    ToolMessage,
    render_tool_value,
)

from ._engines._base import ChatPrompt, Completion, SamplingOptions, TokenPrompt
from ._events import StepFinished, StepStarted, ToolCallFinished, ToolCallStarted
from ._program import Node, NodeKind, Program
from ._toolcalls import ToolPrompt, parse_reply
from ._tracing import agent_span, end_agent, end_tool, step_span, tool_span

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["RuntimeContext", "normalize_messages"]

T = TypeVar("T")

#: Seconds to wait before retry n (n = 1, 2, ...) of a failed step: 0.1, 0.2, 0.4 ... capped at 2.
_RETRY_BACKOFF_S = (0.1, 2.0)


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


class RuntimeContext(Context):
    """A workflow context bound to one program and one enclosing node."""

    def __init__(self, runtime: Runtime, program: Program, node: Node | None) -> None:
        self._runtime = runtime
        self.program = program
        self.node = node
        self._finished_since_start: list[str] = []
        self._after: tuple[str, ...] = ()

    @property
    def program_id(self) -> str:
        return self.program.id

    # -- DAG bookkeeping -----------------------------------------------------

    def _open(self, kind: NodeKind, name: str) -> Node:
        if self._finished_since_start:
            self._after = tuple(self._finished_since_start)
            self._finished_since_start.clear()
        return self.program.add_node(kind, name, parent=self.node.id if self.node else None, after=self._after)

    def _close(self, node: Node, *, ok: bool, error: str | None = None) -> None:
        self.program.finish_node(node, ok=ok, error=error)
        self._finished_since_start.append(node.id)

    # -- Context API ---------------------------------------------------------

    async def llm(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        tools: Sequence[object] | None = None,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        json_schema: Mapping[str, Any] | None = None,
        priority: int | None = None,
        ignore_eos: bool = False,
    ) -> LLMReply:
        if tools and json_schema is not None:
            raise ValueError("ctx.llm: pass either tools or json_schema, not both")
        chat = normalize_messages(messages)
        if not chat:
            raise ValueError("ctx.llm: messages must not be empty")
        tool_prompt: ToolPrompt | None = None
        schema = json_schema
        if tools:
            tool_prompt = ToolPrompt(self._runtime.tools_for(tools))
            chat = tool_prompt.with_system(chat)
            schema = tool_prompt.schema(tool_choice, max_tokens, parallel_tool_calls=parallel_tool_calls)
        sampling = SamplingOptions(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=tuple(stop),
            ignore_eos=ignore_eos,
            json_schema=schema,
        )
        with self._llm_node() as node:
            completion = await self._runtime._generate(
                self.program, node, ChatPrompt.of(chat), sampling, requested_priority=priority
            )
            usage = node.usage  # recorded by the runtime as the completion arrived
            text, error = completion.text, None
            calls: tuple[ToolCall, ...] = ()
            if tool_prompt is not None:
                parsed = parse_reply(
                    completion.text, finish_reason=completion.finish_reason, call_id_prefix=f"call-{node.id}"
                )
                text, calls, error = parsed.text, parsed.tool_calls, parsed.error
            return LLMReply(
                text=text,
                tool_calls=calls,
                usage=usage,
                finish_reason=completion.finish_reason,
                model=completion.model,
                engine=completion.engine,
                raw_text=completion.text,
                tool_call_error=error,
                ttft_s=completion.ttft_s,
                latency_s=completion.e2e_s,
            )

    async def llm_tokens(
        self,
        prompt_token_ids: Sequence[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        priority: int | None = None,
    ) -> Completion:
        """One LLM call on a prompt given as token ids; returns the engine's :class:`Completion`.

        The token-level twin of :meth:`llm`, through the same policy,
        dispatch, failover and bookkeeping; the completion carries the
        generated ``token_ids``.  Trace replay drives engines with it.
        """
        if not prompt_token_ids:
            raise ValueError("ctx.llm_tokens: the prompt must not be empty")
        sampling = SamplingOptions(max_tokens=max_tokens, temperature=temperature, ignore_eos=ignore_eos)
        with self._llm_node() as node:
            return await self._runtime._generate(
                self.program, node, TokenPrompt(tuple(prompt_token_ids)), sampling, requested_priority=priority
            )

    @contextlib.contextmanager
    def _llm_node(self) -> Iterator[Node]:
        """The DAG node of one LLM call: opened now, closed as failed unless the block completes."""
        node = self._open(NodeKind.LLM, "chat")
        ok = False
        try:
            yield node
            ok = True
        finally:
            self._close(node, ok=ok, error=None if ok else "llm call failed")

    async def gather(self, *aws: Awaitable[T]) -> list[T]:
        results: list[Any] = [None] * len(aws)

        async def run_one(index: int, aw: Awaitable[T]) -> None:
            results[index] = await aw

        try:
            async with anyio.create_task_group() as tg:
                for i, aw in enumerate(aws):
                    tg.start_soon(run_one, i, aw)
        except BaseExceptionGroup as group:
            # Surface the first real failure as itself (siblings were
            # cancelled because of it); keep a group only for several.
            errors = [e for e in group.exceptions if isinstance(e, Exception)]
            if len(errors) == 1 and len(group.exceptions) == 1:
                raise errors[0] from None
            raise
        return results

    async def call_tool(self, call: ToolCall, tools: Sequence[object]) -> ToolMessage:
        specs = {t.name: t for t in self._runtime.tools_for(tools)}
        node = self._open(NodeKind.TOOL, call.name)
        program = self.program
        program.tool_calls += 1
        program.emit(
            ToolCallStarted(
                program_id=program.id,
                t=program.elapsed(),
                node_id=node.id,
                name=call.name,
                call_id=call.id,
                arguments=call.arguments,
            )
        )
        message: ToolMessage | None = None
        with tool_span(call) as span:
            try:
                message = await self._execute_tool(call, specs, node)
                end_tool(span, message, node.attributes.get("usage"))
                return message
            finally:
                ok = message is not None and message.ok
                self._close(node, ok=ok, error=None if ok else (message.content if message else "cancelled"))
                program.emit(
                    ToolCallFinished(
                        program_id=program.id,
                        t=program.elapsed(),
                        node_id=node.id,
                        name=call.name,
                        call_id=call.id,
                        ok=ok,
                        duration_s=node.duration_s or 0.0,
                        error_kind=message.error_kind if message else "cancelled",
                    )
                )

    async def _execute_tool(self, call: ToolCall, specs: Mapping[str, Tool], node: Node) -> ToolMessage:
        spec = specs.get(call.name)
        if spec is None:
            return ToolMessage(
                call.id,
                call.name,
                f"error (unknown_tool): there is no tool {call.name!r}; tools: {', '.join(specs)}",
                ok=False,
                error_kind="unknown_tool",
            )
        result = await run_tool(spec, call.arguments)
        node.attributes["usage"] = result.usage
        if result.ok:
            return ToolMessage(call.id, call.name, render_tool_value(result.value), value=result.value)
        assert result.error is not None
        return ToolMessage(
            call.id,
            call.name,
            f"error ({result.error.kind}): {result.error.message}",
            ok=False,
            error_kind=result.error.kind,
        )

    async def run_step(self, call: StepCall[T]) -> T:
        step = call.step
        program = self.program
        node = self._open(NodeKind.STEP, step.name)
        timeout = step.timeout_s if step.timeout_s is not None else math.inf
        error: str | None = "cancelled"
        with step_span(step) as span:
            try:
                for attempt in range(1, step.retries + 2):
                    node.attempts = attempt
                    program.emit(
                        StepStarted(
                            program_id=program.id, t=program.elapsed(), node_id=node.id, name=step.name, attempt=attempt
                        )
                    )
                    body = RuntimeContext(self._runtime, program, node)
                    try:
                        with anyio.fail_after(timeout):
                            value: T = await step.fn(body, *call.args, **call.kwargs)
                    except Exception as exc:
                        cause = exc
                        if isinstance(exc, TimeoutError) and not str(exc):
                            cause = TimeoutError(f"timed out after {step.timeout_s} s")
                            cause.__cause__ = exc
                        error = f"{type(cause).__name__}: {cause}"
                        if span.is_recording():
                            span.add_event("attempt failed", {"attempt": attempt, "error": error})
                        if attempt > step.retries or not isinstance(exc, step.retry_on):
                            set_error(span, type(cause).__qualname__, error)  # the cause, not StepFailed
                            raise StepFailed(step.name, attempt, cause) from cause
                        await anyio.sleep(min(_RETRY_BACKOFF_S[0] * 2 ** (attempt - 1), _RETRY_BACKOFF_S[1]))
                        continue
                    error = None
                    return value
                raise AssertionError("unreachable")  # the loop returns or raises
            finally:
                span.set_attribute(names.AGENTRT_STEP_ATTEMPTS, node.attempts)
                self._close(node, ok=error is None, error=error)
                program.emit(
                    StepFinished(
                        program_id=program.id,
                        t=program.elapsed(),
                        node_id=node.id,
                        name=step.name,
                        ok=error is None,
                        duration_s=node.duration_s or 0.0,
                        attempts=node.attempts,
                        error=error,
                    )
                )

    async def run_agent(self, agent: Agent, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        node = self._open(NodeKind.AGENT, agent.name)
        ok = False
        with agent_span(agent) as span:
            try:
                result = await agent.execute(RuntimeContext(self._runtime, self.program, node), task)
                node.usage = result.usage
                node.attributes["turns"] = len(result.turns)
                node.attributes["stopped"] = result.stopped
                end_agent(span, result)
                ok = True
                return result
            finally:
                self._close(node, ok=ok, error=None if ok else "agent failed")


def tool_specs(cache: dict[object, Tool], tools: Sequence[object]) -> tuple[Tool, ...]:
    """Tool objects for ``tools`` (functions become :class:`toolbridge.Tool` once, then cached)."""
    from toolbridge import as_tool

    specs = []
    for t in tools:
        spec = cache.get(t)
        if spec is None:
            spec = cache[t] = as_tool(t)
        specs.append(spec)
    return tuple(specs)

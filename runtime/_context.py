"""The runtime's implementation of :class:`workflows.Context`.

One :class:`RuntimeContext` exists per running node body (the workflow
itself, each step attempt's body, each agent loop).  Every piece of work
started through it is a node of the program's DAG (:func:`open_node`), with
``after`` edges to the sibling nodes that finished before it started.  LLM
calls go to the :class:`~runtime._dispatch.Dispatcher`, which owns them from
there; tool calls run through ``toolbridge`` and are announced to the
dispatcher (and so to the policy) as they start and finish.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from telemetry import names, set_error
from toolbridge import ErrorKind, ToolSet
from workflows import (
    Agent,
    AgentResult,
    Context,
    LLMReply,
    StepCall,
    StepFailed,
    TokenReply,
    ToolCall,
    ToolChoice,
    ToolLike,
    ToolMessage,
)

from ._clock import now
from ._dispatch import Dispatcher
from ._engines._base import ChatPrompt, Completion, Prompt, SamplingOptions, TokenPrompt
from ._events import StepFinished, StepStarted, ToolCallFinished, ToolCallStarted
from ._nodes import DagCursor, NodeScope, open_node
from ._policies import CallInfo
from ._program import Node, NodeKind, Program
from ._tool_messages import repeated_message, tool_message
from ._toolcalls import ToolPrompt, normalize_messages, parse_reply
from ._tracing import agent_span, chat_span, end_agent, step_span

__all__ = ["RuntimeContext"]

T = TypeVar("T")

#: Seconds to wait before retry n (n = 1, 2, ...) of a failed step: 0.1, 0.2, 0.4 ... capped at 2.
_RETRY_BACKOFF_S = (0.1, 2.0)


def _call_key(call: ToolCall) -> tuple[str, str]:
    return call.name, json.dumps(call.arguments, sort_keys=True, default=str)


class RuntimeContext(Context):
    """A workflow context bound to one program and one enclosing node (``None``: the workflow body)."""

    def __init__(self, dispatcher: Dispatcher, program: Program, node: Node | None) -> None:
        self._dispatcher = dispatcher
        self.program = program
        self.node = node
        self._cursor = DagCursor(program, node)
        # Tool calls that succeeded through this context (one agent run), for reuse_results.
        self._succeeded: dict[tuple[str, str], ToolMessage] = {}

    @property
    def program_id(self) -> str:
        return self.program.id

    def _child(self, node: Node) -> RuntimeContext:
        return RuntimeContext(self._dispatcher, self.program, node)

    # -- LLM calls -------------------------------------------------------------

    async def llm(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        tools: Sequence[ToolLike] | None = None,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        json_schema: Mapping[str, Any] | None = None,
        priority: int | None = None,
        ignore_eos: bool = False,
        stage: str | None = None,
    ) -> LLMReply:
        if tools and json_schema is not None:
            raise ValueError("ctx.llm: pass either tools or json_schema, not both")
        chat = normalize_messages(messages)
        if not chat:
            raise ValueError("ctx.llm: messages must not be empty")
        tool_prompt: ToolPrompt | None = None
        schema = json_schema
        if tools:
            tool_prompt = ToolPrompt(tuple(ToolSet(tools).values()))
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
        completion, node = await self._generate(ChatPrompt.of(chat), sampling, stage=stage, priority=priority)
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
            usage=node.usage,
            finish_reason=completion.finish_reason,
            model=completion.model,
            engine=completion.engine,
            raw_text=completion.text,
            tool_call_error=error,
            ttft_s=completion.ttft_s,
            latency_s=completion.e2e_s,
            queued_s=completion.queued_s,
        )

    async def llm_tokens(
        self,
        prompt_token_ids: Sequence[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        priority: int | None = None,
        stage: str | None = None,
    ) -> TokenReply:
        if not prompt_token_ids:
            raise ValueError("ctx.llm_tokens: the prompt must not be empty")
        sampling = SamplingOptions(max_tokens=max_tokens, temperature=temperature, ignore_eos=ignore_eos)
        prompt = TokenPrompt(tuple(prompt_token_ids))
        completion, node = await self._generate(prompt, sampling, stage=stage, priority=priority)
        return TokenReply(
            token_ids=completion.token_ids,
            usage=node.usage,
            finish_reason=completion.finish_reason,
            model=completion.model,
            engine=completion.engine,
            ttft_s=completion.ttft_s,
            latency_s=completion.e2e_s,
            queued_s=completion.queued_s,
        )

    async def _generate(
        self, prompt: Prompt, sampling: SamplingOptions, *, stage: str | None, priority: int | None
    ) -> tuple[Completion, Node]:
        """One LLM call as a node of the DAG, handed to the dispatcher; its usage is on the node."""
        program = self.program
        dispatcher = self._dispatcher
        with open_node(
            self._cursor,
            NodeKind.LLM,
            "chat",
            span=chat_span(program, sampling, dispatcher.model),
            failure="llm call failed",
        ) as scope:
            if stage is None and self.node is not None:
                stage = self.node.name  # the enclosing step or agent
            call = CallInfo(
                program, scope.node, prompt, sampling, stage=stage, requested_priority=priority, arrived_s=now()
            )
            return await dispatcher.generate(call, scope.span), scope.node

    # -- concurrency -------------------------------------------------------------

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

    # -- tools ---------------------------------------------------------------------

    async def call_tool(self, call: ToolCall, tools: Sequence[ToolLike], *, reuse_results: bool = False) -> ToolMessage:
        key = _call_key(call)
        earlier = self._succeeded.get(key) if reuse_results else None
        if earlier is not None:
            return repeated_message(call, earlier)
        toolset = ToolSet(tools)
        program = self.program
        program.tool_calls += 1
        message: ToolMessage | None = None  # once the tool has answered
        wall_s = 0.0

        def started(node: Node) -> ToolCallStarted:
            return ToolCallStarted(
                program_id=program.id,
                t=program.elapsed(),
                node_id=node.id,
                name=call.name,
                call_id=call.id,
                arguments=call.arguments,
            )

        def finished(scope: NodeScope) -> ToolCallFinished:
            return ToolCallFinished(
                program_id=program.id,
                t=program.elapsed(),
                node_id=scope.node.id,
                name=call.name,
                call_id=call.id,
                ok=scope.ok,
                duration_s=scope.node.duration_s or 0.0,
                error_kind=message.error_kind if message is not None else ErrorKind.CANCELLED,
            )

        with open_node(
            self._cursor, NodeKind.TOOL, call.name, started=started, finished=finished, failure=ErrorKind.CANCELLED
        ) as scope:
            node = scope.node
            await self._dispatcher.tool_started(program, node, call)
            try:
                # toolbridge opens the execute_tool span (an unknown name included).
                result = await toolset.run(call.name, call.arguments, call_id=call.id)
                wall_s = result.usage.wall_s
                node.attributes["usage"] = result.usage
                message = tool_message(call, result)
            finally:
                await self._dispatcher.tool_finished(
                    program,
                    node,
                    call,
                    ok=message is not None and message.ok,
                    wall_s=wall_s,
                    error_kind=message.error_kind if message is not None else ErrorKind.CANCELLED,
                )
            if message.ok:
                self._succeeded.setdefault(key, message)
            else:
                scope.fail(message.content)
            return message

    # -- steps and agents ------------------------------------------------------------

    async def run_step(self, call: StepCall[T]) -> T:
        step = call.step
        program = self.program
        timeout = step.timeout_s if step.timeout_s is not None else math.inf

        def finished(scope: NodeScope) -> StepFinished:
            node = scope.node
            return StepFinished(
                program_id=program.id,
                t=program.elapsed(),
                node_id=node.id,
                name=step.name,
                ok=scope.ok,
                duration_s=node.duration_s or 0.0,
                attempts=node.attempts,
                error=scope.error,
            )

        with open_node(
            self._cursor, NodeKind.STEP, step.name, span=step_span(step), finished=finished, failure="cancelled"
        ) as scope:
            node, span = scope.node, scope.span
            try:
                for attempt in range(1, step.retries + 2):
                    node.attempts = attempt
                    program.emit(
                        StepStarted(
                            program_id=program.id, t=program.elapsed(), node_id=node.id, name=step.name, attempt=attempt
                        )
                    )
                    try:
                        with anyio.fail_after(timeout):
                            value: T = await step.fn(self._child(node), *call.args, **call.kwargs)
                    except Exception as exc:
                        cause = exc
                        if isinstance(exc, TimeoutError) and not str(exc):
                            cause = TimeoutError(f"timed out after {step.timeout_s} s")
                            cause.__cause__ = exc
                        error = f"{type(cause).__name__}: {cause}"
                        scope.fail(error)
                        if span.is_recording():
                            span.add_event("attempt failed", {"attempt": attempt, "error": error})
                        if attempt > step.retries or not isinstance(exc, step.retry_on):
                            set_error(span, type(cause).__qualname__, error)  # the cause, not StepFailed
                            raise StepFailed(step.name, attempt, cause) from cause
                        await anyio.sleep(min(_RETRY_BACKOFF_S[0] * 2 ** (attempt - 1), _RETRY_BACKOFF_S[1]))
                        continue
                    scope.error = None  # an earlier attempt's failure is not the step's
                    return value
                raise AssertionError("unreachable")  # the loop returns or raises
            finally:
                span.set_attribute(names.AGENTRT_STEP_ATTEMPTS, node.attempts)

    async def run_agent(self, agent: Agent, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        with open_node(
            self._cursor, NodeKind.AGENT, agent.name, span=agent_span(agent), failure="agent failed"
        ) as scope:
            node = scope.node
            result = await agent.execute(self._child(node), task)
            node.usage = result.usage
            node.attributes["turns"] = len(result.turns)
            node.attributes["stopped"] = result.stopped
            end_agent(scope.span, result)
            return result

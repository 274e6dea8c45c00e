"""The runtime's implementation of :class:`workflows.Context`.

One :class:`RuntimeContext` exists per running node body (the workflow
itself, each step attempt's body, each agent loop).  Every piece of work
started through it is a node of the program's DAG (:func:`open_node`), with
``after`` edges to the sibling nodes that finished before it started.  LLM
calls go to the :class:`~runtime._dispatch.Dispatcher`, which owns them from
there; tool calls run through ``toolbridge`` and are announced to the
dispatcher (and so to the policy) as they start and finish, by a
:class:`~runtime._tool_run.RuntimeToolRun` (also the run ``start_tool``
hands to a tool's external executor).  Journaled work is looked up before
it runs and recorded once it has, through the program's
:class:`~runtime._journal.ProgramJournal` (:meth:`RuntimeContext._journaled`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from telemetry import names, set_error
from toolbridge import ErrorKind, ToolSet
from workflows import (
    Agent,
    AgentOutputError,
    AgentResult,
    Context,
    LLMReply,
    ReplyDelta,
    StepCall,
    StepFailed,
    TokenReply,
    ToolCall,
    ToolChoice,
    ToolLike,
    ToolMessage,
    Usage,
)

from ._backoff import Backoff
from ._clock import now
from ._dispatch import Dispatcher
from ._engines import Completion, Prompt, SamplingOptions, TokenDelta, TokenPrompt
from ._events import StepFinished, StepReplayed, StepStarted
from ._journal import NOT_JOURNALED, Lookup, ProgramJournal
from ._nodes import DagCursor, NodeScope, open_node
from ._policies import CallInfo
from ._program import Node, NodeKind, Program
from ._tool_run import RuntimeToolRun
from ._tools import (
    TOOL_FORMATS,
    ReplyStream,
    ToolFormat,
    repeated_message,
    resolve_tool_format,
    tool_calling,
    tool_message,
    tool_specs,
)
from ._tracing import agent_span, chat_span, end_agent, step_span

__all__ = ["RuntimeContext"]

T = TypeVar("T")

#: How long to wait before each retry of a failed step: 0.1 s, 0.2, 0.4 ... at most 2 s.
_RETRY_BACKOFF = Backoff(first_s=0.1, max_s=2.0)


def _call_id_prefix(node: Node) -> str:
    """The prefix of the ids of an LLM call's tool calls, streamed or parsed whole.

    From the step key: the same on every run, so a resumed program's prompts
    (which quote the ids in tool messages) match the journaled ones.
    """
    return f"call-{node.key}"


def _pieces(
    on_token: Callable[[str], None] | None,
    on_delta: Callable[[ReplyDelta], None] | None,
    reader: Callable[[], ReplyStream] | None,
) -> Callable[[TokenDelta], None] | None:
    """What the dispatcher calls with each streamed piece: ``on_token`` its text, ``on_delta`` the reply read."""
    if on_delta is None or reader is None:
        if on_token is None:
            return None
        text_only = on_token
        return lambda piece: text_only(piece.text)
    stream: ReplyStream | None = None
    deltas = on_delta

    def each(piece: TokenDelta) -> None:
        nonlocal stream
        if on_token is not None:
            on_token(piece.text)
        if stream is None:  # made on the first piece: the call has run, and its node has a key
            stream = reader()
        delta = stream.feed(piece.text, piece.token_ids)
        if delta is not None:
            deltas(delta)

    return each


def _call_key(call: ToolCall) -> tuple[str, str]:
    return call.name, json.dumps(call.arguments, sort_keys=True, default=str)


class RuntimeContext(Context):
    """A workflow context bound to one program and one enclosing node (``None``: the workflow body)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        program: Program,
        node: Node | None,
        *,
        journal: ProgramJournal | None = None,
        key_prefix: str = "",
    ) -> None:
        self._dispatcher = dispatcher
        self.program = program
        self.node = node
        self._journal = journal
        self._cursor = DagCursor(program, node, key_prefix)
        # Tool calls that succeeded through this context (one agent run), for reuse_results.
        self._succeeded: dict[tuple[str, str], ToolMessage] = {}

    @property
    def program_id(self) -> str:
        return self.program.id

    def _child(self, node: Node, attempt: int = 1) -> RuntimeContext:
        # A retried step's attempts are separate runs of its body: their work
        # is keyed apart, so a retry does not replay the failed attempt's results.
        prefix = f"{node.key}/" if attempt == 1 else f"{node.key}@{attempt}/"
        return RuntimeContext(self._dispatcher, self.program, node, journal=self._journal, key_prefix=prefix)

    # -- the journal -------------------------------------------------------------

    def _journaled(
        self,
        node: Node,
        *inputs: object,
        idempotency_key: str | None = None,
        llm_call: tuple[Prompt, SamplingOptions] | None = None,
    ) -> Lookup:
        """What the journal holds for ``node``'s work on ``inputs`` (an LLM call's: its prompt and sampling options).

        A result found is announced as replayed (:class:`StepReplayed`); the
        caller returns it instead of running the work, or runs the work and
        records its result with :meth:`Lookup.record`.
        """
        journal = self._journal
        if journal is None:
            return NOT_JOURNALED
        kind = node.kind.value
        if llm_call is not None:
            lookup = journal.look_up_llm(node.key, kind, node.name, *llm_call)
        else:
            lookup = journal.look_up(node.key, kind, node.name, *inputs, idempotency_key=idempotency_key)
        if lookup.found:
            node.attributes["replayed"] = True
            program = self.program
            program.emit(
                StepReplayed(program_id=program.id, t=program.elapsed(), node_id=node.id, kind=kind, name=node.name)
            )
        return lookup

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
        timeout_s: float | None = None,
        retries: int | None = None,
        tool_format: ToolFormat = "auto",
        tool_parser: str | None = None,
        on_token: Callable[[str], None] | None = None,
        on_delta: Callable[[ReplyDelta], None] | None = None,
        extra_sampling: Mapping[str, Any] | None = None,
    ) -> LLMReply:
        if tools and json_schema is not None:
            raise ValueError("ctx.llm: pass either tools or json_schema, not both")
        if tool_format not in TOOL_FORMATS:
            raise ValueError(f"ctx.llm: tool_format must be one of {', '.join(TOOL_FORMATS)}, got {tool_format!r}")
        if not messages:
            raise ValueError("ctx.llm: messages must not be empty")
        specs = tool_specs(tools) if tools else ()
        native = None
        if specs:
            # Every engine of one runtime serves one model: the prompt is rendered for it
            # whichever engine the policy then picks.
            template = await self._dispatcher.tool_template()
            native = resolve_tool_format(tool_format, template, tool_parser=tool_parser, model=self._dispatcher.model)
        calling = tool_calling(
            specs,
            native,
            tool_choice=tool_choice,
            parallel_tool_calls=parallel_tool_calls,
            max_tokens=max_tokens,
            json_schema=json_schema,
        )
        prepared = calling.prepare(messages)
        sampling = SamplingOptions(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=tuple(stop),
            ignore_eos=ignore_eos,
            json_schema=prepared.json_schema,
            structural_tag=prepared.structural_tag,
            extra=dict(extra_sampling or {}),
        )
        started: list[Node] = []  # the call's node, once it runs: its key names the calls' ids
        completion, node = await self._generate(
            prepared.prompt,
            sampling,
            stage=stage,
            priority=priority,
            timeout_s=timeout_s,
            retries=retries,
            on_piece=_pieces(on_token, on_delta, lambda: calling.stream(lambda: _call_id_prefix(started[0]))),
            on_node=started.append,
        )
        reply = calling.parse(
            completion.text, finish_reason=completion.finish_reason, call_id_prefix=_call_id_prefix(node)
        )
        return LLMReply(
            text=reply.text,
            tool_calls=reply.tool_calls,
            usage=node.usage,
            finish_reason=completion.finish_reason,
            model=completion.model,
            engine=completion.engine,
            raw_text=completion.text,
            tool_call_error=reply.error,
            tool_format=calling.tool_format,
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
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        priority: int | None = None,
        stage: str | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        on_token: Callable[[str], None] | None = None,
        extra_sampling: Mapping[str, Any] | None = None,
    ) -> TokenReply:
        if not prompt_token_ids:
            raise ValueError("ctx.llm_tokens: the prompt must not be empty")
        sampling = SamplingOptions(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=tuple(stop),
            ignore_eos=ignore_eos,
            extra=dict(extra_sampling or {}),
        )
        prompt = TokenPrompt(tuple(prompt_token_ids))
        completion, node = await self._generate(
            prompt,
            sampling,
            stage=stage,
            priority=priority,
            timeout_s=timeout_s,
            retries=retries,
            on_piece=_pieces(on_token, None, None),
        )
        return TokenReply(
            token_ids=completion.token_ids,
            text=completion.text,
            usage=node.usage,
            finish_reason=completion.finish_reason,
            model=completion.model,
            engine=completion.engine,
            ttft_s=completion.ttft_s,
            latency_s=completion.e2e_s,
            queued_s=completion.queued_s,
        )

    async def _generate(
        self,
        prompt: Prompt,
        sampling: SamplingOptions,
        *,
        stage: str | None,
        priority: int | None,
        timeout_s: float | None,
        retries: int | None,
        on_piece: Callable[[TokenDelta], None] | None = None,
        on_node: Callable[[Node], None] | None = None,
    ) -> tuple[Completion, Node]:
        """One LLM call as a node of the DAG, handed to the dispatcher; its usage is on the node.

        ``on_piece`` gets each piece the engine streams; ``on_node`` the call's node before it runs.
        """
        program = self.program
        dispatcher = self._dispatcher
        with open_node(
            self._cursor,
            NodeKind.LLM,
            "chat",
            span=chat_span(program, sampling, dispatcher.model),
            failure="llm call failed",
        ) as scope:
            node = scope.node
            if on_node is not None:
                on_node(node)
            journaled = self._journaled(node, llm_call=(prompt, sampling))
            if journaled.found:
                completion: Completion = journaled.value
                node.engine = completion.engine
                node.usage = Usage(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens)
                program.usage = program.usage + node.usage
                scope.span.set_attribute(names.AGENTRT_REPLAYED, True)
                return completion, node
            if stage is None and self.node is not None:
                stage = self.node.name  # the enclosing step or agent
            call = CallInfo(
                program,
                scope.node,
                prompt,
                sampling,
                stage=stage,
                requested_priority=priority,
                arrived_s=now(),
                timeout_s=timeout_s,
                retries=retries,
            )
            completion = await dispatcher.generate(call, scope.span, on_piece=on_piece)
            # The prompt's ids are the engine's rendering of the journaled prompt: not kept twice.
            await journaled.record(dataclasses.replace(completion, prompt_token_ids=None))
            return completion, node

    # -- concurrency -------------------------------------------------------------

    async def gather(self, *aws: Awaitable[T]) -> list[T]:
        results: list[Any] = [None] * len(aws)
        cursor = self._cursor
        branch, number = cursor.fork()

        async def run_one(index: int, aw: Awaitable[T]) -> None:
            # Each awaitable is a branch with step keys of its own: stable
            # whatever order the branches run and finish in.
            cursor.enter_branch(branch, number, index)
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
        run = RuntimeToolRun(self._dispatcher, self._cursor, call)
        try:
            message = await self._run_tool(run, toolset)
        finally:
            if not run.ended:  # it raised, or was cancelled, before the tool answered
                await run.cancel(ErrorKind.CANCELLED)
        if message.ok:
            self._succeeded.setdefault(key, message)
        return message

    async def _run_tool(self, run: RuntimeToolRun, toolset: ToolSet) -> ToolMessage:
        """The journaled message of ``run``'s call, else the tool's, run by toolbridge; ``run`` ended with it."""
        call, node = run.call, run.node
        # The key the tool's side effects can be made idempotent by: the same when a resumed program runs it again.
        idempotency_key = f"{self.program.id}/{node.key}"
        journaled = self._journaled(node, call.arguments, idempotency_key=idempotency_key)
        if journaled.found:
            # The model's call id may differ on replay only if its reply did, which the LLM step checks.
            message: ToolMessage = dataclasses.replace(journaled.value, call_id=call.id)
            await run.finish(message)  # never announced: the policy hears of neither end
            return message
        await run.announce()
        # toolbridge opens the execute_tool span (an unknown name included).
        result = await toolset.run(call.name, call.arguments, call_id=call.id, idempotency_key=idempotency_key)
        node.attributes["usage"] = result.usage
        message = tool_message(call, result)
        await journaled.record(message)
        await run.finish(message, wall_s=result.usage.wall_s)
        return message

    async def start_tool(self, call: ToolCall) -> RuntimeToolRun:
        run = RuntimeToolRun(self._dispatcher, self._cursor, call)
        announced = False
        try:
            await run.announce()
            announced = True
        finally:
            if not announced:
                await run.cancel(ErrorKind.CANCELLED)
        return run

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
            journaled = self._journaled(node, list(call.args), call.kwargs)
            if journaled.found:
                span.set_attribute(names.AGENTRT_REPLAYED, True)
                replayed: T = journaled.value
                return replayed
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
                            value: T = await step.fn(self._child(node, attempt), *call.args, **call.kwargs)
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
                        await anyio.sleep(_RETRY_BACKOFF.delay_s(attempt))
                        continue
                    scope.error = None  # an earlier attempt's failure is not the step's
                    await journaled.record(value)
                    return value
                raise AssertionError("unreachable")  # the loop returns or raises
            finally:
                span.set_attribute(names.AGENTRT_STEP_ATTEMPTS, node.attempts)

    async def run_agent(self, agent: Agent, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        with open_node(
            self._cursor, NodeKind.AGENT, agent.name, span=agent_span(agent), failure="agent failed"
        ) as scope:
            node = scope.node
            journaled = self._journaled(node, agent.instructions, agent.tool_names, task)
            if journaled.found:
                result: AgentResult = journaled.value
                scope.span.set_attribute(names.AGENTRT_REPLAYED, True)
            else:
                try:
                    result = await agent.execute(self._child(node), task)
                except AgentOutputError as exc:
                    scope.fail(f"AgentOutputError: {exc}")  # the node says why, not just "agent failed"
                    raise
                await journaled.record(result)
            node.usage = result.usage
            node.attributes["turns"] = len(result.turns)
            node.attributes["stopped"] = result.stopped
            end_agent(scope.span, result)
            return result

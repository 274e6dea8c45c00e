"""The runtime's spans: what a trace of one program shows, in GenAI names.

One trace per program: ``invoke_workflow {name}`` at the root, ``step {name}``
per step, ``invoke_agent {name}`` per agent loop, ``chat {model}`` per LLM call
and ``execute_tool {name}`` per tool call (that one opened by
``toolbridge.run_tool`` itself, so direct calls are traced too), nested as the
work was.  Span
parenting follows the OpenTelemetry context (contextvars), which anyio copies
into every task ``ctx.gather`` starts.  Each function returns a context
manager from :func:`telemetry.span`; while tracing is off it yields the
non-recording span and the ``is_recording()`` checks skip all attribute work.

An agent that gives up on its model's output (:class:`workflows.AgentOutputError`)
leaves its ``invoke_agent`` span failed with the reason: ERROR status whose
message quotes the last problems, ``error.type`` ``AgentOutputError``,
``agentrt.agent.stopped`` ``max_repairs`` and the repairs it made, so a
trace viewer shows why the program failed where it failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind

import telemetry
from telemetry import names as n
from workflows import AgentOutputError

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from workflows import Agent, AgentResult, Step

    from ._engines import Completion, SamplingOptions
    from ._program import Program

__all__ = [
    "agent_span",
    "chat_span",
    "end_agent",
    "end_chat",
    "end_program",
    "fail_agent",
    "program_span",
    "step_span",
]


def program_span(program: Program) -> AbstractContextManager[Span]:
    """The root span of ``program``; starts at its submission."""
    attributes: dict[str, str | int | float] = {
        n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_WORKFLOW,
        n.GEN_AI_WORKFLOW_NAME: program.workflow,
        n.GEN_AI_CONVERSATION_ID: program.id,
        n.AGENTRT_PROGRAM_PRIORITY: program.priority,
    }
    if program.deadline_s is not None:
        attributes[n.AGENTRT_PROGRAM_DEADLINE_S] = program.deadline_s
    return telemetry.span(
        f"{n.OP_INVOKE_WORKFLOW} {program.workflow}", attributes, root=True, start_time_s=program.submitted_wall
    )


def end_program(span: Span, program: Program) -> None:
    if not span.is_recording():
        return
    span.set_attributes(
        {
            n.AGENTRT_PROGRAM_STATE: program.state.value,
            n.AGENTRT_PROGRAM_LLM_CALLS: program.llm_calls,
            n.AGENTRT_PROGRAM_TOOL_CALLS: program.tool_calls,
            n.GEN_AI_USAGE_INPUT_TOKENS: program.usage.prompt_tokens,
            n.GEN_AI_USAGE_OUTPUT_TOKENS: program.usage.completion_tokens,
            n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: program.usage.cached_tokens,
        }
    )
    if program.error is not None:
        telemetry.set_error(span, type(program.error).__qualname__, str(program.error))


def step_span(step: Step[..., object]) -> AbstractContextManager[Span]:
    attributes: dict[str, str | int | float] = {n.AGENTRT_STEP_NAME: step.name, n.AGENTRT_STEP_RETRIES: step.retries}
    if step.timeout_s is not None:
        attributes[n.AGENTRT_STEP_TIMEOUT_S] = step.timeout_s
    return telemetry.span(f"step {step.name}", attributes)


@contextlib.contextmanager
def agent_span(agent: Agent) -> Iterator[Span]:
    """``invoke_agent {name}``; an :class:`AgentOutputError` leaving it is recorded by :func:`fail_agent`."""
    with telemetry.span(
        f"{n.OP_INVOKE_AGENT} {agent.name}",
        {n.GEN_AI_OPERATION_NAME: n.OP_INVOKE_AGENT, n.GEN_AI_AGENT_NAME: agent.name},
    ) as span:
        try:
            yield span
        except AgentOutputError as exc:
            fail_agent(span, exc)
            raise


def fail_agent(span: Span, error: AgentOutputError) -> None:
    """Mark the agent's span failed because its model's output could not be used (the reason as status message)."""
    if not span.is_recording():
        return
    span.set_attributes(
        {
            n.AGENTRT_AGENT_TURNS: error.turns,
            n.AGENTRT_AGENT_STOPPED: "max_repairs",
            n.AGENTRT_AGENT_REPAIRS: len(error.problems),
        }
    )
    telemetry.set_error(span, type(error).__qualname__, str(error))
    span.record_exception(error)


def end_agent(span: Span, result: AgentResult) -> None:
    if span.is_recording():
        span.set_attributes(
            {
                n.AGENTRT_AGENT_TURNS: len(result.turns),
                n.AGENTRT_AGENT_STOPPED: str(result.stopped),
                n.AGENTRT_AGENT_REPAIRS: result.repairs,
                n.GEN_AI_USAGE_INPUT_TOKENS: result.usage.prompt_tokens,
                n.GEN_AI_USAGE_OUTPUT_TOKENS: result.usage.completion_tokens,
                n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: result.usage.cached_tokens,
            }
        )


def chat_span(program: Program, sampling: SamplingOptions, model: str) -> AbstractContextManager[Span]:
    """``chat {model}``: ``model`` is the first candidate engine's; :func:`end_chat` records the one that served."""
    if not telemetry.is_enabled():
        return telemetry.span("chat")
    attributes: dict[str, str | int | float] = {
        n.GEN_AI_OPERATION_NAME: n.OP_CHAT,
        n.GEN_AI_PROVIDER_NAME: n.PROVIDER_VLLM,
        n.GEN_AI_REQUEST_MODEL: model,
        n.GEN_AI_CONVERSATION_ID: program.id,
        n.GEN_AI_REQUEST_MAX_TOKENS: sampling.max_tokens,
        n.GEN_AI_REQUEST_TEMPERATURE: sampling.temperature,
        n.GEN_AI_REQUEST_TOP_P: sampling.top_p,
    }
    if sampling.seed is not None:
        attributes[n.GEN_AI_REQUEST_SEED] = sampling.seed
    return telemetry.span(f"{n.OP_CHAT} {model}", attributes, kind=SpanKind.CLIENT)


def end_chat(span: Span, completion: Completion, *, priority: int, attempts: int, held_s: float | None = None) -> None:
    if not span.is_recording():
        return
    attributes: dict[str, str | int | float | list[str]] = {
        n.GEN_AI_RESPONSE_ID: completion.request_id,
        n.GEN_AI_RESPONSE_MODEL: completion.model,
        n.GEN_AI_USAGE_INPUT_TOKENS: completion.prompt_tokens,
        n.GEN_AI_USAGE_OUTPUT_TOKENS: completion.completion_tokens,
        n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: completion.cached_tokens,
        n.GEN_AI_RESPONSE_FINISH_REASONS: [completion.finish_reason or "unknown"],
        n.AGENTRT_ENGINE_NAME: completion.engine,
        n.AGENTRT_REQUEST_PRIORITY: priority,
        n.AGENTRT_LLM_ATTEMPTS: attempts,
        n.AGENTRT_RESPONSE_E2E_S: completion.e2e_s,
    }
    if completion.ttft_s is not None:
        attributes[n.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = completion.ttft_s
    if completion.queued_s is not None:
        attributes[n.AGENTRT_REQUEST_QUEUED_S] = completion.queued_s
    if held_s is not None:
        attributes[n.AGENTRT_REQUEST_HELD_S] = held_s
    span.set_attributes(attributes)

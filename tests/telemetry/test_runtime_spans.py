"""The spans of programs run on the runtime: names, nesting, attributes, errors.

Most tests run on the real tiny-model engine (the session ``rt`` fixture);
failover and fan-out nesting are also pinned down on scripted engines.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from pydantic import Field

from runtime import Runtime
from runtime.testing import ScriptedEngine
from telemetry import names as n
from workflows import Agent, Context, StepFailed, ToolCall, step, workflow


def _by_id(spans: Sequence[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {s.context.span_id: s for s in spans}


def _parent(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan | None:
    return None if span.parent is None else _by_id(spans).get(span.parent.span_id)


def _named(spans: Sequence[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


@step(retries=1, timeout_s=60)
async def summarize(ctx: Context, text: str) -> str:
    reply = await ctx.llm([{"role": "user", "content": text}], max_tokens=8, temperature=0.5)
    return reply.text


@workflow(deadline_s=120, priority=2)
async def pipeline(ctx: Context, docs: list[str]) -> list[str]:
    return await ctx.gather(*(summarize(ctx, d) for d in docs))


@pytest.mark.engine
async def test_workflow_step_chat_nest_across_gather(rt: Runtime, spans: InMemorySpanExporter) -> None:
    handle = rt.submit(pipeline, docs=["one", "two", "three"])
    await handle
    program = handle.program
    finished = spans.get_finished_spans()
    (root,) = _named(finished, "invoke_workflow ")
    assert root.name == "invoke_workflow pipeline" and root.parent is None
    assert root.attributes is not None
    assert root.attributes[n.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert root.attributes[n.GEN_AI_CONVERSATION_ID] == program.id
    assert root.attributes[n.AGENTRT_PROGRAM_STATE] == "succeeded"
    assert root.attributes[n.AGENTRT_PROGRAM_DEADLINE_S] == 120
    assert root.attributes[n.GEN_AI_USAGE_INPUT_TOKENS] == program.usage.prompt_tokens > 0
    assert root.status.status_code is StatusCode.UNSET
    # One trace per program.
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}

    steps = _named(finished, "step ")
    chats = _named(finished, "chat ")
    assert [s.name for s in steps] == ["step summarize"] * 3 and len(chats) == 3
    assert all(_parent(s, finished) is root for s in steps)
    # Each chat span sits under its own step (the fan-out ran in three tasks).
    assert sorted(id(_parent(c, finished)) for c in chats) == sorted(id(s) for s in steps)
    for s in steps:
        assert s.attributes is not None
        assert s.attributes[n.AGENTRT_STEP_ATTEMPTS] == 1 and s.attributes[n.AGENTRT_STEP_RETRIES] == 1

    engine = rt.engines[0]
    for c in chats:
        a: dict[str, Any] = dict(c.attributes or {})
        assert c.name == f"chat {engine.model}" and c.kind.name == "CLIENT"
        assert a[n.GEN_AI_OPERATION_NAME] == "chat" and a[n.GEN_AI_PROVIDER_NAME] == "vllm"
        assert a[n.GEN_AI_REQUEST_MODEL] == a[n.GEN_AI_RESPONSE_MODEL] == engine.model
        assert a[n.GEN_AI_REQUEST_MAX_TOKENS] == 8 and a[n.GEN_AI_REQUEST_TEMPERATURE] == 0.5
        assert isinstance(a[n.GEN_AI_USAGE_INPUT_TOKENS], int) and a[n.GEN_AI_USAGE_INPUT_TOKENS] > 0
        assert 0 < a[n.GEN_AI_USAGE_OUTPUT_TOKENS] <= 8
        assert a[n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] >= 0
        assert tuple(a[n.GEN_AI_RESPONSE_FINISH_REASONS]) in {("stop",), ("length",)}
        assert a[n.AGENTRT_ENGINE_NAME] == engine.name and a[n.AGENTRT_REQUEST_PRIORITY] == 2
        assert a[n.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] > 0
        assert n.AGENTRT_REQUEST_QUEUED_S in a and a[n.AGENTRT_LLM_ATTEMPTS] == 1
        assert str(a[n.GEN_AI_RESPONSE_ID]).startswith(program.id)
        # The chat span covers the engine's time: it is at least the measured latency.
        assert c.end_time is not None and c.start_time is not None
        assert (c.end_time - c.start_time) / 1e9 >= a[n.AGENTRT_RESPONSE_E2E_S] * 0.99


def lookup(key: Annotated[str, Field(max_length=8)]) -> str:
    """Look a key up in the catalogue."""
    return f"found {key!r}"


def explode(reason: Annotated[str, Field(max_length=6)]) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"exploded: {reason}")


@pytest.mark.engine
async def test_agent_chat_and_tool_spans(rt: Runtime, spans: InMemorySpanExporter) -> None:
    agent = Agent("Look things up.", tools=[lookup], tool_choice="required", max_turns=2, max_tokens=200, name="cat")

    @workflow
    async def ask(ctx: Context, question: str) -> Any:
        return await agent.run(ctx, question)

    result = await rt.run(ask, question="albums?")
    finished = spans.get_finished_spans()
    (root,) = _named(finished, "invoke_workflow ask")
    (agent_span,) = _named(finished, "invoke_agent ")
    assert agent_span.name == "invoke_agent cat" and _parent(agent_span, finished) is root
    assert agent_span.attributes is not None
    assert agent_span.attributes[n.GEN_AI_AGENT_NAME] == "cat"
    assert agent_span.attributes[n.AGENTRT_AGENT_TURNS] == len(result.turns) == 2
    chats, tools = _named(finished, "chat "), _named(finished, "execute_tool ")
    assert len(chats) == 2 and all(_parent(c, finished) is agent_span for c in chats)
    calls = result.turns[0].reply.tool_calls
    assert len(tools) == len(calls) > 0 and all(_parent(t, finished) is agent_span for t in tools)
    # Parallel tool calls end in any order: each span is matched to its call by the call id.
    by_call_id = {(t.attributes or {}).get(n.GEN_AI_TOOL_CALL_ID): t for t in tools}
    assert set(by_call_id) == {c.id for c in calls}
    tool = by_call_id[calls[0].id]
    a: dict[str, Any] = dict(tool.attributes or {})
    assert tool.name == "execute_tool lookup" and a[n.GEN_AI_TOOL_NAME] == "lookup"
    assert a[n.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert a[n.AGENTRT_TOOL_WALL_S] >= 0 and a[n.AGENTRT_TOOL_OOM_KILLED] is False
    # capture_content is on in the fixture: arguments and result are recorded.
    assert '"key"' in str(a[n.GEN_AI_TOOL_CALL_ARGUMENTS]) and "found" in str(a[n.GEN_AI_TOOL_CALL_RESULT])
    assert tool.status.status_code is StatusCode.UNSET
    # Turn order: every tool ran after the first chat and before the second.
    for t in tools:
        assert chats[0].end_time <= t.start_time and t.end_time <= chats[1].start_time  # type: ignore[operator]


@pytest.mark.engine
async def test_failed_tool_and_failed_step_have_error_status(rt: Runtime, spans: InMemorySpanExporter) -> None:
    @step(retries=1)
    async def breaks(ctx: Context) -> None:
        raise ValueError("no luck")

    @workflow
    async def wf(ctx: Context) -> str:
        message = await ctx.call_tool(ToolCall("c-9", "explode", {"reason": "why"}), [explode])
        await breaks(ctx)
        return message.content

    handle = rt.submit(wf)
    with pytest.raises(StepFailed):
        await handle
    finished = spans.get_finished_spans()
    (tool,) = _named(finished, "execute_tool explode")
    assert tool.status.status_code is StatusCode.ERROR
    assert tool.attributes is not None
    assert tool.attributes[n.ERROR_TYPE] == "exception" and tool.attributes[n.GEN_AI_TOOL_CALL_ID] == "c-9"
    assert "exploded: why" in str(tool.status.description)
    (step_span,) = _named(finished, "step breaks")
    assert step_span.status.status_code is StatusCode.ERROR and step_span.attributes is not None
    assert step_span.attributes[n.ERROR_TYPE] == "ValueError" and step_span.attributes[n.AGENTRT_STEP_ATTEMPTS] == 2
    assert [e.name for e in step_span.events] == ["attempt failed", "attempt failed"]
    (root,) = _named(finished, "invoke_workflow wf")
    assert root.status.status_code is StatusCode.ERROR and root.attributes is not None
    assert root.attributes[n.ERROR_TYPE] == "StepFailed" and root.attributes[n.AGENTRT_PROGRAM_STATE] == "failed"


@workflow
async def two_calls(ctx: Context) -> list[str]:
    async def call(i: int) -> str:
        return (await ctx.llm([{"role": "user", "content": f"q{i}"}], max_tokens=4)).engine

    return await ctx.gather(call(1), call(2))


async def test_failover_is_one_chat_span_and_programs_get_their_own_traces(spans: InMemorySpanExporter) -> None:
    async with Runtime([ScriptedEngine("dead", dies=True), ScriptedEngine("alive")]) as rt:
        await rt.run(two_calls)
        await rt.run(two_calls)
    finished = spans.get_finished_spans()
    roots = _named(finished, "invoke_workflow ")
    assert len(roots) == 2 and len({r.context.trace_id for r in roots}) == 2
    chats = _named(finished, "chat ")
    assert len(chats) == 4 and all(_parent(c, finished) in roots for c in chats)
    for c in chats:
        assert c.attributes is not None and c.attributes[n.AGENTRT_ENGINE_NAME] == "alive"
        assert c.name == "chat scripted" and int(c.attributes[n.AGENTRT_LLM_ATTEMPTS]) in (1, 2)  # type: ignore[arg-type]
        # Each engine choice is an event; a failed engine is one too, before the retry's dispatch.
        events = [(e.name, (e.attributes or {}).get(n.AGENTRT_ENGINE_NAME)) for e in c.events]
        if c.attributes[n.AGENTRT_LLM_ATTEMPTS] == 1:
            assert events == [(n.EVENT_DISPATCH, "alive")]
        else:
            assert events == [
                (n.EVENT_DISPATCH, "dead"),
                (n.EVENT_ENGINE_UNAVAILABLE, "dead"),
                (n.EVENT_DISPATCH, "alive"),
            ]
    assert any(c.attributes and c.attributes[n.AGENTRT_LLM_ATTEMPTS] == 2 for c in chats)

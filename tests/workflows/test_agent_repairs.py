"""``Agent(max_repairs=)``: unusable model output is sent back for repair, up to a limit, then fails clearly.

The counting is pinned down on a scripted context (pure logic); one test runs
the loop on the real tiny-model engine, where replies cut off by
``max_tokens`` cannot be used, and checks the program and its trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import telemetry
from runtime import ProgramFinished, ProgramState, Runtime
from telemetry import names as n
from tests.workflows.fake_context import FakeContext
from workflows import (
    Agent,
    AgentOutputError,
    Context,
    LLMReply,
    ToolCall,
    ToolLike,
    ToolMessage,
    WorkflowDefinitionError,
    WorkflowError,
    workflow,
)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class RefusingContext(FakeContext):
    """Answers tool calls the way toolbridge does for an unknown name, bad arguments or a failing tool."""

    async def call_tool(self, call: ToolCall, tools: Sequence[ToolLike], *, reuse_results: bool = False) -> ToolMessage:
        self.tool_calls.append(call)
        if call.name != "add":
            return ToolMessage(call.id, call.name, f"unknown tool {call.name!r}", ok=False, error_kind="unknown_tool")
        if not all(isinstance(call.arguments.get(k), int) for k in ("a", "b")):
            return ToolMessage(
                call.id, call.name, "a: Input should be a valid integer", ok=False, error_kind="invalid_args"
            )
        if call.arguments["a"] < 0:
            return ToolMessage(call.id, call.name, "ValueError: negative", ok=False, error_kind="exception")
        return ToolMessage(call.id, call.name, str(add(**call.arguments)))


def unusable(raw: str = '{"tool_calls": [{"na') -> LLMReply:
    return LLMReply(text=raw, raw_text=raw, tool_call_error="output cut off by max_tokens")


def calls(*calls: ToolCall) -> LLMReply:
    return LLMReply(text="", tool_calls=calls, raw_text='{"tool_calls": [...]}')


def test_max_repairs_is_validated_at_construction() -> None:
    for bad in (-1, True, 1.5, "3"):
        with pytest.raises(WorkflowDefinitionError, match="max_repairs must be an int >= 0"):
            Agent("x", tools=[add], max_repairs=bad)  # type: ignore[arg-type]
    assert Agent("x", tools=[add], max_repairs=0).max_repairs == 0
    assert Agent("x").max_repairs == 3
    assert issubclass(AgentOutputError, WorkflowError)


async def test_unusable_replies_up_to_the_limit_are_repaired() -> None:
    ctx = FakeContext([unusable(), unusable(), unusable(), LLMReply(text="ok", raw_text='{"answer":"ok"}')])
    result = await Agent("x", tools=[add], max_turns=8, max_repairs=3).run(ctx, "go")
    assert result.answer == "ok" and result.stopped == "answer" and result.repairs == 3
    assert all("could not be used" in c["messages"][-1]["content"] for c in ctx.llm_calls[1:])


async def test_one_past_the_limit_raises_quoting_the_last_problems() -> None:
    replies = [unusable(f'{{"tool_calls": [{{"n{i}') for i in range(4)] + [LLMReply(text="never asked")]
    ctx = FakeContext(replies)
    with pytest.raises(AgentOutputError) as caught:
        await Agent("x", name="fixer", tools=[add], max_turns=8, max_repairs=3).run(ctx, "go")
    error = caught.value
    assert len(ctx.llm_calls) == 4  # no call after the limit was passed
    assert error.agent == "fixer" and error.max_repairs == 3 and error.turns == 4 and len(error.problems) == 4
    message = str(error)
    assert "'fixer' gave up after 4 unusable model outputs in 4 turn(s), more than max_repairs=3" in message
    assert "(and 1 earlier)" in message and "turn 1:" not in message
    for turn in (2, 3, 4):
        assert f"turn {turn}: reply could not be used (output cut off by max_tokens)" in message
    assert '"n3' in message  # the model's own output is quoted
    assert "Raise the agent's max_repairs" in message  # and what to do


async def test_refused_tool_calls_count_and_other_tool_failures_do_not() -> None:
    failing = calls(ToolCall("c0", "add", {"a": -1, "b": 1}))  # the tool raised: not the model's output
    replies = [failing, failing, failing]
    replies += [calls(ToolCall("c1", "subtract", {"a": 1, "b": 1})), calls(ToolCall("c2", "add", {"a": "one", "b": 1}))]
    ctx = RefusingContext(replies)
    with pytest.raises(AgentOutputError) as caught:
        await Agent("x", tools=[add], max_turns=8, max_repairs=1, repeat_calls=True).run(ctx, "go")
    problems = caught.value.problems
    assert len(problems) == 2 and caught.value.turns == 5
    assert problems[0].startswith("turn 4: call of 'subtract' refused (unknown_tool)")
    assert problems[1].startswith("turn 5: call of 'add' refused (invalid_args)")
    assert "valid integer" in problems[1]


async def test_replies_and_refused_calls_share_one_count() -> None:
    ctx = RefusingContext([unusable(), calls(ToolCall("c1", "nope", {})), LLMReply(text="fine")])
    result = await Agent("x", tools=[add], max_turns=4, max_repairs=2).run(ctx, "go")
    assert result.answer == "fine" and result.repairs == 2
    ctx = RefusingContext([unusable(), calls(ToolCall("c1", "nope", {})), LLMReply(text="fine")])
    with pytest.raises(AgentOutputError, match="more than max_repairs=1"):
        await Agent("x", tools=[add], max_turns=4, max_repairs=1).run(ctx, "go")


async def test_max_repairs_zero_fails_on_the_first_unusable_reply() -> None:
    ctx = FakeContext([unusable(), LLMReply(text="never asked")])
    with pytest.raises(AgentOutputError, match="after 1 unusable model outputs in 1 turn"):
        await Agent("x", tools=[add], max_turns=3, max_repairs=0).run(ctx, "go")


# -- on the real engine -------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.configure(exporter, batch=False)
    yield exporter
    telemetry.shutdown()


# Three tokens cannot hold a whole {"tool_calls": [...]} object: every reply is cut off by max_tokens.
truncating = Agent("Add numbers.", tools=[add], tool_choice="required", max_tokens=3, max_turns=6, max_repairs=1)


@workflow
async def add_with_truncated_replies(ctx: Context) -> str:
    return (await truncating.run(ctx, "What is 2 + 3?")).answer


@pytest.mark.engine
async def test_program_fails_with_the_reason_in_its_events_and_trace(rt: Runtime, spans: InMemorySpanExporter) -> None:
    handle = rt.submit(add_with_truncated_replies)
    with pytest.raises(AgentOutputError) as caught:
        await handle
    error = caught.value
    assert error.turns == 2 and len(error.problems) == 2
    assert all("reply could not be used (output cut off by max_tokens)" in p for p in error.problems)
    program = handle.program
    assert program.state is ProgramState.FAILED and program.llm_calls == 2
    finished = [e async for e in handle.events() if isinstance(e, ProgramFinished)]
    assert finished[0].error is not None and finished[0].error.startswith("AgentOutputError: agent 'agent'")

    (agent_span,) = [s for s in spans.get_finished_spans() if s.name == "invoke_agent agent"]
    attributes = dict(agent_span.attributes or {})
    assert agent_span.status.status_code is StatusCode.ERROR
    assert agent_span.status.description == str(error)
    assert attributes[n.ERROR_TYPE] == "AgentOutputError"
    assert attributes[n.AGENTRT_AGENT_STOPPED] == "max_repairs" and attributes["agentrt.agent.repairs"] == 2
    assert attributes[n.AGENTRT_AGENT_TURNS] == 2
    assert [e.name for e in agent_span.events] == ["exception"]
    (root,) = [s for s in spans.get_finished_spans() if s.name.startswith("invoke_workflow ")]
    assert root.status.status_code is StatusCode.ERROR
    assert dict(root.attributes or {})[n.ERROR_TYPE] == "AgentOutputError"

"""The agent loop's branching, on a scripted context (pure logic).

The same loop runs on the real engine in tests/runtime/test_runtime.py.
"""

from __future__ import annotations

import pytest

from tests.workflows.fake_context import FakeContext
from workflows import Agent, LLMReply, ToolCall, WorkflowDefinitionError


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def tool_reply(*calls: ToolCall) -> LLMReply:
    return LLMReply(text="", tool_calls=calls, raw_text='{"tool_calls": [...]}')


async def test_tool_results_are_fed_back_until_an_answer() -> None:
    ctx = FakeContext(
        [tool_reply(ToolCall("c1", "add", {"a": 2, "b": 3})), LLMReply(text="5", raw_text='{"answer":"5"}')]
    )
    agent = Agent("You add.", tools=[add], max_turns=4)
    result = await agent.run(ctx, "2+3?")
    assert result.answer == "5" and result.stopped == "answer"
    assert [c.name for c in ctx.tool_calls] == ["add"]
    second_prompt = ctx.llm_calls[1]["messages"]
    assert second_prompt[-1] == {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "5"}
    assert second_prompt[-2] == {"role": "assistant", "content": '{"tool_calls": [...]}'}
    assert [t.tool_results[0].content for t in result.turns[:1]] == ["5"]


async def test_last_turn_must_answer() -> None:
    ctx = FakeContext([tool_reply(ToolCall("c1", "add", {"a": 1, "b": 1}))] * 2 + [LLMReply(text="done")])
    result = await Agent("x", tools=[add], max_turns=3).run(ctx, "go")
    assert [c["tool_choice"] for c in ctx.llm_calls] == ["auto", "auto", "none"]
    assert result.answer == "done" and len(result.turns) == 3


async def test_malformed_reply_is_fed_back_not_raised() -> None:
    bad = LLMReply(text='{"tool_calls": [{"na', raw_text='{"tool_calls": [{"na', tool_call_error="output cut off")
    ctx = FakeContext([bad, LLMReply(text="ok")])
    result = await Agent("x", tools=[add], max_turns=3).run(ctx, "go")
    assert result.answer == "ok"
    feedback = ctx.llm_calls[1]["messages"][-1]
    assert feedback["role"] == "user" and "could not be used (output cut off)" in feedback["content"]


async def test_malformed_on_last_turn_stops_with_max_turns() -> None:
    bad = LLMReply(text="garbage", tool_call_error="invalid JSON")
    result = await Agent("x", tools=[add], max_turns=1).run(FakeContext([bad]), "go")
    assert result.stopped == "max_turns" and result.answer == "garbage"


def test_agent_declaration_errors() -> None:
    with pytest.raises(WorkflowDefinitionError, match="max_turns"):
        Agent("x", max_turns=0)
    with pytest.raises(WorkflowDefinitionError, match="duplicate tool name"):
        Agent("x", tools=[add, add])
    with pytest.raises(WorkflowDefinitionError, match="tool_choice"):
        Agent("x", tools=[add], tool_choice="subtract")
    with pytest.raises(WorkflowDefinitionError, match="functions or tool objects"):
        Agent("x", tools=[42])


async def test_agent_asks_the_context_to_reuse_results_unless_repeat_calls() -> None:
    # Reusing an identical call's result is the context's job (tested on the
    # runtime in tests/runtime/test_tool_reuse.py); the agent only asks for it.
    call = ToolCall("c1", "add", {"a": 2, "b": 3})
    ctx = FakeContext([tool_reply(call), LLMReply(text="5")])
    await Agent("x", tools=[add], max_turns=4).run(ctx, "go")
    assert ctx.reuse_results == [True]
    ctx2 = FakeContext([tool_reply(call), LLMReply(text="5")])
    await Agent("x", tools=[add], max_turns=4, repeat_calls=True).run(ctx2, "go")
    assert ctx2.reuse_results == [False]

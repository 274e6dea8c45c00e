"""Workflows on the Runtime with the real tiny-model engine."""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
import pytest
from pydantic import Field

from runtime import (
    Event,
    LLMCallFinished,
    NodeKind,
    ProgramCancelledError,
    ProgramFinished,
    ProgramState,
    Runtime,
    RuntimeStateError,
    StepFinished,
    StepStarted,
    TokenGenerated,
    ToolCallFinished,
    ToolCallStarted,
    ToolFinished,
    ToolStarted,
)
from tests.runtime._helpers import wait_until_idle
from workflows import (
    Agent,
    Context,
    StepFailed,
    TokenReply,
    ToolCall,
    ToolMessage,
    WorkflowInputError,
    step,
    workflow,
)

pytestmark = pytest.mark.engine


# -- the contract from the README, as written ---------------------------------


@step(retries=2, timeout_s=60)
async def summarize(ctx: Context, text: str) -> str:
    reply = await ctx.llm([{"role": "user", "content": text}], max_tokens=64)
    return reply.text


@workflow(deadline_s=120)
async def pipeline(ctx: Context, docs: list[str]) -> list[str]:
    return await ctx.gather(*(summarize(ctx, d) for d in docs))


async def test_contract_pipeline_fans_out(rt: Runtime) -> None:
    handle = rt.submit(pipeline, docs=["first document", "second document", "third document"])
    out = await handle
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)
    program = handle.program
    assert program.state is ProgramState.SUCCEEDED and program.deadline_s == 120
    steps = [n for n in program.nodes.values() if n.kind is NodeKind.STEP]
    assert [s.name for s in steps] == ["summarize"] * 3
    # Fanned out: the three steps depend on nothing and overlap in time.
    assert all(s.after == () and s.parent is None for s in steps)
    assert max(s.started_s for s in steps) < min(s.finished_s or 0 for s in steps)
    llm_nodes = [n for n in program.nodes.values() if n.kind is NodeKind.LLM]
    assert sorted(n.parent or "" for n in llm_nodes) == sorted(s.id for s in steps)
    assert program.llm_calls == 3 and program.usage.prompt_tokens == sum(n.usage.prompt_tokens for n in llm_nodes)


async def test_reply_carries_usage_and_sequential_steps_depend_on_each_other(rt: Runtime) -> None:
    replies: list[Any] = []

    @step
    async def ask(ctx: Context, text: str) -> str:
        reply = await ctx.llm([{"role": "user", "content": text}], max_tokens=6, ignore_eos=True)
        replies.append(reply)
        return reply.text

    @workflow
    async def chain(ctx: Context) -> str:
        a = await ask(ctx, "one")
        return await ask(ctx, a)

    handle = rt.submit(chain)
    await handle
    assert all(r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 0 for r in replies)
    assert replies[0].tool_calls == () and replies[0].engine == rt.engines[0].name
    first, second = [n for n in handle.program.nodes.values() if n.kind is NodeKind.STEP]
    assert second.after == (first.id,)


async def test_json_schema_reply(rt: Runtime) -> None:
    schema = {
        "type": "object",
        "properties": {"tables": {"type": "array", "items": {"enum": ["album", "artist", "track"]}, "maxItems": 3}},
        "required": ["tables"],
        "additionalProperties": False,
    }

    @workflow
    async def pick(ctx: Context) -> Any:
        reply = await ctx.llm([{"role": "user", "content": "Which tables?"}], json_schema=schema, max_tokens=48)
        return json.loads(reply.text)

    value = await rt.run(pick)
    assert set(value) == {"tables"} and set(value["tables"]) <= {"album", "artist", "track"}


async def test_retries_then_success(rt: Runtime) -> None:
    attempts = []

    @step(retries=2)
    async def flaky(ctx: Context) -> str:
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("transient")
        reply = await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=2)
        return reply.text

    @workflow
    async def wf(ctx: Context) -> str:
        return await flaky(ctx)

    handle = rt.submit(wf)
    await handle
    (node,) = [n for n in handle.program.nodes.values() if n.kind is NodeKind.STEP]
    assert node.attempts == 2 and node.ok
    events = [e async for e in handle.events()]
    assert [e.attempt for e in events if isinstance(e, StepStarted)] == [1, 2]


async def test_retries_exhausted_raise_step_failed(rt: Runtime) -> None:
    @step(retries=1)
    async def broken(ctx: Context) -> None:
        raise ValueError("bad data")

    @workflow
    async def wf(ctx: Context) -> None:
        await broken(ctx)

    handle = rt.submit(wf)
    with pytest.raises(StepFailed, match=r"'broken' failed after 2 attempt\(s\): ValueError: bad data") as info:
        await handle
    assert isinstance(info.value.__cause__, ValueError)
    assert handle.state is ProgramState.FAILED


async def test_step_timeout_aborts_the_engine_request(rt: Runtime) -> None:
    @step(timeout_s=0.5)
    async def long(ctx: Context) -> None:
        await ctx.llm([{"role": "user", "content": "go on"}], max_tokens=3000, ignore_eos=True)

    @workflow
    async def wf(ctx: Context) -> None:
        await long(ctx)

    with pytest.raises(StepFailed, match=r"timed out after 0\.5 s") as info:
        await rt.run(wf)
    assert isinstance(info.value.__cause__, TimeoutError)
    await wait_until_idle(rt.engines[0])


async def test_events_stream_tokens_and_steps(rt: Runtime) -> None:
    handle = rt.submit(pipeline, docs=["stream me"])
    events = [e async for e in handle.events()]
    assert isinstance(events[-1], ProgramFinished) and events[-1].state == "succeeded"
    tokens = [e for e in events if isinstance(e, TokenGenerated)]
    (finished,) = [e for e in events if isinstance(e, LLMCallFinished)]
    assert len(tokens) >= 1 and "".join(t.text for t in tokens) == (await handle)[0]
    assert finished.completion_tokens >= len(tokens)
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("StepStarted") < kinds.index("LLMCallStarted") < kinds.index("StepFinished")


async def test_cancel_aborts_running_calls(rt: Runtime) -> None:
    @workflow
    async def endless(ctx: Context) -> None:
        await ctx.llm([{"role": "user", "content": "talk"}], max_tokens=3000, ignore_eos=True)

    handle = rt.submit(endless)
    async for event in handle.events():
        if isinstance(event, TokenGenerated):
            handle.cancel()
            break
    with pytest.raises(ProgramCancelledError):
        await handle
    assert handle.state is ProgramState.CANCELLED
    (node,) = handle.program.nodes.values()
    assert node.ok is False
    await wait_until_idle(rt.engines[0])


# -- the agent loop on the real engine ----------------------------------------

looked_up: list[tuple[str, int]] = []


def lookup(key: Annotated[str, Field(max_length=6)], count: Annotated[int, Field(ge=0, le=9)]) -> str:
    """Look a key up in the catalogue."""
    looked_up.append((key, count))
    return f"{count} item(s) found for {key!r}"


def explode(reason: Annotated[str, Field(max_length=6)]) -> str:
    """A tool that always fails."""
    raise RuntimeError(f"exploded: {reason}")


async def test_agent_feeds_tool_results_back(rt: Runtime) -> None:
    looked_up.clear()
    agent = Agent(
        "You are a catalogue assistant. " * 20,  # a long system prompt: prefix-cache hits across turns
        tools=[lookup],
        tool_choice="required",
        max_turns=3,
        max_tokens=300,  # room for the most calls one reply may make (4)
        name="catalogue",
    )

    @workflow
    async def ask(ctx: Context, question: str) -> Any:
        return await agent.run(ctx, question)

    handle = rt.submit(ask, question="How many albums?")
    result = await handle
    assert len(result.turns) == 3 and result.stopped == "answer"
    first, second, last = result.turns
    assert first.reply.tool_calls and first.reply.tool_calls[0].name == "lookup"
    # Every call the model made ran with validated arguments (a repeat of an
    # identical call is answered from the first result) and came back as a tool message.
    executed = [r for r in first.tool_results + second.tool_results if r.error_kind != "repeated"]
    assert len(looked_up) == len(executed) > 0
    tool_messages = [m for m in result.messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == [r.content for r in result.tool_results]
    assert "item(s) found" in tool_messages[0]["content"]
    # The next turn's prompt holds the previous one: it is longer and hits the prefix cache.
    assert second.reply.usage.prompt_tokens > first.reply.usage.prompt_tokens
    assert second.reply.usage.cached_tokens >= 128
    assert last.reply.tool_calls == ()
    kinds = [n.kind for n in handle.program.nodes.values()]
    assert kinds[0] is NodeKind.AGENT and kinds.count(NodeKind.LLM) == 3
    assert kinds.count(NodeKind.TOOL) == len(looked_up)
    tool_events = [e async for e in handle.events() if isinstance(e, ToolCallFinished)]
    assert all(e.ok for e in tool_events) and len(tool_events) == len(looked_up)


async def test_failing_tool_reports_to_the_model(rt: Runtime) -> None:
    agent = Agent("Use the tool.", tools=[explode], tool_choice="required", max_turns=2, max_tokens=300)

    @workflow
    async def wf(ctx: Context) -> Any:
        return await agent.run(ctx, "go")

    result = await rt.run(wf)
    (failure, *_) = result.turns[0].tool_results
    assert not failure.ok and failure.error_kind == "exception"
    assert failure.content.startswith("error (exception): RuntimeError: exploded")
    assert result.messages[3]["content"] == failure.content


# -- a tool that runs elsewhere, the token-level call, a call's own tokens ------


async def test_a_tool_run_elsewhere_is_a_tool_node_that_the_policy_hears_of(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    heard: list[ToolStarted | ToolFinished] = []

    async def hear(event: ToolStarted | ToolFinished) -> None:
        heard.append(event)

    monkeypatch.setattr(rt.policy, "on_tool_started", hear)
    monkeypatch.setattr(rt.policy, "on_tool_finished", hear)

    @workflow
    async def delegate(ctx: Context) -> list[bool]:
        await ctx.llm([{"role": "user", "content": "Which tools?"}], max_tokens=4)
        answered = await ctx.start_tool(ToolCall("c-1", "search", {"q": "albums"}))
        failed = await ctx.start_tool(ToolCall("c-2", "fetch", {"url": "x"}))
        dropped = await ctx.start_tool(ToolCall("c-3", "wait", {}))
        assert not answered.ended and answered.call.name == "search"
        await anyio.sleep(0.05)  # the tools run elsewhere
        await answered.finish(wall_s=1.5)
        await failed.finish(ToolMessage("c-2", "fetch", "error (timeout): too slow", ok=False, error_kind="timeout"))
        await dropped.cancel("the worker went away")
        await dropped.finish()  # ended already: nothing more happens
        return [answered.ended, failed.ended, dropped.ended]

    handle = rt.submit(delegate)
    assert await handle == [True, True, True]
    program = handle.program
    assert program.tool_calls == 3
    tools = [n for n in program.nodes.values() if n.kind is NodeKind.TOOL]
    assert [(n.name, n.ok, n.error) for n in tools] == [
        ("search", True, None),
        ("fetch", False, "error (timeout): too slow"),
        ("wait", False, "the worker went away"),
    ]
    (llm,) = [n for n in program.nodes.values() if n.kind is NodeKind.LLM]
    assert all(n.after == (llm.id,) for n in tools)  # opened together, after the LLM call
    events: list[Event] = [e async for e in handle.events()]
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [(e.call_id, e.arguments) for e in started] == [("c-1", {"q": "albums"}), ("c-2", {"url": "x"}), ("c-3", {})]
    assert [(e.call_id, e.ok, e.error_kind) for e in finished] == [
        ("c-1", True, None),
        ("c-2", False, "timeout"),
        ("c-3", False, "cancelled"),
    ]
    # The policy heard each start, then each end once, with the wall time given or measured (seconds).
    assert [(type(e), e.call_id) for e in heard] == [
        (ToolStarted, "c-1"),
        (ToolStarted, "c-2"),
        (ToolStarted, "c-3"),
        (ToolFinished, "c-1"),
        (ToolFinished, "c-2"),
        (ToolFinished, "c-3"),
    ]
    ends = [e for e in heard if isinstance(e, ToolFinished)]
    assert [(e.ok, e.error_kind) for e in ends] == [(True, None), (False, "timeout"), (False, "cancelled")]
    assert ends[0].wall_s == 1.5 and ends[1].wall_s >= 0.05 and ends[2].wall_s >= 0.05
    assert all(e.node is n for e, n in zip(ends, tools, strict=True))


async def test_llm_tokens_samples_by_seed_stops_at_a_string_and_returns_the_text(rt: Runtime) -> None:
    prompt = list(range(100, 140))
    streamed: list[str] = []

    @workflow
    async def sample(ctx: Context, seed: int, stop: list[str]) -> TokenReply:
        return await ctx.llm_tokens(
            prompt,
            max_tokens=24,
            ignore_eos=True,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            stop=stop,
            on_token=streamed.append,
        )

    first = await rt.run(sample, seed=7, stop=[])
    assert first.finish_reason == "length" and len(first.token_ids) == 24
    assert first.text and "".join(streamed) == first.text  # the text is the tokens' as the engine streamed them
    again = await rt.run(sample, seed=7, stop=[])
    assert (again.token_ids, again.text) == (first.token_ids, first.text)  # seeded sampling repeats itself
    other = await rt.run(sample, seed=8, stop=[])
    assert other.token_ids != first.token_ids
    # A stop string ends the call before it: the text is the seeded text up to its first occurrence.
    stop = first.text[len(first.text) // 2 :][:3]
    stopped = await rt.run(sample, seed=7, stop=[stop])
    assert stopped.finish_reason == "stop" and len(stopped.token_ids) < 24
    assert stopped.text == first.text[: first.text.index(stop)]


async def test_each_llm_call_streams_its_own_tokens_to_its_on_token(rt: Runtime) -> None:
    @workflow
    async def two_at_once(ctx: Context) -> list[tuple[str, str]]:
        async def ask(question: str) -> tuple[str, str]:
            pieces: list[str] = []
            reply = await ctx.llm(
                [{"role": "user", "content": question}], max_tokens=12, ignore_eos=True, on_token=pieces.append
            )
            return reply.text, "".join(pieces)

        return await ctx.gather(ask("Count to ten."), ask("Name a colour."))

    results = await rt.run(two_at_once)
    assert all(text and streamed == text for text, streamed in results)


# -- API misuse ---------------------------------------------------------------


async def test_bad_inputs_fail_before_anything_runs(rt: Runtime) -> None:
    before = len(rt.programs)
    with pytest.raises(WorkflowInputError, match="docs"):
        rt.submit(pipeline, docs="not a list of strings")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="@workflow"):
        rt.submit(summarize)  # type: ignore[arg-type]
    assert len(rt.programs) == before


async def test_runtime_must_be_entered(tiny_model: Any) -> None:
    from runtime import InProcessEngine

    runtime = Runtime([InProcessEngine(tiny_model)])
    with pytest.raises(RuntimeStateError, match="async with"):
        runtime.submit(pipeline, docs=[])
    with pytest.raises(ValueError, match="non-empty list of engines"):
        Runtime([])


async def test_step_failure_events(rt: Runtime) -> None:
    @step
    async def fails(ctx: Context) -> None:
        raise KeyError("missing")

    @workflow
    async def wf(ctx: Context) -> None:
        await fails(ctx)

    handle = rt.submit(wf)
    with pytest.raises(StepFailed):
        await handle
    finished = [e async for e in handle.events() if isinstance(e, StepFinished)]
    assert finished[0].ok is False and "KeyError" in (finished[0].error or "")

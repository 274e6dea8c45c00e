"""The dispatch path and the policy interface (pure logic: scripted engines, no vLLM).

What a policy sees of each call, what its decision does to the engine
request, holding calls in the admission queue, the events it is told, and
the errors a wrong decision gets.  The same interface on the simulator is
tested in tests/replay/test_policy_on_sim.py, on a real engine in
tests/runtime/test_runtime.py (the `vllm` policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from runtime import (
    METADATA_PIN_TTL_S,
    CallFinished,
    CallInfo,
    Engine,
    EngineCapabilityError,
    PolicyError,
    Program,
    ProgramIdInUseError,
    ProgramState,
    Route,
    Runtime,
    RuntimeStateError,
    ToolFinished,
    ToolStarted,
    VLLMPolicy,
    get_policy,
    policy_names,
    register_policy,
)
from runtime.testing import ScriptedEngine
from workflows import Agent, Context, ToolCall, step, workflow


class RecordingPolicy(VLLMPolicy):
    """The `vllm` decision plus metadata, recording everything it is shown."""

    name = "test-recording"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[CallInfo] = []
        self.candidates: list[list[str]] = []
        self.events: list[object] = []
        self.programs_finished: list[tuple[str, ProgramState]] = []

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        self.calls.append(call)
        self.candidates.append([e.name for e in engines])
        chosen = super().route(call, engines)
        return Route(chosen.engine, chosen.priority + 10, {"stage": call.stage or "", "turn": len(self.calls)})

    async def on_call_finished(self, event: CallFinished) -> None:
        self.events.append(event)

    async def on_tool_started(self, event: ToolStarted) -> None:
        self.events.append(event)

    async def on_tool_finished(self, event: ToolFinished) -> None:
        self.events.append(event)

    async def on_program_finished(self, program: Program) -> None:
        self.programs_finished.append((program.id, program.state))


def lookup(city: str) -> str:
    """Look a city up."""
    return f"{city}: sunny"


@step
async def plan(ctx: Context, topic: str) -> str:
    reply = await ctx.llm([{"role": "system", "content": "plan"}, {"role": "user", "content": topic}], max_tokens=8)
    return reply.text


@workflow(deadline_s=30, priority=2)
async def planned(ctx: Context, topic: str) -> str:
    first = await plan(ctx, topic)
    await ctx.llm([{"role": "user", "content": first}], max_tokens=4, stage="review", priority=0)
    return first


async def test_policy_sees_the_program_and_the_call_and_its_route_reaches_the_engine() -> None:
    engine = ScriptedEngine("a")
    policy = RecordingPolicy()
    async with Runtime([engine], policy=policy) as rt:
        assert policy.host.engines == [engine] and policy.host.engine("a") is engine
        handle = rt.submit(planned, topic="tides")
        await handle
    first, second = policy.calls
    assert first.program is handle.program and first.program.deadline_s == 30
    assert first.stage == "plan" and second.stage == "review"  # the enclosing step, or the caller's
    assert first.requested_priority is None and second.requested_priority == 0
    assert first.node.kind == "llm" and first.node.parent is not None
    assert first.sampling.max_tokens == 8 and not first.prompt_tokens_exact and first.prompt_tokens >= 1
    assert first.prefix_key != second.prefix_key and len(first.prefix_key) == 16
    assert policy.candidates == [["a"], ["a"]]
    # The route's priority and metadata, on top of the runtime's own identity.
    sent = engine.seen
    assert [r.priority for r in sent] == [12, 10]
    assert sent[0].metadata == {
        "program_id": handle.id,
        "node_id": first.node.id,
        "workflow": "planned",
        "stage": "plan",
        "turn": 1,
    }
    # Service received so far: the engine time of the two calls.
    assert handle.program.llm_service_s == pytest.approx(2 * 2e-5)
    finished = [e for e in policy.events if isinstance(e, CallFinished)]
    assert [e.call for e in finished] == [first, second]
    assert all(e.completion is not None and e.engine == "a" and e.error is None for e in finished)
    assert policy.programs_finished == [(handle.id, ProgramState.SUCCEEDED)]


async def test_prefix_key_is_shared_by_prompts_that_begin_alike() -> None:
    engine = ScriptedEngine("a")
    policy = RecordingPolicy()

    @workflow
    async def tokens(ctx: Context, head: list[int], tail: list[int]) -> None:
        await ctx.llm_tokens(head + tail, max_tokens=1)

    async with Runtime([engine], policy=policy) as rt:
        await rt.run(tokens, head=list(range(300)), tail=[1])
        await rt.run(tokens, head=list(range(300)), tail=[2, 3])
        await rt.run(tokens, head=list(range(1, 301)), tail=[1])
    a, b, c = policy.calls
    assert a.prompt_tokens_exact and (a.prompt_tokens, b.prompt_tokens) == (301, 302)
    assert a.prefix_key == b.prefix_key != c.prefix_key
    assert a.stage is None  # a call in the workflow body


async def test_token_calls_return_the_engines_reply() -> None:
    @workflow
    async def tokens(ctx: Context) -> Any:
        return await ctx.llm_tokens([5, 6, 7], max_tokens=1, ignore_eos=True)

    async with Runtime([ScriptedEngine("a", prompt_tokens=3)]) as rt:
        reply = await rt.run(tokens)
    assert reply.token_ids == (1,) and reply.engine == "a" and reply.usage.prompt_tokens == 3
    assert reply.latency_s == pytest.approx(2e-5) and reply.queued_s == 0.0


class HoldingPolicy(VLLMPolicy):
    """Holds every call while ``closed``; lets calls through in reverse arrival order when opened."""

    name = "test-holding"
    recheck_s = None  # only explicit wake-ups

    def __init__(self) -> None:
        super().__init__()
        self.closed = True
        self.refused = 0  # calls held so far (each is offered once until a wake-up)
        self._refusal = anyio.Event()

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        if self.closed:
            self.refused += 1
            self._refusal.set()
            self._refusal = anyio.Event()
            return None
        return super().route(call, engines)

    async def wait_refused(self, n: int) -> None:
        """Until ``n`` calls have been held."""
        while self.refused < n:
            await self._refusal.wait()

    def held_order(self, calls: Sequence[CallInfo]) -> Sequence[CallInfo]:
        return list(reversed(calls))


@workflow
async def one_call(ctx: Context, text: str = "hi") -> str:
    reply = await ctx.llm([{"role": "user", "content": text}], max_tokens=4)
    return reply.engine


async def test_held_calls_wait_in_the_admission_queue_until_the_policy_routes_them() -> None:
    engine = ScriptedEngine("a")
    policy = HoldingPolicy()
    async with Runtime([engine], policy=policy) as rt:
        handles = [rt.submit(one_call, text=str(i)) for i in range(3)]
        await policy.wait_refused(3)
        assert engine.seen == [] and not any(h.done for h in handles)
        policy.closed = False
        policy.host.wake()
        for h in handles:
            await h
    # Released in the policy's order: the last held first.
    assert [r.prompt.messages[0]["content"] for r in engine.seen] == ["2", "1", "0"]  # type: ignore[union-attr]
    for h in handles:
        llm = next(n for n in h.program.nodes.values() if n.kind == "llm")
        assert llm.attributes["held_s"] > 0


async def test_a_held_call_cancelled_leaves_the_queue() -> None:
    engine = ScriptedEngine("a")
    policy = HoldingPolicy()
    async with Runtime([engine], policy=policy) as rt:
        handle = rt.submit(one_call)
        await policy.wait_refused(1)
        handle.cancel()
        await handle.wait()
        assert rt._dispatcher._held == []
        policy.closed = False
        assert await rt.run(one_call) == "a"
    assert handle.state is ProgramState.CANCELLED and len(engine.seen) == 1
    assert policy.host is rt._dispatcher


class RecheckPolicy(VLLMPolicy):
    """Holds each call for its first two offers: the timer re-offers it."""

    name = "test-recheck"
    recheck_s = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.offers = 0

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        self.offers += 1
        return super().route(call, engines) if self.offers > 2 else None


async def test_held_calls_are_offered_again_on_the_recheck_timer() -> None:
    policy = RecheckPolicy()
    async with Runtime([ScriptedEngine("a")], policy=policy) as rt:
        assert await rt.run(one_call) == "a"
    assert policy.offers == 3


class WrongEnginePolicy(VLLMPolicy):
    name = "test-wrong-engine"

    def __init__(self, engine: Engine, metadata: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.engine, self.metadata = engine, metadata or {}

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        return Route(self.engine, 0, self.metadata)


async def test_a_route_the_runtime_cannot_carry_out_is_an_error_not_ignored() -> None:
    elsewhere = ScriptedEngine("not-in-this-runtime")
    async with Runtime([ScriptedEngine("a")], policy=WrongEnginePolicy(elsewhere)) as rt:
        with pytest.raises(PolicyError, match="not a candidate"):
            await rt.run(one_call)
    engine = ScriptedEngine("a")
    async with Runtime([engine], policy=WrongEnginePolicy(engine, {METADATA_PIN_TTL_S: 2.0})) as rt:
        with pytest.raises(EngineCapabilityError, match="cannot"):
            await rt.run(one_call)
    assert engine.seen == []  # refused before anything was sent


async def test_engines_without_pins_say_so() -> None:
    engine = ScriptedEngine("a")
    assert engine.supports_pins is False
    async with engine:
        for attempt in (engine.set_pin("p", 2.0), engine.release_pin("p"), engine.pin_stats()):
            with pytest.raises(EngineCapabilityError, match="cannot pin KV blocks"):
                await attempt
        load = engine.load()
    assert (load.name, load.available, load.in_flight, load.pinned_blocks) == ("a", True, 0, None)


async def test_tool_events_reach_the_policy_and_identical_calls_are_reused() -> None:
    counter = {"runs": 0}

    def add(a: int, b: int) -> int:
        """Add two integers."""
        counter["runs"] += 1
        return a + b

    # Every turn the scripted model calls add(2, 3): the second time the
    # context answers from the first result instead of running the tool.
    call_text = '{"tool_calls": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}'
    policy = RecordingPolicy()
    agent = Agent("Add.", tools=[add], max_turns=3)

    @workflow
    async def adds(ctx: Context) -> Any:
        return await agent.run(ctx, "2 + 3?")

    async with Runtime([ScriptedEngine("a", text=call_text)], policy=policy) as rt:
        result = await rt.run(adds)
    assert counter["runs"] == 1
    first, second = (turn.tool_results[0] for turn in result.turns[:2])
    assert first.ok and first.content == "5" and first.error_kind is None
    assert second.ok and second.error_kind == "repeated"
    assert second.content.startswith("5 (you already called add")
    started = [e for e in policy.events if isinstance(e, ToolStarted)]
    ended = [e for e in policy.events if isinstance(e, ToolFinished)]
    assert [(e.tool, dict(e.arguments)) for e in started] == [("add", {"a": 2, "b": 3})]
    assert len(ended) == 1 and ended[0].ok and ended[0].wall_s >= 0 and ended[0].node is started[0].node


async def test_unknown_tools_and_failures_are_messages_and_events() -> None:
    policy = RecordingPolicy()

    def boom() -> None:
        """Fail."""
        raise RuntimeError("no")

    @workflow
    async def tools(ctx: Context) -> Any:
        missing = await ctx.call_tool(ToolCall("c1", "nope", {}), [boom])
        failed = await ctx.call_tool(ToolCall("c2", "boom", {}), [boom])
        return missing, failed

    async with Runtime([ScriptedEngine("a")], policy=policy) as rt:
        handle = rt.submit(tools)
        missing, failed = await handle
    assert missing.error_kind == "unknown_tool" and missing.content == (
        "error (unknown_tool): there is no tool 'nope'; tools: boom"
    )
    assert failed.error_kind == "exception" and failed.content == "error (exception): RuntimeError: no"
    ended = [e for e in policy.events if isinstance(e, ToolFinished)]
    assert [(e.tool, e.ok, e.error_kind) for e in ended] == [
        ("nope", False, "unknown_tool"),
        ("boom", False, "exception"),
    ]
    nodes = [n for n in handle.program.nodes.values() if n.kind == "tool"]
    assert [(n.ok, n.error) for n in nodes] == [(False, missing.content), (False, failed.content)]


async def test_a_cancelled_program_is_reported_to_the_policy() -> None:
    policy = RecordingPolicy()

    @workflow
    async def sleeps(ctx: Context) -> None:
        await anyio.sleep(30)

    async with Runtime([ScriptedEngine("a")], policy=policy) as rt:
        handle = rt.submit(sleeps)
        await anyio.sleep(0.01)
        handle.cancel()
        await handle.wait()
    assert policy.programs_finished == [(handle.id, ProgramState.CANCELLED)]


async def test_state_errors_have_their_own_classes() -> None:
    rt = Runtime([ScriptedEngine("a")])
    with pytest.raises(RuntimeStateError, match="not running"):
        rt.submit(one_call)
    async with rt:
        handle = rt.start_program(one_call, {}, program_id="fixed")
        with pytest.raises(ProgramIdInUseError, match="fixed"):
            rt.start_program(one_call, {}, program_id="fixed")
        await handle
        await rt.start_program(one_call, {}, program_id="fixed")  # a finished one's id may be reused
    with pytest.raises(RuntimeStateError, match="closed"):
        async with rt:
            pass


def test_policies_are_registered_by_name() -> None:
    assert "vllm" in policy_names()
    register_policy(RecordingPolicy)
    assert isinstance(get_policy("test-recording"), RecordingPolicy)
    with pytest.raises(ValueError, match="unknown policy 'nope'; known: "):
        get_policy("nope")

    class Nameless(VLLMPolicy):
        name = ""

    with pytest.raises(TypeError, match="name"):
        register_policy(Nameless)

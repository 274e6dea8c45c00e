"""The ``agentrt`` policy on a pool of two real vLLM engines (tiny model, CPU): urgency, affinity, failover.

- a late program with a tight deadline overtakes calls already queued in
  vLLM (the priority reaches vLLM's scheduler; the admission gate is off
  for that test, so the engine's own queue does the ordering);
- a program's next turn goes to the engine holding its pinned context;
- when one engine's core process is killed mid-run, its calls complete on
  the other.  (Last in the module: it kills an engine.)
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
import pytest_asyncio

from runtime import AgentrtPolicy, InProcessEngine, NodeKind, ProgramHandle, Runtime
from tests.runtime._helpers import engine_core_processes, poll_until
from toolbridge import tool
from workflows import Context, ToolCall, workflow

pytestmark = pytest.mark.engine


def tokens(n: int, base: int = 7) -> list[int]:
    """``n`` token ids of the tiny model's 4,096 (above its special tokens), different for each ``base``."""
    return [5 + (base * 131 + i * 7919) % 4000 for i in range(n)]


@tool
async def pause(seconds: float) -> str:
    """Wait ``seconds``."""
    await anyio.sleep(seconds)
    return "done"


@workflow
async def long_call(ctx: Context, base: int, max_tokens: int) -> None:
    await ctx.llm_tokens(tokens(64, base), max_tokens=max_tokens, ignore_eos=True)


@workflow
async def two_turns(ctx: Context, base: int) -> int:
    prompt = tokens(300, base)
    first = await ctx.llm_tokens(prompt, max_tokens=4, ignore_eos=True)
    message = await ctx.call_tool(ToolCall("t1", "pause", {"seconds": 0.3}), [pause])
    assert message.ok, message.content
    second = await ctx.llm_tokens([*prompt, *first.token_ids, *tokens(20, base + 1)], max_tokens=4, ignore_eos=True)
    return second.usage.cached_tokens


#: Output tokens of each early call in the urgency test: long enough that twelve of them (six per
#: engine, one at a time) keep a queue in each engine for a while.
EARLY_TOKENS = 128

Pool = tuple[Runtime, AgentrtPolicy, list[psutil.Process]]


@pytest_asyncio.fixture(scope="module")
async def pool(tiny_model: Path) -> AsyncIterator[Pool]:
    """Two engines running one sequence at a time (so calls queue), the agentrt policy, their core processes."""
    before = {p.pid for p in engine_core_processes()}
    engines = [
        InProcessEngine(
            tiny_model,
            name=f"pool-{i}",
            max_num_seqs=1,
            max_model_len=2048,
            engine_args={"enforce_eager": True},
            restart_on_failure=False,  # a killed engine stays dead: the test counts the live ones
        )
        for i in range(2)
    ]
    policy = AgentrtPolicy()
    async with Runtime(engines, policy=policy) as runtime:
        cores = [p for p in engine_core_processes() if p.pid not in before]
        assert len(cores) == 2
        yield runtime, policy, cores


def _llm_engine(handle: ProgramHandle[Any]) -> str:
    engines = {n.engine for n in handle.program.nodes.values() if n.kind is NodeKind.LLM}
    assert len(engines) == 1, engines
    (engine,) = engines
    assert engine is not None
    return engine


async def test_a_late_urgent_program_overtakes_queued_calls(pool: Pool) -> None:
    rt, policy, _ = pool
    policy.max_waiting = None  # no admission queue: every call reaches vLLM, whose queue must order them
    try:
        early = [rt.submit(long_call, base=100 + i, max_tokens=EARLY_TOKENS) for i in range(12)]

        async def all_sent() -> bool:
            return all(_sent_to(h) is not None for h in early)

        await poll_until(all_sent)  # every early call is in an engine: one running there, the rest queued
        late = rt.start_program(long_call, {"base": 999, "max_tokens": 48}, deadline_s=5.0)
        # Read in the same step as the submission, so no early call can finish in between.
        unfinished = [h for h in early if h.program.finished_at is None]
        await late
        for h in early:
            await h
    finally:
        policy.max_waiting = 2
    engine = _llm_engine(late)
    queued = [h for h in unfinished if _llm_engine(h) == engine]
    assert len(queued) >= 4, "the early programs did not queue on the late one's engine"
    finished_before = [h for h in queued if (h.program.finished_at or 0) < (late.program.finished_at or 0)]
    # Of the early calls still in its engine when the late call came, one was running, and one more may
    # have been scheduled while the late call's request travelled to the engine core; the late call
    # went before the rest.
    assert len(finished_before) <= 2, [h.program.finished_at for h in queued]
    late_node = next(n for n in late.program.nodes.values() if n.kind is NodeKind.LLM)
    assert late_node.attributes["priority"] < min(
        n.attributes["priority"] for h in queued for n in h.program.nodes.values() if n.kind is NodeKind.LLM
    )


def _sent_to(handle: ProgramHandle[Any]) -> str | None:
    """The engine ``handle``'s LLM call was sent to, ``None`` until it is sent."""
    return next((n.engine for n in handle.program.nodes.values() if n.kind is NodeKind.LLM), None)


async def test_the_next_turn_goes_to_the_engine_holding_the_pinned_context(
    pool: Pool,
) -> None:
    rt, policy, _ = pool
    handles = [rt.submit(two_turns, base=1000 + 37 * i) for i in range(4)]
    cached = [await h for h in handles]
    for h, hit in zip(handles, cached, strict=True):
        engine = _llm_engine(h)  # both turns on one engine
        assert hit >= 256, f"{h.id} on {engine}: {hit} cached tokens"
    assert {_llm_engine(h) for h in handles} == {"pool-0", "pool-1"}, "programs spread over the pool"
    hits = [(await e.pin_stats()).pin_hits for e in rt.engines]
    assert sum(hits) >= 4
    assert policy.tracked_programs == 0 and policy.book.tracked_programs == 0


async def test_a_killed_engines_calls_complete_on_the_other(pool: Pool) -> None:
    rt, _, cores = pool
    handles = [rt.submit(long_call, base=2000 + i, max_tokens=200) for i in range(6)]
    with anyio.fail_after(60):
        while not all(e.in_flight for e in rt.engines):  # noqa: ASYNC110 - polling the engines' queues
            await anyio.sleep(0.05)
    unfinished = [h for h in handles if not h.done]  # read in the same step as the kill
    os.kill(cores[0].pid, signal.SIGKILL)
    for h in handles:
        await h  # every program completes
    alive = [e for e in rt.engines if e.available]
    assert len(alive) == 1
    # Both engines had calls when one died; every call unfinished then ended on the engine left, and
    # the kill cut some off (they were tried twice).
    assert {_llm_engine(h) for h in unfinished} == {alive[0].name}
    assert any(n.attempts >= 2 for h in unfinished for n in h.program.nodes.values() if n.kind is NodeKind.LLM)
    await rt.run(long_call, base=3000, max_tokens=4)  # and new work goes there

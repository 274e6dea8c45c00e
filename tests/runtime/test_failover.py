"""Engine failover and dispatch in the Runtime (pure logic: scripted engines).

Real engine deaths are exercised in test_engine_death.py and test_remote_engine.py (a `vllm serve`
process killed mid-request); this test pins down what the runtime does next.
"""

from __future__ import annotations

import pytest

from runtime import EngineUnavailableError, NoEngineError, Runtime
from runtime.testing import ScriptedEngine
from workflows import Context, workflow


@workflow(priority=3)
async def one_call(ctx: Context) -> str:
    reply = await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=4)
    return reply.engine


async def test_a_dying_engine_fails_over_to_another() -> None:
    dead, alive = ScriptedEngine("dead", dies=True), ScriptedEngine("alive")
    async with Runtime([dead, alive]) as rt:
        engines = {await rt.run(one_call) for _ in range(4)}
    assert engines == {"alive"}
    assert dead.seen, "the dead engine was tried first at least once"
    # Metadata and the program's priority reach the engine request.
    request = alive.seen[0]
    assert request.priority == 3 and request.metadata["workflow"] == "one_call"
    assert str(request.metadata["program_id"]).startswith("prog-")


async def test_no_engine_left_raises() -> None:
    async with Runtime([ScriptedEngine("dead", dies=True)]) as rt:
        with pytest.raises(EngineUnavailableError, match="dead died"):
            await rt.run(one_call)
    rt2 = Runtime([ScriptedEngine("a")])
    async with rt2:
        await rt2.engines[0].aclose()
        with pytest.raises(NoEngineError, match="no engine available"):
            await rt2.run(one_call)


async def test_least_loaded_dispatch_spreads_calls() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    async with Runtime([a, b]) as rt:
        for _ in range(6):
            await rt.run(one_call)
    assert len(a.seen) == len(b.seen) == 3


async def test_finished_programs_are_kept_up_to_a_bound() -> None:
    async with Runtime([ScriptedEngine("a")], keep_finished=2) as rt:
        handles = [rt.submit(one_call) for _ in range(4)]
        for h in handles:
            await h
    last_two = sorted(handles, key=lambda h: h.program.finished_at or 0)[2:]
    assert set(rt.programs) == {h.id for h in last_two}

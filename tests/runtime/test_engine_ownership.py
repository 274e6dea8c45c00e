"""Who closes an engine: the runtime that was given it, unless told to leave it to its owner."""

from __future__ import annotations

from runtime import Runtime
from runtime.testing import ScriptedEngine
from workflows import Context, workflow


async def test_an_engine_left_to_its_owner_serves_the_next_runtime() -> None:
    """close_engines=False: leaving the runtime leaves the given engines running; by default they are closed."""

    @workflow
    async def hello(ctx: Context) -> str:
        return (await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=1)).text

    async with ScriptedEngine("shared", text="one") as engine:
        for _ in range(2):  # two runtimes in turn on one engine
            async with Runtime([engine], close_engines=False, handle_signals=False) as rt:
                assert await rt.run(hello) == "one"
            assert not engine.closed
        async with Runtime([engine], handle_signals=False) as rt:
            assert await rt.run(hello) == "one"
        assert engine.closed

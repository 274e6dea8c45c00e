"""The pinning policies on a real in-process vLLM engine: the runtime, the policy and the plug-in together.

Programs are token-prompt agents (``ctx.llm_tokens`` then a tool call) on
the tiny model, over the session's engine with a 40-block cache (tests/conftest.py).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import anyio
import pytest
import pytest_asyncio

import toolbridge
from runtime import InProcessEngine, ProgramCancelledError, Runtime
from tests.conftest import fresh_cache
from workflows import Context, ToolCall, workflow

from ._helpers import poll_until

pytestmark = pytest.mark.engine

_rng = random.Random(11)


def tokens(n: int) -> list[int]:
    return [_rng.randrange(10, 4000) for _ in range(n)]


@toolbridge.tool
async def pause(seconds: float) -> str:
    """Wait, as a tool call does."""
    await anyio.sleep(seconds)
    return "done"


@workflow(name="pin-turns")
async def two_turns(ctx: Context, prompt: list[int], tool_s: float) -> int:
    """An LLM turn, a tool call, and a second turn over the whole context; returns its cached tokens."""
    first = await ctx.llm_tokens(prompt, max_tokens=4, ignore_eos=True)
    message = await ctx.call_tool(ToolCall("t1", "pause", {"seconds": tool_s}), [pause])
    assert message.ok, message.content
    second = await ctx.llm_tokens([*prompt, *first.token_ids, *tokens(40)], max_tokens=4, ignore_eos=True)
    return second.usage.cached_tokens


@pytest_asyncio.fixture(scope="module", params=["continuum", "agentrt"])
async def rt(request: pytest.FixtureRequest, small_cache_engine: InProcessEngine) -> AsyncIterator[Runtime]:
    """A runtime with the pinning policy over the session's 40-block engine, its cache emptied first."""
    await fresh_cache(small_cache_engine)
    async with Runtime([small_cache_engine], policy=request.param, close_engines=False) as runtime:
        yield runtime


async def test_the_policy_pins_across_a_short_tool_call(rt: Runtime) -> None:
    """A 1 s tool while other programs flood the cache: the second turn still finds its context."""
    engine = rt.engines[0]
    before = await engine.pin_stats()
    prompt = tokens(1500)
    handle = rt.submit(two_turns, prompt, 1.0)

    async def tool_running() -> bool:
        return (await engine.pin_stats()).pinned_programs > 0

    await poll_until(tool_running)
    for _ in range(5):  # others' prompts, far more than the free blocks
        await rt.run(one_call, tokens(1800))
    cached = await handle.result()
    assert cached >= 0.9 * (len(prompt) + 4)  # the inherited context: prompt and reply
    after = await engine.pin_stats()
    assert after.pin_hits == before.pin_hits + 1
    assert after.pinned_programs == 0  # program ended: nothing left pinned


@workflow(name="pin-flood")
async def one_call(ctx: Context, prompt: list[int]) -> None:
    await ctx.llm_tokens(prompt, max_tokens=2, ignore_eos=True)


@pytest.mark.parametrize("rt", ["continuum"], indirect=True)  # pins a short tool whatever the model costs
async def test_cancelling_a_program_releases_its_pin(rt: Runtime) -> None:
    engine = rt.engines[0]
    before = await engine.pin_stats()
    handle = rt.submit(two_turns, tokens(800), 1.5)

    async def pinned() -> bool:
        return (await engine.pin_stats()).pinned_programs == 1

    await poll_until(pinned)
    handle.cancel()
    with pytest.raises(ProgramCancelledError):
        await handle.result()
    stats = await engine.pin_stats()
    # Released by the policy at the program's end, not left to expire.
    assert stats.pinned_programs == 0 and stats.pins_expired == before.pins_expired
    assert stats.pins_released == before.pins_released + 1

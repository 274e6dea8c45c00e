"""agentrt's memory-aware admission on a real in-process vLLM engine with a small cache.

A program runs a call over a long prompt and goes into a tool; while it is
away, another program's call needs more blocks than are free beside it.
With memory-aware admission the newcomer is held until the returning
program's next call has run (on its cached context); without it, the
newcomer runs at once and evicts that context.
"""

from __future__ import annotations

import random

import anyio
import pytest

import toolbridge
from runtime import AgentrtPolicy, InProcessEngine, Runtime
from tests.conftest import SMALL_CACHE_BLOCKS, fresh_cache
from workflows import Context, ToolCall, workflow

from ._helpers import poll_until

pytestmark = pytest.mark.engine

_rng = random.Random(23)

FIRST_PROMPT = 2500  # 20 of the 40 blocks (128 tokens each) with its reply
NEWCOMER_PROMPT = 3800  # 30 blocks: only fits if the first program's context goes


def tokens(n: int) -> list[int]:
    return [_rng.randrange(10, 4000) for _ in range(n)]


class Gate:
    """The tool of the returning program: it says it started, then waits until released."""

    started: anyio.Event
    release: anyio.Event


@toolbridge.tool
async def build() -> str:
    """A build the test lets finish."""
    Gate.started.set()
    await Gate.release.wait()
    return "built"


@workflow(name="memory-returning")
async def returning(ctx: Context, prompt: list[int]) -> int:
    """A turn, a tool, and a turn over the whole context; returns the second turn's cached tokens."""
    first = await ctx.llm_tokens(prompt, max_tokens=4, ignore_eos=True)
    message = await ctx.call_tool(ToolCall("b1", "build", {}), [build])
    assert message.ok, message.content
    second = await ctx.llm_tokens([*prompt, *first.token_ids, *tokens(40)], max_tokens=4, ignore_eos=True)
    return second.usage.cached_tokens


@workflow(name="memory-newcomer")
async def newcomer(ctx: Context, prompt: list[int]) -> None:
    await ctx.llm_tokens(prompt, max_tokens=2, ignore_eos=True)


@pytest.mark.parametrize("memory_admission", [True, False], ids=["admission", "no-admission"])
async def test_memory_aware_admission_holds_a_call_that_would_evict_a_returning_program(
    small_cache_engine: InProcessEngine, memory_admission: bool
) -> None:
    engine = small_cache_engine
    await fresh_cache(engine)
    assert engine.load().kv_tokens == SMALL_CACHE_BLOCKS * 128
    Gate.started, Gate.release = anyio.Event(), anyio.Event()
    # Programs away in a tool count while expected back within 30 s (the default counts them only between calls).
    policy = AgentrtPolicy(memory_admission=memory_admission, horizon_s=30.0)
    async with Runtime([engine], policy=policy, close_engines=False) as rt:
        first = rt.submit(returning, tokens(FIRST_PROMPT))
        await Gate.started.wait()
        late = rt.submit(newcomer, tokens(NEWCOMER_PROMPT))
        if memory_admission:

            async def held() -> bool:
                return policy.memory.claimed(late.id)

            await poll_until(held)
            assert engine.in_flight == 0 and not late.done  # the first program is in its tool, the newcomer held
        else:
            await late.result()  # ran while the first program was away
        Gate.release.set()
        cached = await first.result()
        await late.result()
    context = FIRST_PROMPT + 4
    if memory_admission:
        assert cached >= 0.9 * context  # came back to its context
        assert not policy.memory.claimed(late.id)
    else:
        assert cached < 0.9 * context  # the newcomer's blocks evicted it

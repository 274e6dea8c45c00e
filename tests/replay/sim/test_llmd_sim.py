"""The ``llm-d`` policy on simulated engines, in virtual time: the engines' cache contents as llm-d's
precise prefix-cache scorer sees them, each turn sent where the longest cached prefix is, and load
deciding between equal prefixes.  Orders and counts only, never timings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runtime import GenerateRequest, LlmdPolicy, Runtime, SamplingOptions, TokenPrompt
from runtime.replay import CostProfile, SimEngine, run_virtual
from workflows import Context, workflow

from ._builders import chain, replay
from ._recording import RecordingRoutes


class RecordingLlmd(RecordingRoutes, LlmdPolicy):
    name = "test-recording-llm-d"


def test_the_simulator_reports_its_cached_prefix_blocks(profile: CostProfile) -> None:
    """After a request, the engine holds its full blocks (the last partial one not); a pure read."""
    prompt = tuple(range(100, 100 + 5 * 128 + 40))  # 5 full blocks of 128 and 40 tokens

    async def main() -> tuple[object, ...]:
        async with SimEngine(profile) as engine:
            before = engine.cached_prefix(prompt)
            await engine.generate(GenerateRequest("r", TokenPrompt(prompt), SamplingOptions(max_tokens=1)))
            after = engine.cached_prefix(prompt)
            longer = engine.cached_prefix(prompt + tuple(range(7, 7 + 300)))
            other = engine.cached_prefix((9, *prompt[1:]))  # the first block differs: nothing after it counts
            return before, after, longer, other, engine.load().kv_usage

    before, after, longer, other, usage = run_virtual(main)
    assert (before.blocks, before.prompt_blocks) == (0, 5)  # type: ignore[attr-defined]
    assert (after.blocks, after.prompt_blocks, after.tokens) == (5, 5, 640)  # type: ignore[attr-defined]
    assert (longer.blocks, longer.prompt_blocks) == (5, 7)  # type: ignore[attr-defined]
    assert other.blocks == 0  # type: ignore[attr-defined]
    assert usage == 0.0  # cached but free: evictable, as in vLLM's kv_cache_usage_perc


def test_each_turn_goes_to_the_engine_holding_the_longest_cached_prefix(profile: CostProfile) -> None:
    policy = RecordingLlmd()
    programs = [chain(f"p{i}", 6, arrival_s=0.05 * i, new_tokens=2000) for i in range(8)]
    sims = [SimEngine(profile, name=f"sim-{i}") for i in range(4)]
    run = replay(policy, programs, sims)  # every program finished without an error
    for result in run.programs:
        assert len({c.engine for c in result.calls}) == 1, f"{result.id} moved between engines"
        # Every later turn found its whole context but the new tokens (and a partial block) cached.
        assert all(c.cached_tokens >= c.prompt_tokens - 2000 - 16 - 128 for c in result.calls[1:])
    assert all(priority == 0 for _, priority, _ in policy.routes)
    assert len({e for _, _, e in policy.routes}) > 1  # first turns spread by KV usage


async def _until(check: Callable[[], bool]) -> None:
    """Wait until the engine's state passes ``check`` (engine state has no change notification: poll it)."""
    while True:
        if check():
            return
        await asyncio.sleep(0.001)


@workflow
async def one_call(ctx: Context, first: int, tokens: int) -> str:
    completion = await ctx.llm_tokens(list(range(first, first + tokens)), max_tokens=4, ignore_eos=True)
    return completion.engine


def test_with_equal_prefixes_the_less_loaded_engine_wins(profile: CostProfile) -> None:
    """Two engines, neither holding the prompt: a queue loses; then, queues equal, more KV in use loses."""
    sims = [SimEngine(profile, name="busy", max_num_seqs=1), SimEngine(profile, name="idle", max_num_seqs=1)]
    busy = sims[0]

    def long_request(rid: str) -> GenerateRequest:
        sampling = SamplingOptions(max_tokens=400, ignore_eos=True)
        return GenerateRequest(rid, TokenPrompt(tuple(range(20000, 24000))), sampling)

    async def main() -> tuple[str, str]:
        async with Runtime(list(sims), policy=LlmdPolicy()) as rt:
            # Straight to the engine, past the policy: one running, one waiting behind it.
            running = asyncio.ensure_future(busy.generate(long_request("r1")))
            waiting = asyncio.ensure_future(busy.generate(long_request("r2")))
            await _until(lambda: busy.load().waiting == 1 and busy.load().running == 1)
            queued = await rt.submit(one_call, first=5000, tokens=300)
            waiting.cancel()
            await _until(lambda: not busy.load().waiting)
            # Queues equal (none waiting): busy has KV in use, idle none.
            assert busy.load().running == 1 and (busy.load().kv_usage or 0) > 0
            fuller = await rt.submit(one_call, first=9000, tokens=300)
            await running
        return queued, fuller

    assert run_virtual(main) == ("idle", "idle")

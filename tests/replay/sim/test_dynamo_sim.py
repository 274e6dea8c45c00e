"""The ``dynamo`` policy on simulated engines, in virtual time: each turn goes where its context is cached
when nothing else weighs, and an engine loaded with other calls' active blocks loses a call to an idle one
exactly when Dynamo's cost says so.  Orders and counts only, never timings.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from runtime import CallInfo, DynamoPolicy, Engine, GenerateRequest, Route, Runtime, SamplingOptions, TokenPrompt
from runtime.replay import CostProfile, SimEngine, TraceCall, TraceProgram, Vocabulary, replay_trace, run_virtual
from workflows import Context, workflow

from ._recording import RecordingRoutes

VOCABULARY = Vocabulary(32000, frozenset({0, 1, 2}))
BLOCK = 128  # the test profile's block size


class RecordingDynamo(RecordingRoutes, DynamoPolicy):
    name = "test-recording-dynamo"

    def __init__(self) -> None:
        super().__init__()
        self.routes = []
        #: Per routed call: the chosen engine's cached prefix blocks, and the most any candidate held.
        self.cached: list[tuple[int, int]] = []

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        prompt = call.prompt
        assert isinstance(prompt, TokenPrompt)
        held = {e.name: e.cached_prefix(prompt.token_ids).blocks for e in engines}
        route = super().route(call, engines)
        assert route is not None
        self.cached.append((held[route.engine.name], max(held.values())))
        return route


def _chain(pid: str, turns: int, *, arrival_s: float, new: int) -> TraceProgram:
    calls = [TraceCall(id=f"c{i}", new_tokens=new, output_tokens=16, tool="t", tool_s=0.2) for i in range(turns - 1)]
    calls.append(TraceCall(id=f"c{turns - 1}", new_tokens=new, output_tokens=16))
    return TraceProgram(id=pid, arrival_s=arrival_s, calls=calls)


def test_each_turn_goes_to_the_engine_holding_its_context(profile: CostProfile) -> None:
    """Programs one after another (no other call active): every later turn finds its whole context cached."""
    policy = RecordingDynamo()
    programs = [_chain(f"p{i}", 5, arrival_s=100.0 * i, new=2000) for i in range(6)]
    sims = [SimEngine(profile, name=f"sim-{i}") for i in range(4)]

    async def main() -> None:
        async with Runtime(list(sims), policy=policy) as rt:
            run = await replay_trace(programs, rt, vocabulary=VOCABULARY)
        for result in run.programs:
            assert result.error is None
            assert len({c.engine for c in result.calls}) == 1, f"{result.id} moved between engines"
            assert all(c.cached_tokens >= c.prompt_tokens - 2000 - 16 - BLOCK for c in result.calls[1:])

    run_virtual(main)
    assert all(priority == 0 for _, priority, _ in policy.routes)
    later = [pair for i, pair in enumerate(policy.cached) if i % 5]
    assert later and all(chosen == most > 0 for chosen, most in later)  # the longest cached prefix won
    assert len({e for _, _, e in policy.routes}) > 1  # first turns, cached nowhere, are ties: spread at random


@workflow
async def one_call(ctx: Context, tokens: list[int]) -> str:
    completion = await ctx.llm_tokens(tokens, max_tokens=400, ignore_eos=True)
    return completion.engine


def test_an_engine_loaded_with_active_blocks_loses_a_call_as_the_cost_says(profile: CostProfile) -> None:
    """Calls sharing a cached prefix of P = 45 blocks, each with its own S = 10 blocks, all in flight at once.

    On ``home`` (which holds the prefix) the k-th call costs its S prefill blocks, plus the k earlier
    calls' pending prefill (k x S), plus the active blocks (P + k x S) and its own S new ones:
    P + (2k + 2) x S = 65, 85, 105, 125.  On the idle engine: (P + S) prefill + (P + S) new = 110.
    So three go home and the fourth goes to the idle engine.
    """
    sims = [SimEngine(profile, name="home"), SimEngine(profile, name="idle")]
    home = sims[0]
    prefix = list(range(1000, 1000 + 45 * BLOCK))

    async def main() -> list[str]:
        async with Runtime(list(sims), policy=DynamoPolicy()) as rt:
            # Straight to the engine, past the policy: home caches the shared prefix; the policy books nothing.
            warm = GenerateRequest("warm", TokenPrompt(tuple(prefix)), SamplingOptions(max_tokens=1))
            await home.generate(warm)
            assert home.cached_prefix(prefix).blocks == 45
            suffixes = [list(range(50_000 + 2000 * i, 50_000 + 2000 * i + 10 * BLOCK)) for i in range(4)]
            return list(await asyncio.gather(*(rt.submit(one_call, tokens=prefix + s) for s in suffixes)))

    assert Counter(run_virtual(main)) == {"home": 3, "idle": 1}

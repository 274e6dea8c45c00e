"""The ``continuum`` and ``agentrt`` policies driving simulated engines through the runtime, in virtual time.

The pins each policy sets while tools run, where the next turn goes, the
priorities pinned programs get, what is left once programs end, and a
replay of a generated agent trace where pinning caches more prompt tokens
than plain vLLM.  Counts only, never timings.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import AgentrtPolicy, ContinuumPolicy, Policy, VLLMPolicy
from runtime._policies._ttl import HoldCost
from runtime.replay import CostProfile, ReplayRun, SimEngine, TraceProgram, generate_workload

from ._builders import program, replay_then
from ._recording import RecordingRoutes


class PinLogEngine(SimEngine):
    """A simulator that logs the pin calls it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[str, str, float]] = []

    async def _set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        self.log.append(("set", program_id, ttl_s))
        return await super()._set_pin(program_id, ttl_s, value)

    async def _release_pin(self, program_id: str) -> bool:
        self.log.append(("release", program_id, 0.0))
        return await super()._release_pin(program_id)


class RecordingContinuum(RecordingRoutes, ContinuumPolicy):
    name = "test-sim-recording-continuum"


def _replay(
    policy: Policy, programs: list[TraceProgram], profile: CostProfile, *, engines: int = 2, kv_blocks: int = 400
) -> tuple[ReplayRun, list[PinLogEngine], list[tuple[int, int]]]:
    """The run, the engines, and each engine's (pinned programs, pinned blocks) once the programs ended."""
    sims = [PinLogEngine(profile, name=f"sim-{i}", kv_blocks=kv_blocks) for i in range(engines)]

    async def live() -> list[tuple[int, int]]:
        return [((s := await e.pin_stats()).pinned_programs, s.pinned_blocks) for e in sims]

    run, left = replay_then(policy, programs, sims, live)
    return run, sims, left


def test_continuum_pins_2s_for_short_tools_and_releases_for_long_ones(profile: CostProfile) -> None:
    policy = RecordingContinuum()
    p = program("p", [("slow", 10.0), ("slow", 10.0), ("fast", 0.5), ("fast", 0.5), None])
    _, sims, live = _replay(policy, [p], profile, engines=1)
    # Cold start: a tool never seen gets 2 s; once `slow` is known to take 10 s, its pin is released;
    # the last turn's pin is released when the program ends.
    assert sims[0].log == [
        ("set", "p", 2.0),
        ("release", "p", 0.0),
        ("set", "p", 2.0),
        ("set", "p", 2.0),
        ("release", "p", 0.0),
    ]
    assert live == [(0, 0)] and policy.tracked_programs == 0
    assert policy.durations.count("slow") == 2 and policy.durations.count("fast") == 2


def test_the_next_turn_follows_the_pin_and_pinned_turns_come_first(profile: CostProfile) -> None:
    policy = RecordingContinuum()
    programs = [program(f"p{i}", [("fast", 0.5)] * 4 + [None], arrival_s=0.1 * i) for i in range(4)]
    run, sims, live = _replay(policy, programs, profile)
    for i, result in enumerate(run.programs):
        assert len({c.engine for c in result.calls}) == 1, f"program {i} moved between engines"
        priorities = [priority for pid, priority, _ in policy.routes if pid == result.id]
        # Program-level FCFS (its number), and every turn after a pinned tool pause in the pinned band.
        assert priorities == [i] + [i - (1 << 40)] * 4
    assert sum(s.scheduler.kv.pin_hits for s in sims) == 16
    assert live == [(0, 0), (0, 0)] and policy.tracked_programs == 0
    # Plain vLLM sends a program's turns to both engines, round-robin.
    baseline, _, _ = _replay(VLLMPolicy(), programs[:1], profile)
    assert len({c.engine for c in baseline.programs[0].calls}) == 2


def test_agentrt_pins_by_the_tools_durations_and_leaves_nothing_behind(profile: CostProfile) -> None:
    # Holding a pin costs 1 s per second (the engine has headroom throughout).
    policy = AgentrtPolicy(hold=HoldCost(idle=1.0), retention=False)  # the pin rule alone
    p = program("p", [("slow", 30.0), ("slow", 30.0), ("fast", 0.5), ("fast", 0.5), None], new_tokens=3000)
    _, sims, live = _replay(policy, [p], profile, engines=1)
    log = sims[0].log
    # No observation at all: the default pin.  `slow` seen once at 30 s:
    # holding that long costs more than re-prefilling 6,000 tokens (under a second).
    assert log[0] == ("set", "p", policy.default_ttl_s)
    assert log[1] == ("release", "p", 0.0)
    # `fast` never seen: the distribution over all tools (30 s twice) decides, no pin;
    # seen once at 0.5 s, it is held just past that: 12,000 tokens take over a second to prefill.
    assert log[2] == ("release", "p", 0.0)
    assert log[3][0] == "set" and log[3][2] == pytest.approx(0.5 + policy.margin_s)
    assert sims[0].prefill_cost_s(12_000) > 1.0
    assert log[-1] == ("release", "p", 0.0)
    assert live == [(0, 0)] and policy.tracked_programs == 0


@pytest.mark.parametrize("policy_cls", [ContinuumPolicy, AgentrtPolicy])
def test_a_replayed_agent_trace_caches_more_with_pins_than_plain_vllm(
    profile: CostProfile, policy_cls: type[Policy]
) -> None:
    # 80 blocks of 128 tokens per engine hold a few programs' contexts: the
    # cache evicts, and plain vLLM's round-robin sends turns where their context is not.
    programs = generate_workload("agent", programs=12, rate=2.0, seed=101, scale=0.1, tool_scale=0.1)
    vllm, _, _ = _replay(VLLMPolicy(), programs, profile, kv_blocks=80)
    pinned, _, live = _replay(policy_cls(), programs, profile, kv_blocks=80)

    def cached(run: ReplayRun) -> int:
        return sum(c.cached_tokens for p in run.programs for c in p.calls)

    assert vllm.totals["pins"] == 0 and pinned.totals["pins"] > 0 and pinned.totals["pin_hits"] > 0
    assert cached(pinned) > cached(vllm)
    assert live == [(0, 0), (0, 0)]

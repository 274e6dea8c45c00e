"""agentrt's memory-bound parts driving simulated engines, in virtual time: host tier, admission, preemption rank.

Counts only, never timings.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import METADATA_PREEMPT_RANK, AgentrtPolicy
from runtime.replay import CostProfile, ReplayRun, SimEngine

from ._builders import program, replay
from .conftest import profile_data

#: The test profile with a host tier: 1 KiB of KV per token, 1 GB/s each way.
HOST = {
    "kv_bytes_per_token": 1024,
    "host_kv_bytes": 1 << 30,
    "host_to_device_bytes_per_s": 1e9,
    "device_to_host_bytes_per_s": 1e9,
}


class RankLogEngine(SimEngine):
    """A simulator that keeps the preemption rank of every request it gets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ranks: list[object] = []

    def _stream(self, request: Any) -> Any:
        self.ranks.append(request.metadata.get(METADATA_PREEMPT_RANK))
        return super()._stream(request)


@pytest.mark.parametrize("host_tier", [True, False], ids=["host-tier", "no-host-tier"])
def test_a_long_tool_sends_the_context_to_host_memory_and_it_is_back_for_the_next_turn(host_tier: bool) -> None:
    profile = CostProfile.model_validate(profile_data(**HOST))
    # 40 blocks of 128 tokens: while the program is in its tool, another's prompt takes most of them.
    engine = SimEngine(profile, name="sim-0", kv_blocks=40, host_tier="directed")
    policy = AgentrtPolicy(host_tier=host_tier)
    for _ in range(3):  # builds are known to take a minute
        policy.durations.observe("build", 60.0)
        policy.observe_tool("build", 60.0)
    programs = [
        program("p", [("build", 60.0), None], new_tokens=1500),
        program("flood", [None], arrival_s=10.0, new_tokens=4500),
    ]
    run = replay(policy, programs, [engine])
    second = {p.id: p for p in run.programs}["p"].calls[1]
    context = (1500 + 8) // 128 * 128  # the first turn's prompt and reply, in full blocks
    if host_tier:
        assert policy.host_tier is not None
        assert policy.host_tier.offloads == 1 and policy.host_tier.prefetches == 1
        # Out to host memory whole; back, the blocks the flood took from the GPU meanwhile.
        assert run.totals["bytes_offloaded"] == context * 1024
        assert 0 < run.totals["bytes_loaded"] < context * 1024
        assert second.cached_tokens >= context  # nothing computed again
    else:
        assert policy.host_tier is None and run.totals["bytes_offloaded"] == 0
        assert second.cached_tokens < context  # the flood evicted it


def test_memory_aware_admission_holds_a_newcomer_until_the_returning_program_is_back() -> None:
    profile = CostProfile.model_validate(profile_data())

    def replay_with(memory_admission: bool) -> ReplayRun:
        engine = SimEngine(profile, name="sim-0", kv_blocks=60)  # 7,680 tokens
        policy = AgentrtPolicy(memory_admission=memory_admission, retention=False, horizon_s=30.0)
        for _ in range(3):
            policy.durations.observe("edit", 5.0)  # back well within the 30 s horizon
            policy.observe_tool("edit", 5.0)
        returning = program("returning", [("edit", 5.0), None], new_tokens=3500)
        newcomer = program("newcomer", [None], arrival_s=1.0, new_tokens=5000)
        return replay(policy, [returning, newcomer], [engine])

    held = replay_with(True)
    free = replay_with(False)
    back = {p.id: p for p in held.programs}["returning"].calls[1]
    lost = {p.id: p for p in free.programs}["returning"].calls[1]
    context = (3500 + 8) // 128 * 128  # the first turn's prompt and reply, in full blocks
    assert back.cached_tokens >= context  # its context was kept for it
    assert lost.cached_tokens < context  # the newcomer's blocks evicted it
    for run, waited in ((held, True), (free, False)):
        finish = {p.id: p.finish_s for p in run.programs}
        assert finish["newcomer"] is not None and finish["returning"] is not None
        # Held, the newcomer ran after the returning program's last turn; else during its tool.
        assert (finish["newcomer"] > finish["returning"]) is waited


def test_a_call_held_for_memory_is_admitted_when_the_program_it_waits_for_leaves_for_a_long_tool() -> None:
    profile = CostProfile.model_validate(profile_data())
    engine = SimEngine(profile, name="sim-0", kv_blocks=60)  # 7,680 tokens: not both programs at once

    class EventsOnly(AgentrtPolicy):
        recheck_s = None  # held calls offered again on events only: the tool's start must be one

    policy = EventsOnly(retention=False, horizon_s=30.0)
    for _ in range(3):
        policy.durations.observe("build", 100.0)  # back far beyond the 30 s horizon: its memory is free meanwhile
        policy.observe_tool("build", 100.0)
    busy = program("busy", [("build", 100.0), None], new_tokens=3500, output_tokens=200)  # ~2 s of decode
    newcomer = program("newcomer", [None], arrival_s=0.5, new_tokens=5000)
    run = replay(policy, [busy, newcomer], [engine])
    finish = {p.id: p.finish_s for p in run.programs}
    assert finish["newcomer"] is not None and finish["busy"] is not None
    # Held while `busy` ran (both do not fit), then run during its build, not after its last turn.
    assert finish["newcomer"] < finish["busy"]
    assert policy.memory.tracked_programs == 0


def test_requests_carry_a_preemption_rank_least_urgent_band_first_then_least_context() -> None:
    profile = CostProfile.model_validate(profile_data())
    engine = RankLogEngine(profile, name="sim-0", kv_blocks=400)
    policy = AgentrtPolicy()
    replay(policy, [program("p", [None], new_tokens=640)], [engine])
    assert len(engine.ranks) == 1 and isinstance(engine.ranks[0], int)
    off = RankLogEngine(profile, name="sim-1", kv_blocks=400)
    replay(AgentrtPolicy(program_preemption=False), [program("p", [None], new_tokens=3000)], [off])
    assert off.ranks == [None]

"""The KV-pin policies' pure logic: the TTL rule, the holding cost, and the policies' decisions.

The rule (``runtime._policies._ttl``) is tested as functions, with
hypothesis for its order properties.  The policies run through the real
runtime and dispatcher on scripted engines: one without pins (no pin
metadata, program-level FCFS), and one that records the pin calls it gets.
The same policies on the simulator: tests/replay/sim/test_pin_policies_sim.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import (
    METADATA_PIN_TTL_S,
    AgentrtPolicy,
    CallInfo,
    Completion,
    ContinuumPolicy,
    Engine,
    EngineLoad,
    EngineUnavailableError,
    PinStats,
    Route,
    Runtime,
    get_policy,
    policy_names,
)
from runtime._policies._pinning import ProgramPins
from runtime._policies._ttl import NO_PIN, HoldCost, best_ttl, cdf_points, hold_cost, pin_value
from runtime.testing import ScriptedEngine
from workflows import Agent, Context, workflow

# -- the TTL rule ---------------------------------------------------------------------


def test_cdf_points_are_the_empirical_cdf_at_each_distinct_duration() -> None:
    assert cdf_points([]) == []
    assert cdf_points([0.5] * 4) == [(0.5, 1.0)]
    assert cdf_points([3.0, 1.0, 1.0, 2.0]) == [(1.0, 0.5), (2.0, 0.75), (3.0, 1.0)]


def test_a_short_tool_with_a_big_reload_is_pinned_for_its_duration() -> None:
    choice = best_ttl(cdf_points([0.5] * 20), gain_s=4.0, cost_per_s=1.0)
    assert choice.ttl_s == 0.5 and choice.p_return == 1.0
    assert choice.utility == pytest.approx(3.5)


def test_a_long_tool_with_a_small_reload_is_not_pinned() -> None:
    assert best_ttl(cdf_points([30.0] * 20), gain_s=0.2, cost_per_s=1.0) == NO_PIN


def test_pressure_shortens_the_pin_and_then_drops_it() -> None:
    # Half the calls return within 0.2 s, the rest after 3 s.
    candidates = cdf_points([0.2] * 5 + [3.0] * 5)
    assert best_ttl(candidates, 10.0, 1.0).ttl_s == 3.0  # 10 - 3 beats 5 - 0.2
    assert best_ttl(candidates, 10.0, 4.0).ttl_s == 0.2  # 5 - 0.8 beats 10 - 12
    assert best_ttl(candidates, 10.0, 30.0) == NO_PIN  # 5 - 6 < 0


def test_hold_cost_is_the_idle_cost_with_headroom_and_grows_with_kv_usage_and_waiting() -> None:
    def load(**figures: Any) -> EngineLoad:
        return EngineLoad("e", True, 0, **figures)

    assert hold_cost(load()) == HoldCost().idle
    weights = HoldCost(idle=1.0, headroom=0.8, kv_weight=4.0, wait_weight=2.0)
    assert hold_cost(load(), weights) == 1.0  # nothing reported: no pressure
    assert hold_cost(load(kv_usage=0.5, waiting=0, running=3), weights) == 1.0
    assert hold_cost(load(kv_usage=0.9), weights) == pytest.approx(3.0)
    assert hold_cost(load(kv_usage=1.0), weights) == pytest.approx(5.0)
    assert hold_cost(load(kv_usage=0.5, waiting=2, running=4), weights) == pytest.approx(2.0)
    assert hold_cost(load(kv_usage=1.0, waiting=9, running=3), weights) == pytest.approx(7.0)  # waiting capped


def test_pin_value_is_expected_prefill_saved_per_unit_held() -> None:
    assert pin_value(0.5, 2.0, 100) == pytest.approx(0.01)
    assert pin_value(1.0, 1.0, 0) == 1.0


durations_st = st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=40)


@given(durations_st, st.floats(0.0, 50.0), st.floats(0.01, 20.0))
def test_the_chosen_ttl_is_the_best_candidate_and_never_loses(durations: list[float], gain: float, cost: float) -> None:
    candidates = cdf_points(durations)
    choice = best_ttl(candidates, gain, cost)
    assert choice.utility >= 0
    assert choice.ttl_s == 0 or choice.ttl_s in dict(candidates)
    for tau, p in candidates:
        if tau > 0:
            assert p * gain - cost * tau <= choice.utility + 1e-9


@given(durations_st, st.floats(0.0, 50.0), st.floats(0.01, 20.0), st.floats(0.0, 20.0))
def test_more_pressure_never_lengthens_and_more_gain_never_shortens_the_pin(
    durations: list[float], gain: float, cost: float, more: float
) -> None:
    candidates = cdf_points(durations)
    base = best_ttl(candidates, gain, cost).ttl_s
    assert best_ttl(candidates, gain, cost + more).ttl_s <= base
    assert best_ttl(candidates, gain + more, cost).ttl_s >= base


# -- the policies through the runtime ------------------------------------------------------

TOOL_CALL = '{"tool_calls": [{"name": "%s", "arguments": {}}]}'


def fast() -> str:
    """Return at once."""
    return "done"


def slow() -> str:
    """Return at once too; the policy is told it is slow."""
    return "done"


def _agent_workflow(tool: str) -> Any:
    agent = Agent("Use the tool.", tools=[fast, slow], max_turns=2)

    @workflow(name=f"uses-{tool}")
    async def uses(ctx: Context) -> Any:
        return await agent.run(ctx, "go")

    return uses


class PinRecordingEngine(ScriptedEngine):
    """A scripted engine that says it pins, and records every pin call (``answer``: what set_pin returns)."""

    def __init__(self, name: str, *, text: str, answer: bool = True, fails: bool = False) -> None:
        super().__init__(name, text=text)
        self.answer = answer
        self.fails = fails
        self.pin_calls: list[tuple[str, str, float, float | None]] = []

    @property
    def supports_pins(self) -> bool:
        return True

    async def _set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        self.pin_calls.append(("set", program_id, ttl_s, value))
        if self.fails:
            raise EngineUnavailableError(f"{self.name} is down")
        return self.answer

    async def _release_pin(self, program_id: str) -> bool:
        self.pin_calls.append(("release", program_id, 0.0, None))
        return True

    async def _pin_stats(self) -> PinStats:
        return PinStats()


class RecordingContinuum(ContinuumPolicy):
    name = "test-recording-continuum"

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[tuple[str, int, dict[str, Any]]] = []

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        route = super().route(call, engines)
        self.routes.append((call.program.id, route.priority, dict(route.metadata)))
        return route


def test_the_policies_are_registered_and_fresh_per_lookup() -> None:
    assert {"continuum", "agentrt", "vllm"} <= set(policy_names())
    assert isinstance(get_policy("continuum"), ContinuumPolicy)
    assert isinstance(get_policy("agentrt"), AgentrtPolicy)
    assert get_policy("agentrt") is not get_policy("agentrt")
    # Each instance learns tool durations on its own.
    one, two = AgentrtPolicy(), AgentrtPolicy()
    one.durations.observe("t", 1.0)
    assert two.durations.count("t") == 0


@pytest.mark.parametrize("policy_cls", [ContinuumPolicy, AgentrtPolicy])
async def test_an_engine_without_pins_gets_no_pin_metadata_and_program_fcfs_priorities(
    policy_cls: type[ContinuumPolicy | AgentrtPolicy],
) -> None:
    engine = ScriptedEngine("plain", text=TOOL_CALL % "fast")
    assert not engine.supports_pins
    policy = policy_cls()
    uses = _agent_workflow("fast")
    async with Runtime([engine], policy=policy) as rt:
        await rt.start_program(uses, {}, program_id="first").result()
        await rt.start_program(uses, {}, program_id="second").result()
        assert policy.tracked_programs == 0  # nothing is kept once programs end
    assert engine.seen and all(METADATA_PIN_TTL_S not in r.metadata for r in engine.seen)
    by_program: dict[str, set[int]] = {}
    for r in engine.seen:
        by_program.setdefault(str(r.metadata["program_id"]), set()).add(r.priority)
    # No pin bonus: Continuum gives a program one priority; agentrt's urgency key may move by a few
    # milliseconds between a program's calls (its remaining service shrinks as the profile learns),
    # never by the pin bonus. And the programs keep the order of their first calls.
    for priorities in by_program.values():
        if isinstance(policy, AgentrtPolicy):
            assert max(priorities) - min(priorities) < policy.pin_bonus_s * 1000.0
        else:
            assert len(priorities) == 1
    assert max(by_program["first"]) < min(by_program["second"])
    assert policy.durations.count("fast") == 2  # once per program: the repeated calls did not run


async def test_continuum_pins_short_tools_for_2s_and_releases_long_ones() -> None:
    policy = RecordingContinuum()
    policy.durations.observe("fast", 0.5)
    for _ in range(3):
        policy.durations.observe("slow", 10.0)
    fast_engine = PinRecordingEngine("a", text=TOOL_CALL % "fast")
    async with Runtime([fast_engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("fast"), {}, program_id="p-fast").result()
    slow_engine = PinRecordingEngine("b", text=TOOL_CALL % "slow")
    async with Runtime([slow_engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("slow"), {}, program_id="p-slow").result()
    # Every request asked for the provisional pin.
    assert all(r.metadata[METADATA_PIN_TTL_S] == policy.provisional_ttl_s for r in fast_engine.seen + slow_engine.seen)
    # While the tool ran: 2 s, no value; the last turn's pin is released when the program ends.
    assert fast_engine.pin_calls == [("set", "p-fast", 2.0, None), ("release", "p-fast", 0.0, None)]
    # A tool averaging 10 s: released when it starts (and again at the end, from the last turn).
    assert slow_engine.pin_calls == [("release", "p-slow", 0.0, None), ("release", "p-slow", 0.0, None)]
    assert policy.tracked_programs == 0


async def test_continuum_pins_a_tool_it_has_never_seen() -> None:
    policy = ContinuumPolicy()
    engine = PinRecordingEngine("a", text=TOOL_CALL % "fast")
    async with Runtime([engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("fast"), {}, program_id="p").result()
    assert engine.pin_calls[0] == ("set", "p", 2.0, None)


async def test_a_pin_the_engine_no_longer_holds_is_forgotten() -> None:
    policy = RecordingContinuum()
    engine = PinRecordingEngine("a", text=TOOL_CALL % "fast", answer=False)
    async with Runtime([engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("fast"), {}, program_id="p").result()
    # set_pin said nothing was pinned: the next turn gets no pinned-program priority.
    priorities = [priority for _, priority, _ in policy.routes]
    assert len(priorities) == 2 and priorities[0] == priorities[1]


async def test_an_engine_failing_a_pin_call_does_not_fail_the_program(caplog: pytest.LogCaptureFixture) -> None:
    policy = ContinuumPolicy()
    engine = PinRecordingEngine("a", text=TOOL_CALL % "fast", fails=True)
    async with Runtime([engine], policy=policy) as rt:
        result = await rt.start_program(_agent_workflow("fast"), {}, program_id="p").result()
    assert result.turns
    assert any("is down" in r.getMessage() for r in caplog.records)
    assert engine.pin_calls[0][0] == "set"
    assert policy.tracked_programs == 0


async def test_a_pinned_program_comes_first_and_the_callers_priority_stays_most_significant() -> None:
    policy = RecordingContinuum()
    policy.durations.observe("fast", 0.1)
    engine = PinRecordingEngine("a", text=TOOL_CALL % "fast")
    agent = Agent("Use the tool.", tools=[fast], max_turns=2)

    @workflow(priority=3)
    async def urgent(ctx: Context) -> Any:
        return await agent.run(ctx, "go")

    async with Runtime([engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("fast"), {}, program_id="p").result()
        await rt.start_program(urgent, {}, program_id="q").result()
    (p1, p2), (q1, q2) = ([prio for pid, prio, _ in policy.routes if pid == x] for x in ("p", "q"))
    pinned = 1 << 40
    assert (p1, p2) == (0, -pinned)  # program 0; its second turn holds a pin
    assert (q1, q2) == (3 * (1 << 42) + 1, 3 * (1 << 42) + 1 - pinned)


class CalibratedPinEngine(PinRecordingEngine):
    """A pin-recording engine whose calibration prices a prefill at 1 s per token."""

    def prefill_cost_s(self, tokens: int) -> float | None:
        return float(tokens)


async def test_agentrt_pins_without_data_for_its_default_and_then_by_the_rule() -> None:
    policy = AgentrtPolicy()
    engine = CalibratedPinEngine("a", text=TOOL_CALL % "fast")
    async with Runtime([engine], policy=policy) as rt:
        await rt.start_program(_agent_workflow("fast"), {}, program_id="cold").result()
        # `fast` now has one observation (the cold run's, microseconds); ten of 0.5 s more.
        for _ in range(10):
            policy.durations.observe("fast", 0.5)
            policy.observe_tool("fast", 0.5)
        await rt.start_program(_agent_workflow("fast"), {}, program_id="warm").result()
    sets = [c for c in engine.pin_calls if c[0] == "set"]
    assert sets[0] == ("set", "cold", policy.default_ttl_s, None)
    # The context is 4 tokens (3 prompt, 1 completion): a 4 s reload, worth
    # waiting 0.5 s for (utility 4 - 0.5), against 4/11 for the short one.
    _, program, ttl, value = sets[1]
    assert program == "warm" and ttl == pytest.approx(0.5 + policy.margin_s)
    assert value == pytest.approx(1.0 * 4.0 / 4)


def _completion(prompt: int, cached: int, *, ttft_s: float, queued_s: float) -> Completion:
    return Completion("r", "a", "m", "", (1,), "length", prompt, 1, cached, ttft_s, ttft_s + 0.1, queued_s)


def test_agentrt_fits_prefill_time_and_measures_the_queueing_of_evicted_calls() -> None:
    policy = AgentrtPolicy(queue_alpha=0.5)
    engine = ScriptedEngine("a")
    assert engine.prefill_cost_s(100) is None
    assert policy.reload_s(engine, 1000) == 0.0 and policy.queue_delay_s(engine) == 0.0
    pins = ProgramPins(seq=0, context_tokens=1000)
    # 900 uncached tokens prefilled in 0.9 s (ttft less queueing), then 1,800 in 1.8 s: 1 ms per token.
    policy.observe_completion(pins, engine, _completion(1000, 100, ttft_s=1.9, queued_s=1.0))
    policy.observe_completion(pins, engine, _completion(2000, 200, ttft_s=2.8, queued_s=1.0))
    assert policy.reload_s(engine, 500) == pytest.approx(0.5)
    # Both calls found less than half of the previous 1,000-token context: evicted, EWMA of their queueing.
    assert policy.queue_delay_s(engine) == pytest.approx(1.0)
    policy.observe_completion(pins, engine, _completion(1100, 100, ttft_s=3.0, queued_s=3.0))
    assert policy.queue_delay_s(engine) == pytest.approx(2.0)
    # A call that found its context cached does not count.
    policy.observe_completion(pins, engine, _completion(1100, 1000, ttft_s=9.1, queued_s=9.0))
    assert policy.queue_delay_s(engine) == pytest.approx(2.0)


class FixedReloadEngine(PinRecordingEngine):
    """An engine (never started: no load figures) whose calibration prices any prefill at ``reload_s``."""

    def __init__(self, reload_s: float) -> None:
        super().__init__("fixed", text="")
        self.reload_s = reload_s

    def prefill_cost_s(self, tokens: int) -> float | None:
        return self.reload_s


def test_agentrt_follows_the_tools_distribution_as_it_changes() -> None:
    policy = AgentrtPolicy(hold=HoldCost(idle=0.1), retention=False)  # the pin rule alone
    pins = ProgramPins(seq=0, engine=FixedReloadEngine(0.3), context_tokens=100)
    program: Any = None  # the rule reads the program only through urgency_weight, 1 for all

    def observe(tool: str, wall_s: float, times: int) -> None:
        for _ in range(times):
            policy.durations.observe(tool, wall_s)
            policy.observe_tool(tool, wall_s)

    observe("t", 2.0, 3)
    # Only 2 s seen: 0.3 s saved for sure, less 0.1 x 2 s held.
    first = policy.ttl_for("t", program, pins)
    assert first.ttl_s == pytest.approx(2.0 + policy.margin_s)
    assert first.value == pytest.approx(1.0 * 0.3 / 100)
    observe("t", 0.3, 3)
    # Half the calls now return within 0.3 s: 0.15 - 0.03 beats 0.3 - 0.2.
    second = policy.ttl_for("t", program, pins)
    assert second.ttl_s == pytest.approx(0.3 + policy.margin_s)
    assert second.value == pytest.approx(0.5 * 0.3 / 100)
    # A tool never seen: the distribution over all tools decides.
    assert policy.ttl_for("other", program, pins).ttl_s == pytest.approx(0.3 + policy.margin_s)
    observe("t", 30.0, 30)
    assert policy.ttl_for("t", program, pins).ttl_s == 0.0  # mostly 30 s now: not worth holding


def test_agentrt_retains_what_the_pin_rule_gives_up_at_a_value_by_its_chance_to_return() -> None:
    policy = AgentrtPolicy(hold=HoldCost(idle=0.1), retention_horizon_s=10.0)
    pins = ProgramPins(seq=0, engine=FixedReloadEngine(0.3), context_tokens=100)
    for wall_s in [2.0] * 6 + [30.0] * 30:
        policy.durations.observe("t", wall_s)
        policy.observe_tool("t", wall_s)
    # The rule says no pin (mostly 30 s); retention keeps the blocks until the 90th percentile has passed,
    # valued by the chance (6 of 36) that the tool is back within the horizon.
    kept = policy.ttl_for("t", None, pins)  # type: ignore[arg-type]
    assert kept.ttl_s == pytest.approx(30.0 + policy.margin_s)
    assert kept.value == pytest.approx((6 / 36) * 0.3 / 100)

"""agentrt's admission, pure logic: the KV ledger of memory-aware admission, and batch room."""

from __future__ import annotations

import random
from typing import Any

import pytest

from runtime._policies._memory import MemoryLedger
from runtime.testing import ScriptedEngine


class SizedEngine(ScriptedEngine):
    """A scripted engine whose KV cache holds ``kv_tokens`` tokens (blocks of one token)."""

    def __init__(self, name: str, kv_tokens: int | None) -> None:
        super().__init__(name)
        self.kv_tokens = kv_tokens

    def _load_figures(self) -> dict[str, Any]:
        if self.kv_tokens is None:
            return {}
        return {"kv_blocks": self.kv_tokens, "block_size": 1}


def test_running_and_soon_returning_programs_count_and_late_ones_do_not() -> None:
    engine = SizedEngine("e", 1000)
    ledger = MemoryLedger(fill=1.0, growth_share=0.0, horizon_s=30.0)
    ledger.placed("a", "wf", engine, 400)
    assert ledger.counted(engine, 0.0) == 400  # running
    ledger.finished("a", engine, 350)
    assert ledger.counted(engine, 0.0) == 350  # between calls: back at once
    ledger.away_until("a", 10.0)
    assert ledger.counted(engine, 0.0) == 350  # back within the horizon
    ledger.away_until("a", 100.0)
    assert ledger.counted(engine, 0.0) == 0  # back after it: its blocks may go
    assert ledger.counted(engine, 80.0) == 350  # its return comes within the horizon again
    assert ledger.counted(engine, 200.0) == 0  # long overdue
    ledger.back("a")
    assert ledger.counted(engine, 200.0) == 350
    assert ledger.fits(engine, "b", 650, 0.0, key=0.0) and not ledger.fits(engine, "b", 651, 0.0, key=0.0)
    assert ledger.fits(engine, "a", 1000, 0.0, key=0.0)  # its own context is not counted twice


def test_by_default_a_program_away_counts_while_its_return_is_nearer_than_its_reload() -> None:
    small, large = SizedEngine("small", 10_000), SizedEngine("large", 10_000)
    seconds_per_token = {"small": 0.0001, "large": 0.01}  # 0.1 s and 10 s to prefill 1,000 tokens again
    ledger = MemoryLedger(fill=1.0, growth_share=0.0, reload_s=lambda e, tokens: seconds_per_token[e.name] * tokens)
    assert ledger.horizon_s is None
    for engine, program in ((small, "s"), (large, "l")):
        ledger.placed(program, "wf", engine, 1_000)
        ledger.finished(program, engine, 1_000)
        ledger.away_until(program, 5.0)
    assert ledger.horizon(small, 1_000) == pytest.approx(0.1) and ledger.horizon(large, 1_000) == pytest.approx(10.0)
    # Back in 5 s: holding a newcomer for it costs more than the 0.1 s reload on `small`, less than 10 s on `large`.
    assert ledger.counted(small, 0.0) == 0
    assert ledger.counted(large, 0.0) == 1_000
    assert ledger.counted(small, 4.95) == 1_000  # its return is nearer than its reload now
    assert ledger.counted(large, 16.0) == 0  # overdue by more than its reload: no longer expected soon
    ledger.back("s")
    assert ledger.counted(small, 100.0) == 1_000  # back: about to call again
    # Nothing to price a reload with: a program away does not count.
    bare = MemoryLedger(fill=1.0, growth_share=0.0)
    bare.placed("a", "wf", small, 500)
    bare.finished("a", small, 500)
    bare.away_until("a", 0.5)
    assert bare.counted(small, 0.0) == 0 and bare.horizon(small, 500) == 0.0


def test_a_claim_holds_memory_against_later_keys_only() -> None:
    engine = SizedEngine("e", 1000)
    ledger = MemoryLedger(fill=1.0, growth_share=0.0)
    ledger.placed("a", "wf", engine, 600)
    ledger.claim("held", engine, 300, key=5.0)
    assert ledger.fits(engine, "early", 400, 0.0, key=1.0)  # more urgent than the claim
    assert not ledger.fits(engine, "late", 400, 0.0, key=9.0)  # after it: the claim counts
    assert ledger.fits(engine, "late", 100, 0.0, key=9.0)
    ledger.placed("held", "wf", engine, 300)  # routed: the claim becomes a resident
    assert ledger.counted(engine, 0.0, key=9.0) == 900


def test_demand_reserves_the_workflows_expected_growth() -> None:
    engine = SizedEngine("e", 10_000)
    ledger = MemoryLedger(growth_share=0.5)
    assert ledger.demand("wf", 100) == 100  # nothing learned yet
    ledger.placed("a", "wf", engine, 100)
    ledger.finished("a", engine, 4_100)
    ledger.program_finished("a")
    assert ledger.expected_peak("wf") == 4_100
    assert ledger.demand("wf", 100) == 100 + 2_000
    assert ledger.demand("wf", 5_000) == 5_000  # past the peak: no growth reserved
    assert ledger.counted(engine, 0.0) == 0  # a finished program holds nothing


def test_growth_is_reserved_only_where_the_expected_peak_is_slow_to_reload() -> None:
    fast, slow, unpriced = SizedEngine("fast", 100_000), SizedEngine("slow", 100_000), SizedEngine("unpriced", 100_000)
    seconds_per_token = {"fast": 0.0001, "slow": 0.001, "unpriced": None}  # the 4,100-token peak: 0.41 s, 4.1 s

    def reload_s(engine: Any, tokens: int) -> float | None:
        rate = seconds_per_token[engine.name]
        return None if rate is None else rate * tokens

    ledger = MemoryLedger(growth_share=0.5, growth_reload_s=1.0, reload_s=reload_s)
    ledger.placed("a", "wf", slow, 100)
    ledger.finished("a", slow, 4_100)
    ledger.program_finished("a")
    assert ledger.demand("wf", 100, slow) == 100 + 2_000
    assert ledger.demand("wf", 100, unpriced) == 100 + 2_000  # not known: reserved
    assert ledger.demand("wf", 100, fast) == 100  # a preemption later costs 0.41 s: nothing held back for it
    assert ledger.demand("wf", 100) == 100 + 2_000  # no engine named
    # Residents are counted with their own engine's rule.
    ledger.placed("b", "wf", fast, 100)
    ledger.placed("c", "wf", slow, 100)
    assert ledger.counted(fast, 0.0) == 100 and ledger.counted(slow, 0.0) == 2_100
    assert MemoryLedger(growth_share=0.5, growth_reload_s=0.0, reload_s=reload_s).growth_reload_s == 0.0
    with pytest.raises(ValueError, match="growth_reload_s"):
        MemoryLedger(growth_reload_s=-1.0)


def test_an_engine_that_does_not_say_its_size_always_fits() -> None:
    engine = SizedEngine("e", None)
    ledger = MemoryLedger()
    ledger.placed("a", "wf", engine, 10**9)
    assert ledger.free(engine, 0.0) is None and ledger.fits(engine, "b", 10**9, 0.0, key=0.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="fill"):
        MemoryLedger(fill=0.0)
    with pytest.raises(ValueError, match="horizon_s"):
        MemoryLedger(horizon_s=-1.0)


def test_an_engine_where_nothing_counts_takes_any_demand() -> None:
    engine = SizedEngine("e", 1000)
    ledger = MemoryLedger(fill=1.0)
    assert ledger.fits(engine, "huge", 5000, 0.0, key=0.0)
    ledger.placed("a", "wf", engine, 10)
    assert not ledger.fits(engine, "huge", 5000, 0.0, key=0.0)


def test_held_programs_yield_to_more_urgent_ones_and_never_wait_on_each_other() -> None:
    engine = SizedEngine("e", 1000)
    ledger = MemoryLedger(fill=1.0)
    for program_id in ("x", "y"):
        ledger.placed(program_id, "wf", engine, 600)
        ledger.finished(program_id, engine, 600)
    # Both contexts are there (1,200 tokens on 1,000: one was evicted), and both next calls are held.
    ledger.claim("x", engine, 700, key=1.0)
    ledger.claim("y", engine, 700, key=2.0)
    assert ledger.fits(engine, "x", 700, 0.0, key=1.0)  # y, keyed after, yields
    assert not ledger.fits(engine, "y", 700, 0.0, key=2.0)  # x's claim comes first
    assert ledger.counted(engine, 0.0) == 1200  # without a key: every resident


def test_an_engine_with_batch_room_for_every_waiting_call_needs_no_gate() -> None:
    from runtime import EngineLoad
    from runtime._policies._placement import has_batch_room

    def load(**figures: Any) -> EngineLoad:
        base: dict[str, Any] = {"waiting": 2, "running": 3, "kv_usage": 0.5, "max_num_seqs": 8, "in_flight": 5}
        return EngineLoad("e", True, **{**base, **figures})

    assert has_batch_room(load())  # 3 running + 2 waiting < 8 slots, cache half used
    assert not has_batch_room(load(), routed=8)  # 8 routed there, 3 running: 5 waiting fill the 8 slots
    assert not has_batch_room(load(running=6))  # the batch is full with them
    assert not has_batch_room(load(kv_usage=0.95))  # they would wait for blocks
    assert has_batch_room(load(kv_usage=0.95, pinned_blocks=50, kv_blocks=100))  # pins give way
    assert not has_batch_room(load(max_num_seqs=None))  # an engine that does not say


class _Host:
    """The runtime as a policy sees it, at time 0."""

    def __init__(self, engines: list[Any]) -> None:
        self.engines = engines

    def engine(self, name: str) -> Any:
        return next(e for e in self.engines if e.name == name)

    def wake(self) -> None:
        pass

    def now(self) -> float:
        return 0.0


@pytest.mark.parametrize("move_factor", [1.0, 2.0])
def test_a_continuing_call_leaves_its_engine_only_when_it_costs_more_than_move_factor_times_the_best(
    move_factor: float,
) -> None:
    from runtime import AgentrtPolicy, Completion, TokenPrompt
    from runtime._policies._pinning import ProgramPins

    from ._cache_routing import FixedEngine, call_info

    class RoomyEngine(FixedEngine):
        def _load_figures(self) -> dict[str, Any]:
            return {**super()._load_figures(), "kv_blocks": 100_000}

    home = RoomyEngine("home", cached_blocks=8)  # 128 of the prompt's 160 tokens cached
    other = RoomyEngine("other", cached_blocks=0)
    engines = [home, other]
    policy = AgentrtPolicy(move_factor=move_factor)
    policy.bind(_Host(engines))
    prompt = TokenPrompt(tuple(range(3, 163)))
    earlier = TokenPrompt(prompt.token_ids[:150])
    call = call_info(prompt)
    reply = Completion("r", "home", "m", "", (), "stop", 150, 0, 0, None, 0.1)
    policy.contexts.remember(call.program.id, earlier, reply, home)  # the call continues a context on `home`
    # Placement cost in tokens: prompt tokens to prefill there + tokens of the calls running there.
    # `other`: 160 + 0.  `home`: 32 + the running tokens placed below.
    stays = round(move_factor * 160) - 32
    policy.memory.placed("busy", "wf", home, stays)
    assert policy._placement_cost(call, home, home) == 32 + stays
    assert policy._memory_placement(call, engines, ProgramPins(0)) is home
    policy.memory.placed("busier", "wf", home, 1)
    assert policy._memory_placement(call, engines, ProgramPins(0)) is other
    with pytest.raises(ValueError, match="move_factor"):
        AgentrtPolicy(move_factor=0.5)


def _counted_by_hand(ledger: MemoryLedger, engine: Any, now: float, exclude: str | None, key: float | None) -> int:
    """The ledger's rule summed over every program, as the docstring states it."""
    total = 0
    for program_id, r in ledger._residents.items():
        if r.engine is not engine or program_id == exclude or (key is not None and ledger.claimed(program_id)):
            continue
        away = not r.active and r.back_at is not None
        if not away or abs(r.back_at - now) <= ledger.horizon(engine, r.tokens):  # type: ignore[operator]
            total += ledger.demand(r.workflow, r.tokens, engine)
    if key is not None:
        for program_id, claim in ledger._claims.items():
            if claim.engine is engine and claim.key < key and program_id != exclude:
                total += claim.demand
    return total


@pytest.mark.parametrize("seed", range(3))
def test_cached_totals_match_a_sum_over_every_program_through_random_events(seed: int) -> None:
    rng = random.Random(seed)
    engines = [SizedEngine(f"e{i}", 50_000) for i in range(3)]
    rate = {e.name: 0.0002 * (i + 1) for i, e in enumerate(engines)}  # peaks reload in 0.2-3 s: some reserve growth
    ledger = MemoryLedger(growth_share=0.5, reload_s=lambda e, tokens: rate[e.name] * tokens)
    programs = [f"p{i}" for i in range(12)]
    now = 0.0
    for _ in range(2_000):
        now += rng.choice((0.0, 0.0, 0.05, 0.5, 3.0))
        p, e = rng.choice(programs), rng.choice(engines)
        event = rng.randrange(7)
        if event == 0:
            ledger.placed(p, rng.choice(("wf", "other")), e, rng.randrange(100, 8_000))
        elif event == 1:
            ledger.finished(p, rng.choice((e, None)), rng.randrange(100, 9_000))
        elif event == 2:
            ledger.away_until(p, now + rng.choice((0.1, 1.0, 5.0, 30.0)))
        elif event == 3:
            ledger.back(p)
        elif event == 4 and p in ledger._residents:
            ledger.claim(p, e, rng.randrange(100, 9_000), key=rng.uniform(0, 100))
        elif event == 5 and rng.random() < 0.3:
            ledger.program_finished(p)
        for engine in engines:
            exclude = rng.choice((None, p))
            key = rng.choice((None, rng.uniform(0, 100)))
            assert ledger.counted(engine, now, exclude=exclude, key=key) == _counted_by_hand(
                ledger, engine, now, exclude, key
            )
        assert {e: ledger.running_tokens(e) for e in engines} == {
            e: sum(r.tokens for r in ledger._residents.values() if r.engine is e and r.active) for e in engines
        }

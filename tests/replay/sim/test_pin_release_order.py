"""Which pin memory pressure releases first: the least valuable, then the latest program's.

On the block manager (values and ranks given directly), on the scheduler
(ranks from the order in which programs' first requests arrived, values
from ``set_pin``) and on the engine (``Engine.set_pin(..., value=)``).
"""

from __future__ import annotations

import random

import pytest

from runtime.replay import CostProfile, SimEngine, run_virtual
from runtime.replay._sim._kv import BlockManager
from runtime.replay._sim._scheduler import Scheduler

from ._builders import token_request
from ._drive import request, run


def _pinned(kv: BlockManager, program_id: str, first: int, count: int, **kw: float | int | None) -> None:
    blocks = kv.allocate(count)
    assert blocks is not None
    kv.register_many(blocks, list(range(first, first + count)))
    kv.pin(program_id, blocks, 100.0, **kw)  # type: ignore[arg-type]


def _release_one(kv: BlockManager) -> set[str]:
    """Release pins until one pin's blocks are free; returns the programs whose pins went."""
    before = {p for p in "ABCDEFGH" if kv.has_pin(p)}
    kv.release_pins_under_pressure(kv.num_free + 1)
    kv.check()
    return before - {p for p in "ABCDEFGH" if kv.has_pin(p)}


def test_the_least_valuable_pin_goes_first_and_none_counts_as_zero() -> None:
    kv = BlockManager(9, 1)
    _pinned(kv, "A", 100, 3, value=1.0, rank=1)
    _pinned(kv, "B", 200, 3, value=None, rank=2)
    _pinned(kv, "C", 300, 3, value=2.0, rank=3)
    assert kv.num_free == 0
    assert [_release_one(kv) for _ in range(3)] == [{"B"}, {"A"}, {"C"}]
    assert kv.pins_released_pressure == 3 and kv.num_free == 9


def test_among_equal_values_the_latest_program_goes_first() -> None:
    kv = BlockManager(9, 1)
    # Created in another order than the programs' ranks: the rank decides, not creation.
    _pinned(kv, "B", 200, 3, value=0.5, rank=2)
    _pinned(kv, "C", 300, 3, value=0.5, rank=3)
    _pinned(kv, "A", 100, 3, value=0.5, rank=1)
    assert [_release_one(kv) for _ in range(3)] == [{"C"}, {"B"}, {"A"}]


def test_set_expiry_re_values_a_pin() -> None:
    kv = BlockManager(6, 1)
    _pinned(kv, "A", 100, 3, value=5.0, rank=1)
    _pinned(kv, "B", 200, 3, value=1.0, rank=2)
    assert kv.set_expiry("A", 50.0, value=0.5)
    assert kv.set_expiry("B", 50.0)  # no value: 0
    kv.check()
    assert _release_one(kv) == {"B"}
    assert kv.set_expiry("A", 50.0, value=0.1)
    assert _release_one(kv) == {"A"}


@pytest.mark.parametrize("seed", range(3))
def test_release_order_matches_a_reference_under_random_churn(seed: int) -> None:
    rng = random.Random(seed)
    kv = BlockManager(64, 1)
    values: dict[str, tuple[float, int]] = {}
    ranks = {p: i for i, p in enumerate("ABCDEFGH")}
    next_hash = 0
    for _ in range(400):
        op = rng.random()
        program = rng.choice("ABCDEFGH")
        if op < 0.35 and kv.num_free >= 2:
            value = rng.choice([None, 0.0, 1.0, 2.0])
            _pinned(kv, program, next_hash, 2, value=value, rank=ranks[program])
            next_hash += 2
            values[program] = (value or 0.0, ranks[program])
        elif op < 0.55 and program in values:
            value = rng.choice([None, 1.0, 3.0])
            assert kv.set_expiry(program, 100.0, value=value)
            values[program] = (value or 0.0, ranks[program])
        elif op < 0.7 and program in values:
            assert kv.consume_pin(program)
            del values[program]
        elif values:
            expected = min(values, key=lambda p: (values[p][0], -values[p][1]))
            assert _release_one(kv) == {expected}
            del values[expected]
        kv.check()
        assert {p for p in ranks if kv.has_pin(p)} == set(values)


def test_the_scheduler_ranks_programs_by_their_first_request(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=10)
    # A's first request reaches the scheduler before B's; A's pin is then created last.
    sched.add(request("a1", list(range(300)), 1, program_id="A"))
    now = run(sched)
    sched.add(request("b", list(range(1000, 1300)), 1, program_id="B", pin_ttl_s=100.0, arrival=now))
    now = run(sched, now)
    sched.add(request("a2", list(range(2000, 2300)), 1, program_id="A", pin_ttl_s=100.0, arrival=now))
    now = run(sched, now)
    assert sched.kv.has_pin("A") and sched.kv.has_pin("B")
    # Pressure: B is the latest program, so its pin goes although A's is newer.
    sched.add(request("c", list(range(5000, 5600)), 1, arrival=now))
    now = run(sched, now)
    assert sched.kv.pins_released_pressure == 1
    assert sched.kv.has_pin("A") and not sched.kv.has_pin("B")


def test_a_valued_pin_outlasts_the_latest_programs_zero_valued_one(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=10)
    sched.add(request("a", list(range(300)), 1, program_id="A", pin_ttl_s=100.0))
    now = run(sched)
    sched.add(request("b", list(range(1000, 1300)), 1, program_id="B", pin_ttl_s=100.0, arrival=now))
    now = run(sched, now)
    assert sched.set_pin("B", now + 100.0, value=1.0)  # B, the latest program, is now worth more
    sched.add(request("c", list(range(5000, 5600)), 1, arrival=now))
    run(sched, now)
    assert sched.kv.has_pin("B") and not sched.kv.has_pin("A")


def test_engine_set_pin_value_decides_what_pressure_releases(profile: CostProfile) -> None:
    async def main(value_a: float | None, value_b: float | None) -> tuple[bool, bool]:
        async with SimEngine(profile, kv_blocks=10) as engine:
            await engine.generate(token_request("a", range(300), program_id="A", pin_ttl_s=1.0))
            await engine.generate(token_request("b", range(1000, 1300), program_id="B", pin_ttl_s=1.0))
            assert await engine.set_pin("A", 100.0, value=value_a)
            assert await engine.set_pin("B", 100.0, value=value_b)
            await engine.generate(token_request("c", range(5000, 5600)))
            kv = engine.scheduler.kv
            assert (await engine.pin_stats()).pins_released_pressure == 1
            return kv.has_pin("A"), kv.has_pin("B")

    assert run_virtual(lambda: main(None, None)) == (True, False)  # equal values: the latest program goes
    assert run_virtual(lambda: main(2.0, 1.0)) == (True, False)
    assert run_virtual(lambda: main(1.0, 2.0)) == (False, True)


def test_prefill_cost_follows_the_profile(profile: CostProfile) -> None:
    engine = SimEngine(profile)
    assert engine.prefill_cost_s(0) == 0.0
    # One chunk of 1,000 tokens at 10,000 tokens/s at the start of the profile's curve, plus one step overhead.
    one = engine.prefill_cost_s(1000)
    assert one == pytest.approx(0.001 + 1000 / profile.prefill_rate(500))
    # 5,000 tokens take three chunks of the 2,048-token budget, each at its own context.
    chunks = [(0, 2048), (2048, 2048), (4096, 904)]
    expected = sum(0.001 + profile.prefill_chunk_time(before, n) for before, n in chunks)
    assert engine.prefill_cost_s(5000) == pytest.approx(expected)

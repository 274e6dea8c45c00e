"""The simulated vLLM scheduler: prefix hits, chunked prefill, timing, preemption, queues, pins."""

from __future__ import annotations

import pytest

from runtime.replay._sim import CostProfile
from runtime.replay._sim._scheduler import Scheduler

from ._drive import request, run

PREFIX = list(range(1000, 1384))  # three blocks of 128


def test_second_request_hits_the_shared_three_block_prefix(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    a = request("a", [*PREFIX, *range(5000, 5050)], 4)
    sched.add(a)
    now = run(sched)
    b = request("b", [*PREFIX, *range(6000, 6070)], 4, arrival=now)
    sched.add(b)
    run(sched, now)
    assert a.cached_tokens == 0
    assert b.cached_tokens == 384
    assert b.finished and len(b.output_token_ids) == 4


def test_a_whole_prompt_hit_leaves_the_last_token_uncached(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    sched.add(request("a", PREFIX, 2))
    now = run(sched)
    again = request("b", PREFIX, 2, arrival=now)
    sched.add(again)
    run(sched, now)
    assert again.cached_tokens == 256  # 383 tokens may hit, rounded down to whole blocks


def test_times_follow_the_cost_profile(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    r = request("r", list(range(1000)), 3)
    sched.add(r)
    run(sched)
    prefill = 0.001 + 1000 / profile.prefill_rate(500)
    assert r.first_scheduled == 0.0
    assert r.first_token_time == pytest.approx(prefill)
    assert r.finish_time == pytest.approx(prefill + 2 * (0.001 + 0.010))
    assert r.queued_s == 0.0


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    r = request("r", list(range(5000)), 1)
    sched.add(r)
    run(sched)
    chunks = [(0, 2048), (2048, 2048), (4096, 904)]
    expected = sum(0.001 + n / profile.prefill_rate(before + n / 2) for before, n in chunks)
    assert r.first_token_time == pytest.approx(expected)
    assert r.finish_time == r.first_token_time


def test_a_tiny_cache_forces_preemptions_and_everyone_finishes(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=8)
    reqs = [request(f"r{i}", list(range(i * 1000, i * 1000 + 200)), 300) for i in range(4)]
    for r in reqs:
        sched.add(r)
    run(sched)
    assert all(r.finished and len(r.output_token_ids) == 300 for r in reqs)
    assert sched.preemptions > 0
    assert sched.preemptions == sum(r.preemptions for r in reqs)
    assert sched.kv.num_used == 0


def test_a_request_that_can_never_fit_is_rejected(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=4)
    with pytest.raises(ValueError, match="needs 5 KV blocks"):
        sched.add(request("big", list(range(500)), 100))


@pytest.mark.parametrize(("policy", "order"), [("priority", ["b", "c", "a"]), ("fcfs", ["a", "b", "c"])])
def test_waiting_queue_order(profile: CostProfile, policy: str, order: list[str]) -> None:
    sched = Scheduler(profile, max_num_seqs=1, queue_order=policy)  # type: ignore[arg-type]
    reqs = [
        request(rid, [i] * 10, 2, arrival=i, priority=p) for i, (rid, p) in enumerate([("a", 5), ("b", 0), ("c", 1)])
    ]
    for r in reqs:
        sched.add(r)
    run(sched, 3.0)
    assert [r.request_id for r in sorted(reqs, key=lambda r: r.finish_time or 0)] == order


def test_priority_preemption_evicts_the_least_important_running_request(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=6)
    low = request("low", list(range(200)), 300, priority=9)
    high = request("high", list(range(1000, 1200)), 300, priority=0, arrival=0.001)
    sched.add(low)
    sched.add(high)
    run(sched)
    assert low.preemptions > 0 and high.preemptions == 0
    assert high.finish_time is not None and low.finish_time is not None and high.finish_time < low.finish_time


def test_a_preempt_rank_overrides_priority_in_the_victim_choice(profile: CostProfile) -> None:
    # The same pair as above, but the urgent request carries the higher rank (metadata preempt_rank):
    # it is the one preempted, although its priority is better.
    sched = Scheduler(profile, kv_blocks=6)
    low = request("low", list(range(200)), 300, priority=9)
    high = request("high", list(range(1000, 1200)), 300, priority=0, arrival=0.001)
    low.preempt_rank, high.preempt_rank = 1, 2
    sched.add(low)
    sched.add(high)
    run(sched)
    assert high.preemptions > 0 and low.preemptions == 0


def test_abort_releases_blocks(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    r = request("r", list(range(1000)), 50)
    sched.add(r)
    step = sched.schedule(0.0)
    assert step is not None and sched.kv.num_used == 8
    assert sched.abort("r")
    sched.complete(step, step.duration)
    assert sched.kv.num_used == 0 and not r.finished and sched.schedule(1.0) is None
    assert not sched.abort("r")


def test_a_pin_keeps_the_program_prefix_through_pressure_from_others(profile: CostProfile) -> None:
    def next_turn_cached(pin_ttl_s: float | None) -> tuple[int, Scheduler]:
        sched = Scheduler(profile, kv_blocks=12)
        sched.add(request("p1", PREFIX, 1, program_id="p", pin_ttl_s=pin_ttl_s))
        now = run(sched)
        # Others fill the cache and evict every unpinned cached block.
        for i in range(3):
            sched.add(request(f"o{i}", list(range(10000 * (i + 1), 10000 * (i + 1) + 600)), 1, arrival=now))
            now = run(sched, now)
        turn = request("p2", [*PREFIX, *range(7000, 7100)], 1, program_id="p", arrival=now)
        sched.add(turn)
        run(sched, now)
        return turn.cached_tokens or 0, sched

    cached, sched = next_turn_cached(30.0)
    assert cached == 384
    assert (sched.kv.pins, sched.kv.pin_hits, sched.kv.pins_expired) == (1, 1, 0)
    cached, sched = next_turn_cached(None)
    assert cached == 0
    assert sched.kv.pins == 0


def test_pins_expire_after_their_ttl(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    sched.add(request("p1", PREFIX, 1, program_id="p", pin_ttl_s=2.0))
    now = run(sched)
    assert sched.kv.num_used == 3 and sched.kv.num_pins == 1  # 384 prompt tokens; the one output is never computed
    sched.kv.expire_pins(now + 1.9)
    assert sched.kv.num_pins == 1
    sched.kv.expire_pins(now + 2.0)
    assert sched.kv.num_pins == 0 and sched.kv.pins_expired == 1 and sched.kv.num_used == 0
    sched.kv.check()


def test_pressure_releases_the_latest_pin_first(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=10)
    sched.add(request("a", list(range(300)), 1, program_id="A", pin_ttl_s=100.0))
    now = run(sched)
    sched.add(request("b", list(range(1000, 1300)), 1, program_id="B", pin_ttl_s=100.0, arrival=now))
    now = run(sched, now)
    assert sched.kv.num_used == 6
    sched.add(request("c", list(range(5000, 5600)), 1, arrival=now))
    run(sched, now)
    kv = sched.kv
    assert kv.pins_released_pressure == 1
    assert kv.has_pin("A") and not kv.has_pin("B")
    assert sched.unpin("A") and not sched.unpin("A")
    assert kv.num_used == 0


def test_a_new_pin_of_the_same_program_replaces_the_old_one(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    sched.add(request("a1", PREFIX, 1, program_id="A", pin_ttl_s=100.0))
    now = run(sched)
    sched.add(request("x", list(range(9000, 9300)), 1, program_id="A", pin_ttl_s=100.0, arrival=now))
    run(sched, now)
    assert sched.kv.pins == 2 and sched.kv.num_pins == 1 and sched.kv.pin_hits == 1
    assert sched.kv.num_used == 3

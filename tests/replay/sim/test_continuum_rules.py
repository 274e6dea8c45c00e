"""Continuum's public scheduler in the simulator (``Scheduler.use_continuum``), rule by rule.

Each test runs the same situation with the rules on and off (the engines'
soft pins, vLLM's victims and queue order), so it shows what the rule changes.
The rules are in ``runtime/replay/_sim/_continuum.py``.
"""

from __future__ import annotations

import pytest

from runtime import PIN_MODE_CONTINUUM, GenerateRequest, SamplingOptions, TokenPrompt
from runtime.replay import CostProfile, SimEngine, run_virtual
from runtime.replay._sim._continuum import continuum_pick, continuum_victim
from runtime.replay._sim._scheduler import Scheduler

from ._drive import request, run

PREFIX = list(range(1000, 1384))  # three blocks of 128


def _scheduler(profile: CostProfile, continuum: bool, **kw: int) -> Scheduler:
    sched = Scheduler(profile, **kw)  # type: ignore[arg-type]
    if continuum:
        sched.use_continuum()
    return sched


def _step(sched: Scheduler, now: float) -> float:
    step = sched.schedule(now)
    assert step is not None
    now += step.duration
    sched.complete(step, now)
    sched.kv.check()
    return now


@pytest.mark.parametrize("continuum", [True, False])
def test_hard_pins_keep_a_newcomer_waiting_while_a_request_runs(profile: CostProfile, continuum: bool) -> None:
    sched = _scheduler(profile, continuum, kv_blocks=10)
    sched.add(request("a", list(range(300)), 1, program_id="A", pin_ttl_s=1000.0))
    now = run(sched)
    running = request("r", list(range(5000, 5256)), 40, program_id="R", arrival=now)
    sched.add(running)
    now = _step(sched, now)
    newcomer = request("c", list(range(9000, 9600)), 1, program_id="C", arrival=now)
    sched.add(newcomer)
    now = _step(sched, now)  # 3 pinned + 3 running: the newcomer's 5 blocks do not fit beside both
    kv = sched.kv
    if continuum:
        assert newcomer.first_scheduled is None and kv.has_pin("A") and kv.pins_released_pressure == 0
        # It gets in once the running request has left, beside the pin.
        run(sched, now)
        assert newcomer.finished and kv.has_pin("A") and kv.pins_released_pressure == 0
        assert running.finish_time is not None and newcomer.first_scheduled is not None
        assert newcomer.first_scheduled >= running.finish_time
    else:
        assert newcomer.first_scheduled is not None and not kv.has_pin("A") and kv.pins_released_pressure == 1


@pytest.mark.parametrize("continuum", [True, False])
def test_the_victim_is_the_latest_job_and_pins_stay_while_two_run(profile: CostProfile, continuum: bool) -> None:
    sched = _scheduler(profile, continuum, kv_blocks=5)
    sched.add(request("c", list(range(100)), 1, program_id="C", pin_ttl_s=1000.0))
    now = run(sched)
    # A arrived first but is the less important by priority: vLLM preempts it, Continuum the later job B.
    a = request("a", list(range(2000, 2127)), 200, program_id="A", priority=10, arrival=now)
    b = request("b", list(range(3000, 3127)), 200, program_id="B", priority=0, arrival=now)
    sched.add(a)
    sched.add(b)
    run(sched, now)
    assert a.finished and b.finished
    if continuum:
        assert a.preemptions == 0 and b.preemptions > 0
        assert sched.kv.has_pin("C") and sched.kv.pins_released_pressure == 0
    else:
        assert a.preemptions > 0 and b.preemptions == 0
        assert not sched.kv.has_pin("C") and sched.kv.pins_released_pressure == 1


def test_with_nothing_running_the_latest_ending_pin_goes_for_a_newcomer(profile: CostProfile) -> None:
    sched = _scheduler(profile, True, kv_blocks=8)
    sched.add(request("a", list(range(300)), 1, program_id="A", pin_ttl_s=100.0))
    sched.add(request("b", list(range(1000, 1300)), 1, program_id="B", pin_ttl_s=200.0))
    now = run(sched)
    newcomer = request("c", list(range(9000, 9600)), 1, program_id="C", arrival=now)
    sched.add(newcomer)
    run(sched, now)
    kv = sched.kv
    assert newcomer.finished and kv.has_pin("A") and not kv.has_pin("B") and kv.pins_released_pressure == 1


def test_with_one_request_running_the_latest_ending_pin_goes(profile: CostProfile) -> None:
    sched = _scheduler(profile, True, kv_blocks=6)
    sched.add(request("p", list(range(100)), 1, program_id="P", pin_ttl_s=100.0))
    sched.add(request("q", list(range(200, 300)), 1, program_id="Q", pin_ttl_s=200.0))
    now = run(sched)
    assert sched.kv.num_pins == 2
    grower = request("r", list(range(5000, 5127)), 500, program_id="R", arrival=now)  # 5 blocks by its end
    sched.add(grower)
    run(sched, now)
    kv = sched.kv
    assert grower.finished and grower.preemptions == 0
    assert kv.has_pin("P") and not kv.has_pin("Q") and kv.pins_released_pressure == 1


def test_with_one_request_running_and_no_pin_it_preempts_itself_and_still_finishes(profile: CostProfile) -> None:
    sched = _scheduler(profile, True, kv_blocks=4)
    a = request("a", list(range(127)), 300, program_id="A")
    sched.add(a)
    run(sched)
    assert a.finished and a.preemptions == 0  # 427 tokens: four blocks, exactly the cache


@pytest.mark.parametrize("continuum", [True, False])
def test_a_pin_whose_job_has_a_request_waiting_does_not_expire(profile: CostProfile, continuum: bool) -> None:
    sched = _scheduler(profile, continuum, max_num_seqs=1)
    sched.add(request("a1", PREFIX, 1, program_id="A", pin_ttl_s=0.05))
    now = run(sched)
    # A long request takes the only sequence slot; A's next turn waits past its pin's expiry.
    blocker = request("x", list(range(8000, 8100)), 30, program_id="X", arrival=now)
    sched.add(blocker)
    now = _step(sched, now)
    turn = request("a2", [*PREFIX, *range(7000, 7100)], 1, program_id="A", arrival=now)
    sched.add(turn)
    run(sched, now)
    assert turn.finished and blocker.finish_time is not None and blocker.finish_time > 0.05 + 0.02
    kv = sched.kv
    if continuum:
        assert (kv.pins_expired, kv.pin_hits) == (0, 1) and turn.cached_tokens == 384
    else:
        assert (kv.pins_expired, kv.pin_hits) == (1, 0)


@pytest.mark.parametrize("continuum", [True, False])
def test_waiting_order_is_pinned_jobs_first_then_jobs_by_entry(profile: CostProfile, continuum: bool) -> None:
    sched = _scheduler(profile, continuum, max_num_seqs=1)
    for job in "XYZ":  # entry order X, Y, Z; only Z keeps a pin
        ttl = 1000.0 if job == "Z" else None
        sched.add(request(f"{job}1", [ord(job), *range(10, 50)], 1, program_id=job, pin_ttl_s=ttl))
    now = run(sched)
    sched.add(request("blocker", list(range(8000, 8100)), 20, program_id="B", arrival=now))
    now = _step(sched, now)
    turns = {job: request(f"{job}2", [ord(job), *range(10, 60)], 1, program_id=job, arrival=now) for job in "YXZ"}
    for turn in turns.values():  # queued Y, X, Z
        sched.add(turn)
    run(sched, now)
    order = sorted(turns, key=lambda job: turns[job].first_scheduled or 0.0)
    assert order == (["Z", "X", "Y"] if continuum else ["Y", "X", "Z"])


def test_pick_and_victim_read_only_pins_and_job_order() -> None:
    reqs = [request(f"r{i}", [1, 2], 1, program_id=p) for i, p in enumerate("BACA")]
    for req, rank in zip(reqs, [2, 1, 3, 1], strict=True):
        req.job_rank = rank
    assert continuum_pick(reqs, lambda p: False) == 1  # job A entered first; its first queued request
    assert continuum_pick(reqs, lambda p: p in {"B", "C"}) == 0  # pinned jobs first, B before C
    assert continuum_victim(reqs) is reqs[2]
    assert continuum_victim(reqs[:2]) is reqs[0]


def test_the_engine_switches_on_the_policy_s_metadata_and_refuses_unknown_modes(profile: CostProfile) -> None:
    async def main() -> tuple[bool, bool]:
        async with SimEngine(profile) as engine:

            async def send(rid: str, mode: str | None) -> None:
                meta = {"program_id": "P"} if mode is None else {"program_id": "P", "pin_mode": mode}
                await engine.generate(
                    GenerateRequest(rid, TokenPrompt([1, 2, 3]), SamplingOptions(max_tokens=1), metadata=meta)
                )

            await send("plain", None)
            before = engine.scheduler.continuum
            with pytest.raises(Exception, match="pin_mode"):
                await send("bad", "lru")
            await send("c", PIN_MODE_CONTINUUM)
            return before, engine.scheduler.continuum

    assert run_virtual(main) == (False, True)

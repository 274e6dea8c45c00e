"""Bulk decode stepping (Scheduler.decode_run / advance): the same results as one step at a time."""

from __future__ import annotations

from runtime.replay._sim import CostProfile
from runtime.replay._sim._scheduler import Scheduler, SimRequest

from ._drive import one_step, request
from .conftest import profile_data


def _times(reqs: list[SimRequest]) -> list[tuple[float | None, float | None, float | None, int]]:
    return [(r.first_scheduled, r.first_token_time, r.finish_time, len(r.blocks)) for r in reqs]


def _stepwise(sched: Scheduler, arrivals: list[SimRequest]) -> None:
    """One step at a time; a request is added once the clock passes its arrival (between steps)."""
    now = 0.0
    pending = sorted(arrivals, key=lambda r: r.arrival)
    while True:
        while pending and pending[0].arrival <= now:
            sched.add(pending.pop(0))
        end = one_step(sched, now)
        if end is None:
            if not pending:
                return
            now = pending[0].arrival
            continue
        now = end


def _bulk(sched: Scheduler, arrivals: list[SimRequest]) -> int:
    """As the engine loop does: a decode run is cut at an arrival, after the step in flight; returns runs taken."""
    now = 0.0
    pending = sorted(arrivals, key=lambda r: r.arrival)
    runs = 0
    while True:
        while pending and pending[0].arrival <= now:
            sched.add(pending.pop(0))
        step = sched.schedule(now)
        if step is None:
            if not pending:
                return runs
            now = pending[0].arrival
            continue
        run = sched.decode_run(step, now)
        if run is None:
            now += step.duration
        else:
            runs += 1
            if pending and pending[0].arrival < run.ends[-1]:
                # Woken by the arrival: apply the boundaries passed, finish the step in flight.
                sched.advance(run, pending[0].arrival)
                run.cut()
                sched.kv.check()
                sched.add(pending.pop(0))
            else:
                sched.advance(run, run.ends[-2])
            step = run.step()
            now = run.end
        sched.complete(step, now)
        sched.kv.check()


def _workload(tag: str) -> list[SimRequest]:
    return [
        request(f"{tag}a", list(range(100, 400)), 300, arrival=0.0),
        request(f"{tag}b", list(range(100, 250)), 200, arrival=0.0),
        request(f"{tag}c", list(range(100, 300)), 50, arrival=0.7321),  # mid-run, shares a's prefix
        request(f"{tag}d", list(range(900, 1000)), 20, arrival=1.5),
    ]


def test_arrival_mid_run_is_admitted_at_the_same_step(profile: CostProfile) -> None:
    ref, new = Scheduler(profile), Scheduler(profile)
    ref_reqs, new_reqs = _workload("r"), _workload("r")
    _stepwise(ref, ref_reqs)
    assert _bulk(new, new_reqs) > 0
    assert _times(new_reqs) == _times(ref_reqs)
    assert [r.cached_tokens for r in new_reqs] == [r.cached_tokens for r in ref_reqs]
    assert new.kv.cached == ref.kv.cached


def test_run_ends_with_the_first_finish(profile: CostProfile) -> None:
    sched = Scheduler(profile)
    sched.add(request("a", list(range(100, 200)), 40))
    sched.add(request("b", list(range(300, 400)), 25))
    now = 0.0
    while True:  # prefill, then the first decode step
        step = sched.schedule(now)
        assert step is not None
        if step.decode_context >= 0:
            break
        now += step.duration
        sched.complete(step, now)
    run = sched.decode_run(step, now)
    assert run is not None
    assert len(run.ends) == 25 - 1  # b's first token came with its prefill
    sched.advance(run, run.ends[-2])
    result = sched.complete(run.step(), run.end)
    assert [r.request_id for r in result.finished] == ["b"]


def test_run_ends_before_a_plan_that_would_need_a_missing_block() -> None:
    # 4 blocks of 16: a holds 2 after prefilling 17 tokens and may take 2 more, b none.
    profile = CostProfile.model_validate(profile_data(block_size=16, kv_blocks=4))
    ref, new = Scheduler(profile), Scheduler(profile)
    arrivals = [request("a", list(range(100, 117)), 40), request("b", list(range(200, 231)), 30, arrival=0.001)]
    ref_reqs, new_reqs = (
        list(arrivals),
        [request(r.request_id, r.tokens[: r.prompt_len], r.max_tokens, arrival=r.arrival) for r in arrivals],
    )
    _stepwise(ref, ref_reqs)
    _bulk(new, new_reqs)
    assert _times(new_reqs) == _times(ref_reqs)
    assert [r.preemptions for r in new_reqs] == [r.preemptions for r in ref_reqs]

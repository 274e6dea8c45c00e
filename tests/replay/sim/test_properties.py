"""Invariants of the simulator under random workloads (hypothesis).

Blocks are conserved and reference counts never go negative after every step
(``BlockManager.check``, which also verifies that pinned blocks are never
evicted); every admitted request finishes; the same workload gives the same
results.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.replay._sim import CostProfile
from runtime.replay._sim._scheduler import Scheduler

from ._drive import request
from .conftest import profile_data

PROFILE = CostProfile.model_validate(profile_data(block_size=16, max_num_batched_tokens=256))


@dataclass(frozen=True)
class Job:
    prefix: int
    own_tokens: int
    max_tokens: int
    priority: int
    program: int
    pin_ttl_s: float | None
    arrival_step: int
    abort_after: int | None


jobs = st.builds(
    Job,
    prefix=st.integers(0, 2),
    own_tokens=st.integers(1, 60),
    max_tokens=st.integers(1, 40),
    priority=st.integers(0, 3),
    program=st.integers(0, 4),
    pin_ttl_s=st.one_of(st.none(), st.floats(0.01, 5.0)),
    arrival_step=st.integers(0, 40),
    abort_after=st.one_of(st.none(), st.integers(0, 30)),
)


def simulate(workload: list[Job], kv_blocks: int, policy: str) -> list[tuple[str, float | None, int | None, int]]:
    sched = Scheduler(PROFILE, kv_blocks=kv_blocks, max_num_seqs=4, queue_order=policy)  # type: ignore[arg-type]
    prefixes = [list(range(p * 100, p * 100 + 40)) for p in range(3)]
    reqs = []
    for i, job in enumerate(workload):
        prompt = prefixes[job.prefix] + list(range(10_000 + i * 100, 10_000 + i * 100 + job.own_tokens))
        reqs.append(
            request(
                f"r{i}",
                prompt,
                job.max_tokens,
                priority=job.priority,
                program_id=f"p{job.program}",
                pin_ttl_s=job.pin_ttl_s,
            )
        )
    now = 0.0
    step_no = 0
    added: set[int] = set()
    while True:
        for i, job in enumerate(workload):
            if job.arrival_step == step_no and i not in added:
                reqs[i].arrival = now
                added.add(i)
                fits = sched.kv.blocks_for(reqs[i].prompt_len + reqs[i].max_tokens - 1) <= kv_blocks
                try:
                    sched.add(reqs[i])
                except ValueError:
                    assert not fits
                    reqs[i].aborted = True  # rejected: it can never fit
                else:
                    assert fits
            if job.abort_after is not None and job.arrival_step + job.abort_after == step_no:
                sched.abort(reqs[i].request_id)
        step = sched.schedule(now)
        step_no += 1
        if step is None:
            if len(added) == len(workload):
                break
            now += 0.01
            continue
        now += step.duration
        sched.complete(step, now)
        sched.kv.check()
        assert len(sched.running) <= 4
        assert step_no < 100_000, "the simulation does not terminate"
    for r in reqs:
        assert r.finished or r.aborted, f"{r.request_id} neither finished nor was aborted"
        if r.finished:
            assert r.output_token_ids == r.tokens[r.prompt_len :]
    sched.kv.expire_pins(now + 10)
    assert sched.kv.num_used == 0
    return [(r.request_id, r.finish_time, r.cached_tokens, r.preemptions) for r in reqs]


@settings(max_examples=60, deadline=None)
@given(
    workload=st.lists(jobs, min_size=1, max_size=25),
    kv_blocks=st.integers(7, 40),
    policy=st.sampled_from(["fcfs", "priority"]),
)
def test_invariants_hold_and_results_repeat(workload: list[Job], kv_blocks: int, policy: str) -> None:
    first = simulate(workload, kv_blocks, policy)
    assert simulate(workload, kv_blocks, policy) == first

"""Helpers that drive the simulator's scheduler synchronously, step by step."""

from __future__ import annotations

from collections.abc import Sequence

from runtime.replay._sim._scheduler import Scheduler, SimRequest, output_ids


def request(
    request_id: str,
    prompt: Sequence[int],
    max_tokens: int,
    *,
    arrival: float = 0.0,
    priority: int = 0,
    program_id: str | None = None,
    pin_ttl_s: float | None = None,
) -> SimRequest:
    tokens = [*prompt, *output_ids(0, request_id, max_tokens, 3, 32000)]
    return SimRequest(
        request_id=request_id,
        prompt_len=len(prompt),
        tokens=tokens,
        max_tokens=max_tokens,
        arrival=arrival,
        priority=priority,
        program_id=program_id,
        pin_ttl_s=pin_ttl_s,
    )


def one_step(sched: Scheduler, now: float) -> float | None:
    """One step from ``now``, checking the block bookkeeping: the time it ends, or None when there was none to run."""
    step = sched.schedule(now)
    if step is None:
        return None
    now += step.duration
    sched.complete(step, now)
    sched.kv.check()
    return now


def run(sched: Scheduler, now: float = 0.0, until: float | None = None) -> float:
    """Run steps from ``now`` until idle (or past ``until``), checking the block bookkeeping; returns the time."""
    while until is None or now < until:
        end = one_step(sched, now)
        if end is None:
            break
        now = end
    return now

"""Urgency as numbers: deadline slack split by stage, attained-service queues, and engine priorities.

Pure functions shared by the ``hexgen``, ``autellix`` and ``agentrt``
policies; times are seconds on one clock.

- :func:`latest_start`: HEXGEN-TEXT2SQL's per-stage deadline,
  ``SLO_stage = (SLO - elapsed) * share`` with ``share = t(stage) /
  (t(stage) + rest)``, and its urgency ``U = t_e - (SLO_stage - waited)``.
  Ordering queued calls by ``U`` (largest first) at any moment is ordering
  them by ``arrival + SLO_stage - t_e`` (smallest first): the latest time
  the call can start and still meet its stage deadline, a number fixed when
  the call arrives, which is what an engine priority has to be;
- :func:`mlfq_level`: Autellix's discretised attained service, queue ``i``
  holding programs with service in ``[q * 2**(i-1), q * 2**i)`` (queue 0
  below ``q``);
- :func:`engine_priority`: a level (most significant) and a key in seconds
  as one integer for vLLM's priority scheduling (lower runs first; keys
  in milliseconds).
"""

from __future__ import annotations

import math

__all__ = ["LEVEL_SPAN", "engine_priority", "latest_start", "mlfq_level"]

#: Priorities of one level lie within this span (milliseconds of key: about 280 years).
LEVEL_SPAN = 1 << 53


def latest_start(*, now: float, deadline_at: float, share: float, expected_s: float) -> float:
    """The latest start of a call arriving ``now`` that may use ``share`` of the time left before ``deadline_at``.

    ``now + (deadline_at - now) * share - expected_s``; a deadline already
    missed gives ``deadline_at - expected_s`` (the most overdue first).
    """
    slack = deadline_at - now
    if slack <= 0:
        return deadline_at - expected_s
    return now + slack * share - expected_s


def mlfq_level(service_s: float, *, quantum_s: float, levels: int) -> int:
    """The queue (0 first) of a program that received ``service_s`` seconds: doubling ranges from ``quantum_s``."""
    if service_s < quantum_s:
        return 0
    return min(levels - 1, 1 + int(math.log2(service_s / quantum_s)))


def engine_priority(level: int, key_s: float) -> int:
    """One engine priority from a level (most significant) and a key in seconds (lower first within a level)."""
    ms = round(key_s * 1000.0)
    bound = LEVEL_SPAN // 2 - 1
    return level * LEVEL_SPAN + max(-bound, min(bound, ms))

"""The ``continuum`` policy: Continuum's public code, as a baseline.

Continuum (arXiv 2511.02230; code: Whrlicht/vllm-continuum) pins a finished
request's KV cache while its tool runs, serves programs first come first
served by their first arrival with pinned programs ahead, and preempts the
latest program.  The TTL rule of its code (``set_up_pin`` in
``vllm/v1/core/estimate_with_func.py``) is a fixed threshold, not the
paper's utility: 2 s when the tool's running-average duration is at most
2 s, else no pin.  Its pins are hard against newcomers: given up only when
at most one request runs (``Scheduler.pop_running_request_based_on_last_step``
in ``vllm/v1/core/sched/scheduler.py``; the rules are in
``runtime/replay/_sim/_continuum.py`` and docs/kv_pinning.md).
"""

from __future__ import annotations

from .._engines import PIN_MODE_CONTINUUM
from .._program import Program
from ._pinning import DEFAULT_PROVISIONAL_TTL_S, PinChoice, PinningPolicy, ProgramPins

__all__ = ["ContinuumPolicy"]

#: Continuum's ``FIXED_THRESHOLD_CONTINUUM``: the pin's TTL, and the longest mean tool duration that gets one.
CONTINUUM_TTL_S = 2.0


class ContinuumPolicy(PinningPolicy):
    """Continuum's public code: program-level FCFS, pinned programs first, a 2 s pin for short tools.

    While a tool runs, its program's pin is kept :data:`CONTINUUM_TTL_S`
    (2 s) when the tool's mean wall time over its recent calls is at most
    2 s, and released otherwise.  A tool never seen before is pinned 2 s,
    as Continuum's code does (it reads an unknown tool's average as 0).
    Its calls carry ``pin_mode`` = ``"continuum"``: the simulator then
    schedules as Continuum's public scheduler does (hard pins, job-level
    FCFS with pinned jobs first, the latest job preempted;
    ``runtime/replay/_sim/_continuum.py``), and the vLLM plug-in keeps the
    pins hard (docs/kv_pinning.md).  Routing, priorities and the
    provisional pin are :class:`PinningPolicy`'s.

    Two differences from the original, both from where it runs: Continuum
    measures a tool from the request's finish to its program's next
    arrival and averages over every call, while this policy averages the
    tool's own wall times over the last ``window`` calls; and Continuum
    pins at the request's finish, this policy when the tool starts (the
    provisional pin covers the moment between).
    """

    name = "continuum"
    #: Engines that know it (the simulator) schedule this policy's calls by Continuum's public rules.
    pin_mode = PIN_MODE_CONTINUUM

    def __init__(self, *, provisional_ttl_s: float = DEFAULT_PROVISIONAL_TTL_S, window: int = 256) -> None:
        super().__init__(provisional_ttl_s=provisional_ttl_s, window=window)

    def ttl_for(self, tool: str, program: Program, pins: ProgramPins) -> PinChoice:
        if self.durations.count(tool) == 0:
            return PinChoice(CONTINUUM_TTL_S)
        mean = self.durations.mean(tool)
        return PinChoice(CONTINUUM_TTL_S if mean is not None and mean <= CONTINUUM_TTL_S else 0.0)

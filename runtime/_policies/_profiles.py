"""Workflow profiles learned online: how long each stage of a workflow takes, and how much work a program is.

Programs reveal their work one call at a time, so the urgency policies
learn from the programs of the same workflow that already finished:

- per stage (the ``stage`` of its LLM calls): the service one call gets
  (seconds the engine worked on it), when the stage starts and how long it
  lasts within a program (first call's start to last call's end, tool
  pauses included), and how long the program still ran after it (its
  *rest*, which follows the DAG's critical path and includes tools);
- per program: its total service, a window of the last ``window`` of them,
  for the expected remaining service of a program that has received ``a``
  seconds so far (the mean residual ``E[T - a | T > a]``).

Means are exponentially weighted with weight ``max(1/n, alpha)``: the plain
mean for the first ``1/alpha`` observations, then a moving one that follows
a workload that changes.  Pure bookkeeping: no engines, no clock.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_PROFILE_ALPHA",
    "DEFAULT_PROFILE_WINDOW",
    "StageProfile",
    "StageSpan",
    "WorkflowProfile",
    "planned_share",
]

#: Weight of a new observation once a mean has seen ``1 / alpha`` of them.
DEFAULT_PROFILE_ALPHA = 0.05
#: Finished programs whose total service the remaining-work estimate keeps, per workflow.
DEFAULT_PROFILE_WINDOW = 512


class _Mean:
    """A mean over all observations until ``1/alpha`` of them, then exponentially weighted."""

    __slots__ = ("n", "value")

    def __init__(self) -> None:
        self.n = 0
        self.value = 0.0

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        self.value += max(1.0 / self.n, alpha) * (x - self.value)


@dataclass(slots=True)
class StageSpan:
    """One stage within one program so far: seconds since the program's submission."""

    start_s: float
    end_s: float


@dataclass(slots=True)
class StageProfile:
    """What a workflow's finished programs showed of one stage (seconds; means)."""

    call: _Mean = field(default_factory=_Mean)
    start: _Mean = field(default_factory=_Mean)
    span: _Mean = field(default_factory=_Mean)
    rest: _Mean = field(default_factory=_Mean)
    order: int = 0

    @property
    def call_s(self) -> float | None:
        """Mean service of one of the stage's LLM calls, or ``None`` before any finished."""
        return self.call.value if self.call.n else None

    @property
    def span_s(self) -> float:
        """Mean seconds from the stage's first call to its last call's end, within a program."""
        return self.span.value

    @property
    def rest_s(self) -> float:
        """Mean seconds a program still ran after the stage ended."""
        return self.rest.value

    @property
    def start_s(self) -> float:
        """Mean seconds from the program's submission to the stage's first call."""
        return self.start.value


class WorkflowProfile:
    """The stages and program sizes of one workflow, learned from its calls and finished programs."""

    def __init__(self, *, alpha: float = DEFAULT_PROFILE_ALPHA, window: int = DEFAULT_PROFILE_WINDOW) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.alpha = alpha
        #: Finished programs observed.
        self.programs = 0
        self.stages: dict[str, StageProfile] = {}
        self._order = itertools.count()
        self._totals: deque[float] = deque(maxlen=window)
        self._sorted: list[float] = []
        self._suffix: list[float] = []  # _suffix[i] = sum(_sorted[i:])
        # Stage -> the sum of later stages' spans (HEXGEN's "remaining stages"); rebuilt after each program.
        self._later: dict[str, float] = {}

    def stage(self, name: str) -> StageProfile:
        """The stage's profile, created empty on first use."""
        profile = self.stages.get(name)
        if profile is None:
            profile = self.stages[name] = StageProfile(order=next(self._order))
        return profile

    # -- observations -------------------------------------------------------------

    def observe_call(self, stage: str | None, service_s: float) -> None:
        """An LLM call of the stage received ``service_s`` seconds of engine time."""
        if stage is not None and service_s >= 0:
            self.stage(stage).call.add(service_s, self.alpha)

    def observe_program(self, spans: Mapping[str, StageSpan], jct_s: float, service_s: float) -> None:
        """A program of the workflow finished after ``jct_s`` seconds, with its stages' spans and total service."""
        alpha = self.alpha
        self.programs += 1
        for name, span in spans.items():
            profile = self.stage(name)
            profile.start.add(span.start_s, alpha)
            profile.span.add(max(0.0, span.end_s - span.start_s), alpha)
            profile.rest.add(max(0.0, jct_s - span.end_s), alpha)
        by_start = sorted(self.stages.items(), key=lambda item: (item[1].start_s, item[1].order))
        later = 0.0
        self._later = {}
        for name, profile in reversed(by_start):
            self._later[name] = later
            later += profile.span_s
        if service_s >= 0:
            self._add_total(service_s)

    def _add_total(self, service_s: float) -> None:
        totals = self._totals
        if totals.maxlen is not None and len(totals) == totals.maxlen:
            old = totals[0]
            del self._sorted[bisect.bisect_left(self._sorted, old)]
        totals.append(service_s)
        bisect.insort(self._sorted, service_s)
        suffix = [0.0] * (len(self._sorted) + 1)
        for i in range(len(self._sorted) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + self._sorted[i]
        self._suffix = suffix

    # -- estimates ----------------------------------------------------------------

    def call_s(self, stage: str | None) -> float | None:
        """Mean service of one LLM call of ``stage``, or ``None`` when none has finished yet."""
        if stage is None:
            return None
        profile = self.stages.get(stage)
        return None if profile is None else profile.call_s

    def stage_share(self, stage: str | None, *, measured_rest: bool) -> float:
        """The fraction of a program's remaining time that ``stage`` may use: ``t / (t + rest)`` in (0, 1].

        ``t`` is the stage's span; ``rest`` is, with ``measured_rest``, the
        time programs still ran after the stage (the critical path after
        it, tools included), else the sum of the spans of the stages that
        start later (HEXGEN-TEXT2SQL's rule).  1 (all of it) until a
        program of the workflow has finished with the stage.
        """
        profile = None if stage is None else self.stages.get(stage)
        if profile is None or profile.span.n == 0:
            return 1.0
        rest = profile.rest_s if measured_rest else self._later.get(stage or "", 0.0)
        return _share(profile.span_s, rest)

    def remaining_service_s(self, attained_s: float) -> float | None:
        """Expected further service of a program that has received ``attained_s`` seconds: ``E[T - a | T > a]``.

        Over the window of finished programs' totals; a program that has
        already received more than any of them is expected to need as much
        again.  ``None`` before any program finished.
        """
        ordered = self._sorted
        if not ordered:
            return None
        i = bisect.bisect_right(ordered, attained_s)
        above = len(ordered) - i
        if above == 0:
            return attained_s
        return self._suffix[i] / above - attained_s


def planned_share(plan: Mapping[str, float], stage: str | None) -> float | None:
    """A declared stage plan's share for ``stage``: ``t / (t + sum of the later stages' t)``; ``None`` if not in it."""
    if stage is None or stage not in plan:
        return None
    later = False
    t = rest = 0.0
    for name, seconds in plan.items():
        if later:
            rest += seconds
        elif name == stage:
            t = seconds
            later = True
    return _share(t, rest)


def _share(t: float, rest: float) -> float:
    """``t / (t + rest)`` in (0, 1]: a stage expected to take no time still gets a sliver; nothing after it, all."""
    return 1.0 if t + rest <= 0 else max(t, 1e-9) / (max(t, 1e-9) + rest)

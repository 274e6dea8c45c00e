"""What the urgency policies know of live programs and engines, kept from the calls they route.

A :class:`ProgramBook` is one policy's memory (each policy its own, so two
runs in one process learn apart):

- per live program, a :class:`ProgramProgress`: its stages' spans so far,
  the time its calls waited, its ATLAS value (Autellix: the longest chain
  of service through its DAG that ended in a finished call), its last
  engine (the service it received is the program's own
  ``llm_service_s``, which the dispatcher keeps);
- per workflow, a :class:`~._profiles.WorkflowProfile` learned from the
  calls and finished programs of that workflow;
- per engine, the expected service of the calls routed to it and not
  finished (the *work* on it, HEXGEN-TEXT2SQL's ``W_e``);
- a fit of a call's service against its tokens (uncached prompt, output),
  for calls of a stage not seen yet.

Calls are keyed by identity: the dispatcher offers the same
:class:`~._base.CallInfo` again when it fails over, and the book then moves
the call's work to its new engine.  Nothing outlives its program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._engines import Engine
from .._program import Program, ProgramState
from ._base import CallFinished, CallInfo
from ._placement import has_headroom, waiting_estimate
from ._profiles import DEFAULT_PROFILE_ALPHA, DEFAULT_PROFILE_WINDOW, StageSpan, WorkflowProfile, planned_share

__all__ = ["ProgramBook", "ProgramProgress"]


@dataclass(slots=True, eq=False)
class ProgramProgress:
    """One live program as an urgency policy saw it; seconds."""

    #: The program's number in order of first call.
    seq: int
    spans: dict[str, StageSpan] = field(default_factory=dict)
    #: Time its finished calls waited before an engine ran them (admission queue and engine queue).
    waited_s: float = 0.0
    #: Autellix's ATLAS value: max over finished calls of (the value when it was routed + its service).
    atlas_s: float = 0.0
    #: The engine of its last routed call.
    engine: Engine | None = None


@dataclass(slots=True)
class _Routed:
    engine: str
    expected_s: float
    atlas_s: float


class _ServiceFit:
    """Least squares through the origin: service seconds against (uncached prompt tokens, output tokens)."""

    __slots__ = ("_oo", "_os", "_po", "_pp", "_ps")

    def __init__(self) -> None:
        self._pp = self._po = self._oo = self._ps = self._os = 0.0

    def add(self, prompt: int, output: int, seconds: float) -> None:
        self._pp += prompt * prompt
        self._po += prompt * output
        self._oo += output * output
        self._ps += prompt * seconds
        self._os += output * seconds

    def seconds(self, prompt: int, output: int) -> float:
        det = self._pp * self._oo - self._po * self._po
        if det > 1e-9 * max(1.0, self._pp * self._oo):
            a = (self._ps * self._oo - self._os * self._po) / det
            b = (self._os * self._pp - self._ps * self._po) / det
            return max(0.0, a * prompt + b * output)
        total = self._pp + self._oo
        if total <= 0:
            return 0.0
        # Degenerate (one kind of call so far): one rate per token of either kind.
        rate = (self._ps + self._os) / total
        return max(0.0, rate * (prompt + output))


class ProgramBook:
    """One policy's record of live programs, workflow profiles and the work routed to each engine."""

    def __init__(self, *, alpha: float = DEFAULT_PROFILE_ALPHA, window: int = DEFAULT_PROFILE_WINDOW) -> None:
        self.alpha = alpha
        self.window = window
        self.profiles: dict[str, WorkflowProfile] = {}
        self._programs: dict[str, ProgramProgress] = {}
        self._routed: dict[int, _Routed] = {}
        self._work: dict[str, float] = {}
        self._count: dict[str, int] = {}
        self._fit = _ServiceFit()
        self._seq = 0

    # -- state ----------------------------------------------------------------------

    def progress(self, program: Program) -> ProgramProgress:
        """The program's record, created at its first call."""
        progress = self._programs.get(program.id)
        if progress is None:
            progress = self._programs[program.id] = ProgramProgress(self._seq)
            self._seq += 1
        return progress

    def profile(self, workflow: str) -> WorkflowProfile:
        """The workflow's profile, created empty on first use."""
        profile = self.profiles.get(workflow)
        if profile is None:
            profile = self.profiles[workflow] = WorkflowProfile(alpha=self.alpha, window=self.window)
        return profile

    @property
    def tracked_programs(self) -> int:
        """Live programs with a record."""
        return len(self._programs)

    def routed_to(self, engine: Engine) -> int:
        """Calls routed to ``engine`` and not finished (some may not have reached it yet)."""
        return self._count.get(engine.name, 0)

    def has_headroom(self, engine: Engine, max_waiting: int, max_kv_usage: float | None = None) -> bool:
        """:func:`._placement.has_headroom` of ``engine``, counting the calls routed there that have not arrived."""
        return has_headroom(engine.load(), max_waiting, self.routed_to(engine), max_kv_usage)

    def work_s(self, engine: Engine) -> float:
        """Expected service of the calls routed to ``engine`` and not finished (seconds)."""
        return self._work.get(engine.name, 0.0)

    # -- estimates ----------------------------------------------------------------------

    def expected_call_s(self, call: CallInfo) -> float:
        """The service ``call`` is expected to need: its stage's mean, else the token fit (0 before any call)."""
        seconds = self.profile(call.program.workflow).call_s(call.stage)
        if seconds is not None:
            return seconds
        return self._fit.seconds(call.prompt_tokens, call.sampling.max_tokens or 0)

    def expected_finish(self, engine: Engine, expected_s: float, now: float) -> float:
        """When a call of ``expected_s`` seconds would end on ``engine``: after the calls queued ahead of it.

        Each running call holds a share of the engine, so the queue ahead
        delays the call by about ``waiting / running`` of its own service:
        ``now + expected_s * (1 + waiting / running)``, with ``waiting``
        counting the calls sent since the engine last reported (they raise
        it at once, so calls routed in one burst do not all pick the same
        engine).  An engine without queue figures: ``now + expected_s``.
        """
        load = engine.load()
        waiting = waiting_estimate(load, self.routed_to(engine))
        if waiting is None:
            return now + expected_s
        running = load.running or 0
        return now + expected_s * (1.0 + waiting / max(1, running))

    def stage_share(self, call: CallInfo, *, measured_rest: bool) -> float:
        """The share of the program's remaining time its call's stage may use (the plan's, else learned)."""
        program = call.program
        if program.stage_plan is not None:
            share = planned_share(program.stage_plan, call.stage)
            if share is not None:
                return share
        return self.profile(program.workflow).stage_share(call.stage, measured_rest=measured_rest)

    def remaining_service_s(self, program: Program) -> float | None:
        """Expected further service of ``program`` from its workflow's finished programs (``None``: none yet)."""
        return self.profile(program.workflow).remaining_service_s(program.llm_service_s)

    # -- events ---------------------------------------------------------------------------

    def routed(self, call: CallInfo, engine: Engine, expected_s: float) -> ProgramProgress:
        """``call`` goes to ``engine``, expected to need ``expected_s`` seconds (again, after a failover)."""
        progress = self.progress(call.program)
        key = id(call)
        old = self._routed.pop(key, None)
        if old is not None:
            self._take_work(old)
        self._routed[key] = _Routed(engine.name, expected_s, progress.atlas_s)
        self._work[engine.name] = self._work.get(engine.name, 0.0) + expected_s
        self._count[engine.name] = self._count.get(engine.name, 0) + 1
        progress.engine = engine
        return progress

    def _take_work(self, routed: _Routed) -> None:
        left = self._work.get(routed.engine, 0.0) - routed.expected_s
        self._work[routed.engine] = left if left > 1e-9 else 0.0
        self._count[routed.engine] = max(0, self._count.get(routed.engine, 0) - 1)

    def call_finished(self, event: CallFinished, now: float) -> None:
        """The call ended: its work leaves its engine; a completed one teaches the program and workflow records."""
        call = event.call
        routed = self._routed.pop(id(call), None)
        if routed is not None:
            self._take_work(routed)
        completion = event.completion
        progress = self._programs.get(call.program.id)
        if completion is None or progress is None:
            return
        queued = completion.queued_s or 0.0
        service = max(0.0, completion.e2e_s - queued)
        program = call.program
        held = call.node.attributes.get("held_s") or 0.0
        progress.waited_s += queued + float(held)
        if routed is not None:
            progress.atlas_s = max(progress.atlas_s, routed.atlas_s + service)
        start = call.arrived_s - program.submitted_at
        end = now - program.submitted_at
        stage = call.stage
        if stage is not None:
            span = progress.spans.get(stage)
            if span is None:
                progress.spans[stage] = StageSpan(start, end)
            else:
                span.start_s = min(span.start_s, start)
                span.end_s = max(span.end_s, end)
        self.profile(program.workflow).observe_call(stage, service)
        self._fit.add(completion.prompt_tokens - completion.cached_tokens, completion.completion_tokens, service)

    def program_finished(self, program: Program) -> None:
        """The program ended: a succeeded one teaches its workflow's profile; its record goes."""
        progress = self._programs.pop(program.id, None)
        jct = program.jct_s
        if progress is not None and program.state is ProgramState.SUCCEEDED and jct is not None:
            self.profile(program.workflow).observe_program(progress.spans, jct, program.llm_service_s)

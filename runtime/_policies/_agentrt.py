"""The ``agentrt`` policy: Continuum's paper rule for pins, per tool, with measured costs.

Priorities (program-level FCFS, pinned programs first), pin affinity, the
provisional pin and the pin bookkeeping are :class:`PinningPolicy`'s.  This
policy adds cache affinity: a program without a live pin goes back to the
engine of its last call, where its context is likely still cached, unless
that engine has more than ``affinity_slack`` (8) requests in flight beyond
the least loaded candidate (then: the least loaded).  And it decides the
time-to-live of each pin by the utility rule of :mod:`._ttl`::

    tau* = argmax  P(tool returns within tau) * w * (eta * T_queue + reload) - c * tau
           tau in {0} and the tool's observed durations
    TTL  = tau* + margin_s     (none when tau* = 0)
    value = P(tau*) * reload / context tokens

- ``P``: the empirical CDF of the tool's recent wall times in the policy's
  own :class:`toolbridge.DurationPredictor` (a tool never seen: the
  distribution over all tools; no observation at all: a pin of
  ``default_ttl_s``).  Candidates are the tool's observed durations, all of
  them up to 64 observations, else the 64 quantiles ``(i + 0.5) / 64``;
  the list is rebuilt once 1/32 of the tool's observations in the window
  (at least one) are new.
- ``reload``: seconds to prefill the program's context (its last prompt and
  completion tokens) again: the engine's calibrated
  :meth:`~runtime.Engine.prefill_cost_s` where it has one, else the
  policy's own fit of prefill time (``ttft_s - queued_s``) against uncached
  prompt tokens over that engine's completions, a line through the origin
  (0 until a completion is seen).
- ``T_queue``: the time an evicted request waits: per engine, an EWMA
  (weight ``queue_alpha``) of ``queued_s`` over calls whose cached tokens
  fell below ``evicted_fraction`` of their program's previous context; 0
  until one is seen.  ``eta`` weighs it against the reload (Continuum's
  paper uses a weight there for the queueing that eviction costs).
- ``c``: :func:`._ttl.hold_cost` of the engine's :meth:`~runtime.Engine.load`:
  ``idle`` (0.1) with headroom, plus up to ``kv_weight`` (1) as KV usage
  goes from 0.8 to 1, plus up to ``wait_weight`` (1) as waiting requests
  reach the running ones' number.
- ``w``: :meth:`AgentrtPolicy.urgency_weight`, 1 for every program.
- ``margin_s``: the next turn's request reaches the engine a little after
  the tool returns (the reply, the next prompt, the dispatch).
- the value (per context token: engines do not tell their block size, and
  the unit only has to be consistent among one engine's pins) orders the
  pins memory pressure releases: the least expected prefill saved per unit
  of memory first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._engines._base import Completion, Engine
from .._program import Program
from ._base import CallInfo
from ._pinning import DEFAULT_PROVISIONAL_TTL_S, PinChoice, PinningPolicy, ProgramPins
from ._ttl import HoldCost, best_ttl, hold_cost, pin_value

__all__ = [
    "DEFAULT_ETA",
    "DEFAULT_MARGIN_S",
    "DEFAULT_TTL_S",
    "AgentrtPolicy",
]

#: Weight of the queueing delay an evicted request suffers, against the prefill it costs (0.5 to 2 made no
#: difference on the tuning traces, where evicted calls queued little).
DEFAULT_ETA = 1.0
#: Seconds added to tau*: the next turn's request arrives a little after the tool returns.
DEFAULT_MARGIN_S = 0.1
#: The pin kept when no tool has been observed yet (seconds).
DEFAULT_TTL_S = 2.0
#: A call counts as evicted when its cached tokens are below this fraction of its program's previous context.
DEFAULT_EVICTED_FRACTION = 0.5
#: Weight of each new observation in the per-engine EWMA of T_queue.
DEFAULT_QUEUE_ALPHA = 0.1
#: Requests in flight beyond the least loaded candidate's that a program's last engine may have and still get its call.
DEFAULT_AFFINITY_SLACK: int | None = 8

# Candidate taus per tool: every observation up to this many, else this many quantiles.
_CANDIDATES = 64
# Rebuild a tool's candidates once this fraction of its observations in the window is new.
_REBUILD_FRACTION = 1 / 32


class _PrefillFit:
    """A least-squares line through the origin: prefill seconds per uncached prompt token."""

    __slots__ = ("_nn", "_nt")

    def __init__(self) -> None:
        self._nn = 0.0
        self._nt = 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self._nn += float(tokens) * tokens
        self._nt += tokens * seconds

    def seconds(self, tokens: int) -> float:
        return tokens * self._nt / self._nn if self._nn > 0 else 0.0


@dataclass(slots=True)
class _Candidates:
    """A tool's candidate ``(tau, P(return within tau))`` list and the tool's observation count when built."""

    points: list[tuple[float, float]]
    built_at: int


class AgentrtPolicy(PinningPolicy):
    """Pins by Continuum's paper utility rule, per tool, with measured reload and queueing (see the module docstring).

    The keyword arguments are the rule's constants (defaults in this
    module): ``eta``, ``margin_s``, ``default_ttl_s``, ``hold`` (the
    weights of :func:`._ttl.hold_cost`, default :class:`._ttl.HoldCost`),
    ``evicted_fraction``, ``queue_alpha``, and ``affinity_slack`` (``None``:
    no cache affinity); ``provisional_ttl_s`` and ``window`` are
    :class:`PinningPolicy`'s.  The defaults were tuned on simulated agent
    traces (docs/replay.md).
    """

    name = "agentrt"

    def __init__(
        self,
        *,
        provisional_ttl_s: float = DEFAULT_PROVISIONAL_TTL_S,
        window: int = 256,
        eta: float = DEFAULT_ETA,
        margin_s: float = DEFAULT_MARGIN_S,
        default_ttl_s: float = DEFAULT_TTL_S,
        hold: HoldCost | None = None,
        evicted_fraction: float = DEFAULT_EVICTED_FRACTION,
        queue_alpha: float = DEFAULT_QUEUE_ALPHA,
        affinity_slack: int | None = DEFAULT_AFFINITY_SLACK,
    ) -> None:
        super().__init__(provisional_ttl_s=provisional_ttl_s, window=window)
        if eta < 0 or margin_s < 0 or default_ttl_s < 0:
            raise ValueError("eta, margin_s and default_ttl_s must be >= 0")
        if not 0 < queue_alpha <= 1:
            raise ValueError(f"queue_alpha must be in (0, 1], got {queue_alpha}")
        self.eta = eta
        self.margin_s = margin_s
        self.default_ttl_s = default_ttl_s
        self.hold = hold or HoldCost()
        self.evicted_fraction = evicted_fraction
        self.queue_alpha = queue_alpha
        self.affinity_slack = affinity_slack
        # Per engine name: the EWMA of evicted requests' queueing (s), the prefill fit.
        self._queue_s: dict[str, float] = {}
        self._fits: dict[str, _PrefillFit] = {}
        # Per tool (None: all tools), the candidates; per tool, observations so far.
        self._candidates: dict[str | None, _Candidates] = {}
        self._seen: dict[str, int] = {}
        self._observations = 0

    # -- the seams ---------------------------------------------------------------------

    def urgency_weight(self, program: Program) -> float:
        """How much a second saved is worth to ``program`` relative to others; it scales the pin's gain.

        1.0 for every program in this policy.
        """
        return 1.0

    def queue_delay_s(self, engine: Engine) -> float:
        """T_queue on ``engine``: the smoothed queueing of its calls whose context had been evicted (seconds)."""
        return self._queue_s.get(engine.name, 0.0)

    def reload_s(self, engine: Engine, tokens: int) -> float:
        """Seconds ``engine`` needs to prefill ``tokens`` tokens again: its calibration, else the policy's fit."""
        cost = engine.prefill_cost_s(tokens)
        if cost is not None:
            return cost
        fit = self._fits.get(engine.name)
        return 0.0 if fit is None else fit.seconds(tokens)

    def pick_engine(self, call: CallInfo, engines: Sequence[Engine], pins: ProgramPins) -> Engine:
        """The program's last engine (its context likely still cached) unless it is loaded beyond the slack."""
        home = pins.last_engine
        slack = self.affinity_slack
        if (
            home is not None
            and slack is not None
            and any(e is home for e in engines)
            and home.in_flight <= min(e.in_flight for e in engines) + slack
        ):
            return home
        return self.least_loaded(engines)

    # -- the rule ------------------------------------------------------------------------

    def ttl_for(self, tool: str, program: Program, pins: ProgramPins) -> PinChoice:
        engine = pins.engine
        assert engine is not None  # PinningPolicy asks only for a program holding a pin
        candidates = self._tool_candidates(tool)
        if not candidates:
            return PinChoice(self.default_ttl_s)
        reload = self.reload_s(engine, pins.context_tokens)
        gain = self.urgency_weight(program) * (self.eta * self.queue_delay_s(engine) + reload)
        choice = best_ttl(candidates, gain, hold_cost(engine.load(), self.hold))
        if choice.ttl_s <= 0:
            return PinChoice(0.0)
        return PinChoice(choice.ttl_s + self.margin_s, pin_value(choice.p_return, reload, pins.context_tokens))

    def _tool_candidates(self, tool: str) -> list[tuple[float, float]]:
        durations = self.durations
        own = durations.count(tool)
        key = tool if own else None
        seen = self._seen.get(tool, 0) if own else self._observations
        n = own or min(self._observations, durations.window)  # observations in the window
        cached = self._candidates.get(key)
        if cached is not None and seen - cached.built_at < max(1.0, _REBUILD_FRACTION * n):
            return cached.points
        if n == 0:
            return []
        grid = min(n, _CANDIDATES)
        taus = {durations.quantile(tool, (i + 0.5) / grid) for i in range(grid)}
        points = [(tau, durations.cdf(tool, tau) or 0.0) for tau in sorted(t for t in taus if t is not None)]
        self._candidates[key] = _Candidates(points, seen)
        return points

    # -- measurements ----------------------------------------------------------------------

    def observe_tool(self, tool: str, wall_s: float) -> None:
        self._observations += 1
        self._seen[tool] = self._seen.get(tool, 0) + 1

    def observe_completion(self, pins: ProgramPins, engine: Engine, completion: Completion) -> None:
        queued = completion.queued_s
        previous = pins.context_tokens
        if queued is not None and previous > 0 and completion.cached_tokens < self.evicted_fraction * previous:
            old = self._queue_s.get(engine.name)
            alpha = self.queue_alpha
            self._queue_s[engine.name] = queued if old is None else old + alpha * (queued - old)
        ttft = completion.ttft_s
        uncached = completion.prompt_tokens - completion.cached_tokens
        if ttft is not None and uncached > 0 and engine.prefill_cost_s(1) is None:
            seconds = ttft - (queued or 0.0)
            if seconds > 0:
                fit = self._fits.get(engine.name)
                if fit is None:
                    fit = self._fits[engine.name] = _PrefillFit()
                fit.add(uncached, seconds)

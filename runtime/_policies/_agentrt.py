"""The ``agentrt`` policy: program urgency, an admission queue, cache-aware dispatch, and KV pins by tool.

It combines what the baselines do one at a time.

**Urgency.**  Every call gets a key in seconds on the runtime clock, lower
first, mapped onto vLLM's priority scheduling below the caller's (or
program's) priority level (:func:`._urgency.engine_priority`):

- a program with a deadline: the call's latest start, HEXGEN-TEXT2SQL's
  per-stage deadline with the stage's share ``t / (t + rest)`` of the time
  left, where ``rest`` is what the workflow's finished programs still ran
  after the stage (its critical path, tool pauses included; the declared
  stage plan when there is one), and ``t_e`` the call's expected service
  (:class:`._progress.ProgramBook`).  A program that can no longer make its
  deadline (less time left than ``hopeless_factor`` times its call's
  expected service) is keyed at its deadline plus its whole deadline
  again: it still runs, after the programs that can be saved, and it is not
  starved (the key is fixed in time, so later programs come after it);
- a program without a deadline: its submission time plus
  ``best_effort_s`` (30 s: as if that were its deadline, so that a program
  with a deadline about to be missed goes first) plus ``srpt_weight``
  times its expected remaining service, learned per workflow from finished
  programs (``E[T - a | T > a]`` at the service ``a`` it has received):
  shortest remaining work first, aged by arrival so that nothing starves;
- a program holding a live pin: ``pin_bonus_s`` earlier (its blocks are
  held for it; serving it frees them).

**Admission.**  A call goes out only to an engine with headroom (fewer than
``max_waiting`` calls waiting there, counting those sent since its last
report; :func:`._placement.has_headroom`; or, with ``batch_room``, a free
sequence slot for every call waiting there and KV usage below 0.9:
:func:`._placement.has_batch_room`, since holding a call the engine would
run at once only adds latency); and, with ``memory_admission``, where its
KV demand fits (:mod:`._memory`); while no candidate has any, the
call waits in the runtime's admission queue, which releases calls in key
order as calls finish.  Calls of pinned programs are never held.  Keys are
computed again at release, so a program whose deadline can no longer be met
drops back while it waits.  ``max_waiting=None`` turns the gate off.

**Dispatch.**  A call that continues the context its program's live pin
holds goes to the pin's engine (:class:`PinningPolicy`,
:meth:`AgentrtPolicy.follows_pin`).  With ``memory_admission``, on engines
that state their KV size, admission chooses the engine: among those the
call fits, the lowest placement cost (Dynamo's KV router's: tokens to
prefill there plus tokens running there), a call continuing a context
staying on its engine unless it costs more than ``move_factor`` times the
best there.  Otherwise any other call, among the engines
with headroom, goes to the engine holding the context it continues
(:class:`._contexts.ContextIndex`) unless that engine has more than
``affinity_slack`` calls in flight beyond the least loaded one; else to the
better by load of its prefix key's two hash candidates (programs of one app
share the system prompt's blocks there, :class:`._placement.PrefixHomes`)
if that one is within ``prefix_slack`` of the least loaded; else to the
least loaded.  For a call with a deadline, when the chosen engine would
finish it after its stage's deadline (``now + t_e * (1 + waiting /
running)``, :meth:`._progress.ProgramBook.expected_finish`) and another
would finish it earlier, the earliest expected finish wins.

**Pins.**  The time-to-live of each pin follows Continuum's paper rule, per
tool, by :mod:`._ttl`::

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
from typing import ClassVar

from .._engines import METADATA_PREEMPT_RANK, Completion, Engine
from .._program import Program
from ._base import CallFinished, CallInfo, Route, ToolFinished, ToolStarted
from ._contexts import ContextIndex
from ._host_tier import DEFAULT_LEAD_S, DEFAULT_MIN_AWAY_S, HostTier
from ._memory import DEFAULT_FILL, DEFAULT_GROWTH_RELOAD_S, DEFAULT_GROWTH_SHARE, DEFAULT_HORIZON_S, MemoryLedger
from ._pinning import DEFAULT_PROVISIONAL_TTL_S, PinChoice, PinningPolicy, ProgramPins
from ._placement import PrefixHomes, has_batch_room, load_key
from ._progress import ProgramBook
from ._ttl import HoldCost, best_ttl, hold_cost, pin_value
from ._urgency import engine_priority, latest_start

__all__ = [
    "DEFAULT_BEST_EFFORT_S",
    "DEFAULT_ETA",
    "DEFAULT_HOPELESS_FACTOR",
    "DEFAULT_MARGIN_S",
    "DEFAULT_MAX_KV_USAGE",
    "DEFAULT_MAX_WAITING",
    "DEFAULT_MOVE_FACTOR",
    "DEFAULT_PIN_BONUS_S",
    "DEFAULT_PREEMPT_BAND_S",
    "DEFAULT_PREFIX_SLACK",
    "DEFAULT_RETENTION_HORIZON_S",
    "DEFAULT_RETENTION_QUANTILE",
    "DEFAULT_SRPT_WEIGHT",
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

#: Calls waiting on an engine below which it takes another (the admission gate; None: no gate).
DEFAULT_MAX_WAITING: int | None = 2
#: Requests in flight beyond the least loaded candidate's that a prefix's hash home may have and still get a call
#: that continues no context of its program (a program's first call: it settles where its context will grow).
DEFAULT_PREFIX_SLACK = 0
#: The deadline a program without one is scheduled as if it had, seconds after submission: a program with a
#: deadline goes first while its latest start is earlier (only the order of programs of both kinds depends on it).
DEFAULT_BEST_EFFORT_S = 30.0
#: KV cache usage (pins not counted) at or above which an engine that runs something takes no more calls
#: (None: KV usage does not gate admission).
DEFAULT_MAX_KV_USAGE: float | None = None
#: Weight of a program's expected remaining service against its arrival time in its key (no deadline).
DEFAULT_SRPT_WEIGHT = 1.0
#: Seconds earlier a program holding a live pin is keyed.
DEFAULT_PIN_BONUS_S = 5.0
#: A program with less time left than this many times its call's expected service cannot make its deadline.
DEFAULT_HOPELESS_FACTOR = 1.0
#: Program-aware preemption: programs whose urgency keys fall in one band of this many seconds are equally
#: urgent, and among them the one with the least context (the least to compute again) is preempted first.
DEFAULT_PREEMPT_BAND_S = 60.0
#: Memory-aware admission: a call that fits where its context is moves to another engine it fits only when
#: its placement cost at home is more than this many times the other's (1: Dynamo's rule; inf: never moves).
DEFAULT_MOVE_FACTOR = 2.0
#: Retention by value: an idle program's blocks are kept (as a pin, released by value under pressure) until
#: this quantile of its tool's observed durations has passed.
DEFAULT_RETENTION_QUANTILE = 0.9
#: Retention by value: a kept program's value is its chance of being back within this many seconds.
DEFAULT_RETENTION_HORIZON_S = 30.0
# Ranks below the band: contexts are counted in blocks of this many tokens, up to _RANK_TOKENS_SPAN blocks.
_RANK_TOKEN_UNIT = 64
_RANK_TOKENS_SPAN = 1 << 20

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

    @property
    def known(self) -> bool:
        """Whether a prefill has been measured."""
        return self._nn > 0

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
    ``evicted_fraction``, ``queue_alpha``, ``affinity_slack`` (``None``:
    no cache affinity), ``max_waiting`` (``None``: no admission gate),
    ``srpt_weight``, ``pin_bonus_s``, ``hopeless_factor``, ``prefix_slack`` and ``best_effort_s``;
    ``provisional_ttl_s`` and ``window`` are :class:`PinningPolicy`'s.  The
    defaults were tuned on simulated traces of seeds kept for tuning
    (docs/replay.md).
    """

    name = "agentrt"
    #: Held calls are offered again on every call's and program's end, and at least this often (seconds).
    recheck_s: ClassVar[float | None] = 1.0

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
        max_waiting: int | None = DEFAULT_MAX_WAITING,
        srpt_weight: float = DEFAULT_SRPT_WEIGHT,
        pin_bonus_s: float = DEFAULT_PIN_BONUS_S,
        hopeless_factor: float = DEFAULT_HOPELESS_FACTOR,
        prefix_slack: int = DEFAULT_PREFIX_SLACK,
        best_effort_s: float = DEFAULT_BEST_EFFORT_S,
        max_kv_usage: float | None = DEFAULT_MAX_KV_USAGE,
        batch_room: bool = True,
        memory_admission: bool = True,
        retention: bool = True,
        program_preemption: bool = True,
        host_tier: bool = True,
        min_away_s: float = DEFAULT_MIN_AWAY_S,
        prefetch_lead_s: float = DEFAULT_LEAD_S,
        fill: float = DEFAULT_FILL,
        growth_share: float = DEFAULT_GROWTH_SHARE,
        growth_reload_s: float = DEFAULT_GROWTH_RELOAD_S,
        horizon_s: float | None = DEFAULT_HORIZON_S,
        preempt_band_s: float = DEFAULT_PREEMPT_BAND_S,
        move_factor: float = DEFAULT_MOVE_FACTOR,
        retention_quantile: float = DEFAULT_RETENTION_QUANTILE,
        retention_horizon_s: float = DEFAULT_RETENTION_HORIZON_S,
    ) -> None:
        super().__init__(provisional_ttl_s=provisional_ttl_s, window=window)
        if max_waiting is not None and max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1 or None, got {max_waiting}")
        if srpt_weight < 0 or pin_bonus_s < 0 or hopeless_factor < 0:
            raise ValueError("srpt_weight, pin_bonus_s and hopeless_factor must be >= 0")
        self.max_waiting = max_waiting
        self.srpt_weight = srpt_weight
        self.pin_bonus_s = pin_bonus_s
        self.hopeless_factor = hopeless_factor
        self.prefix_slack = prefix_slack
        self.best_effort_s = best_effort_s
        self.max_kv_usage = max_kv_usage
        #: An engine with room in its batch for every call waiting there has headroom whatever ``max_waiting`` says.
        self.batch_room = batch_room
        if not preempt_band_s > 0 or not 0 < retention_quantile <= 1:
            raise ValueError("preempt_band_s must be > 0 and retention_quantile in (0, 1]")
        if not move_factor >= 1:
            raise ValueError(f"move_factor must be >= 1, got {move_factor}")
        self.move_factor = move_factor
        #: The switches of the memory-bound parts (docs/scheduling.md): each can be turned off for an ablation.
        self.memory_admission = memory_admission
        self.retention = retention
        self.program_preemption = program_preemption
        #: Offload during long tools and prefetch before their return, on engines with a host tier (None: off).
        self.host_tier = HostTier(min_away_s=min_away_s, lead_s=prefetch_lead_s) if host_tier else None
        self.preempt_band_s = preempt_band_s
        self.retention_quantile = retention_quantile
        self.retention_horizon_s = retention_horizon_s
        #: Where live programs' contexts are and the KV they will need (memory-aware admission).
        self.memory = MemoryLedger(
            fill=fill,
            growth_share=growth_share,
            growth_reload_s=growth_reload_s,
            horizon_s=horizon_s,
            reload_s=self._known_reload_s,
        )
        # The engine memory-aware admission chose for the call being routed (admit, then pick_engine).
        self._placement: tuple[CallInfo, Engine] | None = None
        #: Live programs, workflow profiles and the work routed to each engine.
        self.book = ProgramBook()
        #: The engines holding live programs' recent contexts.
        self.contexts = ContextIndex()
        self.homes = PrefixHomes()
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
        return self._known_reload_s(engine, tokens) or 0.0

    def _known_reload_s(self, engine: Engine, tokens: int) -> float | None:
        """:meth:`reload_s`, None while neither a calibration nor a measured prefill prices it."""
        cost = engine.prefill_cost_s(tokens)
        if cost is not None:
            return cost
        fit = self._fits.get(engine.name)
        return None if fit is None or not fit.known else fit.seconds(tokens)

    # -- urgency -----------------------------------------------------------------------

    def urgency_key(self, call: CallInfo) -> float:
        """The call's key in seconds on the runtime clock, lower first (see the module docstring)."""
        program = call.program
        book = self.book
        expected = book.expected_call_s(call)
        if program.deadline_s is None:
            remaining = book.remaining_service_s(program)
            return program.submitted_at + self.best_effort_s + self.srpt_weight * (remaining or 0.0)
        now = self.host.now()
        deadline_at = program.submitted_at + program.deadline_s
        if deadline_at - now < self.hopeless_factor * expected:
            return deadline_at + program.deadline_s  # cannot make it: after those that can, not starved
        share = book.stage_share(call, measured_rest=True)
        return latest_start(now=now, deadline_at=deadline_at, share=share, expected_s=expected)

    def stage_deadline(self, call: CallInfo) -> float | None:
        """When ``call``'s stage should end for its program to meet its deadline (``None``: no deadline)."""
        program = call.program
        if program.deadline_s is None:
            return None
        now = self.host.now()
        deadline_at = program.submitted_at + program.deadline_s
        if deadline_at <= now:
            return deadline_at
        return now + (deadline_at - now) * self.book.stage_share(call, measured_rest=True)

    def priority_of(self, call: CallInfo, pins: ProgramPins, *, pinned: bool) -> int:
        key = self.urgency_key(call) - (self.pin_bonus_s if pinned else 0.0)
        return engine_priority(call.level, key)

    def held_order(self, calls: Sequence[CallInfo]) -> Sequence[CallInfo]:
        """Held calls by key, most urgent first (keys are computed again: slack shrinks while a call waits)."""
        return sorted(calls, key=self.urgency_key)

    # -- admission and dispatch ------------------------------------------------------------

    def follows_pin(self, call: CallInfo, engine: Engine) -> bool:
        """Only a call that continues a context held on the pin's engine follows the pin."""
        return self.contexts.holder(call.program.id, call.prompt, (engine,)) is engine

    def admit(self, call: CallInfo, engines: Sequence[Engine], pins: ProgramPins) -> bool:
        limit = self.max_waiting
        if limit is not None and not any(self._has_headroom(e, limit) for e in engines):
            return False
        if not self.memory_admission:
            return True
        pool = engines if limit is None else [e for e in engines if self._has_headroom(e, limit)]
        engine = self._memory_placement(call, pool, pins)
        self._placement = None if engine is None else (call, engine)
        return engine is not None

    def call_demand(self, call: CallInfo, engine: Engine | None = None) -> int:
        """KV tokens to reserve for ``call``'s program if it runs now (on ``engine``): prompt, output budget, growth."""
        return self.memory.demand(call.program.workflow, _call_tokens(call, engine), engine)

    def _memory_placement(self, call: CallInfo, pool: Sequence[Engine], pins: ProgramPins) -> Engine | None:
        """Where ``call`` fits beside the programs counted on each engine; None: hold it (it claims an engine).

        Among the engines it fits, the lowest placement cost (Dynamo's KV
        router's, in tokens): the prompt tokens it would prefill there plus
        the tokens of the calls running there; but a call continuing a
        context stays where the context is, if it fits there, unless its cost
        there is more than ``move_factor`` times the best.  Where it fits
        nowhere it waits for its context's engine (a new program: the one
        with the most room).  Engines that do not say their KV size are
        placed on as without memory-aware admission.
        """
        if all(e.load().kv_tokens is None for e in pool):
            return self._affine_engine(call, pool, pins)
        memory = self.memory
        program_id = call.program.id
        now = self.host.now()
        key = self.urgency_key(call)
        home = self.contexts.holder(program_id, call.prompt, pool)
        fitting = [e for e in pool if memory.fits(e, program_id, self.call_demand(call, e), now, key)]
        if fitting:
            # Dynamo's cost rather than the most room, and moving rather than holding a continuing call that
            # does not fit at home: on the coding tuning traces mean JCT 596/658 s -> 581/621 s (seeds 101/121,
            # 8 engines). Moving one that fits at home only when home costs over twice the best: 581/637/679/621 s
            # -> 562/641/669/609 s (coding seeds 101 x2, 111, 121) and 155 s (P95 436 -> 419 s) on the agent
            # trace; Dynamo's own rule (factor 1) 553/617/665/603 s but 161 s there (docs/memory_bound.md).
            costs = {e: self._placement_cost(call, e, home) for e in fitting}
            best = min(fitting, key=lambda e: (costs[e], -self._room(e, now)))
            if home in costs and best is not home and costs[home] <= self.move_factor * costs[best]:
                return home
            return best
        target = home if home is not None else max(pool, key=lambda e: self._room(e, now))
        memory.claim(program_id, target, self.call_demand(call, target), key)
        return None

    def _placement_cost(self, call: CallInfo, engine: Engine, home: Engine | None) -> int:
        """Tokens ``call`` would prefill on ``engine`` plus the tokens of the calls running there."""
        if engine.reports_cached_prefix and call.prompt_tokens_exact:
            prefix = engine.cached_prefix(call.prompt.token_ids)  # type: ignore[union-attr]
            cached = prefix.blocks * prefix.block_size
        else:  # the engine cannot say: the context the ledger places there, if the call continues it
            cached = self.memory.context_tokens(call.program.id) if engine is home else 0
        return max(0, _call_tokens(call, engine, output=False) - cached) + self.memory.running_tokens(engine)

    def _room(self, engine: Engine, now: float) -> int:
        free = self.memory.free(engine, now)
        return 0 if free is None else free

    def _has_headroom(self, engine: Engine, limit: int) -> bool:
        book = self.book
        if book.has_headroom(engine, limit, self.max_kv_usage):
            return True
        # Nothing to arbitrate: the engine runs whatever waits there at once, so holding only adds latency.
        return self.batch_room and has_batch_room(engine.load(), book.routed_to(engine))

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        route = super().route(call, engines)
        self._placement = None
        if route is None:
            return None
        self.book.routed(call, route.engine, self.book.expected_call_s(call))
        program = call.program
        self.memory.placed(program.id, program.workflow, route.engine, _call_tokens(call, route.engine))
        if self.program_preemption and route.engine.supports_pins:
            rank = self.preempt_rank(call)
            return Route(route.engine, route.priority, {**route.metadata, METADATA_PREEMPT_RANK: rank})
        return route

    def preempt_rank(self, call: CallInfo) -> int:
        """The call's rank as a preemption victim (higher first): the least urgent band, then the least context.

        Urgency keys in one band of ``preempt_band_s`` seconds count as equal;
        among them, preempting the call with the shortest prompt throws away
        the least computed work.
        """
        band = int(self.urgency_key(call) // self.preempt_band_s)
        blocks = min(call.prompt_tokens // _RANK_TOKEN_UNIT, _RANK_TOKENS_SPAN - 1)
        return band * _RANK_TOKENS_SPAN + (_RANK_TOKENS_SPAN - 1 - blocks)

    def pick_engine(self, call: CallInfo, engines: Sequence[Engine], pins: ProgramPins) -> Engine:
        """The engine holding the context it continues, else the better of its prefix's two homes; then the deadline."""
        placement = self._placement
        if placement is not None and placement[0] is call:
            return placement[1]  # memory-aware admission chose it
        limit = self.max_waiting
        pool = engines
        if limit is not None:
            pool = [e for e in engines if self._has_headroom(e, limit)] or engines
        choice = self._affine_engine(call, pool, pins)
        deadline = self.stage_deadline(call)
        if deadline is not None and len(pool) > 1:
            book, now = self.book, self.host.now()
            expected = book.expected_call_s(call)
            finish = book.expected_finish(choice, expected, now)
            if finish > deadline:
                best_finish, best = min(((book.expected_finish(e, expected, now), e) for e in pool), key=lambda f: f[0])
                if best_finish < finish:
                    choice = best
        return choice

    def _affine_engine(self, call: CallInfo, pool: Sequence[Engine], pins: ProgramPins) -> Engine:
        slack = self.affinity_slack
        if slack is None:
            return self.least_loaded(pool)
        least = min(e.in_flight for e in pool)
        home = self.contexts.holder(call.program.id, call.prompt, pool)
        if home is not None and home.in_flight <= least + slack:
            return home
        candidates = self.homes.candidates(call.prefix_key, pool)
        best = min(candidates, key=load_key)
        if best.in_flight <= least + self.prefix_slack:
            return best
        return self.least_loaded(pool)

    # -- events ----------------------------------------------------------------------------

    async def on_call_finished(self, event: CallFinished) -> None:
        self.book.call_finished(event, self.host.now())
        completion = event.completion
        if completion is not None and event.engine is not None:
            context = completion.prompt_tokens + completion.completion_tokens
            self.memory.finished(event.call.program.id, self.host.engine(event.engine), context)
        else:
            self.memory.finished(event.call.program.id, None, None)
        if event.completion is not None and event.engine is not None and self.program_pins(event.call.program.id):
            call = event.call
            self.contexts.remember(call.program.id, call.prompt, event.completion, self.host.engine(event.engine))
        await super().on_call_finished(event)

    async def on_tool_started(self, event: ToolStarted) -> None:
        program_id = event.program.id
        expected = self.durations.quantile(event.tool, 0.5)  # all tools' median for a tool not seen yet
        now = self.host.now()
        self.memory.away_until(program_id, now + (expected or 0.0))
        tier = self.host_tier
        if tier is not None and await tier.away(program_id, self.memory.engine_of(program_id), expected):
            # Off to host memory with the live pin's blocks (the engine drops the pin): no pin to decide.
            pins = self.program_pins(program_id)
            if pins is not None:
                pins.engine = None
                pins.pin_until = 0.0
                pins.pause_until = now
        else:
            await super().on_tool_started(event)
        if self.memory.has_claims:
            # A program away past its horizon stops counting now, not at the next call's end: a call held for
            # its memory would otherwise wait for the next release (on simulated copies of the real CPU
            # engine's tuning traces, mean JCT 53/52/58 s -> 51/50/56 s, seeds 31-33).
            self.host.wake()

    async def on_tool_finished(self, event: ToolFinished) -> None:
        self.memory.back(event.program.id)
        if self.host_tier is not None:
            await self.host_tier.back(event.program.id)
        await super().on_tool_finished(event)
        self.host.wake()  # memory counted for a program that may no longer come back soon: offer held calls

    async def on_program_finished(self, program: Program) -> None:
        self.book.program_finished(program)
        self.contexts.forget(program.id)
        self.memory.program_finished(program.id)
        if self.host_tier is not None:
            self.host_tier.forget(program.id)
        await super().on_program_finished(program)

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
        if choice.ttl_s > 0:
            return PinChoice(choice.ttl_s + self.margin_s, pin_value(choice.p_return, reload, pins.context_tokens))
        if not self.retention:
            return PinChoice(0.0)
        # Retention by value: kept anyway, ranked by what it saves per block against every other idle program's.
        until = self.durations.quantile(tool, self.retention_quantile)  # all tools' for a tool not seen yet
        if until is None or until <= 0:
            return PinChoice(0.0)
        p_back = self.durations.cdf(tool, self.retention_horizon_s) or 0.0
        return PinChoice(until + self.margin_s, pin_value(p_back, reload, pins.context_tokens))

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


def _call_tokens(call: CallInfo, engine: Engine | None, *, output: bool = True) -> int:
    """``call``'s prompt tokens (plus its output budget), at most what one request may hold on ``engine``.

    A chat prompt's length is estimated from its characters; one far longer
    than the engine's context is refused there, and must not count as
    holding (or needing) memory others wait for meanwhile.
    """
    tokens = call.prompt_tokens + (call.sampling.max_tokens if output else 0)
    limit = None if engine is None else engine.max_model_len
    return tokens if limit is None else min(tokens, limit)

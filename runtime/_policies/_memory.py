"""The KV memory each engine owes its live programs: the ledger behind ``agentrt``'s memory-aware admission.

Once a program's context is tens of thousands of tokens, an engine's KV
cache holds a handful of programs, and every program admitted beyond that
evicts one whose next turn must prefill its whole context again (seconds
per turn) or, if it is running, preempts it.  The ledger keeps, per live
program, the engine its context lives on and what it will need there:

- ``tokens``: its context now (the last finished call's prompt and reply;
  while a call runs, that call's prompt plus its output budget);
- its *demand*: ``tokens`` plus ``growth_share`` times what it is expected
  to grow by before it ends (the workflow's typical peak context, learned
  from finished programs, less ``tokens``): a program admitted on a few
  thousand tokens will need a hundred thousand later, and admitting it
  where that will not fit is thrashing deferred.  The growth is reserved
  only on an engine that would take at least ``growth_reload_s`` to
  prefill the expected peak again (or that cannot say): where a context
  reloads in a fraction of a second, a program preempted later for
  another's growth loses less than a newcomer held now for memory that
  stays unused;
- whether it *counts*: a program counts against its engine while one of its
  calls runs, between its calls, and while it is in a tool whose predicted
  return is nearer (before or after) than its *horizon*: the seconds its
  engine would take to prefill its context again (``reload_s``), or a fixed
  ``horizon_s``.  Holding a newcomer for a program away costs the newcomer
  at least the time until that program is back; letting the newcomer evict
  it costs the program one reload.  So a program counts only while the
  first is smaller: on an H100 a 110K-token context (10 s to prefill)
  counts in its last 10 s away; on a small CPU engine, where a context
  prefills in a tenth of a second, a program away hardly counts.  A program
  that does not count may lose its blocks (the engine's pins release them
  by value, or the host tier keeps them), and is admitted again like any other;
- *claims*: a call held because its demand did not fit claims it on the
  engine it waits for, so that calls keyed after it (later, less urgent
  programs) cannot take that memory first; it is not starved.  To a call
  keyed before it, a held program counts for nothing (its context may be
  evicted): held programs never wait on each other.

A call fits an engine when the demand counted there (the call's own
program excluded, the claims of more urgent held calls included) plus the
call's demand is at most ``fill`` times the engine's KV tokens
(:attr:`runtime.EngineLoad.kv_tokens`), or when nothing counts there (no
call waits for ever on an estimate).  An engine that does not say its size
always fits.  Nothing waits for ever: running calls end, a program away
counts only until its horizon past its expected return, and a claim
counts only against calls keyed after it.  Times are the runtime clock's, seconds.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .._engines import Engine

__all__ = ["DEFAULT_FILL", "DEFAULT_GROWTH_RELOAD_S", "DEFAULT_GROWTH_SHARE", "DEFAULT_HORIZON_S", "MemoryLedger"]

#: Share of an engine's KV tokens the ledger lets programs claim (the rest absorbs block rounding and decode).
DEFAULT_FILL = 0.95
#: Share of a program's expected remaining growth reserved for it.  The typical peak is a mean over programs of
#: very different lengths: reserving all of it for each kept short programs out.  On the tuning traces, 1 / 0.5 / 0:
#: coding (simulated H100s, 4 traces) mean JCT 620 / 612 / 616 s, P95 1,773 / 1,742 / 1,790 s; the real CPU
#: engine's regime (simulated, 6 traces) 44.0 / 43.7 / 42.8 s, P95 103 / 101 / 96 s; real, seed 35, 64.5 / 64.3 /
#: 62.1 s, P95 153 / 145 / 137 s.
DEFAULT_GROWTH_SHARE = 0.5
#: Growth is reserved only on engines that would take at least this many seconds to prefill the program's expected
#: peak context again.  It splits the regimes on the tuning traces (see DEFAULT_GROWTH_SHARE): simulated H100s
#: reload a coding program's peak in tens of seconds, where reserving did better; the real CPU engine in a tenth
#: of a second, where reserving nothing did.
DEFAULT_GROWTH_RELOAD_S = 1.0
#: A program in a tool counts against its engine while it is expected back within this many seconds; None:
#: within the time its engine would take to prefill its context again.  A fixed 30 s did 1.5-10% better than 0
#: on the simulator's coding traces and cost 3x in mean JCT on a real CPU engine whose cache holds a few short
#: contexts, where programs counted while away held the others back and left the engine idle; the reload
#: horizon follows what each engine pays (docs/memory_bound.md).
DEFAULT_HORIZON_S: float | None = None
# Weight of each finished program's peak context in its workflow's estimate.
_PEAK_ALPHA = 0.2


@dataclass(slots=True, eq=False)
class _Resident:
    engine: Engine
    workflow: str
    tokens: int = 0
    active: int = 0
    #: When it is expected back (None: between calls, back at once).
    back_at: float | None = None
    peak: int = 0


@dataclass(slots=True, eq=False)
class _Total:
    """An engine's counted demand as computed at ``since``, valid until ``until`` or the next event on the engine.

    A program away in a tool starts or stops counting at a known time (its
    expected return less or plus its horizon), so between events the total
    changes only then: held calls are offered again on every event, each
    checked against every engine, and summing every program each time cost
    O(held x engines x programs) per event.
    """

    since: float
    until: float
    value: int
    #: Each counting program's part of ``value``.
    parts: dict[str, int] = field(default_factory=dict)
    #: The parts of the programs with a claim, for the claims of :attr:`MemoryLedger._claim_epoch` (-1: not yet).
    claimed: int = 0
    claimed_epoch: int = -1


@dataclass(slots=True, eq=False)
class _ClaimIndex:
    """The claims on one engine by key, with running sums of their demands, to sum those keyed before a key at once."""

    keys: list[float]
    sums: list[int]


@dataclass(slots=True, eq=False)
class _Claim:
    engine: Engine
    demand: int
    key: float


class MemoryLedger:
    """Per live program, the engine holding its context and the KV it will need (see the module docstring)."""

    def __init__(
        self,
        *,
        fill: float = DEFAULT_FILL,
        growth_share: float = DEFAULT_GROWTH_SHARE,
        horizon_s: float | None = DEFAULT_HORIZON_S,
        growth_reload_s: float = DEFAULT_GROWTH_RELOAD_S,
        reload_s: Callable[[Engine, int], float | None] | None = None,
    ) -> None:
        if not 0 < fill <= 1:
            raise ValueError(f"fill must be in (0, 1], got {fill}")
        if growth_share < 0 or growth_reload_s < 0 or (horizon_s is not None and horizon_s < 0):
            raise ValueError("growth_share, growth_reload_s and horizon_s must be >= 0")
        self.fill = fill
        self.growth_share = growth_share
        #: Growth is reserved on an engine only if prefilling the expected peak there takes at least this long
        #: (seconds; ``reload_s(engine, tokens)``, None: not known, reserved).
        self.growth_reload_s = growth_reload_s
        #: Fixed seconds a program in a tool counts around its expected return; None: its reload time
        #: (``reload_s(engine, tokens)``; without it or where it is None, 0).
        self.horizon_s = horizon_s
        self._reload_s = reload_s
        self._residents: dict[str, _Resident] = {}
        # The same residents by engine, and each engine's counted total (dropped on every event there).
        self._on: dict[Engine, dict[str, _Resident]] = {}
        self._totals: dict[Engine, _Total] = {}
        self._claims: dict[str, _Claim] = {}
        # Per engine its claims, and their index by key (dropped when they change).
        self._claims_on: dict[Engine, dict[str, _Claim]] = {}
        self._claim_index: dict[Engine, _ClaimIndex] = {}
        # Bumped whenever a program gains or loses its claim.
        self._claim_epoch = 0
        self._peaks: dict[str, float] = {}

    # -- reading ---------------------------------------------------------------------

    def engine_of(self, program_id: str) -> Engine | None:
        """The engine the ledger places the program's context on (None: nowhere yet)."""
        resident = self._residents.get(program_id)
        return None if resident is None else resident.engine

    def expected_peak(self, workflow: str) -> int:
        """The workflow's typical peak context in tokens (0 before one of its programs finished)."""
        return round(self._peaks.get(workflow, 0.0))

    def demand(self, workflow: str, tokens: int, engine: Engine | None = None) -> int:
        """KV tokens to reserve for a program of ``workflow`` whose context is ``tokens`` now (on ``engine``).

        Its expected growth is left out on an engine that reloads the expected peak in under ``growth_reload_s``.
        """
        peak = self.expected_peak(workflow)
        if peak <= tokens or not self.growth_share:
            return tokens
        if engine is not None and self._reload_s is not None and self.growth_reload_s > 0:
            reload = self._reload_s(engine, peak)
            if reload is not None and reload < self.growth_reload_s:
                return tokens
        return tokens + round(self.growth_share * (peak - tokens))

    def counted(self, engine: Engine, now: float, *, exclude: str | None = None, key: float | None = None) -> int:
        """The demand counted against ``engine`` now, ``exclude``'s left out.

        With ``key`` (the urgency key of the call asking), a held call's claim
        counts when it is keyed before, and a program whose call is held keyed
        after ``key`` counts for nothing: it yields its memory to the more
        urgent call (held programs waiting on each other's memory would
        otherwise wait for ever).
        """
        counted = self._total(engine, now)
        total = counted.value
        claims = self._claims
        if key is None:
            return total if exclude is None else total - counted.parts.get(exclude, 0)
        # Programs with a claim count as their claim, or not at all.
        if counted.claimed_epoch != self._claim_epoch:
            parts = counted.parts
            if len(parts) <= len(claims):
                counted.claimed = sum(part for program_id, part in parts.items() if program_id in claims)
            else:
                counted.claimed = sum(parts.get(program_id, 0) for program_id in claims)
            counted.claimed_epoch = self._claim_epoch
        total -= counted.claimed
        own = claims.get(exclude) if exclude is not None else None
        if exclude is not None and own is None:
            total -= counted.parts.get(exclude, 0)
        total += self._claimed_before(engine, key)
        if own is not None and own.engine is engine and own.key < key:
            total -= own.demand
        return total

    def _claimed_before(self, engine: Engine, key: float) -> int:
        """The demand of the claims on ``engine`` keyed before ``key``."""
        index = self._claim_index.get(engine)
        if index is None:
            ordered = sorted((c.key, c.demand) for c in self._claims_on.get(engine, {}).values())
            index = _ClaimIndex([k for k, _ in ordered], [0, *itertools.accumulate(d for _, d in ordered)])
            self._claim_index[engine] = index
        return index.sums[bisect.bisect_left(index.keys, key)]

    def _total(self, engine: Engine, now: float) -> _Total:
        """The demand of every program counting against ``engine`` at ``now`` (cached while it cannot change)."""
        total = self._totals.get(engine)
        if total is not None and total.since <= now < total.until:
            return total
        total = _Total(now, math.inf, 0)
        for program_id, r in self._on.get(engine, {}).items():
            counts, until = self._counting(r, now)
            total.until = min(total.until, until)
            if counts:
                part = self.demand(r.workflow, r.tokens, engine)
                total.parts[program_id] = part
                total.value += part
        self._totals[engine] = total
        return total

    def horizon(self, engine: Engine, tokens: int) -> float:
        """Seconds around its expected return a program of ``tokens`` tokens on ``engine`` counts while away."""
        if self.horizon_s is not None:
            return self.horizon_s
        return (None if self._reload_s is None else self._reload_s(engine, tokens)) or 0.0

    def _counting(self, r: _Resident, now: float) -> tuple[bool, float]:
        """Whether the program counts at ``now``, and a time before which that stays so."""
        if r.active or r.back_at is None:
            return True, math.inf
        horizon = self.horizon(r.engine, r.tokens)
        if now < r.back_at - horizon:
            return False, r.back_at - horizon
        if now <= r.back_at + horizon:
            return True, r.back_at + horizon
        return False, math.inf  # long overdue: the tool runs far past its prediction, no longer expected back soon

    def free(self, engine: Engine, now: float, *, exclude: str | None = None, key: float | None = None) -> int | None:
        """Tokens of ``engine``'s cache not counted (None when the engine does not say its size)."""
        size = engine.load().kv_tokens
        if size is None:
            return None
        return int(self.fill * size) - self.counted(engine, now, exclude=exclude, key=key)

    def fits(self, engine: Engine, program_id: str, demand: int, now: float, key: float) -> bool:
        """Whether ``demand`` tokens of ``program_id``, keyed ``key``, fit ``engine`` beside what counts there.

        An engine where nothing counts takes any demand: a program larger than
        the estimate allows must still run somewhere.
        """
        size = engine.load().kv_tokens
        if size is None:
            return True
        counted = self.counted(engine, now, exclude=program_id, key=key)
        return counted == 0 or counted + demand <= int(self.fill * size)

    def claimed(self, program_id: str) -> bool:
        """Whether a call of the program is held waiting for memory."""
        return program_id in self._claims

    @property
    def has_claims(self) -> bool:
        """Whether any call is held waiting for memory."""
        return bool(self._claims)

    def running_tokens(self, engine: Engine) -> int:
        """The context tokens of the programs with a call running on ``engine``, as far as the ledger knows."""
        return sum(r.tokens for r in self._on.get(engine, {}).values() if r.active)

    def context_tokens(self, program_id: str) -> int:
        """The program's context on its engine in tokens (0: none known)."""
        resident = self._residents.get(program_id)
        return 0 if resident is None else resident.tokens

    def active_on(self, engine: Engine) -> int:
        """Programs with a call running on ``engine``, as far as the ledger knows."""
        return sum(1 for r in self._on.get(engine, {}).values() if r.active)

    # -- events ------------------------------------------------------------------------

    def placed(self, program_id: str, workflow: str, engine: Engine, tokens: int) -> None:
        """A call of ``tokens`` tokens (prompt and output budget) of the program was sent to ``engine``."""
        self._drop_claim(program_id)
        r = self._residents.get(program_id)
        if r is None:
            r = self._residents[program_id] = _Resident(engine, workflow)
            self._on.setdefault(engine, {})[program_id] = r
        elif r.engine is not engine and r.active:
            # A parallel call elsewhere: the newest context wins, as in ContextIndex.
            r.active = 0
        self._move(program_id, r, engine)
        r.active += 1
        r.tokens = max(tokens, r.tokens if r.active > 1 else 0)
        r.back_at = None
        r.peak = max(r.peak, tokens)

    def finished(self, program_id: str, engine: Engine | None, context_tokens: int | None) -> None:
        """A call of the program ended: with a context of ``context_tokens`` on ``engine``, or failed (None)."""
        r = self._residents.get(program_id)
        if r is None:
            return
        self._totals.pop(r.engine, None)
        r.active = max(0, r.active - 1)
        if engine is not None and context_tokens is not None:
            self._move(program_id, r, engine)
            r.tokens = context_tokens
            r.peak = max(r.peak, context_tokens)
        r.back_at = None

    def away_until(self, program_id: str, back_at: float) -> None:
        """The program went idle (a tool) and is expected back at ``back_at``; the latest estimate in a pause wins."""
        r = self._residents.get(program_id)
        if r is not None and not r.active:
            self._totals.pop(r.engine, None)
            r.back_at = back_at if r.back_at is None else max(r.back_at, back_at)

    def back(self, program_id: str) -> None:
        """The program's tool returned: it is about to call again."""
        r = self._residents.get(program_id)
        if r is not None:
            self._totals.pop(r.engine, None)
            r.back_at = None

    def claim(self, program_id: str, engine: Engine, demand: int, key: float) -> None:
        """A call of the program, keyed ``key``, waits for ``demand`` tokens on ``engine``."""
        old = self._claims.get(program_id)
        if old is not None and old.engine is engine and old.demand == demand and old.key == key:
            return  # offered again and held again as it was
        self._drop_claim(program_id)
        claim = self._claims[program_id] = _Claim(engine, demand, key)
        self._claims_on.setdefault(engine, {})[program_id] = claim
        self._claim_index.pop(engine, None)
        self._claim_epoch += 1

    def program_finished(self, program_id: str) -> None:
        """The program ended: its peak teaches its workflow's estimate; its memory and claims go."""
        self._drop_claim(program_id)
        r = self._residents.pop(program_id, None)
        if r is None:
            return
        del self._on[r.engine][program_id]
        self._totals.pop(r.engine, None)
        if r.peak <= 0:
            return
        old = self._peaks.get(r.workflow)
        self._peaks[r.workflow] = r.peak if old is None else old + _PEAK_ALPHA * (r.peak - old)
        self._totals.clear()  # every program of the workflow now demands another growth

    def _drop_claim(self, program_id: str) -> None:
        claim = self._claims.pop(program_id, None)
        if claim is not None:
            del self._claims_on[claim.engine][program_id]
            self._claim_index.pop(claim.engine, None)
            self._claim_epoch += 1

    def _move(self, program_id: str, r: _Resident, engine: Engine) -> None:
        """Place ``r`` on ``engine`` (it may be there already); both engines' totals are dropped."""
        self._totals.pop(r.engine, None)
        self._totals.pop(engine, None)
        if r.engine is not engine:
            del self._on[r.engine][program_id]
            self._on.setdefault(engine, {})[program_id] = r
            r.engine = engine

    @property
    def tracked_programs(self) -> int:
        return len(self._residents)

"""The ``autellix`` policy: program-level attained service in multi-level queues (Autellix, arXiv 2502.13965).

- **PLAS / ATLAS.**  A call's attained service is its program's ATLAS
  value: the longest chain of engine service through the program's DAG
  that ended in a finished call (``p(c) = max over parents (p(parent) +
  t(parent))``, kept as one number per program, as Autellix's process
  table does).  A single-threaded program's is its total service (PLAS).
- **Multi-level feedback queues.**  The service is discretised into
  ``levels`` queues with doubling ranges from ``quantum_s`` (queue 0 below
  1 s of service, queue 1 up to 2 s, queue 2 up to 4 s, ...): a program
  moves down as it receives service, so short programs overtake long ones.
  Within a queue, first come first served (vLLM breaks equal priorities by
  arrival).  The caller's (or program's) priority level stays the most
  significant key.
- **Anti-starvation.**  A program whose calls have waited ``beta`` times
  the service they received (``W / T >= beta``, the waiting of a call
  still queued included) is promoted to queue 0.
- **A central queue.**  Autellix's scheduler keeps the queues itself and
  re-evaluates them at every step; vLLM fixes a request's priority when it
  arrives.  So calls wait in the runtime's admission queue while every
  engine has ``max_waiting`` (2) calls waiting, and are released in queue
  order, each queue first come first served, with their queue (and the
  anti-starvation test) evaluated again at release.
- **Load balancing with data locality.**  A call with a prompt of at most
  ``locality_tokens`` (2,048) tokens goes to the least loaded engine
  (fewest in flight); a longer one goes to the engine of its program's
  previous call, where its context is cached, or, for a program's first
  long call, to the engine with the most free KV cache.

One difference from the paper remains: Autellix's engine preempts a
running call that fell below a waiting one; vLLM 0.32 preempts by priority
only under memory pressure (and the simulator does as vLLM does), so a
call, once running, runs to its end.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .._engines import Engine
from .._program import Program
from ._base import CallFinished, CallInfo, Policy, Route
from ._placement import least_loaded
from ._progress import ProgramBook
from ._urgency import LEVEL_SPAN, mlfq_level

__all__ = [
    "DEFAULT_AUTELLIX_BETA",
    "DEFAULT_AUTELLIX_LEVELS",
    "DEFAULT_AUTELLIX_MAX_WAITING",
    "DEFAULT_AUTELLIX_QUANTUM_S",
    "DEFAULT_LOCALITY_TOKENS",
    "AutellixPolicy",
]

#: Service (seconds) below which a program is in the first queue; each later queue doubles the bound.
DEFAULT_AUTELLIX_QUANTUM_S = 1.0
#: Number of queues.
DEFAULT_AUTELLIX_LEVELS = 8
#: Waiting time over service at which a program is promoted to the first queue.
DEFAULT_AUTELLIX_BETA = 2.0
#: Prompts longer than this many tokens follow their program's engine (Autellix's load balancer).
DEFAULT_LOCALITY_TOKENS = 2048
#: Calls waiting on an engine below which it takes another from the central queue.
DEFAULT_AUTELLIX_MAX_WAITING = 2


class AutellixPolicy(Policy):
    """PLAS/ATLAS priorities in multi-level queues, with anti-starvation and locality-aware balancing."""

    name = "autellix"
    #: Held calls are offered again on every call's and program's end, and at least this often (seconds).
    recheck_s = 1.0

    def __init__(
        self,
        *,
        quantum_s: float = DEFAULT_AUTELLIX_QUANTUM_S,
        levels: int = DEFAULT_AUTELLIX_LEVELS,
        beta: float = DEFAULT_AUTELLIX_BETA,
        locality_tokens: int = DEFAULT_LOCALITY_TOKENS,
        max_waiting: int | None = DEFAULT_AUTELLIX_MAX_WAITING,
    ) -> None:
        if not quantum_s > 0 or levels < 1 or not beta > 0 or locality_tokens < 0:
            raise ValueError("quantum_s and beta must be > 0, levels >= 1 and locality_tokens >= 0")
        if max_waiting is not None and max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1 or None, got {max_waiting}")
        self.max_waiting = max_waiting
        self.quantum_s = quantum_s
        self.levels = levels
        self.beta = beta
        self.locality_tokens = locality_tokens
        self.book = ProgramBook()
        self._turn = itertools.count()

    def queue_of(self, program: Program, waiting_s: float = 0.0) -> int:
        """The queue (0 first) of the program's call that has waited ``waiting_s`` seconds so far."""
        progress = self.book.progress(program)
        service = program.llm_service_s
        if service > 0 and progress.waited_s + waiting_s >= self.beta * service:
            return 0  # anti-starvation: promoted to the first queue
        return mlfq_level(progress.atlas_s, quantum_s=self.quantum_s, levels=self.levels)

    def held_order(self, calls: Sequence[CallInfo]) -> Sequence[CallInfo]:
        """The central queue's order: by queue, first come first served within one."""
        now = self.host.now()
        return sorted(calls, key=lambda c: (self.queue_of(c.program, now - c.arrived_s), c.arrived_s))

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        limit = self.max_waiting
        if limit is not None:
            engines = [e for e in engines if self.book.has_headroom(e, limit)]
            if not engines:
                return None  # held in the central queue
        program = call.program
        queue = self.queue_of(program, self.host.now() - call.arrived_s)
        progress = self.book.progress(program)
        home = progress.engine
        if call.prompt_tokens > self.locality_tokens:
            if home is not None and any(e is home for e in engines):
                engine = home
            else:
                engine = min(engines, key=lambda e: (e.load().kv_usage or 0.0, e.in_flight))
        else:
            engine = least_loaded(engines, self._turn)
        self.book.routed(call, engine, 0.0)
        return Route(engine, call.level * LEVEL_SPAN + queue)

    async def on_call_finished(self, event: CallFinished) -> None:
        self.book.call_finished(event, self.host.now())

    async def on_program_finished(self, program: Program) -> None:
        self.book.program_finished(program)

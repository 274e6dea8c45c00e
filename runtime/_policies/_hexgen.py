"""The ``hexgen`` policy: HEXGEN-TEXT2SQL's deadline urgency and workload-balanced dispatch (arXiv 2505.05286).

Per call of a program with a deadline (``SLO``, seconds after submission):

- the stage's deadline is ``SLO_stage = (SLO - elapsed) * t(stage) /
  (t(stage) + sum of t over the stages after it)``, ``t`` the stage's span
  within a program as the workflow's declared stage plan gives it, else as
  the policy learned it from finished programs of the workflow (all of the
  time left for a stage until one has finished);
- its urgency is ``U = t_e - (SLO_stage - waited)``, ``t_e`` the call's
  expected service (its stage's mean, learned online; a fit on its tokens
  before the stage was seen).  The engine priority is the equivalent fixed
  key, the call's latest start ``arrival + SLO_stage - t_e`` (see
  :mod:`._urgency`): most urgent first, and vLLM's scheduler keeps that
  order among queued calls as they wait.

Every call keeps the caller's (or program's) priority level as the most
significant part of its priority; calls of programs without a deadline
come after every call with one at the same level, first come first served
among themselves (vLLM breaks equal priorities by arrival).  The engine
is the argmax of HEXGEN's dispatch score
``alpha * t_base / t_e - (1 - alpha) * W_e / W_base``, ``W_e`` the expected
service already routed to engine ``e`` and not finished, ``W_base`` the largest
``W_e`` (and ``t_base / t_e`` 1 on a pool of identical engines, so the
score balances work; ties round-robin).  No call is held: every call goes
to an engine at once, as in the paper, whose instances keep their own
priority queues.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .._engines import Engine
from .._program import Program
from ._base import CallFinished, CallInfo, Policy, Route
from ._progress import ProgramBook
from ._urgency import LEVEL_SPAN, engine_priority, latest_start

__all__ = ["DEFAULT_HEXGEN_ALPHA", "HexgenPolicy"]

#: Weight of execution speed against workload in the dispatch score.
DEFAULT_HEXGEN_ALPHA = 0.5

# The key of calls without a deadline: after every deadline at their level.
_NO_DEADLINE_KEY_S = (LEVEL_SPAN // 2 - 2) / 1000.0


class HexgenPolicy(Policy):
    """Per-stage deadline urgency and workload-balanced dispatch (see the module docstring)."""

    name = "hexgen"
    recheck_s = None  # never holds a call

    def __init__(self, *, alpha: float = DEFAULT_HEXGEN_ALPHA) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.book = ProgramBook()
        self._turn = itertools.count()

    def urgency_key(self, call: CallInfo, expected_s: float) -> float:
        """The call's latest start (seconds on the runtime clock); calls without a deadline after all others."""
        program = call.program
        if program.deadline_s is None:
            return _NO_DEADLINE_KEY_S
        now = self.host.now()
        share = self.book.stage_share(call, measured_rest=False)
        return latest_start(
            now=now, deadline_at=program.submitted_at + program.deadline_s, share=share, expected_s=expected_s
        )

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        expected = self.book.expected_call_s(call)
        engine = self._dispatch(engines, expected)
        self.book.routed(call, engine, expected)
        return Route(engine, engine_priority(call.level, self.urgency_key(call, expected)))

    def _dispatch(self, engines: Sequence[Engine], expected_s: float) -> Engine:
        # t_base / t_e: the engines of a pool serve one model on like hardware, so every t_e is the
        # call's expected service and the speed term is alpha for all; the workload term decides.
        work = [self.book.work_s(e) for e in engines]
        base = max(work)
        scores = [self.alpha - (1 - self.alpha) * (w / base if base > 0 else 0.0) for w in work]
        best = max(scores)
        tied = [e for e, s in zip(engines, scores, strict=True) if s >= best - 1e-12]
        return tied[next(self._turn) % len(tied)]

    async def on_call_finished(self, event: CallFinished) -> None:
        self.book.call_finished(event, self.host.now())

    async def on_program_finished(self, program: Program) -> None:
        self.book.program_finished(program)

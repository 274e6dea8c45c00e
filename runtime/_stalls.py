"""The stall watcher: a runtime that stops making progress says what it waits on.

Progress is a generated token or a finished LLM or tool call, in any program
of the runtime (:attr:`Program.progressed_at`).  When there has been none for
``stall_after_s`` seconds while calls are in flight, the watcher reports
once: a warning on the ``runtime.progress`` logger listing every waiting call
(program, node, kind, the engine serving it or "held by policy", for how
long), and a :class:`ProgramStalled` event on each program that has one.
It stays quiet until progress resumes; a later quiet period is reported
again.

The runtime as a whole is watched, not each program: a busy runtime whose
queues are long (a program waiting minutes in an engine's queue or the
policy's admission queue while others run) is loaded, not stalled, and a
report per waiting program would bury the one that matters.  A single call
that hangs while others progress is bounded by its own ``timeout_s`` (steps,
LLM calls and tools each take one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import anyio

from ._clock import now
from ._events import ProgramStalled, WaitingCall
from ._program import Node, NodeKind, Program

__all__ = ["DEFAULT_STALL_AFTER_S", "StallWatcher"]

logger = logging.getLogger("runtime.progress")

#: Seconds without progress, while calls are in flight, before a run is reported stalled.
DEFAULT_STALL_AFTER_S = 120.0

#: Waiting calls a warning lists one per line; the rest are counted.
_LISTED = 20


class StallWatcher:
    """Watches the programs ``programs()`` returns; :meth:`run` checks every quarter of ``stall_after_s``.

    A stall is therefore reported between ``stall_after_s`` and 1.25 times
    that after the last progress.  :meth:`check` is one look, for callers
    with their own schedule.
    """

    def __init__(self, programs: Callable[[], Iterable[Program]], stall_after_s: float) -> None:
        number = isinstance(stall_after_s, int | float) and not isinstance(stall_after_s, bool)
        if not (number and math.isfinite(stall_after_s) and stall_after_s > 0):
            raise ValueError(f"stall_after_s must be a number of seconds > 0, got {stall_after_s!r}")
        self._programs = programs
        self.stall_after_s = float(stall_after_s)
        # The start of the quiet period last reported: one report per period.
        self._reported_since: float | None = None

    async def run(self) -> None:
        """Check until cancelled (the runtime runs it in its task group)."""
        while True:
            await anyio.sleep(self.stall_after_s / 4)
            self.check()

    def check(self) -> list[Program]:
        """Report a stall if there is one not yet reported; returns the programs told of it."""
        at = now()
        latest: float | None = None
        waiting: list[tuple[Program, list[Node]]] = []
        earliest_call: float | None = None
        for program in self._programs():
            if program.progressed_at is not None and (latest is None or program.progressed_at > latest):
                latest = program.progressed_at
            if program.state.finished:
                continue
            calls = program.open_calls()
            if calls:
                waiting.append((program, calls))
                started = program.submitted_at + min(node.started_s for node in calls)
                earliest_call = started if earliest_call is None else min(earliest_call, started)
        if earliest_call is None:
            return []  # nothing in flight: idle, not stalled
        # The quiet period began at the last progress, or later if no call
        # was in flight then: the oldest call now in flight started after it.
        quiet_since = earliest_call if latest is None else max(latest, earliest_call)
        quiet_s = at - quiet_since
        if quiet_s < self.stall_after_s or self._reported_since == quiet_since:
            return []
        self._reported_since = quiet_since
        return self._report(at, quiet_s, waiting)

    def _report(self, at: float, quiet_s: float, waiting: list[tuple[Program, list[Node]]]) -> list[Program]:
        lines: list[str] = []
        count = 0
        for program, nodes in waiting:
            calls = tuple(_waiting_call(program, node, at) for node in nodes)
            program.emit(ProgramStalled(program_id=program.id, t=program.elapsed(), quiet_s=quiet_s, waiting=calls))
            for call in calls:
                count += 1
                if len(lines) < _LISTED:
                    lines.append(f"  program {program.id} ({program.workflow}): {call.describe()}")
        if count > len(lines):
            lines.append(f"  ... and {count - len(lines)} more call(s)")
        logger.warning(
            "no progress for %.1f s (no token, no finished LLM or tool call) with %d call(s) in flight in %d "
            "program(s); waiting on:\n%s\nA hung tool or engine? Bound calls with timeout_s= (steps, ctx.llm, "
            "tools), check the engines (await rt.stats()) or the policy's admission queue, or cancel the "
            "program (handle.cancel()).",
            quiet_s,
            count,
            len(waiting),
            "\n".join(lines),
        )
        return [program for program, _ in waiting]


def _waiting_call(program: Program, node: Node, at: float) -> WaitingCall:
    waiting_s = at - (program.submitted_at + node.started_s)
    if node.kind is NodeKind.LLM:
        # The dispatcher names the engine when it sends the request; until
        # then the call is the policy's (held in its admission queue).
        return WaitingCall(node.id, "llm", node.name, node.engine, waiting_s)
    return WaitingCall(node.id, "tool", node.name, None, waiting_s)

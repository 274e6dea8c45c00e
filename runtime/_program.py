"""Programs: one run of a workflow, with the DAG of work discovered so far.

A program is what the runtime schedules: it has an id, a deadline, a user
priority, a state, and a growing DAG of nodes (steps, agents, LLM calls, tool
calls).  ``parent`` links say which node a node ran inside; ``after`` links
say which sibling nodes had to finish before it started (a data dependency
the runtime observed: sequential awaits create one, ``ctx.gather`` fans out).

Memory per program is bounded where it would grow with tokens: a program
keeps its last ``event_buffer`` events (a token is an event), not all of
them; a reader that falls further behind is told how many it missed
(:class:`EventsDropped`).  The DAG grows with calls, not tokens, and is
kept whole: it is the program's record (policies, reports, the journal).
"""

from __future__ import annotations

import collections
import enum
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from workflows import Usage

from ._clock import now
from ._events import Event, EventsDropped, LLMCallFinished, ProgramFinished, TokenGenerated, ToolCallFinished

__all__ = ["DEFAULT_EVENT_BUFFER", "Node", "NodeKind", "Program", "ProgramState"]

#: Events a program keeps for its readers by default.  A token event is
#: ~150 bytes, so this bounds a program's buffer near 150 KB: 1,000 live
#: programs and as many finished ones kept for inspection stay near 300 MB
#: at worst, while a reader that keeps up (one ``async for`` per program)
#: never misses an event.
DEFAULT_EVENT_BUFFER = 1000

#: Events that show the program advancing (the stall watcher's "progress").
_PROGRESS = (TokenGenerated, LLMCallFinished, ToolCallFinished, ProgramFinished)


class ProgramState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (ProgramState.SUCCEEDED, ProgramState.FAILED, ProgramState.CANCELLED)


class NodeKind(enum.StrEnum):
    STEP = "step"
    AGENT = "agent"
    LLM = "llm"
    TOOL = "tool"


@dataclass(slots=True)
class Node:
    """One unit of work in a program's DAG; times are seconds since submission.

    ``key`` is its step identity, stable across runs of the program: its
    position under its parent (the ordinal among siblings, with the branch
    of each ``ctx.gather`` it runs in), which the journal files it under.
    """

    id: str
    kind: NodeKind
    name: str
    parent: str | None
    after: tuple[str, ...]
    started_s: float
    key: str = ""
    finished_s: float | None = None
    ok: bool | None = None
    error: str | None = None
    attempts: int = 0
    engine: str | None = None
    usage: Usage = field(default_factory=Usage)
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float | None:
        return None if self.finished_s is None else self.finished_s - self.started_s


class Program:
    """One run of a workflow: identity, deadline, state and DAG.

    ``deadline_s`` is relative to submission (``None``: no deadline);
    ``stage_plan`` is the workflow's declared stage plan, if any.
    ``event_buffer`` is how many of its latest events it keeps for
    :meth:`events` (at least 1).
    ``submitted_at`` is a reading of the runtime's clock (the event loop's);
    ``submitted_wall`` a ``time.time()`` one.  ``usage`` sums the tokens of
    its finished LLM calls and ``llm_service_s`` the engine time they
    received (seconds from admission to finish, the engine's queueing
    excluded where it reports it): the "service received so far" of
    Autellix-style policies.
    """

    def __init__(
        self,
        workflow: str,
        inputs: dict[str, Any],
        *,
        deadline_s: float | None,
        priority: int,
        program_id: str | None = None,
        stage_plan: Mapping[str, float] | None = None,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
    ) -> None:
        if not isinstance(event_buffer, int) or isinstance(event_buffer, bool) or event_buffer < 1:
            raise ValueError(f"event_buffer must be an int >= 1 (events kept per program), got {event_buffer!r}")
        self.id = program_id or f"prog-{uuid.uuid4().hex[:12]}"
        self.workflow = workflow
        self.inputs = inputs
        self.deadline_s = deadline_s
        self.priority = priority
        #: The workflow's declared stages in run order, with expected seconds each (``None``: none declared).
        self.stage_plan: Mapping[str, float] | None = stage_plan
        self.submitted_at = now()
        self.submitted_wall = time.time()
        self.finished_at: float | None = None
        self.state = ProgramState.PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.nodes: dict[str, Node] = {}
        self.usage = Usage()
        self.llm_service_s = 0.0
        self.llm_calls = 0
        self.tool_calls = 0
        self._ids = itertools.count()
        #: How many of its latest events the program keeps for readers.
        self.event_buffer = event_buffer
        self._events: collections.deque[Event] = collections.deque(maxlen=event_buffer)
        self._emitted = 0  # events ever emitted; the oldest kept is number _emitted - len(_events)
        #: When the program last advanced (a token, a finished LLM or tool call; runtime clock), if ever.
        self.progressed_at: float | None = None
        # Unfinished LLM and tool nodes: what the program waits on (the stall watcher reads it).
        self._open_calls: dict[str, Node] = {}
        # Created by a reader about to wait, set and dropped by the next emit:
        # most programs are never followed, and an event per emit showed in
        # replay profiles.
        self._new_event: anyio.Event | None = None
        # Called with every event as it is emitted, in the emitting task (see listen()).
        self._listeners: list[Callable[[Event], None]] = []

    # -- time ----------------------------------------------------------------

    def elapsed(self) -> float:
        """Seconds since submission (until finish, once finished)."""
        end = self.finished_at if self.finished_at is not None else now()
        return end - self.submitted_at

    def slack_s(self) -> float | None:
        """Seconds left before the deadline (negative once missed), or ``None``."""
        return None if self.deadline_s is None else self.deadline_s - self.elapsed()

    @property
    def jct_s(self) -> float | None:
        """Job completion time in seconds, once finished."""
        return None if self.finished_at is None else self.finished_at - self.submitted_at

    # -- DAG -----------------------------------------------------------------

    def add_node(self, kind: NodeKind, name: str, *, parent: str | None, after: tuple[str, ...], key: str = "") -> Node:
        node = Node(f"{kind.value}-{next(self._ids)}", kind, name, parent, after, self.elapsed(), key)
        self.nodes[node.id] = node
        if kind is NodeKind.LLM or kind is NodeKind.TOOL:
            self._open_calls[node.id] = node
        return node

    def finish_node(self, node: Node, *, ok: bool, error: str | None = None) -> None:
        node.finished_s = self.elapsed()
        node.ok = ok
        node.error = error
        self._open_calls.pop(node.id, None)

    def open_calls(self) -> list[Node]:
        """The LLM and tool calls in flight (started, not finished), oldest first."""
        return list(self._open_calls.values())

    def children(self, node_id: str | None) -> list[Node]:
        return [n for n in self.nodes.values() if n.parent == node_id]

    def edges(self) -> list[tuple[str, str]]:
        """Dependency edges ``(before, after)`` between nodes."""
        return [(dep, n.id) for n in self.nodes.values() for dep in n.after]

    # -- events --------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._events.append(event)  # the deque drops the oldest past event_buffer
        self._emitted += 1
        if isinstance(event, _PROGRESS):
            self.progressed_at = self.submitted_at + event.t
        waiter, self._new_event = self._new_event, None
        if waiter is not None:
            waiter.set()
        for listener in self._listeners:
            listener(event)

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``listener(event)`` for each event from now on, synchronously, in the task that emits it.

        Unlike :meth:`events`, nothing is buffered or dropped, and the
        listener sees the emitting task's context variables.  A listener must
        be quick and must not raise.  Returns the function that removes it.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    @property
    def events_emitted(self) -> int:
        """How many events the program has emitted (kept or not)."""
        return self._emitted

    async def events(self) -> AsyncIterator[Event]:
        """The program's events from the first one kept; ends after :class:`ProgramFinished`.

        The program keeps its last ``event_buffer`` events.  A reader that
        starts late or falls further behind than that gets one
        :class:`EventsDropped` saying how many it missed, then the oldest
        event kept; :class:`ProgramFinished`, the last event, is always kept.
        """
        seq = 0  # the number of the next event this reader reads
        while True:
            while seq < self._emitted:
                first = self._emitted - len(self._events)
                if seq < first:
                    missed, seq = first - seq, first
                    yield EventsDropped(program_id=self.id, t=self.elapsed(), missed=missed)
                    continue  # more may have been dropped while the reader held that one
                # Readers are near the newest events, and a deque indexes from its nearer end.
                event = self._events[seq - first]
                seq += 1
                yield event
                if isinstance(event, ProgramFinished):
                    return
            if self._new_event is None:
                self._new_event = anyio.Event()
            await self._new_event.wait()

    def __repr__(self) -> str:
        return f"<Program {self.id} {self.workflow} {self.state.value}>"

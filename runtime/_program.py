"""Programs: one run of a workflow, with the DAG of work discovered so far.

A program is what the runtime schedules: it has an id, a deadline, a user
priority, a state, and a growing DAG of nodes (steps, agents, LLM calls, tool
calls).  ``parent`` links say which node a node ran inside; ``after`` links
say which sibling nodes had to finish before it started (a data dependency
the runtime observed: sequential awaits create one, ``ctx.gather`` fans out).
"""

from __future__ import annotations

import enum
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from workflows import Usage

from ._clock import now
from ._events import Event, ProgramFinished

__all__ = ["Node", "NodeKind", "Program", "ProgramState"]


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
    """One unit of work in a program's DAG; times are seconds since submission."""

    id: str
    kind: NodeKind
    name: str
    parent: str | None
    after: tuple[str, ...]
    started_s: float
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
    ) -> None:
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
        self._events: list[Event] = []
        # Created by a reader about to wait, set and dropped by the next emit:
        # most programs are never followed, and an event per emit showed in
        # replay profiles.
        self._new_event: anyio.Event | None = None

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

    def add_node(self, kind: NodeKind, name: str, *, parent: str | None, after: tuple[str, ...]) -> Node:
        node = Node(f"{kind.value}-{next(self._ids)}", kind, name, parent, after, self.elapsed())
        self.nodes[node.id] = node
        return node

    def finish_node(self, node: Node, *, ok: bool, error: str | None = None) -> None:
        node.finished_s = self.elapsed()
        node.ok = ok
        node.error = error

    def children(self, node_id: str | None) -> list[Node]:
        return [n for n in self.nodes.values() if n.parent == node_id]

    def edges(self) -> list[tuple[str, str]]:
        """Dependency edges ``(before, after)`` between nodes."""
        return [(dep, n.id) for n in self.nodes.values() for dep in n.after]

    # -- events --------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._events.append(event)
        waiter, self._new_event = self._new_event, None
        if waiter is not None:
            waiter.set()

    async def events(self) -> AsyncIterator[Event]:
        """Every event from the first one; ends after :class:`ProgramFinished`."""
        index = 0
        while True:
            while index < len(self._events):
                event = self._events[index]
                index += 1
                yield event
                if isinstance(event, ProgramFinished):
                    return
            if self._new_event is None:
                self._new_event = anyio.Event()
            await self._new_event.wait()

    def __repr__(self) -> str:
        return f"<Program {self.id} {self.workflow} {self.state.value}>"

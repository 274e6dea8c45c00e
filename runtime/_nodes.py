"""Opening a DAG node: the node, its span, its start and finish events, as one act.

Every piece of work a context starts (a step, an LLM call, a tool call, an
agent loop) is a node of the program's DAG.  :func:`open_node` enters its
span, opens it with ``after`` edges to the siblings that finished since the
last node opened (a :class:`DagCursor` per context tracks them), emits its
start event, and on the way out closes the node as succeeded or failed and
emits its finish event, however the block ends.  :func:`start_node` is the
same without a block, for work its caller ends later (a tool that runs
elsewhere).

The cursor also gives each node its *step key*, the identity the journal
files it under: the parent's key, then for each enclosing ``ctx.gather`` of
this context ``g<gather>.<branch>-``, then the node's ordinal among the
nodes opened before it on that path.  A branch of a gather counts its own
ordinals, so the keys do not depend on the order in which concurrent
branches happen to run; code within one branch runs in order, so its
ordinals are the same on every run.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import telemetry

from ._events import Event
from ._program import Node, NodeKind, Program

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["DagCursor", "NodeScope", "open_node", "start_node"]


#: A path of gather branches: ``((gather, branch), ...)``, outermost first.
Branch = tuple[tuple[int, int], ...]

#: The gather branch the current task runs in, and the cursor it belongs to
#: (a task spawned by a gather of one context also runs the nodes of the
#: contexts nested in it, whose keys start afresh under their own node).
_BRANCH: contextvars.ContextVar[tuple[DagCursor | None, Branch]] = contextvars.ContextVar(
    "agentrt_gather_branch", default=(None, ())
)


class DagCursor:
    """Where a context adds nodes: under ``parent``, after the siblings it saw finish, keyed under ``prefix``."""

    __slots__ = ("_after", "_finished_since_open", "_gathers", "_ordinals", "parent", "prefix", "program")

    def __init__(self, program: Program, parent: Node | None, prefix: str = "") -> None:
        self.program = program
        self.parent = parent
        self.prefix = prefix
        self._finished_since_open: list[str] = []
        self._after: tuple[str, ...] = ()
        self._ordinals: dict[Branch, int] = {}
        self._gathers: dict[Branch, int] = {}

    def _branch(self) -> Branch:
        owner, branch = _BRANCH.get()
        return branch if owner is self else ()

    def fork(self) -> tuple[Branch, int]:
        """A new gather on the current branch: the branch and the gather's number on it."""
        branch = self._branch()
        number = self._gathers.get(branch, 0)
        self._gathers[branch] = number + 1
        return branch, number

    def enter_branch(self, branch: Branch, gather: int, index: int) -> None:
        """Run the rest of the current task as branch ``index`` of gather ``gather`` (from :meth:`fork`)."""
        _BRANCH.set((self, (*branch, (gather, index))))

    def open(self, kind: NodeKind, name: str) -> Node:
        # Nodes opened together (ctx.gather) share the same `after`: the
        # siblings that had finished before the first of them opened.
        if self._finished_since_open:
            self._after = tuple(self._finished_since_open)
            self._finished_since_open.clear()
        parent = self.parent.id if self.parent is not None else None
        branch = self._branch()
        ordinal = self._ordinals.get(branch, 0)
        self._ordinals[branch] = ordinal + 1
        key = self.prefix + "".join(f"g{g}.{i}-" for g, i in branch) + str(ordinal)
        return self.program.add_node(kind, name, parent=parent, after=self._after, key=key)

    def close(self, node: Node, *, ok: bool, error: str | None) -> None:
        self.program.finish_node(node, ok=ok, error=error)
        self._finished_since_open.append(node.id)


class NodeScope:
    """An open node and its span: :meth:`fail` marks it failed, :meth:`close` ends it (:func:`open_node` on exit)."""

    __slots__ = ("_cursor", "_finished", "closed", "error", "node", "span")

    def __init__(
        self, cursor: DagCursor, node: Node, span: Span, finished: Callable[[NodeScope], Event] | None
    ) -> None:
        self._cursor = cursor
        self._finished = finished
        self.node = node
        self.span = span
        self.error: str | None = None
        #: Whether :meth:`close` has run.
        self.closed = False

    def fail(self, error: str) -> None:
        """Close the node as failed with ``error`` even if the block completes."""
        self.error = error

    @property
    def ok(self) -> bool:
        return self.error is None

    def close(self) -> None:
        """Close the node (succeeded unless :meth:`fail` was called), emit its finish event; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self._cursor.close(self.node, ok=self.error is None, error=self.error)
        if self._finished is not None:
            self._cursor.program.emit(self._finished(self))


def start_node(
    cursor: DagCursor,
    kind: NodeKind,
    name: str,
    *,
    span: Span = telemetry.INVALID_SPAN,
    started: Callable[[Node], Event] | None = None,
    finished: Callable[[NodeScope], Event] | None = None,
) -> NodeScope:
    """Open a ``kind`` node called ``name`` and emit ``started(node)``; the caller ends it with :meth:`NodeScope.close`.

    For work that outlives a block (a tool that runs elsewhere, finished
    when its executor answers); :func:`open_node` is the block form.
    ``span`` is the span the node's work runs in (none by default).
    """
    scope = NodeScope(cursor, cursor.open(kind, name), span, finished)
    if started is not None:
        cursor.program.emit(started(scope.node))
    return scope


@contextlib.contextmanager
def open_node(
    cursor: DagCursor,
    kind: NodeKind,
    name: str,
    *,
    span: AbstractContextManager[Span] | None = None,
    started: Callable[[Node], Event] | None = None,
    finished: Callable[[NodeScope], Event] | None = None,
    failure: str,
) -> Iterator[NodeScope]:
    """Open a ``kind`` node called ``name`` for the ``with`` block, with its span and events.

    ``span`` is entered, then the node opens (none: no span of its own);
    ``started(node)`` is emitted once it is open; ``finished(scope)`` after the
    node is closed, whatever happened.  A block left by an exception or by
    cancellation, without a :meth:`NodeScope.fail` of its own, closes the node
    with ``failure`` as its error.
    """
    with span if span is not None else contextlib.nullcontext(telemetry.INVALID_SPAN) as current:
        scope = start_node(cursor, kind, name, span=current, started=started, finished=finished)
        completed = False
        try:
            yield scope
            completed = True
        finally:
            if not completed and scope.error is None:
                scope.error = failure
            scope.close()

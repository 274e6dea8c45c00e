"""A tool call as the runtime tracks it: a node, its events, the policy's notices; started and ended apart.

:class:`RuntimeToolRun` is the one routine for every tool call of a
program: ``ctx.call_tool`` runs the tool itself between :meth:`announce`
and :meth:`finish`; ``ctx.start_tool`` hands the run to whoever executes
the tool elsewhere (the gateway's client), who ends it later.  Opening it
counts the call, opens its ``tool`` node under the context's cursor and
emits :class:`~runtime.ToolCallStarted`; :meth:`announce` tells the
policy (:class:`~runtime.ToolStarted`: a pinning policy keeps the
program's KV cache for the tool's predicted time); ending it tells the
policy (:class:`~runtime.ToolFinished`, with the tool's wall time), closes
the node and emits :class:`~runtime.ToolCallFinished`.  A call replayed
from the journal is opened and ended but never announced: the policy hears
of neither end.
"""

from __future__ import annotations

from toolbridge import ErrorKind
from workflows import ToolCall, ToolMessage, ToolRun

from ._clock import now
from ._dispatch import Dispatcher
from ._events import ToolCallFinished, ToolCallStarted
from ._nodes import DagCursor, NodeScope, start_node
from ._program import Node, NodeKind

__all__ = ["RuntimeToolRun"]


class RuntimeToolRun(ToolRun):
    """One tool call of a program, from its start to its end (see the module docstring).

    ``node`` is its ``tool`` node (its ``attributes`` are the caller's to
    annotate); ``started_at`` is when it started, on the runtime's clock
    (seconds).
    """

    def __init__(self, dispatcher: Dispatcher, cursor: DagCursor, call: ToolCall) -> None:
        self._dispatcher = dispatcher
        self._program = program = cursor.program
        self._call = call
        self._announced = False
        self._ended = False
        self._error_kind: str | None = None
        self.started_at = now()
        program.tool_calls += 1
        self._scope = start_node(cursor, NodeKind.TOOL, call.name, started=self._started, finished=self._finished)

    @property
    def call(self) -> ToolCall:
        return self._call

    @property
    def node(self) -> Node:
        return self._scope.node

    @property
    def ended(self) -> bool:
        return self._ended

    async def announce(self) -> None:
        """Tell the policy that the tool runs now; its end will be told too."""
        self._announced = True
        await self._dispatcher.tool_started(self._program, self._scope.node, self._call)

    async def finish(self, message: ToolMessage | None = None, *, wall_s: float | None = None) -> None:
        if message is None:
            await self._end(None, None, wall_s)
        else:
            await self._end(None if message.ok else message.content, message.error_kind, wall_s)

    async def cancel(self, reason: str = ErrorKind.CANCELLED) -> None:
        await self._end(reason, ErrorKind.CANCELLED, None)

    async def _end(self, error: str | None, error_kind: str | None, wall_s: float | None) -> None:
        if self._ended:
            return
        self._ended = True
        scope = self._scope
        if error is not None:
            scope.fail(error)
        self._error_kind = error_kind
        if self._announced:
            # The dispatcher shields it: the policy hears of the end of every tool it heard start.
            await self._dispatcher.tool_finished(
                self._program,
                scope.node,
                self._call,
                ok=error is None,
                wall_s=now() - self.started_at if wall_s is None else wall_s,
                error_kind=error_kind,
            )
        scope.close()

    def _started(self, node: Node) -> ToolCallStarted:
        program, call = self._program, self._call
        return ToolCallStarted(
            program_id=program.id,
            t=program.elapsed(),
            node_id=node.id,
            name=call.name,
            call_id=call.id,
            arguments=call.arguments,
        )

    def _finished(self, scope: NodeScope) -> ToolCallFinished:
        program, call = self._program, self._call
        return ToolCallFinished(
            program_id=program.id,
            t=program.elapsed(),
            node_id=scope.node.id,
            name=call.name,
            call_id=call.id,
            ok=scope.ok,
            duration_s=scope.node.duration_s or 0.0,
            error_kind=self._error_kind,
        )

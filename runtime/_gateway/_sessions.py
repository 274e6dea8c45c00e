"""Gateway sessions: a program of the runtime whose LLM calls arrive as HTTP requests.

A client's requests that name one session (see :mod:`._session_keys`) are
turns of one :class:`GatewaySession`, which runs as an ordinary program of
the :class:`~runtime.Runtime` (workflow ``gateway``): its calls go through
the same dispatcher, policy, pins, urgency and traces as a library
program's.  The program's task receives each turn and runs it in a task of
its own (turns of one session may overlap: a client may fan out), under the
request's span when the request carried a ``traceparent``.

Between turns the client runs its tools.  The session tells the runtime
through ``ctx.start_tool``, the routine of a library program's
``ctx.call_tool``: the tool calls of a reply start client-side tool nodes
(:class:`~runtime.ToolStarted`, so the pin is kept for that tool's
predicted time), and the next request's ``tool`` messages answering them
finish them (:class:`~runtime.ToolFinished`, with the wall time the client
took).  ``expected_tool`` does the same for a reply the gateway cannot
parse (raw completions).  A streaming turn's text reaches its request
through the ``on_delta`` of its own LLM call.

A session ends after a turn marked last, when it has been idle for longer
than it has reason to wait, or when a client disconnects mid-request (the
program ends, which releases its pin); the next request naming it starts a
new program.  Clients of agent frameworks never mark a last turn, so the
idle timeout follows what the session expects (:func:`idle_timeout_s`):
with the client's tools running, a multiple of their 95th-percentile
duration as seen in this gateway; after an answer, a multiple of the
longest pause the client has taken; always between ``min_idle_timeout_s``
and ``idle_timeout_s``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import telemetry
from toolbridge import DurationPredictor
from workflows import Context, ReplyDelta, ToolCall, Usage, Workflow, workflow

from .._clock import now
from .._context import RuntimeContext
from .._errors import ProgramIdInUseError, RuntimeStateError
from .._handle import ProgramHandle
from .._tool_run import RuntimeToolRun
from ._session_keys import SessionRef
from ._tenants import ANONYMOUS, Tenant

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from .._runtime import Runtime

__all__ = [
    "DEFAULT_MIN_IDLE_TIMEOUT_S",
    "IDLE_GAP_FACTOR",
    "GatewaySession",
    "SessionTable",
    "Turn",
    "TurnCancelled",
    "TurnWork",
    "idle_timeout_s",
]

logger = logging.getLogger("runtime.gateway")

#: The shortest idle timeout a session gets, seconds.
DEFAULT_MIN_IDLE_TIMEOUT_S = 30.0
#: A session waits this many times the gap it expects before it ends.
IDLE_GAP_FACTOR = 4.0
#: The quantile of a client tool's observed durations a session expects it to take.
_TOOL_QUANTILE = 0.95


def idle_timeout_s(
    pending_tools: Iterable[str],
    durations: DurationPredictor,
    longest_gap_s: float | None,
    *,
    floor_s: float,
    cap_s: float,
) -> float:
    """How long an idle session waits for its next request before it ends.

    With client tools running (``pending_tools``), :data:`IDLE_GAP_FACTOR`
    times the longest 95th-percentile duration of theirs seen; a tool never
    seen waits ``cap_s``.  After an answer, the factor times the longest
    gap the client has left between a reply and its next request
    (``longest_gap_s``; none yet: ``floor_s``).  Always within
    [``floor_s``, ``cap_s``].
    """
    floor_s = min(floor_s, cap_s)
    tools = list(pending_tools)
    if tools:
        if any(durations.count(tool) == 0 for tool in tools):
            return cap_s  # the pooled durations of other tools say nothing of a build or a human
        expected = max(durations.quantile(tool, _TOOL_QUANTILE) or 0.0 for tool in tools)
    else:
        expected = longest_gap_s or 0.0
    return min(cap_s, max(floor_s, IDLE_GAP_FACTOR * expected))


#: A turn's work: given the program's context and the turn's reply sink (None: not streamed), its outcome.
TurnWork = Callable[[RuntimeContext, Callable[[ReplyDelta], None] | None], Awaitable[Any]]


class TurnCancelled(Exception):
    """The turn did not run to its end: its client left, or the gateway is shutting down."""


@dataclass(eq=False)
class Turn:
    """One request's LLM call, run by its session's program.

    ``work`` gets the program's context and :attr:`on_delta` and returns the
    turn's outcome; ``answers`` are the tool-call ids the request's ``tool``
    messages answer; ``on_delta`` receives the reply as it streams.
    """

    work: TurnWork
    answers: frozenset[str] = frozenset()
    expected_tool: str | None = None
    last: bool = False
    span: Span | None = None
    on_delta: Callable[[ReplyDelta], None] | None = None
    #: Called once the turn has ended, before :attr:`done` is set (a streaming request's end of text).
    tokens_done: Callable[[], None] | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: BaseException | None = None
    #: The tool calls the reply made, as (id, name, arguments): they start client-side tool nodes.
    tool_calls: tuple[ToolCall, ...] = ()
    _scope: anyio.CancelScope | None = None
    _cancelled: bool = False

    def cancel(self) -> None:
        """Stop the turn (its engine request is aborted); it ends with :class:`TurnCancelled`."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def outcome(self) -> Any:
        """Wait for the turn; its result, or its error raised."""
        await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class GatewaySession:
    """The turns of one session, served by its program (see the module docstring)."""

    def __init__(
        self,
        program_id: str,
        tenant: Tenant,
        key: str | None,
        *,
        idle_timeout_s: float,
        min_idle_timeout_s: float = DEFAULT_MIN_IDLE_TIMEOUT_S,
        durations: DurationPredictor | None = None,
    ) -> None:
        self.program_id = program_id
        self.tenant = tenant
        self.key = key
        self.idle_timeout_s = idle_timeout_s
        self.min_idle_timeout_s = min_idle_timeout_s
        #: The client tools' durations seen (shared by the sessions of one gateway).
        self.durations = durations if durations is not None else DurationPredictor()
        #: The longest gap the client left between a reply and its next request, seconds.
        self.longest_gap_s: float | None = None
        self._idle_since: float | None = None
        #: The tokens of the program's calls already charged to its tenant.
        self.billed = Usage()
        self.handle: ProgramHandle[Any] | None = None
        self.end_reason: str | None = None
        self._send: MemoryObjectSendStream[Turn]
        self._receive: MemoryObjectReceiveStream[Turn]
        self._send, self._receive = anyio.create_memory_object_stream[Turn](math.inf)
        self._in_flight = 0
        self._closing = False
        self._wait_scope: anyio.CancelScope | None = None
        # The client tools running: by call id, their run, name and start.
        self._tools: dict[str, tuple[RuntimeToolRun, str, float]] = {}
        self._hints = 0
        self._on_end: list[Callable[[GatewaySession], None]] = []
        #: Called after each turn ends (answered, failed or cancelled).
        self.on_turn_end: Callable[[GatewaySession], None] | None = None

    @property
    def accepting(self) -> bool:
        return not self._closing

    def submit(self, turn: Turn) -> None:
        """Queue ``turn`` for the program; a session that is closing refuses it (:class:`RuntimeStateError`)."""
        if self._closing:
            raise RuntimeStateError(f"gateway session {self.program_id} has ended")
        if self._idle_since is not None and self._in_flight == 0:
            gap = now() - self._idle_since
            self.longest_gap_s = gap if self.longest_gap_s is None else max(self.longest_gap_s, gap)
        self._idle_since = None
        self._in_flight += 1
        if turn.last:
            self._close("last turn")
        self._send.send_nowait(turn)
        self._wake()

    def client_gone(self) -> None:
        """A client disconnected mid-request: end the session once its turns in flight have ended."""
        self._close("client disconnected")

    def _close(self, reason: str) -> None:
        if not self._closing:
            self._closing = True
            self.end_reason = reason
        self._wake()

    def _wake(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # -- the program's body ----------------------------------------------------------

    async def serve(self, ctx: RuntimeContext) -> dict[str, Any]:
        """Run turns until the session ends (the body of its program)."""
        turns = 0
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        turn = self._receive.receive_nowait()
                    except anyio.WouldBlock:
                        pass
                    else:
                        turns += 1
                        tg.start_soon(self._run_turn, ctx, turn)
                        continue
                    if self._closing and self._in_flight == 0:
                        break
                    idle = self._in_flight == 0
                    deadline = now() + self.idle_timeout() if idle else math.inf
                    with anyio.CancelScope(deadline=deadline) as self._wait_scope:
                        await anyio.sleep_forever()
                    self._wait_scope = None
                    if idle and now() >= deadline and self._in_flight == 0:
                        self._close("idle")
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_tools()
            self._closing = True
            self._fail_queued()
            for callback in self._on_end:
                callback(self)
        return {"turns": turns, "ended": self.end_reason or "cancelled"}

    def idle_timeout(self) -> float:
        """Seconds the session waits, idle, for its next request (see :func:`idle_timeout_s`)."""
        return idle_timeout_s(
            (name for _, name, _ in self._tools.values()),
            self.durations,
            self.longest_gap_s,
            floor_s=self.min_idle_timeout_s,
            cap_s=self.idle_timeout_s,
        )

    async def _run_turn(self, ctx: RuntimeContext, turn: Turn) -> None:
        try:
            await self._finish_answered(turn.answers)
            with anyio.CancelScope() as scope:
                turn._scope = scope
                if turn._cancelled:
                    scope.cancel()
                with telemetry.use_span(turn.span) if turn.span is not None else contextlib.nullcontext():
                    turn.result = await turn.work(ctx, turn.on_delta)
            if scope.cancelled_caught:
                turn.error = TurnCancelled("the request was cancelled")
            else:
                turn.tool_calls = tuple(getattr(turn.result, "tool_calls", ()))
                await self._start_tools(ctx, turn)
        except Exception as exc:
            turn.error = exc
        except BaseException:
            turn.error = TurnCancelled("the gateway is shutting down")
            raise
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle_since = now()
            if self.on_turn_end is not None:
                self.on_turn_end(self)
            if turn.tokens_done is not None:
                turn.tokens_done()
            turn.done.set()
            self._wake()

    def _fail_queued(self) -> None:
        while True:
            try:
                turn = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self._in_flight -= 1
            turn.error = TurnCancelled(f"gateway session {self.program_id} ended ({self.end_reason or 'cancelled'})")
            if turn.tokens_done is not None:
                turn.tokens_done()
            turn.done.set()

    # -- client-side tools -----------------------------------------------------------

    async def _start_tools(self, ctx: RuntimeContext, turn: Turn) -> None:
        if turn.last:
            return  # the program ends with this turn: no next request will answer a tool
        calls = list(turn.tool_calls)
        if not calls and turn.expected_tool is not None:
            self._hints += 1
            calls = [ToolCall(f"hint-{self._hints}", turn.expected_tool, {})]
        for call in calls:
            run = await ctx.start_tool(call)
            run.node.attributes["client_side"] = True
            self._tools[call.id] = (run, call.name, now())

    async def _finish_answered(self, answers: Iterable[str]) -> None:
        # A hinted tool has no id the client could quote: the session's next request answers it.
        ids = [i for i in answers if i in self._tools] + [i for i in self._tools if i.startswith("hint-")]
        for call_id in ids:
            run, name, started = self._tools.pop(call_id)
            self.durations.observe(name, max(0.0, now() - started))
            await run.finish()  # its wall time: from the reply to this request

    async def _end_tools(self) -> None:
        tools, self._tools = self._tools, {}
        for run, _, _ in tools.values():
            await run.cancel("the session ended before the client answered")


def _gateway_workflow(live: Mapping[str, GatewaySession]) -> Workflow[[str], dict[str, Any]]:
    """The ``gateway`` workflow of one table, whose ``live`` sessions it serves (see :class:`SessionTable`)."""

    @workflow(name="gateway")
    async def gateway_session(ctx: Context, session: str) -> dict[str, Any]:
        """A program whose LLM calls arrive as requests to ``agentrt serve`` (see runtime/_gateway/_sessions.py)."""
        found = live.get(session)
        if found is None or not isinstance(ctx, RuntimeContext):
            raise RuntimeStateError(
                f"{session!r} is not a live gateway session: gateway programs are driven by their clients "
                "and cannot be resumed"
            )
        return await found.serve(ctx)

    return gateway_session


class SessionTable:
    """The live sessions of one gateway: join the one a request names, or start a program for it.

    Each session's program runs :attr:`workflow`, this table's own workflow
    called ``gateway``, whose body serves the live session of the table that
    its ``session`` input (the program id) names.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        idle_timeout_s: float,
        min_idle_timeout_s: float = DEFAULT_MIN_IDLE_TIMEOUT_S,
        on_started: Callable[[GatewaySession], None] | None = None,
        on_ended: Callable[[GatewaySession, str], None] | None = None,
        on_turn_end: Callable[[GatewaySession], None] | None = None,
    ) -> None:
        if not idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0 seconds, got {idle_timeout_s}")
        if not 0 < min_idle_timeout_s <= idle_timeout_s:
            raise ValueError(
                f"min_idle_timeout_s must be > 0 and at most idle_timeout_s ({idle_timeout_s}), "
                f"got {min_idle_timeout_s}"
            )
        self._runtime = runtime
        self._on_started = on_started
        self._on_ended = on_ended
        self._on_turn_end = on_turn_end
        self.idle_timeout_s = idle_timeout_s
        self.min_idle_timeout_s = min_idle_timeout_s
        #: The client tools' durations seen by this gateway's sessions.
        self.durations = DurationPredictor()
        self._by_key: dict[tuple[str, str], GatewaySession] = {}
        # The live sessions by program id: the workflow's body finds its session here.
        self._live: dict[str, GatewaySession] = {}
        self.started = 0
        self.ended: dict[str, int] = {}
        self.workflow = _gateway_workflow(self._live)

    def __len__(self) -> int:
        return len(self._by_key)

    def session_for(self, tenant: Tenant, ref: SessionRef) -> GatewaySession:
        """The accepting session ``ref`` names for ``tenant``, or a new one (a one-call one when it names none)."""
        if ref.key is not None:
            found = self._by_key.get((tenant.name, ref.key))
            if found is not None and found.accepting:
                return found
        return self._start(tenant, ref)

    def _program_id(self, tenant: Tenant, key: str | None) -> str:
        if key is None:
            return f"gw-{uuid.uuid4().hex[:12]}"
        # Tenants' session ids are theirs: two tenants' "s1" are two programs.
        base = key if tenant is ANONYMOUS else f"{tenant.name}:{key}"
        candidate, n = base, 1
        programs = self._runtime.programs
        while candidate in self._live or (candidate in programs and not programs[candidate].state.finished):
            n += 1  # the session's previous program is still ending
            candidate = f"{base}#{n}"
        return candidate

    def _start(self, tenant: Tenant, ref: SessionRef) -> GatewaySession:
        program_id = self._program_id(tenant, ref.key)
        session = GatewaySession(
            program_id,
            tenant,
            ref.key,
            idle_timeout_s=self.idle_timeout_s,
            min_idle_timeout_s=self.min_idle_timeout_s,
            durations=self.durations,
        )
        session.on_turn_end = self._on_turn_end
        self._live[program_id] = session
        session._on_end.append(self._ended)
        try:
            session.handle = self._runtime.start_program(
                self.workflow,
                {"session": program_id},
                program_id=program_id,
                deadline_s=ref.deadline_s,
                priority=ref.priority,
            )
        except (ProgramIdInUseError, RuntimeStateError):
            del self._live[program_id]
            raise
        if ref.key is not None:
            self._by_key[(tenant.name, ref.key)] = session
        self.started += 1
        if self._on_started is not None:
            self._on_started(session)
        return session

    def _ended(self, session: GatewaySession) -> None:
        self._live.pop(session.program_id, None)
        if session.key is not None and self._by_key.get((session.tenant.name, session.key)) is session:
            del self._by_key[(session.tenant.name, session.key)]
        reason = session.end_reason or "cancelled"
        self.ended[reason] = self.ended.get(reason, 0) + 1
        if self._on_ended is not None:
            self._on_ended(session, reason)

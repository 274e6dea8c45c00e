"""``Runtime``: runs programs over a pool of engines.

Each submitted workflow becomes a :class:`Program` running as a task in the
runtime's task group, with a :class:`~runtime._context.RuntimeContext` as its
door to the runtime.  The runtime owns the lifecycle (engines up and down,
program tasks, their start and finish); every LLM call and the policy's
events go through its :class:`~runtime._dispatch.Dispatcher`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import anyio

import telemetry
from workflows import Workflow

from ._clock import now
from ._context import RuntimeContext
from ._dispatch import DEFAULT_LLM_RETRIES, Dispatcher
from ._engines import Engine, EngineStats
from ._errors import JournalError, ProgramIdInUseError, RuntimeStateError
from ._events import ProgramFinished, ProgramStarted
from ._handle import ProgramControl, ProgramHandle
from ._health import HealthMonitor
from ._journal import (
    Journal,
    JournalState,
    ProgramJournal,
    check_owner_gone,
    find_program,
    journal_from,
    new_program,
    record_program_end,
    resume_program,
)
from ._policies import Policy, get_policy
from ._program import DEFAULT_EVENT_BUFFER, Program, ProgramState
from ._signals import SignalGuard, guard_signals
from ._slots import ProgramSlots
from ._stalls import DEFAULT_STALL_AFTER_S, StallWatcher
from ._tracing import end_program, program_span
from ._workflow_ref import load_workflow, workflow_ref

__all__ = ["DEFAULT_MODEL", "Runtime", "default_model"]

logger = logging.getLogger("runtime")

P = ParamSpec("P")
R = TypeVar("R")


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET = _Unset.UNSET

#: The model ``Runtime.local()`` serves when none is named and ``AGENTRT_MODEL`` is unset.
DEFAULT_MODEL = "smollm2-135m"


def default_model() -> str:
    """``$AGENTRT_MODEL`` if set, else :data:`DEFAULT_MODEL`."""
    return os.environ.get("AGENTRT_MODEL") or DEFAULT_MODEL


class Runtime:
    """Runs workflows as programs on a pool of engines; an async context manager.

    ``engines`` are :class:`Engine` instances or URLs of vLLM OpenAI-compatible
    servers.  ``policy`` names the scheduling policy (see
    :func:`runtime.policy_names`).  ``programs`` maps ids to running and
    recently finished programs (the last ``keep_finished``).  Use ``async with`` (or :meth:`aclose`):
    leaving it cancels running programs and closes every engine.

    Faults (docs/faults.md): an LLM call whose engine dies or restarts goes
    to another engine, else waits with backoff for one to come back, for up
    to ``llm_retries`` rounds; ``llm_timeout_s`` (seconds, ``None``: none)
    bounds each call, queueing and retries included (``TimeoutError``).
    Calls override both with ``ctx.llm(retries=, timeout_s=)``.  Every
    ``health_interval_s`` seconds (``None``: never) each engine's health is
    checked, so a dead server leaves dispatch with no call in flight.

    Load (docs/load.md): at most ``max_programs`` programs run at once; a
    program submitted past it stays ``PENDING`` until one finishes, and
    pending programs start first come first served; ``await
    rt.wait_for_room()`` before a submit keeps a producer from piling them
    up.  The default, ``None``, is no bound: what a program costs is the
    engines' to meter (their queues and the policy's admission queue order
    every LLM call), and a bound the runtime guessed would idle them.  Each
    program keeps its last ``event_buffer`` events for ``handle.events()``.
    A runtime with calls in flight that makes no progress (no token, no
    finished LLM or tool call) for ``stall_after_s`` seconds (``None``: never
    checked) logs what it waits on (logger ``runtime.progress``) and emits
    :class:`ProgramStalled` to the programs waiting.

    Durability (docs/durability.md): with a ``journal`` (a SQLite path, a
    ``postgresql://`` DSN or a :class:`~runtime.Journal`), every step result,
    agent run, LLM reply and tool result is journaled before the workflow
    sees it, and :meth:`resume` finishes a program after a crash, a shutdown,
    a cancellation or a failure without redoing what the journal holds.

    Signals (docs/processes.md): entered in the main thread, with
    ``handle_signals``, SIGTERM and SIGINT cancel the task that entered the
    runtime, which then closes as on any cancellation, and the process exits
    with ``SystemExit(143)`` / ``SystemExit(130)`` once it has closed.

    Engines: the runtime starts the engines it is given (an engine already
    started is used as it is) and, leaving, closes them.  With
    ``close_engines=False`` it leaves the :class:`Engine` objects it was
    given running, for their owner to close (``async with engine:``), so
    that several runtimes may use one engine in turn (as aiohttp's
    ``connector_owner=False``); engines it made from URLs are its own and
    always closed.
    """

    def __init__(
        self,
        engines: Sequence[Engine | str],
        *,
        policy: str | Policy = "vllm",
        keep_finished: int = 1000,
        llm_retries: int = DEFAULT_LLM_RETRIES,
        llm_timeout_s: float | None = None,
        health_interval_s: float | None = 2.0,
        max_programs: int | None = None,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
        stall_after_s: float | None = DEFAULT_STALL_AFTER_S,
        journal: Journal | str | os.PathLike[str] | None = None,
        handle_signals: bool = True,
        close_engines: bool = True,
    ) -> None:
        if isinstance(engines, Engine | str) or not engines:
            raise ValueError("Runtime needs a non-empty list of engines (Engine objects or server URLs)")
        from ._engines import RemoteEngine

        self.engines: list[Engine] = [RemoteEngine(e) if isinstance(e, str) else e for e in engines]
        # The engines this runtime closes when it closes (see the class docstring).
        self._owned_engines = [
            engine
            for engine, given in zip(self.engines, engines, strict=True)
            if close_engines or isinstance(given, str)
        ]
        self.policy = get_policy(policy)
        self._dispatcher = Dispatcher(self.engines, self.policy, retries=llm_retries, timeout_s=llm_timeout_s)
        self._health = None if health_interval_s is None else HealthMonitor(self.engines, health_interval_s)
        self.programs: dict[str, Program] = {}
        self._slots = ProgramSlots(max_programs)
        if not isinstance(event_buffer, int) or isinstance(event_buffer, bool) or event_buffer < 1:
            raise ValueError(f"event_buffer must be an int >= 1 (events kept per program), got {event_buffer!r}")
        self._event_buffer = event_buffer
        self._stalls = None if stall_after_s is None else StallWatcher(self.programs.values, stall_after_s)
        # Finished programs stay inspectable in `programs` up to this many,
        # oldest dropped first, so a long-running service does not grow.
        self._keep_finished = keep_finished
        self._finished: collections.deque[str] = collections.deque()
        self._tg: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._closed = False
        #: The journal programs are recorded in (docs/durability.md); None: not journaled.
        self.journal: Journal | None = None if journal is None else journal_from(journal)
        # Whether aclose() is cancelling the programs (they are interrupted, not cancelled).
        self._closing = False
        self._handle_signals = handle_signals
        self._signal_guard: SignalGuard | None = None

    @classmethod
    def local(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        engines: int = 1,
        policy: str | Policy = "vllm",
        kv_cache_gib: int = 1,
        max_model_len: int | None = 4096,
        journal: Journal | str | os.PathLike[str] | None = None,
        **engine_options: Any,
    ) -> Runtime:
        """The embedded default: ``engines`` in-process vLLM engines serving ``model``.

        ``model`` is a name under the models directory (``smollm2-135m``,
        ``tiny``) or a path; by default ``$AGENTRT_MODEL``, else ``smollm2-135m``.  ``journal`` is as for
        :class:`Runtime`.  Other keyword arguments go to :class:`InProcessEngine`.
        """
        from ._engines import InProcessEngine

        if engines < 1:
            raise ValueError(f"engines must be >= 1, got {engines}")
        if model is None:
            model = default_model()
        pool: list[Engine] = [
            InProcessEngine(
                model, name=f"local-{i}", kv_cache_gib=kv_cache_gib, max_model_len=max_model_len, **engine_options
            )
            for i in range(engines)
        ]
        return cls(pool, policy=policy, journal=journal)

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeStateError("this Runtime was closed; create a new one")
        telemetry.ensure_configured()  # OTEL_EXPORTER_OTLP_ENDPOINT alone turns tracing on
        if self.journal is not None:
            await self.journal.open()  # before the engines: a journal that cannot open fails fast
        if self._handle_signals:
            self._signal_guard = guard_signals(on_orphaned=self.aclose)
        try:
            async with anyio.create_task_group() as starting:
                for engine in self.engines:
                    starting.start_soon(engine.start)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for engine in self._owned_engines:
                    await engine.aclose()
                if self.journal is not None:
                    await self.journal.aclose()
            self._close_signal_guard()  # SystemExit(130/143) when a signal stopped the start
            # Engines start concurrently; report the first failure as itself.
            if isinstance(exc, BaseExceptionGroup):
                failures = [e for e in exc.exceptions if isinstance(e, Exception)]
                if failures:
                    raise failures[0] from None
            raise
        try:
            self._dispatcher.start()  # the policy may refuse these engines
        except Exception:
            await self.aclose()
            raise
        # Programs run in a task group owned by a host task rather than by the
        # caller's task: `async with` may be entered and exited from different
        # tasks (pytest-asyncio fixtures, web-framework lifespans), which a
        # cancel scope entered directly here would not survive.
        ready = anyio.Event()
        self._host = asyncio.get_running_loop().create_task(self._host_programs(ready), name="agentrt programs")
        await ready.wait()
        if self._health is not None and self._tg is not None:  # beside the programs: aclose cancels it first
            self._tg.start_soon(self._health.run, name="agentrt health")
        if self._stalls is not None and self._tg is not None:
            self._tg.start_soon(self._stalls.run, name="agentrt stall watcher")
        return self

    async def _host_programs(self, ready: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            ready.set()
            await anyio.sleep_forever()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel running programs, then close the engines (those it owns: ``close_engines``); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        if self._signal_guard is not None:
            self._signal_guard.closing()  # a signal now would cut the close short: it only sets the exit status
        tg, self._tg = self._tg, None
        host, self._host = self._host, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
            if host is not None:
                with anyio.CancelScope(shield=True):
                    await host
        finally:
            self._dispatcher.close()
            with anyio.CancelScope(shield=True):
                for engine in self._owned_engines:
                    await engine.aclose()
                if self.journal is not None:
                    await self.journal.aclose()
            self._close_signal_guard()

    def _close_signal_guard(self) -> None:
        """Restore the signal handlers; after SIGTERM or SIGINT, raise ``SystemExit`` (143, 130): all is closed."""
        guard, self._signal_guard = self._signal_guard, None
        if guard is not None:
            guard.close()

    # -- programs --------------------------------------------------------------

    def submit(self, workflow: Workflow[P, R], /, *args: P.args, **inputs: P.kwargs) -> ProgramHandle[R]:
        """Start a program; inputs are validated now (``WorkflowInputError``), before anything runs."""
        self._check_can_start(workflow)
        values = workflow.validate_inputs(*args, **inputs)
        return self._start(
            workflow, values, program_id=None, deadline_s=workflow.deadline_s, priority=workflow.priority
        )

    def start_program(
        self,
        workflow: Workflow[..., R],
        inputs: Mapping[str, Any],
        *,
        program_id: str | None = None,
        deadline_s: float | _Unset | None = _UNSET,
        priority: int | None = None,
    ) -> ProgramHandle[R]:
        """The explicit form of :meth:`submit`: inputs by name, per-run program options.

        ``program_id`` names the program (default: a fresh ``prog-...`` id); no
        running program may have it, and a finished one that has it is
        forgotten.  ``deadline_s`` and ``priority`` override the
        workflow's for this run (``deadline_s=None``: no deadline).  Trace
        replay uses it to give each program its id, SLO and user priority.
        """
        self._check_can_start(workflow)
        if program_id is not None and program_id in self.programs and not self.programs[program_id].state.finished:
            raise ProgramIdInUseError(f"program id {program_id!r} is in use by a running program")
        return self._start(
            workflow,
            workflow.validate_inputs(**inputs),
            program_id=program_id,
            deadline_s=workflow.deadline_s if isinstance(deadline_s, _Unset) else deadline_s,
            priority=workflow.priority if priority is None else priority,
        )

    def _check_can_start(self, workflow: object) -> None:
        if self._tg is None:
            raise RuntimeStateError("the runtime is not running: use `async with Runtime(...) as rt:`")
        if not isinstance(workflow, Workflow):
            raise TypeError(f"expected a function decorated with @workflow, got {workflow!r}")

    def _start(
        self,
        workflow: Workflow[..., R],
        values: dict[str, Any],
        *,
        program_id: str | None,
        deadline_s: float | None,
        priority: int,
        journal: ProgramJournal | None = None,
    ) -> ProgramHandle[R]:
        """Start a program on inputs already validated, with its options resolved (``journal``: a resumed one's)."""
        assert self._tg is not None
        program = Program(
            workflow.name,
            values,
            deadline_s=deadline_s,
            priority=priority,
            program_id=program_id,
            stage_plan=workflow.stages,
            event_buffer=self._event_buffer,
        )
        self._slots.submitted()
        if program.id in self.programs:
            self._finished.remove(program.id)
        self.programs[program.id] = program
        control = ProgramControl()
        handle: ProgramHandle[R] = ProgramHandle(program, control)
        self._tg.start_soon(self._run_program, workflow, program, control, journal, name=f"program {program.id}")
        return handle

    async def resume(self, program_id: str, *, workflow: Workflow[..., R] | None = None) -> ProgramHandle[R]:
        """Run a journaled program again: its journaled steps are replayed, not redone; the rest runs.

        The workflow function runs from the start on its journaled inputs;
        each step, agent run, LLM call and tool call it reaches that the
        journal holds returns its journaled result at once (announced by a
        :class:`~runtime.StepReplayed` event), so the program picks up where
        it stopped: after a crash, a shutdown, a cancellation or a failure.
        ``workflow`` defaults to the one the journal names (imported from
        its module or file).  Raises :class:`~runtime.ProgramNotFoundError`,
        :class:`~runtime.ProgramIdInUseError` if the program runs (here, or
        in a live process on this host), and the handle's result raises
        :class:`~runtime.JournalDivergenceError` if the code no longer makes
        the journaled steps.
        """
        if self.journal is None:
            raise RuntimeStateError("this Runtime has no journal: create it with Runtime(..., journal=PATH)")
        if self._tg is None:
            raise RuntimeStateError("the runtime is not running: use `async with Runtime(...) as rt:`")
        journal = self.journal
        record = await find_program(journal, program_id)
        running = self.programs.get(program_id)
        if running is not None and not running.state.finished:
            raise ProgramIdInUseError(f"program {program_id} is running in this runtime")
        check_owner_gone(record)
        if workflow is None:
            if record.workflow_ref is None:
                raise JournalError(
                    f"program {program_id}'s workflow {record.workflow!r} was defined where it cannot be imported "
                    "(inside a function); pass it: rt.resume(program_id, workflow=...)"
                )
            try:
                workflow = load_workflow(record.workflow_ref)
            except (LookupError, TypeError, ImportError) as exc:
                raise JournalError(
                    f"cannot load program {program_id}'s workflow from {record.workflow_ref}: {exc}; "
                    "pass it: rt.resume(program_id, workflow=...)"
                ) from exc
        self._check_can_start(workflow)
        if workflow.name != record.workflow:
            raise JournalError(f"program {program_id} ran workflow {record.workflow!r}, not {workflow.name!r}")
        inputs, program_journal = await resume_program(journal, record)
        return self._start(
            workflow,
            inputs,
            program_id=program_id,
            deadline_s=record.deadline_s,
            priority=record.priority,
            journal=program_journal,
        )

    async def wait_for_room(self) -> None:
        """Wait until a program submitted now would start at once (``max_programs`` not reached).

        Returns at once without ``max_programs``.  The backpressure of a
        producer: ``await rt.wait_for_room()`` then ``rt.submit(...)`` keeps
        at most ``max_programs`` programs in the runtime, none pending
        (several producers may still each take the last free slot).
        """
        await self._slots.wait_for_room()

    async def run(self, workflow: Workflow[P, R], /, *args: P.args, **inputs: P.kwargs) -> R:
        """Run a program to completion and return its result."""
        return await self.submit(workflow, *args, **inputs).result()

    @classmethod
    def run_sync(
        cls,
        workflow: Workflow[P, R],
        /,
        *args: P.args,
        **inputs: P.kwargs,
    ) -> R:
        """Run one program from plain (non-async) code on ``Runtime.local()``.

        Starts the embedded runtime, runs the workflow, shuts everything down.
        For another setup, ``anyio.run`` a function that uses ``async with``.
        """

        async def main() -> R:
            async with cls.local() as rt:
                return await rt.run(workflow, *args, **inputs)

        return anyio.run(main, backend="asyncio")

    async def _run_program(
        self, workflow: Workflow[..., Any], program: Program, control: ProgramControl, journal: ProgramJournal | None
    ) -> None:
        with program_span(program) as span:
            try:
                await self._run_program_body(workflow, program, control, journal)
            finally:
                end_program(span, program)

    async def _run_program_body(
        self, workflow: Workflow[..., Any], program: Program, control: ProgramControl, journal: ProgramJournal | None
    ) -> None:
        slot = False  # whether it holds one of the max_programs slots
        try:
            with anyio.CancelScope() as scope:
                control.bind(scope)
                try:
                    # Journaled before it waits for a slot: a pending program is not lost in a shutdown.
                    if journal is None and self.journal is not None:
                        journal = await new_program(
                            self.journal,
                            program.id,
                            workflow=workflow.name,
                            workflow_ref=workflow_ref(workflow),
                            inputs=program.inputs,
                            deadline_s=program.deadline_s,
                            priority=program.priority,
                        )
                except Exception as exc:
                    program.error = exc
                    program.state = ProgramState.FAILED
                    return
                await self._slots.acquire()  # PENDING until a slot frees, first come first served
                slot = True
                program.state = ProgramState.RUNNING
                program.emit(
                    ProgramStarted(
                        program_id=program.id,
                        t=program.elapsed(),
                        workflow=program.workflow,
                        resumed=journal is not None and journal.resumed,
                        run=journal.run if journal is not None else 1,
                    )
                )
                try:
                    program.result = await workflow.fn(
                        RuntimeContext(self._dispatcher, program, None, journal=journal), **program.inputs
                    )
                    program.state = ProgramState.SUCCEEDED
                except Exception as exc:
                    program.error = exc
                    program.state = ProgramState.FAILED
        finally:
            if slot:
                self._slots.release()
            self._slots.finished()
            if not program.state.finished:
                program.state = ProgramState.CANCELLED
            program.finished_at = now()
            if journal is not None:
                with anyio.CancelScope(shield=True):
                    state, error = self._journal_end(program, control)
                    await record_program_end(journal, state, error=error, result=program.result)
            program.emit(
                ProgramFinished(
                    program_id=program.id,
                    t=program.elapsed(),
                    state=program.state.value,
                    error=_error_text(program.error),
                )
            )
            # The result is ready before the policy's cleanup (releasing a pin is a round trip to the
            # engine): waiters resume once this task next yields, and the policy has dropped the
            # program's state by then (its hook does that before its first await).
            control.finish()
            await self._dispatcher.program_finished(program)
            self._finished.append(program.id)
            while len(self._finished) > self._keep_finished:
                self.programs.pop(self._finished.popleft(), None)

    # -- the journal -------------------------------------------------------------

    def _journal_end(self, program: Program, control: ProgramControl) -> tuple[JournalState, str | None]:
        """How the journal files the end of ``program``, and its error: a shutdown interrupts it."""
        error = _error_text(program.error)
        if program.state is ProgramState.SUCCEEDED:
            return JournalState.SUCCEEDED, error
        if program.state is ProgramState.FAILED:
            return JournalState.FAILED, error
        if self._closing and not control.cancel_requested:
            return JournalState.INTERRUPTED, "the runtime shut down while the program ran"
        return JournalState.CANCELLED, error

    # -- engines ---------------------------------------------------------------

    async def stats(self) -> list[EngineStats]:
        """A statistics snapshot of every engine."""
        return [await e.stats() for e in self.engines]

    def __repr__(self) -> str:
        return f"<Runtime engines={[e.name for e in self.engines]} policy={self.policy.name}>"


def _error_text(error: BaseException | None) -> str | None:
    return f"{type(error).__name__}: {error}" if error is not None else None

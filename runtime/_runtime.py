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
import os
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import anyio

import telemetry
from workflows import Workflow

from ._clock import now
from ._context import RuntimeContext
from ._dispatch import Dispatcher
from ._engines._base import Engine, EngineStats
from ._errors import ProgramIdInUseError, RuntimeStateError
from ._events import ProgramFinished, ProgramStarted
from ._handle import ProgramHandle
from ._policies import Policy, get_policy
from ._program import Program, ProgramState
from ._tracing import end_program, program_span

__all__ = ["DEFAULT_MODEL", "Runtime", "default_model"]

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
    """

    def __init__(
        self, engines: Sequence[Engine | str], *, policy: str | Policy = "vllm", keep_finished: int = 1000
    ) -> None:
        if isinstance(engines, Engine | str) or not engines:
            raise ValueError("Runtime needs a non-empty list of engines (Engine objects or server URLs)")
        from ._engines._remote import RemoteEngine

        self.engines: list[Engine] = [RemoteEngine(e) if isinstance(e, str) else e for e in engines]
        self.policy = get_policy(policy)
        self._dispatcher = Dispatcher(self.engines, self.policy)
        self.programs: dict[str, Program] = {}
        # Finished programs stay inspectable in `programs` up to this many,
        # oldest dropped first, so a long-running service does not grow.
        self._keep_finished = keep_finished
        self._finished: collections.deque[str] = collections.deque()
        self._tg: anyio.abc.TaskGroup | None = None
        self._host: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def local(
        cls,
        model: str | os.PathLike[str] | None = None,
        *,
        engines: int = 1,
        policy: str | Policy = "vllm",
        kv_cache_gib: int = 1,
        max_model_len: int | None = 4096,
        **engine_options: Any,
    ) -> Runtime:
        """The embedded default: ``engines`` in-process vLLM engines serving ``model``.

        ``model`` is a name under the models directory (``smollm2-135m``,
        ``tiny``) or a path; by default ``$AGENTRT_MODEL``, else ``smollm2-135m``.  Other keyword arguments go to
        :class:`InProcessEngine`.
        """
        from ._engines._inprocess import InProcessEngine

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
        return cls(pool, policy=policy)

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._closed:
            raise RuntimeStateError("this Runtime was closed; create a new one")
        telemetry.ensure_configured()  # OTEL_EXPORTER_OTLP_ENDPOINT alone turns tracing on
        try:
            async with anyio.create_task_group() as starting:
                for engine in self.engines:
                    starting.start_soon(engine.start)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                for engine in self.engines:
                    await engine.aclose()
            # Engines start concurrently; report the first failure as itself.
            if isinstance(exc, BaseExceptionGroup):
                failures = [e for e in exc.exceptions if isinstance(e, Exception)]
                if failures:
                    raise failures[0] from None
            raise
        self._dispatcher.start()
        # Programs run in a task group owned by a host task rather than by the
        # caller's task: `async with` may be entered and exited from different
        # tasks (pytest-asyncio fixtures, web-framework lifespans), which a
        # cancel scope entered directly here would not survive.
        ready = anyio.Event()
        self._host = asyncio.get_running_loop().create_task(self._host_programs(ready), name="agentrt programs")
        await ready.wait()
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
        """Cancel running programs, then close every engine; idempotent."""
        if self._closed:
            return
        self._closed = True
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
                for engine in self.engines:
                    await engine.aclose()

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
    ) -> ProgramHandle[R]:
        """Start a program on inputs already validated, with its options resolved."""
        assert self._tg is not None
        program = Program(
            workflow.name,
            values,
            deadline_s=deadline_s,
            priority=priority,
            program_id=program_id,
            stage_plan=workflow.stages,
        )
        if program.id in self.programs:
            self._finished.remove(program.id)
        self.programs[program.id] = program
        handle: ProgramHandle[R] = ProgramHandle(program)
        self._tg.start_soon(self._run_program, workflow, handle, name=f"program {program.id}")
        return handle

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

    async def _run_program(self, workflow: Workflow[..., Any], handle: ProgramHandle[Any]) -> None:
        program = handle.program
        with program_span(program) as span:
            try:
                await self._run_program_body(workflow, handle)
            finally:
                end_program(span, program)

    async def _run_program_body(self, workflow: Workflow[..., Any], handle: ProgramHandle[Any]) -> None:
        program = handle.program
        try:
            with anyio.CancelScope() as scope:
                handle._scope = scope
                if handle._cancel_requested:
                    scope.cancel()
                program.state = ProgramState.RUNNING
                program.emit(ProgramStarted(program_id=program.id, t=program.elapsed(), workflow=program.workflow))
                try:
                    program.result = await workflow.fn(
                        RuntimeContext(self._dispatcher, program, None), **program.inputs
                    )
                    program.state = ProgramState.SUCCEEDED
                except Exception as exc:
                    program.error = exc
                    program.state = ProgramState.FAILED
        finally:
            if not program.state.finished:
                program.state = ProgramState.CANCELLED
            program.finished_at = now()
            error = program.error
            program.emit(
                ProgramFinished(
                    program_id=program.id,
                    t=program.elapsed(),
                    state=program.state.value,
                    error=f"{type(error).__name__}: {error}" if error is not None else None,
                )
            )
            # The result is ready before the policy's cleanup (releasing a pin is a round trip to the
            # engine): waiters resume once this task next yields, and the policy has dropped the
            # program's state by then (its hook does that before its first await).
            handle._done.set()
            await self._dispatcher.program_finished(program)
            self._finished.append(program.id)
            while len(self._finished) > self._keep_finished:
                self.programs.pop(self._finished.popleft(), None)

    # -- engines ---------------------------------------------------------------

    async def stats(self) -> list[EngineStats]:
        """A statistics snapshot of every engine."""
        return [await e.stats() for e in self.engines]

    def __repr__(self) -> str:
        return f"<Runtime engines={[e.name for e in self.engines]} policy={self.policy.name}>"

"""``ProgramHandle``: what ``Runtime.submit`` returns; ``ProgramControl``: the runtime's side of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any, Generic, TypeVar

import anyio

from ._errors import ProgramCancelledError
from ._events import Event
from ._program import Program, ProgramState

__all__ = ["ProgramControl", "ProgramHandle"]

R = TypeVar("R")


class ProgramControl:
    """The runtime's side of one program's handle: its cancel scope, whether a cancel was asked, its end.

    The handle asks (:meth:`cancel`, :attr:`done`); the runtime answers: it
    binds the program body's cancel scope (:meth:`bind`), reads
    :attr:`cancel_requested` to tell a cancel from a shutdown, and sets
    :meth:`finish` once the result is ready.
    """

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.cancel_requested = False
        self._scope: anyio.CancelScope | None = None

    def bind(self, scope: anyio.CancelScope) -> None:
        """The program body runs in ``scope`` from now on; a cancel asked before it started cancels it now."""
        self._scope = scope
        if self.cancel_requested:
            scope.cancel()

    def cancel(self) -> None:
        self.cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def finish(self) -> None:
        """The program has ended and its result (or error, or cancellation) is set: waiters resume."""
        self.done.set()


class ProgramHandle(Generic[R]):
    """A submitted program: await it for the result, stream its events, or cancel it.

    ``await handle`` (or ``await handle.result()``) returns the workflow's
    return value, raises the exception the workflow raised, or raises
    :class:`ProgramCancelledError` if it was cancelled.  A program past the
    runtime's ``max_programs`` stays ``PENDING`` until a slot frees; it can
    be cancelled while it waits.
    """

    def __init__(self, program: Program, control: ProgramControl) -> None:
        self.program = program
        self._control = control

    @property
    def id(self) -> str:
        return self.program.id

    @property
    def state(self) -> ProgramState:
        return self.program.state

    @property
    def done(self) -> bool:
        return self._control.done.is_set()

    async def wait(self) -> None:
        """Wait until the program has finished, however it finished."""
        await self._control.done.wait()

    async def result(self) -> R:
        await self._control.done.wait()
        program = self.program
        if program.state is ProgramState.CANCELLED:
            raise ProgramCancelledError(f"program {program.id} ({program.workflow}) was cancelled")
        if program.error is not None:
            raise program.error
        result: R = program.result
        return result

    def __await__(self) -> Generator[Any, None, R]:
        return self.result().__await__()

    def events(self) -> AsyncIterator[Event]:
        """The program's events from its start; ends when the program finishes.

        The program keeps its last ``Runtime(event_buffer=)`` events: a reader
        that falls further behind (or starts late) gets one
        :class:`~runtime.EventsDropped` with the number it missed, then goes
        on; :class:`~runtime.ProgramFinished` always arrives.
        """
        return self.program.events()

    def cancel(self) -> None:
        """Cancel the program: running LLM calls are aborted in their engines."""
        self._control.cancel()

    def __repr__(self) -> str:
        return f"<ProgramHandle {self.program.id} {self.program.workflow} {self.program.state.value}>"

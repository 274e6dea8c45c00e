"""``ProgramHandle``: what ``Runtime.submit`` returns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from typing import Any, Generic, TypeVar

import anyio

from ._errors import ProgramCancelledError
from ._events import Event
from ._program import Program, ProgramState

__all__ = ["ProgramHandle"]

R = TypeVar("R")


class ProgramHandle(Generic[R]):
    """A submitted program: await it for the result, stream its events, or cancel it.

    ``await handle`` (or ``await handle.result()``) returns the workflow's
    return value, raises the exception the workflow raised, or raises
    :class:`ProgramCancelledError` if it was cancelled.  A program past the
    runtime's ``max_programs`` stays ``PENDING`` until a slot frees; it can
    be cancelled while it waits.
    """

    def __init__(self, program: Program) -> None:
        self.program = program
        self._done = anyio.Event()
        self._scope: anyio.CancelScope | None = None
        self._cancel_requested = False

    @property
    def id(self) -> str:
        return self.program.id

    @property
    def state(self) -> ProgramState:
        return self.program.state

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def wait(self) -> None:
        """Wait until the program has finished, however it finished."""
        await self._done.wait()

    async def result(self) -> R:
        await self._done.wait()
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
        self._cancel_requested = True
        if self._scope is not None:
            self._scope.cancel()

    def __repr__(self) -> str:
        return f"<ProgramHandle {self.program.id} {self.program.workflow} {self.program.state.value}>"

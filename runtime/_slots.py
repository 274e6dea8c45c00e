"""Program slots: at most ``max_programs`` programs run at once; the others wait, first come first served.

``Runtime(max_programs=N)`` is backpressure for a producer that submits
faster than the engines serve: a program past the bound is submitted (its
handle comes back at once, its inputs already validated) but stays
``PENDING`` until a running program finishes, and pending programs start in
submission order (FIFO).  A producer that must not pile up pending programs
awaits :meth:`ProgramSlots.wait_for_room` (``await rt.wait_for_room()``)
before each submit.  ``None`` means no bound.
"""

from __future__ import annotations

import collections

import anyio

__all__ = ["ProgramSlots"]


class ProgramSlots:
    """Counts programs submitted and running against ``limit`` (``None``: unbounded)."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"max_programs must be an int >= 1 or None (no bound), got {limit!r}")
        self.limit = limit
        #: Programs holding a slot (running, or handed a slot and about to run).
        self.running = 0
        #: Programs submitted and not yet finished (running and pending).
        self.admitted = 0
        self._queue: collections.deque[anyio.Event] = collections.deque()
        self._room: anyio.Event | None = None

    @property
    def pending(self) -> int:
        """Programs submitted and waiting for a slot."""
        return self.admitted - self.running

    def submitted(self) -> None:
        """A program was submitted (it takes a slot with :meth:`acquire` when its task starts)."""
        self.admitted += 1

    async def acquire(self) -> None:
        """Take a slot, waiting behind earlier programs if none is free; cancellable while waiting."""
        if self.limit is None or (self.running < self.limit and not self._queue):
            self.running += 1
            return
        turn = anyio.Event()
        self._queue.append(turn)
        acquired = False
        try:
            await turn.wait()
            acquired = True
        finally:
            if not acquired:
                if turn.is_set():
                    self.release()  # handed a slot as it was cancelled: pass it on
                else:
                    self._queue.remove(turn)

    def release(self) -> None:
        """Give a slot back: to the longest-waiting program, else free it."""
        if self._queue:
            self._queue.popleft().set()  # the slot changes hands: running stays the same
        else:
            self.running -= 1

    def finished(self) -> None:
        """A submitted program has finished (however); producers waiting for room may go on."""
        self.admitted -= 1
        room, self._room = self._room, None
        if room is not None:
            room.set()

    def has_room(self) -> bool:
        """Whether a program submitted now would start at once."""
        return self.limit is None or self.admitted < self.limit

    async def wait_for_room(self) -> None:
        """Return once a program submitted now would start at once (at once if unbounded)."""
        while not self.has_room():
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

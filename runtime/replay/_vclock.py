"""Virtual time for asyncio: run a coroutine whose timers fire without waiting.

:func:`run_virtual` runs a coroutine on a :class:`VirtualClockLoop`, a
``SelectorEventLoop`` whose :meth:`~VirtualClockLoop.time` is a virtual clock
starting at 0.  Whenever the loop would block until its next timer (no ready
callbacks, no ready I/O), the clock jumps to that timer instead of sleeping, so
a simulation of hours of engine and tool time runs as fast as the Python code
in it.  ``asyncio.sleep``, ``loop.call_later``, ``anyio.sleep`` and
``anyio.move_on_after`` all read ``loop.time()`` and so all follow the clock.

The jump happens in a wrapper around the loop's selector: ``select(timeout)``
first polls the real selector without blocking and only advances the clock
when nothing is ready.  Real I/O and threads therefore keep working: a thread
finishing ``anyio.to_thread.run_sync`` or calling ``call_soon_threadsafe``
wakes the loop through its self-pipe, and a loop with no timers at all blocks
for real until that happens.  (Existing packages such as aiotools'
``VirtualClock`` patch ``select`` to never poll real I/O, which starves
threads and sockets; hence this small hand-written loop.)  Virtual time does
not wait for work running in threads: a timer due while a thread computes
fires at once.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

__all__ = ["VirtualClockLoop", "run_virtual"]

T = TypeVar("T")


class _VirtualSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns a would-be blocking wait into a clock jump."""

    def __init__(self, real: selectors.BaseSelector) -> None:
        self._real = real
        self.now = 0.0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            # Nothing scheduled: only I/O or another thread can wake the loop.
            return self._real.select(None)
        ready = self._real.select(0)
        if not ready and timeout > 0:
            self.now += timeout
        return ready

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose clock jumps to the next timer instead of sleeping.

    ``time()`` starts at 0.0 seconds and only advances while the loop would
    otherwise wait for a timer.
    """

    def __init__(self) -> None:
        self._virtual = _VirtualSelector(selectors.DefaultSelector())
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh :class:`VirtualClockLoop` and return its result.

    Like ``asyncio.run``: the loop is closed afterwards, after async
    generators and the default executor are shut down.
    """

    async def _call() -> T:
        return await main()

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(_call())

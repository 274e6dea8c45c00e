"""SIGTERM and SIGINT shut a runtime down the way asyncio shuts down on Ctrl-C.

A process told to stop (SIGTERM from a supervisor, a container runtime, a
``kill``; SIGINT from Ctrl-C) should cancel its programs, close its engines
(so their processes exit) and exit, with status 143 or 130 and no
traceback.  Python's defaults do neither well: SIGTERM kills the process at
once, leaving its engine processes to the reaper (:mod:`._engines._reaper`),
and Ctrl-C ends in a ``KeyboardInterrupt`` traceback.

So :class:`~runtime.Runtime`, entered in the main thread, takes a
:class:`SignalGuard` (:func:`guard_signals`): while any guard is held, both
signals go to one handler here, which mirrors what ``asyncio.Runner`` does
for Ctrl-C: the first signal cancels the task that entered each runtime
(its ``async with`` then closes the runtime as for any cancellation) and,
once the runtime has closed, :meth:`SignalGuard.close` raises
``SystemExit(128 + signal)``; a second signal exits at once, by the signal
itself (the reaper still stops the engine processes).  A runtime entered in
a task that has finished meanwhile (a fixture, a web framework's lifespan)
is closed from a new task instead.  A signal that arrives while no event
loop runs raises ``SystemExit`` where the main thread is, as Ctrl-C raises
``KeyboardInterrupt``.

Only default dispositions are taken: SIGTERM's ``SIG_DFL``, SIGINT's
``default_int_handler`` (or ``asyncio.Runner``'s, which it installs for
that one); a handler of the application's own is left alone, as is every
signal off the main thread (Python runs handlers there only).  The previous
handlers come back when the last guard is closed.  ``Runtime(...,
handle_signals=False)`` opts out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any, NoReturn, TypeVar

__all__ = ["EXIT_STATUS", "SignalGuard", "guard_signals", "run_until_signalled", "shutdown_requested"]

T = TypeVar("T")

logger = logging.getLogger("runtime")

#: The signals handled, and the exit status each ends the process with (128 + the signal number, as shells report).
EXIT_STATUS: dict[signal.Signals, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}

_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalGuard:
    """One holder of the shutdown handlers: the task a signal cancels, and how to close it if that task is gone.

    Made by :func:`guard_signals`; :meth:`close` once the holder has shut
    down.
    """

    def __init__(
        self,
        task: asyncio.Task[Any] | None,
        loop: asyncio.AbstractEventLoop | None,
        on_orphaned: Callable[[], Awaitable[object]] | None,
    ) -> None:
        self._task = task
        self._loop = loop
        self._on_orphaned = on_orphaned
        self._closing = False
        self._closed = False

    @property
    def received(self) -> signal.Signals | None:
        """The shutdown signal received while this guard was held, if any."""
        return _received

    def closing(self) -> None:
        """The holder has begun to close: from now on a signal only sets the exit status :meth:`close` raises.

        (Cancelling a task that is closing would cut its clean-up short.)
        """
        self._closing = True

    def close(self) -> None:
        """Let go; restore the previous handlers if this was the last guard.

        Raises ``SystemExit(130)`` (SIGINT) or ``SystemExit(143)`` (SIGTERM)
        if such a signal arrived while the guard was held: the holder has
        shut down, and the process should now exit.
        """
        global _received
        if self._closed:
            return
        self._closed = True
        received = _received
        with _lock:
            _guards.remove(self)
            if not _guards:
                _uninstall()
                _received = None
        if received is not None:
            raise SystemExit(EXIT_STATUS[received])

    def _shut_down(self, sig: signal.Signals) -> None:
        """On the loop's thread: cancel the task, or close from a new task if it has finished."""
        task = self._task
        if self._closing:
            return
        if task is not None and not task.done():
            task.cancel(f"{sig.name} received")
        elif self._on_orphaned is not None and self._loop is not None:
            self._loop.create_task(_close_then_exit(self._on_orphaned, sig), name=f"agentrt {sig.name} shutdown")


async def _close_then_exit(close: Callable[[], Awaitable[object]], sig: signal.Signals) -> None:
    with contextlib.suppress(SystemExit):  # what the holder's own close raises says the same
        await close()
    asyncio.get_running_loop().call_soon(_exit, EXIT_STATUS[sig])


def _exit(status: int) -> NoReturn:
    # Raised by a callback, SystemExit leaves the event loop at once (as KeyboardInterrupt does); the
    # loop's runner then cancels what still runs.
    raise SystemExit(status)


_lock = threading.Lock()
_guards: list[SignalGuard] = []
#: The handlers in place before ours, per signal taken.
_previous: dict[signal.Signals, _Handler] = {}
_received: signal.Signals | None = None


def guard_signals(
    task: asyncio.Task[Any] | None = None,
    *,
    on_orphaned: Callable[[], Awaitable[object]] | None = None,
) -> SignalGuard | None:
    """Have SIGTERM and SIGINT cancel ``task`` (default: the current task) until the guard is closed.

    ``on_orphaned`` closes the holder when ``task`` has finished by the time
    a signal comes.  Returns ``None`` off the main thread, or when neither
    signal has its default disposition (the application handles them).
    Without a running loop (``task`` is ``None`` there) a signal raises
    ``SystemExit`` in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if task is None and loop is not None:
        task = asyncio.current_task()
    with _lock:
        if not _guards:
            for sig in EXIT_STATUS:
                current = signal.getsignal(sig)
                if _is_default(sig, current):
                    _previous[sig] = current
                    signal.signal(sig, _on_signal)
            if not _previous:
                return None
        guard = SignalGuard(task, loop, on_orphaned)
        _guards.append(guard)
        return guard


def shutdown_requested() -> bool:
    """Whether a SIGTERM or SIGINT is shutting this process down now (engines need not restart then)."""
    return _received is not None


def _is_default(sig: signal.Signals, handler: _Handler) -> bool:
    if handler == signal.SIG_DFL:
        return True
    if sig is signal.SIGINT:
        if handler is signal.default_int_handler:
            return True
        # asyncio.Runner's own Ctrl-C handler: functools.partial(Runner._on_sigint, ...).
        if isinstance(handler, functools.partial):
            return getattr(handler.func, "__qualname__", "") == "Runner._on_sigint"
    return False


def _uninstall() -> None:
    if threading.current_thread() is not threading.main_thread():
        # signal.signal works in the main thread only; ours stays, and without guards raises SystemExit at once.
        _previous.clear()
        return
    for sig, previous in _previous.items():
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, previous)
    _previous.clear()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The handler (Python runs it in the main thread, between two bytecodes of whatever runs there)."""
    global _received
    sig = signal.Signals(signum)
    if _received is not None:
        # The second signal: exit at once, by the signal (the reaper stops engine processes).
        _uninstall()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        return
    _received = sig
    loops = {g._loop for g in _guards if g._loop is not None and g._loop.is_running() and not g._loop.is_closed()}
    if not loops:
        raise SystemExit(EXIT_STATUS[sig])
    for loop in loops:
        loop.call_soon_threadsafe(_shut_down, loop, sig)


def _shut_down(loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
    logger.warning("%s received: cancelling programs and closing engines (send it again to exit at once)", sig.name)
    guards = [g for g in _guards if g._loop is loop]
    # One cancel per task, however many guards it holds, and none for a task that is closing a runtime already.
    skip: set[asyncio.Task[Any] | None] = {g._task for g in guards if g._closing}
    for guard in guards:
        if guard._task is not None and not guard._task.done():
            if guard._task in skip:
                continue
            skip.add(guard._task)
        guard._shut_down(sig)


def run_until_signalled(command: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(command, *args)`` for a command line: SIGINT and SIGTERM cancel it, then ``SystemExit(130/143)``.

    A signal before the event loop runs (imports, argument checks) raises
    ``SystemExit`` at once; one while it runs cancels ``command``, whose
    runtimes and engines close as on any cancellation.
    """
    import anyio

    outer = guard_signals()

    async def guarded() -> T:
        inner = guard_signals()
        try:
            return await command(*args)
        finally:
            if inner is not None:
                inner.close()

    try:
        return anyio.run(guarded, backend="asyncio")
    finally:
        if outer is not None:
            outer.close()

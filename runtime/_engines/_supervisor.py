"""The supervisor: the restart loop of an engine whose model runs in a process of its own.

In-process vLLM's engine core and a launched ``vllm serve`` die the same
way and come back the same way, so one loop serves both:

1. wait for the process to die (the engine's ``watch``: it says what
   happened, and every message about it starts so);
2. mark the engine down with the reason (``... ; restarting``), log it, and
   clean up what is left (``clean_up``: processes, ports, memory);
3. past ``max_restarts`` restarts over the engine's life (or with restarts
   off), give up: the engine stays down until closed, and its reason says so;
4. otherwise back off (:data:`RESTART_BACKOFF`: 1, 2, 4 ... s, at most 30),
   count the restart and ``rebuild``; a rebuild that fails
   (:class:`~runtime.EngineStartError`) is logged and counts as a restart
   used, and the loop goes back to 3;
5. rebuilt: the engine serves again, and the loop goes back to 1.

A death while this process shuts down on a signal is not restarted (a
Ctrl-C in a terminal reaches an engine core as well).  The engines keep
what differs: how they see a death, what they clean up, how they rebuild.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from .._backoff import Backoff
from .._errors import EngineStartError
from .._signals import shutdown_requested

__all__ = ["RESTART_BACKOFF", "Supervisor", "log_tail"]

#: Seconds before each restart of a dead engine process: 1, doubling, at most 30.
RESTART_BACKOFF = Backoff(first_s=1.0, max_s=30.0)
#: Log lines quoted in start and crash errors.
_TAIL_LINES = 40


def log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (reads at most its last 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            data = f.read()
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


class Supervisor:
    """Watches one engine's process and restarts it when it dies (see the module docstring).

    ``name`` is the engine's, ``logger`` its module's.  ``watch`` returns
    once the process has died, with what happened
    (``"engine e: its vLLM engine core died"``); ``clean_up`` releases what
    is left of it; ``rebuild`` starts it again, raising
    :class:`~runtime.EngineStartError` when it does not come up.
    ``restart`` and ``max_restarts`` are the engine's options, quoted by
    their name in the engine (``restart_option``) when the supervisor gives
    up.  ``log_path``: the process's log, whose last lines are quoted when
    it dies and when it is given up.

    :attr:`down_reason` and :attr:`restarts` are the engine's to read (and
    the reason its to set when it closes).
    """

    def __init__(
        self,
        name: str,
        *,
        watch: Callable[[], Awaitable[str]],
        clean_up: Callable[[], Awaitable[None]],
        rebuild: Callable[[], Awaitable[None]],
        restart: bool,
        max_restarts: int,
        restart_option: str,
        logger: logging.Logger,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self._watch = watch
        self._clean_up = clean_up
        self._rebuild = rebuild
        self.restart = restart
        self.max_restarts = max_restarts
        self._restart_option = restart_option
        self._logger = logger
        self._log_path = log_path
        #: None while the engine serves (or before it starts); otherwise why it cannot (restarting, gave up, closed).
        self.down_reason: str | None = None
        #: Restarts tried so far over the engine's life (a failed one counts).
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching (the engine has just started)."""
        self._task = asyncio.create_task(self._supervise(), name=f"{self.name} supervisor")
        self._task.add_done_callback(self._done)

    async def stop(self) -> None:
        """Stop watching and wait for the loop to end (the engine closes); a restart under way is abandoned."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # wait() rather than awaiting the task: its CancelledError is not ours to catch.
            await asyncio.wait({task})

    async def _supervise(self) -> None:
        log = self._logger
        while True:
            died = await self._watch()
            if shutdown_requested():
                self.down_reason = f"{died} while this process shuts down"
                await self._clean_up()
                return
            self.down_reason = f"{died}; restarting" if self.restart else died
            if self._log_path is None:
                log.warning("%s", self.down_reason)
            else:
                log.warning("%s; last log lines:\n%s", self.down_reason, log_tail(self._log_path))
            await self._clean_up()
            while True:
                if not self.restart or self.restarts >= self.max_restarts:
                    self.down_reason = self._given_up(died)
                    log.error("%s", self.down_reason)
                    return
                await asyncio.sleep(RESTART_BACKOFF.delay_s(self.restarts + 1))
                self.restarts += 1
                try:
                    await self._rebuild()
                except EngineStartError as exc:
                    log.warning("%s: restart %d failed: %s", self.name, self.restarts, exc)
                    continue
                break
            self.down_reason = None
            log.warning("%s: restarted (restart %d)", self.name, self.restarts)

    def _given_up(self, died: str) -> str:
        used = f"({self._restart_option}={self.restart}, {self.restarts}/{self.max_restarts} restarts used)"
        if self._log_path is None:
            return f"{died} and is not restarted {used}: close it and start a new one"
        return f"{died} and is not restarted {used}; log {self._log_path}, last lines:\n{log_tail(self._log_path)}"

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug in the supervisor: without it nobody would notice a death or restart, so say the engine is down.
        exc = task.exception()
        self._logger.error("%s: supervisor failed", self.name, exc_info=exc)
        self.down_reason = f"engine {self.name}: its supervisor failed: {exc!r}"

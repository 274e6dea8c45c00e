"""Program-directed host-memory KV tier: a program's context leaves the GPU during a long tool, back before it returns.

On an engine with a host tier (:attr:`runtime.Engine.supports_offload`), a
program going into a tool expected to take at least ``min_away_s`` has its
cached context copied to host memory and its GPU blocks freed
(:meth:`runtime.Engine.offload`), for the programs that run meanwhile; a
timer brings it back ``lead_s`` before the tool is expected to return
(:meth:`runtime.Engine.prefetch`, pinned ``lead_s + hold_s`` seconds so that
the next turn finds it).  A tool that returns before the timer prefetches
at once.  Copies cost link time, not compute: the simulator's H100 profile
moves a 143K-token Llama-3-8B context (18.7 GB) in about 0.75 s each way,
where prefilling it again takes 20-30 s.  An engine without the tier is
left alone (its pins and LRU decide).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .._engines import Engine
from .._errors import EngineError

__all__ = ["DEFAULT_HOLD_S", "DEFAULT_LEAD_S", "DEFAULT_MIN_AWAY_S", "HostTier"]

logger = logging.getLogger("runtime.policies")

#: Tools expected to take at least this long (seconds) send their program's context to host memory.
DEFAULT_MIN_AWAY_S = 5.0
#: Seconds before a tool's expected return that its program's context is brought back.
DEFAULT_LEAD_S = 2.0
#: Seconds a prefetched context stays pinned past the tool's expected return, for the next turn to arrive.
DEFAULT_HOLD_S = 5.0


@dataclass(slots=True, eq=False)
class _Away:
    engine: Engine
    timer: asyncio.TimerHandle | None = None


class HostTier:
    """Offload and prefetch per program (see the module docstring); one per policy instance."""

    def __init__(
        self, *, min_away_s: float = DEFAULT_MIN_AWAY_S, lead_s: float = DEFAULT_LEAD_S, hold_s: float = DEFAULT_HOLD_S
    ) -> None:
        if min_away_s < 0 or lead_s < 0 or not hold_s > 0:
            raise ValueError("min_away_s and lead_s must be >= 0 and hold_s > 0")
        self.min_away_s = min_away_s
        self.lead_s = lead_s
        self.hold_s = hold_s
        self._away: dict[str, _Away] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Contexts sent to host memory, and brought back, so far.
        self.offloads = 0
        self.prefetches = 0

    @property
    def programs_away(self) -> int:
        """Programs whose context is in host memory now, as far as the policy knows."""
        return len(self._away)

    async def away(self, program_id: str, engine: Engine | None, back_in_s: float | None) -> bool:
        """The program went into a tool expected back in ``back_in_s`` seconds: offload its context if worth it."""
        if engine is None or back_in_s is None or back_in_s < self.min_away_s or not engine.supports_offload:
            return False
        if program_id in self._away:
            return False  # already away (a parallel tool of the same pause)
        try:
            offloaded = await engine.offload(program_id)
        except EngineError as exc:
            logger.debug("offload of %s on %s failed: %s", program_id, engine.name, exc)
            return False
        if not offloaded:
            return False
        self.offloads += 1
        away = self._away[program_id] = _Away(engine)
        delay = max(0.0, back_in_s - self.lead_s)
        away.timer = asyncio.get_running_loop().call_later(delay, self._fire, program_id)
        return True

    async def back(self, program_id: str) -> None:
        """The program's tool returned: bring its context back now unless the timer already did."""
        away = self._away.pop(program_id, None)
        if away is None:
            return
        if away.timer is not None:
            away.timer.cancel()
            await self._prefetch(program_id, away.engine)

    def forget(self, program_id: str) -> None:
        """The program ended: no prefetch for it."""
        away = self._away.pop(program_id, None)
        if away is not None and away.timer is not None:
            away.timer.cancel()

    def _fire(self, program_id: str) -> None:
        away = self._away.get(program_id)
        if away is None:
            return
        away.timer = None  # fired: the tool's return has nothing left to do but forget it
        task = asyncio.get_running_loop().create_task(self._prefetch(program_id, away.engine))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prefetch(self, program_id: str, engine: Engine) -> None:
        try:
            if await engine.prefetch(program_id, self.lead_s + self.hold_s):
                self.prefetches += 1
        except EngineError as exc:
            logger.debug("prefetch of %s on %s failed: %s", program_id, engine.name, exc)

"""The health monitor: every engine's health check, every few seconds, with no call in flight needed.

A killed server is otherwise noticed only by the next call sent to it.  The
:class:`~runtime.Runtime` runs one :class:`HealthMonitor` as a task beside its
programs: each engine gets its own probe loop (a hung server's probe, which
may take up to its connect timeout, delays no other engine's), calling
:meth:`Engine.check_health` every ``interval_s`` seconds.  What a failed probe
does is the engine's own business: a :class:`~runtime.RemoteEngine` reports
``available`` false until a probe succeeds again, so dispatch skips it; an
in-process engine's availability follows its engine core.  The monitor
itself only keeps each engine's last outcome and logs a transition once
(logger ``runtime.health``), not every probe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio

from ._clock import now
from ._engines import Engine
from ._errors import EngineClosedError

__all__ = ["HealthMonitor"]

logger = logging.getLogger("runtime.health")


class HealthMonitor:
    """Probes ``engines`` every ``interval_s`` seconds until cancelled; :meth:`run` is its task.

    :attr:`unhealthy` maps the name of each engine whose last probe failed
    to what it answered, for reports and tests.
    """

    def __init__(self, engines: Sequence[Engine], interval_s: float) -> None:
        if not interval_s > 0:
            raise ValueError(f"health_interval_s must be > 0 seconds or None, got {interval_s}")
        self._engines = list(engines)
        self.interval_s = interval_s
        self.unhealthy: dict[str, str] = {}
        self._since: dict[str, float] = {}

    async def run(self) -> None:
        """Probe every engine, each in its own loop, until cancelled (the runtime's close does that)."""
        async with anyio.create_task_group() as tg:
            for engine in self._engines:
                tg.start_soon(self._watch, engine, name=f"health of {engine.name}")

    async def _watch(self, engine: Engine) -> None:
        while not engine.closed:
            await self.probe(engine)
            await anyio.sleep(self.interval_s)

    async def probe(self, engine: Engine) -> bool:
        """One health check of ``engine``; log it if the outcome changed.  True when healthy."""
        try:
            await engine.check_health()
        except EngineClosedError:
            return False  # closed by us: not news, and the loop ends
        except Exception as exc:
            # Whatever a backend raises is a failed probe: the monitor must not
            # take the runtime down with it, and the next probe tries again.
            self._failed(engine, f"{type(exc).__name__}: {exc}")
            return False
        self._passed(engine)
        return True

    def _failed(self, engine: Engine, reason: str) -> None:
        if engine.name in self.unhealthy:
            return
        self.unhealthy[engine.name] = reason
        self._since[engine.name] = now()
        logger.warning(
            "engine %s failed its health check: %s; %s",
            engine.name,
            reason,
            "no new calls go to it until it passes again" if not engine.available else "it still takes calls",
        )

    def _passed(self, engine: Engine) -> None:
        if self.unhealthy.pop(engine.name, None) is None:
            return
        down_s = now() - self._since.pop(engine.name)
        logger.info("engine %s is healthy again after %.1f s", engine.name, down_s)

"""Pin control for vLLM engines whose scheduler is agentrt's plug-in: the engine hooks over the control path.

:class:`InProcessEngine` and :class:`RemoteEngine` (hence
:class:`ServerEngine`) mix it in.  An engine pins when it has a
:class:`~._pin_control.PinControlClient` (``self._pin_client``); the last
answer of the control server also feeds :meth:`~runtime.Engine.load` with the
blocks pins hold, so policies read it without I/O.
"""

from __future__ import annotations

import logging
from typing import Any

from .._errors import EngineCapabilityError, EngineError
from ._pin_control import PinControlClient
from ._requests import PinStats

__all__ = ["PinControlled"]

logger = logging.getLogger("runtime.pins")

_STAT_FIELDS = ("pins", "pin_hits", "pins_expired", "pins_released", "pins_released_pressure", "pinned_blocks")


class PinControlled:
    """Engine hooks ``_set_pin``, ``_release_pin``, ``_pin_stats`` over ``self._pin_client``."""

    _pin_client: PinControlClient | None = None
    name: str

    @property
    def supports_pins(self) -> bool:
        return self._pin_client is not None

    def _client(self) -> PinControlClient:
        if self._pin_client is None:
            raise EngineCapabilityError(f"engine {self.name} has no pin control path")
        return self._pin_client

    async def _set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        return await self._client().set_pin(program_id, ttl_s, value)

    async def _release_pin(self, program_id: str) -> bool:
        return await self._client().release_pin(program_id)

    async def _read_kv_geometry(self) -> None:
        """Ask the control server once at start, so that :meth:`load` knows the KV size before any pin."""
        if self._pin_client is None:
            return
        try:
            await self._pin_client.stats()
        except EngineError as exc:
            logger.debug("%s: KV size unavailable at start: %s", self.name, exc)

    async def _pin_stats(self) -> PinStats:
        answer = await self._client().stats()
        return PinStats(**{k: int(answer.get(k) or 0) for k in (*_STAT_FIELDS, "pinned_programs")})

    def _pin_load_figures(self) -> dict[str, Any]:
        stats = None if self._pin_client is None else self._pin_client.last_stats
        if not stats:
            return {}
        return {
            "pinned_blocks": stats.get("pinned_blocks"),
            "kv_blocks": stats.get("kv_blocks"),
            "block_size": stats.get("block_size"),
        }

    async def _pin_engine_stats(self) -> dict[str, Any]:
        """The pin counters for :meth:`~runtime.Engine.stats` (empty without pins or when unreachable)."""
        if self._pin_client is None:
            return {}
        try:
            answer = await self._pin_client.stats()
        except EngineError as exc:
            logger.debug("%s: pin statistics unavailable: %s", self.name, exc)
            return {}
        return {k: answer.get(k) for k in _STAT_FIELDS if k != "pins_released"}

    async def _close_pin_client(self) -> None:
        if self._pin_client is not None:
            await self._pin_client.aclose()

"""The pins of one vLLM engine: which finished requests keep their KV blocks, until when, and what each is worth.

This is the bookkeeping half of the scheduler plug-in
(:mod:`._pin_scheduler`), kept free of vLLM so that its rules are tested on
their own.  A pin belongs to a program and holds one *parked* request (a
finished request whose blocks the scheduler did not free).  The table never
touches blocks itself: every method that ends a pin hands the parked
request back, or queues it for :meth:`PinTable.take_released`, and the
scheduler frees its blocks on the engine-core thread.

It is shared by two threads: the engine core (park, hand-off, pressure,
expiry) and the control server (set, release, statistics); one lock guards
it.  Times are ``time.monotonic()`` seconds of the engine-core process.

Pressure order: the least valuable pin goes first; among equal values (a pin
without one counts as 0), the latest program's, by when this engine first
saw the program (Continuum's "latest job first").  A *hard* pin (parked by a
request of the ``continuum`` policy, metadata ``pin_mode``) does not expire
while its program has a request waiting, and :meth:`PinTable.take_latest_ending`
gives up the pin that ends last (Continuum's public scheduler).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["PinTable"]

H = TypeVar("H")

#: Programs whose first-seen order is remembered (oldest forgotten first).
_ORDER_MEMORY = 1 << 16


@dataclass(slots=True)
class _Pin(Generic[H]):
    program_id: str
    parked: H
    blocks: int
    tokens: int
    expiry: float
    value: float
    order: int
    hard: bool = False


class PinTable(Generic[H]):
    """Live pins and their counters (see the module docstring); thread-safe.

    ``H`` is whatever the scheduler parks (vLLM's ``Request``).  Counters:
    ``pins`` created, ``pin_hits`` (the program's next request was admitted
    and reused the pinned blocks), ``pins_expired``, ``pins_released``
    (by the control path, an abort, a replacement or the program's next
    request without reuse), ``pins_released_pressure``.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pins: dict[str, _Pin[H]] = {}
        self._released: list[H] = []
        self._order: OrderedDict[str, int] = OrderedDict()
        self._next_order = 0
        # Programs with a request waiting, as the engine core last said: their hard pins do not expire.
        self._waiting: frozenset[str] = frozenset()
        self.pins = 0
        self.pin_hits = 0
        self.pins_expired = 0
        self.pins_released = 0
        self.pins_released_pressure = 0

    # -- engine-core thread ---------------------------------------------------

    def seen(self, program_id: str) -> None:
        """A request of ``program_id`` arrived: remember when the engine first saw the program."""
        with self._lock:
            self._order_of(program_id)

    def park(
        self, program_id: str, parked: H, *, blocks: int, tokens: int, ttl_s: float, hard: bool = False
    ) -> H | None:
        """Pin ``parked`` (a finished request of ``program_id``) for ``ttl_s`` seconds (``hard``: see the module).

        Replaces the program's previous pin, whose parked request is
        returned for freeing (else ``None``).
        """
        with self._lock:
            old = self._pins.pop(program_id, None)
            if old is not None:
                self.pins_released += 1
            self._pins[program_id] = _Pin(
                program_id, parked, blocks, tokens, self._clock() + ttl_s, 0.0, self._order_of(program_id), hard
            )
            self.pins += 1
            return None if old is None else old.parked

    def hand_off(self, program_id: str, cached_tokens: int, block_size: int) -> H | None:
        """The program's next request was admitted with ``cached_tokens`` from the cache: its pin has done its job.

        Counts a hit when the request reused at least half of the pin's
        full blocks.  Returns the parked request to free (its blocks shared
        with the new request stay referenced by it), or ``None``.
        """
        with self._lock:
            pin = self._pins.pop(program_id, None)
            if pin is None:
                return None
            full_tokens = (pin.tokens // block_size) * block_size
            if cached_tokens > 0 and 2 * cached_tokens >= full_tokens:
                self.pin_hits += 1
            else:
                self.pins_released += 1
            return pin.parked

    def drop(self, program_id: str) -> H | None:
        """Release the program's pin (an aborted request, its last turn); the parked request, or ``None``."""
        with self._lock:
            pin = self._pins.pop(program_id, None)
            if pin is None:
                return None
            self.pins_released += 1
            return pin.parked

    def take_for_pressure(self, exclude: str | None) -> H | None:
        """Give up the least valuable pin (not ``exclude``'s) because a request needs blocks."""
        with self._lock:
            candidates = [p for p in self._pins.values() if p.program_id != exclude]
            if not candidates:
                return None
            victim = min(candidates, key=lambda p: (p.value, -p.order))
            del self._pins[victim.program_id]
            self.pins_released_pressure += 1
            return victim.parked

    def take_latest_ending(self) -> H | None:
        """Give up the pin that expires last (Continuum's unpin under pressure); its parked request, or ``None``."""
        with self._lock:
            if not self._pins:
                return None
            victim = max(self._pins.values(), key=lambda p: p.expiry)
            del self._pins[victim.program_id]
            self.pins_released_pressure += 1
            return victim.parked

    def take_released(self, waiting: Collection[str] = ()) -> list[H]:
        """Parked requests whose pins ended off the engine-core thread (expired, released): free them now.

        ``waiting``: the programs with a request waiting now (their hard pins stay past expiry).
        """
        with self._lock:
            self._waiting = frozenset(waiting)
            self._expire()
            released, self._released = self._released, []
            return released

    def take_all(self) -> list[H]:
        """End every pin (the cache is being reset or the engine stops); their parked requests."""
        with self._lock:
            parked = [p.parked for p in self._pins.values()] + self._released
            self.pins_released += len(self._pins)
            self._pins.clear()
            self._released = []
            return parked

    # -- control thread -------------------------------------------------------

    def set(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        """Move the program's pin's expiry to ``ttl_s`` seconds from now (``<= 0``: release) and set its value.

        False when the program holds no pin (it expired, was handed off,
        released under pressure, or never existed).
        """
        with self._lock:
            self._expire()
            pin = self._pins.get(program_id)
            if pin is None:
                return False
            if ttl_s <= 0:
                del self._pins[program_id]
                self._released.append(pin.parked)
                self.pins_released += 1
                return True
            pin.expiry = self._clock() + ttl_s
            if value is not None:
                pin.value = value
            return True

    def release(self, program_id: str) -> bool:
        """Release the program's pin now; False if it holds none."""
        return self.set(program_id, 0.0, None)

    def stats(self) -> dict[str, Any]:
        """The counters and what live pins hold now."""
        with self._lock:
            self._expire()
            return {
                "pins": self.pins,
                "pin_hits": self.pin_hits,
                "pins_expired": self.pins_expired,
                "pins_released": self.pins_released,
                "pins_released_pressure": self.pins_released_pressure,
                "pinned_blocks": sum(p.blocks for p in self._pins.values()),
                "pinned_programs": len(self._pins),
            }

    # -- internals ------------------------------------------------------------

    def _expire(self) -> None:
        now = self._clock()
        waiting = self._waiting
        expired = [p for p in self._pins.values() if p.expiry <= now and not (p.hard and p.program_id in waiting)]
        for pin in expired:
            del self._pins[pin.program_id]
            self._released.append(pin.parked)
        self.pins_expired += len(expired)

    def _order_of(self, program_id: str) -> int:
        order = self._order.get(program_id)
        if order is None:
            order = self._order[program_id] = self._next_order
            self._next_order += 1
            if len(self._order) > _ORDER_MEMORY:
                self._order.popitem(last=False)
        return order

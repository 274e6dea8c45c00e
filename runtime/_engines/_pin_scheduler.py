"""The vLLM scheduler plug-in that pins KV blocks: a finished request of a program keeps its blocks for the next turn.

vLLM loads it by dotted path in the engine-core process (``scheduler_cls`` /
``--scheduler-cls``; the public names are in :mod:`runtime.vllm_scheduler`).
It overrides as little of vLLM 0.32's ``Scheduler`` as it can, and the
integration tests cover each piece on that version:

- ``_free_blocks(request)``, through which every finished request's blocks
  are freed: a request that finished normally and whose metadata
  (``extra_args``) names a ``program_id`` and a ``pin_ttl_s`` is *parked*
  instead (removed from ``requests``, its blocks left referenced, so they
  stay in the prefix cache and cannot be evicted).  An aborted request is
  never pinned, and its program's pin is released.
- ``schedule()``: first frees the pins that expired or were released by the
  control path; after vLLM's own scheduling, the program of each newly
  admitted request hands its pin off (the new request now references the
  shared blocks, so freeing the parked one loses nothing).
- the KV-cache manager's ``allocate_slots`` (wrapped on the instance): when
  it cannot find blocks, pins are given up, least valuable first, and the
  allocation is tried again, before vLLM would preempt a running request or
  leave a waiting one waiting.  So pins are soft: they never stall the
  engine, preempt a running request or cause one to be dropped (except a
  ``continuum`` request's, below).
- a request whose metadata has ``pin_mode`` = ``"continuum"`` (the
  ``continuum`` policy's) follows Continuum's public scheduler instead
  (docs/kv_pinning.md): its pins are *hard* (they do not expire while the
  program has a request waiting), and when it cannot find blocks, a running
  one gives up the pin that ends last only while at most one request runs
  (else vLLM preempts), a waiting one only while none runs (and waits
  anyway, as Continuum's code stops admitting for the step).  The waiting
  order and the preemption victim stay vLLM's priority scheduling with the
  policy's priorities (program-level FCFS, pinned programs first, the
  latest program preempted).
- ``add_request`` notes when the engine first saw each program (the pressure
  order among equal values), ``reset_prefix_cache`` and ``shutdown`` drop
  every pin first.

The pins' bookkeeping is :class:`~._pin_table.PinTable`; the control path
(set, change, release, statistics) is :mod:`._pin_control`.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from ._pin_control import PinControlServer, control_settings
from ._pin_table import PinTable
from ._requests import METADATA_PIN_MODE, METADATA_PIN_TTL_S, METADATA_PROGRAM_ID, PIN_MODE_CONTINUUM

if TYPE_CHECKING:
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput

__all__ = ["AsyncPinningScheduler", "PinningScheduler"]

logger = logging.getLogger("runtime.pins")

#: A request that ended this way has a next turn worth pinning for.
_PINNABLE_ENDS = frozenset({RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH_CAPPED})


def _pin_request(request: Request) -> tuple[str | None, float | None]:
    """The request's program and the pin it asks for (seconds), from its metadata."""
    extra = request.sampling_params.extra_args if request.sampling_params is not None else None
    if not extra:
        return None, None
    program = extra.get(METADATA_PROGRAM_ID)
    ttl = extra.get(METADATA_PIN_TTL_S)
    try:
        ttl_s = None if ttl is None else float(ttl)
    except (TypeError, ValueError):
        ttl_s = None
    if ttl_s is not None and not (math.isfinite(ttl_s) and ttl_s > 0):
        ttl_s = None
    return (None if program is None else str(program)), ttl_s


def _continuum(request: Request) -> bool:
    """Whether the request follows Continuum's public scheduler (metadata ``pin_mode``)."""
    extra = request.sampling_params.extra_args if request.sampling_params is not None else None
    return extra is not None and extra.get(METADATA_PIN_MODE) == PIN_MODE_CONTINUUM


class _PinningMixin(Scheduler):
    """What both plug-in classes add to vLLM's scheduler (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pins: PinTable[Request] = PinTable()
        manager = self.kv_cache_manager
        self._allocate_slots_unpinned = manager.allocate_slots
        manager.allocate_slots = self._allocate_slots  # type: ignore[method-assign]
        self._pin_control: PinControlServer | None = None
        settings = control_settings(self.vllm_config.additional_config)
        if settings is not None:
            self._pin_control = PinControlServer(
                self.pins, *settings, kv_blocks=int(self.kv_cache_config.num_blocks), block_size=int(self.block_size)
            )
            self._pin_control.start()

    # -- overrides ---------------------------------------------------------------

    def add_request(self, request: Request) -> None:
        program, _ = _pin_request(request)
        if program is not None:
            self.pins.seen(program)
        super().add_request(request)

    def schedule(self, *args: Any, **kwargs: Any) -> SchedulerOutput:
        waiting = [p for r in self.waiting if _continuum(r) and (p := _pin_request(r)[0]) is not None]
        self._free_parked(self.pins.take_released(waiting))
        output = super().schedule(*args, **kwargs)
        for new in output.scheduled_new_reqs:
            request = self.requests.get(new.req_id)
            if request is None:
                continue
            program, _ = _pin_request(request)
            if program is None:
                continue
            # Tokens the request found cached = computed so far minus this step's share.
            cached = request.num_computed_tokens - output.num_scheduled_tokens.get(new.req_id, 0)
            parked = self.pins.hand_off(program, max(0, cached), self.block_size)
            if parked is not None:
                self._free_request_blocks(parked)
        return output

    def _free_blocks(self, request: Request) -> None:
        program, ttl_s = _pin_request(request)
        if program is None:
            super()._free_blocks(request)
            return
        if ttl_s is None or request.status not in _PINNABLE_ENDS:
            # Aborted, failed, or not asked to pin: the program's pin goes too.
            parked = self.pins.drop(program) if request.status not in _PINNABLE_ENDS else None
            super()._free_blocks(request)
            if parked is not None:
                self._free_request_blocks(parked)
            return
        blocks = sum(len(group) for group in self.kv_cache_manager.get_block_ids(request.request_id))
        del self.requests[request.request_id]
        replaced = self.pins.park(
            program, request, blocks=blocks, tokens=request.num_tokens, ttl_s=ttl_s, hard=_continuum(request)
        )
        if replaced is not None:
            self._free_request_blocks(replaced)

    def reset_prefix_cache(self, *args: Any, **kwargs: Any) -> bool:
        self._free_parked(self.pins.take_all())
        return bool(super().reset_prefix_cache(*args, **kwargs))

    def shutdown(self) -> None:
        if self._pin_control is not None:
            self._pin_control.stop()
        self._free_parked(self.pins.take_all())
        super().shutdown()

    # -- memory pressure -------------------------------------------------------

    def _allocate_slots(self, request: Request, *args: Any, **kwargs: Any) -> KVCacheBlocks | None:
        """vLLM's ``allocate_slots``, giving up pins (least valuable first) until the blocks fit or none is left.

        It runs for every scheduled request of every step, so it adds
        nothing when the blocks fit (expired and released pins were freed at
        the top of :meth:`schedule`).
        """
        blocks = self._allocate_slots_unpinned(request, *args, **kwargs)
        if blocks is not None:
            return blocks
        if _continuum(request):
            return self._allocate_slots_continuum(request, *args, **kwargs)
        own, _ = _pin_request(request)
        while True:
            parked = self.pins.take_for_pressure(exclude=own)
            if parked is None:
                return None
            self._free_request_blocks(parked)
            blocks = self._allocate_slots_unpinned(request, *args, **kwargs)
            if blocks is not None:
                return blocks

    def _allocate_slots_continuum(self, request: Request, *args: Any, **kwargs: Any) -> KVCacheBlocks | None:
        """After a failed allocation, Continuum's rule: pins go only while at most one request runs.

        A running request gives up the pin that ends last and retries while
        at most one request runs (else vLLM preempts); a waiting one gives
        up one only when none runs, and waits anyway.
        """
        running = request.status == RequestStatus.RUNNING
        while len(self.running) <= (1 if running else 0):
            parked = self.pins.take_latest_ending()
            if parked is None:
                return None
            self._free_request_blocks(parked)
            if not running:
                return None
            blocks = self._allocate_slots_unpinned(request, *args, **kwargs)
            if blocks is not None:
                return blocks
        return None

    def _free_parked(self, parked: list[Request]) -> None:
        for request in parked:
            self._free_request_blocks(request)


class PinningScheduler(_PinningMixin):
    """vLLM's synchronous ``Scheduler`` with agentrt's KV pins (the CPU build, and GPUs without async scheduling)."""


class AsyncPinningScheduler(_PinningMixin, AsyncScheduler):
    """vLLM's ``AsyncScheduler`` (GPUs with async scheduling) with agentrt's KV pins."""

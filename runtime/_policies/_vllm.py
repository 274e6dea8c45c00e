"""The ``vllm`` policy: what plain vLLM behind a load balancer gives."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from .._engines import Engine
from ._base import CallInfo, Policy, Route
from ._placement import least_loaded

__all__ = ["VLLMPolicy"]


class VLLMPolicy(Policy):
    """First come first served, least-loaded dispatch, no program awareness.

    Every call is admitted at once.  Its priority is the caller's, else the
    program's user priority, so equal priorities are served in arrival order
    by vLLM's scheduler.  Engines are picked by fewest requests in flight,
    ties broken round-robin.  No request metadata beyond the runtime's own.
    """

    name = "vllm"
    recheck_s = None  # never holds a call

    def __init__(self) -> None:
        self._turn = itertools.count()

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        return Route(least_loaded(engines, self._turn), call.level)

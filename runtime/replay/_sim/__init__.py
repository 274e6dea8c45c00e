"""The simulator engine (``--engine sim``): a discrete-event model of one vLLM v1 instance.

- :mod:`._cost`: :class:`CostProfile`, how long an engine step takes (JSON profiles).
- :mod:`._kv`: KV blocks with prefix caching, LRU eviction and pins.
- :mod:`._scheduler`: vLLM v1 continuous batching, chunked prefill, preemption.
- :mod:`._engine`: :class:`SimEngine`, the :class:`~runtime.Engine` backend over them.

Run it under :func:`runtime.replay.run_virtual` to simulate without waiting.
"""

from __future__ import annotations

from ._cost import CostProfile, ProfileError, bundled_profiles
from ._engine import SimEngine
from ._scheduler import QueueOrder

__all__ = ["CostProfile", "ProfileError", "QueueOrder", "SimEngine", "bundled_profiles"]

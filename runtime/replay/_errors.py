"""The base of the replay lab's exceptions; each concrete one lives beside the code that raises it.

``TraceError`` (:mod:`._trace`), ``ResultError`` (:mod:`._results`) and
``ProfileError`` (:mod:`._sim._cost`) derive from :class:`ReplayError` and
from ``ValueError``: each means a file or argument that cannot be used.
"""

from __future__ import annotations

from runtime import AgentRuntimeError

__all__ = ["ReplayError"]


class ReplayError(AgentRuntimeError):
    """Base class of every exception raised by :mod:`runtime.replay`."""

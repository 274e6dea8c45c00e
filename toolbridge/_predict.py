"""How long a tool call will take: a windowed empirical distribution per tool.

The KV-pin policy reads it (Continuum): the probability that a tool finishes
within a pin's time-to-live is the empirical CDF of that tool's recent wall
times.  A tool never seen falls back to the distribution over all tools
(Continuum's cold start), and with no data at all the answers are ``None``.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque

__all__ = ["DurationPredictor", "durations"]

#: The name under which every observation is also recorded.
ALL_TOOLS = "*"


class _Window:
    __slots__ = ("recent", "sorted")

    def __init__(self, size: int) -> None:
        self.recent: deque[float] = deque(maxlen=size)
        self.sorted: list[float] = []

    def add(self, value: float) -> None:
        if len(self.recent) == self.recent.maxlen:
            old = self.recent[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.recent.append(value)
        bisect.insort(self.sorted, value)


class DurationPredictor:
    """Wall times in seconds of the last ``window`` calls of each tool.

    Thread-safe; each query is O(log window) except :meth:`mean` (O(window)).
    """

    def __init__(self, window: int = 256) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._tools: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def observe(self, tool: str, wall_s: float) -> None:
        """Record one call of ``tool`` that took ``wall_s`` seconds (negative or NaN is refused)."""
        if not math.isfinite(wall_s) or wall_s < 0:
            raise ValueError(f"a duration must be a finite number of seconds >= 0, got {wall_s!r}")
        with self._lock:
            for name in (tool, ALL_TOOLS):
                window = self._tools.get(name)
                if window is None:
                    window = self._tools[name] = _Window(self.window)
                window.add(wall_s)

    def _data(self, tool: str) -> list[float]:
        window = self._tools.get(tool) or self._tools.get(ALL_TOOLS)
        return window.sorted if window is not None else []

    def count(self, tool: str) -> int:
        """Observations of ``tool`` itself in the window (0 if never seen)."""
        with self._lock:
            window = self._tools.get(tool)
            return len(window.sorted) if window is not None else 0

    def cdf(self, tool: str, t_s: float) -> float | None:
        """P(a call of ``tool`` takes <= ``t_s`` seconds); ``None`` without data."""
        with self._lock:
            data = self._data(tool)
            if not data:
                return None
            return bisect.bisect_right(data, t_s) / len(data)

    def quantile(self, tool: str, q: float) -> float | None:
        """The smallest observed duration d (seconds) with ``cdf(d) >= q``; ``None`` without data."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        with self._lock:
            data = self._data(tool)
            if not data:
                return None
            index = max(0, math.ceil(q * len(data)) - 1)
            return data[index]

    def mean(self, tool: str) -> float | None:
        """Mean duration in seconds; ``None`` without data."""
        with self._lock:
            data = self._data(tool)
            return math.fsum(data) / len(data) if data else None

    def tools(self) -> list[str]:
        """Names with observations, sorted."""
        with self._lock:
            return sorted(name for name in self._tools if name != ALL_TOOLS)


#: The process-wide predictor :func:`toolbridge.run_tool` records every call into.
durations = DurationPredictor()

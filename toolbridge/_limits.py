"""Resource limits of one tool call."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Limits", "parse_bytes"]

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_bytes(value: int | str) -> int:
    """``"64M"``, ``"1.5G"``, ``"512k"`` or an int -> bytes (binary units: M = 2**20)."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be > 0 bytes, got {value}")
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (write e.g. '64M', '1G' or a number of bytes)")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"a size must be > 0 bytes, got {value!r}")
    return size


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of one call of a tool; ``None`` means unlimited.

    - ``memory``: hard limit of the whole process tree (``"64M"`` or bytes);
      reaching it OOM-kills the call.
    - ``memory_high``: soft limit (cgroup v2 ``memory.high``): the tree is
      throttled and reclaimed above it before the hard limit kills it.
      Ignored by cgroup v1 and rlimits.
    - ``cpu``: CPU time in cores (0.5 = half of one core), enforced by CFS
      quota over a 100 ms period.
    - ``pids``: most processes and threads alive at once in the tree.
    - ``timeout_s``: wall-clock seconds before the whole tree is killed.
    """

    memory: int | str | None = None
    memory_high: int | str | None = None
    cpu: float | None = None
    pids: int | None = None
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.memory is not None:
            object.__setattr__(self, "memory", parse_bytes(self.memory))
        if self.memory_high is not None:
            object.__setattr__(self, "memory_high", parse_bytes(self.memory_high))
        if self.cpu is not None and (isinstance(self.cpu, bool) or not self.cpu > 0):
            raise ValueError(f"Limits.cpu must be > 0 cores, got {self.cpu!r}")
        if self.pids is not None and (isinstance(self.pids, bool) or not isinstance(self.pids, int) or self.pids < 1):
            raise ValueError(f"Limits.pids must be an int >= 1, got {self.pids!r}")
        if self.timeout_s is not None and (isinstance(self.timeout_s, bool) or not self.timeout_s > 0):
            raise ValueError(f"Limits.timeout_s must be > 0 seconds, got {self.timeout_s!r}")

    @property
    def memory_bytes(self) -> int | None:
        """The hard memory limit in bytes."""
        assert self.memory is None or isinstance(self.memory, int)
        return self.memory

    @property
    def memory_high_bytes(self) -> int | None:
        """The soft memory limit in bytes."""
        assert self.memory_high is None or isinstance(self.memory_high, int)
        return self.memory_high

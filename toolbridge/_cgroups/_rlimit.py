"""rlimit backend: the fallback where no cgroup is writable (logged as a warning).

Weaker than cgroups, and honest about it:

- memory: ``RLIMIT_AS`` set by the child to what it already maps plus the
  limit, so it bounds *address space* per process, not the resident memory
  of the tree; exceeding it raises ``MemoryError`` inside the tool.
- cpu: a share of a core cannot be enforced; ``RLIMIT_CPU`` caps CPU seconds
  per process at ``cpu x timeout_s`` when both are set.
- pids: ``RLIMIT_NPROC`` counts per user and is ignored for root.
- the tree is the child's session (process group): descendants that start a
  new session escape the kill.
"""

from __future__ import annotations

import math
import os
import signal

import anyio

from .._limits import Limits
from ._base import RunnerSetup, Sandbox, SandboxDriver, SandboxStats

__all__ = ["RlimitDriver"]


class RlimitSandbox(Sandbox):
    def __init__(self, name: str, limits: Limits) -> None:
        super().__init__(name, limits)
        self.pid: int | None = None

    def runner_setup(self) -> RunnerSetup:
        rlimits: dict[str, int] = {}
        if self.limits.memory_bytes is not None:
            rlimits["RLIMIT_AS"] = self.limits.memory_bytes
        if self.limits.cpu is not None and self.limits.timeout_s is not None:
            rlimits["RLIMIT_CPU"] = max(1, math.ceil(self.limits.cpu * self.limits.timeout_s))
        if self.limits.pids is not None:
            rlimits["RLIMIT_NPROC"] = self.limits.pids
        return RunnerSetup(rlimits)

    def attach(self, pid: int) -> None:
        # The child was started in a new session, so its pid is its process group.
        self.pid = pid

    def pids(self) -> list[int]:
        if self.pid is None:
            return []
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [self.pid]

    def stats(self) -> SandboxStats:
        # The child reports its own rusage; nothing to add from outside.
        return SandboxStats()

    async def kill(self) -> None:
        for _ in range(200):
            if self.pid is None:
                return
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return
            await anyio.sleep(0.005)

    async def remove(self) -> None:
        self.pid = None


class RlimitDriver(SandboxDriver):
    """Per-process rlimits applied by the child before it runs tool code."""

    name = "rlimit"

    def create(self, name: str, limits: Limits) -> Sandbox:
        return RlimitSandbox(name, limits)

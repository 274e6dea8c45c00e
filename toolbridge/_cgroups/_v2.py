"""cgroup v2 backend: one directory per call in the unified hierarchy.

The root is ``$AGENTRT_CGROUP_ROOT`` or the runtime's own cgroup (from
``/proc/self/cgroup``); calls go to ``<root>/agentrt/<call>``.  cgroup v2's
"no internal processes" rule means ``<root>`` must let us enable the
``memory``, ``cpu`` and ``pids`` controllers for ``<root>/agentrt``: under
systemd, run the runtime in a unit with ``Delegate=yes`` (or point
``AGENTRT_CGROUP_ROOT`` at a delegated, empty cgroup).

Files used: ``memory.max`` (hard limit), ``memory.high`` (throttle and reclaim
before the kill, AgentCgroup's graduated response), ``memory.swap.max`` = 0,
``cpu.max`` (``quota period``), ``pids.max``, ``memory.peak`` (kernel >= 5.19),
``memory.events`` (``oom_kill``), ``pids.events`` (``max``), ``cpu.stat``
(``usage_usec``) and ``cgroup.kill`` (kernel >= 5.14) to kill the tree at once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio

from .._limits import Limits
from ._base import (
    Sandbox,
    SandboxDriver,
    SandboxStats,
    kill_pids,
    read_int,
    read_keyed,
    read_pids,
    rmdir_retrying,
    sweep_stale,
)

__all__ = ["CgroupV2Driver"]

log = logging.getLogger("toolbridge.sandbox")

CPU_PERIOD_US = 100_000
WANTED_CONTROLLERS = ("memory", "cpu", "pids")


def own_cgroup_v2(proc_cgroup: str) -> str:
    """This process's cgroup in the unified hierarchy (the ``0::`` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return "/"


class CgroupV2Sandbox(Sandbox):
    def __init__(self, name: str, limits: Limits, directory: Path) -> None:
        super().__init__(name, limits)
        self.directory = directory

    def attach(self, pid: int) -> None:
        (self.directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        return read_pids(self.directory / "cgroup.procs")

    def stats(self) -> SandboxStats:
        usage_usec = read_keyed(self.directory / "cpu.stat").get("usage_usec")
        return SandboxStats(
            cpu_s=usage_usec / 1e6 if usage_usec is not None else None,
            peak_memory_bytes=read_int(self.directory / "memory.peak"),
            oom_killed=read_keyed(self.directory / "memory.events").get("oom_kill", 0) > 0,
            pids_limited=read_keyed(self.directory / "pids.events").get("max", 0) > 0,
        )

    async def kill(self) -> None:
        kill_file = self.directory / "cgroup.kill"
        if kill_file.exists() and self.pids():
            # One write kills the whole tree, including tasks forked meanwhile.
            kill_file.write_text("1")
        for _ in range(400):
            left = self.pids()
            if not left:
                return
            kill_pids(left)
            await anyio.sleep(0.005)
        log.warning("sandbox %s: processes %s survived SIGKILL", self.name, self.pids())

    async def remove(self) -> None:
        if not await rmdir_retrying(self.directory):
            log.warning("sandbox %s: could not remove %s", self.name, self.directory)


class CgroupV2Driver(SandboxDriver):
    """Sandboxes as cgroup v2 directories under ``<root>/agentrt``.

    ``root`` is an absolute directory in a cgroup2 mount; tests pass a fake
    tree in a temporary directory.
    """

    name = "cgroup2"

    def __init__(self, root: Path | None = None, *, mount: Path = Path("/sys/fs/cgroup")) -> None:
        if root is None:
            env = os.environ.get("AGENTRT_CGROUP_ROOT")
            root = Path(env) if env else mount / own_cgroup_v2(Path("/proc/self/cgroup").read_text()).lstrip("/")
        available = set((root / "cgroup.controllers").read_text().split())
        missing = [c for c in ("memory", "pids") if c not in available]
        if missing:
            raise OSError(f"cgroup v2: controllers {missing} not available in {root}")
        self.controllers = [c for c in WANTED_CONTROLLERS if c in available]
        enable = " ".join(f"+{c}" for c in self.controllers)
        (root / "cgroup.subtree_control").write_text(enable)
        self.base = root / "agentrt"
        self.base.mkdir(exist_ok=True)
        (self.base / "cgroup.subtree_control").write_text(enable)
        self.root = root
        if swept := sweep_stale([self.base]):
            log.warning("removed %d call cgroups left by runtimes that died", swept)

    def close(self) -> None:
        try:
            self.base.rmdir()  # only if empty: other runtimes may share it
        except OSError:
            return

    def describe(self) -> str:
        return f"cgroup2 ({self.base}: {', '.join(self.controllers)})"

    def create(self, name: str, limits: Limits) -> Sandbox:
        directory = self.base / name
        directory.mkdir()
        try:
            if limits.memory_bytes is not None:
                (directory / "memory.max").write_text(str(limits.memory_bytes))
                swap = directory / "memory.swap.max"
                if swap.exists():
                    swap.write_text("0")
            if limits.memory_high_bytes is not None:
                (directory / "memory.high").write_text(str(limits.memory_high_bytes))
            if limits.cpu is not None and "cpu" in self.controllers:
                quota = max(1000, round(limits.cpu * CPU_PERIOD_US))
                (directory / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            if limits.pids is not None:
                (directory / "pids.max").write_text(str(limits.pids))
        except OSError:
            try:
                directory.rmdir()
            except OSError:
                log.warning("sandbox %s: could not remove %s", name, directory)
            raise
        return CgroupV2Sandbox(name, limits, directory)

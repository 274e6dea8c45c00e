"""cgroup v1 backend: one directory per call in each controller hierarchy.

Used on hosts that mount the v1 controllers under ``/sys/fs/cgroup/<controller>``
(hybrid layout, no systemd).  Call cgroups are made under the runtime's own
cgroup of each hierarchy, in ``.../agentrt/``, so a limit on the runtime
itself still bounds its tools.

Files used: ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` so
swap cannot stretch the limit), ``memory.max_usage_in_bytes`` (peak),
``memory.oom_control`` (``oom_kill`` counter), ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``, ``cpuacct.usage`` (ns), ``pids.max`` / ``pids.events``,
and the ``freezer`` hierarchy to kill a forking tree without races.
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

__all__ = ["CgroupV1Driver"]

log = logging.getLogger("toolbridge.sandbox")

#: CFS period in microseconds; quota = cpu cores x period.
CPU_PERIOD_US = 100_000
CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer")
#: Without these no limit worth the name can be enforced.
REQUIRED = ("memory", "pids")


def own_cgroup(controller: str, proc_cgroup: str) -> str:
    """The path of this process's cgroup in ``controller``'s hierarchy, from /proc/self/cgroup text."""
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            return parts[2]
    return "/"


class CgroupV1Sandbox(Sandbox):
    def __init__(self, name: str, limits: Limits, dirs: dict[str, Path]) -> None:
        super().__init__(name, limits)
        self.dirs = dirs

    def attach(self, pid: int) -> None:
        for directory in self.dirs.values():
            (directory / "cgroup.procs").write_text(str(pid))

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for directory in self.dirs.values():
            seen.update(read_pids(directory / "cgroup.procs"))
        return sorted(seen)

    def stats(self) -> SandboxStats:
        memory = self.dirs.get("memory")
        cpuacct = self.dirs.get("cpuacct")
        pids = self.dirs.get("pids")
        cpu_ns = read_int(cpuacct / "cpuacct.usage") if cpuacct else None
        oom_kills = read_keyed(memory / "memory.oom_control").get("oom_kill", 0) if memory else 0
        return SandboxStats(
            cpu_s=cpu_ns / 1e9 if cpu_ns is not None else None,
            peak_memory_bytes=read_int(memory / "memory.max_usage_in_bytes") if memory else None,
            oom_killed=oom_kills > 0,
            pids_limited=(read_keyed(pids / "pids.events").get("max", 0) > 0) if pids else False,
        )

    async def kill(self) -> None:
        freezer = self.dirs.get("freezer")
        if freezer is not None and self.pids():
            # Freeze first so a forking tree cannot make new pids between our
            # read of cgroup.procs and the kills; killed tasks die on thaw.
            try:
                (freezer / "freezer.state").write_text("FROZEN")
                for _ in range(100):
                    if (freezer / "freezer.state").read_text().strip() == "FROZEN":
                        break
                    await anyio.sleep(0.005)
                kill_pids(self.pids())
            finally:
                (freezer / "freezer.state").write_text("THAWED")
        for _ in range(400):
            left = self.pids()
            if not left:
                return
            kill_pids(left)
            await anyio.sleep(0.005)
        log.warning("sandbox %s: processes %s survived SIGKILL", self.name, self.pids())

    async def remove(self) -> None:
        for directory in self.dirs.values():
            if not await rmdir_retrying(directory):
                log.warning("sandbox %s: could not remove %s", self.name, directory)


class CgroupV1Driver(SandboxDriver):
    """Sandboxes as cgroup v1 directories under ``<mount>/<controller>/<own cgroup>/agentrt``."""

    name = "cgroup1"

    def __init__(self, mount: Path = Path("/sys/fs/cgroup"), proc_cgroup: str | None = None) -> None:
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        self.bases: dict[str, Path] = {}
        for controller in CONTROLLERS:
            hierarchy = mount / controller
            if not (hierarchy / "cgroup.procs").exists():
                continue
            base = hierarchy / own_cgroup(controller, proc_cgroup).lstrip("/") / "agentrt"
            try:
                base.mkdir(exist_ok=True)
            except OSError:
                continue
            if os.access(base, os.W_OK):
                self.bases[controller] = base
        missing = [c for c in REQUIRED if c not in self.bases]
        if missing:
            raise OSError(f"cgroup v1: no writable {', '.join(missing)} hierarchy under {mount}")
        if swept := sweep_stale(list(self.bases.values())):
            log.warning("removed %d call cgroups left by runtimes that died", swept)

    def close(self) -> None:
        for base in self.bases.values():
            try:
                base.rmdir()  # only if empty: other runtimes may share it
            except OSError:
                continue

    def describe(self) -> str:
        return f"cgroup1 ({', '.join(f'{c}={p}' for c, p in self.bases.items())})"

    def create(self, name: str, limits: Limits) -> Sandbox:
        dirs: dict[str, Path] = {}
        try:
            for controller, base in self.bases.items():
                base.mkdir(exist_ok=True)  # another runtime's exit may have removed it
                directory = base / name
                directory.mkdir()
                dirs[controller] = directory
            memory = dirs.get("memory")
            if memory is not None and limits.memory_bytes is not None:
                (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
                memsw = memory / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(limits.memory_bytes))
            cpu = dirs.get("cpu")
            if cpu is not None and limits.cpu is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(max(1000, round(limits.cpu * CPU_PERIOD_US))))
            pids = dirs.get("pids")
            if pids is not None and limits.pids is not None:
                (pids / "pids.max").write_text(str(limits.pids))
        except OSError:
            for directory in dirs.values():
                try:
                    directory.rmdir()
                except OSError:
                    log.warning("sandbox %s: could not remove %s", name, directory)
            raise
        return CgroupV1Sandbox(name, limits, dirs)

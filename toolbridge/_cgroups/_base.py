"""The interface every sandbox backend implements (cgroup v2, cgroup v1, rlimits).

A :class:`SandboxDriver` is chosen once at start (:func:`toolbridge.sandbox_driver`);
it creates one :class:`Sandbox` per tool call.  The call's child process is
attached to the sandbox *before* it runs any tool code, so its whole process
tree is limited, measured and, at the end, killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .._limits import Limits

__all__ = ["Sandbox", "SandboxDriver", "SandboxStats", "read_int", "read_keyed"]


@dataclass(frozen=True, slots=True)
class SandboxStats:
    """What a sandbox measured; ``None`` where the backend cannot tell.

    ``cpu_s`` is CPU seconds of the whole tree, ``peak_memory_bytes`` the
    highest memory charge of the tree, ``oom_killed`` whether the kernel
    killed a process of it for memory, ``pids_limited`` whether a fork or
    thread creation was refused by the pids limit.
    """

    cpu_s: float | None = None
    peak_memory_bytes: int | None = None
    oom_killed: bool = False
    pids_limited: bool = False


@dataclass(frozen=True, slots=True)
class RunnerSetup:
    """What the child applies to itself before it reads the call (rlimit backend only)."""

    #: ``resource.RLIMIT_*`` name -> limit; ``"RLIMIT_AS"`` is added on top of
    #: what the child already maps when it applies it.
    rlimits: dict[str, int] = field(default_factory=dict)


class Sandbox(ABC):
    """The limits and accounting of one tool call; a driver makes it with :meth:`SandboxDriver.create`."""

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits

    def runner_setup(self) -> RunnerSetup:
        """Limits the child applies to itself; cgroup backends need none."""
        return RunnerSetup()

    @abstractmethod
    def attach(self, pid: int) -> None:
        """Move process ``pid`` (not yet running tool code) into the sandbox."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes now in the sandbox."""

    @abstractmethod
    def stats(self) -> SandboxStats:
        """Usage so far; call before :meth:`remove`."""

    @abstractmethod
    async def kill(self) -> None:
        """SIGKILL every process in the sandbox and wait until none is left (bounded to ~2 s)."""

    @abstractmethod
    async def remove(self) -> None:
        """Delete the sandbox (its cgroup directories); call after :meth:`kill`.  Never raises."""


class SandboxDriver(ABC):
    """A backend that makes sandboxes; one per process, chosen at start."""

    #: ``"cgroup2"``, ``"cgroup1"`` or ``"rlimit"``.
    name: str = ""

    @abstractmethod
    def create(self, name: str, limits: Limits) -> Sandbox:
        """A new, empty sandbox named ``name`` (unique per call) with ``limits``."""

    def close(self) -> None:  # noqa: B027 - optional hook: most backends make nothing for themselves
        """Remove what the driver made for itself (its base cgroups) if no call uses them; at exit."""

    def describe(self) -> str:
        """One line for logs: the backend and where it puts cgroups."""
        return self.name


def read_int(path: Path) -> int | None:
    """An integer control file (``max`` -> None); None when it is missing or unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text in ("", "max"):
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file (``key value`` per line, e.g. ``memory.events``); {} when missing."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def read_pids(path: Path) -> list[int]:
    """The pids in a ``cgroup.procs`` file; [] when it is gone."""
    try:
        return [int(p) for p in path.read_text().split()]
    except (OSError, ValueError):
        return []


def kill_pids(pids: list[int]) -> None:
    """SIGKILL each pid, ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        except PermissionError:
            continue


async def rmdir_retrying(path: Path, *, attempts: int = 50) -> bool:
    """rmdir a cgroup directory; the kernel answers EBUSY for a moment after its last task exits."""
    delay = 0.0005
    for _ in range(attempts):
        if _try_rmdir(path):
            return True
        await anyio.sleep(delay)
        delay = min(delay * 2, 0.05)  # usually free within a millisecond; give up after ~2 s
    return False


def _try_rmdir(path: Path) -> bool:
    # A cgroupfs rmdir is an in-memory operation: no need for a worker thread.
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def sweep_stale(bases: list[Path]) -> int:
    """Kill and remove call cgroups left by runtimes that died (names start with their pid).

    Called when a driver starts, so a crashed runtime's tools do not run on
    and its directories do not pile up.  Returns how many were removed.
    """
    removed = 0
    for base in bases:
        try:
            entries = [d for d in base.iterdir() if d.is_dir()]
        except OSError:
            continue
        for directory in entries:
            owner = directory.name.split("-", 1)[0]
            if not owner.isdigit() or int(owner) == os.getpid() or Path(f"/proc/{owner}").exists():
                continue
            kill_pids(read_pids(directory / "cgroup.procs"))
            freezer_state = directory / "freezer.state"
            if freezer_state.exists():
                with contextlib.suppress(OSError):
                    freezer_state.write_text("THAWED")  # a frozen task cannot die
            removed += _try_rmdir(directory)
    return removed

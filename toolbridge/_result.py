"""The outcome of one tool call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = ["ErrorKind", "ToolError", "ToolResult", "ToolUsage"]

#: Why a call failed: ``invalid_args`` (the model's arguments do not match the
#: schema), ``timeout``, ``exception`` (the tool raised), and for tools run in
#: a child process ``oom`` (memory limit), ``pids`` (process/thread limit) and
#: ``exit`` (the child died without an answer, or a shell command exited non-zero).
ErrorKind: TypeAlias = Literal["oom", "timeout", "pids", "exit", "invalid_args", "exception"]


@dataclass(frozen=True, slots=True)
class ToolError:
    """What went wrong, in words a model can act on."""

    kind: ErrorKind
    message: str


@dataclass(frozen=True, slots=True)
class ToolUsage:
    """Resources one call used: seconds of wall and CPU time, peak memory in bytes.

    For ``isolation="process"`` tools these are the call's cgroup's figures
    for its whole process tree: ``cpu_s`` from cpuacct/cpu.stat,
    ``peak_memory_bytes`` the highest memory charge (memory the interpreter
    mapped before the child entered the cgroup is not charged), and
    ``oom_killed`` whether the kernel killed a process of the tree for memory.
    Under the rlimit fallback they are the child's own rusage.
    ``peak_memory_bytes`` is ``None`` when it cannot be measured (inline tools
    share the runtime's process, so ``cpu_s`` is then the whole process's).
    """

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_memory_bytes: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True, slots=True)
class ToolResult:
    """``ok`` with ``value``, or not ``ok`` with ``error``; ``usage`` always."""

    ok: bool
    value: Any = None
    error: ToolError | None = None
    usage: ToolUsage = field(default_factory=ToolUsage)

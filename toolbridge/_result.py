"""The outcome of one tool call, and what a model is shown of it."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ErrorKind", "ToolError", "ToolResult", "ToolUsage", "render_tool_value"]


class ErrorKind(enum.StrEnum):
    """Why a tool call failed: every kind a model may see in a tool message.

    The members are strings (``ErrorKind.TIMEOUT == "timeout"``), so they go
    into JSON, span attributes and events as they are.  Who produces which:

    - :func:`run_tool` and the sandbox: ``oom`` (memory limit), ``timeout``
      (the tool's time limit, or its CPU-time budget under rlimits), ``pids``
      (process/thread limit), ``exit`` (the child died without an answer, or a
      shell command exited non-zero), ``invalid_args`` (the model's arguments
      do not match the schema), ``exception`` (the tool raised, or no sandbox
      could be made for it);
    - :meth:`ToolSet.run`: ``unknown_tool`` (the model named no tool of the set);
    - the runtime: ``cancelled`` (a tool call cancelled before it finished) and
      ``repeated`` (an agent loop declined to rerun a call identical to one that
      already succeeded, and showed the earlier result).
    """

    OOM = "oom"
    TIMEOUT = "timeout"
    PIDS = "pids"
    EXIT = "exit"
    INVALID_ARGS = "invalid_args"
    EXCEPTION = "exception"
    UNKNOWN_TOOL = "unknown_tool"
    CANCELLED = "cancelled"
    REPEATED = "repeated"


def render_tool_value(value: object) -> str:
    """How a tool's return value is shown to the model: strings as-is, the rest as JSON (``repr`` if that fails)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):  # e.g. a circular structure, or non-string dict keys json cannot take
        return repr(value)


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
    ``wall_s`` is read from the event loop's clock for every tool, inline or
    isolated (virtual seconds under a virtual-time loop).
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

    @property
    def content(self) -> str:
        """The text of the tool message a model is shown for this call.

        ``ok``: the value (:func:`render_tool_value`); otherwise
        ``"error (<kind>): <message>"``.
        """
        if self.ok:
            return render_tool_value(self.value)
        if self.error is None:  # not ok without a reason: only a hand-built result can be this
            return "error: the tool failed"
        return f"error ({self.error.kind}): {self.error.message}"

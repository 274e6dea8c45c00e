"""Shell commands as tools: ``toolbridge.shell``."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from ._errors import ShellFailed
from ._limits import Limits
from ._tool import Tool

__all__ = ["ShellTool", "shell"]

#: Characters of each output stream shown to the model.
OUTPUT_CHARS = 4000


def _clip(text: str) -> str:
    return text if len(text) <= OUTPUT_CHARS else f"...[{len(text) - OUTPUT_CHARS} chars cut]...{text[-OUTPUT_CHARS:]}"


def run_command(command: Annotated[str, Field(description="a /bin/sh command line")]) -> dict[str, Any]:
    """Run ``command`` with /bin/sh in the tool's sandbox; its stdout, stderr and exit code."""
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, errors="replace", check=False)
    out = {"exit_code": done.returncode, "stdout": _clip(done.stdout), "stderr": _clip(done.stderr)}
    if done.returncode != 0:
        raise ShellFailed(f"exit code {done.returncode}; stdout: {out['stdout']!r}; stderr: {out['stderr']!r}")
    return out


class ShellTool(Tool):
    """A tool whose one argument is a shell command, always run with ``isolation="process"``."""

    def call_label(self, kwargs: Mapping[str, Any]) -> str:
        command = str(kwargs.get("command", ""))
        return f"command {command[:200]!r}"


def shell(
    name: str = "shell",
    *,
    description: str = "Run a shell command (/bin/sh) and return its exit code, stdout and stderr.",
    limits: Limits | None = None,
) -> ShellTool:
    """A tool that runs a model's shell command in its own sandbox (cgroup).

    The command's whole process tree shares ``limits`` (default: 256 MiB,
    1 core, 64 pids, 30 s).  A non-zero exit status comes back as an error
    of kind ``"exit"`` whose message holds the status and the output.
    """
    limits = limits or Limits(memory="256M", cpu=1.0, pids=64, timeout_s=30)
    return ShellTool(run_command, name=name, description=description, limits=limits, isolation="process")

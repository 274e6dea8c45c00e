"""Running the ``agentrt`` command line from a benchmark: one subprocess, bounded in time, quiet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def agentrt(*args: str, timeout_s: float) -> tuple[bool, str]:
    """Run ``agentrt ARGS`` from the repository root; (exit code 0, its stdout or why it failed).

    vLLM logs at warnings only.  On a timeout the whole process group is
    killed (the engine core is a child process of the replay).
    """
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    argv = [sys.executable, "-m", "runtime._cli", *args]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return False, f"timed out after {timeout_s:.0f} s"
    if proc.returncode != 0:
        return False, f"exit code {proc.returncode}: {(err or out).strip()[-1500:]}"
    return True, out

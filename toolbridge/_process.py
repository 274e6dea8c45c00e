"""Running one tool call in a child process inside its own sandbox (cgroup).

Sequence, chosen so that no tool code runs unconfined: create the call's
cgroup with its limits; start the runner (a small stdlib script) which blocks
reading its stdin; write its pid into the cgroup; only then send the
pickled call.  When the runner exits, times out or the caller is cancelled,
every process left in the cgroup is killed and the cgroup removed, in a
``finally`` shielded from cancellation.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import cloudpickle
from anyio.abc import ByteReceiveStream, Process

from ._cgroups import Sandbox, SandboxDriver, SandboxStats, sandbox_driver
from ._limits import Limits
from ._result import ErrorKind, ToolError, ToolResult, ToolUsage

__all__ = ["run_isolated"]

RUNNER = Path(__file__).with_name("_runner.py")
#: How much of the child's stderr is kept for error messages, in bytes.
STDERR_TAIL = 4096
_counter = itertools.count(1)


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


async def _drain(stream: ByteReceiveStream | None, sink: bytearray, cap: int | None = None) -> None:
    if stream is None:
        return
    async for chunk in stream:
        sink.extend(chunk)
        if cap is not None and len(sink) > 2 * cap:
            del sink[:-cap]


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


async def run_isolated(
    fn: Any,
    kwargs: dict[str, Any],
    *,
    name: str,
    is_async: bool,
    limits: Limits,
    what: str | None = None,
    driver: SandboxDriver | None = None,
) -> ToolResult:
    """Run ``fn(**kwargs)`` in a sandboxed child process; never raises for failures of the call.

    ``what`` names the call in error messages (a shell command, say);
    defaults to the tool ``name``.  Cancellation of the caller propagates,
    after the child's whole process tree is killed and its cgroup removed.
    """
    driver = driver or sandbox_driver()
    what = what or name
    payload = cloudpickle.dumps((fn, kwargs, is_async))
    try:
        sandbox: Sandbox = driver.create(f"{os.getpid()}-{next(_counter)}-{name}"[:200], limits)
    except OSError as exc:
        # The host's problem, not the model's; still a result, so an agent loop goes on.
        return ToolResult(False, error=ToolError(ErrorKind.EXCEPTION, f"cannot create a sandbox for {what}: {exc}"))
    # The event loop's clock, as for inline tools (run_tool): every tool is
    # timed by the clock the runtime and the engines use, so under a
    # virtual-time loop (trace replay) isolated calls too report, and teach the
    # duration predictor, seconds of that clock rather than of time.monotonic().
    started = anyio.current_time()
    answer = bytearray()
    stderr = bytearray()
    process: Process | None = None
    timed_out = False
    stats = SandboxStats()
    wall_s = 0.0
    try:
        process = await anyio.open_process(
            [sys.executable, "-I", str(RUNNER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            sandbox.attach(process.pid)
        except OSError as exc:
            # Never run the call unconfined: the child has read nothing yet, so it dies harmlessly.
            process.kill()
            await process.wait()
            return ToolResult(False, error=ToolError(ErrorKind.EXCEPTION, f"cannot place {what} in its sandbox: {exc}"))
        header = json.dumps({"sys_path": sys.path, "rlimits": sandbox.runner_setup().rlimits}).encode()
        assert process.stdin is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stdout, answer)
            tg.start_soon(_drain, process.stderr, stderr, STDERR_TAIL)
            with anyio.move_on_after(limits.timeout_s if limits.timeout_s is not None else float("inf")) as scope:
                try:
                    await process.stdin.send(_frame(header) + _frame(payload))
                    await process.stdin.aclose()
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # the child died early; its exit status says why
                await process.wait()
            timed_out = scope.cancelled_caught
            wall_s = anyio.current_time() - started
            # The tool is over when its first process exits: whatever it left
            # running (a background job, a grandchild after a timeout) goes too,
            # which also closes the pipes the readers wait on.
            await sandbox.kill()
            stats = sandbox.stats()
            with anyio.move_on_after(2):
                await process.wait()
            tg.cancel_scope.deadline = anyio.current_time() + 1.0
    finally:
        with anyio.CancelScope(shield=True):
            if process is not None and process.returncode is None:
                await sandbox.kill()
                with anyio.move_on_after(2):
                    await process.wait()
            if process is not None:
                await process.aclose()
            await sandbox.remove()
    return _result(
        answer=bytes(answer),
        stderr=bytes(stderr),
        returncode=process.returncode,
        timed_out=timed_out,
        stats=stats,
        wall_s=wall_s,
        limits=limits,
        what=what,
    )


def _result(
    *,
    answer: bytes,
    stderr: bytes,
    returncode: int | None,
    timed_out: bool,
    stats: SandboxStats,
    wall_s: float,
    limits: Limits,
    what: str,
) -> ToolResult:
    reply: tuple[Any, ...] | None = None
    if answer:
        try:
            reply = pickle.loads(answer)
        except Exception:
            reply = None
    child_usage: dict[str, Any] = reply[2 if reply[0] == "ok" else 4] if reply else {}
    peak = stats.peak_memory_bytes if stats.peak_memory_bytes is not None else child_usage.get("max_rss_bytes")
    cpu_s = stats.cpu_s if stats.cpu_s is not None else float(child_usage.get("cpu_s", 0.0))
    usage = ToolUsage(wall_s=wall_s, cpu_s=cpu_s, peak_memory_bytes=peak, oom_killed=stats.oom_killed)
    tail = stderr.decode("utf-8", "replace").strip()[-1000:]

    def failed(kind: ErrorKind, message: str) -> ToolResult:
        return ToolResult(False, error=ToolError(kind, message), usage=usage)

    if timed_out:
        return failed(ErrorKind.TIMEOUT, f"{what} timed out after {limits.timeout_s} s; its processes were killed")
    if returncode == -signal.SIGXCPU:
        return failed(ErrorKind.TIMEOUT, f"{what} used up its CPU-time budget (rlimit) and was killed")
    memory_error = reply is not None and reply[0] == "error" and reply[1] == "MemoryError"
    if stats.oom_killed or memory_error:
        return failed(
            ErrorKind.OOM,
            f"{what} ran out of memory: limit {_size(limits.memory_bytes)}, peak {_size(peak)}; "
            "use less memory (stream or process the data in smaller pieces)",
        )
    if reply is not None and reply[0] == "ok":
        return ToolResult(True, value=reply[1], usage=usage)
    if stats.pids_limited:
        detail = f" ({reply[1]}: {reply[2]})" if reply is not None else ""
        return failed(
            ErrorKind.PIDS,
            f"{what} hit its limit of {limits.pids} processes/threads{detail}; start fewer processes",
        )
    if reply is not None:
        if reply[5] == ErrorKind.EXIT:  # the runner sends the tool's own error_kind as a plain str
            return failed(ErrorKind.EXIT, f"{what} failed: {reply[2]}")
        return failed(ErrorKind.EXCEPTION, f"{reply[1]}: {reply[2]}")
    return failed(
        ErrorKind.EXIT, f"{what} {_exit_text(returncode)} without a result" + (f"; stderr: {tail}" if tail else "")
    )

"""Isolated tool calls on this host's real cgroups (v1 here): limits, kills, clean-up.

Skipped only where no cgroup is writable (the rlimit backend is tested on its own).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from toolbridge import (
    ErrorKind,
    Limits,
    RlimitDriver,
    SandboxDriver,
    run_tool,
    sandbox_driver,
    shell,
    tool,
)


@pytest.fixture(scope="module")
def driver() -> SandboxDriver:
    chosen = sandbox_driver()
    if chosen.name == "rlimit":
        pytest.skip("no writable cgroup on this host (the rlimit fallback was selected)")
    return chosen


def _call_dirs(driver: SandboxDriver) -> list[Path]:
    """Cgroup directories of this process's calls that still exist."""
    bases = list(getattr(driver, "bases", {}).values()) or [driver.base]  # type: ignore[attr-defined]
    prefix = f"{os.getpid()}-"
    return [d for base in bases for d in base.iterdir() if d.is_dir() and d.name.startswith(prefix)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture(autouse=True)
def no_leaks(driver: SandboxDriver) -> object:
    yield
    assert _call_dirs(driver) == []


@tool(limits=Limits(memory="64M", cpu=0.5, pids=32, timeout_s=10), isolation="process")
def crunch(n: int) -> int:
    """Double n in a child process."""
    return n * 2


@tool(limits=Limits(memory="64M", timeout_s=20), isolation="process")
def hog(mb: int) -> int:
    """Allocate and touch mb MiB."""
    blocks = [bytearray(1 << 20) for _ in range(mb)]
    return len(blocks)


@tool(limits=Limits(pids=16, timeout_s=20), isolation="process")
def fork_bomb(most: int) -> int:
    """Fork up to `most` sleeping children (bounded: the test must be safe without a pids limit)."""
    children = 0
    for _ in range(most):
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children += 1
    return children


@tool(limits=Limits(cpu=0.2, timeout_s=20), isolation="process")
def busy(seconds: float) -> float:
    """Spin for `seconds` of wall time."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1
    return seconds


@tool(limits=Limits(timeout_s=1.0), isolation="process")
def spawn_and_hang(pid_file: str) -> None:
    """Start a grandchild in its own session (as a daemon would), record its pid, hang."""
    grandchild = subprocess.Popen(["sleep", "60"], start_new_session=True)
    Path(pid_file).write_text(str(grandchild.pid))
    time.sleep(60)


@tool(limits=Limits(timeout_s=30), isolation="process")
def record_and_hang(pid_file: str) -> None:
    """Record this process's pid, then hang."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(60)


async def test_contract_as_written(driver: SandboxDriver) -> None:
    result = await run_tool(crunch, {"n": 3})
    assert result.ok and result.value == 6 and result.error is None
    usage = result.usage
    assert usage.wall_s > 0 and usage.cpu_s > 0 and not usage.oom_killed
    assert usage.peak_memory_bytes is not None and 0 < usage.peak_memory_bytes < 64 << 20
    invalid = await run_tool(crunch, {"n": "three"})
    assert invalid.error is not None and invalid.error.kind == "invalid_args"


async def test_async_tool_and_exception_in_child(driver: SandboxDriver) -> None:
    @tool(isolation="process", limits=Limits(timeout_s=10))
    async def pid_after_sleep() -> int:
        await asyncio.sleep(0.01)
        return os.getpid()

    @tool(isolation="process")
    def boom() -> None:
        raise ValueError("kaput")

    result = await run_tool(pid_after_sleep, {})
    assert result.ok and result.value != os.getpid()
    failed = await run_tool(boom, {})
    assert failed.error is not None and (failed.error.kind, failed.error.message) == ("exception", "ValueError: kaput")


async def test_memory_hog_is_oom_killed_with_its_peak(driver: SandboxDriver) -> None:
    result = await run_tool(hog, {"mb": 512})
    assert not result.ok and result.error is not None
    assert result.error.kind == "oom", result
    assert result.usage.oom_killed
    assert result.usage.peak_memory_bytes is not None and result.usage.peak_memory_bytes >= 60 << 20
    assert "hog" in result.error.message and "limit 64.0 MiB" in result.error.message
    assert "peak 6" in result.error.message
    # The caller and later calls are fine.
    assert (await run_tool(hog, {"mb": 8})).value == 8


async def test_fork_bomb_is_stopped_by_pids(driver: SandboxDriver) -> None:
    result = await run_tool(fork_bomb, {"most": 200})
    assert not result.ok and result.error is not None
    assert result.error.kind == "pids", result
    assert "limit of 16 processes" in result.error.message


async def test_busy_loop_gets_a_fifth_of_a_core(driver: SandboxDriver) -> None:
    result = await run_tool(busy, {"seconds": 2.0})
    assert result.ok
    share = result.usage.cpu_s / result.usage.wall_s
    print(f"cpu=0.2: cpu_s={result.usage.cpu_s:.3f} wall_s={result.usage.wall_s:.3f} share={share:.3f}")
    assert 0.1 <= share <= 0.35


async def test_timeout_kills_grandchildren(driver: SandboxDriver, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = await run_tool(spawn_and_hang, {"pid_file": str(pid_file)})
    assert result.error is not None and result.error.kind == "timeout"
    assert time.monotonic() - started < 30  # the 1 s timeout, not the grandchild's 60 s sleep
    grandchild = int(pid_file.read_text())
    for _ in range(100):
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.02)
    assert not _alive(grandchild)


async def test_cancellation_kills_and_cleans_up(driver: SandboxDriver, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    task = asyncio.ensure_future(run_tool(record_and_hang, {"pid_file": str(pid_file)}))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.02)
    child = int(pid_file.read_text())
    assert _alive(child) and _call_dirs(driver)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(child)


async def test_exit_without_result(driver: SandboxDriver) -> None:
    @tool(isolation="process")
    def quits() -> None:
        os._exit(3)

    @tool(isolation="process")
    def dies() -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    quit_result = await run_tool(quits, {})
    assert quit_result.error is not None and quit_result.error.kind == "exit"
    assert "exited with status 3" in quit_result.error.message
    died = await run_tool(dies, {})
    assert died.error is not None and died.error.kind == "exit" and "SIGSEGV" in died.error.message


async def test_shell_tool(driver: SandboxDriver) -> None:
    sh = shell(limits=Limits(memory="64M", pids=16, timeout_s=5))
    ok = await run_tool(sh, {"command": "echo hello"})
    assert ok.ok and ok.value == {"exit_code": 0, "stdout": "hello\n", "stderr": ""}
    failed = await run_tool(sh, {"command": "echo out; echo err >&2; exit 4"})
    assert failed.error is not None and failed.error.kind == "exit"
    assert "exit code 4" in failed.error.message and "err" in failed.error.message
    # ShellFailed (a ToolbridgeError) raised in the child still reads as kind exit, an ErrorKind here.
    assert failed.error.kind is ErrorKind.EXIT
    assert failed.content.startswith("error (exit): command 'echo out; echo err >&2; exit 4' failed: exit code 4")
    oom = await run_tool(sh, {"command": "python3 -c 'x = bytearray(300 << 20)'"})
    assert oom.error is not None and oom.error.kind == "oom"
    assert "command \"python3 -c 'x = bytearray(300 << 20)'\"" in oom.error.message
    assert sh.openai_schema()["function"]["parameters"]["required"] == ["command"]


async def test_rlimit_fallback() -> None:
    fallback = RlimitDriver()
    ok = await run_tool(crunch, {"n": 4}, driver=fallback)
    assert ok.ok and ok.value == 8 and ok.usage.peak_memory_bytes
    oom = await run_tool(hog, {"mb": 256}, driver=fallback)
    assert oom.error is not None and oom.error.kind == "oom" and "limit 64.0 MiB" in oom.error.message
    slow = await run_tool(busy, {"seconds": 30.0}, driver=fallback)
    assert slow.error is not None and slow.error.kind == "timeout"


async def test_sandbox_failures_are_results() -> None:
    from toolbridge import Sandbox
    from toolbridge._limits import Limits as L

    class Broken(SandboxDriver):
        name = "broken"

        def create(self, name: str, limits: L) -> Sandbox:
            raise PermissionError("cgroup.procs: permission denied")

    result = await run_tool(crunch, {"n": 1}, driver=Broken())
    assert result.error is not None and result.error.kind == "exception"
    assert "cannot create a sandbox for crunch" in result.error.message


async def test_error_kind_from_the_child_is_sent_as_a_plain_str(driver: SandboxDriver) -> None:
    @tool(isolation="process", limits=Limits(timeout_s=20))
    def odd_kind() -> None:
        # A str subclass only the child knows: the answer must still unpickle in the parent.
        class Kind(str):
            pass

        class Failed(Exception):
            error_kind = Kind("exit")

        raise Failed("it failed its own way")

    @tool(isolation="process", limits=Limits(timeout_s=20))
    def not_a_kind() -> None:
        class Failed(Exception):
            error_kind = object()  # not a kind at all: ignored

        raise Failed("plain failure")

    odd = await run_tool(odd_kind, {})
    assert odd.error is not None and odd.error.kind is ErrorKind.EXIT
    assert odd.error.message == "odd_kind failed: it failed its own way"
    plain = await run_tool(not_a_kind, {})
    assert plain.error is not None and (plain.error.kind, plain.error.message) == ("exception", "Failed: plain failure")


class _TenthSpeedLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock runs at a tenth of real time, as a virtual-time loop's may."""

    def time(self) -> float:
        return super().time() / 10


def test_isolated_calls_are_timed_by_the_event_loop_clock() -> None:
    # Run on a loop of its own: the session's loop keeps its real clock.
    started = time.monotonic()
    with asyncio.Runner(loop_factory=_TenthSpeedLoop) as runner:
        result = runner.run(run_tool(crunch, {"n": 2}, driver=RlimitDriver(), predictor=None))
    real_s = time.monotonic() - started
    assert result.ok and result.value == 4
    # Loop seconds (a tenth of real ones), as inline tools report, not time.monotonic()'s.
    assert 0 < result.usage.wall_s < real_s / 3, (result.usage.wall_s, real_s)

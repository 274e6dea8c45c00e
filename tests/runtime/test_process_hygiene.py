"""No process outlives the runtime that started it; SIGTERM and SIGINT shut down cleanly.

Every subject is a real subprocess (``sys.executable``) signalled or killed
for real: ``agentrt replay --engine vllm``, a user's script with a
``Runtime``, a script that guards processes with the reaper.  The process
trees are recorded with psutil while the subject runs, and must be gone
afterwards.  Timeouts are hang guards only.
"""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Hang guards, seconds: an engine start on 2 loaded cores, and an exit after a signal.
START_GUARD_S = 600
EXIT_GUARD_S = 120


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), VLLM_LOGGING_LEVEL="WARNING", PYTHONUNBUFFERED="1")


def _default_signals() -> None:
    """In the child before it runs: SIGINT as a terminal's program gets it.

    A test run started in the background by a non-interactive shell (CI,
    ``nohup``) ignores SIGINT, and children inherit that; Python then leaves
    SIGINT ignored and the runtime, rightly, does not take it over.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Subject:
    """A subprocess whose output (stdout and stderr, or a terminal for both) is collected by a thread."""

    def __init__(self, command: list[str], *, terminal: bool = False) -> None:
        self._text: list[str] = []
        self._changed = threading.Condition()
        if terminal:
            # A terminal, so that `agentrt replay` draws its progress bar (it counts finished programs).
            primary, secondary = pty.openpty()
            env = dict(_env(), TERM="xterm", COLUMNS="160")
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=secondary,
                stderr=secondary,
                preexec_fn=_default_signals,
            )
            os.close(secondary)
            self._reader = threading.Thread(target=self._read_fd, args=(primary,), daemon=True)
        else:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_default_signals,
            )
            assert self.proc.stdout is not None
            self._reader = threading.Thread(target=self._read_fd, args=(self.proc.stdout.fileno(),), daemon=True)
        self._reader.start()

    def _read_fd(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                data = b""
            if not data:
                break
            with self._changed:
                self._text.append(data.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._text.append("")  # end of output
            self._changed.notify_all()

    @property
    def output(self) -> str:
        """Everything the subject wrote so far, terminal control sequences (a progress bar's colours) removed."""
        with self._changed:
            return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(self._text))

    def wait_output_end(self) -> str:
        """The whole output, once every process holding the subject's output is gone (a hang guard)."""
        self._reader.join(EXIT_GUARD_S)
        return self.output

    def wait_for(self, pattern: str, guard_s: float = START_GUARD_S) -> re.Match[str]:
        """Block until the output matches ``pattern``; fail if the subject exits or the hang guard runs out first."""
        deadline = time.monotonic() + guard_s
        with self._changed:
            while True:
                found = re.search(pattern, self.output)
                if found:
                    return found
                assert self.proc.poll() is None, (
                    f"subject exited ({self.proc.returncode}) before {pattern!r}:\n{self.output}"
                )
                assert time.monotonic() < deadline, f"hang guard: no {pattern!r} in {guard_s} s:\n{self.output}"
                self._changed.wait(1.0)

    def tree(self) -> list[psutil.Process]:
        """Every process below the subject now."""
        return psutil.Process(self.proc.pid).children(recursive=True)

    def exit_code(self) -> int:
        try:
            code = self.proc.wait(EXIT_GUARD_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hang guard: the subject did not exit within {EXIT_GUARD_S} s:\n{self.output}")
        self._reader.join(EXIT_GUARD_S)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def subject(command: list[str], *, terminal: bool = False) -> Iterator[Subject]:
    running = Subject(command, terminal=terminal)
    recorded: list[psutil.Process] = []
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            recorded = running.tree()
            running.kill()
            _stop(recorded)  # a failed test leaves no engine spinning either


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for p in processes:
        try:
            described.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.Error:
            described.append(str(p.pid))
    return described


def _still_alive(processes: list[psutil.Process], guard_s: float = EXIT_GUARD_S) -> list[psutil.Process]:
    """Wait (a hang guard) for ``processes`` to exit; those left alive (zombies count as gone: nobody may reap them)."""
    deadline = time.monotonic() + guard_s
    while (alive := [p for p in processes if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _stop(processes: list[psutil.Process]) -> None:
    for p in processes:
        if _alive(p):
            p.kill()


def _names(processes: list[psutil.Process]) -> str:
    return " ".join(_describe(processes))


# -- the reaper on its own (no engine) ----------------------------------------------

_GUARDING_SCRIPT = """
import subprocess, sys, time
from runtime._engines._reaper import NewChildren, reaper

sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
# A child that starts a grandchild of its own, guarded as an engine's processes are.
spawn_then_sleep = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(600)"
spawner = [sys.executable, "-c", spawn_then_sleep, *sleep]
with NewChildren() as found:
    child = subprocess.Popen(spawner)
released = subprocess.Popen(sleep)
reaper().guard(released.pid)
reaper().release(released.pid)
print("guarded", sorted(found.pids), "released", released.pid, "reaper", reaper().pid, flush=True)
time.sleep(600)
"""


def test_kill_9_of_a_guarding_process_kills_what_it_guards_and_nothing_else(tmp_path: Path) -> None:
    script = tmp_path / "guarding.py"
    script.write_text(_GUARDING_SCRIPT)
    with subject([sys.executable, str(script)]) as run:
        found = run.wait_for(r"guarded \[(\d+)\] released (\d+) reaper (\d+)")
        child, released, reaper_pid = (psutil.Process(int(pid)) for pid in found.groups())
        # The grandchild is started by the child: wait until it is there, to see the reaper follow it.
        deadline = time.monotonic() + 60
        while not child.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        (grandchild,) = child.children()
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        try:
            assert not _still_alive([child, grandchild, reaper_pid]), run.output
            assert _alive(released), "a released pid is not the reaper's to kill"
        finally:
            _stop([released, child, grandchild])
    assert "stopping its engine processes" in run.wait_output_end()


# -- SIGTERM and SIGINT to a script with a Runtime (no vLLM: a scripted engine) --------

_SCRIPTED_RUNTIME = """
import sys
import anyio
from runtime import Runtime
from runtime.testing import ScriptedEngine
from workflows import workflow


MODE = sys.argv[1]  # on | off (handle_signals) | orphan (entered by a task that ended) | stuck (a close that hangs)


class Announcing(ScriptedEngine):
    async def _aclose(self) -> None:
        if MODE == "stuck":
            print("closing", flush=True)
            await anyio.sleep(600)
        print("engine closed", flush=True)


@workflow
async def forever(ctx) -> None:
    try:
        await ctx.llm([{"role": "user", "content": "hello"}], max_tokens=4)
        print("running", flush=True)
        await anyio.sleep(600)
    finally:
        print("program stopped", flush=True)


async def main() -> None:
    rt = Runtime([Announcing()], handle_signals=MODE != "off")
    if MODE == "orphan":
        # Entered by a task that is gone when the signal comes (a web framework's lifespan), while the
        # main task serves something else.
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.__aenter__)
        rt.submit(forever)
        await anyio.sleep(600)
        return
    async with rt:
        await rt.run(forever)


if __name__ == "__main__":
    anyio.run(main)
"""


@pytest.mark.parametrize(
    ("mode", "sig", "status"),
    [("on", signal.SIGTERM, 143), ("on", signal.SIGINT, 130), ("orphan", signal.SIGTERM, 143)],
)
def test_a_signal_cancels_programs_closes_engines_and_exits_with_its_status(
    tmp_path: Path, mode: str, sig: signal.Signals, status: int
) -> None:
    script = tmp_path / "scripted.py"
    script.write_text(_SCRIPTED_RUNTIME)
    with subject([sys.executable, str(script), mode]) as run:
        run.wait_for("running")
        run.proc.send_signal(sig)
        assert run.exit_code() == status, run.output
    lines = run.output.splitlines()
    assert "program stopped" in lines and "engine closed" in lines, run.output
    assert lines.index("program stopped") < lines.index("engine closed")
    assert "Traceback" not in run.output, run.output


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    script = tmp_path / "scripted.py"
    script.write_text(_SCRIPTED_RUNTIME)
    with subject([sys.executable, str(script), "stuck"]) as run:
        run.wait_for("running")
        run.proc.send_signal(signal.SIGTERM)
        run.wait_for("closing")  # the engine's close hangs
        run.proc.send_signal(signal.SIGTERM)
        assert run.exit_code() == -signal.SIGTERM, run.output  # killed by the second signal
    assert "engine closed" not in run.output


def test_handle_signals_false_leaves_sigterm_to_the_application(tmp_path: Path) -> None:
    script = tmp_path / "scripted.py"
    script.write_text(_SCRIPTED_RUNTIME)
    with subject([sys.executable, str(script), "off"]) as run:
        run.wait_for("running")
        run.proc.send_signal(signal.SIGTERM)
        assert run.exit_code() == -signal.SIGTERM, run.output  # the default: killed by the signal
    assert "engine closed" not in run.output


# -- real engines --------------------------------------------------------------------

_ENGINE_SCRIPT = """
import sys
import anyio
from runtime import InProcessEngine, Runtime, ServerEngine
from workflows import workflow


@workflow
async def chatter(ctx) -> None:
    served = 0
    while True:
        await ctx.llm([{"role": "user", "content": "hello"}], max_tokens=16)
        served += 1
        if served == 2:
            print("serving", flush=True)


async def main() -> None:
    engines = [InProcessEngine(sys.argv[1], max_model_len=2048, engine_args={"enforce_eager": True})]
    if "--server" in sys.argv:
        engines.append(ServerEngine(sys.argv[1], max_model_len=2048, startup_timeout_s=600, connect_timeout_s=60))
    async with Runtime(engines) as rt:
        await rt.run(chatter)


if __name__ == "__main__":
    anyio.run(main)
"""


def _engine_script(tmp_path: Path) -> Path:
    script = tmp_path / "engine_script.py"
    script.write_text(_ENGINE_SCRIPT)
    return script


def _cmdline(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline() or [process.name()])
    except psutil.Error:
        return ""


def _vllm(processes: list[psutil.Process]) -> list[psutil.Process]:
    """The vLLM processes among ``processes`` (engine cores, workers, servers)."""
    return [p for p in processes if "VLLM" in _cmdline(p) or "vllm" in _cmdline(p)]


@pytest.mark.engine
def test_sigterm_to_a_script_with_an_in_process_engine_leaves_no_process(tiny_model: Path, tmp_path: Path) -> None:
    with subject([sys.executable, str(_engine_script(tmp_path)), str(tiny_model)]) as run:
        run.wait_for("serving")
        tree = run.tree()
        assert _vllm(tree), f"no engine core below the script: {_names(tree)}"
        run.proc.send_signal(signal.SIGTERM)
        assert run.exit_code() == 143, run.output
    assert not (left := _still_alive(tree)), f"left running: {_names(left)}\n{run.output}"
    assert "Traceback" not in run.output, run.output


@pytest.mark.engine
def test_kill_9_of_a_script_stops_its_engine_core_and_its_vllm_serve(tiny_model: Path, tmp_path: Path) -> None:
    with subject([sys.executable, str(_engine_script(tmp_path)), str(tiny_model), "--server"]) as run:
        run.wait_for("serving")
        tree = run.tree()
        cores = [p for p in tree if "EngineCore" in _cmdline(p)]
        servers = [p for p in tree if "vllm.entrypoints" in _cmdline(p)]
        assert len(cores) >= 2 and servers, f"expected two engine cores and a vllm serve: {_names(tree)}"
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait()
        # Nothing of the script ran after the SIGKILL: the reaper stops the engines' processes.
        assert not (left := _still_alive(tree)), f"left running: {_names(left)}\n{run.output}"
    assert "stopping its engine processes" in run.wait_output_end()


def _trace(path: Path) -> Path:
    from runtime.replay._trace import TraceCall, TraceProgram, dump_trace

    def program(pid: str, arrival_s: float, tool_s: float) -> TraceProgram:
        calls = [
            TraceCall(id="c0", new_tokens=40, output_tokens=4, tool="bash", tool_s=tool_s, tool_output_tokens=20),
            TraceCall(id="c1", new_tokens=20, output_tokens=4),
        ]
        return TraceProgram(id=pid, arrival_s=arrival_s, app="coder", system_tokens=100, calls=calls)

    # p0 finishes at once (the progress bar then shows 1/3); p1 and p2 wait in their tools when signalled.
    return dump_trace([program("p0", 0.0, 0.1), program("p1", 0.0, 600.0), program("p2", 0.5, 600.0)], path)


@pytest.mark.engine
def test_sigterm_to_agentrt_replay_on_vllm_leaves_no_process(tiny_model: Path, tmp_path: Path) -> None:
    trace = _trace(tmp_path / "trace.jsonl")
    command = [
        sys.executable,
        "-m",
        "runtime._cli",
        "replay",
        str(trace),
        "--engine",
        "vllm",
        "--model",
        str(tiny_model),
    ]
    with subject([*command, "--out", str(tmp_path / "result.json")], terminal=True) as run:
        run.wait_for(r"\b1/3\b")
        tree = run.tree()
        assert _vllm(tree), f"no engine core below agentrt replay: {_names(tree)}"
        run.proc.send_signal(signal.SIGTERM)
        assert run.exit_code() == 143, run.output
    assert not (left := _still_alive(tree)), f"left running: {_names(left)}\n{run.output}"
    assert "Traceback" not in run.output, run.output
    assert not (tmp_path / "result.json").exists()  # an interrupted replay writes no result

"""Crash and resume with real processes: ``kill -9`` of a runtime mid fan-out, then ``agentrt resume``.

The workflow (written to a file, run as a script on the tiny model with a
SQLite journal) asks the model once, fans out to three branches that each
ask the model and run a tool, then asks once more.  Branch 2's tool waits
for a file that does not exist in the first run, so the process is killed
with branches 0 and 1 journaled and branch 2 in flight.  ``agentrt
resume`` then finishes the program in a new process: every tool's effect
happens once, every step is journaled once, and the steps of the first run
are untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import psutil
import pytest

from runtime import SQLiteJournal

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_LOGGING_LEVEL": "WARNING"}
CLI = [sys.executable, "-m", "runtime._cli"]

SCRIPT = textwrap.dedent(
    '''
    import sys
    from pathlib import Path

    import anyio

    from runtime import InProcessEngine, Runtime
    from toolbridge import tool
    from workflows import Context, ToolCall, step, workflow

    HERE = Path(__file__).parent


    @tool
    async def mark(branch: int) -> str:
        """Record that this branch's side effect happened (once per call that ran to the end)."""
        if branch == 2:
            with open(HERE / "effects.log", "a") as f:
                f.write("waiting 2\\n")
            while not (HERE / "release").exists():
                await anyio.sleep(0.05)
        with open(HERE / "effects.log", "a") as f:
            f.write(f"done {branch}\\n")
        return f"marked {branch}"


    @step
    async def branch(ctx: Context, i: int) -> str:
        reply = await ctx.llm([{"role": "user", "content": f"branch {i}"}], max_tokens=4)
        message = await ctx.call_tool(ToolCall(f"c{i}", "mark", {"branch": i}), [mark])
        return f"{message.content} after {len(reply.text)} chars"


    @workflow
    async def crashy(ctx: Context) -> list[str]:
        await ctx.llm([{"role": "user", "content": "plan"}], max_tokens=4)
        parts = await ctx.gather(*(branch(ctx, i) for i in range(3)))
        await ctx.llm([{"role": "user", "content": "wrap up"}], max_tokens=4)
        return parts


    async def main(journal: str, model: str) -> None:
        engine = InProcessEngine(model, engine_args={"enforce_eager": True})
        async with Runtime([engine], journal=journal) as rt:
            handle = rt.start_program(crashy, {}, program_id="crash-me")
            print(await handle, flush=True)


    if __name__ == "__main__":
        anyio.run(main, sys.argv[1], sys.argv[2])
    '''
)


def _effects(tmp_path: Path) -> list[str]:
    log = tmp_path / "effects.log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


async def test_kill_9_mid_gather_then_resume_redoes_nothing(tmp_path: Path, tiny_model: Path) -> None:
    script = tmp_path / "crashy.py"
    script.write_text(SCRIPT)
    db = tmp_path / "runs.db"
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = await anyio.open_process(
            [sys.executable, str(script), str(db), str(tiny_model)], env=ENV, stdout=out, stderr=out
        )
    descendants: list[psutil.Process] = []
    try:
        with anyio.fail_after(240):
            # Killed once branches 0 and 1 are journaled and branch 2's tool is in flight.
            while "waiting 2" not in _effects(tmp_path) or not {"done 0", "done 1"} <= set(_effects(tmp_path)):
                assert first.returncode is None, log.read_text()[-3000:]
                await anyio.sleep(0.2)
            async with SQLiteJournal(db) as journal:
                while len([s for s in await journal.steps("crash-me") if s.kind == "step"]) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
        descendants = psutil.Process(first.pid).children(recursive=True)
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    async with SQLiteJournal(db) as journal:
        before = {s.key: s for s in await journal.steps("crash-me")}
        record = await journal.program("crash-me")
    assert record is not None and record.state.value == "running", "a killed runtime leaves its program running"
    assert {"0", "g0.0-0", "g0.1-0"} <= set(before), sorted(before)
    assert "g0.2-0" not in before and "g0.2-0/1" not in before

    # The engine processes of the killed runtime go too (they notice their parent is gone).
    with anyio.fail_after(60):
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in descendants):  # noqa: ASYNC110
            await anyio.sleep(0.2)

    (tmp_path / "release").touch()
    with anyio.fail_after(300):
        resumed = await anyio.run_process(
            [*CLI, "resume", "crash-me", "--journal", str(db), "--model", str(tiny_model)], env=ENV, check=False
        )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    result = json.loads(resumed.stdout)
    assert [r.split(" after")[0] for r in result] == ["marked 0", "marked 1", "marked 2"]

    # Each tool's effect happened once: branches 0 and 1 were replayed, branch 2 ran once, after the resume.
    effects = _effects(tmp_path)
    assert sorted(e for e in effects if e.startswith("done")) == ["done 0", "done 1", "done 2"], effects
    async with SQLiteJournal(db) as journal:
        after = await journal.steps("crash-me")
        record = await journal.program("crash-me")
    assert record is not None and record.state.value == "succeeded" and record.runs == 2
    keys = [s.key for s in after]
    assert len(keys) == len(set(keys)), "no step was journaled twice"
    for step in after:
        if step.key in before:
            assert step.run == 1 and step.recorded_at == before[step.key].recorded_at
        else:
            assert step.run == 2
    # Branch 2's LLM call had finished before the kill: replayed.  Its tool, its step and the last call ran.
    assert "g0.2-0/0" in before
    assert {s.key for s in after if s.run == 2} == {"g0.2-0/1", "g0.2-0", "1"}


def test_agentrt_runs_lists_and_prunes(tmp_path: Path) -> None:
    """``agentrt runs`` reads the journal another process wrote; ``prune`` deletes old finished runs."""
    from runtime import JournalState, ProgramRecord

    db = tmp_path / "runs.db"
    now = time.time()

    async def write() -> None:
        async with SQLiteJournal(db) as journal:
            ages = [("succeeded", 10 * 86400), ("interrupted", 11 * 86400), ("failed", 60)]
            for i, (state, age) in enumerate(ages):
                await journal.create_program(
                    ProgramRecord(
                        id=f"p{i}",
                        workflow="wf",
                        workflow_ref="mod:wf",
                        inputs=b"",
                        deadline_s=None,
                        priority=0,
                        state=JournalState(state),
                        created_at=now - age,
                        updated_at=now - age,
                    )
                )

    anyio.run(write)

    def agentrt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args, "--journal", str(db)], capture_output=True, text=True, env=ENV)

    listed = agentrt("runs", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["p2", "p0", "p1"] and rows[0]["state"] == "failed"
    pruned = agentrt("runs", "prune", "--older-than", "7d")
    assert pruned.returncode == 0 and "deleted 1 program(s)" in pruned.stdout, pruned.stdout + pruned.stderr
    shown = agentrt("runs", "show", "p1")
    assert shown.returncode == 0 and "interrupted" in shown.stdout, "interrupted runs are kept by default"
    missing = agentrt("runs", "show", "p0")
    assert missing.returncode == 1 and "no program 'p0'" in missing.stderr

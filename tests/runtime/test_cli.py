"""The agentrt command line, run as a user runs it (subprocess, real engine)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
AGENTRT = [sys.executable, "-m", "runtime._cli"]


def agentrt(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    return subprocess.run([*AGENTRT, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def test_models_list(tiny_model: Path) -> None:
    out = agentrt("models", "list")
    assert out.returncode == 0, out.stderr
    assert any(line.split()[:2] == ["tiny", "prepared"] for line in out.stdout.splitlines())


def test_run_rejects_bad_inputs_before_starting_engines() -> None:
    out = agentrt("run", "examples/summarize.py:pipeline", "--input", "docs=3", "--model", "tiny", timeout=60)
    assert out.returncode == 1
    assert "invalid inputs: docs: Input should be a valid list" in out.stderr


def test_run_rejects_a_target_that_is_not_a_workflow() -> None:
    out = agentrt("run", "examples/summarize.py:summarize", timeout=60)
    assert out.returncode != 0 and "is not a @workflow" in out.stderr


@pytest.mark.engine
def test_run_workflow_from_a_file_verbose(tiny_model: Path) -> None:
    out = agentrt(
        "run", "examples/summarize.py:pipeline", "--input", 'docs=["alpha text", "beta text"]', "--model", "tiny", "-v"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # -v or not, stdout is the result only
    assert isinstance(result, list) and len(result) == 2
    assert "program prog-" in out.stderr and "succeeded" in out.stderr
    # -v shows vLLM's own lines, of this process and of the engine core it spawns (quiet without: test_demo.py).
    assert re.search(r"\(EngineCore pid=\d+\) (INFO|WARNING) ", out.stderr), out.stderr[-3000:]
    assert re.search(r"\(MainProcess pid=\d+\) (INFO|WARNING) ", out.stderr), out.stderr[-3000:]


@pytest.mark.engine
def test_an_engine_that_fails_to_start_says_why(tiny_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for path in tiny_model.glob("*.json"):  # the config and tokenizer, not the weights
        shutil.copy(path, broken / path.name)
    out = agentrt(
        "run", "examples/summarize.py:pipeline", "--input", 'docs=["a"]', "--model", str(broken), "--no-journal"
    )
    assert out.returncode == 1
    assert f"agentrt: error: in-process vLLM engine on {broken} failed to start" in out.stderr, out.stderr[-3000:]
    # The cause, raised in vLLM's worker process, is shown from the start-up log, which is kept.
    found = re.search(r"what vLLM wrote while the engines started .* in (\S+\.log)\):", out.stderr)
    assert found, out.stderr[-3000:]
    log = Path(found.group(1))
    try:
        assert f"Cannot find any model weights with `{broken}`" in out.stderr, out.stderr[-3000:]
        assert "Cannot find any model weights" in log.read_text()
    finally:
        log.unlink()


@pytest.mark.engine
def test_example_script_with_run_sync(tiny_model: Path) -> None:
    """examples/summarize.py uses Runtime.run_sync on Runtime.local(); AGENTRT_MODEL picks the model."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", AGENTRT_MODEL="tiny")
    out = subprocess.run(
        [sys.executable, "examples/summarize.py"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len([line for line in out.stdout.splitlines() if line.startswith("- ")]) == 2


def test_the_start_up_log_is_shown_without_traceback_frames() -> None:
    from runtime._cli._quiet import summary

    log = [
        "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
        "(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953] WorkerProc failed to start.",
        "(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953] Traceback (most recent call last):",
        '(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953]   File "x.py", line 920, in worker_main',
        "(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953]     worker = WorkerProc(*args, **kwargs)",
        "(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953]              ^^^^^^^^^^^^^^^^^^^^^^^^^^^",
        "(Worker pid=7) ERROR 12-07 05:46:03 [multiproc_executor.py:953] RuntimeError: Cannot find any model weights",
        "Process EngineCore:",
        "Traceback (most recent call last):",
        '  File "/usr/lib/python3.11/multiprocessing/process.py", line 314, in _bootstrap',
        "    self.run()",
        "",
        "Exception: WorkerProc initialization failed due to an exception in a background process.",
    ]
    assert summary(log) == [log[0], log[1], log[6], log[7], log[12]]

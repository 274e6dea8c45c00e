"""The agentrt command line, run as a user runs it (subprocess, real engine)."""

from __future__ import annotations

import json
import os
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
def test_run_workflow_from_a_file(tiny_model: Path) -> None:
    out = agentrt(
        "run", "examples/summarize.py:pipeline", "--input", 'docs=["alpha text", "beta text"]', "--model", "tiny"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert isinstance(result, list) and len(result) == 2
    assert "program prog-" in out.stderr and "succeeded" in out.stderr


@pytest.mark.engine
def test_demo_runs_the_agent(tiny_model: Path) -> None:
    out = agentrt("demo", "--model", "tiny")
    assert out.returncode == 0, out.stderr[-3000:]
    # The engine shut down quietly (vLLM 0.32 logs its own output handler's
    # end as a crash unless it is stopped first: InProcessEngine._aclose).
    assert "output_handler failed" not in out.stderr, out.stderr[-3000:]
    assert "answer:" in out.stdout and "turn 1:" in out.stdout
    assert "cached" in out.stdout and "demo-agent" in out.stdout
    assert "Text-to-SQL on Chinook" in out.stdout and "linked tables:" in out.stdout and "text2sql" in out.stdout


@pytest.mark.engine
def test_example_script_with_run_sync(tiny_model: Path) -> None:
    """examples/summarize.py uses Runtime.run_sync on Runtime.local(); AGENTRT_MODEL picks the model."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", AGENTRT_MODEL="tiny")
    out = subprocess.run(
        [sys.executable, "examples/summarize.py"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len([line for line in out.stdout.splitlines() if line.startswith("- ")]) == 2

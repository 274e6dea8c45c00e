"""``agentrt demo``: the agent's first turn calls a tool, the output says which, and the run ends cleanly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import NodeKind, ToolCallStarted
from runtime._cli._demo_agent import DEMO_QUESTION, demo_workflow, describe_demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.engine
async def test_demo_first_turn_calls_a_tool_and_the_output_names_the_call(rt: Any) -> None:
    handle = rt.submit(demo_workflow, question=DEMO_QUESTION)
    started = [e async for e in handle.events() if isinstance(e, ToolCallStarted)]
    result = await handle
    nodes = list(handle.program.nodes.values())
    (agent,) = (n for n in nodes if n.kind is NodeKind.AGENT)
    turn_1, tool, turn_2 = (n for n in nodes if n.parent == agent.id)
    # The first LLM call is followed by the tool call it made, then the answering turn: whatever the
    # (random-weight) model writes, the first turn is constrained to a tool call.
    assert (turn_1.kind, tool.kind, turn_2.kind) == (NodeKind.LLM, NodeKind.TOOL, NodeKind.LLM)
    assert turn_1.id in tool.after and tool.id in turn_2.after
    assert result.stopped == "answer" and len(result.turns) == 2
    (call,) = started
    assert call.node_id == tool.id and call.name == tool.name
    text = describe_demo(result)
    arguments = ", ".join(f"{k}={json.dumps(v)}" for k, v in call.arguments.items())
    assert text.splitlines()[0] == f"turn 1: tool call {tool.name}({arguments})"
    assert f"   -> {tool.name} " in text and f"answer: {result.answer}" in text


#: A line vLLM logs: ``(EngineCore pid=42) WARNING 12-07 05:46:05 [core.py:1510] ...``.
VLLM_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d [\d:]+ \[")


@pytest.mark.engine
def test_demo_command_exits_cleanly_and_quietly(tiny_model: Path) -> None:
    # As a user runs it: no vLLM logging variable set (the tests' conftest sets one).
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_LEVEL", "TORCH_CPP_LOG_LEVEL")}
    out = subprocess.run(
        [sys.executable, "-m", "runtime._cli", "demo", "--model", "tiny", "--no-sql"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "turn 1: tool call " in out.stdout, out.stdout
    # The engine core is shut down, not killed, and nothing fails on the way.
    for unwanted in ("Traceback", "EngineDeadError", "force killing"):
        assert unwanted not in out.stdout + out.stderr, out.stderr[-3000:]
    # Nothing of vLLM's, torch's or Triton's start-up (logs, warnings, progress bars) reaches the terminal:
    # agentrt's lines only (`agentrt demo -v` shows vLLM's: tests/runtime/test_cli.py).
    assert not VLLM_LINE.search(out.stderr), out.stderr[-3000:]
    assert [line for line in out.stderr.splitlines() if not line.startswith("agentrt")] == [], out.stderr[-3000:]

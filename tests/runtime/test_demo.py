"""``agentrt demo``: the agent's first turn calls a tool, the output says which, the run ends cleanly and
quietly, and its traces reach an OTLP receiver and the ``--traces-out`` file (one demo run for all of it)."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import pytest_asyncio
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from runtime import NodeKind, ToolCallStarted
from runtime._cli._demo_agent import DEMO_QUESTION, demo_workflow, describe_demo
from tests._otlp import otlp_receiver

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


@dataclass(frozen=True)
class DemoRun:
    """One ``agentrt demo`` run as a user starts it, with its traces sent to a receiver and written to a file."""

    returncode: int
    stdout: str
    stderr: str
    spans: list[tuple[str, Span]]
    traces_file: Path


@pytest_asyncio.fixture(scope="module")
async def demo_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DemoRun]:
    """The demo, run once for the tests below (each checks one side of it: an engine start is tens of seconds).

    As a user runs it: no vLLM logging variable set (the tests' conftest sets
    one), OTEL_EXPORTER_OTLP_ENDPOINT pointing at a real OTLP/HTTP receiver,
    and ``--traces-out``.
    """
    traces_file = tmp_path_factory.mktemp("demo") / "trace.json"
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_LOGGING_LEVEL", "TORCH_CPP_LOG_LEVEL")}
    for var in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        env.pop(var, None)
    async with otlp_receiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        # Async subprocess: this event loop keeps serving the receiver meanwhile.
        with anyio.fail_after(600):
            done = await anyio.run_process(
                [sys.executable, "-m", "runtime._cli", "demo", "--model", "tiny", "--traces-out", str(traces_file)],
                cwd=ROOT,
                env=env,
                check=False,
            )
        yield DemoRun(done.returncode, done.stdout.decode(), done.stderr.decode(), receiver.spans(), traces_file)


@pytest.mark.engine
def test_demo_runs_the_agent_and_text_to_sql(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    out = demo_run.stdout
    assert "answer:" in out and "turn 1: tool call " in out
    assert "cached" in out and "demo-agent" in out
    assert "Text-to-SQL on Chinook" in out and "linked tables:" in out and "text2sql" in out


@pytest.mark.engine
def test_demo_command_exits_cleanly_and_quietly(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    # The engine core is shut down, not killed, and nothing fails on the way (vLLM 0.32 logs its own output
    # handler's end as a crash unless it is stopped first: InProcessEngine._aclose).
    for unwanted in ("Traceback", "EngineDeadError", "force killing", "output_handler failed"):
        assert unwanted not in demo_run.stdout + demo_run.stderr, demo_run.stderr[-3000:]
    # Nothing of vLLM's, torch's or Triton's start-up (logs, warnings, progress bars) reaches the terminal:
    # agentrt's lines only (`agentrt demo -v` shows vLLM's: tests/runtime/test_cli.py).
    assert not VLLM_LINE.search(demo_run.stderr), demo_run.stderr[-3000:]
    ours = ("agentrt", "traces: ")
    assert [line for line in demo_run.stderr.splitlines() if not line.startswith(ours)] == [], demo_run.stderr


@pytest.mark.engine
def test_demo_exports_one_complete_trace_per_program(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, demo_run.stderr[-3000:]
    assert "spans written to" in demo_run.stderr
    received = demo_run.spans
    assert {service for service, _ in received} == {"agentrt"}
    by_id = {s.span_id: s for _, s in received}
    roots = {s.name: s for s in by_id.values() if not s.parent_span_id}
    # The demo runs two programs (the agent, then Text-to-SQL): one trace each.
    assert set(roots) == {"invoke_workflow demo_workflow", "invoke_workflow text2sql"}
    traces = {root.trace_id: root for root in roots.values()}
    assert len(traces) == 2 and all(s.trace_id in traces for s in by_id.values())
    root = roots["invoke_workflow demo_workflow"]
    (agent,) = (s for s in by_id.values() if s.name == "invoke_agent demo-agent")
    assert agent.parent_span_id == root.span_id
    chats = [s for s in by_id.values() if s.name == "chat tiny" and s.trace_id == root.trace_id]
    tools = [s for s in by_id.values() if s.name.startswith("execute_tool ") and s.trace_id == root.trace_id]
    assert chats and all(s.parent_span_id == agent.span_id for s in chats + tools)
    sql_root = roots["invoke_workflow text2sql"]
    sql_steps = {s.name for s in by_id.values() if s.parent_span_id == sql_root.span_id}
    assert {"step link_schema", "step generate_sql"} <= sql_steps
    # Well formed: every parent is in its trace, no child outlives its parent.
    for s in by_id.values():
        if s.parent_span_id:
            parent = by_id[s.parent_span_id]
            assert parent.trace_id == s.trace_id
            assert parent.start_time_unix_nano <= s.start_time_unix_nano
            assert s.end_time_unix_nano <= parent.end_time_unix_nano
    # The file holds the same spans as OTLP/JSON with hex ids.
    doc = json.loads(demo_run.traces_file.read_text())
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["name"] for s in spans) == sorted(s.name for s in by_id.values())
    assert {s["traceId"] for s in spans} == {t.hex() for t in traces}

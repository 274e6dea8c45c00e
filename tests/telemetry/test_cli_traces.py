"""``agentrt demo`` with tracing, run as a user runs it: OTLP to a receiver, and --traces-out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import anyio
import pytest

from tests.telemetry.conftest import Receiver

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.engine
async def test_demo_exports_one_complete_trace_per_program(
    tiny_model: Path, receiver: Receiver, tmp_path: Path
) -> None:
    out_file = tmp_path / "trace.json"
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url)
    for var in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        env.pop(var, None)
    # Async subprocess: this event loop keeps serving the receiver meanwhile.
    done = await anyio.run_process(
        [sys.executable, "-m", "runtime._cli", "demo", "--model", "tiny", "--traces-out", str(out_file)],
        cwd=ROOT,
        env=env,
        check=False,
    )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr[-3000:]
    assert "spans written to" in stderr

    received = receiver.spans()
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
    doc = json.loads(out_file.read_text())
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["name"] for s in spans) == sorted(s.name for s in by_id.values())
    assert {s["traceId"] for s in spans} == {t.hex() for t in traces}

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
async def test_demo_exports_one_complete_trace(tiny_model: Path, receiver: Receiver, tmp_path: Path) -> None:
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
    by_id = {s.span_id: s for _, s in received}
    (root,) = (s for s in by_id.values() if s.name == "invoke_workflow demo_workflow")
    assert {service for service, _ in received} == {"agentrt"}
    assert all(s.trace_id == root.trace_id for s in by_id.values())  # one program, one trace
    (agent,) = (s for s in by_id.values() if s.name == "invoke_agent demo-agent")
    assert agent.parent_span_id == root.span_id
    chats = [s for s in by_id.values() if s.name == "chat tiny"]
    tools = [s for s in by_id.values() if s.name.startswith("execute_tool ")]
    assert chats and all(s.parent_span_id == agent.span_id for s in chats + tools)
    # Well formed: every parent is in the trace, no child outlives its parent.
    for s in by_id.values():
        if s is not root:
            parent = by_id[s.parent_span_id]
            assert parent.start_time_unix_nano <= s.start_time_unix_nano
            assert s.end_time_unix_nano <= parent.end_time_unix_nano

    # The file holds the same spans as OTLP/JSON with hex ids.
    doc = json.loads(out_file.read_text())
    spans = [s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    assert sorted(s["name"] for s in spans) == sorted(s.name for s in by_id.values())
    assert {s["traceId"] for s in spans} == {root.trace_id.hex()}

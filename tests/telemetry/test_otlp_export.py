"""End to end: spans of a program on the real engine reach an OTLP/HTTP receiver.

The receiver (``receiver`` fixture, conftest) is an aiohttp server on
127.0.0.1 that decodes each POST to ``/v1/traces`` as an
``ExportTraceServiceRequest`` protobuf, the way Jaeger's port 4318 does.
"""

from __future__ import annotations

import anyio.to_thread
import pytest

import telemetry
from runtime import Runtime
from tests._otlp import Receiver
from workflows import Context, step, workflow


@step
async def draft(ctx: Context, topic: str) -> str:
    return (await ctx.llm([{"role": "user", "content": topic}], max_tokens=6)).text


@workflow
async def essay(ctx: Context, topics: list[str]) -> list[str]:
    return await ctx.gather(*(draft(ctx, t) for t in topics))


@pytest.mark.engine
async def test_a_program_trace_reaches_an_otlp_http_receiver(
    rt: Runtime, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Configured the way a user does it: environment variables only.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agentrt-e2e")
    assert telemetry.configure()
    handle = rt.submit(essay, topics=["a", "b"])
    await handle
    # The exporter posts from its worker thread with blocking I/O to a server on
    # this event loop: flush from a thread so the loop keeps serving.
    assert await anyio.to_thread.run_sync(telemetry.force_flush)

    assert receiver.requests and set(receiver.content_types) == {"application/x-protobuf"}
    received = receiver.spans()
    assert {service for service, _ in received} == {"agentrt-e2e"}
    spans = {s.span_id: s for _, s in received}
    names = sorted(s.name for s in spans.values())
    model = rt.engines[0].model
    assert names == sorted(["invoke_workflow essay", "step draft", "step draft", f"chat {model}", f"chat {model}"])
    (root,) = (s for s in spans.values() if s.name == "invoke_workflow essay")
    assert root.parent_span_id == b"" and len(root.trace_id) == 16
    assert all(s.trace_id == root.trace_id for s in spans.values())
    for s in spans.values():
        if s.name == "step draft":
            assert s.parent_span_id == root.span_id
        if s.name.startswith("chat "):
            assert spans[s.parent_span_id].name == "step draft"
            attrs = {a.key: a.value for a in s.attributes}
            assert attrs["gen_ai.operation.name"].string_value == "chat"
            assert attrs["gen_ai.usage.input_tokens"].int_value > 0
            assert list(attrs["gen_ai.response.finish_reasons"].array_value.values)
        assert s.end_time_unix_nano >= s.start_time_unix_nano > 0
    conversation = {a.key: a.value.string_value for a in root.attributes}["gen_ai.conversation.id"]
    assert conversation == handle.program.id
    await anyio.to_thread.run_sync(telemetry.shutdown)

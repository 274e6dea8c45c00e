"""vLLM's own ``llm_request`` span joins the program's trace (real `vllm serve`, real receiver).

The runtime sends the chat span's W3C ``traceparent`` with every request, and
a server it launches while tracing is on gets ``--otlp-traces-endpoint``
pointing at the same collector.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import telemetry
from runtime import Runtime, ServerEngine
from tests._otlp import Receiver
from workflows import Context, workflow


@workflow
async def hello(ctx: Context) -> str:
    return (await ctx.llm([{"role": "user", "content": "hello"}], max_tokens=4)).text


@pytest.mark.server
async def test_vllm_request_span_shares_the_program_trace(
    tiny_model: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    assert telemetry.configure()
    engine = ServerEngine(tiny_model, startup_timeout_s=600)
    assert "--otlp-traces-endpoint" in engine.command()
    async with Runtime([engine]) as rt:
        await rt.run(hello)
        assert await anyio.to_thread.run_sync(telemetry.force_flush)
        # vLLM batches its spans (about every 5 s): wait for them.
        with anyio.fail_after(60):
            while not any(s.name == "llm_request" for _, s in receiver.spans()):  # noqa: ASYNC110
                await anyio.sleep(0.5)
    spans = receiver.spans()
    (root,) = [s for _, s in spans if s.name == "invoke_workflow hello"]
    (chat,) = [s for _, s in spans if s.name.startswith("chat ")]
    (vllm_span,) = [s for _, s in spans if s.name == "llm_request"]
    assert vllm_span.trace_id == root.trace_id == chat.trace_id
    assert vllm_span.parent_span_id == chat.span_id

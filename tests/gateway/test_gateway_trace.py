"""A request's W3C ``traceparent`` parents the gateway's spans: the client's trace and agentrt's join."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import AsyncOpenAI
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry
from runtime import Gateway
from telemetry import names

from ..runtime._helpers import poll_until

pytestmark = pytest.mark.engine

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.configure(exporter, batch=False)
    yield exporter
    telemetry.shutdown()


async def test_traceparent_parents_the_request_and_its_chat_span(gateway: Gateway, spans: InMemorySpanExporter) -> None:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        await client.chat.completions.create(
            model=gateway.model_name,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=3,
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Session-ID": "traced"},
            extra_body={"last_turn": True},
        )
        untraced = await client.chat.completions.with_raw_response.create(
            model=gateway.model_name, messages=[{"role": "user", "content": "Hello"}], max_tokens=3
        )
    program_id = untraced.headers["X-Agentrt-Program-Id"]

    def program_root() -> list[ReadableSpan]:
        return [
            s
            for s in spans.get_finished_spans()
            if s.attributes and s.attributes.get(names.GEN_AI_CONVERSATION_ID) == program_id and s.parent is None
        ]

    async def root_ended() -> bool:  # the one-call program ends after its reply is sent
        return bool(program_root())

    await poll_until(root_ended, timeout_s=10)
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.name == "POST /v1/chat/completions"]
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None and f"{server.parent.span_id:016x}" == PARENT_ID
    assert server.attributes is not None and server.attributes[names.GEN_AI_CONVERSATION_ID] == "traced"
    assert server.attributes[names.AGENTRT_SESSION_SOURCE] == "header.x-session-id"
    chats = [s for s in finished if s.name.startswith("chat")]
    (traced_chat,) = [s for s in chats if s.context.trace_id == server.context.trace_id]
    assert traced_chat.parent is not None and traced_chat.parent.span_id == server.context.span_id
    # Without a traceparent the call's span is in its program's trace, under the program's root span.
    (root,) = program_root()
    assert any(s.context.trace_id == root.context.trace_id for s in chats)

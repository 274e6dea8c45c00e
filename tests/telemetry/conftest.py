"""Fixtures for the telemetry tests: an in-memory span exporter installed for one test.

agentrt's tracer is swappable (``telemetry.configure`` may run again), so each
test installs its own exporter and ``telemetry.shutdown()`` afterwards puts
the process back to "tracing off" for the rest of the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry

_OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
)


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No OTEL_* variable of the developer's shell leaks in; tracing is off after each test."""
    for var in _OTEL_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    telemetry.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Finished spans of this test, exported synchronously as each span ends."""
    exporter = InMemorySpanExporter()
    assert telemetry.configure(exporter, batch=False, capture_content=True)
    return exporter


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: what it was sent, decoded."""

    url: str
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def spans(self) -> list[tuple[str, Span]]:
        """(service.name, span) for every span received."""
        out: list[tuple[str, Span]] = []
        for request in self.requests:
            for rs in request.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                out.extend((service, s) for ss in rs.scope_spans for s in ss.spans)
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 (a free port) decoding ``ExportTraceServiceRequest`` protobufs."""
    app = web.Application()
    recv = Receiver(url="")

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        recv.requests.append(message)
        recv.content_types.append(request.content_type)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # a free port
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}"
    try:
        yield recv
    finally:
        await runner.cleanup()

"""A real OTLP/HTTP trace receiver for tests: an aiohttp server decoding what it is sent."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["Receiver", "otlp_receiver"]


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


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
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

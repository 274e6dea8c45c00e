"""OTLP over gRPC (Jaeger's port 4317): spans reach a real gRPC trace service on 127.0.0.1."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

import telemetry


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(  # the gRPC method name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_a_grpc_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        assert telemetry.configure(service_name="grpc-test")
        with telemetry.span("invoke_workflow wf"), telemetry.span("chat tiny", {"gen_ai.operation.name": "chat"}):
            pass
        assert telemetry.force_flush(timeout_s=20)  # the gRPC server runs in its own threads
        telemetry.shutdown()
    finally:
        server.stop(grace=None)
    spans = {s.name: s for r in service.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert set(spans) == {"invoke_workflow wf", "chat tiny"}
    assert spans["chat tiny"].parent_span_id == spans["invoke_workflow wf"].span_id
    resource = service.requests[0].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "grpc-test"

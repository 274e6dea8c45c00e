"""telemetry.configure and friends: OTEL_* variables, the zero-cost path, names, OTLP/JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry
from telemetry import _setup
from telemetry import names as n


def _exporters() -> list[object]:
    provider = _setup._state.owned_provider
    assert provider is not None
    processors = provider._active_span_processor._span_processors
    return [getattr(p, "span_exporter", None) or p._batch_processor._exporter for p in processors]  # type: ignore[attr-defined]


def test_no_endpoint_means_no_sdk_and_a_free_span() -> None:
    # A fresh interpreter: starting a Runtime-like set-up without OTEL_* variables
    # imports no SDK module and installs no provider, global or ours.
    code = (
        "import os, sys\n"
        "for k in list(os.environ):\n"
        "    k.startswith('OTEL_') and os.environ.pop(k)\n"
        "import telemetry\n"
        "from opentelemetry import trace\n"
        "assert telemetry.ensure_configured() is False and telemetry.tracer() is None\n"
        "with telemetry.span('x', {'a': 1}) as s:\n"
        "    assert s is telemetry.INVALID_SPAN and not s.is_recording()\n"
        "    assert trace.get_current_span() is trace.INVALID_SPAN  # context untouched\n"
        "assert telemetry.inject_trace_headers({}) == {}\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk') or 'exporter' in m))\n"
        "print(type(trace.get_tracer_provider()).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported, provider = out.stdout.splitlines()
    assert imported == "[]"
    assert provider == "ProxyTracerProvider"  # the API default: nobody installed one


def test_endpoint_from_env_selects_http_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc-under-test")
    assert telemetry.ensure_configured() and telemetry.is_enabled()
    (exporter,) = _exporters()
    assert isinstance(exporter, HttpExporter) and exporter._endpoint == "http://collector:4318/v1/traces"
    assert telemetry.otlp_endpoint() == ("http://collector:4318/v1/traces", "http/protobuf")
    provider = _setup._state.owned_provider
    assert provider is not None and provider.resource.attributes["service.name"] == "svc-under-test"


def test_traces_endpoint_and_grpc_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://jaeger:4318/custom/path")
    assert telemetry.configure()
    (exporter,) = _exporters()
    assert isinstance(exporter, HttpExporter) and exporter._endpoint == "http://jaeger:4318/custom/path"
    assert telemetry.otlp_endpoint() == ("http://jaeger:4318/custom/path", "http/protobuf")

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert telemetry.configure(endpoint="http://jaeger:4317")
    (exporter,) = _exporters()
    assert isinstance(exporter, GrpcExporter)
    assert telemetry.otlp_endpoint() == ("http://jaeger:4317", "grpc")
    provider = _setup._state.owned_provider
    assert provider is not None and provider.resource.attributes["service.name"] == telemetry.DEFAULT_SERVICE_NAME

    with pytest.raises(ValueError, match="unsupported OTLP protocol"):
        telemetry.configure(endpoint="http://x:4318", protocol="http/json")  # type: ignore[arg-type]


def test_sdk_disabled_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert telemetry.configure(InMemorySpanExporter()) is False
    assert telemetry.tracer() is None and telemetry.otlp_endpoint() is None


def test_configure_again_replaces_and_shutdown_turns_off() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    telemetry.configure(first, batch=False)
    with telemetry.span("one"):
        pass
    telemetry.configure(second, batch=False)
    with telemetry.span("two"):
        pass
    assert [s.name for s in first.get_finished_spans()] == ["one"]
    assert [s.name for s in second.get_finished_spans()] == ["two"]
    telemetry.shutdown()
    assert not telemetry.is_enabled()
    assert telemetry.ensure_configured() is False  # env has no endpoint: stays off


def test_capture_content_opt_in_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    telemetry.configure(InMemorySpanExporter())
    assert telemetry.capture_content() is False
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    telemetry.configure(InMemorySpanExporter())
    assert telemetry.capture_content() is True


def test_span_error_status_and_cancellation(spans: InMemorySpanExporter) -> None:
    with pytest.raises(KeyError), telemetry.span("fails"):
        raise KeyError("k")
    with pytest.raises(KeyboardInterrupt), telemetry.span("interrupted"):
        raise KeyboardInterrupt  # a BaseException, like cancellation
    fails, interrupted = spans.get_finished_spans()
    assert fails.attributes is not None and interrupted.attributes is not None
    assert fails.status.status_code.name == "ERROR" and fails.attributes[n.ERROR_TYPE] == "KeyError"
    assert [e.name for e in fails.events] == ["exception"]
    assert interrupted.attributes[n.ERROR_TYPE] == "cancelled"


def test_root_span_starts_a_new_trace_linked_to_the_caller(spans: InMemorySpanExporter) -> None:
    with telemetry.span("caller") as caller, telemetry.span("program", root=True) as program:
        headers = telemetry.inject_trace_headers({})
    assert program.get_span_context().trace_id != caller.get_span_context().trace_id
    finished = {s.name: s for s in spans.get_finished_spans()}
    assert finished["program"].parent is None
    assert finished["program"].links[0].context.span_id == caller.get_span_context().span_id
    # W3C traceparent: version-traceid-spanid-flags, naming the current span.
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert version == "00" and trace_id == f"{program.get_span_context().trace_id:032x}"
    assert span_id == f"{program.get_span_context().span_id:016x}"


def test_names_match_the_semconv_package() -> None:
    from opentelemetry.semconv._incubating.attributes import error_attributes as _  # noqa: F401
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as g

    for name in n.__all__:
        if name.startswith("GEN_AI_") and hasattr(g, name):
            assert getattr(n, name) == getattr(g, name), name
    ops = {v.value for v in g.GenAiOperationNameValues}
    assert {n.OP_CHAT, n.OP_EXECUTE_TOOL, n.OP_INVOKE_AGENT, n.OP_INVOKE_WORKFLOW} <= ops


def test_otlp_json_has_hex_ids_and_integer_enums(spans: InMemorySpanExporter, tmp_path: object) -> None:
    with telemetry.span("parent") as parent, telemetry.span("child", {"k": "v"}):
        pass
    path = telemetry.write_otlp_json(spans.get_finished_spans(), f"{tmp_path}/trace.json")
    doc = json.loads(path.read_text())
    (resource_spans,) = doc["resourceSpans"]
    attrs = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert attrs["service.name"] == {"stringValue": "agentrt"}
    by_name = {s["name"]: s for s in resource_spans["scopeSpans"][0]["spans"]}
    ctx = parent.get_span_context()
    assert by_name["parent"]["traceId"] == f"{ctx.trace_id:032x}"
    assert by_name["child"]["parentSpanId"] == f"{ctx.span_id:016x}"
    assert by_name["child"]["kind"] == 1  # SPAN_KIND_INTERNAL as an integer, per OTLP/JSON
    assert int(by_name["child"]["endTimeUnixNano"]) >= int(by_name["child"]["startTimeUnixNano"])

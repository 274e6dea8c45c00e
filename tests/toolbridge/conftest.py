"""Fixtures for the toolbridge tests: tracing into an in-memory exporter for one test.

The same pattern as tests/telemetry/conftest.py (agentrt's tracer is
swappable, ``telemetry.shutdown()`` puts the process back to "tracing off"),
but with content capture chosen per test; that conftest is not imported
because it pulls in an HTTP receiver these tests do not need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry

_OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
)


@pytest.fixture
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., InMemorySpanExporter]]:
    """``tracing(capture_content=...)`` turns tracing on; finished spans land in the exporter it returns.

    Spans are exported synchronously as each ends; tracing is off again after the test.
    """
    for var in _OTEL_VARS:
        monkeypatch.delenv(var, raising=False)

    def configure(*, capture_content: bool) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        assert telemetry.configure(exporter, batch=False, capture_content=capture_content)
        return exporter

    yield configure
    telemetry.shutdown()

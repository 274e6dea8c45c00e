"""Fixtures for the telemetry tests: an in-memory span exporter installed for one test.

agentrt's tracer is swappable (``telemetry.configure`` may run again), so each
test installs its own exporter and ``telemetry.shutdown()`` afterwards puts
the process back to "tracing off" for the rest of the suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import telemetry
from tests._otlp import Receiver, otlp_receiver

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


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 (a free port), for one test."""
    async with otlp_receiver() as recv:
        yield recv

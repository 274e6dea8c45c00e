"""Tracing set-up: one swappable tracer behind :func:`configure`.

agentrt never installs the process-global OpenTelemetry ``TracerProvider``
(it can be set only once per process, which would make tracing impossible to
reconfigure in tests or in a long-lived host).  Instead this module holds the
tracer the runtime asks for at call time; :func:`configure` may be called again
and replaces it, :func:`shutdown` flushes and drops it.  Span parenting still
flows through OpenTelemetry's contextvars-based context, so spans nest across
tasks and W3C propagation works as with a global provider.

With neither an endpoint nor an exporter, nothing of the SDK is imported or
installed: :func:`tracer` returns ``None`` and the span helpers hand out the
invalid (non-recording) span without touching the context.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeAlias

from opentelemetry.trace import Tracer, TracerProvider

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "OtlpProtocol",
    "capture_content",
    "configure",
    "ensure_configured",
    "force_flush",
    "is_enabled",
    "otlp_endpoint",
    "shutdown",
    "tracer",
]

#: ``service.name`` when neither ``service_name=`` nor ``OTEL_SERVICE_NAME`` says otherwise.
DEFAULT_SERVICE_NAME = "agentrt"

#: OTLP transports: ``http/protobuf`` (Jaeger port 4318) or ``grpc`` (4317).
OtlpProtocol: TypeAlias = Literal["http/protobuf", "grpc"]

_TRUE = {"1", "true", "yes", "on"}


@dataclass(slots=True)
class _State:
    configured: bool = False
    tracer: Tracer | None = None
    owned_provider: SdkTracerProvider | None = None  # ours to flush and shut down
    capture_content: bool = False
    otlp: tuple[str, str] | None = None  # (traces URL, protocol) of the OTLP exporter, if any


_state = _State()
_lock = threading.Lock()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _env_endpoint() -> str | None:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def _env_protocol() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"


def _traces_url(endpoint: str | None, protocol: str) -> str:
    """The URL spans go to, resolved as the OTLP exporters resolve it."""
    if endpoint is None:
        specific = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        if specific:
            return specific
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if protocol == "http/protobuf" and not endpoint.rstrip("/").endswith("/v1/traces"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


def _otlp_exporter(endpoint: str | None, protocol: str) -> SpanExporter:
    """The OTLP exporter for ``protocol``; ``endpoint=None`` lets it read the ``OTEL_*`` variables itself."""
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError as exc:  # grpcio is optional (vLLM pulls it in)
            raise RuntimeError(
                "OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc: "
                "pip install opentelemetry-exporter-otlp-proto-grpc, or use protocol http/protobuf"
            ) from exc
        # An explicit http:// endpoint means plaintext, as the exporter reads it from the environment.
        insecure = endpoint.startswith("http://") if endpoint else None
        return GrpcExporter(endpoint=endpoint, insecure=insecure)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
            # Like OTEL_EXPORTER_OTLP_ENDPOINT: a base URL gets the signal path.
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint)
    raise ValueError(f"unsupported OTLP protocol {protocol!r}: use 'http/protobuf' or 'grpc'")


def configure(
    exporter: SpanExporter | Sequence[SpanExporter] | None = None,
    *,
    endpoint: str | None = None,
    protocol: OtlpProtocol | None = None,
    service_name: str | None = None,
    capture_content: bool | None = None,
    batch: bool = True,
    tracer_provider: TracerProvider | None = None,
) -> bool:
    """Set up tracing for agentrt; returns whether spans are now recorded.

    Spans go to every ``exporter`` given and, when an endpoint is set
    (``endpoint=`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
    ``OTEL_EXPORTER_OTLP_ENDPOINT``), to an OTLP exporter using ``protocol``
    (or ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL``; default ``http/protobuf``).
    ``endpoint=`` is a base URL like ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (``/v1/traces`` is appended for HTTP).  ``service_name`` defaults to
    ``OTEL_SERVICE_NAME``, then ``"agentrt"``; ``OTEL_RESOURCE_ATTRIBUTES`` is
    honoured.  ``capture_content`` records tool-call arguments and results
    (default: ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).

    ``batch=False`` exports each span as it ends (for in-memory test
    exporters; never for network exporters on an event loop).  Pass an existing
    ``tracer_provider`` to send agentrt's spans to it instead (it is then not
    shut down by :func:`shutdown`).  ``OTEL_SDK_DISABLED=true`` turns
    everything off.  Calling again replaces the previous set-up, flushing it.
    """
    with _lock:
        _shutdown_locked()
        _state.configured = True
        _state.capture_content = (
            capture_content
            if capture_content is not None
            else _env_flag("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
        )
        if _env_flag("OTEL_SDK_DISABLED"):
            return False
        if tracer_provider is not None:
            _state.tracer = tracer_provider.get_tracer("agentrt")
            return True
        exporters = [exporter] if exporter is not None and not isinstance(exporter, Sequence) else list(exporter or ())
        if endpoint is not None or _env_endpoint() is not None:
            chosen = protocol or _env_protocol()
            exporters.append(_otlp_exporter(endpoint, chosen))
            _state.otlp = (_traces_url(endpoint, chosen), chosen)
        if not exporters:
            return False  # the zero-cost path: no SDK imported, no provider

        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        name = service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
        # shutdown_on_exit: the SDK flushes at interpreter exit if nobody calls shutdown().
        provider = SdkTracerProvider(resource=Resource.create({SERVICE_NAME: name}), shutdown_on_exit=True)
        for e in exporters:
            provider.add_span_processor(BatchSpanProcessor(e) if batch else SimpleSpanProcessor(e))
        _state.owned_provider = provider
        _state.tracer = provider.get_tracer("agentrt")
        return True


def ensure_configured() -> bool:
    """Configure from the ``OTEL_*`` variables unless :func:`configure` was called; returns :func:`is_enabled`.

    The runtime calls this when it starts, so a library user only sets
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` to get traces.
    """
    if not _state.configured:
        configure()
    return is_enabled()


def tracer() -> Tracer | None:
    """The tracer agentrt's spans come from, or ``None`` while tracing is off."""
    return _state.tracer


def is_enabled() -> bool:
    """Whether spans are being recorded."""
    return _state.tracer is not None


def otlp_endpoint() -> tuple[str, str] | None:
    """``(traces URL, protocol)`` of the OTLP exporter in use, or ``None``.

    For passing on, e.g. to a ``vllm serve`` the runtime launches
    (``--otlp-traces-endpoint URL`` with ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``
    set to the protocol), so vLLM's spans reach the same collector.
    """
    return _state.otlp


def capture_content() -> bool:
    """Whether tool-call arguments and results go into spans (opt-in: they may hold user data)."""
    return _state.capture_content


def force_flush(timeout_s: float = 30.0) -> bool:
    """Export every finished span now; blocks up to ``timeout_s`` seconds.

    Blocking I/O: from async code run it in a worker thread
    (``anyio.to_thread.run_sync``), above all when the receiver is served by
    the same event loop.
    """
    provider = _state.owned_provider
    return True if provider is None else provider.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop tracing; :func:`configure` (or the next runtime start) may set it up again.

    Blocking I/O, like :func:`force_flush`.
    """
    with _lock:
        _shutdown_locked()


def _shutdown_locked() -> None:
    provider = _state.owned_provider
    _state.owned_provider = None
    _state.tracer = None
    _state.configured = False
    _state.capture_content = False
    _state.otlp = None
    if provider is not None:
        provider.shutdown()

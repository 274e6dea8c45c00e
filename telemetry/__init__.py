"""OpenTelemetry for agentrt: set-up, span helpers, GenAI attribute names, OTLP/JSON.

Layering: imports nothing else of agentrt (``toolbridge`` and ``runtime``
import it).  Implementation in private modules: ``_setup.py`` (configure, the
swappable tracer), ``_spans.py`` (span helpers, span events, W3C trace-context propagation),
``_names.py`` (GenAI semantic-convention and agentrt attribute names, also
reachable as :mod:`telemetry.names`), ``_otlp_json.py`` (spans as files
Jaeger's UI loads).

Usage::

    import telemetry
    telemetry.configure()                 # OTLP if OTEL_EXPORTER_OTLP_ENDPOINT is set
    ...
    telemetry.shutdown()                  # flush

With no endpoint and no exporter, tracing is off and costs next to nothing.
This package defines no exceptions: configuration errors are ``ValueError``
(unknown protocol) and ``RuntimeError`` (gRPC exporter not installed).
"""

from . import _names as names
from ._otlp_json import spans_to_otlp_json, write_otlp_json
from ._setup import (
    DEFAULT_SERVICE_NAME,
    OtlpProtocol,
    capture_content,
    configure,
    ensure_configured,
    force_flush,
    is_enabled,
    otlp_endpoint,
    shutdown,
    tracer,
)
from ._spans import INVALID_SPAN, add_event, inject_trace_headers, set_error, span, use_span

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "INVALID_SPAN",
    "OtlpProtocol",
    "add_event",
    "capture_content",
    "configure",
    "ensure_configured",
    "force_flush",
    "inject_trace_headers",
    "is_enabled",
    "names",
    "otlp_endpoint",
    "set_error",
    "shutdown",
    "span",
    "spans_to_otlp_json",
    "tracer",
    "use_span",
    "write_otlp_json",
]

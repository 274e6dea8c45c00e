"""OpenTelemetry for agentrt (GenAI semantic conventions, OTLP export).

Layering: imports nothing else of agentrt.  Tracing arrives with the
telemetry issue; until then this package exports nothing.
"""

__all__: list[str] = []

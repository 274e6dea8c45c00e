"""Span helpers the runtime uses, and W3C trace-context propagation.

Each helper is a no-op costing one attribute lookup while tracing is off: the
runtime gets :data:`INVALID_SPAN` (``is_recording()`` is false), so it can skip
building attributes, and the OpenTelemetry context is left untouched.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from . import _setup
from ._names import ERROR_TYPE

__all__ = ["INVALID_SPAN", "add_event", "inject_trace_headers", "set_error", "span", "use_span"]

Attributes = Mapping[str, AttributeValue]


@contextmanager
def span(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    root: bool = False,
    start_time_s: float | None = None,
    trace_headers: Mapping[str, str] | None = None,
) -> Iterator[Span]:
    """Open ``name`` as the current span for the ``with`` block and end it after.

    ``root=True`` starts a new trace even inside another span (one trace per
    program), linking to the span that was current.  ``trace_headers`` are
    a caller's W3C trace-context headers (``traceparent``, ``tracestate``;
    any case): when they name a valid span, the new span is its child, in
    the caller's trace, whatever span is current here.  ``start_time_s`` is a
    ``time.time()`` reading (seconds) to backdate the start.  An exception
    leaving the block sets ERROR status and ``error.type`` (unless the block set
    an error already); cancellation leaves ``error.type=cancelled``.
    """
    tracer = _setup.tracer()
    if tracer is None:
        yield INVALID_SPAN
        return
    parent: otel_context.Context | None = None
    links: Sequence[Link] = ()
    if root:
        current = otel_trace.get_current_span().get_span_context()
        links = [Link(current)] if current.is_valid else ()
        parent = otel_context.Context()  # empty: no parent span
    if trace_headers:
        # The propagator's getter reads a mapping by exact key; HTTP header names are case-insensitive.
        remote = propagate.extract({k.lower(): v for k, v in trace_headers.items()})
        if otel_trace.get_current_span(remote).get_span_context().is_valid:
            parent = remote
    start_ns = int(start_time_s * 1e9) if start_time_s is not None else None
    # Status is set here rather than by the SDK so that cancellation (a
    # BaseException) is told apart from a failure.
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        links=links,
        start_time=start_ns,
        record_exception=False,
        set_status_on_exception=False,
    ) as current_span:
        finished = False
        try:
            yield current_span
            finished = True
        except Exception as exc:
            finished = True
            if _status_unset(current_span):
                set_error(current_span, type(exc).__qualname__, str(exc))
                current_span.record_exception(exc)
            raise
        finally:
            if not finished and _status_unset(current_span):
                set_error(current_span, "cancelled", "cancelled")


@contextmanager
def use_span(s: Span) -> Iterator[Span]:
    """Make ``s`` the current span for the ``with`` block (in this task), without ending it after.

    Work started in another task than the span's (a request handled by one
    task, its LLM call run by a program's) opens its spans as children of ``s``.
    """
    if _setup.tracer() is None or not s.get_span_context().is_valid:
        yield s
        return
    with otel_trace.use_span(s, end_on_exit=False):
        yield s


def _status_unset(s: Span) -> bool:
    status = getattr(s, "status", None)  # SDK spans expose it; the API type does not
    return status is None or status.status_code is StatusCode.UNSET


def set_error(s: Span, error_type: str, message: str | None = None) -> None:
    """Mark ``s`` failed: ERROR status with ``message`` and ``error.type`` (a short, low-cardinality kind)."""
    if s.is_recording():
        s.set_status(Status(StatusCode.ERROR, message))
        s.set_attribute(ERROR_TYPE, error_type)


def add_event(name: str, attributes: Attributes | None = None) -> None:
    """Record ``name`` on the current span (a decision or incident worth a mark on the timeline)."""
    if _setup.tracer() is not None:
        otel_trace.get_current_span().add_event(name, attributes)


def inject_trace_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current trace context (W3C ``traceparent``, ``tracestate``) to ``headers``; returns them.

    Uses the globally configured propagator (``OTEL_PROPAGATORS``; W3C trace
    context and baggage by default), so a vLLM server started with
    ``--otlp-traces-endpoint`` parents its ``llm_request`` span on the caller's
    span.  Does nothing while tracing is off.
    """
    if _setup.tracer() is not None:
        propagate.inject(headers)
    return headers

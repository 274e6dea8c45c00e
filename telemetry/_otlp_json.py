"""Finished spans as OTLP/JSON, the file format Jaeger's UI loads.

The protobuf JSON mapping of ``ExportTraceServiceRequest`` with the two
deviations the OTLP/JSON spec requires: trace and span ids are hex strings
(not base64) and enums are integers.  Jaeger's UI recognises a file holding one
``{"resourceSpans": [...]}`` object and shows its traces.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["spans_to_otlp_json", "write_otlp_json"]

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(obj: dict[str, Any]) -> None:
    for key in _ID_FIELDS:
        if obj.get(key):
            obj[key] = base64.b64decode(obj[key]).hex()


def spans_to_otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP/JSON ``ExportTraceServiceRequest`` object for ``spans``."""
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    doc: dict[str, Any] = MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    doc.setdefault("resourceSpans", [])
    for resource_spans in doc["resourceSpans"]:
        for scope_spans in resource_spans.get("scopeSpans", []):
            for s in scope_spans.get("spans", []):
                _hex_ids(s)
                for link in s.get("links", []):
                    _hex_ids(link)
    return doc


def write_otlp_json(spans: Sequence[ReadableSpan], path: str | os.PathLike[str]) -> Path:
    """Write ``spans`` to ``path`` as one OTLP/JSON object; returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(spans_to_otlp_json(spans), indent=1) + "\n")
    return out

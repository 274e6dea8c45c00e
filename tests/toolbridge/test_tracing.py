"""``run_tool`` and ``ToolSet.run`` trace each call as an ``execute_tool {name}`` span.

Real tools, a real tracer (the SDK with an in-memory exporter, see conftest.py).
The attributes are exactly those the runtime recorded when it opened tool spans.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import telemetry
from telemetry import names as n
from toolbridge import ErrorKind, Limits, RlimitDriver, ToolResult, ToolSet, run_tool, tool
from toolbridge._tracing import tool_span

#: The ``tracing`` fixture (conftest.py): ``tracing(capture_content=...)`` -> the exporter.
Tracing = Callable[..., InMemorySpanExporter]


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return a + b


@tool
def boom() -> None:
    """Always fails."""
    raise ValueError("kaput")


@tool
async def slow() -> None:
    """Takes a while."""
    await anyio.sleep(30)


@tool(isolation="process", limits=Limits(timeout_s=20))
def isolated_double(n: int) -> int:
    """Double n in a child process."""
    return 2 * n


def _usage_attributes(result: ToolResult) -> dict[str, object]:
    usage = result.usage
    return {
        n.AGENTRT_TOOL_WALL_S: usage.wall_s,
        n.AGENTRT_TOOL_CPU_S: usage.cpu_s,
        n.AGENTRT_TOOL_OOM_KILLED: usage.oom_killed,
    }


async def test_ok_call_with_content(tracing: Tracing) -> None:
    exporter = tracing(capture_content=True)
    result = await run_tool(add, {"a": 1, "b": 3}, call_id="call-1")
    assert result.ok and result.value == 4
    [span] = exporter.get_finished_spans()
    assert span.name == "execute_tool add"
    assert dict(span.attributes or {}) == {
        n.GEN_AI_OPERATION_NAME: "execute_tool",
        n.GEN_AI_TOOL_NAME: "add",
        n.GEN_AI_TOOL_CALL_ID: "call-1",
        n.GEN_AI_TOOL_TYPE: "function",
        n.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"a": 1, "b": 3}),
        **_usage_attributes(result),
        n.GEN_AI_TOOL_CALL_RESULT: "4",
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_ok_call_without_content_or_call_id(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    result = await run_tool(add, '{"a": 5}')
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        n.GEN_AI_OPERATION_NAME: "execute_tool",
        n.GEN_AI_TOOL_NAME: "add",
        n.GEN_AI_TOOL_TYPE: "function",
        **_usage_attributes(result),
    }


async def test_invalid_args_without_content(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    result = await run_tool(add, {"a": "x"}, call_id="c2")
    assert result.error is not None and result.error.kind is ErrorKind.INVALID_ARGS
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes == {
        n.GEN_AI_OPERATION_NAME: "execute_tool",
        n.GEN_AI_TOOL_NAME: "add",
        n.GEN_AI_TOOL_CALL_ID: "c2",
        n.GEN_AI_TOOL_TYPE: "function",
        **_usage_attributes(result),
        n.AGENTRT_TOOL_ERROR_KIND: "invalid_args",
        n.ERROR_TYPE: "invalid_args",
    }
    # Plain strings in the span, not the enum: exporters serialise them as such.
    assert type(attributes[n.ERROR_TYPE]) is str and type(attributes[n.AGENTRT_TOOL_ERROR_KIND]) is str
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == result.content
    assert result.content.startswith("error (invalid_args): invalid arguments for add: a:")


async def test_exception_with_content(tracing: Tracing) -> None:
    exporter = tracing(capture_content=True)
    result = await run_tool(boom, "{}", call_id="c3")
    assert result.content == "error (exception): ValueError: kaput"
    [span] = exporter.get_finished_spans()
    assert dict(span.attributes or {}) == {
        n.GEN_AI_OPERATION_NAME: "execute_tool",
        n.GEN_AI_TOOL_NAME: "boom",
        n.GEN_AI_TOOL_CALL_ID: "c3",
        n.GEN_AI_TOOL_TYPE: "function",
        n.GEN_AI_TOOL_CALL_ARGUMENTS: "{}",  # the model's JSON text, as it sent it
        **_usage_attributes(result),
        n.GEN_AI_TOOL_CALL_RESULT: "error (exception): ValueError: kaput",
        n.AGENTRT_TOOL_ERROR_KIND: "exception",
        n.ERROR_TYPE: "exception",
    }
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, result.content)


async def test_isolated_call_records_peak_memory(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    # The rlimit backend works on every host and still measures the child's peak (its max RSS).
    result = await run_tool(isolated_double, {"n": 21}, driver=RlimitDriver(), predictor=None)
    assert result.ok and result.value == 42 and result.usage.peak_memory_bytes
    [span] = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes[n.AGENTRT_TOOL_PEAK_MEMORY_BYTES] == result.usage.peak_memory_bytes
    assert attributes[n.AGENTRT_TOOL_WALL_S] == result.usage.wall_s > 0


async def test_span_nests_under_the_current_span(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    with telemetry.span("outer"):
        await run_tool(add, {"a": 1})
    tool_call, outer = exporter.get_finished_spans()
    assert (tool_call.name, outer.name) == ("execute_tool add", "outer")
    assert tool_call.parent is not None and outer.context is not None
    assert tool_call.parent.span_id == outer.context.span_id


async def test_cancelled_call_ends_its_span_cancelled(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    with anyio.move_on_after(0.05) as scope:
        await run_tool(slow, {})
    assert scope.cancelled_caught
    [span] = exporter.get_finished_spans()
    assert span.name == "execute_tool slow"
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[n.ERROR_TYPE] == "cancelled"


async def test_unknown_tool_is_traced(tracing: Tracing) -> None:
    exporter = tracing(capture_content=True)
    result = await ToolSet([add, boom]).run("nope", {"x": 1}, call_id="c4")
    assert result.error is not None and result.error.kind is ErrorKind.UNKNOWN_TOOL
    [span] = exporter.get_finished_spans()
    assert span.name == "execute_tool nope"
    # Nothing ran, so no usage figures.
    assert dict(span.attributes or {}) == {
        n.GEN_AI_OPERATION_NAME: "execute_tool",
        n.GEN_AI_TOOL_NAME: "nope",
        n.GEN_AI_TOOL_CALL_ID: "c4",
        n.GEN_AI_TOOL_TYPE: "function",
        n.GEN_AI_TOOL_CALL_ARGUMENTS: '{"x": 1}',
        n.GEN_AI_TOOL_CALL_RESULT: "error (unknown_tool): there is no tool 'nope'; tools: add, boom",
        n.AGENTRT_TOOL_ERROR_KIND: "unknown_tool",
        n.ERROR_TYPE: "unknown_tool",
    }
    assert (span.status.status_code, span.status.description) == (StatusCode.ERROR, result.content)


async def test_toolset_run_of_a_known_tool_is_one_span(tracing: Tracing) -> None:
    exporter = tracing(capture_content=False)
    result = await ToolSet([add]).run("add", {"a": 2}, call_id="c5")
    assert result.value == 4
    [span] = exporter.get_finished_spans()
    assert span.name == "execute_tool add" and (span.attributes or {})[n.GEN_AI_TOOL_CALL_ID] == "c5"


@pytest.mark.parametrize("arguments", [{"a": 1}, "{not json"])
async def test_tracing_off_records_nothing(arguments: dict[str, int] | str) -> None:
    telemetry.shutdown()
    assert not telemetry.is_enabled()
    with tool_span("add", arguments, "c6") as span:
        assert span is telemetry.INVALID_SPAN and not span.is_recording()
    result = await run_tool(add, arguments, call_id="c6")
    assert result.ok == isinstance(arguments, dict)

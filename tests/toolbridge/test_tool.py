"""@tool schemas and run_tool outcomes (inline execution)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import pytest
from pydantic import Field

from toolbridge import Tool, ToolDefinitionError, as_tool, run_tool, tool


@tool
def add(a: int, b: Annotated[int, Field(ge=0, le=10, description="small")] = 2) -> int:
    """Add two integers.

    More text that is not shown to the model.
    """
    return a + b


def test_schema_from_signature() -> None:
    assert add.name == "add" and add.description == "Add two integers."
    assert add.parameters == {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "integer", "default": 2, "minimum": 0, "maximum": 10, "description": "small"},
        },
        "required": ["a"],
        "additionalProperties": False,
    }
    assert add.openai_schema()["function"]["name"] == "add"


def test_definition_errors() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ToolDefinitionError, match="needs a type annotation"):
        tool(untyped)

    def variadic(*values: int) -> int:
        return sum(values)

    with pytest.raises(ToolDefinitionError, match=r"\*args"):
        tool(variadic)
    with pytest.raises(ToolDefinitionError, match="name must be letters"):
        tool(lambda: 1)
    with pytest.raises(ToolDefinitionError, match="timeout_s"):
        tool(timeout_s=0)(add.fn)
    assert as_tool(add) is add and isinstance(as_tool(add.fn), Tool)


async def test_run_tool_ok_and_invalid_args() -> None:
    ok = await run_tool(add, {"a": 1, "b": 3})
    assert ok.ok and ok.value == 4 and ok.usage.wall_s >= 0
    from_json = await run_tool(add, '{"a": 5}')
    assert from_json.value == 7
    for bad, fragment in [
        ({"a": "x"}, "a: Input should be a valid integer"),
        ({"a": 1, "b": 11}, "b: Input should be less than or equal to 10"),
        ({"a": 1, "c": 0}, "c: Extra inputs are not permitted"),
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
    ]:
        result = await run_tool(add, bad)
        assert not result.ok and result.error is not None
        assert result.error.kind == "invalid_args" and fragment in result.error.message


async def test_exceptions_and_timeouts_are_results() -> None:
    @tool(timeout_s=0.2)
    async def slow() -> None:
        await asyncio.sleep(5)

    @tool
    def boom() -> None:
        raise RuntimeError("kaput")

    started = time.monotonic()
    timed_out = await run_tool(slow, {})
    assert timed_out.error is not None and timed_out.error.kind == "timeout"
    assert time.monotonic() - started < 2
    failed = await run_tool(boom, {})
    assert failed.error is not None and failed.error.kind == "exception"
    assert failed.error.message == "RuntimeError: kaput"


async def test_cancellation_propagates() -> None:
    @tool
    async def forever() -> None:
        await asyncio.sleep(60)

    task = asyncio.ensure_future(run_tool(forever, {}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

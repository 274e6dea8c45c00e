"""ToolSet, the error kinds, what a model is shown of a result, and as_tool's memory."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import toolbridge
from toolbridge import (
    DurationPredictor,
    ErrorKind,
    ShellFailed,
    Tool,
    ToolbridgeError,
    ToolDefinitionError,
    ToolError,
    ToolResult,
    ToolSet,
    as_tool,
    render_tool_value,
    run_tool,
    tool,
)


@tool
def add(a: int, b: int = 2) -> int:
    """Add two integers."""
    return a + b


def shout(text: str) -> str:
    """A plain function, made a tool by as_tool."""
    return text.upper()


# -- ErrorKind -------------------------------------------------------------------


def test_error_kind_members() -> None:
    assert {k.name: k.value for k in ErrorKind} == {
        "OOM": "oom",
        "TIMEOUT": "timeout",
        "PIDS": "pids",
        "EXIT": "exit",
        "INVALID_ARGS": "invalid_args",
        "EXCEPTION": "exception",
        "UNKNOWN_TOOL": "unknown_tool",
        "CANCELLED": "cancelled",
        "REPEATED": "repeated",
    }
    # Members are the strings: they compare, format and serialise as their values.
    kind: str = ErrorKind.TIMEOUT
    assert kind == "timeout" and ErrorKind("timeout") is ErrorKind.TIMEOUT
    assert f"{ErrorKind.OOM}" == str(ErrorKind.OOM) == "oom"
    assert json.dumps({"kind": ErrorKind.EXIT}) == '{"kind": "exit"}'


async def test_result_kinds_are_members() -> None:
    @tool(timeout_s=0.05)
    async def slow() -> None:
        await asyncio.sleep(5)

    @tool
    def boom() -> None:
        raise RuntimeError("no")

    kinds = []
    for spec, arguments in [(add, {"a": "x"}), (slow, {}), (boom, {})]:
        result = await run_tool(spec, arguments, predictor=None)
        assert result.error is not None
        kinds.append(result.error.kind)
    unknown = await ToolSet([add]).run("nope", {})
    assert unknown.error is not None
    kinds.append(unknown.error.kind)
    assert kinds == [ErrorKind.INVALID_ARGS, ErrorKind.TIMEOUT, ErrorKind.EXCEPTION, ErrorKind.UNKNOWN_TOOL]
    assert all(type(kind) is ErrorKind for kind in kinds)


# -- ToolResult.content and render_tool_value ------------------------------------


def test_content_of_results() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    circular: list[Any] = []
    circular.append(circular)
    assert ToolResult(True, value="plain text").content == "plain text"
    assert ToolResult(True, value={"rows": [1, 2], "ok": True}).content == '{"rows": [1, 2], "ok": true}'
    assert ToolResult(True, value=None).content == "null"
    assert ToolResult(True, value=[Opaque()]).content == '["opaque!"]'  # default=str
    assert ToolResult(True, value=circular).content == "[[...]]"  # json refuses it: repr
    failed = ToolResult(False, error=ToolError(ErrorKind.TIMEOUT, "add timed out after 1 s"))
    assert failed.content == "error (timeout): add timed out after 1 s"
    for value in ["x", {"a": 1}, None, circular]:
        assert render_tool_value(value) == ToolResult(True, value=value).content


# -- ToolSet ---------------------------------------------------------------------


def test_toolset_is_an_immutable_mapping() -> None:
    tools = ToolSet([add, shout])
    assert list(tools) == ["add", "shout"] and len(tools) == 2
    assert tools["add"] is add and tools["shout"] is as_tool(shout)
    assert "shout" in tools and "nope" not in tools and tools.get("nope") is None
    assert isinstance(tools["shout"], Tool)
    assert ToolSet(tools) == tools and list(ToolSet(tools)) == ["add", "shout"]
    assert repr(tools) == "ToolSet([add, shout])" and len(ToolSet()) == 0
    with pytest.raises(TypeError):
        tools["x"] = add  # type: ignore[index]
    with pytest.raises(AttributeError):
        tools._tools = {}


def test_toolset_refuses_duplicate_names() -> None:
    with pytest.raises(ToolDefinitionError, match="two tools are named 'add'"):
        ToolSet([add, add])
    with pytest.raises(ToolDefinitionError, match="two tools are named 'shout'"):
        ToolSet([shout, tool(name="shout")(add.fn)])
    with pytest.raises(ToolDefinitionError, match="not a tool or a function"):
        ToolSet([add, 3])  # type: ignore[list-item]


async def test_toolset_run() -> None:
    tools = ToolSet([add, shout])
    predictor = DurationPredictor()
    assert (await tools.run("add", {"a": 1}, call_id="c1", predictor=predictor)).value == 3
    assert (await tools.run("shout", '{"text": "hi"}', predictor=predictor)).content == "HI"
    assert predictor.count("add") == 1 and predictor.count("shout") == 1
    unknown = await tools.run("nope", {"a": 1}, predictor=predictor)
    assert not unknown.ok and unknown.error == ToolError(
        ErrorKind.UNKNOWN_TOOL, "there is no tool 'nope'; tools: add, shout"
    )
    assert unknown.content == "error (unknown_tool): there is no tool 'nope'; tools: add, shout"
    assert predictor.tools() == ["add", "shout"]  # nothing ran for the unknown name
    empty = await ToolSet().run("add", {})
    assert empty.error is not None and empty.error.message == "there is no tool 'add'; tools: "


# -- as_tool ---------------------------------------------------------------------


def test_as_tool_remembers_functions() -> None:
    assert as_tool(shout) is as_tool(shout)
    assert as_tool(add) is add  # a Tool as it is

    def local(n: int) -> int:
        return n

    assert as_tool(local) is as_tool(local) and as_tool(local).fn is local
    # So a ToolSet per model turn builds no schema again.
    assert ToolSet([local, shout])["local"] is ToolSet([local])["local"]


async def test_as_tool_builds_unhashable_and_unreferenceable_callables_each_time() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]
        __name__ = "double"
        __annotations__ = {"n": int}

        def __call__(self, n: int) -> int:
            return 2 * n

    class Slotted:  # no __weakref__ slot: cannot be weakly referenced
        __slots__ = ()
        __name__ = "triple"
        __annotations__ = {"n": int}

        def __call__(self, n: int) -> int:
            return 3 * n

    for fn, expected in [(Unhashable(), 8), (Slotted(), 12)]:
        first, second = as_tool(fn), as_tool(fn)
        assert first is not second and first.name == second.name
        assert (await run_tool(first, {"n": 4}, predictor=None)).value == expected


# -- ShellFailed -----------------------------------------------------------------


def test_shell_failed_is_in_the_tree() -> None:
    assert issubclass(ShellFailed, ToolbridgeError)
    assert ShellFailed.error_kind is ErrorKind.EXIT
    assert ShellFailed.__module__ == "toolbridge" and toolbridge.ShellFailed is ShellFailed
    assert "ShellFailed" in toolbridge.__all__ and "ShellFailed" in (toolbridge.__doc__ or "")

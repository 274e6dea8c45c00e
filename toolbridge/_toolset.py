"""``ToolSet``: the tools one model turn may call, by name, and running a call by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ._cgroups import SandboxDriver
from ._errors import ToolDefinitionError
from ._predict import DurationPredictor, durations
from ._result import ErrorKind, ToolError, ToolResult
from ._run import run_tool
from ._tool import Tool, as_tool
from ._tracing import end_tool, tool_span

__all__ = ["ToolSet"]


class ToolSet(Mapping[str, Tool]):
    """An immutable mapping of tool name to :class:`Tool`, in the order given.

    Built from tools or plain functions (made tools with :func:`as_tool`,
    which remembers them, so building a set per model turn is cheap), or from
    another ToolSet.  Two tools with one name, or an item that is neither a
    tool nor a function, raise :class:`ToolDefinitionError`: a model names the
    tool it calls, so the name must say which.
    """

    __slots__ = ("_tools",)

    _tools: Mapping[str, Tool]

    def __init__(self, tools: Iterable[object] = ()) -> None:
        if isinstance(tools, ToolSet):
            # Iterating a ToolSet gives names, not tools; its tools are already checked.
            object.__setattr__(self, "_tools", tools._tools)
            return
        by_name: dict[str, Tool] = {}
        for item in tools:
            spec = as_tool(item)
            if spec.name in by_name:
                raise ToolDefinitionError(f"two tools are named {spec.name!r}: {by_name[spec.name]!r} and {spec!r}")
            by_name[spec.name] = spec
        object.__setattr__(self, "_tools", by_name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolSet([{', '.join(self._tools)}])"

    async def run(
        self,
        name: str,
        arguments: Mapping[str, Any] | str,
        *,
        call_id: str | None = None,
        driver: SandboxDriver | None = None,
        predictor: DurationPredictor | None = durations,
        idempotency_key: str | None = None,
    ) -> ToolResult:
        """Run the tool ``name`` (:func:`run_tool`); a name not in the set is a result of kind ``unknown_tool``.

        The unknown name is traced too, as an ``execute_tool {name}`` span
        with that error, so a trace shows every call the model made.
        """
        spec = self._tools.get(name)
        if spec is not None:
            return await run_tool(
                spec, arguments, call_id=call_id, driver=driver, predictor=predictor, idempotency_key=idempotency_key
            )
        result = ToolResult(
            False,
            error=ToolError(ErrorKind.UNKNOWN_TOOL, f"there is no tool {name!r}; tools: {', '.join(self._tools)}"),
        )
        with tool_span(name, arguments, call_id) as span:
            end_tool(span, result, ran=False)  # nothing ran: no usage to record
        return result

"""Running one tool call and reporting its outcome instead of raising."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from ._cgroups import SandboxDriver
from ._errors import ToolArgumentsError
from ._predict import DurationPredictor, durations
from ._process import run_isolated
from ._result import ErrorKind, ToolError, ToolResult, ToolUsage
from ._tool import Tool, as_tool
from ._tracing import end_tool, tool_span

__all__ = ["run_tool"]


def _parse_arguments(arguments: Mapping[str, Any] | str) -> Mapping[str, Any]:
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ToolArgumentsError(f"arguments must be a JSON object, got {type(parsed).__name__}")
        return parsed
    return arguments


async def run_tool(
    tool: Tool | object,
    arguments: Mapping[str, Any] | str,
    *,
    call_id: str | None = None,
    driver: SandboxDriver | None = None,
    predictor: DurationPredictor | None = durations,
    idempotency_key: str | None = None,
) -> ToolResult:
    """Validate ``arguments`` and run ``tool`` once; failures come back in the result.

    ``arguments`` is a mapping or the JSON text a model produced.  Inline
    sync functions run in a worker thread so they do not stall the event
    loop; ``isolation="process"`` tools run in a child process in their own
    sandbox (``driver``, default: the one chosen at start).  The wall time of
    every call that ran is recorded in ``predictor`` (``None``: not recorded).

    Each call is traced as an ``execute_tool {name}`` span (``call_id``, the
    model's id for the call, goes into ``gen_ai.tool.call.id``); a failed
    call's span has ERROR status and ``error.type`` set to its
    :class:`ErrorKind`.  Cancellation of the caller is never turned into a
    result: it propagates (after an isolated call's processes are killed and
    its cgroup removed) and ends the span with ``error.type=cancelled``.
    ``idempotency_key`` goes to the tool's :data:`IdempotencyKey` parameter,
    if it has one (default: a fresh random key).
    """
    spec = as_tool(tool)
    with tool_span(spec.name, arguments, call_id) as span:
        result = await _run(spec, arguments, driver, predictor, idempotency_key)
        end_tool(span, result)
        return result


async def _run(
    spec: Tool,
    arguments: Mapping[str, Any] | str,
    driver: SandboxDriver | None,
    predictor: DurationPredictor | None,
    idempotency_key: str | None = None,
) -> ToolResult:
    # The event loop's clock (time.monotonic() on a normal loop) so that inline
    # tools timed under a virtual-time loop (trace replay in the simulator)
    # report, and teach the duration predictor, virtual seconds.
    started = anyio.current_time()
    cpu_started = time.process_time()

    def usage() -> ToolUsage:
        return ToolUsage(wall_s=anyio.current_time() - started, cpu_s=time.process_time() - cpu_started)

    try:
        kwargs = spec.validate(_parse_arguments(arguments))
    except ToolArgumentsError as exc:
        return ToolResult(False, error=ToolError(ErrorKind.INVALID_ARGS, str(exc)), usage=usage())
    if spec.idempotency_parameter is not None:
        kwargs[spec.idempotency_parameter] = idempotency_key or uuid.uuid4().hex
    if spec.isolation == "process":
        result = await run_isolated(
            spec.fn,
            kwargs,
            name=spec.name,
            is_async=spec.is_async,
            limits=spec.limits,
            what=spec.call_label(kwargs),
            driver=driver,
        )
    else:
        result = await _run_inline(spec, kwargs, usage)
    if predictor is not None:
        predictor.observe(spec.name, result.usage.wall_s)
    return result


async def _run_inline(spec: Tool, kwargs: dict[str, Any], usage: Callable[[], ToolUsage]) -> ToolResult:
    try:
        with anyio.fail_after(spec.timeout_s) if spec.timeout_s is not None else contextlib.nullcontext():
            if spec.is_async:
                value = await spec.fn(**kwargs)
            else:
                value = await anyio.to_thread.run_sync(lambda: spec.fn(**kwargs), abandon_on_cancel=True)
    except TimeoutError:
        return ToolResult(
            False,
            error=ToolError(ErrorKind.TIMEOUT, f"{spec.name} timed out after {spec.timeout_s} s"),
            usage=usage(),
        )
    except Exception as exc:
        return ToolResult(False, error=ToolError(ErrorKind.EXCEPTION, f"{type(exc).__name__}: {exc}"), usage=usage())
    return ToolResult(True, value=value, usage=usage())

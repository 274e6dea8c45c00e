"""``@tool``: a Python function described to a model as an OpenAI function tool.

The JSON schema of a tool's arguments comes from the function's signature via
pydantic, and the same pydantic model validates what a model sends back, so
the two can never disagree.  The docstring (Google, NumPy or Sphinx style;
parsed in :mod:`toolbridge._docstrings`) gives the tool's description, its
first paragraph, and each documented parameter's description.
"""

from __future__ import annotations

import inspect
import typing
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal, NewType, TypeAlias, overload

import pydantic

from ._docstrings import parse_docstring
from ._errors import ToolArgumentsError, ToolDefinitionError
from ._limits import Limits

#: ``"inline"``: trusted code in the runtime's process (sync code in a worker
#: thread); ``"process"``: a child process in its own sandbox (cgroup).
Isolation: TypeAlias = Literal["inline", "process"]

__all__ = ["IdempotencyKey", "Isolation", "Tool", "as_tool", "tool"]

#: Annotate one parameter of a tool with this to receive the call's
#: idempotency key: a string that stays the same when a journaled program is
#: resumed and the call runs again (the runtime passes ``program/step``), so a
#: tool with side effects can make them happen once (a unique key in an
#: ``INSERT``, an ``Idempotency-Key`` header).  The parameter is not shown to
#: the model.  Outside a runtime each call gets a fresh random key.
IdempotencyKey = NewType("IdempotencyKey", str)


def _strip_titles(schema: Any) -> Any:
    # pydantic adds a "title" to every property; they cost prompt tokens and
    # tell the model nothing the property name does not.
    if isinstance(schema, dict):
        return {k: _strip_titles(v) for k, v in schema.items() if k != "title" or not isinstance(v, str)}
    if isinstance(schema, list):
        return [_strip_titles(v) for v in schema]
    return schema


class Tool:
    """A function a model can call.

    ``parameters`` is the JSON schema of its arguments; :meth:`validate` turns
    a model's arguments into keyword arguments or raises
    :class:`ToolArgumentsError` with a message meant for the model.
    ``timeout_s`` bounds one call in seconds (``limits.timeout_s`` when
    limits are given).  ``limits`` (:class:`Limits`) apply to calls with
    ``isolation="process"``; inline tools honour only the timeout.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        limits: Limits | None = None,
        isolation: Isolation = "inline",
    ) -> None:
        if not callable(fn):
            raise ToolDefinitionError(f"@tool must decorate a function, got {fn!r}")
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ToolDefinitionError(f"@tool {fn.__qualname__}: generators are not supported; return a value")
        if timeout_s is not None and (not isinstance(timeout_s, int | float) or timeout_s <= 0):
            raise ToolDefinitionError(f"@tool: timeout_s must be a number > 0, got {timeout_s!r}")
        self.fn = fn
        self.name: str = name or fn.__name__
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ToolDefinitionError(f"@tool: name must be letters, digits, '_' or '-', got {self.name!r}")
        doc = parse_docstring(fn.__doc__)
        # The summary alone, not the docstring's further prose: that is
        # mostly written for readers of the code (examples, caveats) and
        # would cost prompt tokens on every turn the tool is offered.  Pass
        # ``description=`` to show a model more.
        self.description: str = description if description is not None else doc.summary
        if isolation not in ("inline", "process"):
            raise ToolDefinitionError(f"@tool: isolation must be 'inline' or 'process', got {isolation!r}")
        if limits is not None and not isinstance(limits, Limits):
            raise ToolDefinitionError(f"@tool: limits must be a toolbridge.Limits, got {limits!r}")
        if limits is not None and timeout_s is not None and limits.timeout_s not in (None, timeout_s):
            raise ToolDefinitionError("@tool: give the timeout once, as timeout_s or as limits.timeout_s")
        self.limits = limits or Limits()
        self.isolation: Isolation = isolation
        self.timeout_s = timeout_s if timeout_s is not None else self.limits.timeout_s
        if self.limits.timeout_s is None and timeout_s is not None:
            self.limits = Limits(
                memory=self.limits.memory,
                memory_high=self.limits.memory_high,
                cpu=self.limits.cpu,
                pids=self.limits.pids,
                timeout_s=timeout_s,
            )
        self.is_async = inspect.iscoroutinefunction(fn)
        self._model = self._build_model(fn)
        self.parameters: dict[str, Any] = _strip_titles(self._model.model_json_schema())
        self.parameters.setdefault("properties", {})
        self.parameters["additionalProperties"] = False
        for pname, prop in self.parameters["properties"].items():
            # A description given in the annotation (``Field(description=...)``)
            # is the more deliberate one and wins; documented names that are
            # not properties (``self``, the idempotency key, a stale entry)
            # are never looked up.
            text = doc.parameters.get(pname)
            if text and isinstance(prop, dict) and "description" not in prop:
                prop["description"] = text

    def _build_model(self, fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise ToolDefinitionError(f"@tool {self.name}: cannot resolve annotations: {exc}") from exc
        fields: dict[str, Any] = {}
        #: The parameter that receives the call's idempotency key, if the function declares one.
        self.idempotency_parameter: str | None = None
        for param in sig.parameters.values():
            if hints.get(param.name) is IdempotencyKey:
                if self.idempotency_parameter is not None:
                    raise ToolDefinitionError(f"@tool {self.name}: only one parameter can take the IdempotencyKey")
                self.idempotency_parameter = param.name
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ToolDefinitionError(f"@tool {self.name}: *args/**kwargs cannot be described to a model")
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise ToolDefinitionError(f"@tool {self.name}: positional-only parameter {param.name!r}")
            if param.name not in hints:
                raise ToolDefinitionError(
                    f"@tool {self.name}: parameter {param.name!r} needs a type annotation "
                    "(the model is shown a schema built from annotations)"
                )
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (hints[param.name], default)
        try:
            return pydantic.create_model(
                f"{self.name}_arguments", __config__=pydantic.ConfigDict(extra="forbid"), **fields
            )
        except Exception as exc:
            raise ToolDefinitionError(f"@tool {self.name}: cannot build an argument schema: {exc}") from exc

    def validate(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a model's arguments; returns keyword arguments for the function."""
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(f"arguments for {self.name} must be a JSON object, got {arguments!r}")
        try:
            model = self._model.model_validate(dict(arguments))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(arguments)'}: {err['msg']}" for err in exc.errors()
            )
            raise ToolArgumentsError(f"invalid arguments for {self.name}: {problems}") from None
        return {name: getattr(model, name) for name in self._model.model_fields}

    def call_label(self, kwargs: Mapping[str, Any]) -> str:
        """How error messages name one call (the tool's name; a shell tool names its command)."""
        return self.name

    def openai_schema(self) -> dict[str, Any]:
        """The tool in OpenAI's ``tools=[...]`` format."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    limits: Limits | None = None,
    isolation: Isolation = "inline",
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    limits: Limits | None = None,
    isolation: Isolation = "inline",
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Declare a tool from a sync or async function; bare (``@tool``) or with options.

    ``@tool(limits=Limits(memory="64M", cpu=0.5, pids=32, timeout_s=10),
    isolation="process")`` runs each call in a child process in its own cgroup.
    """

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, timeout_s=timeout_s, limits=limits, isolation=isolation)

    return decorate(fn) if fn is not None else decorate


#: Tools built by :func:`as_tool` from plain functions.  Building one builds a
#: pydantic model, and the runtime turns a model turn's tools into a ToolSet
#: every turn, so each function is built once.  No lock: under the GIL two
#: threads racing on one function may both build it and one Tool wins the
#: slot, which is harmless (they are alike, and either is a valid answer).
#: The keys are weak, but a cached Tool holds its function (``Tool.fn``), so an
#: entry lasts as long as the process, as module-level functions do anyway;
#: a function made anew per call (a closure) should be made a Tool once by its
#: owner (``@tool``), not handed here each time.
_built: weakref.WeakKeyDictionary[Callable[..., Any], Tool] = weakref.WeakKeyDictionary()


def as_tool(obj: object) -> Tool:
    """``obj`` if it is a :class:`Tool`, else the tool built from the function ``obj``.

    The tool built for a function is remembered: ``as_tool(fn) is as_tool(fn)``.
    Callables that cannot be weakly referenced or hashed are built anew each time.
    """
    if isinstance(obj, Tool):
        return obj
    if not callable(obj):
        raise ToolDefinitionError(f"not a tool or a function: {obj!r}")
    try:
        cached = _built.get(obj)
    except TypeError:  # not weak-referenceable (a builtin) or unhashable
        return Tool(obj)
    if cached is None:
        cached = _built.setdefault(obj, Tool(obj))
    return cached

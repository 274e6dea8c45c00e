"""``@workflow`` and ``@step``: declaring programs.

Declarations are checked when the decorator runs, so a wrong declaration
fails at import time with a message that says what to write instead.
"""

from __future__ import annotations

import difflib
import inspect
import math
import typing
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Never, ParamSpec, TypeVar, overload

import pydantic

from ._context import Context
from ._errors import ContextError, WorkflowDefinitionError, WorkflowInputError

__all__ = ["Step", "StepCall", "Workflow", "step", "workflow"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

_STEP_OPTIONS = ("name", "retries", "timeout_s", "retry_on")
_WORKFLOW_OPTIONS = ("name", "deadline_s", "priority", "description", "stages")


def _reject_unknown(kind: str, unknown: Mapping[str, object], known: tuple[str, ...]) -> None:
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise WorkflowDefinitionError(
        f"@{kind} got unknown option(s) {', '.join(parts)}; known options: {', '.join(known)}"
    )


def _check_async_with_ctx(kind: str, fn: object) -> inspect.Signature:
    if not callable(fn):
        raise WorkflowDefinitionError(f"@{kind} must decorate an async function, got {fn!r}")
    qualname = getattr(fn, "__qualname__", repr(fn))
    if inspect.isasyncgenfunction(fn):
        raise WorkflowDefinitionError(
            f"@{kind} {qualname}: async generators are not supported; return a value instead of yielding"
        )
    if not inspect.iscoroutinefunction(fn):
        raise WorkflowDefinitionError(
            f"@{kind} {qualname}: must be declared with `async def` (it awaits the runtime through ctx)"
        )
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise WorkflowDefinitionError(
            f"@{kind} {qualname}: the first parameter must be the context, "
            f"e.g. `async def {getattr(fn, '__name__', 'fn')}(ctx, ...)`"
        )
    return sig


def _check_stages(stages: object) -> dict[str, float] | None:
    """A stage plan as given to ``@workflow(stages=...)``: names to expected seconds, in run order."""
    if stages is None:
        return None
    if not isinstance(stages, Mapping) or not stages:
        raise WorkflowDefinitionError(
            f"@workflow: stages must be a non-empty mapping of stage names to expected seconds, got {stages!r}"
        )
    plan: dict[str, float] = {}
    for name, seconds in stages.items():
        if not isinstance(name, str) or not name:
            raise WorkflowDefinitionError(f"@workflow: stage names must be non-empty strings, got {name!r}")
        _check_number("workflow", f"stages[{name!r}]", seconds, allow_none=False, minimum=0, strict=False)
        assert isinstance(seconds, int | float)
        if not math.isfinite(seconds):
            raise WorkflowDefinitionError(f"@workflow: stages[{name!r}] must be a finite number, got {seconds!r}")
        plan[name] = float(seconds)
    if not any(plan.values()):
        raise WorkflowDefinitionError("@workflow: the stage plan needs at least one stage expected to take time")
    return plan


def _check_number(kind: str, option: str, value: object, *, allow_none: bool, minimum: float, strict: bool) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        assert isinstance(value, int | float)
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise WorkflowDefinitionError(f"@{kind}: {option} must be a number {bound}, got {value!r}")


class Step(Generic[P, R_co]):
    """A declared step.  Calling it with the context returns a :class:`StepCall` to await.

    ``retries`` is how many times a failed attempt is retried (so at most
    ``1 + retries`` attempts); ``timeout_s`` bounds each attempt in seconds;
    only exceptions that are instances of ``retry_on`` are retried.
    """

    def __init__(
        self,
        fn: Callable[Concatenate[Context, P], Awaitable[R_co]],
        *,
        name: str | None,
        retries: int,
        timeout_s: float | None,
        retry_on: tuple[type[BaseException], ...],
    ) -> None:
        self.signature = _check_async_with_ctx("step", fn)
        if name is not None and (not isinstance(name, str) or not name):
            raise WorkflowDefinitionError(f"@step: name must be a non-empty string, got {name!r}")
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise WorkflowDefinitionError(f"@step: retries must be an int >= 0, got {retries!r}")
        _check_number("step", "timeout_s", timeout_s, allow_none=True, minimum=0, strict=True)
        if not isinstance(retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, Exception) for t in retry_on
        ):
            raise WorkflowDefinitionError(f"@step: retry_on must be a tuple of Exception classes, got {retry_on!r}")
        self.fn = fn
        self.name: str = name or fn.__name__
        self.retries = retries
        self.timeout_s = timeout_s
        self.retry_on = retry_on
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, ctx: Context, /, *args: P.args, **kwargs: P.kwargs) -> StepCall[R_co]:
        if not isinstance(ctx, Context):
            raise ContextError(
                f"step {self.name!r} must be called with the workflow context first, "
                f"e.g. `await {self.name}(ctx, ...)`; got {type(ctx).__name__} as the first argument"
            )
        try:
            self.signature.bind(ctx, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"step {self.name!r}: {exc}") from None
        return StepCall(self, ctx, args, kwargs)

    def __repr__(self) -> str:
        return f"<Step {self.name} retries={self.retries} timeout_s={self.timeout_s}>"


@dataclass(frozen=True, slots=True, eq=False)
class StepCall(Generic[R_co]):
    """One pending invocation of a step; awaiting it runs the step."""

    step: Step[Any, R_co]
    ctx: Context
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __await__(self) -> Generator[Any, None, R_co]:
        return self.ctx.run_step(self).__await__()


class Workflow(Generic[P, R_co]):
    """A declared workflow: the entry point of a program.

    ``deadline_s`` is the end-to-end deadline in seconds after submission (the
    scheduler's urgency follows it); ``priority`` is the program's user
    priority (lower is more important).  ``stages`` is the workflow's stage
    plan, if it declares one: its stages in the order they run, each with the
    seconds it is expected to take (``{"retrieve": 2, "generate": 10,
    "check": 3}``); deadline-aware policies split a program's remaining time
    among its stages by it, and learn the split from finished programs when
    a workflow has no plan.  LLM calls name their stage with ``stage=`` (by
    default the enclosing step's or agent's name).  Inputs are validated
    against the function's annotations with pydantic when the program is
    submitted.
    """

    def __init__(
        self,
        fn: Callable[Concatenate[Context, P], Awaitable[R_co]],
        *,
        name: str | None,
        deadline_s: float | None,
        priority: int,
        description: str | None,
        stages: Mapping[str, float] | None = None,
    ) -> None:
        self.signature = _check_async_with_ctx("workflow", fn)
        _check_number("workflow", "deadline_s", deadline_s, allow_none=True, minimum=0, strict=True)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise WorkflowDefinitionError(f"@workflow: priority must be an int, got {priority!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise WorkflowDefinitionError(f"@workflow: name must be a non-empty string, got {name!r}")
        self.fn = fn
        self.name: str = name or fn.__name__
        self.deadline_s = deadline_s
        self.priority = priority
        self.description = description if description is not None else inspect.getdoc(fn)
        self.stages: dict[str, float] | None = _check_stages(stages)
        self.__name__ = fn.__name__
        self.__qualname__ = fn.__qualname__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._inputs_model = self._build_inputs_model(fn)

    def _build_inputs_model(self, fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception:
            # Annotations that cannot be resolved here (local classes behind
            # `from __future__ import annotations`) are not validated.
            hints = {}
        fields: dict[str, Any] = {}
        for param in list(self.signature.parameters.values())[1:]:
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise WorkflowDefinitionError(
                    f"@workflow {self.__qualname__}: *args/**kwargs are not supported; "
                    "declare each input as a named parameter"
                )
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise WorkflowDefinitionError(
                    f"@workflow {self.__qualname__}: input {param.name!r} is positional-only; inputs are passed by name"
                )
            annotation = hints.get(param.name, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (annotation, default)
        try:
            return pydantic.create_model(
                f"{self.name}_inputs",
                __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
                **fields,
            )
        except Exception as exc:
            raise WorkflowDefinitionError(
                f"@workflow {self.__qualname__}: cannot build an input validator from its annotations: {exc}"
            ) from exc

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs_model.model_fields)

    def input_schema(self) -> dict[str, Any]:
        """JSON schema of the workflow's inputs."""
        return self._inputs_model.model_json_schema()

    def validate_inputs(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Bind and validate inputs; returns them by name, coerced to their annotated types."""
        names = self.input_names
        if len(args) > len(names):
            raise WorkflowInputError(
                f"workflow {self.name!r} takes {len(names)} input(s) ({', '.join(names)}), got {len(args)} positional"
            )
        values = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key in values:
                raise WorkflowInputError(f"workflow {self.name!r}: input {key!r} given twice")
            values[key] = value
        try:
            model = self._inputs_model.model_validate(values)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(inputs)'}: {err['msg']}" for err in exc.errors()
            )
            raise WorkflowInputError(f"workflow {self.name!r}: invalid inputs: {problems}") from None
        return {name: getattr(model, name) for name in names}

    def __repr__(self) -> str:
        return f"<Workflow {self.name} deadline_s={self.deadline_s}>"


StepFn = Callable[Concatenate[Context, P], Awaitable[R]]


@overload
def step(fn: StepFn[P, R], /) -> Step[P, R]: ...


@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    timeout_s: float | None = None,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    **unknown: Never,
) -> Callable[[StepFn[P, R]], Step[P, R]]: ...


def step(
    fn: StepFn[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    timeout_s: float | None = None,
    retry_on: tuple[type[Exception], ...] = (Exception,),
    **unknown: Any,
) -> Step[P, R] | Callable[[StepFn[P, R]], Step[P, R]]:
    """Declare a step: an async function ``(ctx, ...)`` the runtime runs as a node of the program.

    Usable bare (``@step``) or with options (``@step(retries=2, timeout_s=60)``).
    """
    _reject_unknown("step", unknown, _STEP_OPTIONS)

    def decorate(f: StepFn[P, R]) -> Step[P, R]:
        return Step(f, name=name, retries=retries, timeout_s=timeout_s, retry_on=retry_on)

    return decorate(fn) if fn is not None else decorate


@overload
def workflow(fn: StepFn[P, R], /) -> Workflow[P, R]: ...


@overload
def workflow(
    *,
    name: str | None = None,
    deadline_s: float | None = None,
    priority: int = 0,
    description: str | None = None,
    stages: Mapping[str, float] | None = None,
    **unknown: Never,
) -> Callable[[StepFn[P, R]], Workflow[P, R]]: ...


def workflow(
    fn: StepFn[P, R] | None = None,
    /,
    *,
    name: str | None = None,
    deadline_s: float | None = None,
    priority: int = 0,
    description: str | None = None,
    stages: Mapping[str, float] | None = None,
    **unknown: Any,
) -> Workflow[P, R] | Callable[[StepFn[P, R]], Workflow[P, R]]:
    """Declare a workflow: an async function ``(ctx, **inputs)`` that a runtime runs as a program.

    Usable bare (``@workflow``) or with options (``@workflow(deadline_s=120)``).
    """
    _reject_unknown("workflow", unknown, _WORKFLOW_OPTIONS)

    def decorate(f: StepFn[P, R]) -> Workflow[P, R]:
        return Workflow(f, name=name, deadline_s=deadline_s, priority=priority, description=description, stages=stages)

    return decorate(fn) if fn is not None else decorate

"""Declaration-time validation of @workflow and @step (pure logic, no engine)."""

from __future__ import annotations

from typing import Any

import pytest

from workflows import (
    ContextError,
    Step,
    StepCall,
    Workflow,
    WorkflowDefinitionError,
    WorkflowInputError,
    step,
    workflow,
)


def test_step_bare_and_with_options() -> None:
    @step
    async def a(ctx: Any, x: int) -> int:
        return x

    @step(retries=2, timeout_s=60)
    async def b(ctx: Any, x: int) -> int:
        return x

    assert isinstance(a, Step) and a.retries == 0 and a.timeout_s is None and a.name == "a"
    assert b.retries == 2 and b.timeout_s == 60


def test_step_must_be_async() -> None:
    with pytest.raises(WorkflowDefinitionError, match="async def"):

        @step
        def sync_step(ctx: Any) -> None: ...


def test_step_rejects_async_generator() -> None:
    with pytest.raises(WorkflowDefinitionError, match="generators"):

        @step
        async def gen(ctx: Any) -> Any:
            yield 1


def test_step_needs_context_parameter() -> None:
    with pytest.raises(WorkflowDefinitionError, match="first parameter must be the context"):

        @step
        async def no_ctx() -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="first parameter must be the context"):

        @step
        async def kw_only(*, ctx: Any) -> None: ...


def test_unknown_option_suggests_the_right_one() -> None:
    with pytest.raises(WorkflowDefinitionError, match=r"'retrys' \(did you mean 'retries'\?\)"):
        step(retrys=2)  # type: ignore[call-overload]
    with pytest.raises(WorkflowDefinitionError, match="deadline"):
        workflow(deadline=3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": True}, "retries must be an int >= 0"),
        ({"timeout_s": 0}, "timeout_s must be a number > 0"),
        ({"timeout_s": "10"}, "timeout_s must be a number > 0"),
        ({"retry_on": (KeyboardInterrupt,)}, "retry_on"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_step_option_values_are_checked(options: dict[str, Any], message: str) -> None:
    async def f(ctx: Any) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match=message):
        step(**options)(f)


def test_workflow_checks() -> None:
    with pytest.raises(WorkflowDefinitionError, match="async def"):

        @workflow
        def sync_wf(ctx: Any) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match="deadline_s must be a number > 0"):

        @workflow(deadline_s=-5)
        async def neg(ctx: Any) -> None: ...

    with pytest.raises(WorkflowDefinitionError, match=r"\*args/\*\*kwargs"):

        @workflow
        async def varargs(ctx: Any, *docs: str) -> None: ...


def test_workflow_inputs_are_validated_and_coerced() -> None:
    @workflow(deadline_s=120)
    async def wf(ctx: Any, docs: list[str], n: int = 3) -> None: ...

    assert isinstance(wf, Workflow)
    assert wf.deadline_s == 120 and wf.input_names == ("docs", "n")
    assert wf.validate_inputs(docs=["a"], n="5") == {"docs": ["a"], "n": 5}
    assert wf.validate_inputs(["a"]) == {"docs": ["a"], "n": 3}
    with pytest.raises(WorkflowInputError, match="docs: Field required"):
        wf.validate_inputs()
    with pytest.raises(WorkflowInputError, match="n: Input should be a valid integer"):
        wf.validate_inputs(docs=[], n="many")
    with pytest.raises(WorkflowInputError, match="colour: Extra inputs are not permitted"):
        wf.validate_inputs(docs=[], colour="red")
    with pytest.raises(WorkflowInputError, match="given twice"):
        wf.validate_inputs(["a"], docs=["b"])
    assert wf.input_schema()["required"] == ["docs"]


def test_calling_a_step_without_context_is_a_clear_error() -> None:
    @step
    async def s(ctx: Any, text: str) -> str:
        return text

    with pytest.raises(ContextError, match="must be called with the workflow context first"):
        s("hello")  # type: ignore[arg-type]


def test_step_call_arguments_are_bound_eagerly() -> None:
    from tests.workflows.fake_context import FakeContext

    @step
    async def s(ctx: Any, text: str) -> str:
        return text

    call = s(FakeContext(), "x")
    assert isinstance(call, StepCall) and call.args == ("x",)
    with pytest.raises(TypeError, match="step 's'"):
        s(FakeContext(), "x", "y")  # type: ignore[call-arg]

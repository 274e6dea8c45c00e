"""The workflow behind ``agentrt demo``: an agent with three small tools.

The demo model is small (SmolLM2-135M), so the agent is set up to do what such
a model does reliably: its first turn must call a tool (``tool_choice=
"required"``: the reply is constrained to a tool call), and its second and
last turn must answer from the tool's result.  Left to choose, the model
answers from its own weights ("JAPAN" for the capital of Japan) rather than
call a tool.  :func:`describe_demo` says what happened, call by call, and
whether the answer states what the tool returned.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field

from workflows import Agent, AgentResult, Context, ToolMessage, workflow

__all__ = ["DEMO_QUESTION", "demo_agent", "demo_workflow", "describe_demo", "model_note"]

DEMO_QUESTION = "What is the capital of Japan?"

_OPS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        if isinstance(node.op, ast.Pow) and abs(_evaluate(node.right)) > 64:
            raise ValueError("exponent too large")
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.operand))
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:40]}")


def calculator(expression: Annotated[str, Field(max_length=64)]) -> float:
    """Evaluate an arithmetic expression with + - * / ** and parentheses, e.g. "17 * 23"."""
    return _evaluate(ast.parse(expression, mode="eval"))


_CAPITALS = {
    "france": "Paris",
    "germany": "Berlin",
    "italy": "Rome",
    "japan": "Tokyo",
    "spain": "Madrid",
    "canada": "Ottawa",
    "brazil": "Brasília",
    "india": "New Delhi",
}


def capital_of(country: Annotated[str, Field(max_length=32)]) -> str:
    """Return the capital city of a country."""
    try:
        return _CAPITALS[country.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown country {country!r}; known: {', '.join(sorted(_CAPITALS))}") from None


_TO_METRES = {"m": 1.0, "km": 1000.0, "mi": 1609.344, "ft": 0.3048, "in": 0.0254, "cm": 0.01}


LengthUnit = Literal["m", "km", "mi", "ft", "in", "cm"]


def convert_length(value: float, from_unit: LengthUnit, to_unit: LengthUnit) -> float:
    """Convert a length between units m, km, mi, ft, in, cm."""
    return value * _TO_METRES[from_unit] / _TO_METRES[to_unit]


demo_agent = Agent(
    "You are a helpful assistant. Use calculator for arithmetic, capital_of for capitals and "
    "convert_length for units. Once a tool has given you the result, give a short final answer that states it.",
    tools=[calculator, capital_of, convert_length],
    # Turn 1 must call a tool; turn 2, the last, must answer (Agent makes the last turn answer).
    tool_choice="required",
    max_turns=2,
    max_tokens=160,
    parallel_tool_calls=False,
    name="demo-agent",
)


@workflow(deadline_s=300)
async def demo_workflow(ctx: Context, question: str = DEMO_QUESTION) -> AgentResult:
    """Answer a question with the demo agent: one tool call, then an answer."""
    return await demo_agent.run(ctx, question)


#: What each local model can be trusted with, for the demo's closing line.
_MODEL_NOTES = {
    "smollm2-135m": (
        "smollm2-135m is a 135M-parameter model: it picks a tool, fills in its arguments and copies the "
        "result into its answer reliably; it does not reason over several steps (chain tools, do arithmetic "
        "itself), which is why the demo makes its first turn call a tool and its second answer."
    ),
    **{
        name: f"{name} has random weights: its tool calls and answers are noise; the demo shows the mechanics only."
        for name in ("tiny", "llama-49m")
    },
}


def model_note(model: str) -> str | None:
    """What the demo can expect of ``model`` (a served model name), if it is one of the local models."""
    return _MODEL_NOTES.get(model)


def _result_forms(message: ToolMessage) -> set[str]:
    """Ways an answer may state a tool's result: its text and, for a number, its usual roundings."""
    forms = {message.content.strip()}
    value = message.value
    if isinstance(value, float) and math.isfinite(value):
        forms |= {f"{value:g}", f"{value:.2f}", f"{value:.1f}", f"{value:,.2f}", f"{value:,.1f}"}
        if value == int(value):
            forms |= {str(int(value)), f"{int(value):,}"}
    return {f.lower() for f in forms if f}


def describe_demo(result: AgentResult) -> str:
    """What the agent did, turn by turn, its answer, and whether the answer states a tool's result."""
    lines: list[str] = []
    for i, turn in enumerate(result.turns, 1):
        reply = turn.reply
        if reply.tool_call_error:
            lines.append(f"turn {i}: unusable reply ({reply.tool_call_error}): {reply.raw_text[:120]!r}")
        elif reply.tool_calls:
            calls = ", ".join(
                f"{c.name}({', '.join(f'{k}={json.dumps(v)}' for k, v in c.arguments.items())})"
                for c in reply.tool_calls
            )
            lines.append(f"turn {i}: tool call {calls}")
        else:
            lines.append(f"turn {i}: answer")
        for r in turn.tool_results:
            if r.ok:
                lines.append(f"   -> {r.name} returned {r.content}")
            else:
                lines.append(f"   -> {r.name} failed ({r.error_kind}): {r.content[:160]}")
    lines.append(f"answer: {result.answer}")
    returned = [r for r in result.tool_results if r.ok]
    answer = result.answer.lower()
    if result.stopped != "answer":
        lines.append("The model gave no usable answer.")
    elif not returned:
        lines.append("No tool call succeeded: the answer is the model's own, not a tool's result.")
    elif any(form in answer for r in returned for form in _result_forms(r)):
        shown = ", ".join(f"{r.name} -> {r.content}" for r in returned)
        lines.append(f"The answer states the tool's result ({shown}).")
    else:
        shown = ", ".join(f"{r.name} -> {r.content}" for r in returned)
        lines.append(f"The answer does not state the tool's result ({shown}): the model did not copy it.")
    note = model_note(result.turns[0].reply.model) if result.turns else None
    if note:
        lines.append(f"note: {note}")
    return "\n".join(lines)

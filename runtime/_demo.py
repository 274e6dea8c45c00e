"""The workflow behind ``agentrt demo``: an agent with three small tools."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Annotated, Literal

from pydantic import Field

from workflows import Agent, AgentResult, Context, workflow

__all__ = ["DEMO_QUESTION", "demo_agent", "demo_workflow"]

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
    max_turns=4,
    max_tokens=160,
    parallel_tool_calls=False,
    name="demo-agent",
)


@workflow(deadline_s=300)
async def demo_workflow(ctx: Context, question: str = DEMO_QUESTION) -> AgentResult:
    """Answer a question with the demo agent."""
    return await demo_agent.run(ctx, question)

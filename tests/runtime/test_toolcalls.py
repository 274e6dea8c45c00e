"""The tool-calling protocol: reply schemas and parsing (pure logic)."""

from __future__ import annotations

import json
from typing import Annotated

from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field

from runtime._tools._json_protocol import ToolPrompt, bounded, parse_reply
from toolbridge import tool


@tool
def lookup(key: Annotated[str, Field(max_length=10)], n: int) -> str:
    """Look a key up."""
    return key * n


@tool
def ping() -> str:
    """Ping."""
    return "pong"


def test_schema_by_tool_choice() -> None:
    prompt = ToolPrompt((lookup, ping))
    auto = prompt.schema("auto", 128)
    assert len(auto["anyOf"]) == 2
    assert prompt.schema("none", 128)["required"] == ["answer"]
    required = prompt.schema("required", 128)
    names = [v["properties"]["name"]["const"] for v in required["properties"]["tool_calls"]["items"]["anyOf"]]
    assert names == ["lookup", "ping"]
    only = prompt.schema("ping", 128)["properties"]["tool_calls"]["items"]
    assert only["properties"]["name"] == {"const": "ping"}


def test_unbounded_values_get_bounds_in_the_grammar_only() -> None:
    schema = bounded(lookup.parameters, 40)
    assert schema["properties"]["n"]["maximum"] == 2**53 - 1
    assert schema["properties"]["key"]["maxLength"] == 10  # the user's own bound is kept
    assert "maximum" not in lookup.parameters["properties"]["n"]


def test_system_text_is_added_once_and_stays_identical() -> None:
    prompt = ToolPrompt((lookup,))
    first = prompt.with_system([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert first[0]["content"].startswith("Be brief.\n\nYou can call these tools:")
    again = prompt.with_system([{"role": "user", "content": "hi"}])
    assert again[0]["role"] == "system" and "lookup" in again[0]["content"]


def test_parse_answer_and_calls() -> None:
    assert parse_reply('{"answer": "Paris"}', finish_reason="stop", call_id_prefix="c").text == "Paris"
    parsed = parse_reply(
        '{"tool_calls": [{"name": "lookup", "arguments": {"key": "a", "n": 2}}, {"name": "ping", "arguments": {}}]}',
        finish_reason="stop",
        call_id_prefix="call-7",
    )
    assert parsed.error is None
    assert [(c.id, c.name, c.arguments) for c in parsed.tool_calls] == [
        ("call-7-0", "lookup", {"key": "a", "n": 2}),
        ("call-7-1", "ping", {}),
    ]


def test_truncated_output_is_reported_not_raised() -> None:
    cut = parse_reply('{"tool_calls": [{"name": "lookup", "argu', finish_reason="length", call_id_prefix="c")
    assert cut.error == "output cut off by max_tokens" and not cut.tool_calls
    salvaged = parse_reply('{"answer":"The capital is Par', finish_reason="length", call_id_prefix="c")
    assert salvaged.error is None and salvaged.text == "The capital is Par"
    wrong = parse_reply('{"tool_calls": []}', finish_reason="stop", call_id_prefix="c")
    assert wrong.error is not None


@given(st.text(max_size=40))
def test_any_answer_round_trips(answer: str) -> None:
    raw = json.dumps({"answer": answer})
    assert parse_reply(raw, finish_reason="stop", call_id_prefix="c").text == answer
    # Cut anywhere inside the string: never raises, keeps a prefix of the answer.
    for cut in range(len('{"answer": "'), len(raw)):
        parsed = parse_reply(raw[:cut], finish_reason="length", call_id_prefix="c")
        if parsed.error is None:
            assert answer.startswith(parsed.text)

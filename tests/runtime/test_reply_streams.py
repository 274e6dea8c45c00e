"""Replies read as they stream (runtime._tools._streaming): what the pieces add up to is what the whole parse reads.

Pure logic: the JSON protocol's reader, and the native reader on the real
vLLM Hermes parser with the tiny tool model's tokenizer.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest

from runtime._tools import tool_calling
from runtime._tools._json_protocol import parse_reply
from runtime._tools._native import NativeTools, load_native_tools, parse_native_reply
from runtime._tools._streaming import JsonProtocolStream, NativeStream, PlainStream, ReplyStream
from workflows import ReplyDelta

from .test_tool_formats import ADD, ECHO


def _chunks(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _read(stream: ReplyStream, pieces: list[str], encode: Any = None) -> tuple[str, dict[int, dict[str, Any]]]:
    """The text and the calls (by index: id, name, arguments text) the pieces streamed."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for piece in pieces:
        delta = stream.feed(piece, encode(piece) if encode else ())
        if delta is None:
            continue
        assert isinstance(delta, ReplyDelta) and (delta.text or delta.tool_calls)
        text.append(delta.text)
        for call in delta.tool_calls:
            if call.id is not None:
                assert call.index not in calls, "a call's start is sent once"
                calls[call.index] = {"id": call.id, "name": call.name, "arguments": ""}
            assert call.index in calls, "no arguments before the call's start"
            calls[call.index]["arguments"] += call.arguments
    return "".join(text), calls


REPLIES = [
    {"answer": 'Hel"lo\\ \n\t/ é 😀 \u2028 done'},
    {"answer": ""},
    {"tool_calls": [{"name": "echo", "arguments": {"text": 'Par"is, {nested} [x] \\ 😀'}}]},
    {"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": -2}}, {"name": "echo", "arguments": {"text": ""}}]},
    {"tool_calls": [{"name": "echo", "arguments": {"text": "x", "extra": [1, {"a": [True, None, 2.5e-3]}]}}]},
]


@pytest.mark.parametrize("reply", REPLIES)
@pytest.mark.parametrize("indent", [None, 2], ids=["compact", "spaced"])
def test_the_json_protocol_streams_what_the_whole_parse_reads(reply: dict[str, Any], indent: int | None) -> None:
    separators = (",", ":") if indent is None else None
    raw = json.dumps(reply, indent=indent, separators=separators, ensure_ascii=indent is not None)
    whole = parse_reply(raw, finish_reason="stop", call_id_prefix="call-k")
    rng = random.Random(raw)
    for pieces in ([raw], list(raw), *(_chunks(raw, rng) for _ in range(20))):
        text, calls = _read(JsonProtocolStream(lambda i: f"call-k-{i}"), pieces)
        assert text == whole.text if not whole.tool_calls else text == ""
        assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
            (c.id, c.name, c.arguments) for c in whole.tool_calls
        ]


def test_raw_control_characters_in_arguments_stream_escaped_as_strict_json() -> None:
    # The grammar lets a model write a raw newline inside a string; the whole parse reads it leniently.
    raw = '{"tool_calls":[{"name":"echo","arguments":{"text":"a\nb\tc\\u0001"}}]}'
    assert "\n" in raw and "\t" in raw  # raw control characters, not escapes
    whole = parse_reply(raw, finish_reason="stop", call_id_prefix="id")
    _, calls = _read(JsonProtocolStream(lambda i: f"id-{i}"), list(raw))
    assert json.loads(calls[0]["arguments"]) == whole.tool_calls[0].arguments == {"text": "a\nb\tc\u0001"}


def test_arguments_written_before_the_name_come_with_the_calls_start() -> None:
    raw = '{"tool_calls": [{"arguments": {"text": "x"}, "name": "echo"}]}'
    text, calls = _read(JsonProtocolStream(lambda i: f"id-{i}"), list(raw))
    assert text == "" and calls == {0: {"id": "id-0", "name": "echo", "arguments": '{"text": "x"}'}}


@pytest.mark.parametrize(
    ("raw", "text", "names"),
    [
        ('{"answer": "cut off here', "cut off here", []),
        ('{"tool_calls": [{"name": "add", "argu', "", ["add"]),
        ("not json at all", "", []),
        ('{"answer": 12}', "", []),
        ('{"other": {"answer": "no"}, "answer": "yes"}', "yes", []),
    ],
)
def test_output_the_protocol_does_not_hold_streams_what_it_can_and_never_raises(
    raw: str, text: str, names: list[str]
) -> None:
    got, calls = _read(JsonProtocolStream(lambda i: f"id-{i}"), list(raw))
    assert got == text and [c["name"] for c in calls.values()] == names


def test_a_reply_without_tools_streams_as_it_is() -> None:
    calling = tool_calling([])
    stream = calling.stream(lambda: "unused")
    assert isinstance(stream, PlainStream)
    assert _read(stream, ["Hello", "", " world"]) == ("Hello world", {})


@pytest.fixture(scope="module")
def hermes(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> NativeTools:
    from runtime._models import prepare_tiny_tools

    native = load_native_tools(prepare_tiny_tools(tmp_path_factory.mktemp("models") / "tiny-tools"), "tiny-tools")
    assert native is not None and native.parser == "hermes"
    return native


@pytest.mark.parametrize(
    "raw",
    [
        'Let me add. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "echo", "arguments": {"text": "hi there"}}\n</tool_call>',
        "Just an answer, no call.",
    ],
)
def test_native_calls_stream_through_the_vllm_parser_as_the_whole_parse_reads_them(
    hermes: NativeTools, raw: str
) -> None:
    whole = parse_native_reply(hermes, raw, [ADD, ECHO], "auto", finish_reason="stop", call_id_prefix="call-k")
    assert whole.error is None
    tokenizer = hermes.tokenizer
    ids = tokenizer.encode(raw, add_special_tokens=False)
    # As the engine streams it: one token's text at a time.
    pieces = [tokenizer.decode(ids[: i + 1])[len(tokenizer.decode(ids[:i])) :] for i in range(len(ids))]
    assert "".join(pieces) == raw
    stream = tool_calling([ADD, ECHO], hermes).stream(lambda: "call-k")
    assert isinstance(stream, NativeStream)
    text, calls = _read(stream, pieces, lambda piece: tokenizer.encode(piece, add_special_tokens=False))
    assert text.strip() == whole.text.strip()
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        (c.id, c.name, c.arguments) for c in whole.tool_calls
    ]


def test_with_tool_choice_none_a_native_reply_streams_as_text(hermes: NativeTools) -> None:
    stream = tool_calling([ADD], hermes, tool_choice="none").stream(lambda: "call-k")
    assert _read(stream, ["<tool_call>", "{}"]) == ("<tool_call>{}", {})

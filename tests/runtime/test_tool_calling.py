"""One chat call's tools, prepared and parsed (``ToolCalling``), and the model's tool template the dispatcher keeps.

Pure logic: the native path runs vLLM's Hermes parser and structural tag on
the tiny model's tokenizer with the Hermes tools template; ``ctx.llm`` is
driven through scripted engines, so no model runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime, VLLMPolicy
from runtime._dispatch import Dispatcher
from runtime._engines import ChatPrompt
from runtime._errors import EngineUnavailableError
from runtime._tools import NativeTools, ParsedReply, load_native_tools, tool_calling
from runtime._tools._json_protocol import ToolPrompt, normalize_messages
from runtime._tools._native import native_argument_chars, native_messages, openai_tools, structural_tag
from runtime.testing import ScriptedEngine
from workflows import Context, LLMReply, ToolCall, workflow


@dataclass(frozen=True)
class Spec:
    """A schema-only tool (the ToolSpec protocol), as an OpenAI client's tool."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=dict)


ADD = Spec(
    "add",
    "Add two numbers",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
)
ECHO = Spec("echo", "Echo text", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 2?"}]
#: A history another client wrote: an assistant's call with JSON-string arguments, then its result.
HISTORY = [
    *MESSAGES,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3"},
]
HERMES_CALL = 'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'


@pytest.fixture(scope="module")
def hermes(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> NativeTools:
    from runtime._models import prepare_tiny_tools

    native = load_native_tools(prepare_tiny_tools(tmp_path_factory.mktemp("models") / "tiny-tools"), "tiny-tools")
    assert native is not None and native.parser == "hermes"
    return native


# -- prepare, then parse ---------------------------------------------------------------


def test_a_call_without_tools_renders_plain_messages_and_reads_the_text() -> None:
    calling = tool_calling((), json_schema={"type": "object"})
    assert calling.tool_format is None
    prepared = calling.prepare(HISTORY)
    assert prepared.prompt == ChatPrompt.of(normalize_messages(HISTORY)) and prepared.prompt.tools == ()
    assert prepared.json_schema == {"type": "object"} and prepared.structural_tag is None
    assert tool_calling(()).prepare(MESSAGES).json_schema is None
    raw = '{"tool_calls": [{"name": "add", "arguments": {}}]}'  # text, not calls: the call has no tools
    assert calling.parse(raw, finish_reason="length", call_id_prefix="call-k") == ParsedReply(raw, (), None)


def test_the_json_path_describes_the_tools_constrains_the_reply_and_reads_the_calls() -> None:
    calling = tool_calling((ADD, ECHO), None, tool_choice="required", parallel_tool_calls=False, max_tokens=64)
    assert calling.tool_format == "json"
    prepared = calling.prepare(HISTORY)
    described = ToolPrompt((ADD, ECHO))
    assert prepared.prompt == ChatPrompt.of(described.with_system(normalize_messages(HISTORY)))
    assert prepared.prompt.tools == () and prepared.structural_tag is None
    assert prepared.json_schema == described.schema("required", 64, parallel_tool_calls=False)
    assert prepared.json_schema["properties"]["tool_calls"]["maxItems"] == 1
    raw = '{"tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]}'
    reply = calling.parse(raw, finish_reason="stop", call_id_prefix="call-k")
    assert reply == ParsedReply("", (ToolCall("call-k-0", "add", {"a": 1, "b": 2}),), None)
    cut = calling.parse('{"tool_calls": [{"na', finish_reason="length", call_id_prefix="call-k")
    assert cut == ParsedReply('{"tool_calls": [{"na', (), "output cut off by max_tokens")


def test_the_native_path_hands_the_template_the_tools_forces_required_calls_and_reads_them(hermes: NativeTools) -> None:
    free = tool_calling((ADD, ECHO), hermes, tool_choice="auto", max_tokens=96)
    assert free.tool_format == "native"
    prepared = free.prepare(HISTORY)
    assert prepared.prompt == ChatPrompt.of(native_messages(HISTORY), tools=openai_tools([ADD, ECHO]))
    assert prepared.prompt.messages[2]["tool_calls"][0]["function"]["arguments"] == {"a": 1, "b": 2}
    assert prepared.structural_tag is None and prepared.json_schema is None  # "auto" generates freely
    forced = tool_calling((ADD, ECHO), hermes, tool_choice="add", parallel_tool_calls=False, max_tokens=96)
    tag = forced.prepare(MESSAGES).structural_tag
    chars = native_argument_chars(hermes, [ADD, ECHO], 96)
    assert tag is not None
    assert tag == structural_tag(hermes, [ADD, ECHO], "add", parallel_tool_calls=False, max_chars=chars)
    assert free.parse(HERMES_CALL, finish_reason="stop", call_id_prefix="call-k") == ParsedReply(
        "Sure. ", (ToolCall("call-k-0", "add", {"a": 1, "b": 2}),), None
    )
    missing = forced.parse("no call", finish_reason="stop", call_id_prefix="call-k")
    assert missing.tool_calls == () and missing.error is not None and "required" in missing.error


def test_a_tool_choice_that_names_no_tool_fails_before_generation(hermes: NativeTools) -> None:
    for native in (None, hermes):
        calling = tool_calling((ADD,), native, tool_choice="nope")
        with pytest.raises(ValueError, match="names no tool"):
            calling.prepare(MESSAGES)


def test_tools_and_a_json_schema_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="either tools or json_schema"):
        tool_calling((ADD,), json_schema={"type": "object"})


# -- the model's tool template, asked of the engines once ----------------------------------


class TemplateEngine(ScriptedEngine):
    """A scripted engine whose model does tools as ``native`` says; counts how often it was asked."""

    def __init__(
        self, name: str, native: NativeTools | None, *, text: str = "ok", down: bool = False, broken: bool = False
    ) -> None:
        super().__init__(name, text=text)
        self.native = native
        self.down = down  # not available for dispatch
        self.broken = broken  # cannot answer
        self.asked = 0

    def _available(self) -> bool:
        return not self.down

    async def tool_template(self) -> NativeTools | None:
        self.asked += 1
        if self.broken:
            raise EngineUnavailableError(f"{self.name} is down")
        return self.native


async def test_the_dispatcher_asks_until_an_engine_answers_and_keeps_the_answer() -> None:
    broken = TemplateEngine("broken", NativeTools("m", "hermes"), broken=True)
    plain = TemplateEngine("plain", None)
    other = TemplateEngine("other", NativeTools("m", "hermes"))
    dispatcher = Dispatcher([broken, plain, other], VLLMPolicy())
    assert await dispatcher.tool_template() is None  # plain answered: its model renders no tools
    assert await dispatcher.tool_template() is None
    assert (broken.asked, plain.asked, other.asked) == (1, 1, 0)


async def test_no_answer_is_not_kept() -> None:
    first = TemplateEngine("first", NativeTools("m", "hermes"), broken=True)
    dispatcher = Dispatcher([first], VLLMPolicy())
    assert await dispatcher.tool_template() is None
    first.broken = False
    assert await dispatcher.tool_template() == NativeTools("m", "hermes")
    assert await dispatcher.tool_template() == NativeTools("m", "hermes")
    assert first.asked == 2  # the failed question and the one answered; then kept


# -- through ctx.llm: prepare, generate, parse ------------------------------------------------


@workflow
async def three_calls(ctx: Context) -> list[LLMReply]:
    native = await ctx.llm(MESSAGES, tools=[ADD, ECHO], tool_choice="required", max_tokens=96)
    json = await ctx.llm(MESSAGES, tools=[ADD, ECHO], tool_format="json", max_tokens=96)
    plain = await ctx.llm(MESSAGES, max_tokens=96)
    return [native, json, plain]


async def test_ctx_llm_prepares_generates_and_parses_on_the_path_the_model_takes(hermes: NativeTools) -> None:
    # The unavailable engine is asked second, so the available one's template decides.
    down = TemplateEngine("down", None, text=HERMES_CALL, down=True)
    up = TemplateEngine("up", hermes, text=HERMES_CALL)
    async with Runtime([down, up]) as rt:
        native, json, plain = await rt.run(three_calls)
    assert up.asked == 1 and down.asked == 0  # once for the runtime, not per call
    first, second, third = up.seen
    assert first.prompt == ChatPrompt.of(MESSAGES, tools=openai_tools([ADD, ECHO]))
    assert first.sampling.structural_tag is not None and first.sampling.json_schema is None
    assert native.tool_format == "native" and native.tool_call_error is None and native.text == "Sure. "
    assert [(c.name, c.arguments) for c in native.tool_calls] == [("add", {"a": 1, "b": 2})]
    assert native.tool_calls[0].id.startswith("call-") and native.tool_calls[0].id.endswith("-0")
    assert isinstance(second.prompt, ChatPrompt) and second.prompt.tools == ()
    assert second.sampling.json_schema is not None and second.sampling.structural_tag is None
    assert json.tool_format == "json" and json.tool_calls == ()
    assert json.tool_call_error is not None and json.tool_call_error.startswith("invalid JSON")
    assert third.prompt == ChatPrompt.of(MESSAGES) and third.sampling.json_schema is None
    assert plain.tool_format is None and plain.text == plain.raw_text == HERMES_CALL and plain.tool_calls == ()

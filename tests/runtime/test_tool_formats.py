"""Native tool formats, pure logic: template detection, parser choice, messages, structural tags, parsing, errors.

No engine runs here: the parsers and structural tags are vLLM's own code,
fed the tiny model's tokenizer with the Hermes tools template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from runtime._engines import ChatPrompt, SamplingOptions
from runtime._journal._codec import PromptChain, sampling_json
from runtime._models._common import CHATML_TEMPLATE, HERMES_TOOLS_TEMPLATE
from runtime._tools import tool_specs
from runtime._tools._native import (
    NativeTools,
    detect_parser,
    load_native_tools,
    native_messages,
    openai_tools,
    parse_native_reply,
    resolve_tool_format,
    structural_tag,
    template_supports_tools,
)
from toolbridge import ToolDefinitionError, tool

LLAMA3_TEMPLATE = (
    "{%- if tools is not none -%}Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments{%- endif -%}{%- for m in messages -%}<|python_tag|>{{ m.content }}{%- endfor -%}"
)
MISTRAL_TEMPLATE = "{%- if tools -%}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{%- endif -%}[TOOL_CALLS]"


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


@pytest.fixture(scope="module")
def hermes(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> NativeTools:
    from runtime._models import prepare_tiny_tools

    native = load_native_tools(prepare_tiny_tools(tmp_path_factory.mktemp("models") / "tiny-tools"), "tiny-tools")
    assert native is not None
    return native


# -- detection ------------------------------------------------------------------------


def test_chatml_does_not_do_tools() -> None:
    assert not template_supports_tools(CHATML_TEMPLATE)
    assert detect_parser(CHATML_TEMPLATE) is None
    assert not template_supports_tools(None)


@pytest.mark.parametrize(
    ("template", "parser"),
    [(HERMES_TOOLS_TEMPLATE, "hermes"), (LLAMA3_TEMPLATE, "llama3_json"), (MISTRAL_TEMPLATE, "mistral")],
)
def test_parser_from_template(template: str, parser: str) -> None:
    assert template_supports_tools(template)
    assert detect_parser(template) == parser


def test_tools_in_text_only_is_not_tool_support() -> None:
    # "tools" outside Jinja tags is prose, not the variable.
    assert not template_supports_tools("You have no tools. {{ messages[0].content }}")
    assert template_supports_tools("{% for tool in tools %}{{ tool }}{% endfor %}")
    assert detect_parser("{% if tools %}call them{% endif %}") is None


def test_tiny_has_no_tools_and_the_variant_has_hermes(tiny_model: Path, hermes: NativeTools) -> None:
    assert load_native_tools(tiny_model, "tiny") is None
    assert hermes.parser == "hermes"
    assert load_native_tools(tiny_model / "no-such-dir", "x") is None


def test_hermes_template_renders_chatml_without_tools(hermes: NativeTools) -> None:
    tok = hermes.tokenizer
    chats = [
        [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}],
    ]
    for chat in chats:
        for generation in (True, False):
            plain = tok.apply_chat_template(
                chat, chat_template=CHATML_TEMPLATE, tokenize=False, add_generation_prompt=generation
            )
            assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation) == plain


# -- choosing the format -----------------------------------------------------------------


def test_resolve_format(hermes: NativeTools) -> None:
    assert resolve_tool_format("json", hermes) is None
    assert resolve_tool_format("auto", None) is None
    chosen = resolve_tool_format("auto", hermes)
    assert chosen is not None and chosen.parser == "hermes"
    override = resolve_tool_format("native", hermes, tool_parser="llama3_json")
    assert override is not None and override.parser == "llama3_json"
    unknown_format = NativeTools("m", None)
    assert resolve_tool_format("auto", unknown_format) is None


def test_native_without_support_names_model_and_fix() -> None:
    with pytest.raises(ValueError, match=r"model 'tiny'.*tool_format='json'"):
        resolve_tool_format("native", None, model="tiny")
    with pytest.raises(ValueError, match="tool_parser="):
        resolve_tool_format("native", NativeTools("m", None))


def test_bad_format_or_parser_name() -> None:
    with pytest.raises(ValueError, match="tool_format must be one of"):
        resolve_tool_format("xml", None)
    with pytest.raises(ValueError, match=r"unknown vLLM tool parser 'nope'.*hermes"):
        resolve_tool_format("auto", None, tool_parser="nope")


# -- tools and messages -------------------------------------------------------------------


def test_tool_specs_accept_schema_only_tools() -> None:
    @tool
    def mul(a: int, b: int) -> int:
        """Multiply."""
        return a * b

    def plain(x: str) -> str:
        return x

    specs = tool_specs([ADD, mul, plain])
    assert [s.name for s in specs] == ["add", "mul", "plain"]
    assert specs[0] is ADD
    with pytest.raises(ToolDefinitionError, match="two tools are named 'add'"):
        tool_specs([ADD, ADD])


def test_openai_tools_shape() -> None:
    (fn,) = openai_tools([ADD])
    assert fn == {
        "type": "function",
        "function": {"name": "add", "description": ADD.description, "parameters": ADD.parameters},
    }


def test_native_messages_parse_string_arguments() -> None:
    history = [
        {"role": "user", "content": "add"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "not json"}}]},
    ]
    out = native_messages(history)
    assert out[1]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    ]
    assert out[2] == history[2]
    assert out[3]["tool_calls"][0]["function"]["arguments"] == "not json"
    with pytest.raises(ValueError, match="message 0"):
        native_messages([{"content": "no role"}])


def test_template_renders_tools_calls_and_responses(hermes: NativeTools) -> None:
    history = native_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "add 1 and 2"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "name": "add", "content": "3"},
        ]
    )
    text = hermes.tokenizer.apply_chat_template(
        history, tools=list(openai_tools([ADD])), tokenize=False, add_generation_prompt=True
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools")
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in text
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


# -- structural tags --------------------------------------------------------------------------


def test_structural_tag_only_when_a_call_is_required(hermes: NativeTools) -> None:
    assert structural_tag(hermes, [ADD], "auto") is None
    assert structural_tag(hermes, [ADD], "none") is None
    tag = structural_tag(hermes, [ADD, ECHO], "required", max_chars=12)
    assert tag is not None
    data = json.loads(tag)
    assert data["type"] == "structural_tag"
    text = json.dumps(data)
    assert '<tool_call>\\n{\\"name\\": \\"add\\", \\"arguments\\": ' in text
    assert '"maxLength": 12' in text  # argument strings are bounded for the grammar
    assert '"stop_after_first": false' in text
    assert '"additionalProperties": false' in text  # no invented argument names
    assert '"max_whitespace_cnt": 1' in text and '"max_whitespace_cnt": null' not in text


def test_structural_tag_single_call_and_named(hermes: NativeTools) -> None:
    single = structural_tag(hermes, [ADD, ECHO], "required", parallel_tool_calls=False)
    assert single is not None and '"stop_after_first": true' in single
    named = structural_tag(hermes, [ADD, ECHO], "echo")
    assert named is not None and '\\"echo\\"' in named and '\\"add\\"' not in named
    with pytest.raises(ValueError, match="names no tool"):
        structural_tag(hermes, [ADD], "missing")


def test_no_structural_tag_for_parsers_without_one() -> None:
    assert structural_tag(NativeTools("m", "pythonic"), [ADD], "required") is None


def test_argument_bound_leaves_room_for_the_envelope(hermes: NativeTools) -> None:
    from runtime._tools._native import native_argument_chars

    envelope = len(hermes.tokenizer.encode('<tool_call>\n{"name": "echo", "arguments": {}}\n</tool_call>'))
    for max_tokens in (64, 96, 256):
        chars = native_argument_chars(hermes, [ADD, ECHO], max_tokens)
        # The envelope, one argument's overhead and four tokens a character fit in max_tokens.
        assert chars >= 4 and envelope + 12 + 4 * chars <= max_tokens
    assert native_argument_chars(hermes, [ECHO], 8) == 4  # never below a usable minimum
    assert native_argument_chars(NativeTools("m", "hermes"), [ECHO], 96) == (96 - 16 - 12) // 4


def test_sampling_options_take_one_constraint() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        SamplingOptions(json_schema={"type": "object"}, structural_tag="{}")


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"seed": 2**63}, "64-bit"),
        ({"seed": -(2**63) - 1}, "64-bit"),
        ({"stop": ("end", "")}, "empty string"),
    ],
)
def test_sampling_options_refuse_what_vllm_refuses(options: dict[str, Any], says: str) -> None:
    # Left to the engine, these fail inside vLLM's generate() or its engine core: as a server error, not the caller's.
    with pytest.raises(ValueError, match=says):
        SamplingOptions(**options)
    SamplingOptions(seed=2**63 - 1, stop=("end",))


# -- parsing ------------------------------------------------------------------------------------


def parse(native: NativeTools, raw: str, choice: str = "auto", finish: str = "stop") -> Any:
    return parse_native_reply(native, raw, [ADD, ECHO], choice, finish_reason=finish, call_id_prefix="call-k")


def test_parse_calls_with_stable_ids(hermes: NativeTools) -> None:
    raw = (
        'Sure. <tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
        '<tool_call>{"name": "echo", "arguments": {"text": "x"}}</tool_call>'
    )
    parsed = parse(hermes, raw)
    assert parsed.error is None
    assert parsed.text == "Sure. "
    assert [(c.id, c.name, c.arguments) for c in parsed.tool_calls] == [
        ("call-k-0", "add", {"a": 1, "b": 2}),
        ("call-k-1", "echo", {"text": "x"}),
    ]


def test_parse_answer(hermes: NativeTools) -> None:
    parsed = parse(hermes, "The answer is 3.")
    assert (parsed.text, parsed.tool_calls, parsed.error) == ("The answer is 3.", (), None)
    assert parse(hermes, "<tool_call>", choice="none").error is None  # no calls when none were allowed


@pytest.mark.parametrize(
    ("raw", "choice", "finish", "why"),
    [
        ('<tool_call>\n{"name": "add", "argu', "auto", "length", "cut off by max_tokens"),
        ("<tool_call>\nnot json\n</tool_call>", "auto", "stop", "does not parse"),
        ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>', "auto", "stop", "not an object"),
        ("plain text", "required", "stop", "required"),
        ("plain text", "add", "stop", "required"),
    ],
)
def test_malformed_native_calls_are_reported(hermes: NativeTools, raw: str, choice: str, finish: str, why: str) -> None:
    parsed = parse(hermes, raw, choice, finish)
    assert parsed.tool_calls == ()
    assert parsed.error is not None and why in parsed.error
    assert parsed.text == raw


# -- journal fingerprints --------------------------------------------------------------------------


def test_prompt_links_include_tools() -> None:
    messages = [{"role": "user", "content": "hi"}]
    plain, _ = PromptChain().link(ChatPrompt.of(messages))
    with_add, blobs = PromptChain().link(ChatPrompt.of(messages, tools=openai_tools([ADD])))
    with_echo, _ = PromptChain().link(ChatPrompt.of(messages, tools=openai_tools([ECHO])))
    assert len({plain, with_add, with_echo}) == 3
    assert any(kind == "tools" for _, kind, _ in blobs)
    # One chain, turns in a row: the shared prefix is reused only for the same tools.
    chain = PromptChain()
    first, blobs = chain.link(ChatPrompt.of(messages, tools=openai_tools([ADD])))
    chain.mark_stored(blobs)
    assert first == with_add
    longer = [*messages, {"role": "assistant", "content": "x"}]
    second, _ = chain.link(ChatPrompt.of(longer, tools=openai_tools([ADD])))
    assert second == PromptChain().link(ChatPrompt.of(longer, tools=openai_tools([ADD])))[0]
    third, _ = chain.link(ChatPrompt.of(longer, tools=openai_tools([ECHO])))
    assert third == PromptChain().link(ChatPrompt.of(longer, tools=openai_tools([ECHO])))[0] != second
    assert chain.link(ChatPrompt.of(longer))[0] == PromptChain().link(ChatPrompt.of(longer))[0]


def test_sampling_fingerprint_unchanged_without_structural_tag() -> None:
    assert b"structural_tag" not in sampling_json(SamplingOptions())
    assert b"structural_tag" in sampling_json(SamplingOptions(structural_tag="{}"))


# -- the HTTP body -----------------------------------------------------------------------------------


def test_remote_body_renders_tools_without_server_tool_parsing() -> None:
    from runtime._engines import GenerateRequest
    from runtime._engines._remote import request_body

    prompt = ChatPrompt.of([{"role": "user", "content": "hi"}], tools=openai_tools([ADD]))
    path, body = request_body(GenerateRequest("r1", prompt, SamplingOptions(structural_tag='{"type": "x"}')), "m")
    assert path == "/v1/chat/completions"
    assert body["tools"] == list(openai_tools([ADD]))
    assert body["tool_choice"] == "none" and body["skip_special_tokens"] is False
    assert body["structured_outputs"] == {"structural_tag": '{"type": "x"}'}
    _, plain = request_body(GenerateRequest("r2", ChatPrompt.of([{"role": "user", "content": "hi"}])), "m")
    assert "tools" not in plain and "tool_choice" not in plain and "structured_outputs" not in plain


# -- engines that read a local tokenizer ---------------------------------------------------------------


async def test_remote_and_server_engines_read_local_templates(hermes: NativeTools, tiny_model: Path) -> None:
    from runtime import RemoteEngine, ServerEngine
    from runtime._models import prepare_tiny_tools

    # Nothing is started: the template is read from the model's directory.
    remote = RemoteEngine("http://127.0.0.1:9", model=str(prepare_tiny_tools()))
    found = await remote.tool_template()
    assert found is not None and found.parser == "hermes"
    assert await RemoteEngine("http://127.0.0.1:9", model="org/hub-model").tool_template() is None
    assert await ServerEngine("tiny").tool_template() is None  # plain ChatML

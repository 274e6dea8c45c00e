"""Native tool calling on a real engine: the tiny model with a Hermes tools template (``tiny-tools``).

The model's weights are random, so it calls tools only when forced: with
``tool_choice="required"`` the structural tag makes it write a Hermes
``<tool_call>`` the parser reads back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from runtime import InProcessEngine, Runtime
from runtime._engines import ChatPrompt, GenerateRequest, SamplingOptions
from runtime._tools._native import openai_tools
from toolbridge import tool
from workflows import Agent, Context, LLMReply, ReplyDelta, workflow

pytestmark = pytest.mark.engine


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


class EchoSpec:
    """A schema-only tool, as the OpenAI gateway passes a client's tools."""

    name = "echo"
    description = "Echo a number"
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }


@pytest.fixture(scope="module")
def tiny_tools(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from runtime._models import prepare_tiny_tools

    return prepare_tiny_tools(tmp_path_factory.mktemp("models") / "tiny-tools")


@pytest.fixture(scope="module")
async def native_rt(tiny_tools: Path) -> AsyncIterator[Runtime]:
    engine = InProcessEngine(tiny_tools, name="tiny-tools-0", max_num_seqs=4, engine_args={"enforce_eager": True})
    async with Runtime([engine]) as runtime:
        yield runtime


def _engine(rt: Runtime) -> InProcessEngine:
    engine = rt.engines[0]
    assert isinstance(engine, InProcessEngine)
    return engine


async def test_engine_knows_the_template(native_rt: Runtime, rt: Runtime) -> None:
    native = await _engine(native_rt).tool_template()
    assert native is not None and native.parser == "hermes"
    assert await _engine(rt).tool_template() is None  # plain ChatML tiny


async def test_tools_are_rendered_by_the_template(native_rt: Runtime) -> None:
    engine = _engine(native_rt)
    messages = [
        {"role": "user", "content": "look up a"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": {"key": "a"}}}],
        },
        {"role": "tool", "tool_call_id": "c1", "name": "lookup", "content": "value of a"},
    ]
    prompt = ChatPrompt.of(messages, tools=openai_tools([lookup]))
    done = await engine.generate(GenerateRequest("render-1", prompt, SamplingOptions(max_tokens=2)))
    assert done.prompt_token_ids is not None
    text = engine.vllm.get_tokenizer().decode(list(done.prompt_token_ids))
    assert "<tools>" in text and '"name": "lookup"' in text
    assert '<tool_call>\n{"name": "lookup", "arguments": {"key": "a"}}\n</tool_call>' in text
    assert "<tool_response>\nvalue of a\n</tool_response>" in text


async def test_required_call_is_native_and_parsed(native_rt: Runtime) -> None:
    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm(
            [{"role": "user", "content": "echo 3"}], tools=[EchoSpec(), lookup], tool_choice="required", max_tokens=64
        )

    reply = await native_rt.run(call)
    assert reply.tool_format == "native"
    assert reply.tool_call_error is None, reply.raw_text
    assert reply.raw_text.lstrip().startswith("<tool_call>")
    assert reply.finish_reason == "stop" and "<|im_end|>" not in reply.raw_text  # the stop token is not text
    assert reply.tool_calls and reply.tool_calls[0].name in ("echo", "lookup")
    assert reply.tool_calls[0].id.startswith("call-") and reply.tool_calls[0].id.endswith("-0")


async def test_named_single_call_then_tool_turn(native_rt: Runtime) -> None:
    @workflow
    async def two_turns(ctx: Context) -> tuple[LLMReply, LLMReply]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "look up b"}]
        first = await ctx.llm(messages, tools=[lookup], tool_choice="lookup", parallel_tool_calls=False, max_tokens=48)
        (call,) = first.tool_calls
        messages.append({"role": "assistant", "content": None, "tool_calls": [call.to_openai()]})
        result = await ctx.call_tool(call, [lookup])
        messages.append(result.to_message())
        second = await ctx.llm(messages, tools=[lookup], tool_choice="none", max_tokens=4)
        return first, second

    first, second = await native_rt.run(two_turns)
    assert first.tool_calls[0].name == "lookup" and first.tool_format == "native"
    assert second.tool_format == "native" and second.tool_calls == ()
    # The second prompt holds the first, its call and the tool's response.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10


async def test_json_format_still_works_on_a_tools_template(native_rt: Runtime) -> None:
    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm(
            [{"role": "user", "content": "look up c"}],
            tools=[lookup],
            tool_choice="required",
            parallel_tool_calls=False,
            tool_format="json",
            max_tokens=64,
        )

    reply = await native_rt.run(call)
    assert reply.tool_format == "json"
    assert reply.tool_call_error is None and reply.tool_calls[0].name == "lookup"
    assert reply.raw_text.startswith('{"tool_calls"')


async def test_auto_on_plain_chatml_is_json(rt: Runtime) -> None:
    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm(
            [{"role": "user", "content": "hi"}],
            tools=[EchoSpec()],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=48,
        )

    reply = await rt.run(call)
    assert reply.tool_format == "json" and reply.tool_calls[0].name == "echo"


async def test_native_on_a_template_without_tools_raises(rt: Runtime) -> None:
    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm([{"role": "user", "content": "hi"}], tools=[lookup], tool_format="native", max_tokens=4)

    with pytest.raises(ValueError, match=r"does not render tools.*tool_format='json'"):
        await rt.run(call)


async def test_agent_end_to_end_native(native_rt: Runtime) -> None:
    agent = Agent(
        "Use the tools.",
        tools=[lookup],
        tool_choice="required",
        parallel_tool_calls=False,
        max_turns=3,
        max_tokens=96,
        tool_format="native",
        name="native-agent",
    )

    @workflow
    async def run(ctx: Context) -> Any:
        return await agent.run(ctx, "look up d")

    result = await native_rt.run(run)
    # A call is required on every turn but the last, which must answer.
    assert result.stopped == "answer" and len(result.turns) == 3
    assert [t.reply.tool_format for t in result.turns] == ["native"] * 3
    assert not result.repairs, [(t.reply.tool_call_error, t.reply.raw_text) for t in result.turns]
    assert result.tool_results and all(r.ok for r in result.tool_results)
    roles = [m["role"] for m in result.messages]
    assert roles[:5] == ["system", "user", "assistant", "tool", "assistant"]
    assert result.messages[2]["tool_calls"][0]["function"]["name"] == "lookup"


@pytest.mark.server
async def test_native_call_through_a_server(tiny_tools: Path, tmp_path: Path) -> None:
    """Over HTTP: tools rendered by the server's template (tool_choice "none"), our structural tag, our parser."""
    from runtime import ServerEngine

    engine = ServerEngine(tiny_tools, max_model_len=4096, pins=False, log_path=tmp_path / "serve.log")

    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm(
            [{"role": "user", "content": "echo 3"}], tools=[EchoSpec()], tool_choice="echo", max_tokens=64
        )

    async with Runtime([engine]) as runtime:
        native = await engine.tool_template()
        assert native is not None and native.parser == "hermes"
        reply = await runtime.run(call)
    assert reply.tool_format == "native"
    assert reply.tool_call_error is None, reply.raw_text
    assert [c.name for c in reply.tool_calls] == ["echo"]
    assert reply.usage.prompt_tokens > 100  # the template's tools preamble was rendered


async def test_a_native_call_streams_as_deltas_with_the_replys_ids(native_rt: Runtime) -> None:
    deltas: list[ReplyDelta] = []

    @workflow
    async def call(ctx: Context) -> LLMReply:
        return await ctx.llm(
            [{"role": "user", "content": "echo 3"}],
            tools=[EchoSpec()],
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
            on_delta=deltas.append,
        )

    reply = await native_rt.run(call)
    assert reply.tool_format == "native" and reply.tool_call_error is None, reply.raw_text
    pieces = [c for d in deltas for c in d.tool_calls]
    starts = [c for c in pieces if c.id is not None]
    assert [(c.index, c.id, c.name) for c in starts] == [(0, reply.tool_calls[0].id, "echo")]
    assert len(pieces) > 1  # the arguments came in pieces after the call's start
    assert json.loads("".join(c.arguments for c in pieces)) == reply.tool_calls[0].arguments
    assert "<tool_call>" not in "".join(d.text for d in deltas)  # the format's syntax is not answer text

"""``Gateway`` on a real engine (tiny model), driven by real HTTP clients: the openai SDK and aiohttp."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anyio
import openai
import pytest
from openai import AsyncOpenAI

from runtime import Gateway, InProcessEngine, Program, ProgramState, Runtime, Tenant
from runtime._program import NodeKind

from ..runtime._helpers import poll_until

pytestmark = pytest.mark.engine

# Longer than one 128-token KV block of the CPU engine, so a later turn's cached prefix shows.
SYSTEM = " ".join(
    f"Rule {i}: answer briefly, use the tools you are given, and never invent a result they did not return."
    for i in range(12)
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _engine(rt: Runtime) -> InProcessEngine:
    engine = rt.engines[0]
    assert isinstance(engine, InProcessEngine)
    return engine


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


async def test_chat_answers_in_openai_shape_with_usage(client: AsyncOpenAI, gateway: Gateway) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model=gateway.model_name,
        messages=_messages("Say hello."),
        max_tokens=8,
        temperature=0,  # type: ignore[arg-type]
    )
    reply = raw.parse()
    assert reply.object == "chat.completion" and reply.model == gateway.model_name
    (choice,) = reply.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 100
    assert 1 <= reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # A request naming no session is a program of one call, ended with it.
    program = gateway.runtime.programs[raw.headers["X-Agentrt-Program-Id"]]
    await poll_until(_ended(program), timeout_s=10)
    assert program.llm_calls == 1 and program.workflow == "gateway"


def _ended(program: Program) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return program.state.finished

    return check


async def test_streamed_text_is_the_same_reply_and_ends_with_usage(client: AsyncOpenAI, gateway: Gateway) -> None:
    question = _messages("Count to five.")
    whole = await client.chat.completions.create(
        model=gateway.model_name,
        messages=question,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    stream = await client.chat.completions.create(
        model=gateway.model_name,
        messages=question,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage, chunks = [], None, None, 0
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks >= 3  # the role, token deltas, the finish, the usage
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    # The second, identical prompt found the first one's blocks in the prefix cache.
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens > 0


def _weather_call(gateway: Gateway, **more: Any) -> dict[str, Any]:
    """A chat request that must call the weather tool, once, greedily decoded."""
    return {
        "model": gateway.model_name,
        "messages": _messages("What is the weather in Oslo?"),
        "tools": [WEATHER],
        "tool_choice": "required",
        # One call a reply: the random model would otherwise fill max_tokens with several.
        "parallel_tool_calls": False,
        "max_tokens": 64,
        "temperature": 0,
        **more,
    }


async def test_tools_come_back_as_openai_tool_calls(client: AsyncOpenAI, gateway: Gateway) -> None:
    for stream in (False, True):
        kwargs = _weather_call(gateway)
        if stream:
            calls: dict[int, dict[str, str]] = {}
            finish = None
            async for chunk in await client.chat.completions.create(stream=True, **kwargs):  # type: ignore[call-overload]
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    for call in choice.delta.tool_calls or ():
                        entry = calls.setdefault(call.index, {"name": "", "arguments": "", "id": ""})
                        entry["id"] += call.id or ""
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
            assert finish == "tool_calls" and calls
            found = list(calls.values())
        else:
            reply = await client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
            assert reply.choices[0].finish_reason == "tool_calls"
            assert reply.choices[0].message.content is None
            found = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in reply.choices[0].message.tool_calls or ()
            ]
        assert found and all(c["name"] == "get_weather" and c["id"] for c in found)
        assert all(isinstance(json.loads(c["arguments"])["city"], str) for c in found)


async def test_with_tools_declared_the_answer_streams_token_by_token(client: AsyncOpenAI, gateway: Gateway) -> None:
    # Agent frameworks send their tools on every request: the answer must still stream.
    kwargs: dict[str, Any] = {
        "model": gateway.model_name,
        "messages": _messages("Say something."),
        "tools": [WEATHER],
        "tool_choice": "none",
        "max_tokens": 24,
        "temperature": 0,
    }
    whole = await client.chat.completions.create(**kwargs)
    pieces: list[str] = []
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            assert not choice.delta.tool_calls
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert whole.choices[0].message.content and "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 1, pieces  # token by token, not one chunk at the end


async def test_streamed_tool_calls_come_as_incremental_deltas_with_the_ids_of_the_reply(
    client: AsyncOpenAI, gateway: Gateway
) -> None:
    kwargs = _weather_call(gateway, extra_body={"program_id": "streamed-calls"})
    starts, argument_pieces, finish = [], [], None
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                assert call.index == 0
                if call.id is not None:
                    starts.append((call.id, call.function.name if call.function else None))
                if call.function and call.function.arguments:
                    argument_pieces.append(call.function.arguments)
    assert finish == "tool_calls"
    assert len(starts) == 1 and starts[0][1] == "get_weather"
    assert len(argument_pieces) > 1, argument_pieces  # the arguments as they are written
    arguments = json.loads("".join(argument_pieces))
    assert isinstance(arguments["city"], str)
    # The same request, not streamed: the same call (greedy decoding).
    kwargs["extra_body"] = {"program_id": "whole-calls"}
    whole = (await client.chat.completions.create(**kwargs)).choices[0].message.tool_calls
    assert whole is not None and len(whole) == 1
    assert json.loads(whole[0].function.arguments) == arguments
    # The streamed id is the one the session knows the call by: answering it reaches the client tool's node.
    assert starts[0][0].startswith("call-")


async def test_a_session_is_one_program_whose_client_tool_the_policy_hears_of(
    client: AsyncOpenAI, gateway: Gateway, gw_runtime: Runtime
) -> None:
    engine = _engine(gw_runtime)
    pins = (await engine.pin_stats()).pins
    messages: list[dict[str, object]] = list(_messages("What is the weather in Oslo?"))
    first = await client.chat.completions.with_raw_response.create(
        model=gateway.model_name,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
        temperature=0,
        extra_headers={"X-Session-ID": "weather-1"},
    )
    reply = first.parse()
    (call, *_) = reply.choices[0].message.tool_calls or ()
    messages.append(reply.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C."})
    await anyio.sleep(0.2)  # the client's tool runs
    second = await client.chat.completions.with_raw_response.create(
        model=gateway.model_name,
        messages=messages,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=8,
        temperature=0,
        extra_headers={"X-Session-ID": "weather-1"},
        extra_body={"last_turn": True},
    )
    program_id = first.headers["X-Agentrt-Program-Id"]
    assert second.headers["X-Agentrt-Program-Id"] == program_id == "weather-1"
    program = gw_runtime.programs[program_id]
    await poll_until(_ended(program), timeout_s=10)  # the last-turn mark ended it
    assert program.state is ProgramState.SUCCEEDED and program.llm_calls == 2
    # The client's tool is a node of the program: started by the reply, finished by the tool message.
    (tool,) = [n for n in program.nodes.values() if n.kind is NodeKind.TOOL]
    assert tool.name == "get_weather" and tool.ok and tool.attributes["client_side"]
    assert tool.duration_s is not None and tool.duration_s >= 0.2
    # The policy pinned the program for the tool; whether the pin outlives the client's 0.2 s depends on what it
    # learned of other tools' times in earlier tests (the agents test's tool takes milliseconds).  The hit itself
    # is asserted by test_agents_framework, on a policy that has seen no tool yet.
    assert (await engine.pin_stats()).pins > pins
    usage = second.parse().usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens > 0


async def test_completions_take_text_or_token_ids(client: AsyncOpenAI, gateway: Gateway) -> None:
    text = await client.completions.create(model=gateway.model_name, prompt="Once upon a time", max_tokens=5)
    assert text.object == "text_completion" and isinstance(text.choices[0].text, str)
    assert text.usage is not None and text.usage.completion_tokens <= 5
    ids = await client.completions.create(
        model=gateway.model_name, prompt=[1, 45, 99, 300], max_tokens=3, extra_body={"return_token_ids": True}
    )
    assert ids.usage is not None and ids.usage.prompt_tokens == 4
    # vLLM's return_token_ids: a client working in token ids continues exactly what the engine generated.
    choice = ids.choices[0].model_dump()
    assert choice["prompt_token_ids"] == [1, 45, 99, 300] and len(choice["token_ids"]) == ids.usage.completion_tokens
    streamed = await client.completions.create(
        model=gateway.model_name, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
    )
    assert [c async for c in streamed]


async def test_turns_of_one_session_at_once_each_stream_their_own_text(
    client: AsyncOpenAI, gateway: Gateway, gw_runtime: Runtime
) -> None:
    prompt, seeds = "Once upon a time", (11, 12)
    texts: dict[int, str] = {}

    async def streamed(seed: int) -> None:
        stream = await client.completions.create(
            model=gateway.model_name,
            prompt=prompt,
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            stream=True,
            extra_headers={"X-Session-ID": "fan-out-1"},
        )
        texts[seed] = "".join([c.choices[0].text async for c in stream if c.choices])

    async with anyio.create_task_group() as tg:
        for seed in seeds:
            tg.start_soon(streamed, seed)
    program = gw_runtime.programs["fan-out-1"]
    assert program.llm_calls == 2  # two turns of one program, at once
    # Each stream carried its own call's text: the text the same seed gives alone (the session's last turns).
    for seed in seeds:
        whole = await client.completions.create(
            model=gateway.model_name,
            prompt=prompt,
            max_tokens=16,
            temperature=1.0,
            seed=seed,
            extra_headers={"X-Session-ID": "fan-out-1"},
            extra_body={"last_turn": seed == seeds[-1]},
        )
        assert texts[seed] == whole.choices[0].text
    assert texts[11] != texts[12]
    await poll_until(_ended(program), timeout_s=10)  # it holds no pin into the next tests
    assert program.llm_calls == 4


async def test_models_health_and_metrics(client: AsyncOpenAI, gateway: Gateway) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == [gateway.model_name]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gateway.url}/health") as health:
            assert health.status == 200 and (await health.json())["status"] == "ok"
        await client.chat.completions.create(
            model=gateway.model_name,
            messages=_messages("Hi."),
            max_tokens=2,  # type: ignore[arg-type]
        )
        async with http.get(f"{gateway.url}/metrics") as metrics:
            text = await metrics.text()
    assert metrics.status == 200
    assert 'agentrt_gateway_requests_total{endpoint="chat",policy="agentrt",status="200",tenant="anonymous"}' in text
    assert 'agentrt_gateway_tokens_total{kind="completion",policy="agentrt",tenant="anonymous"}' in text
    assert 'agentrt_engine_pins_total{engine="gw-0",policy="agentrt"}' in text
    assert 'agentrt_engine_cached_tokens_total{engine="gw-0",policy="agentrt"}' in text
    assert 'agentrt_gateway_programs_ended_total{policy="agentrt",reason="last turn",tenant="anonymous"}' in text
    assert 'agentrt_gateway_programs_started_total{policy="agentrt",tenant="anonymous"}' in text


async def test_bad_requests_get_openai_errors_and_change_nothing(
    client: AsyncOpenAI, gateway: Gateway, gw_runtime: Runtime
) -> None:
    programs = len(gw_runtime.programs)
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-9", messages=_messages("x"))  # type: ignore[arg-type]
    assert missing.value.code == "model_not_found" and "gpt-9" in missing.value.message
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        await client.chat.completions.create(model=gateway.model_name, messages=_messages("x"), n=2)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        for body in (b"{not json", b'{"model": "tiny"}', b'{"model": "tiny", "messages": "hi"}'):
            async with http.post(f"{gateway.url}/v1/chat/completions", data=body) as response:
                error = (await response.json())["error"]
            assert response.status == 400 and error["type"] == "invalid_request_error" and error["message"]
        async with http.get(f"{gateway.url}/v1/nothing") as response:
            assert response.status == 404 and "error" in await response.json()
    assert len(gw_runtime.programs) == programs


async def test_a_context_that_is_too_long_is_refused(client: AsyncOpenAI, gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=gateway.model_name,
            messages=[{"role": "user", "content": "word " * 5000}],
            max_tokens=4,
        )
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"max_tokens": 100_000}, "max_tokens", "cannot be greater than max_model_len=2048"),
        ({"max_tokens": 10**30}, "max_tokens", "cannot be greater than max_model_len=2048"),
        ({"max_completion_tokens": 4096}, "max_tokens", "cannot be greater than max_model_len=2048"),
        ({"seed": 2**70}, "seed", "less than or equal to"),
        ({"stop": [""]}, "stop", "stop cannot contain an empty string"),
    ],
)
async def test_values_vllm_refuses_are_a_400_with_its_reason(
    gateway: Gateway, fields: dict[str, object], param: str, says: str
) -> None:
    # Each of these was a 500 once (a client SDK retries a 5xx: the bad request ran three times).
    body = {"model": gateway.model_name, "messages": _messages("x"), **fields}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as response:
            error = (await response.json())["error"]
        assert response.status == 400, error
        assert error["param"] == param and says in error["message"], error
        # The engine took no harm: the next request is answered.
        body = {"model": gateway.model_name, "messages": _messages("x"), "max_tokens": 2}
        async with http.post(f"{gateway.url}/v1/chat/completions", json=body) as response:
            assert response.status == 200


async def test_sampling_fields_reach_the_engine_and_vllm_checks_them(client: AsyncOpenAI, gateway: Gateway) -> None:
    # A bias that only one token can win: every generated token is that one.
    forced = 1234
    reply = await client.completions.create(
        model=gateway.model_name,
        prompt=[1, 2, 3, 4],
        max_tokens=6,
        temperature=0,
        logit_bias={str(forced): 100},
        extra_body={"return_token_ids": True, "ignore_eos": True, "presence_penalty": 0.0, "top_k": 3},
    )
    assert reply.choices[0].model_extra is not None
    assert reply.choices[0].model_extra["token_ids"] == [forced] * 6
    # The same through the chat endpoint: min_tokens holds the reply open past a stop token id.
    stop_at = 1234
    chat = await client.chat.completions.create(
        model=gateway.model_name,
        messages=_messages("x"),  # type: ignore[arg-type]
        max_tokens=5,
        temperature=0,
        logit_bias={str(stop_at): 100},
        extra_body={"stop_token_ids": [stop_at], "min_tokens": 3},
    )
    # Three tokens while the stop token is held back, then the stop token (counted, not shown): without
    # min_tokens the reply would stop at its first token.
    assert chat.usage is not None and chat.usage.completion_tokens == 4
    assert chat.choices[0].finish_reason == "stop"
    # A value vLLM refuses is a 400 with its reason, from the engine.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=gateway.model_name,
            messages=_messages("x"),  # type: ignore[arg-type]
            max_tokens=2,
            extra_body={"top_k": -5},
        )
    assert "top_k" in caught.value.message


async def test_a_body_nested_too_deeply_is_a_400(gateway: Gateway) -> None:
    raw = b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    async with aiohttp.ClientSession() as http, http.post(f"{gateway.url}/v1/chat/completions", data=raw) as response:
        assert response.status == 400
        assert "nested too deeply" in (await response.json())["error"]["message"]


async def test_a_huge_prompt_holds_up_no_other_request(
    gateway: Gateway, gw_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 20 MB prompt: its body is decoded, and its chat template rendered, off the event loop.  The
    # rendering is held (the real template, behind a gate) until /health and another client's chat
    # are answered: were it on the loop, neither could be, the gate would time out, and the huge
    # request would fail with that instead of the context-length error it gets.
    tokenizer = _engine(gw_runtime).vllm.get_tokenizer()
    render = tokenizer.apply_chat_template
    rendering, others_answered = threading.Event(), threading.Event()

    def gated_render(messages: list[dict[str, object]], *args: object, **kwargs: object) -> object:
        if len(str(messages[-1].get("content"))) > 1_000_000:
            rendering.set()
            if not others_answered.wait(timeout=120):
                raise RuntimeError("rendering held the event loop: nothing else was answered")
        return render(messages, *args, **kwargs)

    monkeypatch.setattr(tokenizer, "apply_chat_template", gated_render)
    huge = {"model": gateway.model_name, "messages": [{"role": "user", "content": "word " * 4_000_000}]}
    async with aiohttp.ClientSession() as http:

        async def send_huge() -> None:
            async with http.post(f"{gateway.url}/v1/chat/completions", json=huge) as response:
                error = (await response.json())["error"]
            assert response.status == 400 and error["code"] == "context_length_exceeded", error
            assert "characters" in error["message"]  # refused by its length before it was tokenized

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_huge)
            assert await anyio.to_thread.run_sync(rendering.wait, 120)
            async with http.get(f"{gateway.url}/health") as response:
                assert response.status == 200
            small = {"model": gateway.model_name, "messages": _messages("Hi"), "max_tokens": 2}
            async with http.post(f"{gateway.url}/v1/chat/completions", json=small) as response:
                assert response.status == 200
            others_answered.set()


async def test_api_keys_authenticate_tenants(gw_runtime: Runtime) -> None:
    async with Gateway(gw_runtime, port=0, api_keys={"sk-alice": Tenant("alice")}) as gw:
        programs = len(gw_runtime.programs)
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError):
                await bad.chat.completions.create(model=gw.model_name, messages=_messages("x"))  # type: ignore[arg-type]
            with pytest.raises(openai.AuthenticationError):
                await bad.models.list()
        async with aiohttp.ClientSession() as http:  # no Authorization header at all
            body = {"model": gw.model_name, "messages": _messages("x")}
            async with http.post(f"{gw.url}/v1/chat/completions", json=body) as response:
                error = (await response.json())["error"]
        assert response.status == 401 and error["code"] == "invalid_api_key"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert len(gw_runtime.programs) == programs  # refused before anything started
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="sk-alice", max_retries=0) as good:
            reply = await good.chat.completions.create(
                model=gw.model_name,
                messages=_messages("x"),
                max_tokens=2,  # type: ignore[arg-type]
            )
        assert reply.usage is not None
        async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/metrics") as metrics:
            text = await metrics.text()
        assert 'status="401",tenant="unknown"' in text and 'status="200",tenant="alice"' in text


async def test_a_client_that_disconnects_aborts_its_engine_request(gateway: Gateway, gw_runtime: Runtime) -> None:
    engine = _engine(gw_runtime)
    body = {
        "model": gateway.model_name,
        "messages": _messages("Write a very long story."),
        "max_tokens": 1500,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "session_id": "leaves-early",
    }
    async with aiohttp.ClientSession() as http:
        response = await http.post(f"{gateway.url}/v1/chat/completions", json=body)
        deltas = 0
        async for line in response.content:
            if b'"content":"' in line and b'"content":""' not in line:
                deltas += 1
            if deltas >= 3:
                break
        response.close()  # drop the connection mid-stream
    program = gw_runtime.programs["leaves-early"]

    async def aborted() -> bool:
        stats = await engine.stats()
        return program.state.finished and stats.in_flight == 0 and not stats.running and not stats.waiting

    await poll_until(aborted, timeout_s=60)
    (call,) = [n for n in program.nodes.values() if n.kind is NodeKind.LLM]
    assert not call.ok  # cut off, not finished: the engine request was aborted
    # The program ended with the client: no pin is left for it.
    assert (await engine.pin_stats()).pinned_programs == 0
    # What it consumed before it left is the program's, and charged to its tenant.
    assert call.attributes.get("usage_partial") and program.usage.completion_tokens >= deltas
    assert program.usage.prompt_tokens > 0


async def test_a_client_that_leaves_is_charged_the_tokens_it_consumed(gw_runtime: Runtime) -> None:
    async with Gateway(gw_runtime, port=0, api_keys={"sk-leaver": Tenant("leaver")}) as gw:

        def charged(kind: str) -> float:
            labels = {"tenant": "leaver", "kind": kind, "policy": "agentrt"}
            return gw.metrics.registry.get_sample_value("agentrt_gateway_tokens_total", labels) or 0.0

        body = {
            "model": gw.model_name,
            "messages": _messages("Write a very long story."),
            "max_tokens": 1500,
            "ignore_eos": True,
            "stream": True,
            "session_id": "leaves-unbilled",
        }
        headers = {"Authorization": "Bearer sk-leaver"}
        async with aiohttp.ClientSession(headers=headers) as http:
            response = await http.post(f"{gw.url}/v1/chat/completions", json=body)
            deltas = 0
            async for line in response.content:
                deltas += b'"content":"' in line and b'"content":""' not in line
                if deltas >= 3:
                    break
            response.close()
        program = gw_runtime.programs["leaver:leaves-unbilled"]

        async def ended() -> bool:
            return program.state.finished

        await poll_until(ended, timeout_s=60)
        assert charged("completion") == program.usage.completion_tokens >= deltas
        assert charged("prompt") == program.usage.prompt_tokens > 0
        ends = {"tenant": "leaver", "reason": "client disconnected", "policy": "agentrt"}
        assert gw.metrics.registry.get_sample_value("agentrt_gateway_programs_ended_total", ends) == 1
        starts = {"tenant": "leaver", "policy": "agentrt"}
        assert gw.metrics.registry.get_sample_value("agentrt_gateway_programs_started_total", starts) == 1


async def test_a_session_never_marked_last_ends_when_its_client_has_gone_quiet(gw_runtime: Runtime) -> None:
    # Framework clients send no last-turn mark: after an answer, with no pause of the client's seen yet, the
    # session waits min_idle_timeout_s, not the 300 s cap (the test would time out waiting for that).
    async with Gateway(gw_runtime, port=0, idle_timeout_s=300, min_idle_timeout_s=0.5) as gw:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as c:
            await c.chat.completions.create(
                model=gw.model_name,
                messages=_messages("Hi"),  # type: ignore[arg-type]
                max_tokens=2,
                extra_body={"session_id": "goes-quiet"},
            )
        program = gw_runtime.programs["goes-quiet"]

        async def ended() -> bool:
            return program.state.finished

        await poll_until(ended, timeout_s=60)
        ends = {"tenant": "anonymous", "reason": "idle", "policy": "agentrt"}
        assert gw.metrics.registry.get_sample_value("agentrt_gateway_programs_ended_total", ends) == 1


#: Output tokens of each flood request: eight of them queue behind two in flight, for hundreds of engine steps.
FLOOD_TOKENS = 400


async def test_two_tenants_one_flooding_both_progress(gw_runtime: Runtime) -> None:
    keys = {"sk-flood": Tenant("flood"), "sk-calm": Tenant("calm")}
    async with Gateway(gw_runtime, port=0, api_keys=keys, max_in_flight=2) as gw:
        finished: list[str] = []

        async def ask(key: str) -> None:
            async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0) as c:
                await c.chat.completions.create(
                    model=gw.model_name,
                    messages=_messages("Tell me a story."),  # type: ignore[arg-type]
                    # The flood's requests are long: its queue stays full until the calm tenant's arrive,
                    # however fast the engine (short ones could drain it between two looks).
                    max_tokens=FLOOD_TOKENS if key == "sk-flood" else 24,
                    temperature=0,
                    extra_body={"ignore_eos": True},
                )
            finished.append(keys[key].name)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ask, "sk-flood")

            async def flood_queued() -> bool:
                return gw.admission.queued("flood") >= 6

            await poll_until(flood_queued, timeout_s=60)
            for _ in range(2):
                tg.start_soon(ask, "sk-calm")
    # The calm tenant's two requests went ahead of most of the flood queued before them.
    last_calm = max(i for i, name in enumerate(finished) if name == "calm")
    assert last_calm < 8, finished

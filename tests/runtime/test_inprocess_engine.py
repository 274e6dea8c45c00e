"""The in-process vLLM engine on the real tiny model."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field

from runtime import (
    ChatPrompt,
    Completion,
    EngineRequestError,
    GenerateRequest,
    SamplingOptions,
    TokenDelta,
    TokenPrompt,
)
from runtime._clock import now as monotonic
from tests.runtime._helpers import poll_until, wait_until_idle

pytestmark = pytest.mark.engine

#: Output tokens of a filler that must still be running when the priority test acts: as many as the
#: engine's context holds (``rt``'s max_model_len, 4,096, less the prompt), the longest decode it
#: allows (the test aborts the fillers when it is done).
FILLER_TOKENS = 4000

HELLO = ChatPrompt.of([{"role": "user", "content": "Say hello."}])


def engine_of(rt: Any) -> Any:
    return rt.engines[0]


async def test_chat_generation_counts_tokens(rt: Any) -> None:
    engine = engine_of(rt)
    out = await engine.generate(GenerateRequest("chat-1", HELLO, SamplingOptions(max_tokens=8, ignore_eos=True)))
    assert out.completion_tokens == 8 == len(out.token_ids)
    assert out.prompt_tokens > 0 and out.prompt_token_ids is not None
    assert len(out.prompt_token_ids) == out.prompt_tokens
    assert out.finish_reason == "length" and out.engine == engine.name
    assert out.ttft_s is not None and 0 < out.ttft_s <= out.e2e_s


async def test_token_prompt_is_used_as_is(rt: Any) -> None:
    ids = tuple(range(100, 140))
    out = await engine_of(rt).generate(GenerateRequest("tok-1", TokenPrompt(ids), SamplingOptions(max_tokens=4)))
    assert out.prompt_tokens == 40 and out.prompt_token_ids == ids


async def test_streaming_deltas_add_up_to_the_completion(rt: Any) -> None:
    deltas: list[TokenDelta] = []
    final: Completion | None = None
    request = GenerateRequest("stream-1", HELLO, SamplingOptions(max_tokens=12, ignore_eos=True))
    async with aclosing(engine_of(rt).stream(request)) as chunks:
        async for chunk in chunks:
            if isinstance(chunk, TokenDelta):
                deltas.append(chunk)
            else:
                final = chunk
    assert final is not None and len(deltas) >= 2
    assert "".join(d.text for d in deltas) == final.text
    assert tuple(t for d in deltas for t in d.token_ids) == final.token_ids


class City(BaseModel):
    name: str = Field(max_length=12)
    population: int = Field(ge=0, le=100_000)
    kind: str = Field(pattern="^(town|city)$")


async def test_structured_output_follows_the_schema(rt: Any) -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000},
            "kind": {"enum": ["town", "city"]},
        },
        "required": ["name", "population", "kind"],
        "additionalProperties": False,
    }
    for seed in range(3):
        out = await engine_of(rt).generate(
            GenerateRequest(
                f"json-{seed}",
                HELLO,
                SamplingOptions(max_tokens=64, temperature=1.0, seed=seed, json_schema=schema),
            )
        )
        assert out.finish_reason == "stop", out.text
        City.model_validate(json.loads(out.text))


async def test_prefix_cache_hits_on_a_repeated_prompt(rt: Any) -> None:
    # CPU block size is 128 tokens: 300 shared tokens make two full blocks.
    ids = tuple((i * 7) % 3000 + 10 for i in range(300))
    engine = engine_of(rt)
    first = await engine.generate(GenerateRequest("pc-1", TokenPrompt(ids), SamplingOptions(max_tokens=2)))
    second = await engine.generate(GenerateRequest("pc-2", TokenPrompt(ids), SamplingOptions(max_tokens=2)))
    assert first.cached_tokens < 256 <= second.cached_tokens


async def test_priority_reaches_the_engine_scheduler(rt: Any) -> None:
    """With the engine full (max_num_seqs=4), the waiting queue is served by priority, not arrival.

    Four long fillers hold every slot; "low" queues, then "high".  Aborting one
    filler frees exactly one slot, which must go to "high".  Each step waits
    for the engine's own report, never for time to pass.
    """
    engine = engine_of(rt)
    first_token: dict[str, float] = {}

    async def submit(request_id: str, priority: int, max_tokens: int) -> None:
        request = GenerateRequest(
            request_id, HELLO, SamplingOptions(max_tokens=max_tokens, ignore_eos=True), priority=priority
        )
        async with aclosing(engine.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TokenDelta) and request_id not in first_token:
                    first_token[request_id] = monotonic()

    def load_is(running: int, waiting: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            load = engine.load()
            return load.running == running and load.waiting == waiting

        return check

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(submit, f"filler-{i}", 0, FILLER_TOKENS)
        await poll_until(load_is(4, 0))
        tg.start_soon(submit, "low", 5, 4)
        await poll_until(load_is(4, 1))  # "low" arrives strictly first
        tg.start_soon(submit, "high", -5, 4)
        await poll_until(load_is(4, 2))
        assert "low" not in first_token and "high" not in first_token
        await engine.abort("filler-0")

        async def high_ran() -> bool:
            return "high" in first_token

        await poll_until(high_ran)
        tg.cancel_scope.cancel()  # closing the other streams aborts their requests
    assert "low" not in first_token or first_token["high"] < first_token["low"]
    await wait_until_idle(engine)


async def test_closing_a_stream_aborts_the_request(rt: Any) -> None:
    engine = engine_of(rt)
    request = GenerateRequest("abort-1", HELLO, SamplingOptions(max_tokens=3000, ignore_eos=True))
    seen = 0
    async with aclosing(engine.stream(request)) as chunks:
        async for _ in chunks:
            seen += 1
            if seen == 3:
                break
    stats = await wait_until_idle(engine)
    assert stats.healthy


async def test_cancelling_the_caller_aborts_the_request(rt: Any) -> None:
    engine = engine_of(rt)
    request = GenerateRequest("abort-2", HELLO, SamplingOptions(max_tokens=3000, ignore_eos=True))
    with anyio.move_on_after(0.5) as scope:
        await engine.generate(request)
    assert scope.cancelled_caught
    await wait_until_idle(engine)


async def test_too_long_prompt_is_a_request_error(rt: Any) -> None:
    ids = tuple(range(10, 5010))  # max_model_len is 4096
    with pytest.raises(EngineRequestError, match="rejected request 'long-1'"):
        await engine_of(rt).generate(GenerateRequest("long-1", TokenPrompt(ids), SamplingOptions(max_tokens=2)))
    assert (await engine_of(rt).stats()).healthy


async def test_stats_report_scheduler_figures(rt: Any) -> None:
    engine = engine_of(rt)
    await engine.generate(GenerateRequest("stats-1", HELLO, SamplingOptions(max_tokens=2)))
    stats = await engine.stats()
    assert stats.requests_total >= 1 and stats.prompt_tokens > 0 and stats.completion_tokens > 0
    assert stats.kv_usage is not None and 0 <= stats.kv_usage <= 1
    assert stats.waiting is not None and stats.running is not None and stats.preemptions is not None

"""``agentrt serve`` against ``vllm serve``: the same requests, valid and invalid, to a real vLLM server and to the
gateway in front of it (a remote engine), status codes and response shapes compared field by field.

What differs on purpose is listed here and in docs/gateway.md ("Differences from vllm serve"); anything
else that differs fails the test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from runtime import Gateway, Runtime, ServerEngine

pytestmark = pytest.mark.server

MAX_MODEL_LEN = 2048
MESSAGES = [{"role": "user", "content": "Say hello."}]

#: Fields vLLM's answers carry that the gateway's do not (vLLM's extensions to OpenAI's shapes), by where.
VLLM_ONLY = {
    "": {
        "service_tier",
        "system_fingerprint",
        "prompt_logprobs",
        "prompt_token_ids",
        "prompt_text",
        "kv_transfer_params",
        "ec_transfer_params",
        "metrics",
    },
    "choices[]": {"stop_reason", "token_ids", "prompt_logprobs", "prompt_token_ids", "routed_experts"},
    "choices[].message": {"refusal", "annotations", "audio", "function_call", "reasoning", "reasoning_content"},
    "usage": {"completion_tokens_details"},
    "usage.prompt_tokens_details": {"created_cache_tokens", "multimodal_tokens", "audio_tokens"},
}


@dataclass(frozen=True)
class Case:
    name: str
    body: dict[str, Any]
    endpoint: str = "chat/completions"
    #: (vLLM's status, the gateway's) where they differ on purpose.
    differs: tuple[int, int] | None = None
    fields: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("plain", {"max_tokens": 4}),
    Case(
        "sampling", {"max_tokens": 4, "temperature": 0.7, "top_p": 0.9, "seed": 7, "stop": ["\n", "end", "x", "y", "z"]}
    ),
    Case(
        "vllm sampling",
        {
            "max_tokens": 4,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "repetition_penalty": 1.1,
            "top_k": 5,
            "min_p": 0.05,
            "min_tokens": 2,
            "logit_bias": {"42": 1.0},
            "stop_token_ids": [2],
        },
    ),
    Case("max_completion_tokens", {"max_completion_tokens": 3}),
    Case("json_object", {"max_tokens": 16, "response_format": {"type": "json_object"}}),
    Case("completions text", {"prompt": "Once upon a time", "max_tokens": 4}, endpoint="completions"),
    Case("completions ids", {"prompt": [1, 2, 3, 4], "max_tokens": 4}, endpoint="completions"),
    # Refused by both, with vLLM's reason.
    Case("max_tokens over the context", {"max_tokens": 100_000}),
    Case("max_tokens absurd", {"max_tokens": 10**30}),
    Case("seed over int64", {"max_tokens": 2, "seed": 2**70}),
    Case("empty stop string", {"max_tokens": 2, "stop": [""]}),
    Case("five stop strings", {"max_tokens": 2, "stop": ["a", "b", "c", "d", "e"]}),
    Case("negative top_k", {"max_tokens": 2, "top_k": -5}),
    Case("no messages", {"messages": None}),
    Case("messages not a list", {"messages": "hi"}),
    Case("unknown model", {"model": "gpt-9", "max_tokens": 2}),
    Case("prompt over the context", {"messages": [{"role": "user", "content": "word " * 5000}], "max_tokens": 2}),
    # Different on purpose: shapes the gateway does not produce yet are refused, never ignored.
    Case("n > 1", {"max_tokens": 2, "n": 2}, differs=(200, 400)),
    Case("logprobs", {"max_tokens": 2, "logprobs": True, "top_logprobs": 2}, differs=(200, 400)),
    # vLLM's server needs --enable-auto-tool-choice for tool_choice "auto"; the gateway always parses tool calls.
    Case(
        "tools, auto",
        {
            "max_tokens": 32,
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto",
        },
        differs=(400, 200),
    ),
]


@pytest_asyncio.fixture(scope="module")
async def servers(tiny_model: Path) -> AsyncIterator[tuple[str, str, str, str]]:
    """(vLLM's URL, its model id, the gateway's URL, its model name)."""
    engine = ServerEngine(
        tiny_model, max_model_len=MAX_MODEL_LEN, max_num_seqs=4, startup_timeout_s=600, connect_timeout_s=60
    )
    async with Runtime([engine], policy="agentrt") as rt, Gateway(rt, port=0) as gateway:
        yield engine.base_url, engine.model, gateway.url, gateway.model_name


def _shape_differences(vllm: Any, ours: Any, where: str = "") -> list[str]:
    """Where the gateway's answer has a field vLLM's lacks, or lacks one vLLM's has (beyond :data:`VLLM_ONLY`)."""
    if isinstance(vllm, list) and isinstance(ours, list):
        if not vllm or not ours:
            return [] if len(vllm) == len(ours) else [f"{where}: {len(vllm)} items vs {len(ours)}"]
        return _shape_differences(vllm[0], ours[0], f"{where}[]")
    if not isinstance(vllm, dict) or not isinstance(ours, dict):
        # null on one side: an optional field set on the other (vLLM leaves prompt_tokens_details null).
        if vllm is None or ours is None or type(vllm) is type(ours):
            return []
        if isinstance(vllm, int | float) and isinstance(ours, int | float):
            return []
        return [f"{where}: {type(vllm).__name__} vs {type(ours).__name__}"]
    prefix = f"{where}." if where else ""
    out = [f"{prefix}{k}: only in the gateway's" for k in sorted(set(ours) - set(vllm))]
    missing = set(vllm) - set(ours) - VLLM_ONLY.get(where, set())
    out += [f"{prefix}{k}: only in vLLM's" for k in sorted(missing)]
    for key in sorted(set(vllm) & set(ours)):
        out += _shape_differences(vllm[key], ours[key], f"{prefix}{key}")
    return out


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_the_gateway_answers_as_vllm_serve_does(servers: tuple[str, str, str, str], case: Case) -> None:
    vllm_url, vllm_model, gateway_url, gateway_model = servers
    base = {"messages": MESSAGES} if case.endpoint == "chat/completions" else {}

    def body(model: str) -> dict[str, Any]:
        merged = {"model": model, **base, **case.body}
        if case.body.get("model") == "gpt-9":
            merged["model"] = "gpt-9"
        return {k: v for k, v in merged.items() if v is not None}

    async with aiohttp.ClientSession() as http:
        vllm_status, vllm_answer = await _post(http, f"{vllm_url}/v1/{case.endpoint}", body(vllm_model))
        status, answer = await _post(http, f"{gateway_url}/v1/{case.endpoint}", body(gateway_model))
    if case.differs is not None:
        assert (vllm_status, status) == case.differs, (vllm_answer, answer)
        return
    assert status == vllm_status, (vllm_answer, answer)
    if status != 200:
        assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]
        assert isinstance(vllm_answer["error"]["message"], str)
        return
    differences = _shape_differences(vllm_answer, answer)
    assert differences == [], "\n".join(differences)
    assert answer["object"] == vllm_answer["object"]
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")


async def _events(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    events: list[Any] = []
    async with http.post(url, json=body) as response:
        assert response.status == 200
        async for line in response.content:
            text = line.decode().strip()
            if text.startswith("data: "):
                data = text.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


@pytest.mark.parametrize("endpoint", ["chat/completions", "completions"])
async def test_a_streamed_answer_has_vllm_serves_chunks(servers: tuple[str, str, str, str], endpoint: str) -> None:
    vllm_url, vllm_model, gateway_url, gateway_model = servers
    chat = endpoint == "chat/completions"

    def body(model: str) -> dict[str, Any]:
        prompt = {"messages": MESSAGES} if chat else {"prompt": "Once upon a time"}
        return {"model": model, **prompt, "max_tokens": 6, "stream": True, "stream_options": {"include_usage": True}}

    async with aiohttp.ClientSession() as http:
        vllm_events = await _events(http, f"{vllm_url}/v1/{endpoint}", body(vllm_model))
        events = await _events(http, f"{gateway_url}/v1/{endpoint}", body(gateway_model))
    for stream in (vllm_events, events):
        assert stream[-1] == "[DONE]"
        assert stream[-2]["choices"] == [] and stream[-2]["usage"]["completion_tokens"] == 6  # the usage chunk
    # Each of the gateway's chunks has the shape of vLLM's chunk of its kind (first, middle, finishing).
    vllm_chunks, chunks = vllm_events[:-2], events[:-2]
    differences = _shape_differences(vllm_chunks[0], chunks[0])
    differences += _shape_differences(vllm_chunks[-1], chunks[-1])
    differences += _shape_differences(vllm_events[-2], events[-2])
    assert differences == [], "\n".join(differences)
    assert [c["object"] for c in chunks] == [vllm_chunks[0]["object"]] * len(chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") if chat else c["choices"][0]["text"] for c in chunks)
    assert text and chunks[-1]["choices"][0]["finish_reason"] == "length"

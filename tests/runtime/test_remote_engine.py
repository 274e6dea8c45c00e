"""RemoteEngine and ServerEngine.

Fast tests (no vLLM) cover the SSE decoder, the metrics parser, stream
accumulation, request bodies and error mapping, the last against a small
aiohttp stand-in server.  Tests marked ``server`` share one real ``vllm serve``
on the tiny model (module fixture, ~20-90 s to start on 2 cores); they run in
file order, and the last two crash and then close that server.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from aiohttp import web

from runtime import resolve_model
from runtime._engines import (
    METADATA_PIN_TTL_S,
    METADATA_PROGRAM_ID,
    ChatPrompt,
    Completion,
    GenerateRequest,
    InProcessEngine,
    SamplingOptions,
    ServerEngine,
    TokenDelta,
    TokenPrompt,
)
from runtime._engines._remote import (
    RemoteEngine,
    SSEDecoder,
    _StreamState,
    error_from_status,
    map_exceptions,
    parse_vllm_metrics,
    request_body,
)
from runtime._errors import (
    EngineClosedError,
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailableError,
)

#: Tokens the shared server's context holds: 8x the tiny model's 4,096
#: positions (meaningless for random weights), so that a filler request keeps
#: a slot busy for minutes whatever the load on this machine.
MAX_MODEL_LEN = 32768
#: The shared server's pin-control token (a user's own server gets one the same way).
PIN_TOKEN = "test-pin-token"
#: Seconds to wait for another process to finish preparing the tiny model.


def chat(text: str) -> ChatPrompt:
    return ChatPrompt.of([{"role": "user", "content": text}])


#: Output tokens of a request that must still be running when the test acts
#: on it: minutes of decoding on the tiny model (900 tokens took under 3 s and
#: finished before an abort could land on a loaded CI machine).
LONG_TOKENS = MAX_MODEL_LEN - 8


def long_request(request_id: str) -> GenerateRequest:
    """A request that keeps generating for minutes (ignores EOS, ``LONG_TOKENS`` tokens)."""
    return GenerateRequest(request_id, TokenPrompt((5, 6, 7)), SamplingOptions(max_tokens=LONG_TOKENS, ignore_eos=True))


def group_alive(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid``."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, log: list[str] | None = None
) -> None:
    """Poll ``check`` every 0.2 s until true; fail after ``timeout_s`` seconds (quoting ``log``)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            details = "\n".join(log[-40:]) if log else ""
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{details}")
        await asyncio.sleep(0.2)


# -- SSE decoder -------------------------------------------------------------


def test_sse_decoder_splits_events_across_chunks() -> None:
    decoder = SSEDecoder()
    body = b'data: {"a": 1}\n\n: keep-alive\n\ndata: {"b":\r\ndata: 2}\r\n\r\nevent: x\ndata: [DONE]\n\n'
    events: list[str] = []
    for i in range(0, len(body), 3):  # bytes arrive in arbitrary pieces
        events += decoder.feed(body[i : i + 3])
    events += decoder.flush()
    assert events == ['{"a": 1}', '{"b":\n2}', "[DONE]"]


def test_sse_decoder_flushes_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last") == []
    assert decoder.flush() == ["last"]
    assert decoder.flush() == []


def test_sse_decoder_handles_large_event() -> None:
    payload = json.dumps({"prompt_token_ids": list(range(100_000))})
    decoder = SSEDecoder()
    events = decoder.feed(b"data: " + payload.encode() + b"\n\n")
    assert events == [payload]


# -- metrics parser ----------------------------------------------------------

METRICS_TEXT = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 0.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:num_preemptions_total counter
vllm:num_preemptions_total{engine="0",model_name="m"} 4.0
# TYPE vllm:num_preemptions_created gauge
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7955690195849574e+09
"""


def test_parse_vllm_metrics() -> None:
    assert parse_vllm_metrics(METRICS_TEXT) == {
        "waiting": 3,
        "running": 3,
        "kv_usage": 0.375,
        "preemptions": 4,
    }


def test_parse_vllm_metrics_tolerates_missing() -> None:
    text = '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine="0"} 1.0\n'
    assert parse_vllm_metrics(text) == {
        "waiting": None,
        "running": 1,
        "kv_usage": None,
        "preemptions": None,
    }
    assert parse_vllm_metrics("") == dict.fromkeys(("waiting", "running", "kv_usage", "preemptions"))


# -- bodies and chunk accumulation -------------------------------------------


def test_request_body_chat_and_tokens() -> None:
    schema = {"type": "object"}
    request = GenerateRequest(
        "r1",
        chat("hi"),
        SamplingOptions(max_tokens=7, seed=3, stop=("x",), ignore_eos=True, json_schema=schema),
        priority=-5,
        metadata={"program": "p", "turn": 2, "tags": ["a", 1]},
    )
    path, body = request_body(request, "m")
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_completion_tokens"] == 7
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["priority"] == -5 and body["request_id"] == "r1" and body["return_token_ids"] is True
    assert body["seed"] == 3 and body["stop"] == ["x"] and body["ignore_eos"] is True
    assert body["structured_outputs"] == {"json": schema}
    assert body["vllm_xargs"] == {"program": "p", "turn": 2, "tags": ["a", 1]}

    path, body = request_body(GenerateRequest("r2", TokenPrompt((1, 2, 3))), "m")
    assert path == "/v1/completions"
    assert body["prompt"] == [1, 2, 3] and body["max_tokens"] == 256
    assert "vllm_xargs" not in body and "structured_outputs" not in body and "seed" not in body


def test_stream_state_chat_chunks() -> None:
    state = _StreamState(GenerateRequest("r", chat("hi")), "e", "m", sent_at=0.0)
    chunks: list[dict[str, Any]] = [
        {
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
            "prompt_token_ids": [1, 2],
        },
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "token_ids": [10]}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "token_ids": [11], "finish_reason": "stop"}]},
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 2,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 1},
            },
            "metrics": {"queue_time_ms": 5.0},
        },
    ]
    deltas = [d for c in chunks if (d := state.add(c)) is not None]
    assert deltas == [TokenDelta("Hel", (10,)), TokenDelta("lo", (11,))]
    done = state.completion()
    assert (done.text, done.token_ids, done.finish_reason) == ("Hello", (10, 11), "stop")
    assert (done.prompt_tokens, done.completion_tokens, done.cached_tokens) == (2, 2, 1)
    assert done.prompt_token_ids == (1, 2)
    assert done.queued_s == pytest.approx(0.005)
    assert done.ttft_s is not None and done.e2e_s >= done.ttft_s


def test_stream_state_completion_chunks_without_usage_details() -> None:
    state = _StreamState(GenerateRequest("r", TokenPrompt((1, 2, 3))), "e", "m", sent_at=0.0)
    state.add({"choices": [{"index": 0, "text": "a", "token_ids": [5], "prompt_token_ids": [1, 2, 3]}]})
    state.add({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    done = state.completion()
    assert done.cached_tokens == 0 and done.prompt_token_ids == (1, 2, 3) and done.text == "a"


def test_stream_state_error_event() -> None:
    state = _StreamState(GenerateRequest("r", chat("hi")), "e", "m", sent_at=0.0)
    with pytest.raises(EngineRequestError, match="too long"):
        state.add({"error": {"message": "too long", "type": "BadRequestError", "code": 400}})
    with pytest.raises(EngineUnavailableError, match="Internal"):
        state.add({"error": {"message": "Internal server error", "type": "InternalServerError", "code": 500}})


# -- error mapping -----------------------------------------------------------


def test_error_from_status() -> None:
    assert type(error_from_status(400, "bad")) is EngineRequestError
    assert type(error_from_status(422, "bad")) is EngineRequestError
    assert type(error_from_status(500, "down")) is EngineUnavailableError
    assert type(error_from_status(503, "down")) is EngineUnavailableError
    assert type(error_from_status(404, "no such model")) is EngineError
    assert "no such model" in str(error_from_status(404, "no such model"))


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), EngineUnavailableError),
        (aiohttp.ClientPayloadError("cut"), EngineUnavailableError),
        (ConnectionResetError("reset"), EngineUnavailableError),
        (TimeoutError(), EngineUnavailableError),
        (aiohttp.ClientError("odd"), EngineError),
    ],
)
def test_map_exceptions(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as info, map_exceptions("GET x"):
        raise raised
    assert type(info.value) is expected and info.value.__cause__ is raised


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_closed_port_fails_start() -> None:
    engine = RemoteEngine(f"http://127.0.0.1:{free_port()}", connect_timeout_s=2)
    with pytest.raises(EngineStartError, match="cannot list models"):
        await engine.start()
    await engine.aclose()


async def test_engines_say_where_their_model_is(tiny_model: Path) -> None:
    # Engine.model_path is where the gateway reads a tokenizer: only engines that start the model have it.
    where = resolve_model(tiny_model)  # the directory, links resolved
    assert InProcessEngine(tiny_model).model_path == where
    launched, hub = ServerEngine(tiny_model), ServerEngine("someone/not-a-local-model")  # never started
    try:
        assert launched.model_path == where and hub.model_path is None
    finally:
        await launched.aclose()  # removes their log files
        await hub.aclose()
    assert RemoteEngine(f"http://127.0.0.1:{free_port()}").model_path is None


disconnected: list[str] = []


@pytest_asyncio.fixture
async def fake_server() -> AsyncIterator[str]:
    """A stand-in for vllm serve: a few canned answers, enough to exercise error mapping.

    The request id picks the answer; ``disconnected`` records hanging requests
    whose client went away.
    """
    disconnected.clear()

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "fake-model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = body["request_id"]
        if mode == "bad":
            error = {"message": "prompt too long", "type": "BadRequestError", "code": 400}
            return web.json_response({"error": error}, status=400)
        if mode == "down":
            return web.Response(status=503, text="overloaded")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "text": "hi", "token_ids": [7]}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if mode.startswith("hang"):  # generate "forever": until the client disconnects
            for _ in range(500):  # at most 10 s
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.02)
            disconnected.append(mode)
            return response
        if mode == "cut":  # the server dies mid-stream
            assert request.transport is not None
            request.transport.close()
            return response
        usage = {"prompt_tokens": 3, "completion_tokens": 1}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        return response

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_remote_engine_against_fake_server(fake_server: str) -> None:
    with pytest.raises(EngineStartError, match="fake-model"):
        await RemoteEngine(fake_server, model="other").start()
    async with RemoteEngine(fake_server + "/v1/") as engine:
        assert engine.model == "fake-model"
        done = await engine.generate(GenerateRequest("ok", TokenPrompt((1, 2, 3))))
        assert (done.text, done.token_ids, done.prompt_tokens, done.cached_tokens) == ("hi", (7,), 3, 0)
        with pytest.raises(EngineRequestError, match="prompt too long"):
            await engine.generate(GenerateRequest("bad", TokenPrompt((1,))))
        with pytest.raises(EngineUnavailableError, match="503"):
            await engine.generate(GenerateRequest("down", TokenPrompt((1,))))
        with pytest.raises(EngineUnavailableError):
            await engine.generate(GenerateRequest("cut", TokenPrompt((1,))))
        await engine.check_health()
        stats = await engine.stats()  # no /metrics here: load fields stay None
        assert stats.healthy and stats.waiting is None and stats.requests_total == 4


async def test_abort_and_close_disconnect(fake_server: str) -> None:
    engine = RemoteEngine(fake_server)
    await engine.start()
    hang = GenerateRequest("hang-abort", TokenPrompt((1,)))
    chunks = [chunk async for chunk in _abort_after_first(engine, hang)]
    assert chunks[0] == TokenDelta("hi", (7,))
    final = chunks[-1]
    assert isinstance(final, Completion) and final.finish_reason == "abort" and final.text == "hi"

    async with aclosing(engine.stream(GenerateRequest("hang-early-close", TokenPrompt((1,))))) as stream:
        async for _ in stream:
            break

    async def close_soon() -> None:
        await asyncio.sleep(0.1)
        await engine.aclose()

    closer = asyncio.create_task(close_soon())
    with pytest.raises(EngineClosedError):
        await engine.generate(GenerateRequest("hang-close", TokenPrompt((1,))))
    await closer
    await eventually(lambda: asyncio.sleep(0, len(disconnected) == 3), 5, "the server to see 3 disconnects")
    assert sorted(disconnected) == ["hang-abort", "hang-close", "hang-early-close"]


async def _abort_after_first(engine: RemoteEngine, request: GenerateRequest) -> AsyncIterator[Any]:
    async for chunk in engine.stream(request):
        yield chunk
        if isinstance(chunk, TokenDelta):
            await engine.abort(request.request_id)


async def test_remote_engine_server_gone(fake_server: str) -> None:
    engine = RemoteEngine(fake_server, connect_timeout_s=2)
    await engine.start()
    try:
        # Point the started engine at a port nothing listens on.
        engine.base_url = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(EngineUnavailableError):
            await engine.check_health()
        with pytest.raises(EngineUnavailableError):
            await engine.generate(GenerateRequest("x", TokenPrompt((1,))))
        stats = await engine.stats()
        assert not stats.healthy and stats.running is None
    finally:
        await engine.aclose()


# -- a real server -----------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def server(tiny_model: Path) -> AsyncIterator[ServerEngine]:
    engine = ServerEngine(
        tiny_model,
        max_model_len=MAX_MODEL_LEN,
        max_num_seqs=2,
        # Four tokens per SSE event: with one event per token, two long
        # fillers keep the API server so busy on 2 cores that /metrics stops
        # answering for a minute (seen in CI runs).
        extra_args=("--stream-interval", "4"),
        startup_timeout_s=600,
        # Two engine cores decoding on 2 cores can starve this process for
        # more than the default 10 s; a connect timing out then is the load,
        # not the server (seen in CI).
        connect_timeout_s=60,
        pin_token=PIN_TOKEN,
    )
    t0 = time.monotonic()
    await engine.start()
    print(f"\nvllm serve started in {time.monotonic() - t0:.1f} s")
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.mark.server
async def test_chat_generation(server: ServerEngine) -> None:
    done = await server.generate(GenerateRequest("chat-1", chat("Hello there"), SamplingOptions(max_tokens=8)))
    assert done.text and done.model == server.model and done.engine == server.name
    assert done.completion_tokens == len(done.token_ids) == 8 and done.finish_reason == "length"
    assert done.prompt_tokens > 0 and done.prompt_token_ids is not None
    assert len(done.prompt_token_ids) == done.prompt_tokens
    assert done.ttft_s is not None and 0 < done.ttft_s <= done.e2e_s
    assert done.queued_s is not None and done.queued_s >= 0


@pytest.mark.server
async def test_token_prompt_and_streaming(server: ServerEngine) -> None:
    prompt = TokenPrompt(tuple(range(10, 40)))
    deltas: list[TokenDelta] = []
    final: Completion | None = None
    async for chunk in server.stream(GenerateRequest("tok-1", prompt, SamplingOptions(max_tokens=12))):
        if isinstance(chunk, Completion):
            final = chunk
        else:
            deltas.append(chunk)
    assert final is not None and len(deltas) > 1
    assert "".join(d.text for d in deltas) == final.text
    assert tuple(i for d in deltas for i in d.token_ids) == final.token_ids
    assert final.prompt_tokens == 30 and final.prompt_token_ids == prompt.token_ids
    assert final.completion_tokens == 12


@pytest.mark.server
async def test_extra_sampling_fields_reach_the_server(server: ServerEngine) -> None:
    forced = 1234  # a bias only this token can win
    sampling = SamplingOptions(max_tokens=5, ignore_eos=True, extra={"logit_bias": {forced: 100.0}, "top_k": 3})
    out = await server.generate(GenerateRequest("extra-1", TokenPrompt(tuple(range(10, 20))), sampling))
    assert out.token_ids == (forced,) * 5
    with pytest.raises(EngineRequestError, match="top_k") as caught:
        await server.generate(
            GenerateRequest("extra-2", chat("hi"), SamplingOptions(max_tokens=2, extra={"top_k": -5}))
        )
    assert caught.value.param in (None, "top_k")  # vLLM names the field when it knows it


@pytest.mark.server
async def test_structured_output(server: ServerEngine) -> None:
    schema = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "label": {"type": "string", "maxLength": 8},
        },
        "required": ["count", "label"],
        "additionalProperties": False,
    }
    request = GenerateRequest("json-1", chat("Give JSON"), SamplingOptions(max_tokens=64, json_schema=schema))
    done = await server.generate(request)
    value = json.loads(done.text)
    assert set(value) == {"count", "label"}
    assert isinstance(value["count"], int) and 0 <= value["count"] <= 99
    assert isinstance(value["label"], str) and len(value["label"]) <= 8


@pytest.mark.server
async def test_metadata_is_accepted(server: ServerEngine) -> None:
    metadata: dict[str, Any] = {"program": "prog-7", "turn": 3, "weight": 0.5, "tags": ["a", 1, 2.5]}
    request = GenerateRequest("meta-1", chat("hi"), SamplingOptions(max_tokens=4), metadata=metadata)
    assert (await server.generate(request)).completion_tokens == 4


@pytest.mark.server
async def test_prefix_cache_hit_reported(server: ServerEngine) -> None:
    prompt = TokenPrompt(tuple(range(100, 500)))  # 400 tokens: three full 128-token blocks
    first = await server.generate(GenerateRequest("cache-1", prompt, SamplingOptions(max_tokens=2)))
    second = await server.generate(GenerateRequest("cache-2", prompt, SamplingOptions(max_tokens=2)))
    assert first.prompt_tokens == second.prompt_tokens == 400
    assert second.cached_tokens >= 256


@pytest.mark.server
async def test_priority_reaches_the_scheduler(server: ServerEngine) -> None:
    """With both slots busy (max_num_seqs=2), a later high-priority request overtakes a waiting one.

    Two long fillers hold both slots; L (priority 10) queues, then H (priority
    -10).  Aborting one filler frees exactly one slot: it must go to H although
    L arrived first.  Letting fillers run out instead depends on timing.  The
    fillers are plain non-streamed completions (closing the connection aborts
    them): two streams of thousands of tokens a second keep the API server and
    this process so busy on 2 cores that they lag the engine by a minute (seen
    in CI), and the fillers ran out before L was even sent.  Every step waits
    for what the server itself reports (``/metrics``).
    """
    first_token: dict[str, float] = {}
    timeline: list[str] = []  # for the failure message
    t0 = time.monotonic()

    def note(event: str) -> None:
        if not timeline or not timeline[-1].endswith(event):  # drop repeated polls
            timeline.append(f"{time.monotonic() - t0:6.2f} s {event}")

    async def fill(http: aiohttp.ClientSession, rid: str) -> None:
        body = {
            "model": server.model,
            "prompt": [5, 6, 7],
            "max_tokens": LONG_TOKENS,
            "ignore_eos": True,
            "priority": 10,
            "request_id": rid,
        }
        async with http.post(f"{server.base_url}/v1/completions", json=body) as response:
            note(f"{rid} finished: HTTP {response.status}")

    async def run(request: GenerateRequest) -> None:
        async with aclosing(server.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, TokenDelta) and request.request_id not in first_token:
                    first_token[request.request_id] = time.monotonic()
                    note(f"first token of {request.request_id}")
                elif isinstance(chunk, Completion):
                    note(f"{request.request_id} finished: {chunk.finish_reason}, {chunk.completion_tokens} tokens")

    async def load_is(running: int, waiting: int) -> bool:
        stats = await server.stats()
        note(f"running {stats.running}, waiting {stats.waiting}")
        return stats.running == running and stats.waiting == waiting

    short = SamplingOptions(max_tokens=4)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http, asyncio.TaskGroup() as tg:
        fillers = [tg.create_task(fill(http, rid)) for rid in ("filler-1", "filler-2")]
        await eventually(lambda: load_is(2, 0), 180, "both fillers to run", timeline)
        tg.create_task(run(GenerateRequest("low", TokenPrompt((9, 10, 11)), short, priority=10)))
        await eventually(lambda: load_is(2, 1), 180, "L to wait", timeline)
        tg.create_task(run(GenerateRequest("high", TokenPrompt((12, 13, 14)), short, priority=-10)))
        await eventually(lambda: load_is(2, 2), 180, "H to wait", timeline)
        assert "low" not in first_token and "high" not in first_token
        fillers[0].cancel()  # closing its connection aborts filler-1 in the server
        await eventually(lambda: asyncio.sleep(0, "high" in first_token), 180, "H to run", timeline)
        fillers[1].cancel()
    assert first_token["high"] < first_token["low"], "\n".join(timeline)


async def running_is_zero(engine: ServerEngine) -> bool:
    return (await engine.stats()).running == 0


@pytest.mark.server
async def test_stats_from_metrics(server: ServerEngine) -> None:
    # The gauges trail the engine a little (the last test aborted requests).
    await eventually(lambda: running_is_zero(server), 10, "the server to go idle")
    stats = await server.stats()
    assert stats.healthy and stats.name == server.name
    assert stats.waiting == 0 and stats.running == 0
    assert stats.kv_usage is not None and 0 <= stats.kv_usage <= 1
    assert stats.preemptions is not None
    assert stats.requests_total > 0 and stats.cached_tokens > 0


@pytest.mark.server
async def test_closing_stream_aborts(server: ServerEngine) -> None:
    request = long_request("abort-1")
    async with aclosing(server.stream(request)) as chunks:
        async for _ in chunks:
            if (await server.stats()).running == 1:
                break
    assert server.in_flight == 0
    await eventually(lambda: running_is_zero(server), 10, "the server to drop the closed request")


@pytest.mark.server
async def test_abort_ends_stream(server: ServerEngine) -> None:
    request = long_request("abort-2")
    received: list[TokenDelta | Completion] = []

    async def consume() -> None:
        async for chunk in server.stream(request):
            received.append(chunk)

    task = asyncio.create_task(consume())
    await eventually(lambda: asyncio.sleep(0, len(received) >= 2), 30, "the first tokens")
    await server.abort("abort-2")
    await asyncio.wait_for(task, 10)
    final = received[-1]
    assert isinstance(final, Completion) and final.finish_reason == "abort"
    assert 0 < final.completion_tokens < LONG_TOKENS
    await eventually(lambda: running_is_zero(server), 10, "the server to drop the aborted request")


@pytest.mark.server
async def test_bad_requests(server: ServerEngine) -> None:
    too_long = TokenPrompt(tuple(range(5, 5 + MAX_MODEL_LEN + 10)))
    with pytest.raises(EngineRequestError, match="maximum context length"):
        await server.generate(GenerateRequest("bad-1", too_long, SamplingOptions(max_tokens=4)))
    with pytest.raises(EngineRequestError, match="max_completion_tokens"):
        await server.generate(GenerateRequest("bad-2", chat("hi"), SamplingOptions(max_tokens=MAX_MODEL_LEN * 2)))
    await server.check_health()


def pinned_request(rid: str, prompt: tuple[int, ...], program: str, pin_s: float | None) -> GenerateRequest:
    meta: dict[str, str | float] = {METADATA_PROGRAM_ID: program}
    if pin_s is not None:
        meta[METADATA_PIN_TTL_S] = pin_s
    return GenerateRequest(rid, TokenPrompt(prompt), SamplingOptions(max_tokens=2, ignore_eos=True), 0, meta)


@pytest.mark.server
async def test_pins_through_the_authenticated_control_path(server: ServerEngine) -> None:
    """The launched server runs the plug-in: pins go through its control path, and only with the token."""
    assert server.supports_pins and server.pin_port is not None
    prompt = tuple(range(100, 100 + 700))
    first = await server.generate(pinned_request("pin-1", prompt, "pin-A", 5.0))
    assert await server.set_pin("pin-A", 120, value=1.0)
    assert (await server.pin_stats()).pinned_programs == 1
    control = f"http://127.0.0.1:{server.pin_port}"
    # A client of the user's own, by address and token, sees the same pins.
    async with RemoteEngine(server.base_url, pin_control=control, pin_token=PIN_TOKEN) as mine:
        assert (await mine.pin_stats()).pinned_programs == 1
    async with RemoteEngine(server.base_url, pin_control=control, pin_token="not-the-token") as stranger:
        with pytest.raises(EngineRequestError, match="401"):
            await stranger.release_pin("pin-A")
    async with aiohttp.ClientSession() as session, session.delete(f"{control}/agentrt/v1/pins/pin-A") as response:
        assert response.status == 401
    assert (await server.pin_stats()).pinned_programs == 1  # unchanged
    # The program's next turn reuses the pinned blocks and takes the pin over.
    second = await server.generate(pinned_request("pin-2", prompt + first.token_ids + (7, 8, 9), "pin-A", None))
    assert second.cached_tokens >= 640
    stats = await server.pin_stats()
    assert stats.pin_hits == 1 and stats.pinned_programs == 0
    assert server.load().pinned_blocks == 0 and server.load().kv_blocks
    assert server.load().kv_tokens == server.load().kv_blocks * 128  # the CPU build's block size


@pytest.mark.server
async def test_crash_restarts_server(server: ServerEngine) -> None:
    """SIGKILL mid-request: the request fails as unavailable, the supervisor restarts the server, with no pins."""
    await server.generate(pinned_request("pin-before-crash", tuple(range(200, 600)), "pin-B", 300.0))
    assert (await server.pin_stats()).pinned_programs == 1
    old_pid = server.pid
    assert old_pid is not None and server.restarts == 0
    request = long_request("crash-1")
    killed = False
    with pytest.raises(EngineUnavailableError):
        async for chunk in server.stream(request):
            # Once: deltas already on the wire still arrive after the kill.
            if isinstance(chunk, TokenDelta) and not killed:
                os.kill(old_pid, signal.SIGKILL)
                killed = True

    async def reports_restarting() -> bool:
        try:
            await server.check_health()
        except EngineUnavailableError as exc:
            return "restarting" in str(exc)
        return False

    # Generous: on 2 loaded cores the exit has taken over 10 s to be reaped (CI, 2026-11-25).
    await eventually(reports_restarting, 60, "the supervisor to notice the exit")
    with pytest.raises(EngineUnavailableError, match="restarting"):
        await server.generate(GenerateRequest("crash-2", chat("hi"), SamplingOptions(max_tokens=2)))
    # The old group (engine core included) is gone before the new server starts.
    await eventually(lambda: asyncio.sleep(0, not group_alive(old_pid)), 20, "the old process group to exit")

    async def healthy() -> bool:
        return (await server.stats()).healthy

    await eventually(healthy, 600, "the restarted server")
    assert server.restarts == 1 and server.pid not in (None, old_pid)
    done = await server.generate(GenerateRequest("crash-3", chat("hi"), SamplingOptions(max_tokens=3)))
    assert done.completion_tokens == 3
    # The pins died with the old server; the new one starts with none.
    assert (await server.pin_stats()).pinned_programs == 0
    assert not await server.set_pin("pin-B", 60)


@pytest.mark.server
async def test_aclose_leaves_no_process(server: ServerEngine) -> None:
    pid = server.pid
    assert pid is not None and group_alive(pid)
    log_path = server.log_path
    await server.aclose()
    assert group_alive(pid) == []
    assert server.pid is None and not log_path.exists()  # the default temp log is removed


@pytest.mark.server
async def test_start_failure_reports_log(tmp_path: Path) -> None:
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README").write_text("no config.json here\n")
    engine = ServerEngine(not_a_model, startup_timeout_s=300, log_path=tmp_path / "serve.log")
    with pytest.raises(EngineStartError) as info:
        await engine.start()
    message = str(info.value)
    assert "exited with code" in message and "last lines" in message
    assert len(message.splitlines()) > 5  # the log tail is quoted
    match = re.search(r"pid (\d+)", message)
    assert match is not None
    assert group_alive(int(match.group(1))) == []
    assert engine.pid is None
    await engine.aclose()

"""Pure logic of the gateway: session precedence, request checks, API keys, fair admission (no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from runtime._gateway._protocol import ChatRequest, CompletionRequest, OpenAIError, parse_body
from runtime._gateway._session_keys import SESSION_SOURCES, session_ref
from runtime._gateway._sessions import IDLE_GAP_FACTOR, idle_timeout_s
from runtime._gateway._tenants import ANONYMOUS, FairAdmission, Tenant, TenantKeys, load_api_keys
from toolbridge import DurationPredictor
from workflows import Usage


def _fields(**body: object) -> tuple[ChatRequest, object]:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}).encode()
    return parse_body(raw, ChatRequest)


def _ref(headers: dict[str, str] | None = None, **body: object):  # type: ignore[no-untyped-def]
    _, fields = _fields(**body)
    return session_ref(headers or {}, fields)  # type: ignore[arg-type]


# -- which program a request joins -------------------------------------------------


def test_a_request_naming_nothing_is_a_program_of_its_own() -> None:
    ref = _ref()
    assert ref.key is None and ref.source is None and not ref.last_turn


@pytest.mark.parametrize(
    ("headers", "body", "key", "source"),
    [
        ({}, {"program_id": "p"}, "p", "body.program_id"),
        ({"X-Agentrt-Program-Id": "h"}, {}, "h", "header.x-agentrt-program-id"),
        ({}, {"session_id": "v"}, "v", "body.session_id"),
        ({"X-Session-ID": "v"}, {}, "v", "header.x-session-id"),
        ({"X-Dynamo-Session-ID": "d"}, {}, "d", "header.x-dynamo-session-id"),
        ({"x-claude-code-session-id": "c"}, {}, "c", "header.x-claude-code-session-id"),
        ({}, {"job_id": 7}, "7", "body.job_id"),
        ({"x-session-token": "l"}, {}, "l", "header.x-session-token"),
        ({}, {"metadata": {"session_id": "lite"}}, "lite", "body.metadata.session_id"),
    ],
)
def test_each_convention_names_the_program(
    headers: dict[str, str], body: dict[str, object], key: str, source: str
) -> None:
    ref = _ref(headers, **body)
    assert (ref.key, ref.source) == (key, source)


def test_precedence_follows_the_documented_order() -> None:
    every = {
        "X-Agentrt-Program-Id": "h",
        "X-Session-ID": "v",
        "X-Dynamo-Session-ID": "d",
        "x-claude-code-session-id": "c",
        "x-session-token": "l",
    }
    body = {"program_id": "p", "session_id": "s", "job_id": "j", "metadata": {"session_id": "m"}}
    assert _ref(every, **body).source == "body.program_id"
    # Drop the winner each time: the next source in SESSION_SOURCES wins.
    order = [label for label, _ in SESSION_SOURCES]
    seen = []
    headers, fields = dict(every), dict(body)
    while True:
        ref = _ref(headers, **fields)
        if ref.source is None:
            break
        seen.append(ref.source)
        kind, _, name = ref.source.partition(".")
        if kind == "header":
            headers = {k: v for k, v in headers.items() if k.lower() != name}
        elif name == "metadata.session_id":
            fields.pop("metadata")
        else:
            fields.pop(name)
    assert seen == order


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, {"last_turn": True}),
        ({"X-Agentrt-Last-Turn": "true"}, {}),
        ({"X-Dynamo-Session-Final": "1"}, {}),
        ({}, {"is_last_step": True}),
    ],
)
def test_last_turn_marks(headers: dict[str, str], body: dict[str, object]) -> None:
    assert _ref(headers, session_id="s", **body).last_turn


def test_deadline_priority_and_expected_tool_from_body_or_headers() -> None:
    ref = _ref({"X-Agentrt-Deadline-S": "30", "X-Agentrt-Priority": "2", "X-Agentrt-Expected-Tool": "grep"})
    assert (ref.deadline_s, ref.priority, ref.expected_tool) == (30.0, 2, "grep")
    ref = _ref({"X-Agentrt-Deadline-S": "30"}, deadline_s=5, priority=-1, expected_tool="ls")
    assert (ref.deadline_s, ref.priority, ref.expected_tool) == (5.0, -1, "ls")


@pytest.mark.parametrize(
    "headers",
    [{"X-Agentrt-Deadline-S": "soon"}, {"X-Agentrt-Priority": "high"}, {"X-Agentrt-Last-Turn": "maybe"}],
)
def test_malformed_session_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(OpenAIError) as caught:
        _ref(headers)
    assert caught.value.status == 400 and next(iter(headers)) in caught.value.message


# -- request bodies -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user"}], "temperature": 7}', "temperature"),
        # vLLM's range for a seed: a signed 64-bit integer.
        (b'{"model": "m", "messages": [{"role": "user"}], "seed": 1180591620717411303424}', "seed"),
        (b'{"model": "m", "messages": [{"role": "user"}], "seed": -9223372036854775809}', "seed"),
        # Deeper than the JSON decoder's recursion guard: a 400, not a RecursionError.
        (b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested too deeply"),
        (b"[" * 50_000, "nested too deeply"),
        # Within the decoder's guard, deeper than the gateway's bound.
        (b'{"model": "m", "messages": [{"role": "user", "x": ' + b"[" * 200 + b"]" * 200 + b"}]}", "128 levels"),
    ],
)
def test_malformed_bodies_get_a_clear_400(raw: bytes, says: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_body(raw, ChatRequest)
    assert caught.value.status == 400 and says in caught.value.message


def test_a_body_as_deep_as_the_bound_is_taken() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    deep: object = {}
    for _ in range(60):  # a deep, but allowed, tool schema (two levels each)
        deep = {"type": "object", "properties": {"x": deep}}
    tools[0]["function"]["parameters"] = deep  # type: ignore[index]
    request, _ = _fields(tools=tools)
    assert request.tools is not None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
    ],
)
def test_unsupported_options_are_refused_not_ignored(body: dict[str, object], param: str) -> None:
    request, _ = _fields(**body)
    with pytest.raises(OpenAIError) as caught:
        request.refuse_unsupported()
    assert caught.value.param == param


@pytest.mark.parametrize("stop", ["", [""], ["end", ""]])
def test_an_empty_stop_string_is_refused_as_vllm_refuses_it(stop: object) -> None:
    request, _ = _fields(stop=stop)
    with pytest.raises(OpenAIError, match="stop cannot contain an empty string") as caught:
        request.refuse_unsupported()
    assert caught.value.status == 400 and caught.value.param == "stop"


def test_at_most_four_stop_strings_as_on_vllm() -> None:
    request, _ = _fields(stop=[f"s{i}" for i in range(4)], seed=2**63 - 1)
    request.refuse_unsupported()
    five, _ = _fields(stop=[f"s{i}" for i in range(5)])
    with pytest.raises(OpenAIError, match="at most 4") as caught:
        five.refuse_unsupported()
    assert caught.value.param == "stop"


def test_sampling_fields_vllm_takes_go_to_the_engine_as_they_are() -> None:
    request, _ = _fields(
        presence_penalty=0.5,
        frequency_penalty=-0.2,
        repetition_penalty=1.1,
        top_k=5,
        min_p=0.05,
        min_tokens=3,
        logit_bias={"42": 10, "7": -100},
        stop_token_ids=[2],
        bad_words=["never"],
    )
    request.refuse_unsupported()
    assert request.extra_sampling() == {
        "presence_penalty": 0.5,
        "frequency_penalty": -0.2,
        "repetition_penalty": 1.1,
        "top_k": 5,
        "min_p": 0.05,
        "min_tokens": 3,
        "logit_bias": {42: 10.0, 7: -100.0},
        "stop_token_ids": [2],
        "bad_words": ["never"],
    }
    assert _fields()[0].extra_sampling() == {}
    bad_bias, _ = _fields(logit_bias={"hello": 1})
    with pytest.raises(OpenAIError, match="token ids") as caught:
        bad_bias.extra_sampling()
    assert caught.value.param == "logit_bias"


def test_unknown_fields_are_ignored_and_known_defaults_accepted() -> None:
    request, _ = _fields(store=False, user="u", n=1, presence_penalty=0, some_future_field={"x": 1})
    request.refuse_unsupported()


def test_messages_tools_and_choices_are_checked() -> None:
    bad_role, _ = _fields(messages=[{"role": "robot", "content": "x"}])
    with pytest.raises(OpenAIError, match="role"):
        bad_role.check_messages()
    no_id, _ = _fields(messages=[{"role": "tool", "content": "x"}])
    with pytest.raises(OpenAIError, match="tool_call_id"):
        no_id.check_messages()
    image, _ = _fields(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
    with pytest.raises(OpenAIError, match="only text parts"):
        image.check_messages()
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    request, _ = _fields(tools=tools, tool_choice={"type": "function", "function": {"name": "other"}})
    assert [t["name"] for t in request.function_tools()] == ["get_weather"]
    with pytest.raises(OpenAIError, match="not in tools"):
        request.tool_choice_name(["get_weather"])
    bad_tool, _ = _fields(tools=[{"type": "function", "function": {"name": "bad name!"}}])
    with pytest.raises(OpenAIError, match="name"):
        bad_tool.function_tools()
    schema, _ = _fields(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})
    assert schema.json_schema() == {"type": "object"}


def test_completion_prompts() -> None:
    def prompt(value: object) -> object:
        request, _ = parse_body(json.dumps({"model": "m", "prompt": value}).encode(), CompletionRequest)
        return request.single_prompt()

    assert prompt("hello") == "hello"
    assert prompt([1, 2, 3]) == [1, 2, 3]
    assert prompt([[4, 5]]) == [4, 5]
    with pytest.raises(OpenAIError, match="one prompt per request"):
        prompt(["a", "b"])


# -- API keys --------------------------------------------------------------------


def test_keys_map_bearer_tokens_to_tenants() -> None:
    alice = Tenant("alice", max_concurrency=2)
    keys = TenantKeys({"sk-a": alice})
    assert keys.tenant_for("Bearer sk-a") is alice
    for header in (None, "", "Bearer nope", "Basic sk-a", "sk-a"):
        with pytest.raises(OpenAIError) as caught:
            keys.tenant_for(header)
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    assert TenantKeys().tenant_for(None) is ANONYMOUS


def test_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"k1": "alice", "k2": {"tenant": "bob", "max_concurrency": 3, "weight": 2}}))
    keys = load_api_keys(path)
    assert keys["k1"] == Tenant("alice") and keys["k2"] == Tenant("bob", 3, 2.0)
    for content, says in [
        ("[]", "JSON object"),
        ("{", "not JSON"),
        ('{"k": 5}', "tenant name"),
        ('{"k": {"tenant": "a", "burst": 1}}', "unknown fields"),
        ('{"k": "a", "k2": {"tenant": "a", "weight": 3}}', "different limits"),
    ]:
        path.write_text(content)
        with pytest.raises(ValueError, match=says):
            load_api_keys(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_api_keys(tmp_path / "missing.json")


# -- fair admission ----------------------------------------------------------------


async def test_admission_serves_the_tenant_with_least_service_first() -> None:
    admission = FairAdmission(max_in_flight=1)
    heavy, light = Tenant("heavy"), Tenant("light")
    order: list[str] = []
    release = anyio.Event()

    async def request(tenant: Tenant, tokens: int) -> None:
        with await admission.admit(tenant):
            order.append(tenant.name)
            await release.wait()
            admission.charge(tenant, tokens, tokens)

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(request, heavy, 100)
        await anyio.wait_all_tasks_blocked()
        for _ in range(2):
            tg.start_soon(request, light, 100)
        await anyio.wait_all_tasks_blocked()
        release.set()
    # heavy held the slot first; then light (least service) alternates in before heavy's backlog.
    assert order[0] == "heavy"
    assert order.index("light") == 1
    assert order[:4].count("light") == 2


async def test_admission_honours_per_tenant_limits_and_queue_bounds() -> None:
    admission = FairAdmission(max_in_flight=None, max_queued=1)
    capped = Tenant("capped", max_concurrency=1)
    first = await admission.admit(capped)
    with first:
        assert admission.in_flight("capped") == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(admission.admit, capped)
            await anyio.wait_all_tasks_blocked()
            assert admission.queued("capped") == 1
            with pytest.raises(OpenAIError) as caught:
                await admission.admit(capped)
            assert caught.value.status == 429
            tg.cancel_scope.cancel()
    # The cancelled waiter left the queue; the slot was given back.
    assert admission.queued("capped") == 0 and admission.in_flight("capped") == 0


async def test_an_idle_tenant_earns_no_credit() -> None:
    admission = FairAdmission(max_in_flight=1)
    busy, idle = Tenant("busy"), Tenant("idle")
    admission.charge(busy, 1000, 0)
    with await admission.admit(busy):
        async with anyio.create_task_group() as tg:
            tg.start_soon(admission.admit, busy)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(admission.admit, idle)
            await anyio.wait_all_tasks_blocked()
            # Lifted to the smallest counter among the waiting: the busy tenant's, not zero.
            assert admission.counter("idle") == admission.counter("busy") == 1000
            tg.cancel_scope.cancel()


# -- when an idle session ends ------------------------------------------------------


def test_an_idle_session_waits_for_what_it_expects_within_its_bounds() -> None:
    durations = DurationPredictor()
    for wall_s in (1.0, 2.0, 3.0, 4.0, 20.0):
        durations.observe("build", wall_s)
    durations.observe("read", 0.01)

    def timeout(tools: list[str], gap: float | None = None, floor: float = 5.0, cap: float = 300.0) -> float:
        return idle_timeout_s(tools, durations, gap, floor_s=floor, cap_s=cap)

    # A client tool running: the factor times its 95th-percentile duration (the slowest of several).
    assert timeout(["build"]) == IDLE_GAP_FACTOR * 20.0
    assert timeout(["read", "build"]) == IDLE_GAP_FACTOR * 20.0
    assert timeout(["read"]) == 5.0  # never below the floor
    assert timeout(["compile"]) == 300.0  # a tool never seen: as long as allowed
    # After an answer: the client's own pace, or the floor before it has shown one.
    assert timeout([], None) == 5.0
    assert timeout([], 12.0) == IDLE_GAP_FACTOR * 12.0
    assert timeout([], 1000.0) == 300.0
    assert timeout([], 12.0, floor=300.0) == 300.0  # floor == cap: a fixed timeout
    assert timeout(["build"], None, floor=500.0) == 300.0  # a floor above the cap is the cap


def test_a_bill_is_the_usage_since_the_last_reading() -> None:
    billed, turn = Usage(100, 10, 40), Usage(250, 7, 200)
    assert (billed + turn) - billed == turn
    assert (billed + turn) - (billed + turn) == Usage()

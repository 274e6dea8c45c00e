"""Engine failover, retry rounds, call timeouts and health probes in the Runtime (pure logic: scripted engines).

Real engine deaths are exercised in test_faults.py, test_engine_death.py and test_remote_engine.py
(a `vllm serve` process killed mid-request); these tests pin down what the runtime does next.  The
retry waits are the runtime's real backoff (0.5 s, then 1 s ...): the tests keep to one or two rounds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import pytest

from runtime import (
    AgentrtPolicy,
    CallFinished,
    Completion,
    EngineRequestError,
    EngineUnavailableError,
    GenerateRequest,
    NoEngineError,
    Runtime,
    TokenDelta,
    VLLMPolicy,
)
from runtime._backoff import Backoff
from runtime._health import HealthMonitor
from runtime.testing import ScriptedEngine
from workflows import Context, workflow


class FlakyEngine(ScriptedEngine):
    """Fails its first ``failures`` requests with ``error``; while ``up`` is false it is not available."""

    def __init__(
        self,
        name: str,
        *,
        failures: int = 0,
        up: bool = True,
        error: type[Exception] = EngineUnavailableError,
    ) -> None:
        super().__init__(name)
        self.failures = failures
        self.up = up
        self.error = error
        self.health_checks = 0
        self.healthy = True

    def _available(self) -> bool:
        return self.up

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        if self.failures > 0:
            self.failures -= 1
            self.seen.append(request)
            raise self.error(f"{self.name} failed request {request.request_id}")
        async for chunk in super()._stream(request):
            yield chunk

    async def _check_health(self) -> None:
        self.health_checks += 1
        if not self.healthy:
            raise EngineUnavailableError(f"{self.name} is down")


class QueueReportingEngine(FlakyEngine):
    """A flaky engine that reports an empty scheduler queue, as vLLM engines do (admission reads it)."""

    def _load_figures(self) -> dict[str, Any]:
        return {"waiting": 0, "running": 0}


class RecordingPolicy(VLLMPolicy):
    name = "test-recording-vllm"

    def __init__(self) -> None:
        super().__init__()
        self.finished: list[CallFinished] = []

    async def on_call_finished(self, event: CallFinished) -> None:
        self.finished.append(event)
        await super().on_call_finished(event)


class HangingEngine(ScriptedEngine):
    """Sends one token, then generates forever; counts the streams closed under it (aborts)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.closed_streams = 0

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        self.seen.append(request)
        try:
            yield TokenDelta("x", (1,))
            await anyio.sleep_forever()
        finally:
            self.closed_streams += 1


@workflow(priority=3)
async def one_call(ctx: Context) -> str:
    reply = await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=4)
    return reply.engine


async def test_a_dying_engine_fails_over_to_another() -> None:
    dead, alive = ScriptedEngine("dead", dies=True), ScriptedEngine("alive")
    async with Runtime([dead, alive]) as rt:
        engines = {await rt.run(one_call) for _ in range(4)}
    assert engines == {"alive"}
    assert dead.seen, "the dead engine was tried first at least once"
    # Metadata and the program's priority reach the engine request.
    request = alive.seen[0]
    assert request.priority == 3 and request.metadata["workflow"] == "one_call"
    assert str(request.metadata["program_id"]).startswith("prog-")


async def test_no_engine_left_raises_naming_every_attempt() -> None:
    dead, gone = ScriptedEngine("dead", dies=True), FlakyEngine("gone", up=False)
    async with Runtime([dead, gone], llm_retries=1) as rt:
        handle = rt.submit(one_call)
        with pytest.raises(NoEngineError) as info:
            await handle
    (node,) = handle.program.nodes.values()
    message = str(info.value)
    for part in (handle.id, node.id, "one_call", "dead failed it 2 time(s)", "dead died", "gone (unavailable)"):
        assert part in message
    assert "retries=1" in message and "Runtime(llm_retries=)" in message
    assert isinstance(info.value.__cause__, EngineUnavailableError)
    assert node.attempts == 2 and len(dead.seen) == 2


async def test_closed_engines_fail_at_once() -> None:
    rt = Runtime([ScriptedEngine("a")], llm_retries=1000)  # closed engines never come back: no wait
    async with rt:
        await rt.engines[0].aclose()
        with pytest.raises(NoEngineError, match="no engine was available to try") as info:
            await rt.run(one_call)
    assert "a (closed)" in str(info.value)


async def test_a_call_waits_for_its_engine_to_come_back() -> None:
    engine = FlakyEngine("flaky", failures=2)
    async with Runtime([engine], llm_retries=2) as rt:
        handle = rt.submit(one_call)
        assert await handle == "flaky"
    (node,) = handle.program.nodes.values()
    assert node.attempts == 3 and len(engine.seen) == 3
    assert node.attributes["retry_wait_s"] == 0.5 + 1.0  # two rounds of backoff
    # Each attempt is its own engine request.
    assert len({r.request_id for r in engine.seen}) == 3


async def test_other_engines_are_tried_before_waiting() -> None:
    a, b = FlakyEngine("a", failures=1), FlakyEngine("b", failures=1)
    async with Runtime([a, b], llm_retries=1) as rt:
        handle = rt.submit(one_call)
        await handle
    (node,) = handle.program.nodes.values()
    assert len(a.seen) + len(b.seen) == node.attempts == 3
    first_round = sorted(r.request_id for r in a.seen[:1] + b.seen[:1])
    assert first_round == [f"{handle.id}-{node.id}-1", f"{handle.id}-{node.id}-2"]  # both, before any wait
    assert node.attributes["retry_wait_s"] == 0.5  # then one wait


async def test_a_call_waits_when_no_engine_is_available_yet() -> None:
    engine = FlakyEngine("late", up=False)
    async with Runtime([engine], llm_retries=3) as rt:
        handle = rt.submit(one_call)
        await anyio.sleep(0.1)
        assert not handle.done
        engine.up = True
        assert await handle == "late"
    (node,) = handle.program.nodes.values()
    assert node.attempts == 1 and node.attributes["retry_wait_s"] >= 0.5


async def test_rejected_requests_are_not_retried() -> None:
    engine = FlakyEngine("strict", failures=1, error=EngineRequestError)
    async with Runtime([engine], llm_retries=3) as rt:
        with pytest.raises(EngineRequestError, match="strict failed"):
            await rt.run(one_call)
    assert len(engine.seen) == 1


async def test_the_policy_hears_of_each_failed_attempt() -> None:
    policy = RecordingPolicy()
    async with Runtime([FlakyEngine("a", failures=1), ScriptedEngine("b")], policy=policy) as rt:
        await rt.run(one_call)
    failed, done = policy.finished
    assert failed.completion is None and failed.engine == "a" and failed.error is not None
    assert "attempt 1 failed" in failed.error and "a failed request" in failed.error
    assert done.completion is not None and done.engine == "b"


async def test_a_retried_call_does_not_count_against_its_own_admission() -> None:
    # agentrt admits a call while an engine has fewer than max_waiting calls waiting, counting those
    # it routed there and has not seen end: the failed attempt must not stay among them.
    engine = QueueReportingEngine("flaky", failures=1)
    async with Runtime([engine], policy=AgentrtPolicy(max_waiting=1), llm_retries=1) as rt:
        with anyio.fail_after(30):  # hang guard: the call would wait in the admission queue forever
            assert await rt.run(one_call) == "flaky"


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first_s=0.5, max_s=3.0)
    assert [backoff.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=2.0, max_s=1.0)
    with pytest.raises(ValueError, match="from 1"):
        backoff.delay_s(0)
    with pytest.raises(ValueError, match="llm_retries"):
        Runtime([ScriptedEngine()], llm_retries=-1)
    with pytest.raises(ValueError, match="llm_timeout_s"):
        Runtime([ScriptedEngine()], llm_timeout_s=0)
    with pytest.raises(ValueError, match="health_interval_s"):
        Runtime([ScriptedEngine()], health_interval_s=0)


@workflow
async def slow_call(ctx: Context, timeout_s: float | None = None) -> str:
    reply = await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=4, timeout_s=timeout_s)
    return reply.text


async def test_llm_timeout_aborts_the_request() -> None:
    engine = HangingEngine("hangs")
    async with Runtime([engine]) as rt:
        handle = rt.submit(slow_call, timeout_s=0.3)
        with pytest.raises(TimeoutError) as info:
            await handle
    (node,) = handle.program.nodes.values()
    message = str(info.value)
    assert handle.id in message and node.id in message and "0.3 s" in message
    assert engine.in_flight == 0 and engine.closed_streams == 1
    assert node.ok is False


async def test_runtime_llm_timeout_is_the_default_and_covers_retry_waits() -> None:
    hanging = HangingEngine("hangs")
    async with Runtime([hanging], llm_timeout_s=0.3) as rt:
        with pytest.raises(TimeoutError, match=r"bound of 0\.3 s"):
            await rt.run(slow_call)
    assert hanging.in_flight == 0 and hanging.closed_streams == 1
    # No engine comes back within the bound: the bound ends the waits, not the retries.
    async with Runtime([FlakyEngine("never", up=False)], llm_retries=100, llm_timeout_s=0.3) as rt:
        with pytest.raises(TimeoutError, match=r"bound of 0\.3 s"):
            await rt.run(slow_call)


async def test_health_monitor_logs_each_change_once(caplog: pytest.LogCaptureFixture) -> None:
    engine = FlakyEngine("probed")
    await engine.start()
    monitor = HealthMonitor([engine], interval_s=1.0)
    caplog.set_level(logging.INFO, logger="runtime.health")
    engine.healthy = False
    assert not await monitor.probe(engine) and not await monitor.probe(engine)
    assert monitor.unhealthy == {"probed": "EngineUnavailableError: probed is down"}
    engine.healthy = True
    assert await monitor.probe(engine) and await monitor.probe(engine)
    assert monitor.unhealthy == {}
    messages = [r.getMessage() for r in caplog.records if r.name == "runtime.health"]
    assert len(messages) == 2, messages
    assert "probed failed its health check: EngineUnavailableError: probed is down" in messages[0]
    assert "probed is healthy again" in messages[1]
    await engine.aclose()
    assert not await monitor.probe(engine)  # a closed engine is not news
    assert monitor.unhealthy == {}


async def test_the_runtime_probes_its_engines() -> None:
    engine = FlakyEngine("watched")
    async with Runtime([engine], health_interval_s=0.01):
        with anyio.fail_after(10):  # hang guard: the monitor has no notification to wait on
            while engine.health_checks < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_least_loaded_dispatch_spreads_calls() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    async with Runtime([a, b]) as rt:
        for _ in range(6):
            await rt.run(one_call)
    assert len(a.seen) == len(b.seen) == 3


async def test_finished_programs_are_kept_up_to_a_bound() -> None:
    async with Runtime([ScriptedEngine("a")], keep_finished=2) as rt:
        handles = [rt.submit(one_call) for _ in range(4)]
        for h in handles:
            await h
    last_two = sorted(handles, key=lambda h: h.program.finished_at or 0)[2:]
    assert set(rt.programs) == {h.id for h in last_two}

"""An in-process engine whose engine-core process dies mid-request (real vLLM, real SIGKILL).

With ``restart_on_failure=False`` the engine stays dead and says so; by
default it is rebuilt in the background and serves again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import psutil
import pytest

from runtime import (
    ChatPrompt,
    EngineUnavailableError,
    GenerateRequest,
    InProcessEngine,
    NoEngineError,
    Runtime,
    SamplingOptions,
    TokenDelta,
)
from tests.runtime._helpers import engine_core_processes
from workflows import Context, workflow

pytestmark = pytest.mark.engine


@workflow
async def talk(ctx: Context) -> str:
    reply = await ctx.llm([{"role": "user", "content": "talk"}], max_tokens=2000, ignore_eos=True)
    return reply.text


def _new_cores(before: set[int]) -> list[psutil.Process]:
    return [p for p in engine_core_processes() if p.pid not in before]


async def _wait_no_new_cores(before: set[int]) -> None:
    with anyio.fail_after(60):  # a hang guard
        while _new_cores(before):  # noqa: ASYNC110 - no exit notification
            await anyio.sleep(0.2)


def _request(request_id: str, max_tokens: int = 8, *, ignore_eos: bool = False) -> GenerateRequest:
    return GenerateRequest(
        request_id,
        ChatPrompt.of([{"role": "user", "content": "hello"}]),
        SamplingOptions(max_tokens=max_tokens, ignore_eos=ignore_eos),
    )


async def test_engine_death_mid_request_is_reported_and_cleaned_up(tiny_model: Path) -> None:
    engine = InProcessEngine(tiny_model, name="doomed", engine_args={"enforce_eager": True}, restart_on_failure=False)
    before = {p.pid for p in engine_core_processes()}
    async with Runtime([engine], llm_retries=0) as rt:
        (core,) = _new_cores(before)
        handle = rt.submit(talk)
        async for event in handle.events():
            if type(event).__name__ == "TokenGenerated":
                os.kill(core.pid, signal.SIGKILL)
                break
        with pytest.raises((EngineUnavailableError, NoEngineError), match="doomed"):
            await handle
        assert not engine.available
        stats = await engine.stats()
        assert not stats.healthy
        # With its only engine dead, the runtime refuses new work clearly.
        with pytest.raises(NoEngineError):
            await rt.run(talk)
        with pytest.raises(EngineUnavailableError, match=r"doomed.*died"):
            await engine.generate(_request("after"))
        assert engine.restarts == 0
    await _wait_no_new_cores(before)


async def test_a_killed_engine_core_is_restarted_and_serves_again(tiny_model: Path) -> None:
    engine = InProcessEngine(tiny_model, name="phoenix", engine_args={"enforce_eager": True})
    before = {p.pid for p in engine_core_processes()}
    async with engine:
        (core,) = _new_cores(before)
        assert (await engine.generate(_request("before"))).completion_tokens > 0
        # A request in flight on the core that dies fails: retrying it is the dispatcher's job.
        with pytest.raises(EngineUnavailableError, match="phoenix"):
            async for chunk in engine.stream(_request("in-flight", 2000, ignore_eos=True)):
                if isinstance(chunk, TokenDelta):
                    os.kill(core.pid, signal.SIGKILL)
        with anyio.fail_after(300):  # a hang guard: an engine start on 2 loaded cores
            while not engine.available:  # noqa: ASYNC110 - the engine has no availability event
                await anyio.sleep(0.2)
        assert engine.restarts == 1
        (new_core,) = _new_cores(before)
        assert new_core.pid != core.pid
        completion = await engine.generate(_request("after"))
        assert completion.completion_tokens > 0 and completion.engine == "phoenix"
        assert (await engine.stats()).healthy
    await _wait_no_new_cores(before)


async def test_runtime_start_failure_leaves_nothing_running(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["NoSuchArch"]}')
    before = {p.pid for p in engine_core_processes()}
    from runtime import EngineStartError

    with pytest.raises(EngineStartError, match="failed to start"):
        async with Runtime([InProcessEngine(tmp_path)]):
            pass
    assert {p.pid for p in engine_core_processes()} <= before

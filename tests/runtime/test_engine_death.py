"""An in-process engine whose engine-core process dies mid-request (real vLLM, real SIGKILL)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from runtime import (
    ChatPrompt,
    EngineUnavailableError,
    GenerateRequest,
    InProcessEngine,
    NoEngineError,
    Runtime,
)
from tests.runtime._helpers import engine_core_processes
from workflows import Context, workflow

pytestmark = pytest.mark.engine


@workflow
async def talk(ctx: Context) -> str:
    reply = await ctx.llm([{"role": "user", "content": "talk"}], max_tokens=2000, ignore_eos=True)
    return reply.text


async def test_engine_death_mid_request_is_reported_and_cleaned_up(tiny_model: Path) -> None:
    engine = InProcessEngine(tiny_model, name="doomed", engine_args={"enforce_eager": True})
    before = {p.pid for p in engine_core_processes()}
    async with Runtime([engine]) as rt:
        (core,) = [p for p in engine_core_processes() if p.pid not in before]
        handle = rt.submit(talk)
        async for event in handle.events():
            if type(event).__name__ == "TokenGenerated":
                os.kill(core.pid, signal.SIGKILL)
                break
        with pytest.raises(EngineUnavailableError, match="doomed"):
            await handle
        assert not engine.available
        stats = await engine.stats()
        assert not stats.healthy
        # With its only engine dead, the runtime refuses new work clearly.
        with pytest.raises(NoEngineError, match="no engine available"):
            await rt.run(talk)
        with pytest.raises(EngineUnavailableError):
            await engine.generate(GenerateRequest("after", ChatPrompt.of([{"role": "user", "content": "x"}])))
    with anyio.fail_after(30):
        while any(p.pid not in before for p in engine_core_processes()):  # noqa: ASYNC110 - no exit notification
            await anyio.sleep(0.2)


async def test_runtime_start_failure_leaves_nothing_running(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["NoSuchArch"]}')
    before = {p.pid for p in engine_core_processes()}
    from runtime import EngineStartError

    with pytest.raises(EngineStartError, match="failed to start"):
        async with Runtime([InProcessEngine(tmp_path)]):
            pass
    assert {p.pid for p in engine_core_processes()} <= before

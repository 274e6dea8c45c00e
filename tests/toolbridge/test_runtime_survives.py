"""Runaway tools inside a real program: the model gets the error, the runtime goes on."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from toolbridge import Limits, sandbox_driver, tool
from workflows import Context, ToolCall, workflow


@tool(limits=Limits(memory="64M", timeout_s=20), isolation="process")
def hog(mb: int) -> int:
    """Allocate and touch mb MiB."""
    return len([bytearray(1 << 20) for _ in range(mb)])


@tool(limits=Limits(pids=8, timeout_s=20), isolation="process")
def forker(most: int) -> int:
    """Fork up to `most` sleeping children."""
    for _ in range(most):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
    return most


@tool(limits=Limits(timeout_s=0.5), isolation="process")
def sleeper() -> None:
    """Sleep far past the timeout."""
    time.sleep(60)


@pytest.mark.engine
async def test_runtime_survives_runaway_tools(rt: Any) -> None:
    if sandbox_driver().name == "rlimit":
        pytest.skip("no writable cgroup on this host")
    tools = [hog, forker, sleeper]

    @workflow
    async def runaway(ctx: Context) -> list[tuple[bool, str | None, str]]:
        out = []
        for i, (name, args) in enumerate([("hog", {"mb": 400}), ("forker", {"most": 100}), ("sleeper", {})]):
            message = await ctx.call_tool(ToolCall(f"c{i}", name, args), tools)
            out.append((message.ok, message.error_kind, message.content))
        reply = await ctx.llm([{"role": "user", "content": "still there?"}], max_tokens=4)
        out.append((True, None, reply.text))
        return out

    handle = rt.submit(runaway)
    results = await handle
    assert [(ok, kind) for ok, kind, _ in results[:3]] == [(False, "oom"), (False, "pids"), (False, "timeout")]
    assert results[0][2].startswith("error (oom): hog ran out of memory: limit 64.0 MiB, peak")
    usage = [n.attributes.get("usage") for n in handle.program.nodes.values() if n.name == "hog"]
    assert usage and usage[0].oom_killed and usage[0].peak_memory_bytes >= 60 << 20

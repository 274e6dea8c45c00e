"""Stall reports: a runtime with calls in flight and no progress says what it waits on.

The detection rule is pinned down on programs whose clocks are set by hand
(pure logic); on the real tiny-model engine a call held by the policy and a
tool that waits are reported (log and ``ProgramStalled``), and a second
quiet period after progress is reported again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest

from runtime import (
    CallInfo,
    Engine,
    NodeKind,
    Program,
    ProgramStalled,
    Route,
    Runtime,
    VLLMPolicy,
    WaitingCall,
)
from runtime._clock import now
from runtime._stalls import StallWatcher
from runtime.testing import ScriptedEngine
from workflows import Context, ToolCall, workflow

# -- the rule, on programs with hand-set clocks -----------------------------------------------------


def quiet_program(*, submitted_ago_s: float, progressed_ago_s: float | None) -> Program:
    program = Program("wf", {}, deadline_s=None, priority=0)
    program.submitted_at = now() - submitted_ago_s
    program.progressed_at = None if progressed_ago_s is None else now() - progressed_ago_s
    return program


def test_idle_runtime_is_not_stalled() -> None:
    program = quiet_program(submitted_ago_s=1000, progressed_ago_s=900)
    assert StallWatcher(lambda: [program], 10).check() == []


def test_quiet_period_with_calls_in_flight_is_reported_once() -> None:
    busy = quiet_program(submitted_ago_s=1000, progressed_ago_s=500)
    call = busy.add_node(NodeKind.LLM, "chat", parent=None, after=())
    call.started_s = 1000 - 300  # seconds since submission: it started 300 s ago
    call.engine = "vllm-0"
    tool = busy.add_node(NodeKind.TOOL, "search", parent=None, after=())
    tool.started_s = 1000 - 200
    held = busy.add_node(NodeKind.LLM, "chat", parent=None, after=())
    held.started_s = 1000 - 100
    watcher = StallWatcher(lambda: [busy], 50)
    assert watcher.check() == [busy]
    (event,) = [e for e in busy._events if isinstance(e, ProgramStalled)]
    # Quiet since the oldest call in flight started (after the last progress).
    assert 299 < event.quiet_s < 310
    assert [(c.node_id, c.kind, c.engine, c.held) for c in event.waiting] == [
        (call.id, "llm", "vllm-0", False),
        (tool.id, "tool", None, False),
        (held.id, "llm", None, True),
    ]
    assert "held by policy" in event.waiting[2].describe() and "'search'" in event.waiting[1].describe()
    assert watcher.check() == []  # the same quiet period is not reported twice
    busy.progressed_at = now() - 60  # progress, then another quiet period
    assert watcher.check() == [busy]
    busy.progressed_at = now() - 1  # progress just now: not stalled
    assert watcher.check() == []


def test_progress_in_another_program_means_no_stall() -> None:
    waiting = quiet_program(submitted_ago_s=1000, progressed_ago_s=None)
    node = waiting.add_node(NodeKind.TOOL, "slow", parent=None, after=())
    node.started_s = 0.0  # running for 1000 s
    working = quiet_program(submitted_ago_s=1000, progressed_ago_s=1)
    assert StallWatcher(lambda: [waiting, working], 50).check() == []
    assert StallWatcher(lambda: [waiting], 50).check() == [waiting]


def test_stall_after_s_is_validated() -> None:
    for bad in (0, -1, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match="stall_after_s must be a number of seconds > 0"):
            StallWatcher(list, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stall_after_s"):
            Runtime([ScriptedEngine()], stall_after_s=bad)  # type: ignore[arg-type]


# -- on the real engine ---------------------------------------------------------------------------

STALL_AFTER_S = 0.4


class GatedPolicy(VLLMPolicy):
    """``vllm``, except that it holds every call while ``holding`` is set."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.holding = False

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        return None if self.holding else super().route(call, engines)

    def release(self) -> None:
        self.holding = False
        self.host.wake()


@pytest.fixture(scope="module")
async def gated(rt: Runtime) -> AsyncIterator[tuple[Runtime, GatedPolicy]]:
    """A runtime with the gated policy over the session's engine (its own programs, policy and stall watcher)."""
    policy = GatedPolicy()
    async with Runtime(rt.engines, policy=policy, stall_after_s=STALL_AFTER_S, close_engines=False) as gated_rt:
        yield gated_rt, policy


@workflow
async def one_call(ctx: Context) -> str:
    return (await ctx.llm([{"role": "user", "content": "hi"}], max_tokens=4)).text


gates: dict[int, anyio.Event] = {}


async def wait_for_gate(gate: int) -> str:
    """Wait until the test opens gate ``gate``."""
    await gates[gate].wait()
    return "open"


@workflow
async def two_waits(ctx: Context) -> str:
    first = await ctx.call_tool(ToolCall("t1", "wait_for_gate", {"gate": 1}), [wait_for_gate])
    reply = await ctx.llm([{"role": "user", "content": first.content}], max_tokens=4)  # progress: tokens
    second = await ctx.call_tool(ToolCall("t2", "wait_for_gate", {"gate": 2}), [wait_for_gate])
    return f"{first.content} {reply.text} {second.content}"


async def next_stall(events: AsyncIterator[object], kind: str) -> ProgramStalled:
    """The next ``ProgramStalled`` on calls of ``kind`` only (a slow LLM call may be reported too: skipped)."""
    with anyio.fail_after(30):  # a hang guard, not a timing check
        async for event in events:
            if isinstance(event, ProgramStalled) and all(c.kind == kind for c in event.waiting):
                return event
    raise AssertionError("the program finished without a stall report")


@pytest.mark.engine
async def test_call_held_by_the_policy_is_reported(
    gated: tuple[Runtime, GatedPolicy], caplog: pytest.LogCaptureFixture
) -> None:
    rt, policy = gated
    policy.holding = True
    caplog.set_level(logging.WARNING, logger="runtime.progress")
    handle = rt.submit(one_call)
    try:
        stalled = await next_stall(handle.events(), "llm")
    finally:
        policy.release()
    (call,) = stalled.waiting
    assert call == WaitingCall(call.node_id, "llm", "chat", None, call.waiting_s) and call.held
    assert stalled.quiet_s >= STALL_AFTER_S and stalled.program_id == handle.id
    (record,) = [r for r in caplog.records if r.name == "runtime.progress"]
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert f"program {handle.id} (one_call): {call.node_id} llm call held by policy" in message
    assert "with 1 call(s) in flight in 1 program(s)" in message and "timeout_s=" in message
    await handle  # released, it completes


@pytest.mark.engine
async def test_waiting_tool_is_reported_again_after_progress(
    gated: tuple[Runtime, GatedPolicy], caplog: pytest.LogCaptureFixture
) -> None:
    rt, _ = gated
    gates.update({1: anyio.Event(), 2: anyio.Event()})
    caplog.set_level(logging.WARNING, logger="runtime.progress")
    handle = rt.submit(two_waits)
    events = handle.events()
    first = await next_stall(events, "tool")
    assert [(c.kind, c.name) for c in first.waiting] == [("tool", "wait_for_gate")]
    gates[1].set()
    second = await next_stall(events, "tool")  # after the LLM call's tokens, a new quiet period
    assert [(c.kind, c.name) for c in second.waiting] == [("tool", "wait_for_gate")]
    assert second.waiting[0].node_id != first.waiting[0].node_id
    gates[2].set()
    result = await handle
    assert result.startswith("open ") and result.endswith(" open")
    reports = [r.getMessage() for r in caplog.records if r.name == "runtime.progress"]
    assert len([m for m in reports if "tool 'wait_for_gate' running for" in m]) == 2

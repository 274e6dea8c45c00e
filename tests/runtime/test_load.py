"""Load: a program's bounded event buffer, program slots (``max_programs``), and 1,000 programs at once.

The buffer and the slots are runtime logic, tested on programs and scripted
engines; the 1,000 programs run agent-shaped turns (an LLM call, then a tool
that pauses) on simulated engines in virtual time.  Nothing here is timed:
the bounds are checked on what the programs kept and how many ran at once.
"""

from __future__ import annotations

import anyio
import pytest

from runtime import (
    EventsDropped,
    Program,
    ProgramCancelledError,
    ProgramFinished,
    ProgramHandle,
    ProgramState,
    Runtime,
    TokenGenerated,
)
from runtime.replay import SimEngine, run_virtual
from runtime.testing import ScriptedEngine
from workflows import Context, ToolCall, workflow

# -- the event buffer -------------------------------------------------------------------------------


def token(program: Program, i: int) -> TokenGenerated:
    return TokenGenerated(program_id=program.id, t=float(i), node_id="llm-0", text=str(i))


def finished(program: Program) -> ProgramFinished:
    return ProgramFinished(program_id=program.id, t=99.0, state="succeeded")


async def test_a_late_reader_is_told_what_it_missed_and_gets_the_end() -> None:
    program = Program("wf", {}, deadline_s=None, priority=0, event_buffer=3)
    for i in range(10):
        program.emit(token(program, i))
    program.emit(finished(program))
    events = [e async for e in program.events()]
    assert isinstance(events[0], EventsDropped) and events[0].missed == 8
    assert [getattr(e, "text", None) for e in events[1:3]] == ["8", "9"] and isinstance(events[3], ProgramFinished)
    assert program.events_emitted == 11 and len(events) == 4


async def test_a_reader_that_falls_behind_skips_ahead_and_continues() -> None:
    program = Program("wf", {}, deadline_s=None, priority=0, event_buffer=4)
    reader = program.events()
    program.emit(token(program, 0))
    assert (await reader.__anext__()) == token(program, 0)  # keeping up: nothing missed
    for i in range(1, 8):
        program.emit(token(program, i))
    dropped = await reader.__anext__()
    assert isinstance(dropped, EventsDropped) and dropped.missed == 3  # 1, 2, 3 fell out of the buffer
    assert (await reader.__anext__()) == token(program, 4)  # the oldest kept
    program.emit(finished(program))  # pushes 4 out, which was read already: nothing more missed
    rest = [e async for e in reader]
    assert rest == [token(program, 5), token(program, 6), token(program, 7), finished(program)]


def test_event_buffer_is_validated() -> None:
    for bad in (0, -5, True, 2.5):
        with pytest.raises(ValueError, match="event_buffer must be an int >= 1"):
            Program("wf", {}, deadline_s=None, priority=0, event_buffer=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="event_buffer must be an int >= 1"):
            Runtime([ScriptedEngine()], event_buffer=bad)  # type: ignore[arg-type]
    for bad_limit in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="max_programs must be an int >= 1 or None"):
            Runtime([ScriptedEngine()], max_programs=bad_limit)  # type: ignore[arg-type]


# -- program slots ----------------------------------------------------------------------------------

gates: dict[int, anyio.Event] = {}
started: list[int] = []


@workflow
async def gated(ctx: Context, n: int) -> int:
    started.append(n)
    await gates[n].wait()
    return n


def submit_gated(rt: Runtime, count: int) -> list[ProgramHandle[int]]:
    started.clear()
    gates.clear()
    gates.update({n: anyio.Event() for n in range(count)})
    return [rt.submit(gated, n=n) for n in range(count)]


async def test_programs_past_max_programs_stay_pending_and_start_first_come_first_served() -> None:
    async with Runtime([ScriptedEngine()], max_programs=2) as rt:
        handles = submit_gated(rt, 5)
        await anyio.wait_all_tasks_blocked()
        assert [h.state for h in handles] == [ProgramState.RUNNING] * 2 + [ProgramState.PENDING] * 3
        assert started == [0, 1]
        gates[1].set()  # the second frees its slot first: the longest-waiting program takes it
        assert await handles[1] == 1
        await anyio.wait_all_tasks_blocked()
        assert started == [0, 1, 2] and handles[3].state is ProgramState.PENDING
        handles[3].cancel()  # cancelled while pending: it ends now, without a slot
        with pytest.raises(ProgramCancelledError):
            await handles[3]
        assert handles[4].state is ProgramState.PENDING
        for gate in gates.values():
            gate.set()
        assert [await h for h in (handles[0], handles[2], handles[4])] == [0, 2, 4]
    assert started == [0, 1, 2, 4]


async def test_wait_for_room_returns_once_a_program_can_start_at_once() -> None:
    async with Runtime([ScriptedEngine()], max_programs=1) as rt:
        await rt.wait_for_room()  # empty: room at once
        (first,) = submit_gated(rt, 1)
        room = anyio.Event()

        async def producer() -> None:
            await rt.wait_for_room()
            room.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert not room.is_set()  # the one slot is taken
            gates[0].set()
            with anyio.fail_after(10):  # a hang guard
                await room.wait()
        assert await first == 0


async def test_unbounded_by_default() -> None:
    async with Runtime([ScriptedEngine()]) as rt:
        handles = submit_gated(rt, 50)
        await anyio.wait_all_tasks_blocked()
        assert all(h.state is ProgramState.RUNNING for h in handles)
        await rt.wait_for_room()
        for gate in gates.values():
            gate.set()
        assert [await h for h in handles] == list(range(50))


# -- 1,000 programs on simulated engines --------------------------------------------------------------

PROGRAMS, TURNS, MAX_PROGRAMS, EVENT_BUFFER = 1000, 3, 200, 8


async def pause(seconds: float) -> str:
    """A tool that takes ``seconds`` (virtual time here)."""
    await anyio.sleep(seconds)
    return "ok"


running = {"now": 0, "peak": 0}


@workflow
async def agent_turns(ctx: Context, seed: int) -> int:
    """An agent's shape on token prompts: each turn an LLM call continuing the context, then a tool."""
    running["now"] += 1
    running["peak"] = max(running["peak"], running["now"])
    try:
        context = [3 + (seed * 7 + i) % 1000 for i in range(64)]
        for turn in range(TURNS):
            reply = await ctx.llm_tokens(context, max_tokens=16, ignore_eos=True, stage="turn")
            result = await ctx.call_tool(ToolCall(f"t{turn}", "pause", {"seconds": 0.5 + seed % 5}), [pause])
            assert result.ok, result.content
            context += [*reply.token_ids, *range(10, 26)]
        return len(context)
    finally:
        running["now"] -= 1


def test_a_thousand_programs_complete_with_bounded_buffers_and_slots() -> None:
    async def main() -> tuple[list[ProgramHandle[int]], list[list[object]]]:
        engines = [SimEngine("h100-llama3-8b", name=f"sim-{i}") for i in range(2)]
        async with Runtime(engines, max_programs=MAX_PROGRAMS, event_buffer=EVENT_BUFFER) as rt:
            handles = [rt.submit(agent_turns, seed=i) for i in range(PROGRAMS)]
            for handle in handles:
                await handle.wait()
            return handles, [[e async for e in h.events()] for h in handles]

    running.update(now=0, peak=0)
    handles, streams = run_virtual(main)
    assert [h.state for h in handles].count(ProgramState.SUCCEEDED) == PROGRAMS  # none lost
    assert all(h.program.result == 64 + TURNS * 32 for h in handles)
    assert running["peak"] == MAX_PROGRAMS  # the bound was reached and held
    for handle, events in zip(handles, streams, strict=True):
        dropped, kept = events[0], events[1:]
        # Each turn emits 5 events and the program 2 more: far past the buffer, so the start was dropped.
        assert isinstance(dropped, EventsDropped) and len(kept) == EVENT_BUFFER
        assert dropped.missed + len(kept) == handle.program.events_emitted
        assert isinstance(kept[-1], ProgramFinished) and kept[-1].state == "succeeded"

"""The journal: step keys, replay, divergence, idempotency keys, pruning, on SQLite and PostgreSQL.

The runtime's journaling logic runs here on scripted engines (instant,
deterministic replies); crashes of real processes on a real engine are in
test_journal_crash.py.  Every test runs against both backends: a SQLite
file, and a schema of its own in the PostgreSQL server ``.ci/run`` starts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from runtime import (
    Journal,
    JournalDivergenceError,
    JournalError,
    JournalState,
    PostgresJournal,
    ProgramCancelledError,
    ProgramIdInUseError,
    ProgramNotFoundError,
    Runtime,
    SQLiteJournal,
    StepReplayed,
)
from runtime.testing import ScriptedEngine
from toolbridge import IdempotencyKey, tool
from workflows import Agent, Context, ToolCall, step, workflow

PG_DSN = os.environ.get("AGENTRT_TEST_PG_DSN", "postgresql://agentrt:agentrt@127.0.0.1:5432/chinook")


@pytest.fixture(params=["sqlite", "postgresql"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    if request.param == "sqlite":
        yield SQLiteJournal(tmp_path / "runs.db")
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(PG_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL server reachable at {PG_DSN} ({str(exc).strip()[:200]}); .ci/run starts one")
    schema = f"journal_test_{uuid.uuid4().hex[:10]}"
    yield PostgresJournal(PG_DSN, schema=schema)
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- workflows under test ----------------------------------------------------------

#: What the tools below really did, in order: (tool, argument, idempotency key).
EFFECTS: list[tuple[str, int, str]] = []
#: Branches of `fan_out` whose step raises after its tool ran (a crash stand-in: the program stops there).
FAILING: set[int] = set()


@tool
def charge(amount: int, key: IdempotencyKey) -> str:
    """A side effect that must happen once per call: the key tells retries apart from new calls."""
    EFFECTS.append(("charge", amount, key))
    return f"charged {amount}"


@step
async def quote(ctx: Context, amount: int) -> str:
    reply = await ctx.llm([{"role": "user", "content": f"quote {amount}"}], max_tokens=4)
    return f"{amount}:{reply.text}"


@step
async def pay(ctx: Context, amount: int) -> str:
    # A branch with work in sequence: the sleep makes branches finish out of order.
    await anyio.sleep(0.001 * (5 - amount))
    first = await ctx.llm([{"role": "user", "content": f"pay {amount}"}], max_tokens=4)
    message = await ctx.call_tool(ToolCall(f"call-{amount}", "charge", {"amount": amount}), [charge])
    if not message.ok:
        raise RuntimeError(message.content)
    if amount in FAILING:
        raise RuntimeError(f"receipt printer offline for {amount}")
    second = await ctx.llm([{"role": "user", "content": f"receipt {amount} {first.text}"}], max_tokens=4)
    return f"{message.content} ({second.text})"


@workflow
async def fan_out(ctx: Context, amounts: list[int]) -> list[str]:
    quotes = await ctx.gather(*(quote(ctx, a) for a in amounts))
    paid = await ctx.gather(*(pay(ctx, a) for a in amounts))
    return quotes + paid


@pytest.fixture(autouse=True)
def _clean_effects() -> None:
    EFFECTS.clear()
    FAILING.clear()


def _engine() -> ScriptedEngine:
    return ScriptedEngine("scripted", text="ok")


# -- tests ---------------------------------------------------------------------------


async def test_a_finished_program_resumes_from_its_journal_without_running_anything(journal: Journal) -> None:
    engine = _engine()
    async with Runtime([engine], journal=journal) as rt:
        first = rt.submit(fan_out, amounts=[1, 2, 3])
        result = await first
        calls = len(engine.seen)
        assert calls == 9 and len(EFFECTS) == 3
        again = await rt.resume(first.id)
        assert await again == result
        assert len(engine.seen) == calls, "no LLM call ran again"
        assert len(EFFECTS) == 3, "no tool ran again"
        replayed = [e for e in again.program._events if isinstance(e, StepReplayed)]
        # The six steps were replayed whole: their inner calls were not even visited.
        assert sorted(e.kind for e in replayed) == ["step"] * 6
        record = await journal.program(first.id)
    assert record is not None and record.state is JournalState.SUCCEEDED and record.runs == 2


async def test_keys_are_positions_stable_under_gather(journal: Journal) -> None:
    async with Runtime([_engine()], journal=journal) as rt:
        handle = rt.submit(fan_out, amounts=[1, 2, 3])
        await handle
        keys = {n.key: (n.kind.value, n.name) for n in handle.program.nodes.values()}
    # Branch b of gather g of the workflow body is g<g>.<b>-; its nodes count from 0 in order.
    assert keys["g0.0-0"] == ("step", "quote")
    assert keys["g1.2-0"] == ("step", "pay")
    assert keys["g1.2-0/0"] == ("llm", "chat")
    assert keys["g1.2-0/1"] == ("tool", "charge")
    assert keys["g1.2-0/2"] == ("llm", "chat")
    assert len(keys) == len(handle.program.nodes), "every node has a key of its own"


async def test_a_failed_fan_out_resumes_where_it_stopped(journal: Journal) -> None:
    engine = _engine()
    FAILING.add(2)
    async with Runtime([engine], journal=journal) as rt:
        handle = rt.submit(fan_out, amounts=[1, 2, 3])
        with pytest.raises(Exception, match="receipt printer offline for 2"):
            await handle
        steps_before = {s.key: s for s in await journal.steps(handle.id)}
        assert "g1.1-0/1" in steps_before and "g1.1-0" not in steps_before
        FAILING.clear()
        resumed = await rt.resume(handle.id)
        result = await resumed
        steps_after = await journal.steps(handle.id)
    assert result[3:] == ["charged 1 (ok)", "charged 2 (ok)", "charged 3 (ok)"]
    # Nothing journaled before was recorded again; what ran after carries run 2.
    assert len({s.key for s in steps_after}) == len(steps_after)
    assert all(s.run == 1 for s in steps_after if s.key in steps_before)
    # (Siblings cut off by the failure, if any were still running, finish in run 2 as well.)
    assert {s.key for s in steps_after if s.run == 2} >= {"g1.1-0/2", "g1.1-0"}
    # A charge journaled before ran once (it was replayed). One that the failure cut off between the tool's
    # effect and its journal entry (branch 1 is the slowest; how far it got depends on the machine) runs again,
    # with the key a rerun passes, so the tool can tell the retry apart.
    for amount in (1, 2, 3):
        key = f"g1.{amount - 1}-0/1"
        effects = [e for e in EFFECTS if e[1] == amount]
        assert effects and {e[2] for e in effects} == {f"{handle.id}/{key}"}
        if key in steps_before:
            assert len(effects) == 1, f"charge {amount} was journaled, yet ran again"


async def test_a_cancelled_program_resumes_and_its_done_work_is_not_redone(journal: Journal) -> None:
    engine = _engine()
    gate = anyio.Event()

    @step
    async def slow(ctx: Context) -> str:
        await gate.wait()
        return "slow done"

    @workflow(name="cancel-me")
    async def cancel_me(ctx: Context) -> list[str]:
        quotes = await ctx.gather(quote(ctx, 7), quote(ctx, 8))
        return [*quotes, await slow(ctx)]

    async with Runtime([engine], journal=journal) as rt:
        handle = rt.submit(cancel_me)
        with anyio.fail_after(10):
            while len(engine.seen) < 2:  # noqa: ASYNC110 - scripted engine: no event to wait on
                await anyio.sleep(0.01)
            while len(await journal.steps(handle.id)) < 4:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        handle.cancel()
        with pytest.raises(ProgramCancelledError):
            await handle
        record = await journal.program(handle.id)
        assert record is not None and record.state is JournalState.CANCELLED
        gate.set()
        resumed = await rt.resume(handle.id, workflow=cancel_me)
        assert await resumed == ["7:ok", "8:ok", "slow done"]
    assert len(engine.seen) == 2, "the quotes were not asked again"


async def test_a_changed_workflow_is_refused_naming_the_step(journal: Journal) -> None:
    @workflow(name="evolving")
    async def v1(ctx: Context) -> str:
        await quote(ctx, 1)
        return await quote(ctx, 2)

    @workflow(name="evolving")
    async def v2_new_step_order(ctx: Context) -> str:
        await quote(ctx, 1)
        return await pay(ctx, 2)

    @workflow(name="evolving")
    async def v3_new_inputs(ctx: Context) -> str:
        await quote(ctx, 1)
        return await quote(ctx, 3)

    async with Runtime([_engine()], journal=journal) as rt:
        handle = rt.submit(v1)
        await handle
        with pytest.raises(
            JournalDivergenceError, match=r"step 1: the journal holds step 'quote' there.*runs step 'pay'"
        ):
            await (await rt.resume(handle.id, workflow=v2_new_step_order))
        with pytest.raises(JournalDivergenceError, match=r"step 'quote' at step 1: its inputs differ"):
            await (await rt.resume(handle.id, workflow=v3_new_inputs))
        # A different workflow altogether is refused before it runs.
        with pytest.raises(JournalError, match="ran workflow 'evolving', not 'fan_out'"):
            await rt.resume(handle.id, workflow=fan_out)


async def test_agent_turns_and_tool_results_replay(journal: Journal) -> None:
    engine = ScriptedEngine("agentic", text='{"tool_calls": [{"name": "charge", "arguments": {"amount": 5}}]}')
    agent = Agent("pay things", tools=[charge], max_turns=2, name="payer")

    @workflow(name="agentic")
    async def agentic(ctx: Context) -> str:
        result = await agent.run(ctx, "pay 5")
        return result.stopped

    async with Runtime([engine], journal=journal) as rt:
        handle = rt.submit(agentic)
        stopped = await handle
        assert len(EFFECTS) == 1
        again = await (await rt.resume(handle.id, workflow=agentic))
        kinds = sorted(s.kind for s in await journal.steps(handle.id))
    assert again == stopped and len(EFFECTS) == 1
    assert kinds == ["agent", "llm", "llm", "tool"]


async def test_unknown_and_running_programs_are_refused(journal: Journal) -> None:
    gate = anyio.Event()

    @workflow(name="waits")
    async def waits(ctx: Context) -> str:
        await gate.wait()
        return "done"

    async with Runtime([_engine()], journal=journal) as rt:
        with pytest.raises(ProgramNotFoundError, match="no program 'nope'"):
            await rt.resume("nope")
        handle = rt.submit(waits)
        await anyio.sleep(0.05)
        with pytest.raises(ProgramIdInUseError, match="running in this runtime"):
            await rt.resume(handle.id, workflow=waits)
        gate.set()
        await handle
        # A new program under a journaled id would mix two programs' steps: refused.
        reused = rt.start_program(waits, {}, program_id=handle.id)
        with pytest.raises(ProgramIdInUseError, match="already in the journal"):
            await reused


async def test_a_result_that_cannot_be_journaled_fails_clearly(journal: Journal) -> None:
    @step
    async def leaky(ctx: Context) -> Any:
        import threading

        return threading.Lock()  # a lock does not pickle

    @workflow(name="leaky")
    async def leaky_wf(ctx: Context) -> str:
        await leaky(ctx)
        return "unreachable"

    async with Runtime([_engine()], journal=journal) as rt:
        with pytest.raises(JournalError, match=r"cannot store the result of step 'leaky'.*does not pickle"):
            await rt.run(leaky_wf)


async def test_prompts_are_stored_once_per_content(journal: Journal) -> None:
    history = [{"role": "system", "content": "x" * 20_000}]

    @workflow(name="long-chat")
    async def long_chat(ctx: Context, turns: int) -> int:
        messages = list(history)
        for turn in range(turns):
            messages.append({"role": "user", "content": f"turn {turn}"})
            reply = await ctx.llm(messages, max_tokens=4)
            messages.append({"role": "assistant", "content": reply.text})
        return len(messages)

    async with Runtime([_engine()], journal=journal) as rt:
        await rt.run(long_chat, turns=1)
        one = await journal.size_bytes()
        handle = rt.submit(long_chat, turns=40)
        await handle
        forty = await journal.size_bytes()
        # The same prompts, linked afresh by a resumed run, have the same fingerprints: nothing diverges.
        assert await (await rt.resume(handle.id, workflow=long_chat)) == 81
    # 41 calls each sent the 20 kB system prompt: it is stored once (a second program shares it too), so
    # 40 turns add their few new messages and rows (and, in PostgreSQL, 8 kB pages of tables and indexes),
    # not 40 copies of the prompt (800 kB).
    assert forty - one < 40 * 20_000 / 4, f"the journal grew {forty - one} bytes for 40 more turns"


async def test_runs_are_listed_and_pruned(journal: Journal) -> None:
    import time

    async with Runtime([_engine()], journal=journal) as rt:
        kept = rt.submit(quote_twice)
        await kept
        pruned = rt.submit(quote_twice)
        await pruned
    async with journal:
        listed = await journal.programs()
        assert {r.id for r in listed} == {kept.id, pruned.id}
        assert all(r.state is JournalState.SUCCEEDED and r.steps == 4 for r in listed)
        report = await journal.prune(updated_before=time.time() + 1, states=[JournalState.SUCCEEDED])
        assert report.programs == 2 and report.steps == 8 and report.blobs > 0
        assert await journal.programs() == []


@workflow
async def quote_twice(ctx: Context) -> list[str]:
    return [await quote(ctx, 1), await quote(ctx, 2)]


async def test_a_runtime_shut_down_mid_program_leaves_it_interrupted_and_resumable(journal: Journal) -> None:
    gate = anyio.Event()

    @step
    async def blocked(ctx: Context) -> str:
        await gate.wait()
        return "unblocked"

    @workflow(name="shutdown")
    async def shutdown(ctx: Context) -> list[str]:
        return [await quote(ctx, 1), await blocked(ctx)]

    engine = _engine()
    async with Runtime([engine], journal=journal) as rt:
        handle = rt.submit(shutdown)
        pending = [rt.submit(shutdown) for _ in range(2)]  # journaled too, if only just submitted
        with anyio.fail_after(10):
            while len(await journal.steps(handle.id)) < 2:  # noqa: ASYNC110 - no event to wait on
                await anyio.sleep(0.01)
    # Leaving the runtime cancelled the programs: the journal says they were interrupted, not cancelled.
    async with journal:
        for h in (handle, *pending):
            record = await journal.program(h.id)
            assert record is not None and record.state is JournalState.INTERRUPTED, h.id
    gate.set()
    second = _engine()
    async with Runtime([second], journal=journal) as rt:
        assert await (await rt.resume(handle.id, workflow=shutdown)) == ["1:ok", "unblocked"]
    asked = [r for r in (*engine.seen, *second.seen) if r.metadata["program_id"] == handle.id]
    assert len(asked) == 1, "the program's quote was not asked again"

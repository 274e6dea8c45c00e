"""The arithmetic and bookkeeping behind the urgency policies (pure logic, no engines).

Stage shares and deadlines (HEXGEN-TEXT2SQL's rule), attained-service queues
(Autellix), engine priorities, workflow profiles learned online, the two
hash candidates of a prefix, and which engine holds the context a call
continues.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime import AutellixPolicy, Completion, Program
from runtime._engines import ChatPrompt, TokenPrompt
from runtime._policies._contexts import ContextIndex
from runtime._policies._placement import PrefixHomes
from runtime._policies._profiles import StageSpan, WorkflowProfile, planned_share
from runtime._policies._urgency import LEVEL_SPAN, engine_priority, latest_start, mlfq_level
from runtime.testing import ScriptedEngine
from workflows import Context, WorkflowDefinitionError, workflow


def test_latest_start_splits_the_slack_by_the_stage_share() -> None:
    # 100 s left, the stage may use 30% of it, the call needs 5 s: start by now + 25.
    assert latest_start(now=10.0, deadline_at=110.0, share=0.3, expected_s=5.0) == pytest.approx(35.0)
    # A missed deadline: the most overdue first, by how long the call takes.
    assert latest_start(now=200.0, deadline_at=110.0, share=0.3, expected_s=5.0) == pytest.approx(105.0)
    tight = latest_start(now=0.0, deadline_at=20.0, share=0.5, expected_s=1.0)
    loose = latest_start(now=0.0, deadline_at=200.0, share=0.5, expected_s=1.0)
    assert tight < loose


def test_mlfq_levels_double_from_the_quantum() -> None:
    levels = [mlfq_level(s, quantum_s=1.0, levels=5) for s in (0.0, 0.99, 1.0, 1.9, 2.0, 3.9, 4.0, 8.0, 1e6)]
    assert levels == [0, 0, 1, 1, 2, 2, 3, 4, 4]


def test_engine_priority_orders_by_level_then_key() -> None:
    assert engine_priority(0, 10.0) < engine_priority(0, 10.5) < engine_priority(1, -1e6)
    assert engine_priority(-1, 1e9) < engine_priority(0, -1e9)
    assert engine_priority(2, 0.0) == 2 * LEVEL_SPAN
    # Keys beyond the span are clamped into their level.
    assert engine_priority(0, 1e30) < engine_priority(1, -1e30)


def _finish(profile: WorkflowProfile, spans: dict[str, tuple[float, float]], jct: float, service: float) -> None:
    profile.observe_program({k: StageSpan(a, b) for k, (a, b) in spans.items()}, jct, service)


def test_stage_share_is_learned_from_finished_programs() -> None:
    profile = WorkflowProfile()
    assert profile.stage_share("plan", measured_rest=True) == 1.0  # nothing learned: all of the time left
    _finish(profile, {"plan": (0.0, 2.0), "write": (2.0, 8.0), "check": (8.0, 10.0)}, 10.0, 9.0)
    # Measured rest: plan lasts 2 s and the program ran 8 s after it.
    assert profile.stage_share("plan", measured_rest=True) == pytest.approx(2 / 10)
    assert profile.stage_share("write", measured_rest=True) == pytest.approx(6 / 8)
    assert profile.stage_share("check", measured_rest=True) == pytest.approx(1.0)
    # HEXGEN's: the spans of the stages that start later.
    assert profile.stage_share("plan", measured_rest=False) == pytest.approx(2 / (2 + 6 + 2))
    assert profile.stage_share("unknown", measured_rest=True) == 1.0


def test_remaining_service_is_the_mean_residual() -> None:
    profile = WorkflowProfile()
    assert profile.remaining_service_s(0.0) is None
    for total in (10.0, 20.0, 30.0, 100.0):
        _finish(profile, {}, total, total)
    assert profile.remaining_service_s(0.0) == pytest.approx(40.0)
    assert profile.remaining_service_s(15.0) == pytest.approx(50.0 - 15.0)  # mean of 20, 30, 100
    assert profile.remaining_service_s(200.0) == pytest.approx(200.0)  # beyond all seen: as much again


def test_the_profile_window_forgets_old_programs() -> None:
    profile = WorkflowProfile(window=2)
    for total in (1000.0, 10.0, 20.0):
        _finish(profile, {}, total, total)
    assert profile.remaining_service_s(0.0) == pytest.approx(15.0)


def test_planned_share_follows_the_declared_order() -> None:
    plan = {"retrieve": 2.0, "generate": 6.0, "check": 2.0}
    assert planned_share(plan, "retrieve") == pytest.approx(0.2)
    assert planned_share(plan, "generate") == pytest.approx(0.75)
    assert planned_share(plan, "check") == pytest.approx(1.0)
    assert planned_share(plan, "other") is None and planned_share(plan, None) is None


async def _noop(ctx: Context) -> None:
    return None


def test_a_workflow_declares_its_stage_plan() -> None:
    declared = workflow(stages={"a": 1, "b": 2.5})(_noop)
    assert declared.stages == {"a": 1.0, "b": 2.5}
    assert workflow(_noop).stages is None
    for bad in ({}, {"a": -1.0}, {"a": float("inf")}, {"": 1.0}, {"a": 0.0}, ["a"], {"a": True}):
        with pytest.raises(WorkflowDefinitionError, match="stage"):
            workflow(stages=bad)(_noop)  # type: ignore[arg-type]


def test_prefix_homes_are_two_stable_engines() -> None:
    engines = [ScriptedEngine(f"e{i}") for i in range(8)]
    homes = PrefixHomes()
    first = homes.candidates("app-a", engines)
    assert len(first) == 2 and first[0] is not first[1]
    assert homes.candidates("app-a", engines) == first
    # Another engine leaving keeps the key's candidates; one of them leaving keeps the other.
    others = [e for e in engines if e not in first]
    assert homes.candidates("app-a", [*first, *others[1:]]) == first
    survivor = homes.candidates("app-a", [e for e in engines if e is not first[0]])
    assert first[1] in survivor
    # Keys spread over the pool.
    spread = {homes.candidates(f"app-{i}", engines)[0].name for i in range(64)}
    assert len(spread) >= 6
    assert homes.candidates("k", engines[:2]) == engines[:2]


def _completion(tokens: tuple[int, ...] = (), text: str = "") -> Completion:
    return Completion(
        request_id="r",
        engine="e",
        model="m",
        text=text,
        token_ids=tokens,
        finish_reason="length",
        prompt_tokens=0,
        completion_tokens=len(tokens),
        cached_tokens=0,
        ttft_s=None,
        e2e_s=0.0,
    )


def test_the_context_index_finds_the_engine_of_the_context_a_call_continues() -> None:
    a, b = ScriptedEngine("a"), ScriptedEngine("b")
    index = ContextIndex()
    first = tuple(range(100, 200))
    second = tuple(range(300, 350))
    index.remember("p", TokenPrompt(first), _completion((1, 2, 3)), a)
    index.remember("p", TokenPrompt(second), _completion((4, 5)), b)
    # Continues the first context (prompt + reply + more): engine a.
    assert index.holder("p", TokenPrompt((*first, 1, 2, 3, 9, 9)), [a, b]) is a
    assert index.holder("p", TokenPrompt((*second, 4, 5, 7)), [a, b]) is b
    # A fresh prompt continues nothing; a candidate list without the holder gives nothing.
    assert index.holder("p", TokenPrompt(tuple(range(500, 600))), [a, b]) is None
    assert index.holder("p", TokenPrompt((*first, 1, 2, 3)), [b]) is None
    # The longest context wins.
    longer = (*first, 1, 2, 3, 8, 8, 8)
    index.remember("p", TokenPrompt(longer), _completion((6,)), b)
    assert index.holder("p", TokenPrompt((*longer, 6, 0)), [a, b]) is b
    index.forget("p")
    assert index.holder("p", TokenPrompt((*first, 1, 2, 3)), [a, b]) is None and len(index) == 0


def test_the_context_index_follows_chat_conversations() -> None:
    a = ScriptedEngine("a")
    index = ContextIndex()
    messages: list[dict[str, Any]] = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    index.remember("p", ChatPrompt.of(messages), _completion(text="call the tool"), a)
    follow = [*messages, {"role": "assistant", "content": "call the tool"}, {"role": "user", "content": "result"}]
    assert index.holder("p", ChatPrompt.of(follow), [a]) is a
    other = [*messages, {"role": "assistant", "content": "something else"}]
    assert index.holder("p", ChatPrompt.of(other), [a]) is None


async def test_autellix_promotes_a_starving_program() -> None:
    policy = AutellixPolicy(quantum_s=1.0, beta=2.0)
    program = Program("w", {}, deadline_s=None, priority=0)
    progress = policy.book.progress(program)
    progress.atlas_s = program.llm_service_s = 10.0
    assert policy.queue_of(program) == 4  # 10 s of service: [8, 16)
    progress.waited_s = 19.0
    assert policy.queue_of(program) == 4
    progress.waited_s = 20.0  # waited twice its service: back to the first queue
    assert policy.queue_of(program) == 0

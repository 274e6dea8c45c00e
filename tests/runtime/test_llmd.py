"""The ``llm-d`` policy's arithmetic (llm-d's scorers and max-score pick), its refusal of engines that cannot
report their cache, and its name in the registry and on the command line.

The scoring engines here are stand-ins with fixed figures: what is tested is
the arithmetic; the simulator tests (tests/replay/sim/test_llmd_sim.py)
drive real simulated engines.
"""

from __future__ import annotations

import pytest

from runtime import (
    CachedPrefix,
    ChatPrompt,
    EngineCapabilityError,
    LlmdPolicy,
    Runtime,
    TokenPrompt,
    get_policy,
    policy_names,
)
from runtime._cli._main import _parser
from runtime._policies._llmd import kv_utilization_score, queue_scores
from runtime.testing import ScriptedEngine

from ._cache_routing import FixedEngine, call_info


def test_queue_scorer_is_min_max_normalised_and_neutral_when_equal() -> None:
    assert queue_scores([0, 2, 4]) == [1.0, 0.5, 0.0]
    assert queue_scores([3, 7]) == [1.0, 0.0]
    assert queue_scores([5, 5, 5]) == [1.0, 1.0, 1.0]


def test_kv_utilization_scorer_is_one_minus_usage() -> None:
    assert kv_utilization_score(0.25) == pytest.approx(0.75)
    assert kv_utilization_score(0.0) == 1.0
    assert kv_utilization_score(1.0) == 0.0


def test_cached_prefix_ratio_counts_full_blocks() -> None:
    assert CachedPrefix(6, 8, 16).ratio == 0.75
    assert CachedPrefix(6, 8, 16).tokens == 96
    assert CachedPrefix(0, 0, 16).ratio == 0.0


def test_weighted_sum_against_hand_computed_values() -> None:
    """prefix x2 + (1 - KV usage) + queue, per llm-d's guide; the highest total wins; FCFS priority 0."""
    a = FixedEngine("a", waiting=2, kv_usage=0.5, cached_blocks=6)
    b = FixedEngine("b", waiting=0, kv_usage=0.1, cached_blocks=2)
    c = FixedEngine("c", waiting=4, kv_usage=0.9, cached_blocks=0)
    policy = LlmdPolicy()
    call = call_info(TokenPrompt(tuple(range(8 * 16 + 5))))  # 8 full blocks and a partial one
    # a: 2 x 6/8 + 0.5 + (4-2)/4 = 2.5;  b: 2 x 2/8 + 0.9 + 1 = 2.4;  c: 0 + 0.1 + 0 = 0.1
    assert policy.scores(call, [a, b, c]) == pytest.approx([2.5, 2.4, 0.1])
    route = policy.route(call, [a, b, c])
    assert route.engine is a and route.priority == 0  # the caller's priority 2 is not used: vLLM's FCFS
    # Other weights change the pick: without the prefix scorer, b's load wins.
    assert LlmdPolicy(prefix_weight=0.0).route(call, [a, b, c]).engine is b


def test_equal_prefixes_go_to_the_less_loaded_engine() -> None:
    call = call_info(TokenPrompt(tuple(range(160))))
    busy = FixedEngine("busy", waiting=3, kv_usage=0.2, cached_blocks=10)
    idle = FixedEngine("idle", waiting=1, kv_usage=0.2, cached_blocks=10)
    assert LlmdPolicy().route(call, [busy, idle]).engine is idle
    full = FixedEngine("full", waiting=1, kv_usage=0.8, cached_blocks=10)
    assert LlmdPolicy().route(call, [full, idle]).engine is idle


def test_ties_are_broken_at_random_but_repeatably() -> None:
    call = call_info(TokenPrompt(tuple(range(160))))
    engines = [FixedEngine(f"e{i}", waiting=0, kv_usage=0.0, cached_blocks=0) for i in range(4)]

    def picks(seed: int) -> list[str]:
        policy = LlmdPolicy(seed=seed)
        return [policy.route(call, engines).engine.name for _ in range(40)]

    assert picks(1) == picks(1)
    assert len(set(picks(1))) > 1


def test_a_chat_prompt_scores_its_prefix_keys_hash_home_and_is_counted() -> None:
    engines = [FixedEngine(f"e{i}", waiting=0, kv_usage=0.0, cached_blocks=0) for i in range(4)]
    policy = LlmdPolicy()
    system = {"role": "system", "content": "you are an agent"}
    prompts = [ChatPrompt.of([system, {"role": "user", "content": str(i)}]) for i in range(5)]
    homes = {policy.route(call_info(prompt), engines).engine.name for prompt in prompts}
    assert len(homes) == 1  # one system message, one home
    assert policy.chat_fallbacks == 5


async def test_engines_that_cannot_report_their_cache_are_refused_at_start() -> None:
    engine = ScriptedEngine("plain")
    with pytest.raises(EngineCapabilityError, match=r"prefix-cache contents.*plain"):
        async with Runtime([engine], policy="llm-d"):
            pass
    assert engine.closed  # nothing left running
    with pytest.raises(EngineCapabilityError, match="cannot report"):
        engine.cached_prefix((1, 2, 3))


def test_the_name_is_registered_and_accepted_by_the_command_line() -> None:
    assert "llm-d" in policy_names()
    assert isinstance(get_policy("llm-d"), LlmdPolicy)
    args = _parser().parse_args(["replay", "t.jsonl", "--engine", "sim", "--policy", "llm-d", "--out", "r.json"])
    assert args.policy == "llm-d"

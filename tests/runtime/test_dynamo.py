"""The ``dynamo`` policy's arithmetic (Dynamo's KV-router cost and its softmax pick), its books of active
blocks, its refusal of engines that cannot report their cache, and its name in the registry and on the
command line.

The scoring engines here are stand-ins with fixed figures: what is tested is
the arithmetic; the simulator tests (tests/replay/sim/test_dynamo_sim.py)
drive real simulated engines.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from runtime import (
    CallFinished,
    CallInfo,
    ChatPrompt,
    DynamoPolicy,
    EngineCapabilityError,
    Runtime,
    TokenPrompt,
    get_policy,
    policy_names,
)
from runtime._cli._main import _parser
from runtime._policies._dynamo import block_keys, dynamo_logit, softmax_pick
from runtime.testing import ScriptedEngine

from ._cache_routing import FixedEngine, call_info

BS = 16


def _tokens(first: int, blocks: int, extra: int = 0) -> TokenPrompt:
    return TokenPrompt(tuple(range(first, first + blocks * BS + extra)))


def test_the_cost_is_weighted_prefill_blocks_plus_active_blocks() -> None:
    assert dynamo_logit(160, 30, 16, 1.0) == 40.0  # 10 prefill blocks + 30 active
    assert dynamo_logit(160, 30, 16, 2.0) == 50.0
    assert dynamo_logit(8, 0, 16, 1.0) == 0.5  # a partial block of prefill counts as a fraction
    assert dynamo_logit(160, 30, 16, 0.0) == 30.0  # weight 0: load balancing on active blocks alone


def test_softmax_pick_favours_the_lowest_cost_and_is_uniform_when_equal() -> None:
    # Logits 0 and 10 at T=1: rescaled to 0 and -1, so p = e^0 / (e^0 + e^-1) = 0.731 for the first.
    assert softmax_pick([0.0, 10.0], 1.0, 0.73) == 0
    assert softmax_pick([0.0, 10.0], 1.0, 0.74) == 1
    assert softmax_pick([10.0, 0.0], 1.0, 0.26) == 0  # p(first) = 0.269
    assert softmax_pick([10.0, 0.0], 1.0, 0.28) == 1
    assert softmax_pick([5.0, 5.0, 5.0], 0.5, 0.5) == 1  # uniform: thirds
    # A low temperature concentrates on the lowest cost: p(first) = 1 / (1 + e^-10).
    assert softmax_pick([0.0, 10.0], 0.1, 0.9999) == 0
    with pytest.raises(ValueError, match="temperature"):
        softmax_pick([1.0], 0.0, 0.5)


def test_block_keys_chain_full_blocks_only() -> None:
    a = block_keys(tuple(range(3 * BS + 5)), BS)
    b = block_keys(tuple(range(2 * BS)) + tuple(range(500, 500 + BS)), BS)
    assert len(a) == 3 and len(b) == 3  # the partial last block has no key
    assert a[:2] == b[:2] and a[2] != b[2]
    c = block_keys((9, *range(1, 3 * BS)), BS)
    assert all(x != y for x, y in zip(a, c, strict=True))  # a different first block changes every key


def test_costs_against_hand_computed_values() -> None:
    """Overlap lowers the prefill term; the call's blocks join each engine's active blocks."""
    a = FixedEngine("a", cached_blocks=6)
    b = FixedEngine("b", cached_blocks=2)
    c = FixedEngine("c", cached_blocks=0)
    policy = DynamoPolicy()
    call = call_info(_tokens(0, 8, extra=5))  # 133 tokens: 8 full blocks and 5 tokens
    # a: (133 - 96) / 16 + 8 = 10.3125;  b: (133 - 32) / 16 + 8 = 14.3125;  c: 133 / 16 + 8 = 16.3125
    assert policy.logits(call, [a, b, c]) == pytest.approx([10.3125, 14.3125, 16.3125])
    route = policy.route(call, [a, b, c])
    assert route.engine is a and route.priority == 0  # the caller's priority 2 is not used: vLLM's FCFS
    assert policy.active_blocks("a") == 8 and policy.pending_prefill_tokens("a") == 37
    # A second call of other tokens now sees a's books: a = 133/16 + 8 + 8 + 37/16, the others as before.
    other = call_info(_tokens(10_000, 8, extra=5), program_id="x")
    a.cached_blocks = b.cached_blocks = 0
    assert policy.logits(other, [a, b, c]) == pytest.approx([(133 + 37) / 16 + 16, 133 / 16 + 8, 133 / 16 + 8])


def test_an_engine_with_many_active_blocks_loses_a_cached_prefix() -> None:
    """The whole trade: a cached prefix of P blocks is worth P blocks of other calls' active context."""
    home = FixedEngine("home", cached_blocks=10)  # holds 10 leading blocks of any prompt
    other = FixedEngine("other", cached_blocks=0)
    policy = DynamoPolicy()
    turn = call_info(_tokens(0, 10))
    assert policy.logits(turn, [home, other]) == pytest.approx([10.0, 20.0])  # 0 + 10 against 10 + 10
    assert policy.route(turn, [home, other]).engine is home
    asyncio_run_finished(policy, turn)
    # Three calls of other programs run on home (the only candidate they were offered).
    for i in range(3):
        assert policy.route(call_info(_tokens(100_000 * (i + 1), 10), program_id=f"b{i}"), [home]).engine is home
    assert policy.active_blocks("home") == 30 and policy.pending_prefill_tokens("home") == 0
    # The next turn: home 0 prefill + 30 active + 10 new = 40; other 10 prefill + 10 new = 20.
    nxt = call_info(_tokens(0, 10), program_id="w2")
    assert policy.logits(nxt, [home, other]) == pytest.approx([40.0, 20.0])
    assert policy.route(nxt, [home, other]).engine is other
    # A larger overlap weight makes the cache worth more: 2 x 10 + 10 = 30 against 40 for home, still other.
    heavy = DynamoPolicy(overlap_score_weight=2.0)
    assert heavy.logits(nxt, [home, other]) == pytest.approx([10.0, 30.0])  # its own books are empty


def asyncio_run_finished(policy: DynamoPolicy, call: CallInfo, engine: str | None = None) -> None:
    asyncio.run(policy.on_call_finished(CallFinished(call, engine, None, "done")))


def test_shared_blocks_count_once_and_leave_with_their_lastcall_info() -> None:
    engine = FixedEngine("e", cached_blocks=0)
    policy = DynamoPolicy()
    first = call_info(_tokens(0, 6))
    second = call_info(TokenPrompt(_tokens(0, 4).token_ids + tuple(range(900, 900 + 3 * BS))), program_id="y")
    policy.route(first, [engine])
    # The second call shares 4 leading blocks with the first: only its 3 others are new.
    assert policy.logits(second, [engine]) == pytest.approx([(6 * BS + 7 * BS) / BS + 6 + 3])
    policy.route(second, [engine])
    assert policy.active_blocks("e") == 9
    asyncio_run_finished(policy, first)
    asyncio_run_finished(policy, first)  # heard twice (a failed attempt, then the call's end): once only
    assert policy.active_blocks("e") == 7 and policy.pending_prefill_tokens("e") == 7 * BS
    asyncio_run_finished(policy, second)
    assert policy.active_blocks("e") == 0 and policy.pending_prefill_tokens("e") == 0
    assert policy._active["e"].blocks == Counter()


def test_a_call_routed_again_leaves_its_first_engine() -> None:
    a, b = FixedEngine("a", cached_blocks=0), FixedEngine("b", cached_blocks=0)
    policy = DynamoPolicy()
    call = call_info(_tokens(0, 5))
    first = policy.route(call, [a, b]).engine.name
    again = policy.route(call, [e for e in (a, b) if e.name != first]).engine.name
    assert policy.active_blocks(first) == 0 and policy.active_blocks(again) == 5


def test_ties_are_broken_at_random_but_repeatably() -> None:
    engines = [FixedEngine(f"e{i}", cached_blocks=0) for i in range(4)]

    def picks(seed: int) -> list[str]:
        policy = DynamoPolicy(seed=seed)
        out = []
        for i in range(40):
            call = call_info(_tokens(0, 4), program_id=f"p{i}")
            out.append(policy.route(call, engines).engine.name)
            asyncio_run_finished(policy, call)  # books empty again: every pick is a four-way tie
        return out

    assert picks(1) == picks(1)
    assert len(set(picks(1))) > 1


def test_a_positive_temperature_samples_and_zero_is_the_argmin() -> None:
    cached = FixedEngine("cached", cached_blocks=10)
    cold = FixedEngine("cold", cached_blocks=0)
    argmin = DynamoPolicy()
    calls = [call_info(_tokens(0, 10), program_id=f"p{i}") for i in range(20)]
    chosen = {argmin.route(call, [cached, cold]).engine.name for call in calls}
    assert chosen == {"cached"}
    hot = DynamoPolicy(temperature=5.0, seed=3)
    names = [hot.route(call_info(_tokens(0, 10), program_id=f"p{i}"), [cached, cold]).engine.name for i in range(60)]
    assert set(names) == {"cached", "cold"}
    with pytest.raises(ValueError, match="temperature"):
        DynamoPolicy(temperature=-1.0)


def test_a_chat_prompt_counts_its_prefix_keys_hash_home_as_cached() -> None:
    engines = [FixedEngine(f"e{i}", cached_blocks=0) for i in range(4)]
    policy = DynamoPolicy()
    system = {"role": "system", "content": "you are an agent " * 40}
    homes = set()
    for i in range(5):
        call = call_info(ChatPrompt.of([system, {"role": "user", "content": str(i)}]), program_id=f"p{i}")
        homes.add(policy.route(call, engines).engine.name)
        asyncio_run_finished(policy, call)
    assert len(homes) == 1  # one system message, one home
    assert policy.chat_fallbacks == 5


async def test_engines_that_cannot_report_their_cache_are_refused_at_start() -> None:
    engine = ScriptedEngine("plain")
    with pytest.raises(EngineCapabilityError, match=r"prefix-cache contents.*plain"):
        async with Runtime([engine], policy="dynamo"):
            pass
    assert engine.closed  # nothing left running


def test_the_name_is_registered_and_accepted_by_the_command_line() -> None:
    assert "dynamo" in policy_names()
    assert isinstance(get_policy("dynamo"), DynamoPolicy)
    policy = get_policy("dynamo")
    assert isinstance(policy, DynamoPolicy)
    assert (policy.overlap_score_weight, policy.temperature) == (1.0, 0.0)  # Dynamo's shipped defaults
    args = _parser().parse_args(["replay", "t.jsonl", "--engine", "sim", "--policy", "dynamo", "--out", "r.json"])
    assert args.policy == "dynamo"

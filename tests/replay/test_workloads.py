"""Workload generators: valid traces, deterministic bytes, and the published statistics they target."""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from runtime import Runtime
from runtime.replay import CostProfile, SimEngine, Vocabulary, replay_trace, run_virtual, summarize, workload_kinds
from runtime.replay._results import percentile
from runtime.replay._trace import TraceCall, TraceProgram, dump_trace, load_trace
from runtime.replay._workloads import (
    AGENT_SYSTEM_TOKENS,
    CODING_COMPACT_AT,
    CODING_SYSTEM_TOKENS,
    DECODE_S_PER_TOKEN,
    PREFILL_S_PER_TOKEN,
    WorkloadKind,
    estimate_unloaded_s,
    generate_workload,
)
from tests.replay._profiles import ROUND_PROFILE

KINDS: list[WorkloadKind] = ["agent", "text2sql", "bfcl", "coding"]


def prompts(program: TraceProgram) -> dict[str, int]:
    """Each call's prompt tokens: app prefix + inherited context + fresh tokens."""
    full: dict[str, int] = {}
    out = {}
    for c in program.calls:
        prompt = (full[c.context] if c.context else program.system_tokens) + c.new_tokens
        full[c.id] = prompt + c.output_tokens + c.tool_output_tokens
        out[c.id] = prompt
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2024])
def test_generated_traces_validate(tmp_path: Path, kind: WorkloadKind, seed: int) -> None:
    programs = generate_workload(kind, programs=40, rate=2.0, seed=seed, scale=0.1, slo_scale=2.0)
    loaded = load_trace(dump_trace(programs, tmp_path / "t.jsonl"))
    assert loaded == programs
    assert all(p.slo_s is not None and p.slo_s > 0 for p in loaded)
    arrivals = [p.arrival_s for p in loaded]
    assert arrivals == sorted(arrivals) and arrivals[0] > 0
    assert all(p.app == {"agent": "coding-agent"}.get(kind, kind) for p in loaded)


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, kind: WorkloadKind) -> None:
    def make(seed: int, name: str) -> bytes:
        programs = generate_workload(kind, programs=30, rate=1.0, seed=seed, scale=0.05, tool_scale=0.5, slo_scale=3)
        return dump_trace(programs, tmp_path / name).read_bytes()

    assert make(5, "a.jsonl") == make(5, "b.jsonl")
    assert make(5, "a.jsonl") != make(6, "c.jsonl")


def test_poisson_arrivals_have_the_requested_rate() -> None:
    programs = generate_workload("bfcl", programs=2000, rate=4.0, seed=3)
    arrivals = [p.arrival_s for p in programs]
    gaps = [b - a for a, b in zip([0.0, *arrivals], arrivals, strict=False)]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.06)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.1)


def test_agent_statistics_match_agentcgroup() -> None:
    """2,000 programs: calls/program within 10%, context/request within 6% (median) and 8% (p90), Bash p50 within 10%.

    Seed-to-seed noise of the p90 context on 2,000 programs is about 5%; the tolerances are tight enough
    that a 4K-token change in the app prefix fails the median check.
    """
    programs = generate_workload("agent", programs=2000, rate=1.0, seed=11)
    calls = [len(p.calls) for p in programs]
    assert percentile(calls, 50) == pytest.approx(25.5, rel=0.1)
    assert percentile(calls, 90) == pytest.approx(60, rel=0.1)
    contexts = [n for p in programs for n in prompts(p).values()]
    assert percentile(contexts, 50) == pytest.approx(33_000, rel=0.06)
    assert percentile(contexts, 90) == pytest.approx(58_000, rel=0.08)
    tools = defaultdict(list)
    for p in programs:
        assert p.calls[-1].tool is None and all(c.tool is not None for c in p.calls[:-1])
        assert all(p.calls[i].context == p.calls[i - 1].id for i in range(1, len(p.calls)))
        for c in p.calls:
            assert 110 <= c.output_tokens <= 227
            if c.tool:
                tools[c.tool].append(c.tool_s)
    bash = tools["bash"]
    assert percentile(bash, 50) == pytest.approx(1.08, rel=0.1)
    assert 6.0 < percentile(bash, 90) < 9.0  # published 8.4 s; one lognormal fitted through p90 and p99
    assert 25.0 < percentile(bash, 99) < 40.0  # published 30 s
    assert max(bash) <= 120.0
    for name, median in (("read", 0.03), ("grep", 0.04), ("edit", 0.03), ("task", 66.0)):
        assert percentile(tools[name], 50) == pytest.approx(median, rel=0.15), name
    assert 0 < len(tools["task"]) < 0.05 * sum(len(v) for v in tools.values())


def test_text2sql_matches_hexgen_stages() -> None:
    programs = generate_workload("text2sql", programs=600, rate=1.0, seed=2)
    means = {
        "retrieval": (308, 5),
        "keywords": (667, 45),
        "candidate": (11_748, 678),
        "revise": (5_963, 79),
        "unit_test": (1_109, 103),
        "evaluate": (961, 22),
    }
    seen: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for p in programs:
        assert 16 <= len(p.calls) <= 22
        by_id = {c.id: c for c in p.calls}
        for cid, prompt in prompts(p).items():
            seen[by_id[cid].stage or ""][0].append(prompt)
            seen[by_id[cid].stage or ""][1].append(by_id[cid].output_tokens)
        # DAG: three parallel candidates after keywords, unit tests after every candidate chain, evaluations after it.
        cands = [c for c in p.calls if c.stage == "candidate"]
        assert len(cands) == 3 and all(c.parents == ["keywords"] and c.context is None for c in cands)
        assert len(by_id["unit_tests"].parents) == 3
        evals = [c for c in p.calls if c.stage == "evaluate"]
        assert len(evals) == 3 and all(c.parents == ["unit_tests"] for c in evals)
        for c in p.calls:
            if c.stage == "revise":
                assert c.tool == "sql" and int(c.id.rsplit("rev", 1)[1]) <= 5
    assert set(seen) == set(means)
    for stage, (prompt, output) in means.items():
        assert statistics.mean(seen[stage][0]) == pytest.approx(prompt, rel=0.08), stage
        assert statistics.mean(seen[stage][1]) == pytest.approx(output, rel=0.08), stage


def test_bfcl_matches_autellix_and_bfcl() -> None:
    programs = generate_workload("bfcl", programs=1500, rate=1.0, seed=4)
    all_prompts = [n for p in programs for n in prompts(p).values()]
    outputs = [c.output_tokens for p in programs for c in p.calls]
    turns = [len({c.stage for c in p.calls}) for p in programs]
    assert statistics.mean(all_prompts) == pytest.approx(735, rel=0.05)
    assert statistics.mean(outputs) == pytest.approx(34, rel=0.05)
    assert statistics.mean(turns) == pytest.approx(4, rel=0.05)
    assert len(all_prompts) / sum(turns) == pytest.approx(1.6, rel=0.05)
    tool_s = [c.tool_s for p in programs for c in p.calls if c.tool]
    assert min(tool_s) >= 0.1 and max(tool_s) <= 0.5


def test_scale_shrinks_tokens_not_tools_and_tool_scale_shrinks_tools() -> None:
    full = generate_workload("agent", programs=20, rate=1.0, seed=9)
    small = generate_workload("agent", programs=20, rate=1.0, seed=9, scale=0.01, tool_scale=0.5)
    assert small[0].system_tokens == round(AGENT_SYSTEM_TOKENS * 0.01)
    for a, b in zip(full, small, strict=True):
        assert a.arrival_s == b.arrival_s and len(a.calls) == len(b.calls)
        for ca, cb in zip(a.calls, b.calls, strict=True):
            assert cb.new_tokens == max(1, round(ca.new_tokens * 0.01))
            assert cb.output_tokens == max(1, round(ca.output_tokens * 0.01)) >= 1
            assert cb.tool_s == pytest.approx(round(ca.tool_s * 0.5, 3), abs=0.0015)


def test_slo_is_scale_times_the_unloaded_estimate() -> None:
    plain = generate_workload("text2sql", programs=5, rate=1.0, seed=1)
    with_slo = generate_workload("text2sql", programs=5, rate=1.0, seed=1, slo_scale=1.5)
    assert all(p.slo_s is None for p in plain)
    for p, q in zip(plain, with_slo, strict=True):
        assert q.slo_s == pytest.approx(1.5 * estimate_unloaded_s(p), abs=0.002)
    # The estimate is the critical path: a chain of two calls, by hand.
    chain = TraceProgram.model_validate(
        {
            "id": "x",
            "arrival_s": 0,
            "calls": [
                {
                    "id": "a",
                    "new_tokens": 100,
                    "output_tokens": 10,
                    "tool": "t",
                    "tool_s": 2.0,
                    "tool_output_tokens": 50,
                },
                {"id": "b", "new_tokens": 20, "output_tokens": 5},
                {"id": "c", "after": [], "new_tokens": 10, "output_tokens": 1},
            ],
        }
    )
    expected = 100 * PREFILL_S_PER_TOKEN + 10 * DECODE_S_PER_TOKEN + 2.0 + (20 + 50) * PREFILL_S_PER_TOKEN
    assert estimate_unloaded_s(chain) == pytest.approx(expected + 5 * DECODE_S_PER_TOKEN)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"programs": 0}, "programs"),
        ({"rate": 0.0}, "rate"),
        ({"scale": -1.0}, "scale"),
        ({"tool_scale": -1.0}, "tool_scale"),
        ({"slo_scale": 0.0}, "slo_scale"),
    ],
)
def test_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    args: dict[str, float] = {"programs": 3, "rate": 1.0, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_workload("agent", **args)  # type: ignore[arg-type]


def test_kinds_are_the_literal_and_the_cli_choices() -> None:
    assert workload_kinds() == tuple(KINDS)


# -- the existing kinds are pinned: a change to a generator changes these on purpose --------------

#: sha256 of ``dump_trace(generate_workload(kind, programs=50, rate=0.5, seed=7, scale=0.05,
#: tool_scale=0.5, slo_scale=2.0))``, computed before the ``coding`` kind was added.
PINNED = {
    "agent": "2cbd82a0d3b0b52cc400c34f10ba5aa960bf4a444fb9a1fd8069aa452b08241a",
    "text2sql": "838e8a9ab46450a5267a15ba143aa4e0b611abe1631839fd40dbd8a6f56c2388",
    "bfcl": "d7c270d4006f9318bb85b53f7d3ff6869ed273ec4b752ded5588b2a5ac933209",
}


@pytest.mark.parametrize("kind", sorted(PINNED))
def test_existing_kinds_give_the_same_bytes_as_before(tmp_path: Path, kind: WorkloadKind) -> None:
    programs = generate_workload(kind, programs=50, rate=0.5, seed=7, scale=0.05, tool_scale=0.5, slo_scale=2.0)
    assert hashlib.sha256(dump_trace(programs, tmp_path / "t.jsonl").read_bytes()).hexdigest() == PINNED[kind]


# -- coding: long-context coding agents ------------------------------------------------------------


def uncached(program: TraceProgram, call: TraceCall) -> int:
    """Prompt tokens of ``call`` nothing could have cached: its fresh tokens and the tool output it inherits."""
    return call.new_tokens + (program.call(call.context).tool_output_tokens if call.context else 0)


def gaps(program: TraceProgram) -> list[float]:
    """The pause between each call that something waits for and the next call: its tool's duration."""
    waited = {a for c in program.calls for a in c.parents}
    return [c.tool_s for c in program.calls if c.id in waited]


@pytest.fixture(scope="module")
def coding() -> list[TraceProgram]:
    return generate_workload("coding", programs=300, rate=0.1, seed=21)


def test_coding_statistics_match_the_published_figures(coding: list[TraceProgram]) -> None:
    """300 sessions: RFC #57103's medians, prefix reuse and sub-agent share; RFC #285's follow-up gaps."""
    calls = [len(p.calls) for p in coding]
    assert percentile(calls, 50) == pytest.approx(43, rel=0.15)
    prompts_ = [n for p in coding for n in prompts(p).values()]
    assert percentile(prompts_, 50) == pytest.approx(142_000, rel=0.1)
    assert statistics.mean(prompts_) == pytest.approx(142_000, rel=0.15)  # TraceLab: ~154K per round
    fresh = sum(uncached(p, c) for p in coding for c in p.calls)
    assert 1 - fresh / sum(prompts_) > 0.96  # "over 96% prefix-cache hits"
    with_subagents = sum(any(c.stage == "subagent" for c in p.calls) for p in coding)
    assert with_subagents / len(coding) == pytest.approx(0.44, abs=0.07)
    every_gap = [g for p in coding for g in gaps(p)]
    within_1s = sum(g < 1 for g in every_gap) / len(every_gap)
    within_10s = sum(g < 10 for g in every_gap) / len(every_gap)
    assert 0.83 < within_1s < 0.89  # 86.46%
    assert 0.93 < within_10s < 0.97  # 95.12%
    tools: dict[str, list[float]] = defaultdict(list)
    for p in coding:
        for c in p.calls:
            if c.tool:
                tools[c.tool].append(c.tool_s)
    assert set(tools) == {"read", "edit", "grep", "bash", "test", "human"}
    assert percentile(tools["bash"], 50) == pytest.approx(1.08, rel=0.15)  # AgentCgroup's fit, reused
    assert max(tools["bash"]) <= 120 and max(tools["test"]) <= 600 and max(tools["human"]) <= 1800
    assert percentile(tools["human"], 50) == pytest.approx(30, rel=0.3)


def test_coding_compaction_resets_the_context(coding: list[TraceProgram]) -> None:
    compacted = 0
    for p in coding:
        lengths = prompts(p)
        for i, c in enumerate(p.calls):
            if c.stage != "compact":
                continue
            compacted += 1
            # The summary request carries the whole context, past the limit; the next call starts afresh.
            assert c.context is not None and c.tool is None and lengths[c.id] > CODING_COMPACT_AT
            nxt = p.calls[i + 1]
            assert nxt.parents == [c.id] and nxt.context is None
            assert lengths[nxt.id] == p.system_tokens + nxt.new_tokens < CODING_COMPACT_AT / 4
            assert nxt.new_tokens >= c.output_tokens  # the summary, re-read
    assert compacted > 0.15 * len(coding)
    # Only compaction breaks a context: every other call continues one.
    for p in coding:
        for c in p.calls[1:]:
            if c.context is None:
                assert p.call(c.parents[0]).stage == "compact"


def test_coding_sub_agents_branch_from_the_parent_and_join_it(coding: list[TraceProgram]) -> None:
    seen_parallel = False
    for p in coding:
        by_id = {c.id: c for c in p.calls}
        firsts = [c for c in p.calls if c.stage == "subagent" and c.id.endswith(".t1")]
        spawns = {c.id.split(".a")[0] for c in firsts}
        for spawn in spawns:
            s = by_id[spawn]
            assert s.stage == "turn" and s.tool is None  # the parent's Task call; the sub-agents run meanwhile
            mine = [c for c in firsts if c.id.startswith(spawn + ".a")]
            seen_parallel |= len(mine) > 1
            for first in mine:
                # A sub-agent starts from the parent's context (its prefix is the parent's)...
                assert first.parents == [spawn] or by_id[first.parents[0]].stage == "compact"
            # ...and the parent's next call waits for every sub-agent's last call, continuing its own context.
            joins = [c for c in p.calls if spawn in c.parents and c.stage in ("turn", "compact") and c.id != spawn]
            (join,) = joins
            assert join.context == spawn and len(join.parents) == 1 + len(mine)
            for end in join.parents[1:]:
                assert by_id[end].stage == "subagent" and by_id[end].tool is None
    assert seen_parallel


def test_coding_estimate_is_the_critical_path_over_sub_agent_branches(coding: list[TraceProgram]) -> None:
    """The unloaded estimate: the parent's chain plus, at each spawn, its slowest sub-agent (they run in parallel)."""

    def cost(p: TraceProgram, c: TraceCall) -> float:
        return uncached(p, c) * PREFILL_S_PER_TOKEN + c.output_tokens * DECODE_S_PER_TOKEN + c.tool_s

    checked = 0
    for p in coding:
        branches: dict[str, float] = defaultdict(float)
        for c in p.calls:
            if ".a" in c.id:
                branches[c.id.rsplit(".t", 1)[0]] += cost(p, c)  # t5.a1.t3 and t5.a1.t3.compact: t5.a1
        spawns: dict[str, float] = defaultdict(float)
        for branch, seconds in branches.items():
            spawn = branch.split(".a")[0]
            spawns[spawn] = max(spawns[spawn], seconds)
        parent = sum(cost(p, c) for c in p.calls if ".a" not in c.id)
        assert estimate_unloaded_s(p) == pytest.approx(parent + sum(spawns.values()), rel=1e-9)
        checked += len(branches) > 1
    assert checked > 0
    with_slo = generate_workload("coding", programs=5, rate=0.1, seed=21, slo_scale=2.0)
    for p, q in zip(coding[:5], with_slo, strict=True):
        assert q.slo_s == pytest.approx(2.0 * estimate_unloaded_s(p), abs=0.002)


def test_coding_scale_shrinks_tokens_not_the_shape() -> None:
    full = generate_workload("coding", programs=20, rate=0.1, seed=5)
    small = generate_workload("coding", programs=20, rate=0.1, seed=5, scale=0.02, tool_scale=0.5)
    assert small[0].system_tokens == round(CODING_SYSTEM_TOKENS * 0.02)
    for a, b in zip(full, small, strict=True):
        assert [(c.id, c.parents, c.context, c.tool, c.stage) for c in a.calls] == [
            (c.id, c.parents, c.context, c.tool, c.stage) for c in b.calls
        ]
        for ca, cb in zip(a.calls, b.calls, strict=True):
            # Scaled from the unrounded draw: within one token of scaling the rounded one.
            assert abs(cb.new_tokens - max(1, round(ca.new_tokens * 0.02))) <= 1
            assert abs(cb.output_tokens - max(1, round(ca.output_tokens * 0.02))) <= 1
            assert abs(cb.tool_output_tokens - round(ca.tool_output_tokens * 0.02)) <= 1
            assert cb.tool_s == pytest.approx(round(ca.tool_s * 0.5, 3), abs=0.0015)
    assert max(max(prompts(p).values()) for p in small) < 0.02 * 1.2 * CODING_COMPACT_AT


def test_a_scaled_down_coding_trace_replays_in_the_simulator() -> None:
    programs = generate_workload("coding", programs=6, rate=0.05, seed=4, scale=0.02, tool_scale=0.1)
    assert any(c.stage == "compact" for p in programs for c in p.calls)
    assert any(c.stage == "subagent" for p in programs for c in p.calls)
    profile = CostProfile.model_validate(ROUND_PROFILE)

    async def main() -> Any:
        pool = [SimEngine(profile, name=f"sim-{i}", seed=0, vocab_size=4096) for i in range(2)]
        async with Runtime(pool) as rt:
            return await replay_trace(programs, rt, vocabulary=Vocabulary(4096, frozenset({0, 1, 2})), seed=0)

    run = run_virtual(main)
    summary = summarize(run.programs, **run.totals)
    assert summary.completed == 6 and summary.failed == 0
    for spec, result in zip(programs, run.programs, strict=True):
        assert [c.id for c in result.calls] == [c.id for c in spec.calls]
        lengths = prompts(spec)
        for call in result.calls:
            assert call.prompt_tokens == lengths[call.id]
            if spec.call(call.id).context is None and call.id != spec.calls[0].id:
                # After a compaction the simulator sees the prefix reset: at most the app prefix is cached.
                assert call.cached_tokens <= spec.system_tokens
    assert summary.cached_token_ratio is not None and summary.cached_token_ratio > 0.8

"""Trace replay on the real tiny vLLM engine, through the runtime's own path.

Uses the session's shared runtime (one in-process engine): the replay is
submitted to it as programs, like any workflow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime import resolve_dtype
from runtime.replay._replay import replay_trace
from runtime.replay._results import ReplayResult, load_result, summarize
from runtime.replay._tokens import model_vocabulary
from runtime.replay._trace import TraceCall, TraceProgram, dump_trace, load_trace
from runtime.replay._workloads import generate_workload

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


def chain(pid: str, arrival: float, *, tool_s: float) -> TraceProgram:
    """Three turns of one conversation: each inherits the previous call's full context."""
    calls = [
        TraceCall(id="c0", new_tokens=40, output_tokens=8, tool="bash", tool_s=tool_s, tool_output_tokens=30),
        TraceCall(id="c1", new_tokens=20, output_tokens=8, tool="read", tool_s=tool_s, tool_output_tokens=140),
        TraceCall(id="c2", new_tokens=10, output_tokens=6),
    ]
    return TraceProgram(id=pid, arrival_s=arrival, app="coder", system_tokens=300, slo_s=120.0, calls=calls)


async def test_replay_on_the_real_engine(rt: Any, tiny_model: Path, tmp_path: Path) -> None:
    programs = [chain("p0", 0.0, tool_s=0.3), chain("p1", 0.5, tool_s=0.3)]
    trace = dump_trace(programs, tmp_path / "chain.jsonl")
    programs = load_trace(trace)

    run = await replay_trace(programs, rt, vocabulary=model_vocabulary(tiny_model), seed=3)

    assert [p.id for p in run.programs] == ["p0", "p1"]
    for program in run.programs:
        assert program.error is None and program.jct_s is not None and program.finish_s is not None
        assert [c.id for c in program.calls] == ["c0", "c1", "c2"]
        # Two tool pauses of 0.3 s lie on the program's critical path.
        assert program.jct_s >= 0.6
        assert abs(program.finish_s - program.arrival_s - program.jct_s) < 1e-9
        c0, c1, c2 = program.calls
        # Prompts grow exactly as the contract says: inherited full context + fresh tokens.
        assert c0.prompt_tokens == 300 + 40
        assert c1.prompt_tokens == c0.prompt_tokens + 8 + 30 + 20
        assert c2.prompt_tokens == c1.prompt_tokens + 8 + 140 + 10
        # The inherited context uses the tokens the engine generated: whole
        # 128-token blocks of it are prefix-cache hits.
        assert c1.cached_tokens >= 256 and c2.cached_tokens >= 384
        assert all(c.engine == 0 and c.ttft_s is not None and c.e2e_s is not None for c in program.calls)
    # The second program shares the app's 300-token system prefix: two full blocks hit.
    assert run.programs[1].calls[0].cached_tokens >= 256
    # Every call ran through the runtime as a program node with its tool.
    program = rt.programs["p0"]
    kinds = [n.kind.value for n in program.nodes.values()]
    assert kinds.count("llm") == 3 and kinds.count("tool") == 2

    result = ReplayResult(
        policy="vllm",
        engine="vllm",
        engines=1,
        trace=trace.name,
        summary=summarize(run.programs, **run.totals),
        programs=run.programs,
    )
    out = result.write(tmp_path / "result.json")
    document = json.loads(out.read_text())
    assert set(document) >= {"policy", "engine", "engines", "trace", "summary", "programs"}
    assert document["summary"]["completed"] == 2 and document["summary"]["failed"] == 0
    assert document["summary"]["slo_attainment"] == 1.0
    assert document["summary"]["cached_prompt_tokens"] > 0
    assert load_result(out).summary == result.summary


async def test_generated_agent_trace_replays(rt: Any, tiny_model: Path, tmp_path: Path) -> None:
    programs = generate_workload("agent", programs=2, rate=1.0, seed=5, scale=0.01, tool_scale=0.01)
    trace = dump_trace(programs, tmp_path / "agent.jsonl")
    run = await replay_trace(load_trace(trace), rt, vocabulary=model_vocabulary(tiny_model), seed=0)
    assert all(p.error is None for p in run.programs), [p.error for p in run.programs]
    assert [len(p.calls) for p in run.programs] == [len(p.calls) for p in programs]
    summary = summarize(run.programs, **run.totals)
    assert summary.completed == 2 and summary.cached_token_ratio is not None and summary.cached_token_ratio > 0.3


async def test_calibrate_measures_a_profile_the_simulator_loads(rt: Any, tiny_model: Path) -> None:
    from runtime.replay._calibrate import KV_HEADROOM, cached_prompt_length, calibrate_engine
    from runtime.replay._sim import CostProfile

    (engine,) = rt.engines
    said: list[str] = []
    profile = await calibrate_engine(
        engine,
        name="tiny-test",
        vocabulary=model_vocabulary(tiny_model),
        kv_blocks=1000,
        # Context 4096 is past the shared engine's limit (4,096 tokens): left out, not measured.
        contexts=(0, 256, 4096),
        # 1,024 fresh tokens: in float32 the tiny model prefills 256 in 0-3 ms
        # over a cached prompt's TTFT, inside the timing noise (a rate could
        # come out near-infinite); 1,024 take 30-55 ms.
        chunk=1024,
        batches=(1, 2, 4),
        decode_tokens=12,
        decode_contexts=(16, 384, 4096),
        repeats=1,
        progress=said.append,
    )
    loaded = CostProfile.model_validate(profile)
    assert loaded.block_size == 128 and loaded.kv_blocks == 1000 and loaded.model == engine.model
    assert loaded.dtype == engine.dtype == resolve_dtype("auto")
    assert loaded.max_num_seqs == 4  # the shared engine's setting, read from vLLM's config
    # The measured contexts, then the fitted curve at the engine's context limit.
    limit = engine.vllm.vllm_config.model_config.max_model_len
    assert [x for x, _ in loaded.prefill_tokens_per_s] == [512.0, 768.0, float(limit)]
    assert [x for x, _ in loaded.decode_s_per_context_token] == [1, 2, 4]  # type: ignore[union-attr]
    assert [x for x, _ in loaded.decode_step_s] == [1, 2, 4]
    # The raw measurements the fit used travel with the profile: every batch at every decode context.
    assert loaded.measurements is not None
    assert sorted((b, c) for b, c, _ in loaded.measurements["decode"]) == [(b, c) for b in (1, 2, 4) for c in (16, 384)]
    assert [c for c, _ in loaded.measurements["prefill"]] == [512.0, 768.0]
    # What did not fit is recorded and was reported.
    assert loaded.measurements["skipped_decode"] == [[1, 4096], [2, 4096], [4, 4096]]
    assert loaded.measurements["skipped_prefill"] == [[4096, 1024]]
    assert "decode of 4 sequences at context 4096 left out: 4109 tokens per sequence exceed the engine's" in said[2]
    # No measured point needed more than the usable part of the engine's KV cache.
    cache = engine.vllm.vllm_config.cache_config
    for batch, context, _ in loaded.measurements["decode"]:
        blocks = -(-(cached_prompt_length(int(context)) + 12) // cache.block_size)
        assert batch * blocks <= KV_HEADROOM * cache.num_gpu_blocks
    # Physically plausible for a 2-layer model on a CPU: thousands of prefill
    # tokens per second, steps of milliseconds, not zero and not seconds.
    assert all(100 < rate < 1e6 for _, rate in loaded.prefill_tokens_per_s)
    assert 1e-4 <= loaded.step_overhead_s < 0.5 and 0 <= loaded.request_latency_s < 1
    assert loaded.step_time([], 4, 64) < 1


def test_cli_replay_on_a_real_engine_records_its_format(tiny_model: Path, tmp_path: Path) -> None:
    trace = dump_trace([chain("p0", 0.0, tool_s=0.1)], tmp_path / "chain.jsonl")
    out = tmp_path / "real.json"
    done = subprocess.run(
        [sys.executable, "-m", "runtime._cli", "replay", str(trace), "--engine", "vllm", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, VLLM_LOGGING_LEVEL="WARNING"),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = load_result(out)
    assert result.dtype == resolve_dtype("auto") and result.model == "tiny"
    assert f"tiny ({result.dtype})" in done.stdout and "1 (1 completed, 0 failed)" in done.stdout


async def test_calibrate_refuses_a_grid_the_engine_cannot_hold(rt: Any, tiny_model: Path) -> None:
    from runtime.replay._calibrate import calibrate_engine

    (engine,) = rt.engines
    # 8,193 prompt tokens do not fit the shared engine's 4,096: nothing would be measured.
    with pytest.raises(ValueError, match=r"too small to calibrate: even 1 sequence\(s\) at context 8192 do not fit"):
        await calibrate_engine(
            engine, name="x", vocabulary=model_vocabulary(tiny_model), kv_blocks=1000, decode_contexts=(8192,)
        )

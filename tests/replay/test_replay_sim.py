"""Trace replay on simulated engines, in virtual time, through the runtime's own path."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime._runtime import Runtime
from runtime.replay._cli import _young_collections_every
from runtime.replay._replay import replay_trace
from runtime.replay._results import load_result, summarize
from runtime.replay._sim import CostProfile, SimEngine
from runtime.replay._tokens import Vocabulary
from runtime.replay._trace import TraceCall, TraceProgram, dump_trace
from runtime.replay._vclock import run_virtual
from runtime.replay._workloads import generate_workload
from tests.replay._profiles import ROUND_PROFILE

ROOT = Path(__file__).resolve().parents[2]


def agentrt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime._cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=timeout,
    )


@pytest.fixture
def profile_path(tmp_path: Path) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(ROUND_PROFILE))
    return path


def replay_in_virtual_time(programs: list[TraceProgram], *, engines: int = 1, seed: int = 0) -> Any:
    profile = CostProfile.model_validate(ROUND_PROFILE)

    async def main() -> Any:
        pool = [SimEngine(profile, name=f"sim-{i}", seed=seed, vocab_size=4096) for i in range(engines)]
        async with Runtime(pool) as rt:
            return await replay_trace(programs, rt, vocabulary=Vocabulary(4096, frozenset({0, 1, 2})), seed=seed)

    return run_virtual(main)


def test_one_call_costs_what_the_profile_says() -> None:
    # 256 fresh prompt tokens: one step of 10 ms + 256/10,000 s prefill, which
    # yields the first token; 3 more decode steps of 11 ms; 10 ms of request
    # latency on the way in, 10 ms on the way out.
    program = TraceProgram(id="p", arrival_s=1.0, calls=[TraceCall(id="c", new_tokens=256, output_tokens=4)])
    run = replay_in_virtual_time([program])
    (result,) = run.programs
    (call,) = result.calls
    assert call.ttft_s == pytest.approx(0.01 + 0.0256 + 0.02, abs=1e-6)
    assert call.e2e_s == pytest.approx(0.01 + 0.0256 + 3 * 0.011 + 0.02, abs=1e-6)
    assert result.jct_s == pytest.approx(call.e2e_s, abs=1e-6)
    assert result.finish_s == pytest.approx(1.0 + call.e2e_s, abs=1e-6)


def test_tool_pauses_and_context_inheritance_in_virtual_time() -> None:
    calls = [
        TraceCall(id="a", new_tokens=300, output_tokens=10, tool="bash", tool_s=300.0, tool_output_tokens=200),
        TraceCall(id="b", new_tokens=50, output_tokens=10),
    ]
    program = TraceProgram(id="p", arrival_s=0.0, app="x", system_tokens=100, slo_s=301.0, calls=calls)
    started = time.perf_counter()
    run = replay_in_virtual_time([program])
    assert time.perf_counter() - started < 100  # 300 virtual seconds of tool time, not real ones
    (result,) = run.programs
    a, b = result.calls
    assert a.prompt_tokens == 400 and b.prompt_tokens == 400 + 10 + 200 + 50
    # The engine computed a's prompt and output (410 tokens), not the tool's
    # output: three full 128-token blocks of b's prompt are cache hits.
    assert b.cached_tokens == 384
    assert 300.0 < result.jct_s < 301.0 and result.slo_met is True


def test_branches_run_in_parallel_and_a_join_waits_for_every_parent() -> None:
    # a, then b and c at once (tools of 100 s and 200 s), then d after both:
    # about 200 s in all; 300 s if the branches ran one after the other,
    # about 100 s if d started after its first parent only.
    calls = [
        TraceCall(id="a", new_tokens=100, output_tokens=2),
        TraceCall(id="b", after=["a"], new_tokens=10, output_tokens=2, tool="bash", tool_s=100.0),
        TraceCall(id="c", after=["a"], new_tokens=10, output_tokens=2, tool="bash", tool_s=200.0),
        TraceCall(id="d", after=["b", "c"], context="c", new_tokens=10, output_tokens=2),
        TraceCall(id="e", after=["d"], new_tokens=10, output_tokens=2),
    ]
    program = TraceProgram(id="p", arrival_s=0.0, calls=calls)
    run = replay_in_virtual_time([program])
    (result,) = run.programs
    assert [c.id for c in result.calls] == ["a", "b", "c", "d", "e"]
    assert 200.0 < result.jct_s < 201.0
    by_id = {c.id: c for c in result.calls}
    # d continues c's context (a's prompt and output, c's prompt and output); e continues d's.
    assert by_id["d"].prompt_tokens == 100 + 2 + 10 + 2 + 10
    assert by_id["e"].prompt_tokens == by_id["d"].prompt_tokens + 2 + 10


def test_same_seed_same_result() -> None:
    programs = generate_workload("text2sql", programs=6, rate=0.5, seed=3, scale=0.05, tool_scale=0.1)
    first = replay_in_virtual_time(programs, engines=2, seed=1)
    second = replay_in_virtual_time(programs, engines=2, seed=1)
    assert [p.model_dump() for p in first.programs] == [p.model_dump() for p in second.programs]
    summary = summarize(first.programs, **first.totals)
    assert summary.completed == 6 and summary.failed == 0
    assert {c.engine for p in first.programs for c in p.calls} == {0, 1}  # least-loaded dispatch uses both
    # Every call of the DAG ran (parallel candidates, repair rounds, evaluations).
    for spec, result in zip(programs, first.programs, strict=True):
        assert len(result.calls) == len(spec.calls)


def test_cli_replay_on_the_simulator(tmp_path: Path, profile_path: Path) -> None:
    trace = dump_trace(
        generate_workload("agent", programs=8, rate=1.0, seed=2, scale=0.02, tool_scale=0.05), tmp_path / "a.jsonl"
    )
    outs = []
    for name in ("r1.json", "r2.json"):
        out = tmp_path / name
        done = agentrt(
            "replay", str(trace), "--engine", "sim", "--engines", "2", "--profile", str(profile_path),
            "--policy", "vllm", "--out", str(out), "--seed", "4",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "8 (8 completed, 0 failed)" in done.stdout
        assert "test-model (float32)" in done.stdout  # the format the profile was measured in
        outs.append(load_result(out))
    first, second = outs
    assert first.engine == "sim" and first.engines == 2 and first.policy == "vllm" and first.trace == "a.jsonl"
    assert first.dtype == "float32" and first.profile == "test-cpu"
    assert first.summary.cached_token_ratio is not None and first.summary.cached_token_ratio > 0.5
    assert first.model_dump(exclude={"wall_s"}) == second.model_dump(exclude={"wall_s"})


def test_cli_rejects_a_bad_trace_before_starting(tmp_path: Path, profile_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    good = {"id": "p0", "arrival_s": 0, "calls": [{"id": "c0", "new_tokens": 5, "output_tokens": 5}]}
    bad = {"id": "p1", "arrival_s": 1, "calls": [{"id": "c0", "new_tokens": 5, "output_tokens": 5, "after": ["zz"]}]}
    trace.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    done = agentrt("replay", str(trace), "--engine", "vllm", "--out", str(tmp_path / "r.json"))
    assert done.returncode == 2
    assert "line 2" in done.stderr and "calls[0].after" in done.stderr and "zz" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r.json").exists()


def test_cli_rejects_a_trace_longer_than_the_engine_context(tmp_path: Path) -> None:
    program = TraceProgram(id="p", arrival_s=0, calls=[TraceCall(id="c", new_tokens=5000, output_tokens=10)])
    trace = dump_trace([program], tmp_path / "long.jsonl")
    done = agentrt("replay", str(trace), "--engine", "vllm", "--max-model-len", "4096", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "needs 5010 tokens" in done.stderr and "--max-model-len 4096" in done.stderr


def run_cli(*args: str) -> tuple[int, str, bool]:
    """``agentrt`` in a fresh interpreter: exit code, stderr, and whether vLLM was imported by the end."""
    code = (
        "import sys\nfrom runtime._cli import main\ncode = main(sys.argv[1:])\n"
        "print('vllm' in sys.modules)\nsys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=120
    )
    return done.returncode, done.stderr, done.stdout.strip().splitlines()[-1] == "True"


@pytest.fixture
def short_model(tiny_model: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model that holds 1,024 tokens of context (its config.json says 32,768)."""
    copy = tmp_path / "tiny-1k"
    shutil.copytree(tiny_model, copy)
    config = json.loads((copy / "config.json").read_text())
    assert config["max_position_embeddings"] == 32768
    (copy / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return copy


def test_cli_refuses_a_trace_longer_than_the_model_holds_before_any_engine(tmp_path: Path, short_model: Path) -> None:
    program = TraceProgram(id="p7", arrival_s=0, calls=[TraceCall(id="c3", new_tokens=1500, output_tokens=20)])
    trace = dump_trace([program], tmp_path / "long.jsonl")
    out = tmp_path / "r.json"
    code, stderr, vllm_loaded = run_cli(
        "replay", str(trace), "--engine", "vllm", "--model", str(short_model), "--out", str(out)
    )
    assert code == 2 and not vllm_loaded and not out.exists()
    assert stderr.splitlines() == [
        "agentrt: error: program p7 call c3 needs 1520 tokens of context, more than model tiny-1k holds "
        "(1024 tokens, its config.json): generate the trace with a smaller --scale"
    ]


def test_cli_refuses_a_context_limit_above_the_models(tmp_path: Path, short_model: Path) -> None:
    program = TraceProgram(id="p", arrival_s=0, calls=[TraceCall(id="c", new_tokens=100, output_tokens=10)])
    trace = dump_trace([program], tmp_path / "t.jsonl")
    args = ("replay", str(trace), "--engine", "vllm", "--model", str(short_model), "--out", str(tmp_path / "r.json"))
    code, stderr, vllm_loaded = run_cli(*args, "--max-model-len", "2048")
    assert code == 2 and not vllm_loaded
    assert stderr.splitlines() == [
        "agentrt: error: --max-model-len 2048 is more than model tiny-1k holds (1024 tokens, its config.json): "
        "lower it, or leave it out to size it from the trace"
    ]
    code, stderr, vllm_loaded = run_cli(*args, "--max-model-len", "64")  # below the trace's 110 tokens
    assert code == 2 and not vllm_loaded
    assert stderr.splitlines() == [
        "agentrt: error: program p call c needs 110 tokens of context, more than --max-model-len 64: "
        "raise it or generate the trace with a smaller --scale"
    ]


def test_cli_refuses_an_unknown_number_format(tmp_path: Path) -> None:
    program = TraceProgram(id="p", arrival_s=0, calls=[TraceCall(id="c", new_tokens=5, output_tokens=5)])
    trace = dump_trace([program], tmp_path / "t.jsonl")
    code, stderr, vllm_loaded = run_cli("replay", str(trace), "--dtype", "bf16", "--out", str(tmp_path / "r.json"))
    assert code == 2 and not vllm_loaded
    assert stderr.splitlines() == [
        "agentrt: error: --dtype 'bf16' is not a number format vLLM knows: "
        "auto, bfloat16, float, float16, float32, half"
    ]
    code, stderr, _ = run_cli("calibrate", "--dtype", "fp32")
    assert (
        code == 2
        and stderr.startswith("agentrt: error: --dtype 'fp32' is not a number format")
        and "\n" not in stderr.strip()
    )


def test_cli_sim_replays_the_profiles_format_whatever_dtype_says(tmp_path: Path, profile_path: Path) -> None:
    program = TraceProgram(id="p", arrival_s=0, calls=[TraceCall(id="c", new_tokens=5, output_tokens=5)])
    trace = dump_trace([program], tmp_path / "t.jsonl")
    out = tmp_path / "r.json"
    done = agentrt(
        "replay",
        str(trace),
        "--engine",
        "sim",
        "--profile",
        str(profile_path),
        "--dtype",
        "bfloat16",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    assert "--dtype bfloat16 does not apply to --engine sim" in done.stderr and "(float32)" in done.stderr
    assert load_result(out).dtype == "float32"


def test_cli_sim_without_a_profile_says_how_to_get_one(tmp_path: Path) -> None:
    program = TraceProgram(id="p", arrival_s=0, calls=[TraceCall(id="c", new_tokens=5, output_tokens=5)])
    trace = dump_trace([program], tmp_path / "t.jsonl")
    done = agentrt("replay", str(trace), "--engine", "sim", "--model", "no-such-model", "--out", str(tmp_path / "r"))
    assert done.returncode == 2 and "agentrt calibrate --model no-such-model" in done.stderr


def test_simulated_replays_collect_garbage_less_often_and_restore_the_thresholds() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), _young_collections_every(before[0] * 10):
        assert gc.get_threshold() == (before[0] * 10, *before[1:])
        raise RuntimeError("the replay failed")
    assert gc.get_threshold() == before

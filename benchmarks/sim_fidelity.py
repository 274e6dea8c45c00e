"""Simulator fidelity: the same agent traces replayed on the real CPU engine and in the simulator.

For each scenario a trace is generated (``agentrt workload agent``), replayed
on one real in-process vLLM engine serving the tiny model and on one
simulated engine priced by the tiny model's calibrated profile, both with the
``vllm`` policy, each through ``agentrt replay`` as a user runs it.  The
simulator's error is reported per metric: (sim - real) / real, with the real
side averaged over ``--real-runs`` replays whose spread ((max - min) / mean)
shows how much the real engine itself varies from run to run on this machine.

Scenarios (agent traces, scale 0.1 so contexts fit the tiny model; tool
durations scaled so that LLM time is a large share of JCT):

- ``light``: 16 programs at 0.5/s, tool times x0.1: about half of JCT is LLM time;
- ``busy``: 24 programs at 2/s, tool times x0.02: ~90% LLM time, batches of ~20.

A CPU speed index (float32 matrix multiplies, GFLOP/s) is measured around
calibration and around each real replay: on a shared virtual machine the
real engine's speed drifts, and the index records the machine's state.

Usage::

    .venv/bin/python benchmarks/sim_fidelity.py [--recalibrate] [--scenarios light busy]

Prints a table; writes ``benchmarks/results/sim_fidelity.json``, the replay
results and one JCT-CDF plot per scenario (``sim_fidelity_<name>.png``).
The issue's goal: mean JCT within 15%.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime._bench import compare  # noqa: E402 - after the path set-up above
from runtime._results import ReplayResult, load_result  # noqa: E402
from runtime._trace import dump_trace  # noqa: E402
from runtime._workloads import generate_workload  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PROFILE = ROOT / ".cache" / "profiles" / "tiny.json"

SCENARIOS: dict[str, dict[str, Any]] = {
    "light": {"programs": 16, "rate": 0.5, "seed": 7, "scale": 0.1, "tool_scale": 0.1},
    "busy": {"programs": 24, "rate": 2.0, "seed": 8, "scale": 0.1, "tool_scale": 0.02},
}


def agentrt(*args: str) -> None:
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    done = subprocess.run(
        [sys.executable, "-m", "runtime._cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"agentrt {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def speed_index(seconds: float = 3.0) -> float:
    """The CPUs' float32 matrix-multiply rate (GFLOP/s) over ``seconds``.

    On a shared virtual machine the same engine step can take 50% longer an
    hour later; measured around calibration and around each real replay, it
    records whether the machine changed speed between them.
    """
    import numpy as np

    a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
    flops = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ a
        flops += 2 * 512**3
    return flops / (time.perf_counter() - started) / 1e9


def call_means(result: ReplayResult) -> dict[str, float]:
    calls = [c for p in result.programs for c in p.calls]
    return {
        "call_ttft_mean_s": statistics.fmean(c.ttft_s or 0.0 for c in calls),
        "call_e2e_mean_s": statistics.fmean(c.e2e_s or 0.0 for c in calls),
    }


def metrics(result: ReplayResult) -> dict[str, float | None]:
    s = result.summary
    return {
        "jct_mean_s": s.jct_mean_s,
        "jct_p50_s": s.jct_p50_s,
        "jct_p95_s": s.jct_p95_s,
        "makespan_s": s.makespan_s,
        "cached_token_ratio": s.cached_token_ratio,
        **call_means(result),
    }


def _relative(sim: float | None, real: float) -> float | None:
    return None if sim is None or not real else (sim - real) / real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--recalibrate", action="store_true", help="measure the tiny model's profile again")
    parser.add_argument(
        "--real-runs", type=int, default=2, help="real replays per scenario (their spread is the real engine's noise)"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)

    calibration_speed: list[float] = []
    if args.recalibrate or not PROFILE.is_file():
        print("calibrating the tiny model (about 6 minutes) ...", flush=True)
        calibration_speed.append(speed_index())
        agentrt("calibrate", "--model", "tiny", "--out", str(PROFILE))
        calibration_speed.append(speed_index())
        print(f"CPU speed index around calibration: {calibration_speed[0]:.1f}, {calibration_speed[1]:.1f} GFLOP/s")
    profile = json.loads(PROFILE.read_text())

    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "profile": profile,
        "calibration_speed_gflops": calibration_speed,
        "scenarios": {},
    }
    for name in args.scenarios:
        params = SCENARIOS[name]
        trace = dump_trace(generate_workload("agent", **params), RESULTS / f"sim_fidelity_{name}.jsonl")
        outputs: dict[str, Path] = {}
        real_runs: list[dict[str, float | None]] = []
        real_speed: list[list[float]] = []
        for run in range(args.real_runs):
            out = RESULTS / f"sim_fidelity_{name}_vllm{'' if run == 0 else f'_{run + 1}'}.json"
            before = speed_index()
            started = time.perf_counter()
            agentrt("replay", str(trace), "--engine", "vllm", "--model", "tiny", "--out", str(out), "--no-progress")
            took = time.perf_counter() - started
            real_speed.append([before, speed_index()])
            print(
                f"{name}: real replay {run + 1} took {took:.1f} s "
                f"(CPU speed index {real_speed[-1][0]:.1f} before, {real_speed[-1][1]:.1f} GFLOP/s after)",
                flush=True,
            )
            outputs.setdefault("vllm", out)
            real_runs.append(metrics(load_result(out)))
        out = RESULTS / f"sim_fidelity_{name}_sim.json"
        started = time.perf_counter()
        agentrt("replay", str(trace), "--engine", "sim", "--model", "tiny", "--out", str(out), "--no-progress")
        print(f"{name}: simulated replay took {time.perf_counter() - started:.1f} s", flush=True)
        outputs["sim"] = out
        sim_m = metrics(load_result(out))
        # The real side is the mean over its runs; `real_spread` is each
        # metric's (max - min) / mean over those runs.
        real_m = {key: statistics.fmean(float(r[key] or 0.0) for r in real_runs) for key in real_runs[0]}
        spread = {
            key: (max(float(r[key] or 0.0) for r in real_runs) - min(float(r[key] or 0.0) for r in real_runs)) / value
            if value
            else None
            for key, value in real_m.items()
        }
        errors = {key: _relative(sim_m[key], value) for key, value in real_m.items()}
        report["scenarios"][name] = {
            "trace": params,
            "real_runs": real_runs,
            "real_speed_gflops": real_speed,
            "real": real_m,
            "real_spread": spread,
            "sim": sim_m,
            "relative_error": errors,
        }
        print(compare([outputs["vllm"], outputs["sim"]], png=RESULTS / f"sim_fidelity_{name}.png"))

    print()
    print(f"{'scenario':<8} {'metric':<20} {'real':>10} {'spread':>8} {'sim':>10} {'error':>8}")
    for name, data in report["scenarios"].items():
        for key, value in data["real"].items():
            sim_value, error, spread = data["sim"][key], data["relative_error"][key], data["real_spread"][key]
            error_text = f"{100 * error:+.1f}%" if error is not None else "-"
            spread_text = f"{100 * spread:.1f}%" if spread is not None else "-"
            print(f"{name:<8} {key:<20} {value:>10.3f} {spread_text:>8} {sim_value:>10.3f} {error_text:>8}")
    (RESULTS / "sim_fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'sim_fidelity.json'}")


if __name__ == "__main__":
    main()

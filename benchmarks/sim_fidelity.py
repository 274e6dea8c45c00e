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

On a shared virtual machine the real engine's speed drifts by tens of
percent within an hour, so the real engine is also measured at two anchor
steps (``benchmarks/engine_anchors.py``: a decode step of 16 sequences at
2K context, a 512-token prefill chunk after 2K) before the first real replay
and after each one.  The ratio of the anchors to the profile's price for them
(averaged over a scenario) gives a second, speed-corrected simulation: the
profile's decode costs times the decode ratio and its prefill costs times the
prefill ratio.  Its error isolates the step model's shape (batching,
chunking, prefix caching, queueing) from the machine's drift.  A CPU speed
index (float32 matrix multiplies, GFLOP/s) is recorded as well.

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

from runtime.replay import (  # noqa: E402 - after the path set-up above
    ReplayResult,
    compare,
    dump_trace,
    generate_workload,
    load_result,
)

RESULTS = ROOT / "benchmarks" / "results"
PROFILE = ROOT / ".cache" / "profiles" / "tiny.json"

SCENARIOS: dict[str, dict[str, Any]] = {
    "light": {"programs": 16, "rate": 0.5, "seed": 7, "scale": 0.1, "tool_scale": 0.1},
    "busy": {"programs": 24, "rate": 2.0, "seed": 8, "scale": 0.1, "tool_scale": 0.02},
}


def run_quietly(argv: list[str], what: str) -> str:
    """Run ``argv`` from the repository root with vLLM's logs at warnings; its standard output, or exit."""
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def anchors() -> dict[str, Any]:
    """Anchor steps on a fresh real engine against the profile (see ``engine_anchors.py``)."""
    script = ROOT / "benchmarks" / "engine_anchors.py"
    out = run_quietly([sys.executable, str(script), "--profile", str(PROFILE)], "engine_anchors.py")
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    ratio = report["ratio"]
    print(f"  anchors: decode x{ratio['decode_step_s']:.2f}, prefill x{ratio['prefill_chunk_s']:.2f} of the profile")
    return report


def speed_corrected(profile: dict[str, Any], decode: float, prefill: float) -> dict[str, Any]:
    """``profile`` with decode costs times ``decode`` and prefill costs times ``prefill``."""
    out = dict(profile, name=f"{profile['name']}-corrected", measurements=None)
    out["step_overhead_s"] = profile["step_overhead_s"] * decode
    out["decode_step_s"] = [[b, s * decode] for b, s in profile["decode_step_s"]]
    per_context = profile["decode_s_per_context_token"]
    out["decode_s_per_context_token"] = (
        per_context * decode if isinstance(per_context, int | float) else [[b, k * decode] for b, k in per_context]
    )
    out["prefill_tokens_per_s"] = [[c, rate / prefill] for c, rate in profile["prefill_tokens_per_s"]]
    return out


def agentrt(*args: str) -> None:
    run_quietly([sys.executable, "-m", "runtime._cli", *args], f"agentrt {' '.join(args)}")


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
        anchor_reports = [anchors()]
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
            anchor_reports.append(anchors())
        out = RESULTS / f"sim_fidelity_{name}_sim.json"
        started = time.perf_counter()
        agentrt("replay", str(trace), "--engine", "sim", "--model", "tiny", "--out", str(out), "--no-progress")
        print(f"{name}: simulated replay took {time.perf_counter() - started:.1f} s", flush=True)
        outputs["sim"] = out
        sim_m = metrics(load_result(out))
        decode_ratio = statistics.fmean(a["ratio"]["decode_step_s"] for a in anchor_reports)
        prefill_ratio = statistics.fmean(a["ratio"]["prefill_chunk_s"] for a in anchor_reports)
        corrected_profile = RESULTS / f"sim_fidelity_{name}_profile_corrected.json"
        corrected_profile.write_text(json.dumps(speed_corrected(profile, decode_ratio, prefill_ratio), indent=2) + "\n")
        out = RESULTS / f"sim_fidelity_{name}_sim_corrected.json"
        agentrt(
            "replay",
            str(trace),
            "--engine",
            "sim",
            "--profile",
            str(corrected_profile),
            "--out",
            str(out),
            "--no-progress",
        )
        outputs["sim_corrected"] = out
        corrected_m = metrics(load_result(out))
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
        corrected_errors = {key: _relative(corrected_m[key], value) for key, value in real_m.items()}
        report["scenarios"][name] = {
            "trace": params,
            "real_runs": real_runs,
            "real_speed_gflops": real_speed,
            "anchors": anchor_reports,
            "speed_ratio": {"decode": decode_ratio, "prefill": prefill_ratio},
            "real": real_m,
            "real_spread": spread,
            "sim": sim_m,
            "relative_error": errors,
            "sim_corrected": corrected_m,
            "relative_error_corrected": corrected_errors,
        }
        print(
            compare(
                [outputs["vllm"], outputs["sim"], outputs["sim_corrected"]], png=RESULTS / f"sim_fidelity_{name}.png"
            )
        )

    print()
    print(
        f"{'scenario':<8} {'metric':<20} {'real':>10} {'spread':>8} {'sim':>10} {'error':>8} "
        f"{'corrected':>10} {'error':>8}"
    )
    for name, data in report["scenarios"].items():
        for key, value in data["real"].items():
            spread = data["real_spread"][key]
            spread_text = f"{100 * spread:.1f}%" if spread is not None else "-"
            line = f"{name:<8} {key:<20} {value:>10.3f} {spread_text:>8}"
            for sim_key, error_key in (("sim", "relative_error"), ("sim_corrected", "relative_error_corrected")):
                error = data[error_key][key]
                line += f" {data[sim_key][key]:>10.3f} {f'{100 * error:+.1f}%' if error is not None else '-':>8}"
            print(line)
    (RESULTS / "sim_fidelity.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {RESULTS / 'sim_fidelity.json'}")


if __name__ == "__main__":
    main()

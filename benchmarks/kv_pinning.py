"""KV pinning: the ``vllm``, ``continuum`` and ``agentrt`` policies side by side, on a real engine and in the simulator.

Two settings, each an agent trace (``agentrt workload agent``) replayed once
per policy with ``agentrt replay``, as a user runs it:

- **real**: one in-process vLLM engine on the CPU serving ``llama-49m``
  (8 layers, hidden 512: prefill costs seconds, so a lost prefix hurts) with a
  small KV cache (64 blocks of 128 tokens), 20 programs whose contexts
  together exceed the cache, tool durations scaled x0.3 (bash p50 0.3 s,
  p90 2.1 s, p99 10 s; sub-agent tasks ~20 s: short and long tools mixed, so
  the pin TTL rule matters);
- **sim**: 400 programs at published token counts and tool durations on 4
  simulated engines priced by the bundled ``h100-llama3-8b`` profile.

In both, the arrival rate is chosen above the ``vllm`` policy's capacity by
a short sweep with the ``vllm`` policy in the simulator, on traces generated
for that purpose only (other seeds): the rate chosen is the lowest of the
grid at which ``vllm``'s mean JCT is at least twice its mean JCT at the
lowest rate (queueing at least doubles it); for the real setting, the
simulator is priced by the calibrated llama-49m profile, and a rate whose
predicted ``vllm`` makespan exceeds ``--real-budget-s`` is passed over, so
a real replay takes minutes.  The reported traces use fresh seeds (21 real,
22 sim); the report says which seed served what.

The ranking check: the real trace is also replayed in the simulator (1
engine, the same 64 KV blocks) priced by a profile calibrated for
llama-49m on this machine (``agentrt calibrate``; run first when no
``.cache/profiles/llama-49m*.json`` exists and no ``--profile`` is given,
about 8 minutes), and the policies' order by mean JCT there is compared
with the real engine's (Kendall tau, pairwise agreement).

Reported per policy and setting: mean, P50 and P95 JCT, makespan, the
cached-token ratio and the engines' pin counters (pins, pin hits, expiries,
releases under memory pressure), plus the JCT ratios of ``agentrt`` against
the others.  The issue's goals (agentrt >= 2x better mean JCT than vllm,
>= 1.2x better than continuum, P95 better too) are printed beside the
measured ratios, never asserted.  A replay that fails is recorded with its
error and the benchmark goes on.

Usage::

    .venv/bin/python benchmarks/kv_pinning.py                 # both parts (~30 min; real part ~25)
    .venv/bin/python benchmarks/kv_pinning.py --only sim      # simulator only (~8 min)
    .venv/bin/python benchmarks/kv_pinning.py --only real [--profile P.json] [--real-rate R]
    .venv/bin/python benchmarks/kv_pinning.py --quick         # smoke: a few programs (~5 min)

Writes ``kv_pinning.json`` and ``kv_pinning.png`` into ``--out-dir``
(default ``benchmarks/results``; ``--quick`` writes ``kv_pinning_quick*``),
with the traces and every replay's result document beside them.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _agentrt_cli import agentrt  # noqa: E402 - after the path set-up above
from _sim_jobs import summary_fields  # noqa: E402

from runtime import models_dir  # noqa: E402
from runtime.replay import ReplayResult, ResultError, load_result  # noqa: E402

POLICIES = ("vllm", "continuum", "agentrt")
MODEL = "llama-49m"
#: A rate is above the vllm policy's capacity when its mean JCT there is at least this many times its light-load one.
OVERLOAD_FACTOR = 2.0
#: The rates at or below which vllm's mean JCT stays within this factor of light load count as within capacity.
CAPACITY_FACTOR = 1.5
GOALS = {"agentrt_vs_vllm_jct_mean": 2.0, "agentrt_vs_continuum_jct_mean": 1.2}


@dataclass(frozen=True)
class Setting:
    """One setting's trace and engines.  Token counts x ``scale``, tool durations x ``tool_scale``."""

    programs: int
    scale: float
    tool_scale: float
    seed: int  # the reported trace
    sweep_seeds: tuple[int, ...]  # traces for choosing the rate only
    sweep_programs: int
    rates: tuple[float, ...]  # programs/s, the sweep's grid, ascending
    engines: int
    kv_blocks: int | None  # per engine; None: the profile's
    timeout_s: float  # per replay


REAL = Setting(
    programs=20,
    scale=0.04,
    tool_scale=0.3,
    seed=21,
    sweep_seeds=(201, 202),
    sweep_programs=20,
    rates=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2, 1.6, 2.4),
    engines=1,
    kv_blocks=64,
    timeout_s=1500,
)
SIM = Setting(
    programs=400,
    scale=1.0,
    tool_scale=1.0,
    seed=22,
    sweep_seeds=(211,),
    sweep_programs=200,
    rates=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3),
    engines=4,
    kv_blocks=None,
    timeout_s=900,
)
SIM_PROFILE = "h100-llama3-8b"
#: --quick: a few programs, small contexts, short tools; enough to run every path once.
QUICK_REAL = replace(
    REAL, programs=3, scale=0.02, tool_scale=0.1, sweep_programs=3, sweep_seeds=(201,), rates=(0.5, 1.0), timeout_s=300
)
QUICK_SIM = replace(SIM, programs=40, scale=0.1, sweep_programs=20, rates=(0.1, 0.5), timeout_s=300)


def make_trace(setting: Setting, *, rate: float, seed: int, programs: int, path: Path) -> Path:
    ok, why = agentrt(
        "workload", "agent",
        "--programs", str(programs), "--rate", str(rate), "--seed", str(seed),
        "--scale", str(setting.scale), "--tool-scale", str(setting.tool_scale),
        "--out", str(path),
        timeout_s=120,
    )  # fmt: skip
    if not ok:
        raise SystemExit(f"agentrt workload failed: {why}")
    return path


def replay(
    trace: Path, policy: str, out: Path, *, engine: str, setting: Setting, profile: str | None
) -> dict[str, Any]:
    """One ``agentrt replay``; its metrics, or ``{"error": ...}`` when it wrote no result."""
    args = [
        "replay", str(trace), "--engine", engine, "--engines", str(setting.engines),
        "--policy", policy, "--out", str(out), "--no-progress",
    ]  # fmt: skip
    if engine == "vllm":
        args += ["--model", MODEL]
    if profile is not None:
        args += ["--profile", profile]
    if setting.kv_blocks is not None:
        args += ["--kv-blocks", str(setting.kv_blocks)]
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    ok, why = agentrt(*args, timeout_s=setting.timeout_s)
    took = time.perf_counter() - started
    if not out.is_file():
        return {"error": why, "took_s": round(took, 1)}
    try:
        result = load_result(out)
    except ResultError as exc:
        return {"error": f"{why}; {exc}" if not ok else str(exc), "took_s": round(took, 1)}
    row = metrics(result, out)
    row["took_s"] = round(took, 1)
    if not ok:  # exit code 1: some programs failed; the document is still there
        row["error"] = why
    return row


#: The replay summary's figures in a replay's row, in order.
FIGURES = ("programs", "completed", "failed", "jct_mean_s", "jct_p50_s", "jct_p95_s", "makespan_s",
           "cached_token_ratio", "prompt_tokens", "cached_prompt_tokens", "preemptions", "pins", "pin_hits",
           "pins_expired", "pins_released_pressure")  # fmt: skip


def metrics(result: ReplayResult, path: Path) -> dict[str, Any]:
    s = result.summary
    return {
        "result": path.name,
        **summary_fields(s, FIGURES),
        "pin_hit_ratio": s.pin_hits / s.pins if s.pins else None,
        "dtype": result.dtype,
        "profile": result.profile,
        "wall_s": result.wall_s,
    }


def run_policies(
    trace: Path, out_dir: Path, stem: str, *, engine: str, setting: Setting, profile: str | None
) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for policy in POLICIES:
        row = replay(trace, policy, out_dir / f"{stem}_{policy}.json", engine=engine, setting=setting, profile=profile)
        runs[policy] = row
        print(f"  {stem} {policy:<10} {describe(row)}", flush=True)
    return runs


def describe(row: dict[str, Any]) -> str:
    if row.get("jct_mean_s") is None:
        return f"FAILED ({row.get('took_s')} s): {str(row.get('error'))[-300:]}"
    text = (
        f"mean JCT {row['jct_mean_s']:.1f} s, P95 {row['jct_p95_s']:.1f} s, makespan {row['makespan_s']:.0f} s, "
        f"cached {100 * (row['cached_token_ratio'] or 0):.1f}%, pins {row['pins']} "
        f"({row['pin_hits']} hit, {row['pins_expired']} expired, {row['pins_released_pressure']} pressure), "
        f"took {row['took_s']:.0f} s"
    )
    return text + (f" [{row['failed']} programs failed]" if row["failed"] else "")


# -- choosing the load -------------------------------------------------------


def choose_rate(setting: Setting, work: Path, stem: str, *, profile: str, budget_s: float | None) -> dict[str, Any]:
    """Sweep the arrival rate with the vllm policy in the simulator on the sweep seeds; pick one above capacity.

    Light load is the grid's lowest rate.  The rate chosen is the lowest at
    which vllm's mean JCT (averaged over the sweep seeds) is at least
    :data:`OVERLOAD_FACTOR` times light load's and, with ``budget_s``, whose
    mean predicted makespan fits it.  The sweep stops there.
    """
    rows: list[dict[str, Any]] = []
    light: float | None = None
    chosen: float | None = None
    for rate in setting.rates:
        jcts, makespans, errors = [], [], []
        for seed in setting.sweep_seeds:
            trace = make_trace(
                setting, rate=rate, seed=seed, programs=setting.sweep_programs, path=work / f"{stem}_{seed}.jsonl"
            )
            row = replay(trace, "vllm", work / f"{stem}_{seed}.json", engine="sim", setting=setting, profile=profile)
            if row.get("jct_mean_s") is None:
                errors.append(str(row.get("error")))
                continue
            jcts.append(row["jct_mean_s"])
            makespans.append(row["makespan_s"])
        if not jcts:
            rows.append({"rate": rate, "error": "; ".join(errors)})
            print(f"  sweep rate {rate}: FAILED {errors[0][-300:]}", flush=True)
            continue
        jct, makespan = statistics.fmean(jcts), statistics.fmean(makespans)
        light = jct if light is None else light
        rows.append({"rate": rate, "vllm_jct_mean_s": jct, "vllm_makespan_s": makespan, "over_light_load": jct / light})
        print(
            f"  sweep rate {rate}: vllm mean JCT {jct:.1f} s ({jct / light:.2f}x light load), "
            f"makespan {makespan:.0f} s",
            flush=True,
        )
        if jct >= OVERLOAD_FACTOR * light and (budget_s is None or makespan <= budget_s):
            chosen = rate
            break
    measured = [r for r in rows if "vllm_jct_mean_s" in r]
    within = [r["rate"] for r in measured if r["over_light_load"] <= CAPACITY_FACTOR]
    note = None
    if chosen is None:
        # No rate qualified: the most overloaded one that fits the budget, else the most overloaded.
        fitting = [r for r in measured if budget_s is None or r["vllm_makespan_s"] <= budget_s] or measured
        if not fitting:
            raise SystemExit("the rate sweep failed at every rate: " + "; ".join(str(r.get("error")) for r in rows))
        best = max(fitting, key=lambda r: r["over_light_load"])
        chosen = best["rate"]
        note = (
            f"no rate of the grid reached {OVERLOAD_FACTOR}x the light-load JCT"
            + (f" within the {budget_s:.0f} s budget" if budget_s is not None else "")
            + f"; took the most loaded one ({best['over_light_load']:.2f}x)"
        )
        print(f"  WARNING: {note}", flush=True)
    return {
        "rule": (
            f"lowest rate of the grid where the vllm policy's mean JCT (simulated, mean over the sweep seeds) is "
            f">= {OVERLOAD_FACTOR}x its mean JCT at the lowest rate"
            + (f", with a predicted vllm makespan <= {budget_s:.0f} s" if budget_s is not None else "")
        ),
        "profile": profile,
        "sweep_seeds": list(setting.sweep_seeds),
        "sweep_programs": setting.sweep_programs,
        "rows": rows,
        "light_load_jct_mean_s": light,
        "capacity_rate": max(within) if within else None,
        "capacity_rule": f"highest swept rate with vllm mean JCT <= {CAPACITY_FACTOR}x light load",
        "chosen_rate": chosen,
        "note": note,
    }


# -- the llama-49m profile ---------------------------------------------------


def find_profile(given: str | None, *, calibrate: bool) -> tuple[str | None, dict[str, Any]]:
    """The profile pricing llama-49m: ``given``, else ``.cache/profiles/llama-49m*.json``, else a fresh calibration."""
    if given is not None:
        return given, {"source": "--profile"}
    directory = models_dir().parent / "profiles"
    found = sorted(glob.glob(str(directory / f"{MODEL}*.json")), key=os.path.getmtime)
    exact = directory / f"{MODEL}.json"
    if exact.is_file():
        return str(exact), {"source": "found"}
    if found:
        return found[-1], {"source": "found"}
    if not calibrate:
        return None, {"source": "none", "note": f"no {directory}/{MODEL}*.json and --quick does not calibrate"}
    print(f"calibrating {MODEL} (about 5 minutes) ...", flush=True)
    started = time.perf_counter()
    load = os.getloadavg()[0]
    ok, why = agentrt("calibrate", "--model", MODEL, "--out", str(exact), timeout_s=3600)
    took = time.perf_counter() - started
    if not ok:
        print(f"  calibration failed: {why[-500:]}", flush=True)
        return None, {"source": "calibration failed", "error": why, "took_s": round(took, 1)}
    print(f"  calibrated in {took:.0f} s: {exact}", flush=True)
    return str(exact), {"source": "calibrated", "took_s": round(took, 1), "load_average_before": load}


def profile_summary(path: str | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None if path is None else {"name": path}
    doc = json.loads(Path(path).read_text())
    return {k: doc.get(k) for k in ("name", "model", "dtype", "source", "kv_blocks", "prefill_tokens_per_s")}


# -- comparing ---------------------------------------------------------------


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """How many times lower agentrt's (and continuum's) mean and P95 JCT are than the others' (> 1: better)."""

    def ratio(worse: str, better: str, key: str) -> float | None:
        a, b = runs.get(worse, {}).get(key), runs.get(better, {}).get(key)
        return a / b if a and b else None

    out: dict[str, float | None] = {}
    for better, worse in (("agentrt", "vllm"), ("agentrt", "continuum"), ("continuum", "vllm")):
        for key, name in (("jct_mean_s", "jct_mean"), ("jct_p95_s", "jct_p95")):
            out[f"{better}_vs_{worse}_{name}"] = ratio(worse, better, key)
    return out


def ranking(runs: dict[str, dict[str, Any]]) -> list[str]:
    """Policies that completed a replay, best (lowest mean JCT) first."""
    done = [p for p in POLICIES if runs.get(p, {}).get("jct_mean_s") is not None]
    return sorted(done, key=lambda p: runs[p]["jct_mean_s"])


def ranking_text(runs: dict[str, dict[str, Any]]) -> str:
    """``a < b = c``: the policies by mean JCT, best first, ``=`` between equal ones (to 0.01 s)."""
    order = ranking(runs)
    text = order[0] if order else "-"
    for before, policy in itertools.pairwise(order):
        same = round(runs[before]["jct_mean_s"], 2) == round(runs[policy]["jct_mean_s"], 2)
        text += f" {'=' if same else '<'} {policy}"
    return text


def rank_agreement(real: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Do the simulator and the real engine order the policies alike by mean JCT?  Kendall tau over the pairs."""
    common = [p for p in POLICIES if p in ranking(real) and p in ranking(sim)]
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1 :]]
    concordant = discordant = ties = 0
    for a, b in pairs:
        d_real = real[a]["jct_mean_s"] - real[b]["jct_mean_s"]
        d_sim = sim[a]["jct_mean_s"] - sim[b]["jct_mean_s"]
        if d_real * d_sim > 0:
            concordant += 1
        elif d_real * d_sim < 0:
            discordant += 1
        else:
            ties += 1
    return {
        "real": ranking_text(real),
        "sim": ranking_text(sim),
        "policies_compared": common,
        "agree": len(common) >= 2 and discordant == 0 and concordant == len(pairs),
        "kendall_tau": (concordant - discordant) / len(pairs) if pairs else None,
        "pairwise_agreement": concordant / len(pairs) if pairs else None,
        "pairs": len(pairs),
        "tied_pairs": ties,
        "rule": "Kendall tau-a over the pairs of policies both replays completed: (concordant - discordant) / "
        "pairs; a pair tied in either counts as neither; agree = every pair concordant",
    }


# -- the two parts -----------------------------------------------------------


def real_part(args: argparse.Namespace, setting: Setting, out: Path, stem: str) -> dict[str, Any]:
    print(f"== real engine: {MODEL}, 1 engine, {setting.kv_blocks} KV blocks", flush=True)
    ok, why = agentrt("models", "prepare", MODEL, timeout_s=600)
    if not ok:
        return {"error": f"agentrt models prepare {MODEL}: {why}"}
    profile, origin = find_profile(args.profile, calibrate=not args.quick)
    part: dict[str, Any] = {
        "model": MODEL,
        "engines": 1,
        "kv_blocks": setting.kv_blocks,
        "block_tokens": 128,
        "profile": {"path": profile, **origin, **(profile_summary(profile) or {})},
    }
    with tempfile.TemporaryDirectory(prefix="kv_pinning_sweep_") as work:
        if args.real_rate is not None:
            rate = args.real_rate
            part["rate_choice"] = {"chosen_rate": rate, "rule": "--real-rate"}
        elif profile is not None:
            print(f"choosing the rate (simulated, profile {profile}, seeds {list(setting.sweep_seeds)}):", flush=True)
            part["rate_choice"] = choose_rate(
                setting, Path(work), "real_sweep", profile=profile, budget_s=args.real_budget_s
            )
            rate = part["rate_choice"]["chosen_rate"]
        else:
            rate = setting.rates[-1]
            part["rate_choice"] = {"chosen_rate": rate, "rule": "no profile to sweep with: the grid's highest rate"}
    trace = make_trace(setting, rate=rate, seed=setting.seed, programs=setting.programs, path=out / f"{stem}.jsonl")
    part["trace"] = {"file": trace.name, "kind": "agent", "rate": rate, **trace_params(setting)}
    print(f"real trace: {setting.programs} programs at {rate}/s (seed {setting.seed})", flush=True)
    part["runs"] = run_policies(trace, out, stem, engine="vllm", setting=setting, profile=None)
    part["ratios"] = ratios(part["runs"])
    if profile is not None:
        print("the same trace in the simulator (ranking check):", flush=True)
        part["sim_of_real"] = run_policies(trace, out, f"{stem}_sim", engine="sim", setting=setting, profile=profile)
        part["ranking_check"] = rank_agreement(part["runs"], part["sim_of_real"])
    else:
        part["ranking_check"] = {"skipped": "no llama-49m profile"}
    return part


def sim_part(args: argparse.Namespace, setting: Setting, out: Path, stem: str) -> dict[str, Any]:
    print(f"== simulator: {setting.engines} engines, profile {SIM_PROFILE}", flush=True)
    part: dict[str, Any] = {"engines": setting.engines, "profile": SIM_PROFILE, "kv_blocks": "the profile's"}
    with tempfile.TemporaryDirectory(prefix="kv_pinning_sweep_") as work:
        if args.sim_rate is not None:
            rate = args.sim_rate
            part["rate_choice"] = {"chosen_rate": rate, "rule": "--sim-rate"}
        else:
            print(f"choosing the rate (seeds {list(setting.sweep_seeds)}, {setting.sweep_programs} programs):")
            part["rate_choice"] = choose_rate(setting, Path(work), "sim_sweep", profile=SIM_PROFILE, budget_s=None)
            rate = part["rate_choice"]["chosen_rate"]
    trace = make_trace(setting, rate=rate, seed=setting.seed, programs=setting.programs, path=out / f"{stem}.jsonl")
    part["trace"] = {"file": trace.name, "kind": "agent", "rate": rate, **trace_params(setting)}
    print(f"sim trace: {setting.programs} programs at {rate}/s (seed {setting.seed})", flush=True)
    part["runs"] = run_policies(trace, out, stem, engine="sim", setting=setting, profile=SIM_PROFILE)
    part["ratios"] = ratios(part["runs"])
    return part


def trace_params(setting: Setting) -> dict[str, Any]:
    return {
        "programs": setting.programs,
        "seed": setting.seed,
        "scale": setting.scale,
        "tool_scale": setting.tool_scale,
    }


# -- report ------------------------------------------------------------------


def plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, dict[str, dict[str, Any]]]] = []
    if "runs" in report.get("real", {}):
        panels.append(
            (f"real engine ({MODEL}, 1 CPU engine, {report['real']['kv_blocks']} KV blocks)", report["real"]["runs"])
        )
        if "sim_of_real" in report["real"]:
            panels.append(("the real trace in the simulator (calibrated)", report["real"]["sim_of_real"]))
    if "runs" in report.get("sim", {}):
        panels.append((f"simulator ({report['sim']['engines']} x {SIM_PROFILE})", report["sim"]["runs"]))
    if not panels:
        return
    fig, axes = plt.subplots(2, len(panels), figsize=(5.2 * len(panels), 7.5), squeeze=False)
    try:
        width = 0.38
        for col, (title, runs) in enumerate(panels):
            xs = range(len(POLICIES))
            ax = axes[0][col]
            top = 1.0
            for offset, key, label in ((-width / 2, "jct_mean_s", "mean"), (width / 2, "jct_p95_s", "P95")):
                values = [runs.get(p, {}).get(key) or 0.0 for p in POLICIES]
                bars = ax.bar([x + offset for x in xs], values, width, label=f"{label} JCT")
                ax.bar_label(bars, fmt="%.0f", fontsize=8)
                top = max(top, *values)
            ax.set_ylim(0, 1.25 * top)  # room for the legend above the bars
            for x, p in zip(xs, POLICIES, strict=True):
                if runs.get(p, {}).get("jct_mean_s") is None:
                    ax.text(x, 0, "failed", ha="center", va="bottom", color="red")
            ax.set_xticks(list(xs), POLICIES)
            ax.set_ylabel("job completion time (s)")
            ax.set_title(title, fontsize=10)
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8, loc="upper center", ncol=2)
            ax = axes[1][col]
            cached = [100 * (runs.get(p, {}).get("cached_token_ratio") or 0.0) for p in POLICIES]
            hits = [100 * (runs.get(p, {}).get("pin_hit_ratio") or 0.0) for p in POLICIES]
            for offset, values, label in ((-width / 2, cached, "cached prompt tokens"), (width / 2, hits, "pins hit")):
                bars = ax.bar([x + offset for x in xs], values, width, label=label)
                ax.bar_label(bars, fmt="%.0f%%", fontsize=8)
            ax.set_xticks(list(xs), POLICIES)
            ax.set_ylim(0, 125)
            ax.set_ylabel("%")
            ax.grid(axis="y", alpha=0.3)
            ax.legend(fontsize=8, loc="upper center", ncol=2)
        fig.suptitle("KV pinning: policies side by side (lower JCT is better)")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
    finally:
        plt.close(fig)


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{'setting':<12} {'policy':<10} {'mean JCT':>9} {'P95 JCT':>9} {'cached':>7} "
        f"{'pins':>6} {'hits':>6} {'expired':>7} {'pressure':>8} {'preempt':>7}"
    ]
    settings = (("real", "real"), ("sim of real", "real"), ("sim", "sim"))
    for name, key in settings:
        runs = report.get(key, {}).get("sim_of_real" if name == "sim of real" else "runs")
        for policy in POLICIES if runs else ():
            row = runs.get(policy, {})
            if row.get("jct_mean_s") is None:
                lines.append(f"{name:<12} {policy:<10} FAILED: {str(row.get('error'))[-60:]}")
                continue
            lines.append(
                f"{name:<12} {policy:<10} {row['jct_mean_s']:>8.1f}s {row['jct_p95_s']:>8.1f}s "
                f"{100 * (row['cached_token_ratio'] or 0):>6.1f}% {row['pins']:>6} {row['pin_hits']:>6} "
                f"{row['pins_expired']:>7} {row['pins_released_pressure']:>8} {row['preemptions']:>7}"
            )

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    for key in ("real", "sim"):
        r = report.get(key, {}).get("ratios")
        if not r:
            continue
        lines.append(
            f"{key}: agentrt vs vllm: mean JCT {fmt(r['agentrt_vs_vllm_jct_mean'])} "
            f"(goal >= {GOALS['agentrt_vs_vllm_jct_mean']}x), P95 {fmt(r['agentrt_vs_vllm_jct_p95'])}; "
            f"agentrt vs continuum: mean JCT {fmt(r['agentrt_vs_continuum_jct_mean'])} "
            f"(goal >= {GOALS['agentrt_vs_continuum_jct_mean']}x), P95 {fmt(r['agentrt_vs_continuum_jct_p95'])}"
        )
    check = report.get("real", {}).get("ranking_check")
    if check and "agree" in check:
        tau = "-" if check["kendall_tau"] is None else f"{check['kendall_tau']:+.2f}"
        lines.append(
            f"ranking by mean JCT: real {check['real']}; simulator {check['sim']}: "
            f"{'agree' if check['agree'] else 'DISAGREE'} (Kendall tau {tau})"
        )
    return "\n".join(lines)


def keep_other_part(report: dict[str, Any], path: Path, other: str) -> None:
    """With ``--only``, carry the part not run over from the report already at ``path``, marked as such."""
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if other in previous:
        report[other] = dict(previous[other], from_run_started_at=previous.get("started_at"))
        report["settings"][other] = previous.get("settings", {}).get(other)
        for key, value in previous.get("seeds", {}).items():
            if key.startswith(other):
                report["seeds"][key] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("real", "sim"), help="run one part only")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few programs, no calibration")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--profile", help=f"the {MODEL} cost profile (default: .cache/profiles/{MODEL}*.json, or calibrate)"
    )
    parser.add_argument("--real-rate", type=float, help="real trace arrival rate, programs/s (default: from the sweep)")
    parser.add_argument("--sim-rate", type=float, help="sim trace arrival rate, programs/s (default: from the sweep)")
    parser.add_argument(
        "--real-budget-s",
        type=float,
        default=300.0,
        help="largest predicted vllm makespan (s) of one real replay the rate sweep accepts (default 300)",
    )
    args = parser.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    prefix = "kv_pinning_quick" if args.quick else "kv_pinning"
    real_setting, sim_setting = (QUICK_REAL, QUICK_SIM) if args.quick else (REAL, SIM)

    report: dict[str, Any] = {
        "benchmark": "kv_pinning",
        "quick": args.quick,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
        "policies": list(POLICIES),
        "goals": GOALS,
        "seeds": {
            "real_trace": real_setting.seed,
            "real_rate_sweep": list(real_setting.sweep_seeds),
            "sim_trace": sim_setting.seed,
            "sim_rate_sweep": list(sim_setting.sweep_seeds),
            "note": "the rate sweeps (vllm policy, simulator) choose the load on their own seeds; the reported "
            "traces use the trace seeds, never used for choosing anything",
        },
        "settings": {"real": asdict(real_setting), "sim": asdict(sim_setting)},
    }
    started = time.perf_counter()
    if args.only in (None, "real"):
        t = time.perf_counter()
        report["real"] = real_part(args, real_setting, out, f"{prefix}_real")
        report["real"]["took_s"] = round(time.perf_counter() - t, 1)
    if args.only in (None, "sim"):
        t = time.perf_counter()
        report["sim"] = sim_part(args, sim_setting, out, f"{prefix}_sim")
        report["sim"]["took_s"] = round(time.perf_counter() - t, 1)
    report["took_s"] = round(time.perf_counter() - started, 1)
    path = out / f"{prefix}.json"
    if args.only is not None:
        keep_other_part(report, path, "sim" if args.only == "real" else "real")
    png = out / f"{prefix}.png"
    try:
        plot(report, png)
        report["plot"] = png.name
    except Exception as exc:  # the numbers matter more than the picture
        report["plot_error"] = f"{type(exc).__name__}: {exc}"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(report))
    print(f"\nwritten: {path}" + (f", {png}" if "plot" in report else f" (no plot: {report['plot_error']})"))


if __name__ == "__main__":
    main()

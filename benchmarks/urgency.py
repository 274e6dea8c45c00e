"""Program urgency and cache-aware dispatch: ``vllm``, ``hexgen``, ``autellix`` and ``agentrt`` side by side.

Four parts, each replaying generated traces once per policy through the
runtime (the same ``Runtime``, policies, dispatcher and engines a user's
workflows take):

- **sim-t2s**: a CHESS-style Text-to-SQL trace (``agentrt workload
  text2sql``), 1,000 programs on 8 simulated engines priced by the bundled
  ``h100-llama3-8b`` profile, at a rate near the ``vllm`` policy's capacity
  (its throughput on an overloaded trace of a probe seed).  Deadlines are
  ``scale x`` each program's unloaded duration on that profile (its
  critical path at the profile's idle prefill and decode speeds).  For
  every scale of :data:`SCALES`, the deadline-aware policies (``hexgen``,
  ``agentrt``) replay the trace with those deadlines; the deadline-blind
  ones (``vllm``, ``autellix``) replay it once, and their attainment at
  each scale follows from their JCTs.  The deadline each policy needs for
  90% attainment is interpolated between the scales around it.
- **sim-scale**: the same kind of trace on 16, 32 and 64 engines (the rate
  in proportion, 1,000 programs), at one deadline scale: attainment and
  mean JCT per policy.
- **sim-agent**: a coding-agent trace at published sizes (``agentrt
  workload agent``), 1,000 programs on 8 engines: mean and P95 JCT per
  policy, ``continuum`` included.
- **real**: two in-process vLLM engines on the CPU serving ``llama-49m``:
  24 Text-to-SQL programs at 0.6/s, tokens x0.04, deadlines at two scales
  of the unloaded duration on the calibrated ``llama-49m`` profile; 16
  agent programs at 0.5/s, tokens x0.05, tools x0.3.  The rates were chosen
  with the simulator on that profile (probe seeds 302, 303), near where
  the ``vllm`` policy's JCT starts to grow.  Replays run one at a time
  (``agentrt replay --engine vllm --engines 2``).

Seeds: traces used to tune ``agentrt`` were 101-115 and 201-204 (and 301
here, for the capacity probe); the reported traces use fresh seeds
(:data:`SEEDS`).  Goals (agentrt's 90% deadline at least 2x tighter than
vllm's and 1.2x tighter than hexgen's; agentrt best on mean and P95 JCT of
the agent trace) are printed beside the measured ratios, never asserted.

Usage::

    .venv/bin/python benchmarks/urgency.py                    # everything (~60 min: sim ~30, real ~30)
    .venv/bin/python benchmarks/urgency.py --only sim-t2s,sim-agent
    .venv/bin/python benchmarks/urgency.py --quick            # smoke: small traces (~5 min)

Writes ``urgency.json`` and ``urgency.png`` into ``--out-dir`` (default
``benchmarks/results``; ``--quick``: ``urgency_quick*``); parts not run
are kept from an earlier ``urgency.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _agentrt_cli import agentrt  # noqa: E402
from _sim_jobs import replay_in_sim, sim_engines, spawn_pool, summary_fields  # noqa: E402

from runtime import AgentrtPolicy, AutellixPolicy, HexgenPolicy, get_policy  # noqa: E402
from runtime.replay import (  # noqa: E402
    CostProfile,
    ReplayResult,
    ResultError,
    TraceProgram,
    dump_trace,
    generate_workload,
    load_result,
    summarize,
)

POLICIES = ("vllm", "hexgen", "autellix", "agentrt")
AGENT_POLICIES = ("vllm", "continuum", "hexgen", "autellix", "agentrt")
DEADLINE_AWARE = frozenset({"hexgen", "agentrt"})
PROFILE = "h100-llama3-8b"
#: Deadline scales (x the unloaded duration) of the attainment curves.
SCALES = (1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0)
SEEDS = {"probe": 301, "sim-t2s": 31, "sim-scale": 33, "sim-agent": 32, "real-t2s": 34, "real-agent": 35}
TARGET = 0.9
REAL_MODEL = "llama-49m"


# -- simulated replays (in this process's workers) ------------------------------------------------


def _policy(name: str) -> Any:
    """A fresh policy with its defaults (a new instance per replay: policies learn as they run)."""
    classes: dict[str, Any] = {"hexgen": HexgenPolicy, "autellix": AutellixPolicy, "agentrt": AgentrtPolicy}
    return classes[name]() if name in classes else get_policy(name)


def _speeds(profile: CostProfile) -> dict[str, float]:
    """The profile's idle prefill and decode speeds, for the unloaded-duration estimate behind deadlines."""
    return {
        "prefill_s_per_token": profile.prefill_chunk_time(0, 4096) / 4096,
        "decode_s_per_token": profile.decode_time(1),
    }


#: The replay summary's figures in a simulated replay's row, in order.
FIGURES = ("jct_mean_s", "jct_p50_s", "jct_p95_s", "slo_attainment", "failed", "cached_token_ratio", "preemptions",
           "pins", "pin_hits", "programs_per_s")  # fmt: skip


def sim_replay(job: dict[str, Any]) -> dict[str, Any]:
    """One simulated replay (run in a worker process): the trace is generated here from its parameters."""
    profile = CostProfile.load(job["profile"])
    kind = job["kind"]
    options: dict[str, Any] = {}
    if job.get("slo_scale") is not None:
        options = {"slo_scale": job["slo_scale"], **_speeds(profile)}
    programs = generate_workload(kind, programs=job["programs"], rate=job["rate"], seed=job["seed"], **options)
    run, wall_s = replay_in_sim(programs, sim_engines(profile, job["engines"]), _policy(job["policy"]))
    summary = summarize(run.programs, **run.totals)
    return {
        **{k: job[k] for k in ("part", "policy", "engines", "rate", "seed", "programs", "slo_scale")},
        **summary_fields(summary, FIGURES),
        # JCT over the unloaded duration, per program: attainment at any scale for deadline-blind policies.
        "ratios": _ratios(programs, run.programs, profile) if job.get("keep_ratios") else None,
        "wall_s": wall_s,
    }


def _ratios(trace: list[TraceProgram], results: list[Any], profile: CostProfile) -> list[float | None]:
    from runtime.replay import estimate_unloaded_s

    base = {p.id: estimate_unloaded_s(p, **_speeds(profile)) for p in trace}
    return [None if r.jct_s is None else r.jct_s / base[r.id] for r in results]


def run_jobs(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with spawn_pool(workers) as pool:
        for row in pool.imap_unordered(sim_replay, jobs):
            scale = "" if row["slo_scale"] is None else f" x{row['slo_scale']}"
            att = "" if row["slo_attainment"] is None else f", attainment {100 * row['slo_attainment']:.1f}%"
            print(
                f"  {row['part']} {row['policy']:<9} {row['engines']} engines{scale}: "
                f"mean JCT {row['jct_mean_s']:.1f} s,"
                f" P95 {row['jct_p95_s']:.1f} s{att}, cached {100 * (row['cached_token_ratio'] or 0):.1f}%"
                f" ({row['wall_s']:.0f} s)",
                flush=True,
            )
            rows.append(row)
    return rows


def attainment_curve(rows: list[dict[str, Any]], policy: str) -> dict[float, float]:
    """Attainment at each scale: from runs at that scale (deadline-aware), or from one run's JCT ratios."""
    mine = [r for r in rows if r["policy"] == policy]
    if policy in DEADLINE_AWARE:
        return {r["slo_scale"]: r["slo_attainment"] for r in sorted(mine, key=lambda r: r["slo_scale"])}
    ratios = mine[0]["ratios"]
    return {s: sum(1 for x in ratios if x is not None and x <= s) / len(ratios) for s in SCALES}


def deadline_for(curve: dict[float, float], target: float = TARGET) -> float | None:
    """The smallest scale with attainment >= target, interpolated linearly below it; None if never reached."""
    points = sorted(curve.items())
    for i, (scale, value) in enumerate(points):
        if value >= target:
            if i == 0:
                return scale
            s0, v0 = points[i - 1]
            return s0 + (scale - s0) * (target - v0) / (value - v0) if value > v0 else scale
    return None


def capacity(engines: int, programs: int, workers: int) -> float:
    """The vllm policy's throughput (programs/s) on an overloaded Text-to-SQL trace of the probe seed."""
    job = {
        "part": "probe", "kind": "text2sql", "policy": "vllm", "engines": engines, "rate": 0.6 * engines,
        "seed": SEEDS["probe"], "programs": programs, "slo_scale": None, "profile": PROFILE,
    }  # fmt: skip
    [row] = run_jobs([job], workers)
    return float(row["programs_per_s"])


def sim_t2s(args: argparse.Namespace) -> dict[str, Any]:
    programs = 150 if args.quick else 1000
    rate = round(capacity(8, 150 if args.quick else 300, 1), 3)
    print(f"sim-t2s: vllm capacity on 8 engines {rate} programs/s; replaying {programs} programs at that rate")
    base = {"part": "sim-t2s", "kind": "text2sql", "engines": 8, "rate": rate, "seed": SEEDS["sim-t2s"]}
    jobs = []
    scales = SCALES[::3] if args.quick else SCALES
    for policy in POLICIES:
        for scale in scales if policy in DEADLINE_AWARE else (SCALES[0],):
            jobs.append(
                {**base, "policy": policy, "programs": programs, "slo_scale": scale, "profile": PROFILE,
                 "keep_ratios": policy not in DEADLINE_AWARE}
            )  # fmt: skip
    rows = run_jobs(jobs, args.workers)
    curves = {p: attainment_curve(rows, p) for p in POLICIES}
    deadlines = {p: deadline_for(curves[p]) for p in POLICIES}
    return {"rate": rate, "programs": programs, "engines": 8, "curves": curves, "deadline_90": deadlines, "runs": rows}


def sim_scale(args: argparse.Namespace, rate8: float) -> dict[str, Any]:
    sizes = (16,) if args.quick else (16, 32, 64)
    programs = 200 if args.quick else 1000
    jobs = [
        {"part": "sim-scale", "kind": "text2sql", "policy": p, "engines": n, "rate": round(rate8 * n / 8, 3),
         "seed": SEEDS["sim-scale"], "programs": programs, "slo_scale": args.scale_slo, "profile": PROFILE}
        for n in sizes for p in POLICIES
    ]  # fmt: skip
    rows = run_jobs(jobs, args.workers)
    return {"slo_scale": args.scale_slo, "programs": programs, "runs": [{**r, "ratios": None} for r in rows]}


def sim_agent(args: argparse.Namespace) -> dict[str, Any]:
    programs = 150 if args.quick else 1000
    jobs = [
        {"part": "sim-agent", "kind": "agent", "policy": p, "engines": 8, "rate": args.agent_rate,
         "seed": SEEDS["sim-agent"], "programs": programs, "slo_scale": None, "profile": PROFILE}
        for p in AGENT_POLICIES
    ]  # fmt: skip
    rows = run_jobs(jobs, args.workers)
    return {"rate": args.agent_rate, "programs": programs, "engines": 8, "runs": rows}


# -- real engines (agentrt replay, one at a time) --------------------------------------------------


def real_replay(
    trace: Path, policy: str, out: Path, *, timeout_s: float, reuse: bool = False, only_reuse: bool = False
) -> dict[str, Any]:
    """One real replay; with ``reuse``, a result document already there (of the same trace file) is read instead.

    With ``only_reuse``, a replay without a result document is not run but reported as missing.
    """
    started = time.perf_counter()
    why = "reused"
    if only_reuse and not out.is_file():
        return {"policy": policy, "error": "not run (--real-reuse-only)", "took_s": 0.0}
    if not (reuse and out.is_file()):
        out.unlink(missing_ok=True)
        _, why = agentrt(
            "replay", str(trace), "--engine", "vllm", "--engines", "2", "--model", REAL_MODEL, "--policy", policy,
            "--out", str(out), "--no-progress", timeout_s=timeout_s,
        )  # fmt: skip
    took = round(time.perf_counter() - started, 1)
    try:
        result: ReplayResult = load_result(out)
    except (ResultError, OSError) as exc:
        return {"policy": policy, "error": f"{why}; {exc}", "took_s": took}
    s = result.summary
    row = {
        "policy": policy, "jct_mean_s": s.jct_mean_s, "jct_p95_s": s.jct_p95_s, "slo_attainment": s.slo_attainment,
        "failed": s.failed, "cached_token_ratio": s.cached_token_ratio, "preemptions": s.preemptions,
        "pins": s.pins, "pin_hits": s.pin_hits, "took_s": took, "result": out.name,
    }  # fmt: skip
    print(f"  real {trace.stem} {policy:<9} {json.dumps({k: row[k] for k in list(row)[1:8]})} ({took} s)", flush=True)
    return row


def real(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    profile = CostProfile.load(args.real_profile) if args.real_profile else None
    speeds: dict[str, Any] = _speeds(profile) if profile else {}
    n = 6 if args.quick else 24
    report: dict[str, Any] = {"model": REAL_MODEL, "engines": 2, "profile": args.real_profile}
    t2s_runs = []
    for scale in args.real_scales:
        programs = generate_workload(
            "text2sql", programs=n, rate=args.real_rate, seed=SEEDS["real-t2s"], scale=0.04, slo_scale=scale, **speeds
        )
        trace = out / f"urgency_real_t2s_x{scale}.jsonl"
        dump_trace(programs, trace)
        for policy in POLICIES:
            if policy not in DEADLINE_AWARE and scale != args.real_scales[0]:
                continue  # deadline-blind: one run serves every scale
            row = real_replay(
                trace, policy, out / f"urgency_real_t2s_x{scale}_{policy}.json", timeout_s=1800, reuse=args.real_reuse,
                only_reuse=args.real_reuse_only,
            )  # fmt: skip
            row["slo_scale"] = scale
            if "error" not in row and policy not in DEADLINE_AWARE:
                result = load_result(out / row["result"])
                row["ratios"] = [
                    None if p.jct_s is None or p.slo_s is None else scale * p.jct_s / p.slo_s for p in result.programs
                ]
            t2s_runs.append(row)
    curves: dict[str, dict[float, float]] = {}
    for policy in POLICIES:
        mine = [r for r in t2s_runs if r["policy"] == policy and "error" not in r]
        if not mine:
            continue
        if policy in DEADLINE_AWARE:
            curves[policy] = {r["slo_scale"]: r["slo_attainment"] for r in mine}
        else:
            ratios = mine[0]["ratios"]
            curves[policy] = {
                s: sum(1 for x in ratios if x is not None and x <= s) / len(ratios) for s in args.real_scales
            }
    report["t2s"] = {
        "rate": args.real_rate,
        "programs": n,
        "scales": args.real_scales,
        "curves": curves,
        "runs": t2s_runs,
    }
    agent = generate_workload(
        "agent", programs=6 if args.quick else 16, rate=args.real_agent_rate, seed=SEEDS["real-agent"], scale=0.05,
        tool_scale=0.3,
    )  # fmt: skip
    trace = out / "urgency_real_agent.jsonl"
    dump_trace(agent, trace)
    report["agent"] = {
        "rate": args.real_agent_rate,
        "programs": len(agent),
        "runs": [
            real_replay(
                trace,
                p,
                out / f"urgency_real_agent_{p}.json",
                timeout_s=1800,
                reuse=args.real_reuse,
                only_reuse=args.real_reuse_only,
            )
            for p in AGENT_POLICIES
        ],
    }
    return report


# -- report ------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 3)


def goals(report: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    t2s = report.get("sim-t2s")
    if t2s:
        d = t2s["deadline_90"]
        found["deadline_90_vllm_over_agentrt"] = {"measured": ratio(d.get("vllm"), d.get("agentrt")), "goal": ">= 2"}
        found["deadline_90_hexgen_over_agentrt"] = {
            "measured": ratio(d.get("hexgen"), d.get("agentrt")), "goal": ">= 1.2"
        }  # fmt: skip
    agent = report.get("sim-agent")
    if agent:
        rows = {r["policy"]: r for r in agent["runs"]}
        for key in ("jct_mean_s", "jct_p95_s"):
            best = min(rows, key=lambda p: rows[p][key])
            found[f"agent_best_{key}"] = {"measured": best, "goal": "agentrt"}
    return found


def plot(report: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(22, 5))
    colors = {"vllm": "tab:gray", "continuum": "tab:purple", "hexgen": "tab:orange", "autellix": "tab:blue",
              "agentrt": "tab:green"}  # fmt: skip
    t2s = report.get("sim-t2s")
    if t2s:
        ax = axes[0]
        for policy, curve in t2s["curves"].items():
            xs = sorted(float(s) for s in curve)
            ax.plot(xs, [curve[s] if s in curve else curve[str(s)] for s in xs], "o-", label=policy,
                    color=colors[policy])  # fmt: skip
        ax.axhline(TARGET, ls="--", color="k", lw=0.8)
        ax.set(title=f"sim Text-to-SQL, 8 x H100, {t2s['rate']} programs/s", xlabel="deadline (x unloaded duration)",
               ylabel="SLO attainment")  # fmt: skip
        ax.legend()
    scale = report.get("sim-scale")
    if scale:
        ax = axes[1]
        for policy in POLICIES:
            rows = sorted((r for r in scale["runs"] if r["policy"] == policy), key=lambda r: r["engines"])
            ax.plot([r["engines"] for r in rows], [r["slo_attainment"] for r in rows], "o-", label=policy,
                    color=colors[policy])  # fmt: skip
        sizes = sorted({r["engines"] for r in scale["runs"]})
        ax.set(title=f"sim Text-to-SQL at deadline x{scale['slo_scale']}", xlabel="engines", ylabel="SLO attainment",
               xticks=sizes)  # fmt: skip
        ax.legend()
    agent = report.get("sim-agent")
    if agent:
        ax = axes[2]
        rows = sorted(agent["runs"], key=lambda r: AGENT_POLICIES.index(r["policy"]))
        names = [r["policy"] for r in rows]
        xs = list(range(len(rows)))
        ax.bar([x - 0.2 for x in xs], [r["jct_mean_s"] for r in rows], 0.4, label="mean")
        ax.bar([x + 0.2 for x in xs], [r["jct_p95_s"] for r in rows], 0.4, label="P95")
        ax.set_xticks(list(xs), names)
        ax.set(title=f"sim agent, 8 x H100, {agent['programs']} programs", ylabel="JCT (s)")
        ax.legend()
    real_part = report.get("real")
    if real_part:
        ax = axes[3]
        for policy, curve in real_part["t2s"]["curves"].items():
            xs = sorted(float(s) for s in curve)
            ax.plot(xs, [curve[s] if s in curve else curve[str(s)] for s in xs], "o-", label=f"{policy} (t2s)",
                    color=colors[policy])  # fmt: skip
        ax.set(title=f"real: 2 CPU engines, {REAL_MODEL}", xlabel="deadline scale", ylabel="SLO attainment")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def replot(path: Path) -> None:
    """Draw the PNG again from a report (``--replot``)."""
    plot(json.loads(path.read_text()), path.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="sim-t2s,sim-scale,sim-agent,real")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--scale-slo", type=float, default=4.0, help="deadline scale of the sim-scale part")
    parser.add_argument("--agent-rate", type=float, default=0.5, help="agent programs/s on 8 engines (sim)")
    parser.add_argument("--real-rate", type=float, default=0.6, help="Text-to-SQL programs/s on the 2 real engines")
    parser.add_argument("--real-agent-rate", type=float, default=0.5, help="agent programs/s on the 2 real engines")
    parser.add_argument("--real-scales", type=float, nargs="+", default=[3.0, 5.0])
    parser.add_argument("--real-profile", default=str(ROOT / ".cache" / "profiles" / f"{REAL_MODEL}.json"))
    parser.add_argument("--real-reuse", action="store_true", help="read real results already written, not rerun")
    parser.add_argument("--real-reuse-only", action="store_true", help="with --real-reuse: run no missing replay")
    parser.add_argument("--replot", action="store_true", help="only draw the PNG again from the JSON")
    args = parser.parse_args()
    if args.replot:
        replot(args.out_dir / ("urgency_quick.json" if args.quick else "urgency.json"))
        return
    if not Path(args.real_profile).is_file():
        args.real_profile = None
    parts = set(args.only.split(","))
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    stem = "urgency_quick" if args.quick else "urgency"
    path = out / f"{stem}.json"
    report: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    report.update(
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine={"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        seeds=SEEDS, scales=SCALES, profile=PROFILE,
    )  # fmt: skip
    if "sim-t2s" in parts:
        report["sim-t2s"] = sim_t2s(args)
    if "sim-scale" in parts:
        rate8 = report.get("sim-t2s", {}).get("rate") or capacity(8, 300, 1)
        report["sim-scale"] = sim_scale(args, rate8)
    if "sim-agent" in parts:
        report["sim-agent"] = sim_agent(args)
    if "real" in parts:
        report["real"] = real(args, out)
    report["goals"] = goals(report)
    path.write_text(json.dumps(report, indent=1, default=str))
    plot(report, out / f"{stem}.png")
    print(json.dumps({"deadline_90": report.get("sim-t2s", {}).get("deadline_90"), "goals": report["goals"]}, indent=1))
    print(f"wrote {path} and {out / f'{stem}.png'}")


if __name__ == "__main__":
    main()

"""Load: 1,000 concurrent agent programs on simulated engines; peak RSS, programs lost, wall time.

The issue's goal (1,000 concurrent programs complete, memory bounded,
backpressure instead of unbounded queues) is printed beside the measured
figures, never asserted.

- **workload**: ``generate_workload("agent", programs=1000, rate=1e6)``: a
  coding agent's shape (median 25.5 LLM calls, a tool between turns; AgentCgroup
  and SWE-agent statistics), token counts times ``--scale`` (default 0.1:
  ~3K-token contexts), every program arriving within the first millisecond, so
  all 1,000 are live at once.
- **engines**: 4 :class:`runtime.replay.SimEngine` priced by ``h100-llama3-8b``,
  policy ``vllm``, replayed by :func:`runtime.replay.replay_trace` under
  :func:`runtime.replay.run_virtual` (virtual time: hours of serving run as fast
  as the Python code in it), with the replay command's garbage-collector setting
  (youngest pass every 50,000 allocations).
- **configurations**, each in a fresh child process so that its peak RSS
  (``resource.getrusage``'s ``ru_maxrss``) is its own: ``unbounded``
  (``max_programs=None``, the default), ``bounded`` (``max_programs=100``: 900
  programs wait ``PENDING``, first come first served) and, when ``Runtime``
  takes ``journal=`` (or ``--journal PATH`` is given), ``journal`` (unbounded,
  a SQLite journal in a temporary directory or at PATH).
- **measured**: programs succeeded / failed / lost (lost: submitted but never
  reported back; goal 0), peak RSS and RSS after imports (bytes), wall seconds,
  virtual seconds of serving, the most programs running and pending at once
  (sampled every virtual second), the most events a program kept, and RSS over
  wall time (sampled every 5 virtual seconds) for the plot.

Usage::

    .venv/bin/python benchmarks/load.py                  # all configurations (~3 min on 2 cores)
    .venv/bin/python benchmarks/load.py --quick          # smoke: 200 programs
    .venv/bin/python benchmarks/load.py --journal /tmp/load-runs.db

Writes ``load.json`` and ``load.png`` into ``--out-dir`` (default
``benchmarks/results``; ``--quick``: ``load_quick.*``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402 - after the path set-up above
import psutil  # noqa: E402
from _machine import machine  # noqa: E402

from runtime import ProgramState, Runtime  # noqa: E402
from runtime.replay import SimEngine, Vocabulary, generate_workload, replay_trace, run_virtual  # noqa: E402

PROFILE = "h100-llama3-8b"
ENGINES = 4
POLICY = "vllm"
BOUND = 100
GOALS = {"programs_lost": 0}
SAMPLE_RUNNING_S = 1.0  # virtual seconds between samples of running/pending programs
SAMPLE_RSS_S = 5.0  # virtual seconds between RSS samples


def journal_supported() -> bool:
    """Whether this checkout's ``Runtime`` takes ``journal=`` (the durable-runs journal)."""
    return "journal" in inspect.signature(Runtime).parameters


# -- one configuration, in a child process ---------------------------------------------------------


def run_configuration(config: dict[str, Any]) -> dict[str, Any]:
    """Replay the workload once with ``config``; the figures of :func:`main`'s table."""
    gc.set_threshold(50_000, *gc.get_threshold()[1:])
    process = psutil.Process()
    rss_imports = process.memory_info().rss
    programs = generate_workload(
        "agent", programs=config["programs"], rate=1e6, seed=config["seed"], scale=config["scale"]
    )
    engines = [SimEngine(PROFILE, name=f"sim-{i}", seed=config["seed"]) for i in range(ENGINES)]
    vocabulary = Vocabulary(engines[0].vocab_size, frozenset(range(engines[0].first_token_id)))
    options: dict[str, Any] = {"policy": POLICY, "max_programs": config["max_programs"]}
    if config.get("journal"):
        options["journal"] = config["journal"]
    peaks = {"running": 0, "pending": 0, "events_kept": 0}
    rss_samples: list[tuple[float, int, int]] = []  # (wall s, RSS bytes, programs finished)
    done = [0]
    started = time.perf_counter()

    async def sample(rt: Runtime) -> None:
        # Half a period late: at a whole second the replay may just have submitted
        # programs whose tasks have not started yet (PENDING for an instant, in any configuration).
        await anyio.sleep(SAMPLE_RUNNING_S / 2)
        ticks = 0
        while True:
            states = [p.state for p in rt.programs.values()]
            peaks["running"] = max(peaks["running"], states.count(ProgramState.RUNNING))
            peaks["pending"] = max(peaks["pending"], states.count(ProgramState.PENDING))
            if ticks % round(SAMPLE_RSS_S / SAMPLE_RUNNING_S) == 0:
                rss_samples.append((time.perf_counter() - started, process.memory_info().rss, done[0]))
            ticks += 1
            await anyio.sleep(SAMPLE_RUNNING_S)

    async def replay() -> tuple[Any, int]:
        async with Runtime(engines, **options) as rt:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample, rt)
                run = await replay_trace(
                    programs, rt, vocabulary=vocabulary, seed=config["seed"], on_program_done=lambda _: _count(done)
                )
                tg.cancel_scope.cancel()
            peaks["events_kept"] = max(min(p.events_emitted, p.event_buffer) for p in rt.programs.values())
            return run, len(rt.programs)

    run, kept = run_virtual(replay)
    wall = time.perf_counter() - started
    rss_samples.append((wall, process.memory_info().rss, done[0]))
    succeeded = sum(1 for p in run.programs if p.completed)
    return {
        "config": config,
        "programs": len(programs),
        "calls": sum(len(p.calls) for p in programs),
        "succeeded": succeeded,
        "failed": len(run.programs) - succeeded,
        "lost": len(programs) - succeeded,
        "errors": sorted({p.error for p in run.programs if p.error})[:5],
        "wall_s": round(wall, 2),
        "virtual_s": round(run.wall_s, 1),
        "rss_after_imports_bytes": rss_imports,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        "peak_running": peaks["running"],
        "peak_pending": peaks["pending"],
        "max_events_kept": peaks["events_kept"],
        "programs_kept": kept,
        "rss_samples": rss_samples,
    }


def _count(done: list[int]) -> None:
    done[0] += 1


# -- the parent: configurations, table, plot --------------------------------------------------------


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    base = {"programs": args.programs, "scale": args.scale, "seed": args.seed}
    configs = [
        {"name": "unbounded", "max_programs": None, **base},
        {"name": f"bounded ({BOUND})", "max_programs": BOUND, **base},
    ]
    if args.journal is not None or journal_supported():
        configs.append({"name": "unbounded + SQLite journal", "max_programs": None, "journal": args.journal, **base})
    return configs


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="agentrt-load-") as scratch:
        if "journal" in config and config["journal"] is None:
            config = {**config, "journal": str(Path(scratch) / "runs.db")}
        if config.get("journal") and not journal_supported():
            return {"config": config, "error": "this checkout's Runtime takes no journal= (the journal has not landed)"}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(config)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            return {"config": config, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        if config.get("journal") and Path(config["journal"]).exists():
            result["journal_bytes"] = Path(config["journal"]).stat().st_size
        return result


def table(report: dict[str, Any]) -> str:
    mib = 1024 * 1024
    lines = [
        f"{report['sizes']['programs']:,} agent programs at once, {ENGINES} simulated engines "
        f"(goal: programs lost {GOALS['programs_lost']})",
        f"{'configuration':<28}{'lost':>6}{'peak RSS MiB':>14}{'wall s':>8}{'virtual s':>11}"
        f"{'running':>9}{'pending':>9}{'events':>8}",
    ]
    for r in report["runs"]:
        name = r["config"]["name"]
        if "error" in r:
            lines.append(f"{name:<28} failed: {r['error'][:90]}")
            continue
        lines.append(
            f"{name:<28}{r['lost']:>6}{r['peak_rss_bytes'] / mib:>14.0f}{r['wall_s']:>8.1f}{r['virtual_s']:>11.0f}"
            f"{r['peak_running']:>9}{r['peak_pending']:>9}{r['max_events_kept']:>8}"
        )
    lines.append("running/pending: most programs at once (sampled); events: most events a program kept")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 1024 * 1024
    runs = [r for r in report["runs"] if "error" not in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    names = [r["config"]["name"] for r in runs]
    bars = ax1.bar(names, [r["peak_rss_bytes"] / mib for r in runs], color="tab:blue", label="peak RSS")
    ax1.bar_label(bars, fmt="%.0f")
    ax1.bar(names, [r["rss_after_imports_bytes"] / mib for r in runs], color="tab:gray", label="after imports")
    for i, r in enumerate(runs):
        ax1.text(i, 5, f"lost {r['lost']}", ha="center", va="bottom", color="white", fontsize=9)
    ax1.set_ylabel("MiB")
    ax1.set_title(f"peak RSS, {report['sizes']['programs']:,} agent programs at once")
    ax1.legend(fontsize=8)
    for r in runs:
        samples = r["rss_samples"]
        ax2.plot([s[0] for s in samples], [s[1] / mib for s in samples], label=r["config"]["name"])
    ax2.set_xlabel("wall seconds")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_title("RSS during the replay")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        if not ax.has_data():
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 programs")
    parser.add_argument("--programs", type=int, default=None, help="programs (default 1,000; --quick 200)")
    parser.add_argument("--scale", type=float, default=0.1, help="token-count scale of the agent workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--journal", default=None, help="also run with this SQLite journal file (Runtime(journal=))")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one configuration, as JSON
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_configuration(json.loads(args.child))))
        return 0
    if args.programs is None:
        args.programs = 200 if args.quick else 1000
    report: dict[str, Any] = {
        "benchmark": "load",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": machine(),
        "sizes": {"programs": args.programs, "scale": args.scale, "engines": ENGINES, "profile": PROFILE}
        | {"policy": POLICY, "bound": BOUND, "workload": "agent", "rate_per_s": 1e6},
        "goals": GOALS,
        "notes": [
            "each configuration runs in its own child process: peak RSS is ru_maxrss of that process",
            "virtual time: simulated serving and tool pauses take no wall time",
            "lost = programs submitted but not completed (failed, cancelled or never reported)",
        ],
        "runs": [],
    }
    for config in configurations(args):
        print(f"  {config['name']} ...", flush=True)
        report["runs"].append(run_child(config))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("load_quick" if args.quick else "load")
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, stem.with_suffix(".png"))
    print(table(report))
    print(f"wrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Extra latency of an isolated tool call in a cgroup versus the same call in a plain subprocess.

Modes, each running the same trivial tool (``return n * 2``) ``--calls`` times:

- ``plain``: toolbridge's child-process path with a no-op sandbox (the child
  is spawned, gets the pickled call, answers; no cgroup is touched);
- ``cgroup``: the same path with the host's cgroup backend and limits
  (memory, cpu, pids): cgroup mkdir + limit writes + attach + accounting
  reads + kill check + rmdir, in every hierarchy;
- ``rlimit``: the fallback backend, for comparison.

Also timed alone, per call: the sandbox work without any process
(create + remove), which is the cgroup backend's own cost.

Usage::

    .venv/bin/python benchmarks/tool_overhead.py [--calls 40]

Prints a table; writes ``benchmarks/results/tool_overhead.json`` and ``.png``.
The issue's goal: cgroup - plain < 5 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolbridge import (  # noqa: E402 - after the path set-up above
    Limits,
    RlimitDriver,
    Sandbox,
    SandboxDriver,
    SandboxStats,
    run_tool,
    sandbox_driver,
    tool,
)

#: Every limit is set (so every control file is written) but none binds: a
#: CPU quota below the child's need would measure throttling, not overhead.
LIMITS = Limits(memory="256M", cpu=2.0, pids=64, timeout_s=10)


class _NoSandbox(Sandbox):
    def attach(self, pid: int) -> None:
        pass

    def pids(self) -> list[int]:
        return []

    def stats(self) -> SandboxStats:
        return SandboxStats()

    async def kill(self) -> None:
        pass

    async def remove(self) -> None:
        pass


class PlainDriver(SandboxDriver):
    """No limits at all: the plain-subprocess baseline."""

    name = "plain"

    def create(self, name: str, limits: Limits) -> Sandbox:
        return _NoSandbox(name, limits)


@tool(limits=LIMITS, isolation="process")
def crunch(n: int) -> int:
    """Double n."""
    return n * 2


def _summary(samples_s: list[float]) -> dict[str, float]:
    ordered = sorted(samples_s)
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "mean_ms": statistics.fmean(ordered) * 1e3,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3,
        "min_ms": ordered[0] * 1e3,
    }


async def _time_calls(driver: SandboxDriver, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        started = time.perf_counter()
        result = await run_tool(crunch, {"n": i}, driver=driver, predictor=None)
        out.append(time.perf_counter() - started)
        assert result.ok, result
    return out


async def _time_sandbox_only(driver: SandboxDriver, calls: int) -> list[float]:
    out = []
    for i in range(calls):
        started = time.perf_counter()
        sandbox = driver.create(f"bench-{i}", LIMITS)
        sandbox.stats()
        await sandbox.kill()
        await sandbox.remove()
        out.append(time.perf_counter() - started)
    return out


async def main(calls: int) -> dict[str, Any]:
    host = sandbox_driver()
    drivers: dict[str, SandboxDriver] = {"plain": PlainDriver(), "rlimit": RlimitDriver()}
    if host.name != "rlimit":
        drivers["cgroup"] = host
    samples: dict[str, list[float]] = {mode: [] for mode in drivers}
    for driver in drivers.values():
        await _time_calls(driver, 1)  # warm caches
    # Alternate modes call by call so drift (other load on the host) hits every mode alike.
    for _ in range(calls):
        for mode, driver in drivers.items():
            samples[mode].extend(await _time_calls(driver, 1))
    sandbox_only = await _time_sandbox_only(host, calls) if host.name != "rlimit" else []
    stats = {mode: _summary(s) for mode, s in samples.items()}
    paired = [c - p for c, p in zip(samples.get("cgroup", []), samples["plain"], strict=False)]
    report: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "backend": host.describe(),
        "calls_per_mode": calls,
        "limits": {"memory": LIMITS.memory, "cpu": LIMITS.cpu, "pids": LIMITS.pids},
        "modes": stats,
    }
    if "cgroup" in stats:
        report["cgroup_minus_plain_median_ms"] = stats["cgroup"]["median_ms"] - stats["plain"]["median_ms"]
        report["cgroup_minus_plain_min_ms"] = stats["cgroup"]["min_ms"] - stats["plain"]["min_ms"]
        # Median of per-pair differences: robust to load that shifts both.
        report["cgroup_minus_plain_paired_median_ms"] = statistics.median(paired) * 1e3
        report["sandbox_only"] = _summary(sandbox_only)
    return report


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(report["modes"])
    medians = [report["modes"][m]["median_ms"] for m in modes]
    p90s = [report["modes"][m]["p90_ms"] for m in modes]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(modes))
    ax.bar([x - 0.2 for x in xs], medians, width=0.4, label="median")
    ax.bar([x + 0.2 for x in xs], p90s, width=0.4, label="p90")
    ax.set_xticks(list(xs), modes)
    ax.set_ylabel("tool call latency (ms)")
    title = "isolated tool call: plain subprocess vs sandbox"
    if "cgroup_minus_plain_median_ms" in report:
        title += f"\ncgroup - plain (median) = {report['cgroup_minus_plain_median_ms']:.2f} ms"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=40, help="calls per mode (default 40)")
    args = parser.parse_args()
    report = anyio.run(main, args.calls)
    out_dir = ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tool_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out_dir / "tool_overhead.png")
    print(f"backend: {report['backend']}")
    print(f"{'mode':<8} {'median ms':>10} {'p90 ms':>8} {'min ms':>8}")
    for mode, s in report["modes"].items():
        print(f"{mode:<8} {s['median_ms']:>10.2f} {s['p90_ms']:>8.2f} {s['min_ms']:>8.2f}")
    if "cgroup_minus_plain_median_ms" in report:
        print(f"cgroup - plain (median): {report['cgroup_minus_plain_median_ms']:.2f} ms (goal < 5 ms)")
        print(f"cgroup - plain (median of paired differences): {report['cgroup_minus_plain_paired_median_ms']:.2f} ms")
        print(f"cgroup - plain (fastest call of each): {report['cgroup_minus_plain_min_ms']:.2f} ms")
        print(f"sandbox work alone (create+stats+kill+remove), median: {report['sandbox_only']['median_ms']:.2f} ms")
    print(f"wrote {out_dir / 'tool_overhead.json'} and .png")

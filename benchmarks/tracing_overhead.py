"""Runtime overhead per LLM call with tracing off vs on.

The runtime drives an in-memory engine that answers at once, so what is
measured is the runtime's own work per call (policy, DAG bookkeeping, events,
and with tracing on: span creation, attributes, export).  Modes:

- ``off``: no endpoint, no exporter (the default; tracing is never set up);
- ``on-drop``: spans created and handed to a BatchSpanProcessor whose exporter
  drops them (span creation and processing only);
- ``on-otlp``: a BatchSpanProcessor exporting OTLP/HTTP protobuf to a receiver
  in another process on 127.0.0.1 (the full cost, as with Jaeger on 4318).

``--tiny`` also runs a few calls on the real tiny-model vLLM engine for scale
(an engine call takes milliseconds; the overhead is microseconds).

Usage::

    .venv/bin/python benchmarks/tracing_overhead.py [--programs 200 --calls 10 --trials 5] [--tiny]

Prints a table; writes ``benchmarks/results/tracing_overhead.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM logs every engine step at INFO

import telemetry  # noqa: E402
from runtime import Runtime  # noqa: E402
from runtime.testing import ScriptedEngine  # noqa: E402
from workflows import Context, step, workflow  # noqa: E402

MODES = ("off", "on-drop", "on-otlp")


CALLS_PER_STEP = 10


@step
async def chat_turns(ctx: Context, calls: int) -> int:
    for i in range(calls):
        await ctx.llm([{"role": "user", "content": f"turn {i}"}], max_tokens=4)
    return calls


@workflow
async def conversation(ctx: Context, calls: int) -> int:
    return await chat_turns(ctx, calls)


# -- a receiver in another process, as Jaeger would be -------------------------


class _Sink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(port_out: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    port_out.put(server.server_address[1])
    server.serve_forever()


class _DropExporter:
    """A SpanExporter that drops spans (duck-typed: the SDK only calls these)."""

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _configure(mode: str, endpoint: str) -> None:
    telemetry.shutdown()
    if mode == "on-drop":
        assert telemetry.configure(_DropExporter())  # type: ignore[arg-type]
    elif mode == "on-otlp":
        assert telemetry.configure(endpoint=endpoint, protocol="http/protobuf")
    else:
        assert not telemetry.configure()


Results = dict[str, dict[str, list[float]]]  # metric ("wall", "cpu") -> mode -> seconds per call, per trial


async def _trial(rt: Runtime, programs: int, calls: int) -> tuple[float, float]:
    """Wall and CPU seconds per LLM call over ``programs`` sequential programs of ``calls`` calls.

    CPU time is this process's, all threads (the span exporter's included), so
    it also holds when other work on the machine inflates wall time.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(programs):
        await rt.run(conversation, calls=calls)
    cpu = time.process_time() - cpu_started
    return (time.perf_counter() - started) / (programs * calls), cpu / (programs * calls)


async def _measure(rt: Runtime, programs: int, calls: int, trials: int, endpoint: str) -> Results:
    results: Results = {"wall": {m: [] for m in MODES}, "cpu": {m: [] for m in MODES}}
    for _ in range(trials):
        for mode in MODES:  # interleaved, so drift hits every mode alike
            _configure(mode, endpoint)
            wall, cpu = await _trial(rt, programs, calls)
            # Flush what the batch processor still holds, and count its CPU
            # time against the trial: exporting is part of tracing's cost.
            cpu_started = time.process_time()
            await anyio.to_thread.run_sync(telemetry.shutdown)
            flush_cpu = time.process_time() - cpu_started
            results["wall"][mode].append(wall)
            results["cpu"][mode].append(cpu + flush_cpu / (programs * calls))
    return results


async def bench_instant(programs: int, calls: int, trials: int, endpoint: str) -> Results:
    async with Runtime([ScriptedEngine("instant-0", prompt_tokens=12)]) as rt:
        await _trial(rt, 20, calls)  # warm-up: imports, caches
        return await _measure(rt, programs, calls, trials, endpoint)


async def bench_tiny(calls: int, trials: int, endpoint: str) -> Results:
    from runtime import InProcessEngine, prepare_model

    engine = InProcessEngine(prepare_model("tiny"), name="tiny-0", engine_args={"enforce_eager": True})
    async with Runtime([engine]) as rt:
        await _trial(rt, 2, calls)
        return await _measure(rt, 1, calls, trials, endpoint)


def _summary(results: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    base = statistics.median(results["off"])
    out = {}
    for mode, values in results.items():
        med = statistics.median(values)
        out[mode] = {
            "median_us_per_call": med * 1e6,
            "min_us_per_call": min(values) * 1e6,
            "max_us_per_call": max(values) * 1e6,
            "overhead_us_per_call": (med - base) * 1e6,
            "overhead_pct": (med / base - 1) * 100,
        }
    return out


def _table(title: str, summary: dict[str, dict[str, float]]) -> str:
    lines = [title, f"{'mode':<10} {'median us/call':>15} {'min':>9} {'max':>9} {'overhead us':>12} {'overhead %':>11}"]
    for mode, s in summary.items():
        lines.append(
            f"{mode:<10} {s['median_us_per_call']:>15.1f} {s['min_us_per_call']:>9.1f} {s['max_us_per_call']:>9.1f} "
            f"{s['overhead_us_per_call']:>12.1f} {s['overhead_pct']:>10.1f}%"
        )
    return "\n".join(lines)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("instant", "tiny") if k in report["results"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        raw = report["results"][key]["raw_s_per_call"]["wall"]
        scale, unit = (1e6, "microseconds") if key == "instant" else (1e3, "milliseconds")
        meds = [statistics.median(raw[m]) * scale for m in MODES]
        ax.bar(MODES, meds, color=["#888888", "#4c72b0", "#dd8452"])
        for i, m in enumerate(MODES):
            ax.scatter([i] * len(raw[m]), [v * scale for v in raw[m]], color="black", s=10, zorder=3)
            ax.annotate(
                f"{meds[i]:.3g}", (i, meds[i]), ha="center", va="bottom", xytext=(0, 3), textcoords="offset points"
            )
        engine = "instant in-memory engine" if key == "instant" else "tiny vLLM engine (CPU)"
        ax.set_title(f"runtime wall time per LLM call\n{engine}")
        ax.set_ylabel(f"{unit} per call (median; dots: trials)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--programs", type=int, default=200, help="programs per trial (instant engine)")
    parser.add_argument("--calls", type=int, default=CALLS_PER_STEP, help="LLM calls per program")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="also measure on the real tiny-model engine")
    parser.add_argument("--tiny-calls", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tracing_overhead")
    args = parser.parse_args(argv)

    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    sink = ctx.Process(target=_serve, args=(ports,), daemon=True)
    sink.start()
    endpoint = f"http://127.0.0.1:{ports.get(timeout=30)}"
    try:
        report: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()},
            "settings": vars(args) | {"out": str(args.out)},
            "results": {},
        }
        runs = [("instant", "instant in-memory engine (runtime overhead only)")]
        if args.tiny:
            runs.append(("tiny", f"tiny vLLM engine (CPU), max_tokens=4, {args.tiny_calls} calls/trial"))
        for key, title in runs:
            if key == "instant":
                res = anyio.run(bench_instant, args.programs, args.calls, args.trials, endpoint, backend="asyncio")
            else:
                res = anyio.run(bench_tiny, args.tiny_calls, args.trials, endpoint, backend="asyncio")
            report["results"][key] = {
                "summary_wall": _summary(res["wall"]),
                "summary_cpu": _summary(res["cpu"]),
                "raw_s_per_call": res,
            }
            print(_table(f"{title}: wall time", report["results"][key]["summary_wall"]))
            print(_table(f"{title}: CPU time of this process", report["results"][key]["summary_cpu"]))
            print()
    finally:
        sink.terminate()
        sink.join()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out.with_suffix(".json"), args.out.with_suffix(".png")
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    _plot(report, png_path)
    print(f"\nwrote {json_path} and {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``agentrt`` command line.

agentrt demo                       an agent with tools answers a question on the demo model
agentrt run MODULE:WORKFLOW ...    run any workflow once and print its result
agentrt models prepare|list        build the local models (no hub access)
agentrt replay TRACE.jsonl ...     replay a workload trace on vLLM or the simulator
agentrt calibrate                  measure an engine: the simulator's cost profile
agentrt workload KIND ...          write a synthetic trace (agent, text2sql, bfcl)
agentrt bench compare A.json ...   compare replay results: a table and a plot

demo and run export OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is
set, and write them as OTLP/JSON (loadable in Jaeger's UI) with --traces-out.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _quiet_vllm(verbose: bool) -> None:
    # stdout carries results (`agentrt run` prints JSON): vLLM logs go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    # vLLM logs every engine step at INFO; a CLI user wants the answer.
    if not verbose:
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("TQDM_DISABLE", "1")


def _parse_input(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--input expects key=value, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # plain strings need no JSON quotes
    return key, value


def _load_workflow(target: str) -> Any:
    from workflows import Workflow

    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"agentrt run: expected MODULE:WORKFLOW (or path/to/file.py:WORKFLOW), got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise SystemExit(f"agentrt run: no such file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    try:
        wf = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"agentrt run: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(wf, Workflow):
        raise SystemExit(f"agentrt run: {target} is not a @workflow (got {type(wf).__name__})")
    return wf


def _start_tracing(args: argparse.Namespace) -> Any:
    """Configure tracing from the OTEL_* variables, plus a collector for --traces-out (returned)."""
    import telemetry

    collector = None
    if args.traces_out:
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        collector = InMemorySpanExporter()
    telemetry.configure(collector)
    return collector


def _finish_tracing(args: argparse.Namespace, collector: Any) -> None:
    """Flush spans to the OTLP endpoint (blocking, after the event loop ended) and write --traces-out."""
    import telemetry

    enabled, otlp = telemetry.is_enabled(), telemetry.otlp_endpoint()
    telemetry.shutdown()
    if otlp is not None:
        print(f"traces: exported to {otlp[0]} ({otlp[1]})", file=sys.stderr)
    if collector is not None:
        if not enabled:
            print("traces: tracing is disabled (OTEL_SDK_DISABLED); nothing written", file=sys.stderr)
            return
        spans = collector.get_finished_spans()
        path = telemetry.write_otlp_json(spans, args.traces_out)
        print(f"traces: {len(spans)} spans written to {path} (OTLP/JSON)", file=sys.stderr)


def _build_runtime(args: argparse.Namespace) -> Any:
    from ._runtime import Runtime

    if args.engine:
        return Runtime(list(args.engine), policy=args.policy)
    return Runtime.local(args.model, engines=args.engines, policy=args.policy)


async def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import demo_workflow
    from ._report import program_report

    started = time.monotonic()
    async with _build_runtime(args) as rt:
        print(f"engines ready in {time.monotonic() - started:.1f} s: {', '.join(e.name for e in rt.engines)}")
        print(f"question: {args.question}")
        handle = rt.submit(demo_workflow, question=args.question)
        result = await handle
        for i, turn in enumerate(result.turns, 1):
            calls = ", ".join(f"{c.name}({json.dumps(c.arguments)})" for c in turn.reply.tool_calls)
            if turn.reply.tool_call_error:
                print(f"turn {i}: unusable reply ({turn.reply.tool_call_error}); asked the model again")
            else:
                print(f"turn {i}: " + (f"tool calls {calls}" if calls else "answer"))
            for r in turn.tool_results:
                print(f"   -> {r.name}: {r.content}")
        print(f"\nanswer: {result.answer}\n")
        print(program_report(handle.program))
        if not args.no_sql:
            await _run_text2sql_demo(rt)
    return 0


#: The Text-to-SQL example, run by ``agentrt demo`` from a source checkout.
_TEXT2SQL_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text2sql.py"


async def _run_text2sql_demo(rt: Any) -> None:
    from ._report import program_report

    if not _TEXT2SQL_EXAMPLE.is_file():
        print(f"\n(Text-to-SQL demo skipped: {_TEXT2SQL_EXAMPLE} is part of the source checkout)")
        return
    wf = _load_workflow(f"{_TEXT2SQL_EXAMPLE}:text2sql")
    example = sys.modules[_TEXT2SQL_EXAMPLE.stem]
    print("\n--- Text-to-SQL on Chinook (SQLite, read-only) ---")
    handle = rt.submit(wf, question=example.DEMO_QUESTION)
    print(example.describe_result(await handle))
    print()
    print(program_report(handle.program))


async def _run_workflow(args: argparse.Namespace) -> int:
    from ._report import program_report

    wf = _load_workflow(args.target)
    inputs = dict(args.input or [])
    wf.validate_inputs(**inputs)  # fail before starting engines
    async with _build_runtime(args) as rt:
        handle = rt.submit(wf, **inputs)
        try:
            result = await handle
        finally:
            print(program_report(handle.program), file=sys.stderr)
    print(json.dumps(result, default=_jsonable, indent=2))
    return 0


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    return str(value)


def _parser() -> argparse.ArgumentParser:
    from ._policy import policy_names
    from ._runtime import default_model

    parser = argparse.ArgumentParser(prog="agentrt", description="Run LLM agent workflows on vLLM engines.")
    sub = parser.add_subparsers(dest="command", required=True)

    def engine_options(p: argparse.ArgumentParser, default_model: str) -> None:
        p.add_argument(
            "--model", default=default_model, help="model name under .cache/models or a path (default: $AGENTRT_MODEL)"
        )
        p.add_argument("--engines", type=int, default=1, help="number of in-process engines")
        p.add_argument(
            "--engine", action="append", metavar="URL", help="use a running vLLM server (repeatable) instead"
        )
        p.add_argument("--policy", default="vllm", choices=policy_names())
        p.add_argument("-v", "--verbose", action="store_true", help="show vLLM's own logs")
        p.add_argument(
            "--traces-out",
            metavar="FILE",
            help="write the run's OpenTelemetry spans to FILE as OTLP/JSON (Jaeger UI: Search > Upload)",
        )

    demo = sub.add_parser("demo", help="an agent with tools answers a question on the demo model")
    engine_options(demo, default_model())
    from ._demo import DEMO_QUESTION

    demo.add_argument("--question", default=DEMO_QUESTION)
    demo.add_argument("--no-sql", action="store_true", help="skip the Text-to-SQL part of the demo")

    run = sub.add_parser("run", help="run a workflow once: agentrt run MODULE:WORKFLOW --input k=v")
    run.add_argument("target", help="MODULE:WORKFLOW or path/to/file.py:WORKFLOW")
    run.add_argument("--input", action="append", type=_parse_input, metavar="KEY=VALUE", help="JSON or plain text")
    engine_options(run, default_model())

    models = sub.add_parser(
        "models",
        help="prepare or list the local models",
        description="agentrt models [--models-dir DIR] {prepare NAME... [--force] | list}",
    )
    models.add_argument("models_args", nargs=argparse.REMAINDER)
    from ._replay_cli import add_parsers as add_replay_parsers

    add_replay_parsers(sub)

    workload = sub.add_parser("workload", help="write a synthetic workload trace (JSON Lines)")
    workload.add_argument("kind", choices=["agent", "text2sql", "bfcl"])
    workload.add_argument("--programs", type=int, required=True, help="number of programs")
    workload.add_argument("--rate", type=float, required=True, help="Poisson arrival rate, programs/s")
    workload.add_argument("--seed", type=int, required=True)
    workload.add_argument("--scale", type=float, default=1.0, help="multiply every token count (default 1)")
    workload.add_argument("--tool-scale", type=float, default=1.0, help="multiply every tool duration (default 1)")
    workload.add_argument("--slo-scale", type=float, help="give each program slo_s = F x its unloaded duration")
    workload.add_argument("--out", type=Path, required=True, metavar="TRACE.jsonl")

    bench = sub.add_parser("bench", help="compare replay results")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    compare = bench_sub.add_parser("compare", help="a table of results side by side, and a plot")
    compare.add_argument("results", nargs="+", type=Path, metavar="RESULT.json")
    compare.add_argument("--png", type=Path, help="plot file (default: compare.png beside the first result)")
    return parser


def _workload(args: argparse.Namespace) -> int:
    from ._trace import dump_trace, prompt_lengths
    from ._workloads import generate_workload

    programs = generate_workload(
        args.kind,
        programs=args.programs,
        rate=args.rate,
        seed=args.seed,
        scale=args.scale,
        tool_scale=args.tool_scale,
        slo_scale=args.slo_scale,
    )
    path = dump_trace(programs, args.out)
    calls = [c for p in programs for c in p.calls]
    print(
        f"{path}: {len(programs)} {args.kind} programs, {len(calls)} calls, "
        f"{sum(sum(prompt_lengths(p).values()) for p in programs)} prompt tokens, "
        f"{sum(c.output_tokens for c in calls)} output tokens, "
        f"arrivals {programs[0].arrival_s:.3f}-{programs[-1].arrival_s:.3f} s"
    )
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    from ._bench import compare

    png = args.png if args.png is not None else args.results[0].parent / "compare.png"
    print(compare(args.results, png=png))
    print(f"plot: {png}", file=sys.stderr)
    return 0


def _offline_command(args: argparse.Namespace) -> int:
    """Commands that start no engine: bad input is a message and exit code 2, not a traceback."""
    from ._results import ResultError
    from ._trace import TraceError

    try:
        if args.command == "workload":
            return _workload(args)
        return _bench_compare(args)
    except (TraceError, ResultError, ValueError, RuntimeError, OSError) as exc:
        print(f"agentrt {args.command}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "models":
        from ._models import main as models_main

        return models_main(args.models_args)
    if args.command in ("workload", "bench"):
        return _offline_command(args)
    _quiet_vllm(args.verbose)
    if args.command in ("replay", "calibrate"):
        from ._replay_cli import run_calibrate, run_replay

        return run_replay(args) if args.command == "replay" else run_calibrate(args)

    import anyio

    from workflows import WorkflowError

    from ._errors import AgentRuntimeError

    collector = _start_tracing(args)
    try:
        if args.command == "demo":
            return anyio.run(_run_demo, args, backend="asyncio")
        return anyio.run(_run_workflow, args, backend="asyncio")
    except (AgentRuntimeError, WorkflowError) as exc:
        print(f"agentrt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        _finish_tracing(args, collector)


if __name__ == "__main__":
    sys.exit(main())

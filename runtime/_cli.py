"""The ``agentrt`` command line.

agentrt demo                       an agent with tools answers a question on the demo model
agentrt run MODULE:WORKFLOW ...    run any workflow once and print its result (journaled)
agentrt resume ID                  finish a journaled program: its journaled steps are not redone
agentrt runs [show ID | prune]     the programs in the journal
agentrt serve [--model M | --engine URL ...]   the OpenAI-compatible gateway
agentrt models prepare|list        build the local models (no hub access)

demo and run export OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is
set, and write them as OTLP/JSON (loadable in Jaeger's UI) with --traces-out.

Other packages add subcommands through the entry-point group
``agentrt.commands``: each entry point is a function that takes the
subparsers object, adds its commands, and sets ``handler`` on each (a
function of the parsed arguments returning the exit code).  The replay lab
(:mod:`runtime.replay`) registers ``replay``, ``calibrate``, ``workload`` and
``bench`` that way; the core does not import it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["COMMANDS_ENTRY_POINT_GROUP", "main"]

#: Entry-point group of packages that add ``agentrt`` subcommands.
COMMANDS_ENTRY_POINT_GROUP = "agentrt.commands"


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
    from ._workflow_ref import load_workflow

    try:
        return load_workflow(target)
    except (LookupError, TypeError) as exc:
        raise SystemExit(f"agentrt run: {exc}") from None


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

    journal = None if getattr(args, "no_journal", True) else args.journal
    if args.engine:
        return Runtime(list(args.engine), policy=args.policy, journal=journal)
    return Runtime.local(args.model, engines=args.engines, policy=args.policy, dtype=args.dtype, journal=journal)


async def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import demo_workflow, describe_demo
    from ._report import program_report

    started = time.monotonic()
    async with _build_runtime(args) as rt:
        print(f"engines ready in {time.monotonic() - started:.1f} s: {', '.join(e.name for e in rt.engines)}")
        print(f"question: {args.question}")
        handle = rt.submit(demo_workflow, question=args.question)
        print(describe_demo(await handle))
        print()
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
    out = await handle
    print(example.describe_result(out))
    print(await example.check_against_reference(out, example.DEMO_REFERENCE_SQL))
    print()
    print(program_report(handle.program))


async def _run_workflow(args: argparse.Namespace) -> int:
    from ._report import program_report

    wf = _load_workflow(args.target)
    inputs = dict(args.input or [])
    values = wf.validate_inputs(**inputs)  # fail before starting engines
    handle = None
    try:
        async with _build_runtime(args) as rt:
            handle = rt.start_program(wf, values, program_id=args.program_id)
            try:
                result = await handle
            finally:
                print(program_report(handle.program), file=sys.stderr)
    finally:
        if handle is not None:  # once the runtime has closed: an interrupted program is journaled as such
            _say_resumable(args, handle)
    print(json.dumps(result, default=_jsonable, indent=2))
    return 0


def _say_resumable(args: argparse.Namespace, handle: Any) -> None:
    """After a journaled program that did not succeed: how to pick it up again."""
    from ._program import ProgramState
    from ._runs_cli import default_journal

    if args.no_journal or not handle.done or handle.state is ProgramState.SUCCEEDED:
        return
    where = "" if args.journal == default_journal() else f" --journal {args.journal}"
    print(
        f"agentrt: program {handle.id} is journaled; to finish it: agentrt resume {handle.id}{where}", file=sys.stderr
    )


async def _resume_workflow(args: argparse.Namespace) -> int:
    from ._journal import journal_from
    from ._report import program_report

    # Look before starting engines: a wrong id or journal fails in a moment, not after the engines' start.
    async with journal_from(args.journal) as journal:
        record = await journal.program(args.program_id)
    if record is None:
        from ._errors import ProgramNotFoundError

        raise ProgramNotFoundError(f"no program {args.program_id!r} in the journal {args.journal}")
    workflow = _load_workflow(args.workflow) if args.workflow else None
    handle = None
    try:
        async with _build_runtime(args) as rt:
            handle = await rt.resume(args.program_id, workflow=workflow)
            try:
                result = await handle
            finally:
                print(program_report(handle.program), file=sys.stderr)
    finally:
        if handle is not None:
            _say_resumable(args, handle)
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
    from ._policies import policy_names
    from ._runs_cli import add_journal_option, add_runs_command
    from ._runtime import default_model
    from ._serve_cli import add_serve_command

    parser = argparse.ArgumentParser(prog="agentrt", description="Run LLM agent workflows on vLLM engines.")
    sub = parser.add_subparsers(dest="command", required=True)

    def journal_options(p: argparse.ArgumentParser) -> None:
        add_journal_option(p)
        p.add_argument("--no-journal", action="store_true", help="do not journal the program (it cannot be resumed)")

    def engine_options(p: argparse.ArgumentParser, default_model: str) -> None:
        p.add_argument(
            "--model", default=default_model, help="model name under .cache/models or a path (default: $AGENTRT_MODEL)"
        )
        p.add_argument("--engines", type=int, default=1, help="number of in-process engines")
        p.add_argument(
            "--engine", action="append", metavar="URL", help="use a running vLLM server (repeatable) instead"
        )
        p.add_argument("--policy", default="vllm", choices=policy_names())
        p.add_argument(
            "--dtype",
            default="auto",
            help="number format of in-process engines (default auto: bfloat16 where the CPU or GPU has it natively, "
            "else float32)",
        )
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
    demo.set_defaults(handler=_traced(_run_demo))

    run = sub.add_parser("run", help="run a workflow once: agentrt run MODULE:WORKFLOW --input k=v")
    run.add_argument("target", help="MODULE:WORKFLOW or path/to/file.py:WORKFLOW")
    run.add_argument("--input", action="append", type=_parse_input, metavar="KEY=VALUE", help="JSON or plain text")
    run.add_argument("--program-id", help="the program's id (default: a fresh prog-... id)")
    engine_options(run, default_model())
    journal_options(run)
    run.set_defaults(handler=_traced(_run_workflow))

    resume = sub.add_parser(
        "resume", help="finish a journaled program (after a crash, a signal, a failure): journaled steps are not redone"
    )
    resume.add_argument("program_id")
    resume.add_argument(
        "--workflow", metavar="MODULE:WORKFLOW", help="where the workflow is (default: where the journal says)"
    )
    engine_options(resume, default_model())
    add_journal_option(resume)
    resume.set_defaults(handler=_traced(_resume_workflow), no_journal=False)

    add_runs_command(sub)
    add_serve_command(sub, engine_options)

    models = sub.add_parser(
        "models",
        help="prepare or list the local models",
        description="agentrt models [--models-dir DIR] {prepare NAME... [--force] | list}",
    )
    models.add_argument("models_args", nargs=argparse.REMAINDER)
    models.set_defaults(handler=_models)

    _add_plugin_commands(sub)
    return parser


def _add_plugin_commands(sub: Any) -> None:
    """Let every ``agentrt.commands`` entry point add its subcommands; a broken one is reported, not fatal."""
    for entry_point in importlib.metadata.entry_points(group=COMMANDS_ENTRY_POINT_GROUP):
        try:
            entry_point.load()(sub)
        except Exception as exc:
            print(f"agentrt: commands of {entry_point.value} are unavailable: {exc}", file=sys.stderr)


def _models(args: argparse.Namespace) -> int:
    from ._model_build._cli import main as models_main

    return models_main(args.models_args)


def _traced(command: Any) -> Any:
    """``command`` (an async function of the arguments) run with tracing set up, its errors as messages."""

    def handler(args: argparse.Namespace) -> int:
        from workflows import WorkflowError

        from ._errors import AgentRuntimeError
        from ._signals import run_until_signalled

        collector = _start_tracing(args)
        try:
            # SIGINT/SIGTERM: the command is cancelled, its runtime closes, then SystemExit(130/143).
            code: int = run_until_signalled(command, args)
        except (AgentRuntimeError, WorkflowError) as exc:
            print(f"agentrt: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            _finish_tracing(args, collector)
        return code

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_vllm(getattr(args, "verbose", False))
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

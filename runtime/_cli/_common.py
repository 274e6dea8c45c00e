"""What the commands that start engines share: their flags, the runtime they build, the handler wrapper."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = ["Handler", "build_runtime", "engine_options", "load_workflow", "traced"]

#: What a subcommand's ``handler`` is: the parsed arguments to an exit status.
Handler = Callable[[argparse.Namespace], int]


def engine_options(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The flags of a command that starts engines: which model or servers, how many, the policy, logs, traces."""
    parser.add_argument(
        "--model", default=default_model, help="model name under .cache/models or a path (default: $AGENTRT_MODEL)"
    )
    parser.add_argument("--engines", type=int, default=1, help="number of in-process engines")
    parser.add_argument(
        "--engine", action="append", metavar="URL", help="use a running vLLM server (repeatable) instead"
    )
    from .._policies import policy_names

    parser.add_argument("--policy", default="vllm", choices=policy_names())
    parser.add_argument(
        "--dtype",
        default="auto",
        help="number format of in-process engines (default auto: bfloat16 where the CPU or GPU has it natively, "
        "else float32)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show vLLM's own logs (default: agentrt's lines and errors only)"
    )
    parser.add_argument(
        "--traces-out",
        metavar="FILE",
        help="write the run's OpenTelemetry spans to FILE as OTLP/JSON (Jaeger UI: Search > Upload)",
    )


def build_runtime(args: argparse.Namespace, **options: Any) -> Runtime:
    """The runtime the engine flags describe (not started); ``options`` go to :meth:`Runtime.local`."""
    from .._runtime import Runtime

    journal = None if getattr(args, "no_journal", True) else args.journal
    if args.engine:
        return Runtime(list(args.engine), policy=args.policy, journal=journal)
    return Runtime.local(
        args.model, engines=args.engines, policy=args.policy, dtype=args.dtype, journal=journal, **options
    )


def load_workflow(target: str) -> Any:
    """The workflow at ``MODULE:WORKFLOW`` or ``path/to/file.py:WORKFLOW``; a bad target exits with a message."""
    from .._workflow_ref import load_workflow as load

    try:
        return load(target)
    except (LookupError, TypeError) as exc:
        raise SystemExit(f"agentrt run: {exc}") from None


def traced(command: Callable[[argparse.Namespace], Awaitable[int]]) -> Handler:
    """``command`` (an async function of the arguments) run with tracing set up, its errors as messages."""

    def handler(args: argparse.Namespace) -> int:
        from workflows import WorkflowError

        from .._errors import AgentRuntimeError
        from .._signals import run_until_signalled

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
